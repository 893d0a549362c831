"""`segbench predict`: masks for new images or volumes from a trained run (``segbench.engine.predict``)."""

from __future__ import annotations

import click

from segbench.commands.errors import user_errors

__all__ = ["predict"]


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.argument("inputs", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx runs RUN_DIR/model.onnx (written by `segbench export`) with ONNX Runtime.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--tta", is_flag=True,
              help="Flip test-time augmentation: softmax probabilities averaged over every combination of the "
                   "flips (horizontal for 2D images; horizontal and vertical for slices of volumes; a run's "
                   "eval.flips, when set, instead). Costs one forward pass per flipped view.")
def predict(run_dirs, inputs, out, engine, which, tta) -> None:
    """Predict masks for images (PNG/JPEG/TIFF/BMP) or NIfTI volumes in INPUTS (a file or folder) into OUT.

    Several RUN_DIRs predict as an ensemble: their softmax probabilities averaged (the runs must take the
    same input: same data settings, classes and normalisation; PyTorch engine only).

    Writes STEM_mask.png (class ids, palette PNG) and STEM_overlay.png per image, and STEM_seg.nii.gz
    (in the input's voxel grid, affine and header) plus an overlay of one slice per volume.
    """
    from segbench.engine.predict import predict_files

    with user_errors():
        written = predict_files(list(run_dirs), inputs, out, engine=engine, which=which, tta=tta)
    click.echo(f"wrote {len(written)} files to {out}")
