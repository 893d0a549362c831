"""``segbench check DATA``: run every data check, print the dataset report, exit non-zero on bad data.

The checks are exactly those ``load_data`` runs before training (it is the same code path), so a
dataset that passes here will load in ``segbench train``.
"""

from __future__ import annotations

import click

from segbench.data.config import FORMATS, NORMALIZATIONS


@click.command("check")
@click.argument("data")
@click.option("--strict", is_flag=True, help="Refuse to guess: 0/255 masks, inferred palettes, cases missing from a split file.")
@click.option("--format", "format_", type=click.Choice(FORMATS), default="auto", show_default=True, help="Dataset layout.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Number of classes (default: inferred).")
@click.option("--ignore-index", type=int, default=255, show_default=True, help="Mask value excluded from loss and metrics.")
@click.option("--reduce-zero-label", is_flag=True, help="MMSegmentation convention: label 0 -> ignore, k -> k-1.")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False), default=None, help="JSON/YAML {train: [...], val: [...], test: [...]}.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of cases held out for validation.")
@click.option("--test-fraction", type=float, default=0.0, show_default=True, help="Share of cases held out for testing.")
@click.option("--slice-axis", type=click.IntRange(0, 2), default=2, show_default=True, help="Volumes: axis cut into 2D slices (RAS+).")
@click.option("--normalize", type=click.Choice(NORMALIZATIONS), default="auto", show_default=True, help="Image normalisation.")
@click.option("--replace-nonfinite", type=float, default=None, metavar="VALUE",
              help="Replace NaN/inf image values by VALUE (default: they are an error).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Where decoded slices are cached.")
def check(
    data: str,
    strict: bool,
    format_: str,
    num_classes: int | None,
    ignore_index: int,
    reduce_zero_label: bool,
    split_file: str | None,
    val_fraction: float,
    test_fraction: float,
    slice_axis: int,
    normalize: str,
    replace_nonfinite: float | None,
    cache_dir: str | None,
) -> None:
    """Check the dataset DATA (a directory, or the built-in 'brain-mri') and print its report."""
    from segbench.commands.errors import user_errors
    from segbench.data import DataConfig, DataError, load_data

    with user_errors():  # a full or read-only cache disk: one line naming the file (check has no --out)
        try:
            cfg = DataConfig(
                source=data,
                format=format_,
                num_classes=num_classes,
                ignore_index=ignore_index,
                reduce_zero_label=reduce_zero_label,
                split_file=split_file,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                slice_axis=slice_axis,
                normalize=normalize,
                strict=strict,
                cache_dir=cache_dir,
                replace_nonfinite=replace_nonfinite,
            )
            loaded = load_data(cfg)
        except DataError as exc:
            raise click.ClickException(f"data check failed: {exc}") from None
        except ValueError as exc:  # a bad option value, not bad data
            raise click.BadParameter(str(exc)) from None
    click.echo(str(loaded.report))
    click.echo("")
    verdict = "OK" if not loaded.notices else f"OK with {len(loaded.notices)} notice(s) (see above)"
    click.echo(f"{verdict}: {loaded.report.summary()}")
