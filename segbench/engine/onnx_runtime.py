"""Running an exported ``.onnx`` file with ONNX Runtime like the PyTorch model in eval mode (float NCHW
Tensor in, logits Tensor out): ``segbench predict --engine onnx``, ``segbench eval --engine onnx|onnx-int8``
and ``segbench speed``'s ONNX row.
The file's ``ExportInfo`` (written by ``segbench.export.onnx``) says which input shapes it accepts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from segbench.run_files import ONNX_FILE

__all__ = ["OPSET", "METADATA_KEY", "ExportInfo", "OnnxModel", "load_onnx_model", "onnx_providers"]

OPSET = 17
METADATA_KEY = "segbench"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# Shape modes, tried in this order when the exporter is left to choose.
DYNAMIC_HW, DYNAMIC_BATCH, STATIC = "dynamic", "static-hw", "static"


@dataclass(frozen=True)
class ExportInfo:
    """What an ``.onnx`` file was traced at and which input shapes it accepts (stored in the file)."""

    input_size: tuple[int, int]  # the H, W it was traced at
    in_channels: int
    num_classes: int
    shape_mode: str  # "dynamic" (any N, H, W), "static-hw" (any N, traced H, W) or "static"
    opset: int = OPSET
    arch: str | None = None
    note: str = ""

    @property
    def dynamic(self) -> bool:
        return self.shape_mode == DYNAMIC_HW

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ExportInfo":
        data = json.loads(text)
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)


def onnx_providers(device: str = "cpu", available: list[str] | None = None) -> list[str]:
    """ONNX Runtime execution providers for ``device``: CUDA first where ``onnxruntime-gpu`` offers it
    and a CUDA device is asked for, the CPU otherwise (and as CUDA's fallback)."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path | str, threads: int | None = None, device: str = "cpu"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: ORT warns about every folded initializer otherwise
    # ORT's idle threads otherwise spin for a while after each run, taking the cores from whatever torch
    # does next (measured: a training step timed right after an ORT run took 15-35% longer).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=onnx_providers(device))


class OnnxModel(nn.Module):
    """An ONNX Runtime session that is called like the PyTorch model in eval mode. A module without parameters,
    so that the one evaluation loop (``evaluate.evaluate``), ``inference.predict_scores`` and the timing
    harness take it as they take a network (``.eval()``, ``.to(device)`` and forward hooks do what they do on
    any module; the graph itself always runs as exported)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, device: str = "cpu"):
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads, device)
        # Which provider runs the graph: the first of the session's (CUDA where it was asked for and offered).
        self.provider = self.session.get_providers()[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{self.path} was not written by segbench.export.onnx (no {METADATA_KEY!r} metadata)")
        self.info = ExportInfo.from_json(meta[METADATA_KEY])

    def forward(self, x: Tensor) -> Tensor:
        info = self.info
        if x.ndim != 4 or x.shape[1] != info.in_channels:
            raise ValueError(f"expected a float tensor (N, {info.in_channels}, H, W), got shape {tuple(x.shape)}")
        if info.shape_mode != DYNAMIC_HW and tuple(x.shape[-2:]) != info.input_size:
            h, w = info.input_size
            raise ValueError(
                f"{self.path.name} takes only {h}x{w} inputs ({info.shape_mode} export: {info.note}); "
                f"got {x.shape[-2]}x{x.shape[-1]}. Resize the input or re-export with --size."
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if info.shape_mode == STATIC:
            outputs = [self.session.run(None, {INPUT_NAME: array[i : i + 1]})[0] for i in range(len(array))]
            logits = torch.cat([torch.from_numpy(o) for o in outputs])
        else:
            logits = torch.from_numpy(self.session.run(None, {INPUT_NAME: array})[0])
        return logits.to(x.device)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, {self.info.shape_mode}, traced at {self.info.input_size})"


def load_onnx_model(run_dir_or_path: str | Path, *, threads: int | None = None, device: str = "cpu") -> OnnxModel:
    """Open ``RUN_DIR/model.onnx`` (or a given ``.onnx`` file) with ONNX Runtime: on the CPU, or with
    the CUDA execution provider for ``device="cuda"`` when onnxruntime-gpu is installed
    (``OnnxModel.provider`` says which runs)."""
    path = Path(run_dir_or_path)
    if path.is_dir():
        path = path / ONNX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no ONNX model at {path}; write one with `segbench export {path.parent} --format onnx`"
        )
    return OnnxModel(path, threads=threads, device=device)
