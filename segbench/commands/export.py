"""`segbench export`: a trained run's model as ONNX, checked against PyTorch (``segbench.export.onnx``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from segbench.run_files import ONNX_FILE

__all__ = ["export"]


def _inference_size(cfg) -> tuple[int, int] | None:
    """The input size the run's model sees at inference: its sliding window, else the size every image
    is resized to, else its training crop."""
    window = cfg.eval.window if cfg.eval.mode == "slide" else None
    for size in (window, cfg.data.resize, cfg.data.augment.crop_size):
        if size:
            return (int(size[0]), int(size[1]))
    return None


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--size", nargs=2, type=int, default=None,
              help="H W to trace at (default: the run's sliding window, else its resize, else its crop size).")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True, help="Checkpoint.")
@click.option("--shape", type=click.Choice(["auto", "dynamic", "static"]), default="auto", show_default=True,
              help="auto: dynamic H/W where the architecture allows, else static with a note.")
def export(run_dirs: tuple[Path, ...], fmt: str, size, which: str, shape: str) -> None:
    """Export a trained run's model to RUN_DIR/model.onnx, checked against PyTorch with ONNX Runtime.

    One run only: an ensemble is not exported as one graph (predict it with `segbench predict RUN1 RUN2 ...`)."""
    from segbench.engine.checkpoint import load_run_model
    from segbench.export.onnx import export_onnx

    if len(run_dirs) > 1:
        raise click.UsageError(
            f"{len(run_dirs)} run folders given: segbench exports one run's network. An ensemble is not exported "
            "as one ONNX graph (its members may differ in architecture, and its flips and softmax averaging are "
            "segbench's inference, not the networks'); export each run, or predict the ensemble with "
            "`segbench predict RUN1 RUN2 ... IMAGES OUT`")
    run_dir = run_dirs[0]
    try:
        model, cfg, info = load_run_model(run_dir, which=which)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    size = tuple(size) if size else _inference_size(cfg)
    if size is None:
        raise click.UsageError("the run's config has no window, resize or crop size: pass --size H W")
    path = run_dir / ONNX_FILE
    dynamic = {"auto": None, "dynamic": True, "static": False}[shape]
    try:
        result = export_onnx(model, path, input_size=size, in_channels=info.in_channels, dynamic=dynamic)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from err
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(result.to_json()), "checkpoint": which}, indent=2))
    click.echo(f"wrote {path} ({result.shape_mode}, traced at {result.input_size[0]}x{result.input_size[1]}, opset {result.opset}); "
               f"details in {sidecar.name}")
    if result.note:
        click.echo(f"note: {result.note}")
