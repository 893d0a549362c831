"""`segbench models`: the registered architectures with year, paper, parameters and FLOPs."""

from __future__ import annotations

import click
import torch

from segbench.flops import count_flops, count_parameters
from segbench.registry import ARCHITECTURES, build_model, list_models, model_options


def describe(name: str, num_classes: int, size: tuple[int, int], in_channels: int = 3) -> dict:
    """Parameters and forward GFLOPs of ``name`` in its default (paper) configuration, counted on the
    meta device; falls back to a real CPU pass for an op without a meta kernel."""
    entry = ARCHITECTURES[name]
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build_model(name, num_classes, in_channels).eval()
                params = count_parameters(model)
                with torch.no_grad():
                    flops = count_flops(model, (1, in_channels, *size))
            break
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    encoder = model_options(name).get("encoder")
    return {
        "name": name,
        "year": entry.year,
        "family": entry.family,
        "encoder": encoder or "-",
        "params": params,
        "gflops": flops / 1e9,
        "paper": entry.paper,
    }


@click.command()
@click.option("--size", nargs=2, type=int, default=(512, 512), show_default=True, help="Input H W for FLOPs.")
@click.option("--classes", "num_classes", type=int, default=21, show_default=True, help="Number of classes.")
@click.option("--detail", is_flag=True, help="Also print each architecture's innovation, strengths and weaknesses.")
def models(size: tuple[int, int], num_classes: int, detail: bool) -> None:
    """List the registered architectures with year, paper, parameters and FLOPs (default configuration)."""
    rows = [describe(name, num_classes, size) for name in list_models()]
    click.echo(f"Default configurations, {num_classes} classes, FLOPs of one forward pass at 1x3x{size[0]}x{size[1]} "
               "(torch.utils.flop_counter; a multiply-add = 2 FLOPs).")
    header = f"{'name':<14} {'year':>4}  {'family':<11} {'encoder':<10} {'params (M)':>10} {'GFLOPs':>9}  paper"
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        click.echo(f"{r['name']:<14} {r['year']:>4}  {r['family']:<11} {r['encoder']:<10} {r['params'] / 1e6:>10.2f} "
                   f"{r['gflops']:>9.1f}  {r['paper']}")
        if detail:
            entry = ARCHITECTURES[r["name"]]
            for label, text in (("innovation", entry.summary), ("blocks", entry.blocks),
                                ("strengths", entry.strengths), ("weaknesses", entry.weaknesses)):
                if text:
                    click.echo(f"{'':<16}{label}: {text}")
