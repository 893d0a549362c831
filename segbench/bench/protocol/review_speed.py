"""The review's speed section: ``segbench speed`` run on the review's own models, at its input size
and batch, after the training runs, so the report states the speed figures measured on the same
machine as everything else in it.

Per architecture (one per architecture, whatever its seeds and starts): a training step and inference
timed interleaved with the peer implementation where one is installed (the ratio segbench/peer) and
with a large matmul in the same precision (the achieved FLOP/s as a share of the machine's), exactly as
:mod:`segbench.bench.measure.speed` measures them. The input-pipeline and metric shares come from the
training runs themselves (``data_time_s``, ``val_metrics_time_s`` of each run's metrics).

``OUT/speed.json`` is rewritten after each architecture, so an interrupted review keeps what was
measured and the next invocation measures only what is missing (figures of other settings are
measured again).
"""

from __future__ import annotations

import json
import statistics
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from segbench.bench.protocol.profiles import Profile
from segbench.bench.protocol.record import WorkerResult
from segbench.bench.measure.speed import (NO_PEER, OVER_100_NOTE, SpeedSettings, benchmark_arch, compare_with_peer,
                                         compared_params)
from segbench.bench.measure.timing import NOISY_ABOVE
from segbench.bench.protocol.sweep import PlannedRun, input_size

__all__ = ["SPEED_FILE", "review_speed_settings", "measure_review_speed", "read_review_speed",
           "speed_rows", "speed_section", "throughput_figures", "drift_note", "data_facts"]

SPEED_FILE = "speed.json"


def review_speed_settings(plan: list[PlannedRun], profile: Profile, data: dict) -> tuple[list[str], SpeedSettings]:
    """The architectures of ``plan`` and the speed settings that match its runs: input size, batch,
    classes and channels of the data (``data``: a run's data facts), each architecture's options."""
    from segbench.engine.device import resolve_device

    first: dict[str, PlannedRun] = {}
    for run in plan:
        first.setdefault(run.arch, run)
    cfg = plan[0].config
    settings = SpeedSettings(
        size=input_size(cfg, profile),
        batch=max(2, cfg.train.batch_size),
        device=resolve_device(cfg.train.device).type,
        amp=cfg.train.amp,  # timed in the precision the runs trained in, with their loss
        loss=cfg.train.loss,
        rounds=profile.speed_rounds,
        max_warmup=profile.timing_max_warmup,
        num_classes=int(data["num_classes"]),
        in_channels=int(data["in_channels"]),
        options={arch: dict(run.config.model.options) for arch, run in first.items()},
    )
    return list(first), settings


def data_facts(plan: list[PlannedRun]) -> dict | None:
    """The data's facts (``num_classes``, ``in_channels``, ...) as a finished run of ``plan`` recorded them."""
    for run in plan:
        if run.finished:
            data = WorkerResult.read(run.run_dir).data
            if "num_classes" in data and "in_channels" in data:
                return data
    return None


def _same_settings(stored: dict, settings: SpeedSettings) -> bool:
    # Through JSON, as stored: tuples become lists.
    return stored == json.loads(json.dumps(asdict(settings)))


def read_review_speed(out: str | Path) -> dict | None:
    """``OUT/speed.json``, or None when there is none (or it cannot be read)."""
    path = Path(out) / SPEED_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def measure_review_speed(
    plan: list[PlannedRun], profile: Profile, out: str | Path, data: dict, *, say: Callable[[str], None] = print
) -> dict:
    """Measure (or reuse) every architecture of ``plan``; returns the figures, also in ``OUT/speed.json``.
    A failing architecture gets its error recorded and the others are still measured."""
    from segbench.bench.measure.cost import machine_info
    from segbench.jsonio import write_json

    archs, settings = review_speed_settings(plan, profile, data)
    path = Path(out) / SPEED_FILE
    stored = read_review_speed(out) or {}
    results = {"machine": machine_info(settings.device), "settings": asdict(settings), "archs": {}}
    if _same_settings(stored.get("settings"), settings):
        results["archs"] = {a: r for a, r in stored.get("archs", {}).items() if a in archs and "error" not in r}
    for index, arch in enumerate(archs, 1):
        if arch in results["archs"]:
            continue
        say(f"speed {index}/{len(archs)}: {arch}")
        try:
            results["archs"][arch] = benchmark_arch(arch, settings, progress=lambda m: say(f"  {m}"))
        except Exception as err:  # noqa: BLE001 - one architecture's failure is its row's, not the review's
            results["archs"][arch] = {"arch": arch, "error": f"{type(err).__name__}: {err}",
                                      "traceback": traceback.format_exc()}
            say(f"speed: {arch} failed ({type(err).__name__}: {err})")
        write_json(results, path)
    results["archs"] = {arch: results["archs"][arch] for arch in archs}  # plan order
    write_json(results, path)
    return results


def _percent(part: float | None, whole: float | None) -> float | None:
    if not isinstance(part, (int, float)) or not isinstance(whole, (int, float)) or whole <= 0:
        return None
    return 100.0 * part / whole


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def speed_rows(speed: dict | None, pipeline: dict[str, dict]) -> list[dict]:
    """The report's speed table, one flat row per architecture, keyed as ``SPEED_COLUMNS``
    (``segbench.bench.report.columns``); a failed measurement's row has ``error``. ``pipeline``: arch
    -> a run's timings (``train_time_s``, ``data_time_s``, ``val_time_s``, ``val_metrics_time_s``)."""
    rows = []
    for arch, result in ((speed or {}).get("archs") or {}).items():
        timing = pipeline.get(arch, {})
        row: dict = {"arch": arch, "data_wait_pct": _percent(timing.get("data_time_s"), timing.get("train_time_s")),
                     "metrics_pct": _percent(timing.get("val_metrics_time_s"), timing.get("val_time_s"))}
        if "error" in result:
            rows.append({**row, "error": result["error"]})
            continue
        ours, comparison = result["impls"]["segbench"], compare_with_peer(result)
        peer = {"ratio": comparison.peer, NO_PEER: NO_PEER}.get(comparison.status, f"{comparison.peer}: {comparison.status}")
        if result.get("peer_failed"):  # a peer that failed says so in its cell; segbench's figures stay
            peer = comparison.reason
        row.update(peer=peer, params=compared_params(ours),
                   peer_params=comparison.peer_params, precision=ours.get("precision", "fp32"),
                   train_ratio=comparison.ratio.get("train"), infer_ratio=comparison.ratio.get("infer"))
        for kind, (low, high) in comparison.interval.items():
            row.update({f"{kind}_ratio_low": low, f"{kind}_ratio_high": high})
        for kind in ("train", "infer"):
            row.update({f"{kind}_ms": _ms(ours.get(f"{kind}_s")), f"{kind}_q1_ms": _ms(ours.get(f"{kind}_q1_s")),
                        f"{kind}_q3_ms": _ms(ours.get(f"{kind}_q3_s")), f"{kind}_noisy": bool(ours.get(f"{kind}_noisy"))})
            rate, share = ours.get(f"{kind}_flops_per_s"), ours.get(f"{kind}_matmul_fraction")
            row[f"{kind}_gflops_per_s"] = None if rate is None else rate / 1e9
            row[f"{kind}_matmul_pct"] = None if share is None else 100.0 * share
        rows.append(row)
    return rows


def speed_section(out: str | Path, plan: list[PlannedRun], rows: list[dict]) -> dict:
    """The report's speed section from ``OUT/speed.json`` and the timings of the runs' results rows
    (``rows``, one per run of ``plan``; an architecture's first successful run counts): ``intro``,
    ``header``, ``rows`` and ``notes``; empty without figures."""
    speed = read_review_speed(out)
    if not speed or not speed.get("archs"):
        return {}
    pipeline: dict[str, dict] = {}
    for run, row in zip(plan, rows):
        if row["status"] == "ok":
            pipeline.setdefault(run.arch, row)
    settings = speed["settings"]
    precisions = sorted({r.get("precision", "fp32") for r in speed["archs"].values() if "error" not in r})
    rates = [r["matmul_flops_per_s"] for r in speed["archs"].values() if "matmul_flops_per_s" in r]
    machine = speed.get("machine", {})
    intro = (
        f"Measured after training, in one process on {machine.get('device_name') or settings['device']}"
        + (f" of host {machine['host']}" if machine.get("host") else "") + " "
        f"({machine.get('torch_threads', '?')} threads): batch {settings['batch']} at "
        f"{settings['size'][0]}x{settings['size'][1]}, each architecture with the options and the precision it "
        f"trained with ({', '.join(precisions) or 'fp32'}), medians of {settings['rounds']} rounds after a warm-up "
        f"until stable (at most {settings['max_warmup']}), segbench and the peer timed interleaved (A B A B ...) "
        f"with a 2048x2048 matmul in that precision"
        + (f" (median {statistics.median(rates) / 1e9:.1f} GFLOP/s)" if rates else "") + "."
    )
    notes = [
        "Ratio = segbench time / peer time at the same architecture and size (below 1: segbench is faster), given "
        "only when both use the same number of parameters in a training step (Params, Peer params); otherwise "
        "the peer is a different configuration and gets no ratio. Peers: torchvision (FCN, DeepLab v3), "
        "segmentation_models_pytorch (PSPNet, DeepLab v3+) and transformers (SegFormer, Swin-UPerNet), each "
        "configured from segbench's model, where they import here (`make peers` builds that environment); "
        "without a peer the matmul share is the only yardstick.",
        "Times: median ms [interquartile range]; 'noisy' marks a figure whose "
        f"range stayed above {NOISY_ABOVE:.0%} of its median after re-measuring (the machine was busy).",
        "GFLOP/s counts convolutions and matmuls (FlopCounterMode, 2 per multiply-add; forward + backward for a "
        "training step); % matmul is that over the rate of a matmul in the same precision, timed in the same "
        f"rounds. A share above 100%: {OVER_100_NOTE}.",
        "Data wait: share of the training run's step time spent waiting for the input pipeline (loading, "
        "augmentation, collation). Metrics: share of its validation time spent in the metric computation. "
        "Both measured in the training run above, not here.",
    ]
    notes += [note for note in [drift_note(speed)] if note]
    for arch, result in speed["archs"].items():
        comparison = [] if "error" in result else [compare_with_peer(result).note]
        notes += [f"{arch}: {note}" for note in comparison + result.get("notes", []) if note]
    return {"intro": intro, "rows": speed_rows(speed, pipeline), "notes": notes}


def throughput_figures(speed: dict | None) -> dict[str, dict]:
    """Per architecture, the table's throughput columns from this section's inference measurement (one
    measurement for both): images/s at the section's batch, from the median and the quartiles."""
    figures: dict[str, dict] = {}
    batch = ((speed or {}).get("settings") or {}).get("batch")
    device = ((speed or {}).get("machine") or {}).get("device_name")  # where it was measured (report.devices)
    for arch, result in ((speed or {}).get("archs") or {}).items():
        ours = (result.get("impls") or {}).get("segbench") or {}
        if not batch or not ours.get("infer_s"):
            continue
        figures[arch] = {"throughput_ips": batch / ours["infer_s"], "throughput_batch": batch,
                         "throughput_noisy": bool(ours.get("infer_noisy")), "throughput_precision": ours.get("precision"),
                         "throughput_device": device}
        if ours.get("infer_q1_s") and ours.get("infer_q3_s"):
            figures[arch].update(throughput_lo_ips=batch / ours["infer_q3_s"], throughput_hi_ips=batch / ours["infer_q1_s"])
    return figures


def drift_note(speed: dict) -> str | None:
    """How much the machine's speed moved during the section, read off the matmul timed with each
    architecture: what an absolute time carries beyond its own interquartile range."""
    rates = [r["matmul_flops_per_s"] for r in speed["archs"].values() if r.get("matmul_flops_per_s")]
    if len(rates) < 2:
        return None
    low, high, middle = min(rates), max(rates), statistics.median(rates)
    return (f"Drift: the matmul timed with each architecture ran at {low / 1e9:.0f}-{high / 1e9:.0f} GFLOP/s "
            f"({(high - low) / middle:.0%} of its median) over the section: the machine's speed moved by about that "
            "much between architectures, more than within one (the interquartile ranges above). Absolute times carry "
            "that uncertainty; segbench/peer ratios and % matmul, measured side by side in the same rounds, do not.")
