"""int8 post-training quantization of an exported ONNX model for the CPU (``segbench export --quantize int8``).

ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``), with these choices:

- **QDQ format**: QuantizeLinear/DequantizeLinear pairs around each quantized operator, which ONNX Runtime fuses
  into its int8 kernels (Conv, ConvTranspose, MatMul, pooling, Resize, Concat ...); an operator it has no
  int8 kernel for stays float between a DequantizeLinear and a QuantizeLinear. ``QuantizeInfo.quantized_ops``
  and ``float_ops`` say which, per operator type, read off the written graph.
- **Activations uint8 (asymmetric), weights int8 (symmetric), per output channel** (ORT's default U8S8,
  the pair its x86 kernels are built for; per-channel keeps a layer whose filters differ in scale, e.g.
  after BatchNorm folding, from losing its small filters to one per-tensor scale). Without AVX512-VNNI or
  AVX-VNNI, ORT's U8S8 kernels can saturate (its documentation suggests ``reduce_range`` there); this
  project's machine has VNNI, so it is off.
- **Calibration by MinMax** (ORT's default) over ``count`` images of the run's *training* split, drawn
  without replacement by a seeded permutation (deterministic) and prepared as inference prepares them
  (normalised, never augmented: ``TrainSliceDataset.unaugmented``); never the validation split, which
  scores the result.
- **No pre-processing** (``quant_pre_process``): its symbolic shape inference fails on the dynamic-H/W
  U-Net graph (the padding arithmetic), and where it runs, its graph optimisation made the int8 U-Net slower
  (measured here, 96x96: 4.2 ms without, 6.8 ms with, fp32 9.4 ms).

The quantized file keeps the fp32 file's ``segbench`` metadata (its ``ExportInfo``), so ``OnnxModel``
runs it with the same input checks.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from segbench.data.dataset import TrainSliceDataset
from segbench.engine.onnx_runtime import INPUT_NAME, OnnxModel

__all__ = ["CalibrationSet", "QuantizeInfo", "calibration_set", "quantize_int8", "DEFAULT_CALIBRATION"]

DEFAULT_CALIBRATION = 32  # images; MinMax ranges settle within a few dozen (ORT's examples use tens to hundreds)


@dataclass(frozen=True)
class CalibrationSet:
    """The images calibration feeds the fp32 model, each (1, C, H, W), and which training items they are."""

    images: tuple[Tensor, ...]
    ids: tuple[tuple[str, int], ...]  # (case, slice index) of each image, in the order fed
    split: str = "train"
    seed: int = 0
    available: int = 0  # items in the split


@dataclass(frozen=True)
class QuantizeInfo:
    """How ``model.int8.onnx`` was made (its sidecar ``model.int8.onnx.json``)."""

    source: str  # the fp32 file quantized
    format: str  # "QDQ"
    activations: str
    weights: str
    per_channel: bool
    calibration_method: str
    calibration_split: str
    calibration_count: int
    calibration_seed: int
    calibration_ids: list[str]  # 'case#slice index' per image
    quantized_ops: dict[str, int]  # operator type -> nodes run in int8 (wrapped in QuantizeLinear/DequantizeLinear)
    float_ops: dict[str, int]  # operator type -> nodes on the image's path left in float (no int8 kernel in ORT)
    shape_ops: int  # nodes computing sizes, not pixels (a dynamic graph's padding arithmetic): never quantized
    onnxruntime: str
    # On the calibration images (seen by calibration: a sanity check, not an accuracy figure; that is
    # `segbench eval RUN --engine onnx-int8 --compare` on the validation split):
    argmax_agreement: float  # fraction of pixels whose class is the fp32 model's
    max_logit_error: float  # largest |int8 - fp32| logit over the largest |fp32| logit
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_set(train: Dataset, count: int, *, seed: int = 0, size: tuple[int, int] | None = None) -> CalibrationSet:
    """``count`` items of the training split ``train`` (all of them when it has fewer), drawn by a permutation
    seeded with ``seed`` and kept in split order; unaugmented where the split is segbench's own
    (``TrainSliceDataset.unaugmented``). ``size``: resize every image to it (bilinear; a static-shape export)."""
    if count < 1:
        raise ValueError(f"calibration needs at least 1 image, got {count}")
    source = train.unaugmented() if isinstance(train, TrainSliceDataset) else train
    picked = sorted(torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    images, ids = [], []
    for index in picked:
        item = source[index]
        image = item["image"][None].float()
        if size is not None and tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)
        images.append(image)
        ids.append((str(item["case"]), int(item["index"])))
    return CalibrationSet(tuple(images), tuple(ids), seed=seed, available=len(source))


def _reader(images: tuple[Tensor, ...]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{INPUT_NAME: image.numpy()} for image in images])

        def get_next(self):
            return next(self.feeds, None)

    return Reader()


def _op_split(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """(quantized, float) node counts per operator type on the image's data path, and the count of nodes
    off it (shape arithmetic: the sizes a dynamic graph computes from ``Shape``, never quantized). A node
    on the path is quantized when a DequantizeLinear feeds one of its inputs and a QuantizeLinear reads one
    of its outputs (the unit ORT fuses into an int8 kernel), or, for the node whose output is the graph's,
    when a DequantizeLinear feeds it."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    consumers: dict[str, set[str]] = collections.defaultdict(set)
    for node in graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    outputs = {o.name for o in graph.output}
    on_path = {i.name for i in graph.input}  # ONNX lists nodes in topological order
    quantized, kept = collections.Counter(), collections.Counter()
    shape_nodes = 0
    for node in graph.node:
        if node.op_type == "Shape" or not any(name in on_path for name in node.input):
            shape_nodes += node.op_type != "Constant"
            continue
        on_path.update(node.output)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fed = any(producer.get(name) == "DequantizeLinear" for name in node.input)
        read = any("QuantizeLinear" in consumers[out] or out in outputs for out in node.output)
        (quantized if fed and read else kept)[node.op_type] += 1
    return dict(sorted(quantized.items())), dict(sorted(kept.items())), shape_nodes


def _agreement(fp32: OnnxModel, int8: OnnxModel, images: tuple[Tensor, ...]) -> tuple[float, float]:
    same = total = 0
    error = scale = 0.0
    for image in images:
        a, b = fp32(image), int8(image)
        same += int((a.argmax(1) == b.argmax(1)).sum())
        total += a[:, 0].numel()
        error, scale = max(error, float((a - b).abs().max())), max(scale, float(a.abs().max()))
    return same / total, error / max(scale, 1e-12)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: CalibrationSet, *,
                  per_channel: bool = True) -> QuantizeInfo:
    """Quantize the exported fp32 model at ``fp32_path`` into ``out_path`` (QDQ, U8S8, MinMax over
    ``calibration``); returns what was done (see the module docstring)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not calibration.images:
        raise ValueError("calibration needs at least 1 image")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs "consider pre-processing" on the root logger: declined on purpose (above)
    try:
        quantize_static(str(fp32_path), str(out_path), _reader(calibration.images), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    quantized, kept, shape_nodes = _op_split(out_path)
    fp32, int8 = OnnxModel(fp32_path), OnnxModel(out_path)  # the metadata travels with the graph: checked here
    agreement, error = _agreement(fp32, int8, calibration.images)
    note = (f"{calibration.available} training items, all used" if len(calibration.images) == calibration.available
            else "")
    return QuantizeInfo(
        source=fp32_path.name, format="QDQ", activations="uint8, asymmetric, per tensor",
        weights=f"int8, symmetric, {'per output channel' if per_channel else 'per tensor'}", per_channel=per_channel,
        calibration_method="MinMax", calibration_split=calibration.split, calibration_count=len(calibration.images),
        calibration_seed=calibration.seed, calibration_ids=[f"{case}#{index}" for case, index in calibration.ids],
        quantized_ops=quantized, float_ops=kept, shape_ops=shape_nodes, onnxruntime=onnxruntime.__version__,
        argmax_agreement=agreement, max_logit_error=error, note=note)
