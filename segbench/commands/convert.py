"""`segbench convert SRC DST --from SOURCE --arch ARCH`: another toolkit's checkpoint -> segbench keys."""

from __future__ import annotations

from pathlib import Path

import click
import torch
import yaml

from segbench.checkpoints.convert import SOURCES, convert_with_report

from segbench.checkpoints.io import read_checkpoint


def _parse_options(pairs: tuple[str, ...]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--option")
        options[key] = yaml.safe_load(value)
    return options


@click.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", type=click.Choice(SOURCES), required=True, help="Toolkit that wrote SRC.")
@click.option("--arch", required=True, help="segbench architecture the weights are for (see `segbench models`).")
@click.option("--num-classes", type=int, default=None, help="Classes of the target model (default: the checkpoint's).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Model option, as for build_model (e.g. encoder=mit_b2). Repeatable.")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Refuse to write DST when keys are missing, unexpected or mis-shaped.")
def convert(src: Path, dst: Path, source: str, arch: str, num_classes: int | None, options: tuple[str, ...],
            strict: bool) -> None:
    """Convert SRC (a checkpoint of another toolkit) to a segbench state dict DST.

    Load DST with `--set model.pretrained=DST` (or build_pretrained_model(..., pretrained=DST)), using the same
    --arch and options.
    """
    model_options = _parse_options(options)
    try:
        converted, report = convert_with_report(read_checkpoint(src), source, arch, num_classes=num_classes,
                                                **model_options)
    except (KeyError, ValueError, TypeError) as err:
        raise click.ClickException(str(err.args[0] if isinstance(err, KeyError) and err.args else err)) from err
    click.echo(f"{src} ({source}) -> {arch}: {len(converted)} tensors; {report}")
    if strict and not report.ok:
        raise click.ClickException("conversion incomplete (see above); --no-strict writes it anyway")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(converted, tmp)
    tmp.replace(dst)
    click.echo(f"wrote {dst}")
