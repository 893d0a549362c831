"""``segbench speed``: training-step and inference time of every architecture, against a peer
implementation of the same architecture where one is installed, with achieved FLOP/s as a fraction
of what this machine's matmul reaches, at the same precision, in the same run.

How the figures are taken, and why:

- Everything runs in one process and **interleaved** by the one timing harness
  (:mod:`segbench.bench.measure.timing`): each round times every contender once (ours train, peer train,
  ours infer, peer infer, ONNX infer, a 2048x2048 matmul), after a warm-up that waits for stable
  timings; figures are medians with their interquartile range, re-measured and then marked when noisy.
  The review table's latency and throughput come from the same harness.
- **Precision** is the run's: ``amp`` resolves as training resolves ``train.amp`` (auto: bf16 on
  GPUs and CPUs that compute it natively, else fp32/fp16), and the model runs under that autocast.
- A training step is the engine's (:class:`segbench.engine.step.TrainStep`): forward + the run's
  loss + backward + optimizer step (segbench's optimizer for the architecture's family: SGD for CNNs,
  AdamW for transformers; the peer gets the same optimizer and computes its library's own loss). Inference is
  an eval-mode forward under ``torch.inference_mode`` returning logits at input resolution: segbench's as
  ``segbench predict`` runs it (:func:`segbench.engine.inference.inference_network`: BatchNorms folded into
  the convolutions before them, conv/linear weights stored in the autocast dtype; the row's note says what
  was done), a peer's as its library runs it, except that
  a peer whose forward computes its auxiliary head in eval mode too (torchvision's FCN/DeepLabV3,
  transformers' UperNet) is run without it, as ours.
- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, 2 per
  multiply-add; the training step counts forward + backward). FLOP/s = FLOPs / median time, and the
  "% matmul" column divides it by the median rate of a dense matmul **in the dtype the model computes
  in** (bf16 under bf16 autocast), timed in the same rounds. A share above 100% is possible and
  always flagged: counted FLOPs include multiplications by zero padding (large atrous rates on small
  feature maps) and convolution kernels can beat the 2048x2048 matmul (Winograd, better blocking), so
  such a share is an upper bound on useful work, not a measurement error.
- A **peer** (:mod:`segbench.bench.measure.peers`) is configured from our model; the two are compared by
  the parameters their training step uses (a parameter left without a gradient, such as a final norm a
  library keeps but never applies, is held, not used). Equal counts: the ratio segbench/peer, the geometric
  mean of the per-round ratios (each round times the two back to back, so a slow spell of a shared machine
  hits both; the rounds of every measurement attempt) with its 95% percentile bootstrap interval
  (:func:`paired_ratio`). Unequal:
  "different configuration", both counts and no ratio. No peer: the reason, and the matmul share is the
  only yardstick (:func:`compare_with_peer` words all three, for this table and the review's).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from segbench.bench.measure.cost import inference_fn
from segbench.bench.measure.load import watch_load
from segbench.bench.measure.peers import Peer, PeerFailed, PeerModel, PeerSpec, build_peer
from segbench.bench.measure.timing import NOISY_ABOVE, Timing, synchronize, time_interleaved
from segbench.engine.device import Precision, cuda_math, math_settings, resolve_channels_last, resolve_precision
from segbench.engine.step import TrainStep
from segbench.engine.inference import inference_network
from segbench.stats import bootstrap_ci
from segbench.bench.measure.flops import count_flops_of

__all__ = ["SpeedSettings", "run_speed", "benchmark_arch", "matmul_rate", "format_table", "format_ms", "format_time",
           "format_rate", "OVER_100_NOTE", "PeerComparison", "compare_with_peer", "compared_params",
           "DIFFERENT_CONFIGURATION", "NO_PEER", "paired_ratio", "arch_bench", "training_step_of"]

MATMUL_SIZE = 2048
DIFFERENT_CONFIGURATION = "different configuration"
NO_PEER = "no peer"
OVER_100_NOTE = ("the counted FLOPs include multiplications by zero padding (atrous rates large against the "
                 "feature map) or the convolution kernels outrun the 2048x2048 matmul, so the share is an upper "
                 "bound on useful work")


@dataclass(frozen=True)
class SpeedSettings:
    size: tuple[int, int] = (512, 512)
    batch: int = 2  # >= 2: BatchNorm in training mode needs more than one value per channel
    device: str = "cpu"
    amp: str = "auto"  # as train.amp: auto (the training's choice on this device), off, bf16, fp16
    loss: str = "ce"  # the training step's loss, as train.loss (the review passes its runs')
    rounds: int = 5  # timed rounds; figures are medians (with their IQR)
    max_warmup: int = 10  # warm-up rounds at most; it stops earlier once timings are stable
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


def _matmul_closure(device: torch.device, dtype: torch.dtype = torch.float32, n: int = MATMUL_SIZE) -> Callable[[], Tensor]:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(device, dtype) for _ in range(2))
    return lambda: torch.matmul(a, b)


def matmul_rate(device: torch.device | str = "cpu", *, dtype: torch.dtype = torch.float32, rounds: int = 5,
                n: int = MATMUL_SIZE) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (median): the machine's dense-compute yardstick."""
    device = torch.device(device)
    timing = time_interleaved({"matmul": _matmul_closure(device, dtype, n)}, rounds=rounds, device=device)["matmul"]
    return 2 * n**3 / timing.median


def train_step(model: nn.Module, family: str, settings: SpeedSettings, precision: Precision,
               *, own_loss: bool = False) -> TrainStep:
    """The engine's training step for ``model``: its family's optimizer (with its parameter groups), the
    run's loss (``settings.loss``) with the auxiliary head's at the model's ``aux_weight``; a peer
    (``own_loss``) computes its library's own loss instead."""
    from segbench.config import TrainConfig
    from segbench.engine.losses import build_loss
    from segbench.engine.optim import build_optimizer, resolve_train_config

    optimizer = build_optimizer(model, resolve_train_config(TrainConfig(), family), family)
    criterion = None if own_loss else build_loss(settings.loss, settings.num_classes).to(next(model.parameters()).device)
    return TrainStep(model, optimizer, criterion, precision=precision,
                     aux_weight=float(getattr(model, "aux_weight", 0.0) or 0.0))


def _train_flops(step: TrainStep, x: Tensor, target: Tensor) -> tuple[int, list[str]]:
    """Forward + backward FLOPs of one step (the optimizer's element-wise update is not counted), and the
    trainable parameters that backward left without a gradient: held by the model, unused by the step."""
    flops = count_flops_of(lambda: step.loss(x, target).backward())
    unused = [name for name, p in step.model.named_parameters() if p.requires_grad and p.grad is None]
    step.model.zero_grad(set_to_none=True)
    return flops, unused


def _prepare(model: nn.Module, channels_last: bool, device: torch.device) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _compile_in_place(model: nn.Module) -> None:
    """``torch.compile`` the model in place; for a peer its library's network too, which its own loss
    path calls directly (a compiled module called from a compiled one is inlined)."""
    model.compile()
    if isinstance(model, PeerModel):
        model.net.compile()


def _onnx_contender(model: nn.Module, settings: SpeedSettings, x: Tensor) -> tuple[Callable | None, dict]:
    """Export ``model`` (on the CPU, before any compile) and return ONNX Runtime inference on ``x``."""
    from segbench.export.onnx import export_onnx, load_onnx_model

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            info = export_onnx(model, Path(tmp) / "model.onnx", input_size=settings.size, in_channels=settings.in_channels)
        except RuntimeError as err:
            return None, {"note": str(err)}
        export_s = time.perf_counter() - start
        # The session keeps the graph in memory.
        onnx_model = load_onnx_model(Path(tmp) / "model.onnx", threads=settings.threads, device=settings.device)
    x_cpu = x.detach().to("cpu", memory_format=torch.contiguous_format)
    meta = {"export_s": export_s, "shape_mode": info.shape_mode, "note": info.note, "provider": onnx_model.provider}
    if settings.device != "cpu":
        where = ("with the CUDA execution provider (input and output pass through host memory)"
                 if onnx_model.provider == "CUDAExecutionProvider"
                 else "on the CPU (install onnxruntime-gpu for its CUDA execution provider)")
        meta["note"] = f"ONNX Runtime runs {where}. {info.note}".strip()
    return (lambda: onnx_model(x_cpu)), meta


def benchmark_arch(arch: str, settings: SpeedSettings, *, progress: Callable[[str], None] = lambda s: None,
                   peers: Mapping[str, PeerSpec] | None = None) -> dict:
    """Time one architecture (ours, its peer, ONNX Runtime) interleaved with the matmul yardstick,
    under the math settings training uses on CUDA (TF32 for matmuls and convolutions alike). ``peers``:
    where to find the peer (default: :mod:`segbench.bench.measure.peers`' table)."""
    with cuda_math():
        result = _benchmark_arch(arch, settings, progress, peers)
        result["math"] = math_settings(settings.device)
    return result


@dataclass(frozen=True)
class _Bench:
    """What every contender of one architecture is set up with."""

    settings: SpeedSettings
    family: str
    precision: Precision
    channels_last: bool
    device: torch.device
    x: Tensor
    target: Tensor


def _contender(bench: _Bench, name: str, model: nn.Module, own_loss: bool, label: str
               ) -> tuple[dict, dict[str, Callable[[], object]], list[str]]:
    """One implementation's entry (parameters, FLOPs, compile times), its timed closures and its notes."""
    from segbench.bench.measure.cost import count_parameters

    settings, precision, x, target = bench.settings, bench.precision, bench.x, bench.target
    closures: dict[str, Callable[[], object]] = {}
    notes: list[str] = []
    model = infer_model = _prepare(model, bench.channels_last, bench.device)
    if name == "segbench":  # inference as `segbench predict` runs it; a peer runs as its library does
        network = inference_network(model, x, precision)
        infer_model = network.model
        notes.append(f"segbench inference: {network.describe()}")
    entry = {"params": count_parameters(model), "precision": precision.name}
    kinds = ("train", "infer") if settings.train else ("infer",)
    if settings.train:
        step = train_step(model, bench.family, settings, precision, own_loss=own_loss)
        entry["train_flops"], unused = _train_flops(step, x, target)
        entry["params_unused"] = sum(p.numel() for n, p in model.named_parameters() if n in unused)
        if unused:
            notes.append(f"{label}: {entry['params_unused']:,} parameters its training step leaves "
                         f"without a gradient are not counted ({', '.join(unused[:4])}"
                         f"{', ...' if len(unused) > 4 else ''})")
        closures[f"{name}.train"] = lambda step=step: step(x, target)
    entry["infer_flops"] = count_flops_of(inference_fn(model, x))
    closures[f"{name}.infer"] = inference_fn(infer_model, x, precision)
    if settings.compile:
        _compile_in_place(model)
        if infer_model is not model:
            _compile_in_place(infer_model)
        for kind in kinds:
            start = time.perf_counter()
            closures[f"{name}.{kind}"]()
            synchronize(bench.device)
            entry[f"compile_{kind}_s"] = time.perf_counter() - start
    return entry, closures, notes


def _no_peer(result: dict, why: str, progress: Callable[[str], None]) -> None:
    """The peer failed: the row keeps segbench's figures and says why there is no peer."""
    result.pop("peer_name", None)
    result["no_peer"], result["peer_failed"] = f"{NO_PEER}: {why}", True
    progress(f"{result['arch']}: {result['no_peer']}")


def _peer_contender(bench: _Bench, peer: Peer, result: dict, progress: Callable[[str], None]
                    ) -> dict[str, Callable[[], object]]:
    """The peer's closures, each called once before timing (a failure inside the timing would take
    segbench's figures with it); none, and the reason in ``result``, when any step of it fails."""
    try:
        entry, closures, notes = _contender(bench, "peer", peer.model, peer.own_loss, peer.name)
        for fn in closures.values():
            fn()
            synchronize(bench.device)
    except Exception as err:  # noqa: BLE001 - the peer's failure, never segbench's measurement
        _no_peer(result, f"{peer.name} failed ({type(err).__name__}: {str(err)[:160]})", progress)
        return {}
    result["impls"]["peer"] = entry
    result["notes"] += ([f"peer: {peer.note}"] if peer.note else []) + notes
    return closures


def arch_bench(arch: str, settings: SpeedSettings) -> tuple[nn.Module, _Bench]:
    """``arch`` built with its options in ``settings`` (on the CPU) and what every contender of it is set up
    with: its family, precision and memory format as training resolves them, a batch and its target."""
    from segbench.models.registry import build_model, model_recipe

    device = torch.device(settings.device)
    options = dict(settings.options.get(arch, {}))
    ours = build_model(arch, num_classes=settings.num_classes, in_channels=settings.in_channels, **options)
    # As in training: the instance's family (UPerNet on a ResNet follows the CNN recipe) sets the
    # optimizer and, unless the settings force one, the memory format.
    family = model_recipe(ours, arch)
    channels_last = resolve_channels_last(settings.channels_last, family)
    precision = resolve_precision(settings.amp, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(settings.batch, settings.in_channels, *settings.size, generator=generator)
    target = torch.randint(0, settings.num_classes, (settings.batch, *settings.size), generator=generator)
    x, target = x.to(device), target.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return ours, _Bench(settings, family, precision, channels_last, device, x, target)


def training_step_of(arch: str, settings: SpeedSettings) -> tuple[Callable[[], object], int]:
    """The engine's training step of ``arch`` at ``settings`` on a fixed batch, as a closure the timing
    harness can call (the same set-up as the Speed section's segbench contender), and its FLOPs."""
    ours, bench = arch_bench(arch, settings)
    model = _prepare(ours, bench.channels_last, bench.device)
    step = train_step(model, bench.family, settings, bench.precision)
    flops, _ = _train_flops(step, bench.x, bench.target)
    return (lambda: step(bench.x, bench.target)), flops


def _benchmark_arch(arch: str, settings: SpeedSettings, progress: Callable[[str], None],
                    peers: Mapping[str, PeerSpec] | None) -> dict:
    ours, bench = arch_bench(arch, settings)
    family, precision, channels_last, device = bench.family, bench.precision, bench.channels_last, bench.device
    options, x = dict(settings.options.get(arch, {})), bench.x

    result: dict = {"arch": arch, "family": family, "options": options, "channels_last": channels_last,
                    "precision": precision.name, "impls": {}, "notes": []}
    if channels_last and settings.channels_last is None:
        result["notes"].append("channels-last memory format (the default for CNN-family models)")
    peer = None
    if settings.peers:
        try:
            peer, why = build_peer(arch, ours, num_classes=settings.num_classes, in_channels=settings.in_channels,
                                   specs=peers)
        except PeerFailed as err:
            _no_peer(result, str(err), progress)
        else:
            if peer is None:
                result["no_peer"] = why
            else:
                result["peer_name"] = peer.name
    else:
        result["no_peer"] = "not timed (--no-peers)"

    closures: dict[str, Callable[[], object]] = {}
    if "onnx" in settings.engines:
        progress(f"{arch}: exporting to ONNX")
        onnx_infer, onnx_meta = _onnx_contender(ours, settings, x)
        if onnx_infer is None:
            result["notes"].append(f"ONNX: {onnx_meta['note']}")
        else:
            closures["onnx.infer"] = onnx_infer
    # segbench first and on its own: nothing the peer does can take segbench's figures with it.
    progress(f"{arch}: counting FLOPs (segbench)")
    result["impls"]["segbench"], ours_closures, notes = _contender(bench, "segbench", ours, False, "segbench")
    closures.update(ours_closures)
    result["notes"] += notes
    if peer is not None:
        progress(f"{arch}: counting FLOPs (peer)")
        closures.update(_peer_contender(bench, peer, result, progress))
    if "onnx.infer" in closures:
        segbench_entry = result["impls"]["segbench"]
        result["impls"]["onnx"] = {"params": segbench_entry["params"], "infer_flops": segbench_entry["infer_flops"],
                                   "precision": "fp32", **onnx_meta}
    if "peer" in result["impls"]:
        impls = result["impls"]
        result["same_configuration"] = compared_params(impls["segbench"]) == compared_params(impls["peer"])
    # The ceiling in each precision a contender computes in (ONNX Runtime runs fp32).
    ceilings = {precision.name: precision.compute_dtype} | ({"fp32": torch.float32} if "onnx" in result["impls"] else {})
    for name, dtype in ceilings.items():
        closures[f"matmul.{name}"] = _matmul_closure(device, dtype)
    progress(f"{arch}: timing {len(closures)} contenders x {settings.rounds} rounds")
    with watch_load() as load:
        times = time_interleaved(closures, rounds=settings.rounds, max_warmup=settings.max_warmup, device=device)
    result.update(load.load.record())
    if load.load.busy:  # the times were taken beside other work: say so under the table and in the log
        result["notes"].append(load.load.describe())
        progress(f"{arch}: {load.load.describe()}")

    if settings.breakdown and settings.train:
        from segbench.bench.measure.op_profile import profile_step

        progress(f"{arch}: profiling a training step")
        result["breakdown"] = profile_step(closures["segbench.train"], warmup=0, device=settings.device)
    _summarise(result, times)
    return result


def _summarise(result: dict, times: dict[str, Timing]) -> None:
    """Medians with their quartiles, FLOP/s, share of the matmul rate in the contender's precision and
    the segbench/peer ratios, into ``result``."""
    rates = {key.split(".")[1]: 2 * MATMUL_SIZE**3 / times.pop(key).median for key in list(times) if key.startswith("matmul.")}
    result["matmul_flops_per_s"] = rates.get(result["precision"], next(iter(rates.values())))
    result["matmul_flops_per_s_by_precision"] = rates
    for key, timing in times.items():
        name, kind = key.split(".")
        entry = result["impls"][name]
        entry[f"{kind}_s"] = timing.median
        entry[f"{kind}_q1_s"], entry[f"{kind}_q3_s"] = timing.quartiles
        entry[f"{kind}_noisy"] = timing.noisy
        entry[f"{kind}_times"] = list(timing.times)
        entry[f"{kind}_warmup"] = timing.warmup
        flops = entry.get(f"{kind}_flops")
        if flops:
            entry[f"{kind}_flops_per_s"] = flops / entry[f"{kind}_s"]
            entry[f"{kind}_matmul_fraction"] = entry[f"{kind}_flops_per_s"] / rates[entry["precision"]]
    if result.get("same_configuration"):
        result["ratio"], result["ratio_interval"] = {}, {}
        for kind in ("train", "infer"):
            if f"segbench.{kind}" in times:
                ratio, interval = paired_ratio(times[f"segbench.{kind}"], times[f"peer.{kind}"])
                result["ratio"][kind] = ratio
                if interval:
                    result["ratio_interval"][kind] = interval


def paired_ratio(ours: Timing, peer: Timing, confidence: float = 0.95) -> tuple[float, list[float] | None]:
    """segbench time / peer time: the geometric mean of the per-round ratios over every measurement attempt
    (each round ran the two back to back), with its percentile bootstrap interval
    (``segbench.stats.bootstrap_ci`` on the log ratios); the ratio of the medians, without an interval,
    when fewer than two rounds pair up."""
    pairs = [(a, b) for mine, theirs in zip(ours.attempt_times, peer.attempt_times) if len(mine) == len(theirs)
             for a, b in zip(mine, theirs)]
    if len(ours.attempt_times) != len(peer.attempt_times) or len(pairs) < 2:
        return ours.median / peer.median, None
    logs = [math.log(a / b) for a, b in pairs]
    mean, low, high = bootstrap_ci(logs, confidence=confidence)
    return math.exp(mean), [math.exp(low), math.exp(high)]


def compared_params(entry: dict) -> int:
    """The parameters an implementation's training step uses (all of them when it was not timed training)."""
    return entry["params"] - entry.get("params_unused", 0)


@dataclass(frozen=True)
class PeerComparison:
    """How one architecture's row compares with its peer: ``status`` is "ratio" (same parameter counts:
    ``ratio`` holds segbench time / peer time), ``DIFFERENT_CONFIGURATION`` (both counts, no ratio) or
    ``NO_PEER`` (``reason`` says why; the matmul share is then the only yardstick)."""

    status: str
    peer: str = ""
    params: int | None = None
    peer_params: int | None = None
    ratio: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    interval: dict[str, list[float]] = field(default_factory=dict)  # the ratio's 95% interval, where paired

    @property
    def cell(self) -> str:
        """The table's cell: the ratios (with their intervals), or the status."""
        if self.status == "ratio":
            return ", ".join(f"{kind} {value:.2f}" + (" [{:.2f}-{:.2f}]".format(*self.interval[kind])
                                                      if kind in self.interval else "")
                             for kind, value in self.ratio.items())
        return self.status

    @property
    def note(self) -> str | None:
        """The sentence under the table, for rows without a ratio."""
        if self.status == DIFFERENT_CONFIGURATION:
            return (f"{DIFFERENT_CONFIGURATION}: segbench {self.params:,} parameters, {self.peer} {self.peer_params:,}; "
                    "no ratio")
        if self.status == NO_PEER:
            reason = self.reason.removeprefix(f"{NO_PEER}: ").removeprefix(NO_PEER)
            return f"{NO_PEER}{': ' + reason if reason else ''}; the matmul share is the only yardstick"
        return None


def compare_with_peer(result: dict) -> PeerComparison:
    """The peer comparison of one architecture's figures (``benchmark_arch``'s result): what the
    ``segbench speed`` table and the review's Speed section print for it."""
    impls = result.get("impls", {})
    ours, peer = impls.get("segbench"), impls.get("peer")
    if ours is None or peer is None:
        return PeerComparison(NO_PEER, reason=result.get("no_peer", ""))
    name = result.get("peer_name", "peer")
    params, peer_params = compared_params(ours), compared_params(peer)
    if params != peer_params:
        return PeerComparison(DIFFERENT_CONFIGURATION, name, params, peer_params)
    return PeerComparison("ratio", name, params, peer_params, dict(result.get("ratio", {})),
                          interval=dict(result.get("ratio_interval", {})))


def run_speed(archs: list[str], settings: SpeedSettings, *, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Benchmark ``archs`` one after the other; returns every figure (see ``format_table``)."""
    from segbench.bench.measure.cost import machine_info

    device = torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    results = {"machine": machine_info(device), "settings": asdict(settings), "archs": {}}
    for arch in archs:
        torch.manual_seed(0)
        results["archs"][arch] = benchmark_arch(arch, settings, progress=progress)
    rates = [r["matmul_flops_per_s"] for r in results["archs"].values()]
    # The settings every benchmark_arch ran under, as it recorded them (None on the CPU).
    results["math"] = next((r["math"] for r in results["archs"].values()), None)
    precision = resolve_precision(settings.amp, device)
    results["precision"] = precision.name
    results["matmul_flops_per_s"] = (statistics.median(rates) if rates
                                     else matmul_rate(device, dtype=precision.compute_dtype))
    return results


def format_ms(seconds: float | None, q1: float | None = None, q3: float | None = None, noisy: bool = False) -> str:
    """``12.3 ±2%``: the median in ms, ± half its interquartile range as a share of it; ``noisy`` marked."""
    if seconds is None:
        return "-"
    text = f"{seconds * 1e3:.1f}"
    if q1 is not None and q3 is not None and seconds > 0:
        text += f" ±{(q3 - q1) / 2 / seconds:.0%}"
    return text + (" noisy" if noisy else "")


def format_time(entry: dict, kind: str) -> str:
    """An implementation's ``train`` or ``infer`` time cell (see :func:`format_ms`)."""
    return format_ms(entry.get(f"{kind}_s"), entry.get(f"{kind}_q1_s"), entry.get(f"{kind}_q3_s"),
                     bool(entry.get(f"{kind}_noisy")))


def format_rate(flops_per_s: float | None, fraction: float | None) -> str:
    """``250.1 (71%)``; a share above 100% carries a ``*`` that the notes explain (``OVER_100_NOTE``)."""
    if flops_per_s is None:
        return "-"
    return f"{flops_per_s / 1e9:.1f} ({fraction:.0%}{'*' if fraction > 1 else ''})"


def format_table(results: dict) -> str:
    """One row per architecture and implementation; on segbench's row the comparison with the peer:
    the ratios segbench time / peer time (< 1: we are faster), "different configuration" or "no peer"."""
    header = ["arch", "impl", "precision", "params", "train ms", "infer ms", "train GFLOP/s (% matmul)",
              "infer GFLOP/s (% matmul)", "segbench/peer"]
    rows = [header]
    notes = []
    for arch, result in results["archs"].items():
        comparison = compare_with_peer(result)
        if comparison.note:
            notes.append(f"{arch}: {comparison.note}")
        for name, entry in result["impls"].items():
            label = result.get("peer_name", "peer") if name == "peer" else name
            rows.append([
                arch,
                label,
                entry.get("precision", "fp32"),
                f"{compared_params(entry):,}",
                format_time(entry, "train"),
                format_time(entry, "infer"),
                format_rate(entry.get("train_flops_per_s"), entry.get("train_matmul_fraction")),
                format_rate(entry.get("infer_flops_per_s"), entry.get("infer_matmul_fraction")),
                comparison.cell if name == "segbench" else "",
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
    by_precision: dict[str, list[float]] = {}
    for result in results["archs"].values():
        for name, rate in result.get("matmul_flops_per_s_by_precision", {}).items():
            by_precision.setdefault(name, []).append(rate)
    lines.append("")
    for name, rates in sorted(by_precision.items()):
        lines.append(f"{name} matmul {MATMUL_SIZE}x{MATMUL_SIZE} (same rounds, median): "
                     f"{statistics.median(rates) / 1e9:.1f} GFLOP/s")
    if results.get("math"):
        math = results["math"]
        lines.append(f"CUDA: TF32 matmul {'on' if math['tf32_matmul'] else 'off'}, TF32 convolutions "
                     f"{'on' if math['tf32_conv'] else 'off'}, cuDNN autotuner {'on' if math['cudnn_benchmark'] else 'off'}")
    lines.append("times: median ms ± half the interquartile range as a share of it; 'noisy': still above "
                 f"{NOISY_ABOVE:.0%} after re-measuring. params: those the training step uses. segbench/peer: "
                 "segbench time / peer time (below 1: segbench is faster), the geometric mean of the rounds' "
                 "ratios (each round times both back to back) with its 95% bootstrap interval; given only when both "
                 f"use the same number of parameters, else '{DIFFERENT_CONFIGURATION}'. % matmul = FLOP/s (convolutions and matmuls, 2 per multiply-add) over the matmul rate "
                 "in the contender's precision; * marks a share above 100% (" + OVER_100_NOTE + ").")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
