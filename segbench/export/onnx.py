"""ONNX export of any registered architecture (running the file: ``segbench.engine.onnx_runtime``).

Export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), deprecated but
working in torch 2.13. Since torch 2.9 the default is the ``torch.export``-based exporter, which needs
the package ``onnxscript`` (not a segbench dependency) and fails without it. Tracing bakes Python-level decisions (``if pad_h:``, loops over a
window mask) into the graph, so an export claiming dynamic H/W is only trusted after ONNX Runtime
reproduced the PyTorch logits at other sizes too; where it does not, the export falls back to a static
shape and says why in ``ExportInfo.note``.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.blocks import SegmentationModel
from segbench.engine.onnx_runtime import (
    DYNAMIC_BATCH, DYNAMIC_HW, INPUT_NAME, METADATA_KEY, OPSET, OUTPUT_NAME, STATIC, ExportInfo, OnnxModel,
    load_onnx_model, onnx_providers, session as _session,
)  # fmt: skip

__all__ = ["OPSET", "ExportInfo", "OnnxModel", "export_onnx", "load_onnx_model", "onnx_providers", "refuse_outside_torch"]


def _pooling_matrix(in_size: int, out_size: int, like: Tensor) -> Tensor:
    """Row i averages input cells [floor(i*n/o), ceil((i+1)*n/o)): adaptive average pooling as a matmul."""
    matrix = torch.zeros(out_size, in_size, dtype=like.dtype, device=like.device)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


_adaptive_avg_pool2d = F.adaptive_avg_pool2d
_static_only: list[str] = []  # why the current trace can only be static (filled while tracing)


def _traceable_adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """ONNX has no adaptive pooling: the stock exporter handles only global pooling and bins that divide
    an input size known at export time, which PSPNet's and UPerNet's pyramids (bins 1, 2, 3, 6 over e.g.
    64x64 features) are not. Two constant pooling matrices are exact for any bins; they bake in the
    traced H, W, so a model that pools this way exports with a static shape."""
    bins = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if bins == (1, 1) or None in bins:
        return _adaptive_avg_pool2d(input, output_size)
    height, width = int(input.shape[-2]), int(input.shape[-1])
    _static_only.append(f"adaptive average pooling to {bins[0]}x{bins[1]} bins needs a fixed input size")
    rows = _pooling_matrix(height, bins[0], input)
    cols = _pooling_matrix(width, bins[1], input).t()
    return torch.matmul(torch.matmul(rows, input), cols)


@contextmanager
def _export_overrides() -> Iterator[None]:
    """Exportable adaptive pooling, and quiet: the legacy exporter's deprecation notice and tracer
    warnings are expected (verification against PyTorch decides what is trusted), and on a failed
    attempt it dumps the whole TorchScript graph to C++ stdout (torch 2.13 leaves its log switched on)."""
    F.adaptive_avg_pool2d = _traceable_adaptive_avg_pool2d  # nn.AdaptiveAvgPool2d calls it through F
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
        os.close(devnull)
        F.adaptive_avg_pool2d = _adaptive_avg_pool2d


def _trace(model: nn.Module, example: Tensor, path: Path, shape_mode: str) -> None:
    _static_only.clear()
    axes = {DYNAMIC_HW: {0: "batch", 2: "height", 3: "width"}, DYNAMIC_BATCH: {0: "batch"}, STATIC: None}[shape_mode]
    with _export_overrides(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if axes else None,
            do_constant_folding=True,
        )


def _mismatch(model: nn.Module, session, shape: tuple[int, ...], device: torch.device) -> str | None:
    """Run PyTorch and ONNX Runtime on one random input; the reason they disagree, or None."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    try:
        with torch.no_grad():
            expected = model(x.to(device)).float().cpu()
    except (ValueError, RuntimeError):
        return None  # the architecture itself does not take this size: nothing to compare
    try:
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    except Exception as err:  # onnxruntime raises its own exception types
        return f"ONNX Runtime failed at {shape}: {_first_line(err)}"
    if got.shape != expected.shape:
        return f"output shape {tuple(got.shape)} instead of {tuple(expected.shape)} at input {shape}"
    diff = (got - expected).abs().max().item()
    if diff > 1e-4 * max(1.0, expected.abs().max().item()):
        return f"logits differ by {diff:.3g} at input {shape}"
    return None


def _first_line(err: Exception) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = text.replace("Unsupported: ONNX export of operator ", "").split(". Please feel free")[0]
    return text[:200]


def _probe_shapes(shape_mode: str, channels: int, size: tuple[int, int]) -> list[tuple[int, ...]]:
    h, w = size
    shapes = [(1, channels, h, w)]
    if shape_mode != STATIC:
        shapes.append((2, channels, h, w))
    if shape_mode == DYNAMIC_HW:
        # A larger "round" size and an awkward one that exercises the net's internal padding.
        shapes += [(1, channels, h + 32, w + 64), (2, channels, h + 7, w + 13)]
    return shapes


def _try_mode(model, path, shape_mode, channels, trace_size, device) -> str | None:
    example = torch.randn(1, channels, *trace_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        _trace(model, example, path, shape_mode)
    except Exception as err:  # the exporter raises many types; each is a reason to fall back
        return f"{shape_mode} export failed: {_first_line(err)}"
    if shape_mode == DYNAMIC_HW and _static_only:
        return f"{shape_mode} export failed: {_static_only[0]}"
    session = _session(path)
    for shape in _probe_shapes(shape_mode, channels, trace_size):
        problem = _mismatch(model, session, shape, device)
        if problem:
            return f"{shape_mode} export wrong: {problem}"
    return None


def refuse_outside_torch(model: nn.Module) -> None:
    """A model with a part that computes outside torch cannot become one ONNX graph: the trace would record that
    part's output for the tracing input as constants. Today that part is DeepLab's fully connected CRF."""
    from segbench.models.architectures.dense_crf import DenseCRF

    if any(isinstance(module, DenseCRF) for module in model.modules()):
        raise RuntimeError(
            f"{type(model).__name__} post-processes with the fully connected CRF (crf='dense'), which runs "
            "Krähenbühl's C++ code (pydensecrf2) outside torch, so no ONNX graph can hold it (a trace would freeze "
            "one image's CRF output as constants); export a run trained with crf='conv' (ConvCRF: torch operators) "
            "or crf='none', or apply the dense CRF to the ONNX model's scores yourself")


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: tuple[int, int],
    in_channels: int,
    dynamic: bool | None = None,
) -> ExportInfo:
    """Export ``model`` in eval mode to ONNX (opset 17) and check ONNX Runtime against PyTorch.

    ``dynamic=None`` tries dynamic batch/H/W first and falls back to a static H/W (then a fully static
    shape) when the trace does not hold at other sizes, recording why in ``note``; ``True`` insists on
    dynamic H/W (error otherwise), ``False`` asks for static H/W. The model's train/eval mode is restored.
    """
    refuse_outside_torch(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (int(input_size[0]), int(input_size[1]))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            num_classes = model(torch.zeros(1, in_channels, *size, device=device)).shape[1]
        modes = {None: [DYNAMIC_HW, DYNAMIC_BATCH, STATIC], True: [DYNAMIC_HW], False: [DYNAMIC_BATCH, STATIC]}
        reasons: list[str] = []
        chosen = None
        for shape_mode in modes[dynamic]:
            trace_sizes = [size, (size[0] + 7, size[1] + 13)] if shape_mode == DYNAMIC_HW else [size]
            for trace_size in trace_sizes:
                problem = _try_mode(model, path, shape_mode, in_channels, trace_size, device)
                if problem is None:
                    chosen = (shape_mode, trace_size)
                    break
                reasons.append(problem)
                if "export failed" in problem:
                    break  # tracing elsewhere cannot help an operator the exporter rejects
            if chosen:
                break
    finally:
        model.train(was_training)
    if chosen is None:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"could not export {type(model).__name__} to ONNX: " + "; ".join(reasons))
    shape_mode, trace_size = chosen
    note = "; ".join(reasons)
    if shape_mode == DYNAMIC_HW and trace_size != size:
        note = f"traced at {trace_size[0]}x{trace_size[1]} so the internal padding path is recorded ({note})"
    elif shape_mode != DYNAMIC_HW and dynamic is None:
        note = f"fell back to {shape_mode}: {note}"
    info = ExportInfo(trace_size, in_channels, num_classes, shape_mode, OPSET, model.arch_name if isinstance(model, SegmentationModel) else None, note)
    _write_metadata(path, info)
    return info


def _write_metadata(path: Path, info: ExportInfo) -> None:
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(proto, str(path))


