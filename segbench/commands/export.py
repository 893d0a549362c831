"""`segbench export`: a trained run's model as ONNX, checked against PyTorch (``segbench.export.onnx``), and
with ``--quantize int8`` also quantized for the CPU, calibrated on the run's training split
(``segbench.export.quantize``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from segbench.run_files import INT8_ONNX_FILE, ONNX_FILE

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
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="int8: also write RUN_DIR/model.int8.onnx, ONNX Runtime's static post-training quantization of "
                   "model.onnx (QDQ, uint8 activations, int8 per-channel weights, MinMax calibration on the run's "
                   "training split). Score it with `segbench eval RUN_DIR --engine onnx-int8 --compare`.")
@click.option("--calibration", type=click.IntRange(min=1), default=32, show_default=True,
              help="--quantize int8: training images to calibrate on (drawn without replacement, seeded).")
@click.option("--calibration-seed", type=int, default=0, show_default=True, help="--quantize int8: which images.")
@click.option("--data", "data_source", default=None, metavar="DATA",
              help="--quantize int8: where the run's data is now (default: the data.source it was trained on).")
def export(run_dirs: tuple[Path, ...], fmt: str, size, which: str, shape: str, quantize: str, calibration: int,
           calibration_seed: int, data_source: str | None) -> None:
    """Export a trained run's model to RUN_DIR/model.onnx, checked against PyTorch with ONNX Runtime
    (with --quantize int8 also RUN_DIR/model.int8.onnx).

    One run only: an ensemble is not exported as one graph (predict it with `segbench predict RUN1 RUN2 ...`)."""
    from segbench.engine.checkpoint import load_run_model
    from segbench.export.onnx import export_onnx, refuse_outside_torch

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
    if quantize == "int8":  # refused or unreadable before minutes of export: the model first, then the data
        try:
            refuse_outside_torch(model)
        except RuntimeError as err:
            raise click.ClickException(str(err)) from err
    train_split = _training_split(run_dir, cfg, data_source) if quantize == "int8" else None
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
    if quantize == "int8":
        _quantize(path, run_dir / INT8_ONNX_FILE, train_split, calibration, calibration_seed, result)


def _training_split(run_dir: Path, cfg, data_source: str | None):
    """The run's training split, loaded as it trained (``data.source`` or ``--data``), checked to hold the cases
    the run recorded (``run_folder.compare_split_record``): calibration must not see a validation image."""
    import dataclasses

    from segbench.data import DataError, load_data
    from segbench.data.pipeline import split_record
    from segbench.engine import run_folder

    data_cfg = dataclasses.replace(cfg.data, source=data_source) if data_source else cfg.data
    try:
        data = load_data(data_cfg)
        warnings = run_folder.compare_split_record(run_dir, split_record(data), "train")
    except (DataError, FileNotFoundError) as err:
        where = "--data" if data_source else "data.source"
        raise click.ClickException(
            f"int8 calibration reads the training split of {run_dir}, and its data ({where}: {data_cfg.source}) "
            f"cannot be used: {err}; pass --data PATH to the data the run was trained on") from None
    for warning in warnings:
        click.echo(warning, err=True)
    return data.splits["train"]


def _quantize(fp32_path: Path, path: Path, train_split, count: int, seed: int, exported) -> None:
    from segbench.export.quantize import calibration_set, quantize_int8

    size = None if exported.dynamic else exported.input_size  # a static graph takes only its traced size
    calibration = calibration_set(train_split, count, seed=seed, size=size)
    try:
        quantized = quantize_int8(fp32_path, path, calibration)
    except Exception as err:  # onnxruntime.quantization raises many types; each names what it could not do
        path.unlink(missing_ok=True)
        raise click.ClickException(f"ONNX Runtime could not quantize {fp32_path}: "
                                   f"{(str(err).strip().splitlines() or [type(err).__name__])[0]}") from None
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps(quantized.to_dict(), indent=2))
    ops = ", ".join(f"{op} {n}" for op, n in quantized.quantized_ops.items())
    click.echo(f"wrote {path} (int8 QDQ, calibrated on {quantized.calibration_count} training images, seed {seed}; "
               f"int8: {ops or 'nothing'}; argmax agreement with fp32 on them {quantized.argmax_agreement:.4f}); "
               f"details in {sidecar.name}")
    if quantized.float_ops:
        click.echo("kept in float: " + ", ".join(f"{op} {n}" for op, n in quantized.float_ops.items()))
