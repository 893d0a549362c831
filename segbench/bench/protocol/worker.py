"""One (architecture, seed) run of a sweep, in its own process: ``python -m segbench.bench.protocol.worker RUN_DIR``.

A fresh process per run is what makes the memory figures mean something (see ``measure.py``) and
what lets the sweep survive a run that crashes or is killed for memory: the sweep reads what this
process wrote, or the exit status when it wrote nothing.

Reads ``RUN_DIR/sweep_run.json`` (written by :mod:`segbench.bench.protocol.sweep`) and, in order:

1. caps torch's threads at the CPUs it was given (``segbench.engine.threads``), loads the data (cached
   after the first run) and builds a fresh model from the run's config;
2. measures it untrained (parameters, FLOPs, batch-1 latency, inference peak memory);
3. trains it with ``segbench.engine.train`` (resuming when the folder holds a partial run), measuring
   the training peak memory; the engine writes ``metrics.json`` with the validation (and test) figures;
4. predicts the same few validation images with the best checkpoint (``preview.npz``) for the
   report's prediction grid;
5. writes ``bench.json``: ``status`` "ok", or "failed" with the error and traceback.

``run_worker_process`` starts it (every launcher the same way: the sweep here, a Ray task on another
machine) and tells a worker that failed from one that was lost (killed before it wrote ``bench.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from segbench.bench.protocol.record import PREVIEW_FILE, RESULT_FILE, SPEC_FILE, WorkerResult

__all__ = ["run_worker", "preview_indices", "worker_command", "run_worker_process"]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _die_with_parent() -> None:
    """In the worker, before exec (Linux): SIGTERM when the process that started it dies (the sweep, or
    the Ray worker running its task), so a killed sweep or a cancelled task leaves no orphan writing into
    a run folder that the next invocation (or Ray's retry) resumes."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_command(run_dir: Path, progress: bool, processes: int = 1) -> list[str]:
    """The command line of one run's worker; with ``processes`` > 1, under ``torchrun`` (one process per
    GPU of the run, data-parallel; rank 0 measures and records)."""
    launch = [sys.executable, "-m"]
    if processes > 1:
        launch += ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m"]
    return [*launch, "segbench.bench.protocol.worker", str(run_dir), *([] if progress else ["--no-progress"])]


def run_worker_process(run_dir: Path, config_hash: str, progress: bool, processes: int = 1) -> tuple[WorkerResult, bool]:
    """Run the worker of the run in ``run_dir`` (its spec written) in a fresh process, the same for every
    launcher, and wait for it: its ``bench.json``, or a failure record when it died without writing one,
    and whether it was *lost*: killed by a signal before writing its result (a lost node, a preemption,
    the out-of-memory killer). A lost run resumes from its ``last.pt`` when started again."""
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    process = subprocess.Popen(worker_command(run_dir, progress, processes),
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the worker too (same process group); let it stop, then stop the sweep.
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    result = WorkerResult.read(run_dir)
    if result is not None:
        return result, False
    if code < 0:
        why = " (the system's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return WorkerResult(hash=config_hash, error=f"worker killed by {_signal_name(-code)}{why}"), True
    return WorkerResult(hash=config_hash, error=f"worker exited with status {code} without writing {RESULT_FILE}"), False


def preview_indices(dataset, count: int, ignore_index: int) -> list[int]:
    """``count`` validation items spread evenly over those that contain foreground (any class but 0),
    or over all items when none does. Depends only on the data, so every architecture gets the same."""
    with_foreground = []
    for i in range(len(dataset)):
        mask = dataset[i]["mask"]
        if ((mask != 0) & (mask != ignore_index)).any():
            with_foreground.append(i)
    pool = with_foreground or list(range(len(dataset)))
    if len(pool) <= count:
        return pool
    return sorted({pool[int(round(k))] for k in np.linspace(0, len(pool) - 1, count)})


def _preview(run_dir: Path, data, count: int) -> None:
    from segbench.engine.checkpoint import load_run_model
    from segbench.engine.evaluate import inference_settings
    from segbench.engine.inference import predict_scores

    model, cfg, info = load_run_model(run_dir, "best")
    dataset = data.splits["val"]
    indices = preview_indices(dataset, count, info.ignore_index)
    images, truths, preds = [], [], []
    for i in indices:
        item = dataset[i]
        logits = predict_scores(model, item["image"][None], inference_settings(cfg.eval))
        images.append(item["image"].numpy())
        truths.append(item["mask"].numpy())
        preds.append(logits.argmax(1)[0].numpy().astype(np.int16))
    np.savez_compressed(
        run_dir / PREVIEW_FILE, indices=np.array(indices), images=np.stack(images), truths=np.stack(truths),
        predictions=np.stack(preds),
    )


def run_worker(run_dir: str | Path, progress: bool = True) -> int:
    """Do one run as described in the module docstring; returns the process exit status."""
    from segbench.bench.measure.cost import machine_info, measure_inference, peak_memory
    from segbench.bench.measure.predictors import onnx_latency
    from segbench.config import config_from_dict
    from segbench.data import load_data
    from segbench.engine.device import (
        cuda_math,
        math_settings,
        resolve_channels_last,
        resolve_device,
        resolve_precision,
    )
    from segbench.engine.tracking import TrackingContext
    from segbench.engine.threads import cap_threads
    from segbench.engine.train import train
    from segbench.models.registry import build_model, model_recipe

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / SPEC_FILE).read_text())
    result = WorkerResult(hash=spec["hash"], budget=dict(spec.get("budget") or {}))
    # Under torchrun (``segbench run --launcher ray --gpus-per-run N``) every rank trains; rank 0 alone
    # measures, predicts and writes bench.json (the others' failures reach it through the collectives).
    main_rank = int(os.environ.get("RANK", "0")) == 0
    stage = "setup"
    try:
        cfg = config_from_dict(spec["config"])
        device = resolve_device(cfg.train.device)
        _, threads_from = cap_threads()  # never more threads than the CPUs the run was given
        result.machine = {**machine_info(device), "threads_from": threads_from}
        stage = "loading data"
        data = load_data(cfg.data)
        result.data = {
            "name": data.name, "num_classes": data.num_classes, "in_channels": data.in_channels,
            "class_names": list(data.class_names), "splits": {k: len(v) for k, v in data.splits.items()},
            "volumetric": bool(data.volumetric), "notices": list(data.notices),
        }

        stage = "measuring"
        m = spec["measure"]
        if main_rank:
            torch.manual_seed(cfg.train.seed)
            model = build_model(cfg.model.arch, data.num_classes, data.in_channels, **cfg.model.options)
            # Timed as the run trains: its precision and memory format (as training resolves them).
            channels_last = resolve_channels_last(cfg.train.channels_last, model_recipe(model, cfg.model.arch))
            with cuda_math(deterministic=cfg.train.deterministic):  # as training computes
                result.measure = measure_inference(
                    model, in_channels=data.in_channels, size=tuple(m["input_size"]), device=device,
                    precision=resolve_precision(cfg.train.amp, device), channels_last=channels_last,
                    rounds=m["timing_rounds"], max_warmup=m["timing_max_warmup"],
                )
                result.measure["math"] = math_settings(device)
            if m.get("latency_engine") == "onnx":  # the deployment latency in ONNX Runtime too (--latency-engine)
                result.measure.update(onnx_latency(model, in_channels=data.in_channels, size=tuple(m["input_size"]),
                                                   rounds=m["timing_rounds"], max_warmup=m["timing_max_warmup"]))
            if result.measure.get("machine_busy"):  # the latency was timed beside other processes' work
                print(f"segbench worker: {run_dir.name}: {result.measure['machine_load']}", file=sys.stderr)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

        stage = "training"
        started = time.perf_counter()
        with peak_memory(device) as memory:
            metrics = train(cfg, run_dir, resume=True, progress=progress,
                            tracking=TrackingContext.from_dict(spec.get("tracking")))
        result.train_peak_mb = memory.megabytes
        result.train_memory_method = memory.method
        result.session_wall_s = time.perf_counter() - started
        result.metrics = metrics

        if not main_rank:
            return 0
        stage = "predicting preview images"
        _preview(run_dir, data, int(spec.get("preview_images", 4)))
        result.status = "ok"
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001  (recorded in the results row; the sweep goes on)
        if not main_rank:
            raise
        kind = "out of memory" if isinstance(err, (MemoryError, torch.OutOfMemoryError)) else type(err).__name__
        result.error = f"{kind} while {stage}: {err}"
        result.traceback = traceback.format_exc()
        print(f"segbench worker: {run_dir.name} failed while {stage}: {err}", file=sys.stderr)
    result.write(run_dir)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        return run_worker(args.run_dir, progress=not args.no_progress)
    except KeyboardInterrupt:  # Ctrl-C reaches the sweep too, which says how to continue: no traceback here
        return 130


if __name__ == "__main__":
    sys.exit(main())
