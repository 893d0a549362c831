"""``segbench speed``: training-step and inference time of every architecture, against a peer
implementation of the same architecture where one is installed, with achieved FLOP/s as a fraction
of what this machine's fp32 matmul reaches in the same run.

How the figures are taken, and why:

- Everything runs in one process and **interleaved**: each round times every contender once (ours
  train, peer train, ours infer, peer infer, ONNX infer, a 2048x2048 matmul), and figures are the
  medians over ``repeats`` rounds after ``warmup`` untimed ones. On a shared or thermally throttled
  machine a slow period then hits all contenders alike instead of whichever ran during it.
- A training step is forward + loss + backward + optimizer step (segbench's optimizer for the
  architecture's family: SGD for CNNs, AdamW for transformers; the peer gets the same). Inference is
  an eval-mode forward under ``torch.inference_mode`` returning logits at input resolution.
- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, 2 per
  multiply-add; the training step counts forward + backward). FLOP/s = FLOPs / median time, and the
  "% matmul" column divides it by the median rate of the matmul timed in the same rounds: the share
  of the machine's dense fp32 throughput the model turns into useful work.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from segbench.bench.peers import build_peer

__all__ = ["SpeedSettings", "run_speed", "benchmark_arch", "matmul_rate", "interleave", "format_table", "format_ms",
           "format_rate"]

MATMUL_SIZE = 2048


@dataclass(frozen=True)
class SpeedSettings:
    size: tuple[int, int] = (512, 512)
    batch: int = 2  # >= 2: BatchNorm in training mode needs more than one value per channel
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    engines: tuple[str, ...] = ("torch",)  # add "onnx" for ONNX Runtime inference of our export
    channels_last: bool | None = None  # None: as training does, channels-last for CNN-family models only
    compile: bool = False
    peers: bool = True
    num_classes: int = 21
    in_channels: int = 3
    options: dict[str, dict] = field(default_factory=dict)  # arch -> builder options
    threads: int | None = None  # torch and ONNX Runtime intra-op threads; None: torch's default
    breakdown: bool = False  # also profile one segbench training step by operator category
    train: bool = True  # False: inference only (quicker comparisons of engines and memory formats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(closures: dict[str, Callable[[], object]], *, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of every closure, timed round-robin (A B C A B C ...) after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in closures.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in closures}
    for _ in range(repeats):
        for name, fn in closures.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _matmul_closure(device: torch.device, n: int = MATMUL_SIZE) -> Callable[[], Tensor]:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(device) for _ in range(2))
    return lambda: torch.matmul(a, b)


def matmul_rate(device: torch.device | str = "cpu", *, repeats: int = 5, n: int = MATMUL_SIZE) -> float:
    """FLOP/s of an n x n fp32 matmul (median of ``repeats``): the machine's dense-compute yardstick."""
    device = torch.device(device)
    times = interleave({"matmul": _matmul_closure(device, n)}, repeats=repeats, warmup=1, device=device)["matmul"]
    return 2 * n**3 / statistics.median(times)


def _loss(output, target: Tensor, aux_weight: float) -> Tensor:
    """The engine's default loss: cross-entropy, plus the auxiliary head's times ``aux_weight``."""
    if isinstance(output, dict):
        loss = F.cross_entropy(output["out"], target, ignore_index=255)
        if output.get("aux") is not None and aux_weight:
            loss = loss + aux_weight * F.cross_entropy(output["aux"], target, ignore_index=255)
        return loss
    return F.cross_entropy(output, target, ignore_index=255)


def _optimizer(model: nn.Module, family: str) -> torch.optim.Optimizer:
    """The engine's optimizer with the family's defaults (its parameter groups included)."""
    from segbench.config import TrainConfig
    from segbench.engine.optim import build_optimizer, resolve_train_config

    return build_optimizer(model, resolve_train_config(TrainConfig(), family), family)


def train_step_fn(model: nn.Module, family: str) -> Callable[[Tensor, Tensor], None]:
    """One optimisation step on (images, labels): forward, loss (with the auxiliary head's at the
    model's ``aux_weight``; peers use their own ``training_loss``), backward, optimizer step."""
    optimizer = _optimizer(model, family)
    aux_weight = float(getattr(model, "aux_weight", 0.0) or 0.0)
    own_loss = getattr(model, "training_loss", None)

    def step(x: Tensor, target: Tensor) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = own_loss(x, target) if own_loss else _loss(model(x), target, aux_weight)
        loss.backward()
        optimizer.step()

    return step


def _train_closure(model: nn.Module, x: Tensor, target: Tensor, family: str) -> Callable[[], None]:
    step = train_step_fn(model, family)
    return lambda: step(x, target)


def _infer_closure(model: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    def infer() -> None:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.inference_mode():
            model(x)

    return infer


def _count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _train_flops(model: nn.Module, x: Tensor, target: Tensor) -> int:
    """Forward + backward FLOPs of one step (the optimizer's element-wise update is not counted)."""
    aux_weight = float(getattr(model, "aux_weight", 0.0) or 0.0)
    own_loss = getattr(model, "training_loss", None)

    def forward_backward() -> None:
        model.train()
        loss = own_loss(x, target) if own_loss else _loss(model(x), target, aux_weight)
        loss.backward()

    flops = _count_flops(forward_backward)
    model.zero_grad(set_to_none=True)
    return flops


def _prepare(model: nn.Module, channels_last: bool, device: torch.device) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _compile_in_place(model: nn.Module) -> None:
    """``torch.compile`` the module that does the work, in place (a peer wrapper's inner model, so its
    own loss path is compiled too)."""
    getattr(model, "hf", model).compile()


def _onnx_contender(model: nn.Module, settings: SpeedSettings, x: Tensor) -> tuple[Callable | None, dict]:
    """Export ``model`` (on the CPU, before any compile) and return ONNX Runtime inference on ``x``."""
    from segbench.export import export_onnx, load_onnx_model

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            info = export_onnx(model, Path(tmp) / "model.onnx", input_size=settings.size, in_channels=settings.in_channels)
        except RuntimeError as err:
            return None, {"note": str(err)}
        export_s = time.perf_counter() - start
        onnx_model = load_onnx_model(Path(tmp) / "model.onnx")  # the session keeps the graph in memory
    x_cpu = x.detach().to("cpu", memory_format=torch.contiguous_format)
    meta = {"export_s": export_s, "shape_mode": info.shape_mode, "note": info.note}
    if settings.device != "cpu":
        meta["note"] = ("ONNX Runtime runs on the CPU (onnxruntime CPU build). " + info.note).strip()
    return (lambda: onnx_model(x_cpu)), meta


def benchmark_arch(arch: str, settings: SpeedSettings, *, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Time one architecture (ours, its peer, ONNX Runtime) interleaved with the matmul yardstick."""
    from segbench.bench.measure import count_parameters
    from segbench.registry import ARCHITECTURES, build_model

    device = torch.device(settings.device)
    options = dict(settings.options.get(arch, {}))
    ours = build_model(arch, num_classes=settings.num_classes, in_channels=settings.in_channels, **options)
    # As in training: the instance's family (UPerNet on a ResNet follows the CNN recipe) sets the
    # optimizer and, unless the settings force one, the memory format.
    family = getattr(ours, "family", ARCHITECTURES[arch].family)
    channels_last = settings.channels_last if settings.channels_last is not None else family == "cnn"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(settings.batch, settings.in_channels, *settings.size, generator=generator)
    target = torch.randint(0, settings.num_classes, (settings.batch, *settings.size), generator=generator)
    x, target = x.to(device), target.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    result: dict = {"arch": arch, "family": family, "options": options, "channels_last": channels_last,
                    "impls": {}, "notes": []}
    if channels_last and settings.channels_last is None:
        result["notes"].append("channels-last memory format (the default for CNN-family models)")
    contenders: dict[str, nn.Module] = {"segbench": ours}
    if settings.peers:
        peer, why = build_peer(arch, ours, num_classes=settings.num_classes, in_channels=settings.in_channels)
        if peer is None:
            result["notes"].append(why)
        else:
            contenders["peer"] = peer.model
            result["peer_name"] = peer.name
            if peer.note:
                result["notes"].append(peer.note)

    closures: dict[str, Callable[[], object]] = {}
    if "onnx" in settings.engines:
        progress(f"{arch}: exporting to ONNX")
        onnx_infer, onnx_meta = _onnx_contender(ours, settings, x)
        if onnx_infer is None:
            result["notes"].append(f"ONNX: {onnx_meta['note']}")
        else:
            closures["onnx.infer"] = onnx_infer
    for name, model in contenders.items():
        model = _prepare(model, channels_last, device)
        entry = result["impls"][name] = {"params": count_parameters(model)}
        progress(f"{arch}: counting FLOPs ({name})")
        kinds = ("train", "infer") if settings.train else ("infer",)
        if settings.train:
            entry["train_flops"] = _train_flops(model, x, target)
            closures[f"{name}.train"] = _train_closure(model, x, target, family)
        entry["infer_flops"] = _count_flops(_infer_closure(model, x))
        closures[f"{name}.infer"] = _infer_closure(model, x)
        if settings.compile:
            _compile_in_place(model)
            for kind in kinds:
                start = time.perf_counter()
                closures[f"{name}.{kind}"]()
                _sync(device)
                entry[f"compile_{kind}_s"] = time.perf_counter() - start
    if "onnx.infer" in closures:
        segbench_entry = result["impls"]["segbench"]
        result["impls"]["onnx"] = {"params": segbench_entry["params"], "infer_flops": segbench_entry["infer_flops"], **onnx_meta}
    if "peer" in result["impls"]:
        ours_params, peer_params = result["impls"]["segbench"]["params"], result["impls"]["peer"]["params"]
        if abs(ours_params - peer_params) > 0.01 * ours_params:
            result["notes"].append(f"parameter counts differ: segbench {ours_params:,} vs peer {peer_params:,}")
    closures["matmul"] = _matmul_closure(device)
    progress(f"{arch}: timing {len(closures)} contenders x {settings.repeats} rounds")
    times = interleave(closures, repeats=settings.repeats, warmup=settings.warmup, device=device)

    if settings.breakdown and settings.train:
        from segbench.bench.op_profile import profile_step

        progress(f"{arch}: profiling a training step")
        result["breakdown"] = profile_step(closures["segbench.train"], warmup=0)
    _summarise(result, times)
    return result


def _summarise(result: dict, times: dict[str, list[float]]) -> None:
    """Medians, FLOP/s, share of the matmul rate and the segbench/peer ratios, into ``result``."""
    result["matmul_flops_per_s"] = 2 * MATMUL_SIZE**3 / statistics.median(times.pop("matmul"))
    for key, values in times.items():
        name, kind = key.split(".")
        entry = result["impls"][name]
        entry[f"{kind}_s"] = statistics.median(values)
        entry[f"{kind}_times"] = values
        flops = entry.get(f"{kind}_flops")
        if flops:
            entry[f"{kind}_flops_per_s"] = flops / entry[f"{kind}_s"]
            entry[f"{kind}_matmul_fraction"] = entry[f"{kind}_flops_per_s"] / result["matmul_flops_per_s"]
    if "peer" in result["impls"]:
        ours, peer = result["impls"]["segbench"], result["impls"]["peer"]
        result["ratio"] = {kind: ours[f"{kind}_s"] / peer[f"{kind}_s"] for kind in ("train", "infer") if f"{kind}_s" in ours}


def run_speed(archs: list[str], settings: SpeedSettings, *, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Benchmark ``archs`` one after the other; returns every figure (see ``format_table``)."""
    from segbench.bench.measure import machine_info

    device = torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    results = {"machine": machine_info(device), "settings": asdict(settings), "archs": {}}
    for arch in archs:
        torch.manual_seed(0)
        results["archs"][arch] = benchmark_arch(arch, settings, progress=progress)
    rates = [r["matmul_flops_per_s"] for r in results["archs"].values()]
    results["matmul_flops_per_s"] = statistics.median(rates) if rates else matmul_rate(device)
    return results


def format_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def format_rate(flops_per_s: float | None, fraction: float | None) -> str:
    if flops_per_s is None:
        return "-"
    return f"{flops_per_s / 1e9:.1f} ({fraction:.0%})"


def format_table(results: dict) -> str:
    """One row per architecture and implementation; ratio = segbench time / peer time (< 1: we are faster)."""
    header = ["arch", "impl", "params(M)", "train ms", "infer ms", "train GFLOP/s (% matmul)",
              "infer GFLOP/s (% matmul)", "ratio train", "ratio infer"]
    rows = [header]
    notes = []
    for arch, result in results["archs"].items():
        ratio = result.get("ratio", {})
        for name, entry in result["impls"].items():
            label = result.get("peer_name", "peer") if name == "peer" else name
            rows.append([
                arch,
                label,
                f"{entry['params'] / 1e6:.2f}",
                format_ms(entry.get("train_s")),
                format_ms(entry.get("infer_s")),
                format_rate(entry.get("train_flops_per_s"), entry.get("train_matmul_fraction")),
                format_rate(entry.get("infer_flops_per_s"), entry.get("infer_matmul_fraction")),
                f"{ratio['train']:.2f}" if name == "segbench" and "train" in ratio else "-",
                f"{ratio['infer']:.2f}" if name == "segbench" and "infer" in ratio else "-",
            ])
            compiled = [f"{entry[f'compile_{k}_s']:.1f} s ({k})" for k in ("train", "infer") if f"compile_{k}_s" in entry]
            if compiled:
                notes.append(f"{arch} {label}: torch.compile + first call took " + ", ".join(compiled))
            if "export_s" in entry:
                notes.append(f"{arch} onnx: exported in {entry['export_s']:.1f} s, {entry['shape_mode']} shapes"
                             + (f" ({entry['note']})" if entry.get("note") else ""))
        notes += [f"{arch}: {note}" for note in result["notes"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    rate = results.get("matmul_flops_per_s")
    if rate:
        lines.append(f"\nfp32 matmul {MATMUL_SIZE}x{MATMUL_SIZE} (same rounds, median): {rate / 1e9:.1f} GFLOP/s")
    lines.append("ratio = segbench time / peer time (below 1: segbench is faster). % matmul = FLOP/s (convolutions "
                 "and matmuls, 2 per multiply-add) over that matmul rate; taps in zero padding count as FLOPs, so "
                 "large atrous rates can exceed 100% where a kernel skips them.")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
