"""`segbench predict`: masks for new images or volumes from a trained run (``segbench.engine.predict``)."""

from __future__ import annotations

import click

from segbench.commands.errors import user_errors

__all__ = ["predict"]


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("inputs", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx runs RUN_DIR/model.onnx (written by `segbench export`) with ONNX Runtime.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True)
def predict(run_dir, inputs, out, engine, which) -> None:
    """Predict masks for images (PNG/JPEG/TIFF/BMP) or NIfTI volumes in INPUTS (a file or folder) into OUT.

    Writes STEM_mask.png (class ids, palette PNG) and STEM_overlay.png per image, and STEM_seg.nii.gz
    (in the input's voxel grid, affine and header) plus an overlay of one slice per volume.
    """
    from segbench.engine.predict import predict_files

    with user_errors():
        written = predict_files(run_dir, inputs, out, engine=engine, which=which)
    click.echo(f"wrote {len(written)} files to {out}")
