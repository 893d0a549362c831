"""Predict label maps for new images and volumes with a trained run (``segbench predict``).

Inputs are prepared exactly as training prepared its data (the run's ``config.yaml`` and data
info): same channel handling, resize and normalisation; NIfTI volumes are reoriented to RAS+,
cut along the training ``slice_axis``, and the predicted labels are put back into the input's own
voxel grid, affine and header. Logits are computed at the network's input size and resized back
to the image's before the arg-max. The PyTorch engine runs ``segbench.engine.inference.inference_network``:
BatchNorms folded into the convolutions before them (the same function up to float rounding, one pass
over the activations fewer per BatchNorm), conv/linear weights stored in the autocast dtype.

Outputs per input ``STEM``: 2D images -> ``STEM_mask.png`` (palette PNG whose pixel values are the
class ids) and ``STEM_overlay.png`` (classes in colour over the image, background left clear);
volumes -> ``STEM_seg.nii.gz`` and ``STEM_overlay.png`` (the slice with the most foreground).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from segbench.engine.checkpoint import load_run_settings
from segbench.engine.device import Precision, inference_precision, resolve_device
from segbench.engine.evaluate import inference_settings
from segbench.data.imageio import IMAGE_EXTENSIONS
from segbench.data.prepare import prepare_image, prepare_volume_slices
from segbench.data.volumes import is_nifti, nifti_stem
from segbench.engine.inference import inference_network, predict_scores, tta_flips
from segbench.engine import run_folder
from segbench.run_files import writable

__all__ = ["PredictError", "collect_inputs", "default_palette", "predict_files"]

# The input on which the torch engine reads which BatchNorms fold into their convolutions and checks
# the folded network against the trained one (segbench.models.fold); every architecture takes it.
PROBE_SIZE = (64, 64)


class PredictError(ValueError):
    """Bad input to ``segbench predict`` (the message says what and how to fix it)."""


def collect_inputs(inputs: str | Path) -> list[tuple[Path, Path]]:
    """(file, path relative to the input folder) for an image/volume file or every one under a folder."""
    inputs = Path(inputs)
    if inputs.is_file():
        files, root = [inputs], inputs.parent
    elif inputs.is_dir():
        files, root = sorted(p for p in inputs.rglob("*") if p.is_file()), inputs
    else:
        raise PredictError(f"no file or folder at {inputs}")
    usable = [p for p in files if is_nifti(p) or p.suffix.lower() in IMAGE_EXTENSIONS]
    if not usable:
        raise PredictError(
            f"no images or volumes at {inputs}; readable: {', '.join(IMAGE_EXTENSIONS)}, .nii, .nii.gz"
        )
    return [(p, p.relative_to(root)) for p in usable]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map (bit-interleaved class ids): distinct colours, class 0 black."""
    palette = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) stored pixels -> (H, W, 3) uint8 for an overlay (grey and 16-bit rescaled)."""
    image = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    image = np.moveaxis(image.astype(np.float32), 0, -1)
    low, high = np.percentile(image, (1, 99))
    return (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def _write_mask(labels: np.ndarray, palette: list, path: Path) -> None:
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    mask.putpalette(flat + [0] * (768 - len(flat)))
    mask.save(writable(path))


def _write_overlay(display: np.ndarray, labels: np.ndarray, palette: list, background: int | None, path: Path) -> None:
    colours = np.asarray(palette, dtype=np.float32)[labels]
    alpha = np.where(labels != background, 0.5, 0.0)[..., None] if background is not None else 0.5
    Image.fromarray((display * (1 - alpha) + colours * alpha).astype(np.uint8)).save(writable(path))


class _Runner:
    """The run's model (PyTorch or ONNX Runtime), or an ensemble's members, plus how inputs are prepared."""

    def __init__(self, run_dirs: list[Path], engine: str, which: str, tta: bool = False):
        if engine == "torch":
            from segbench.engine.ensemble import load_members

            members = load_members(run_dirs, which)  # one run: itself; several: checked to take the same input
            self.cfg, self.info = members.cfg, members.info
            self.device = resolve_device("auto")
            self.precision = inference_precision(self.cfg.train.amp, self.device)
            probe = torch.randn(1, self.info.in_channels, *PROBE_SIZE, generator=torch.Generator().manual_seed(0))
            self.models = [inference_network(model.to(self.device), probe.to(self.device), self.precision).model
                           for model in members.models]
        elif engine == "onnx":
            from segbench.engine.onnx_runtime import load_onnx_model  # optional dependency: onnxruntime

            if len(run_dirs) > 1:
                raise PredictError("--engine onnx runs one exported run; predict an ensemble with --engine torch")
            try:
                self.models = [load_onnx_model(run_dirs[0])]
            except FileNotFoundError as err:
                raise PredictError(str(err)) from None
            self.cfg, self.info = load_run_settings(run_dirs[0])
            self.device, self.precision = torch.device("cpu"), Precision(None, "cpu")
        else:
            raise PredictError(f"unknown engine {engine!r}; valid: torch, onnx")
        self.settings = inference_settings(self.cfg.eval)
        if tta and not self.settings.flips:
            self.settings = dataclasses.replace(self.settings, flips=tta_flips(self.info.volumetric))
        model = self.models[0]
        fixed = getattr(getattr(model, "info", None), "shape_mode", "dynamic") != "dynamic"
        self.fixed_size = tuple(model.info.input_size) if fixed else None

    def labels(self, batch: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
        """(N, C, H, W) network-ready float32 -> (N, *out_size) class ids."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.fixed_size and tuple(x.shape[-2:]) != self.fixed_size:
            x = F.interpolate(x, size=self.fixed_size, mode="bilinear", align_corners=False)
        with self.precision.autocast():
            logits = predict_scores(self.models, x, self.settings).float()
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits.argmax(1).cpu().numpy()


def _predict_image(runner: _Runner, path: Path, out_base: Path, palette: list) -> list[Path]:
    stored, network_input = prepare_image(path, runner.info.normalization, runner.info.in_channels, runner.cfg.data)
    labels = runner.labels(network_input[None], stored.shape[-2:])[0]
    mask_path, overlay_path = out_base.with_name(out_base.name + "_mask.png"), out_base.with_name(out_base.name + "_overlay.png")
    _write_mask(labels, palette, mask_path)
    _write_overlay(_display(stored), labels, palette, runner.cfg.eval.background, overlay_path)
    return [mask_path, overlay_path]


def _predict_volume(runner: _Runner, path: Path, out_base: Path, palette: list) -> list[Path]:
    from segbench.data import volumes

    stored, prepared = prepare_volume_slices(path, runner.info.normalization, runner.info.in_channels, runner.cfg.data)
    slices, batch = prepared.slices, max(1, runner.cfg.eval.batch_size)
    in_plane_size = stored.shape[-2:]  # logits go back to the stored grid before the arg-max
    labels = np.concatenate([runner.labels(slices[i : i + batch], in_plane_size) for i in range(0, len(slices), batch)])
    volume = volumes.restore_volume(labels, prepared)
    seg_path = out_base.with_name(out_base.name + "_seg.nii.gz")
    volumes.write_labels(volume, prepared, writable(seg_path))
    # A quick look: the slice with the most foreground, in the network's orientation.
    in_plane = volumes.labels_to_slices(volumes.to_canonical(volume, prepared.affine), runner.cfg.data.slice_axis)
    background = runner.cfg.eval.background
    k = int(np.argmax([(s != background).sum() for s in in_plane])) if background is not None else len(in_plane) // 2
    overlay_path = out_base.with_name(out_base.name + "_overlay.png")
    _write_overlay(_display(stored[k]), in_plane[k], palette, background, overlay_path)
    return [seg_path, overlay_path]


def _outputs(out_base: Path, path: Path) -> list[Path]:
    """The files predicting ``path`` writes (``_predict_image`` / ``_predict_volume``)."""
    kinds = ("_seg.nii.gz", "_overlay.png") if is_nifti(path) else ("_mask.png", "_overlay.png")
    return [out_base.with_name(out_base.name + kind) for kind in kinds]


def _claim_outputs(out_dir: Path, outputs: list[list[Path]]) -> None:
    """Before the first write: every output is new or one an earlier predict wrote (``run_folder``); then
    listed in ``OUT/segbench_run.json``, so predicting again into OUT may replace them."""
    names = [p.relative_to(out_dir).as_posix() for group in outputs for p in group]
    for path in (p for group in outputs for p in group):
        writable(path, managed=out_dir)
    run_folder.claim_output(out_dir, "predict")
    run_folder.record(out_dir, *names)


def predict_files(
    run_dir: str | Path | list[str | Path], inputs: str | Path, out_dir: str | Path, *, engine: str = "torch",
    which: str = "best", tta: bool = False, progress: bool = True,
) -> list[Path]:
    """Predict every image/volume at ``inputs`` (a file or folder) into ``out_dir``; returns the files written.

    ``run_dir``: one run, or a list of runs whose ensemble predicts (softmax probabilities averaged,
    ``inference.predict_scores``). ``tta``: flip TTA with the flips valid for the data (``inference.tta_flips``)
    unless the run's ``eval.flips`` names some."""
    run_dirs = [Path(d) for d in run_dir] if isinstance(run_dir, (list, tuple)) else [Path(run_dir)]
    out_dir = Path(out_dir)
    files = collect_inputs(inputs)
    runner = _Runner(run_dirs, engine, which, tta)
    palette = [tuple(c) for c in runner.info.palette] if runner.info.palette else default_palette(runner.info.num_classes)
    _claim_outputs(out_dir, [_outputs(out_dir / relative.parent / nifti_stem(path), path) for path, relative in files])
    written = []
    for path, relative in tqdm(files, desc="predict", disable=not progress, dynamic_ncols=True):
        out_base = out_dir / relative.parent / nifti_stem(path)
        out_base.parent.mkdir(parents=True, exist_ok=True)
        if is_nifti(path):
            written += _predict_volume(runner, path, out_base, palette)
        else:
            written += _predict_image(runner, path, out_base, palette)
    return written
