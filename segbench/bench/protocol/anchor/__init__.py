"""The field's baseline beside the zoo: nnU-Net trained and scored on the review's folds, seeds and budget
(``segbench run --anchor nnunet``), by its own code in its own environment.

- **Where it runs.** nnU-Net needs a torch/torchvision pair the main environment does not carry, so the
  anchor runs in another Python that has ``nnunetv2`` and segbench (``make peers`` installs both in
  ``.venv-peers``): ``--anchor-python``, else ``SEGBENCH_ANCHOR_PYTHON``, else this Python when it has
  nnU-Net, else ``.venv-peers/bin/python`` of the working folder. None found: one line saying how to install.
- **What it runs.** One worker process (``anchor.nnunet``) for all of the anchor's runs, one run per fold and
  seed of the review, each in ``OUT/<anchor>-[f<fold>-]s<seed>-<hash>/`` with the files a zoo run leaves
  (``bench.json``, ``per_case_val.csv``, ...): the report reads it as a row. Its threads are the zoo runs';
  nnU-Net's worker pools are held to this process (``nnUNet_n_proc_DA=0``, ``nnUNet_def_n_proc=1``).
- **Matched.** ``nnunet``: the review's budget in nnU-Net's units. Iterations: the same count of optimiser
  steps (at nnU-Net's own batch and patch size). Time: nnU-Net's training step and a zoo architecture's timed
  interleaved in the anchor's process, the zoo architecture's planned iterations scaled by their ratio.
  FLOPs: the budget over nnU-Net's training FLOPs per step. ``nnunet-default``: nnU-Net's own 1000 x 250
  schedule (the ``paper`` profile's second anchor row; on a CPU, days).
- **A failed anchor is a failed row**: its ``bench.json`` says why; the review goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from segbench.bench.protocol.anchor.spec import SPEC_FILE, TRAINERS_DIR, AnchorSpec
from segbench.bench.protocol.record import RESULT_FILE, RunRecord, WorkerResult, figures_of
from segbench.jsonio import digest

__all__ = ["ANCHORS", "AnchorChoice", "AnchorRun", "AnchorMissing", "parse_anchors", "find_python", "plan_anchor",
           "anchor_runs", "run_anchor", "anchor_record", "anchor_facts", "ANCHOR_LOG"]

ANCHORS = {"nnunet": "matched", "nnunet-default": "default"}  # name -> schedule
CONFIGURATIONS = ("auto", "2d", "3d_fullres")
MEASURING = ("speed", "min_seconds")  # budget keys that say how to time the steps, not what the run is
ANCHOR_LOG = "anchor.log"  # OUT/<anchor>/anchor.log: the worker's (and nnU-Net's) output
SOURCE = Path(__file__).resolve().parents[4]  # the folder this segbench is imported from (its checkout)
INSTALL = "pip install nnunetv2 into a Python with a matching torch/torchvision pair (`make peers` does, in .venv-peers)"


class AnchorMissing(RuntimeError):
    """No Python with nnU-Net was found; the message is one line saying how to get one."""


@dataclass(frozen=True)
class AnchorChoice:
    name: str  # the row's label: "nnunet", "nnunet-default"
    schedule: str  # "matched" or "default"
    configuration: str = "auto"  # nnU-Net's configuration: auto (3d_fullres where planned, else 2d), 2d, 3d_fullres


def parse_anchors(text: str | None) -> list[AnchorChoice]:
    """``nnunet``, ``nnunet:2d``, ``nnunet,nnunet-default``; ``none`` or empty: no anchor."""
    choices = []
    for part in [p.strip() for p in (text or "").split(",") if p.strip() and p.strip() != "none"]:
        name, _, configuration = part.partition(":")
        if name not in ANCHORS:
            raise ValueError(f"unknown anchor {name!r}; the anchors are {', '.join(ANCHORS)} (or none)")
        configuration = configuration or "auto"
        if configuration not in CONFIGURATIONS:
            raise ValueError(f"unknown nnU-Net configuration {configuration!r} in {part!r}; one of {', '.join(CONFIGURATIONS)}")
        label = name if configuration == "auto" else f"{name}-{configuration}"
        choices.append(AnchorChoice(label, ANCHORS[name], configuration))
    return choices


def _has_nnunet(python: str) -> str | None:
    """None when ``python`` imports nnU-Net and segbench; else why not, in a few words."""
    try:
        done = subprocess.run([python, "-c", "import nnunetv2, SimpleITK, segbench"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": _segbench_path(os.environ)})
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]


def _segbench_path(environ) -> str:
    """PYTHONPATH that lets another Python import this segbench (its source folder first)."""
    return os.pathsep.join([str(SOURCE)] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def find_python(explicit: str | None = None) -> str:
    """The Python that runs the anchor (module docstring), or ``AnchorMissing``."""
    given = explicit or os.environ.get("SEGBENCH_ANCHOR_PYTHON")
    if given:
        why = _has_nnunet(given)
        if why:
            raise AnchorMissing(f"nnU-Net anchor: {given} cannot import nnunetv2 ({why}); {INSTALL}")
        return given
    candidates = [sys.executable, str(Path.cwd() / ".venv-peers" / "bin" / "python"),
                  str(SOURCE / ".venv-peers" / "bin" / "python")]
    for python in dict.fromkeys(candidates):
        if Path(python).exists() and _has_nnunet(python) is None:
            return python
    raise AnchorMissing(f"nnU-Net anchor: no Python here has nnunetv2 (tried {', '.join(dict.fromkeys(candidates))}); "
                        f"{INSTALL}, or pass --anchor-python")


@dataclass(frozen=True)
class AnchorRun:
    """One of the anchor's runs as the report sees it."""

    label: str
    fold: int | None
    seed: int
    run_dir: Path
    hash: str
    configuration: str


def _budget(plan, budget_plan, speed: dict | None, profile) -> dict:
    """The review's budget as the anchor's worker needs it (``AnchorSpec.budget``): under a time budget, how to
    time nnU-Net's step beside the reference architecture's (``speed``, and ``min_seconds`` as the plan timed)."""
    from segbench.bench.protocol.matched import plan_seconds

    train = plan[0].config.train
    if budget_plan is None:
        kind = "auto" if train.budget == "auto" else "iterations"
        return {"kind": kind, "iterations": int(train.iterations)}
    out = {"kind": budget_plan.kind, "amount": float(budget_plan.amount), "iterations": int(budget_plan.cap)}
    if budget_plan.kind == "time":
        reference = next(run.arch for run in plan if run.arch in budget_plan.archs)
        out.update(reference=reference, reference_iterations=int(budget_plan.archs[reference].iterations), speed=speed,
                   min_seconds=plan_seconds(profile, float(budget_plan.amount), 2))
    return out


def plan_anchor(choice: AnchorChoice, plan, profile, out: str | Path, *, threads: int, budget_plan=None,
                speed: dict | None = None) -> AnchorSpec:
    """The anchor's spec for a sweep's ``plan``: one run per (fold, seed) of the plan, on the data, split and
    evaluation settings of that fold's first run. ``speed``: the review's speed settings (``SpeedSettings`` as
    a dict), needed to time the steps under a time budget."""
    from segbench.bench.protocol.sweep import input_size
    from segbench.config import config_to_dict

    root = Path(out) / choice.name
    budget = _budget(plan, budget_plan, speed, profile)
    height, width = input_size(plan[0].config, profile)
    measure = {"size": [height, width], "rounds": profile.timing_rounds, "max_warmup": profile.timing_max_warmup}
    runs, seen = [], set()
    for run in plan:
        if (run.fold, run.seed) in seen:
            continue
        seen.add((run.fold, run.seed))
        config = config_to_dict(run.config)
        identity = {"anchor": asdict(choice), "data": config["data"], "eval": config["eval"], "seed": run.seed,
                    "budget": {k: v for k, v in budget.items() if k not in MEASURING}, "measure": measure}
        run_hash = digest(identity)
        fold = f"f{run.fold}-" if run.fold is not None else ""
        runs.append({"fold": run.fold, "seed": run.seed, "hash": run_hash, "config": config,
                     "run_dir": str(Path(out) / f"{choice.name}-{fold}s{run.seed}-{run_hash}")})
    return AnchorSpec(name=choice.name, schedule=choice.schedule, configuration=choice.configuration, root=str(root),
                      threads=threads, budget=budget, measure=measure, runs=runs)


def anchor_runs(spec: AnchorSpec) -> list[AnchorRun]:
    return [AnchorRun(spec.name, r["fold"], int(r["seed"]), Path(r["run_dir"]), r["hash"], spec.configuration)
            for r in spec.runs]


def _environment(spec: AnchorSpec) -> dict[str, str]:
    root = Path(spec.root)
    threads = str(spec.threads)
    return {**os.environ, "PYTHONPATH": _segbench_path(os.environ), "nnUNet_raw": str(root / "raw"),
            "nnUNet_preprocessed": str(root / "preprocessed"), "nnUNet_results": str(root / "results"),
            "nnUNet_extTrainer": str(TRAINERS_DIR), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
            "nnUNet_compile": "false", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1"}


def _finished(spec: AnchorSpec) -> bool:
    return all((r := WorkerResult.read(run["run_dir"])) is not None and r.ok and r.hash == run["hash"]
               for run in spec.runs)


def run_anchor(spec: AnchorSpec, python: str, say: Callable[[str], None] = print) -> dict[str, int]:
    """Run the anchor's worker for ``spec`` (its finished runs are kept) and wait; every run folder ends with a
    ``bench.json``, a failure record when the worker died. Counts like ``run_sweep``'s."""
    from segbench.engine import run_folder

    root = Path(spec.root)
    if _finished(spec):
        say(f"{spec.name}: {len(spec.runs)} run(s) finished before")
        return {"ran": 0, "failed": 0, "skipped": len(spec.runs)}
    run_folder.claim(root, files=(SPEC_FILE, ANCHOR_LOG, "raw/", "preprocessed/", "results/"))
    for run in spec.runs:
        run_folder.claim(run["run_dir"], files=(RESULT_FILE, "nnunet/", "nnunet_schedule.json"))
    spec.write(root / SPEC_FILE)
    say(f"{spec.name}: nnU-Net ({spec.configuration}, {spec.schedule} schedule) for {len(spec.runs)} run(s) "
        f"with {python}; its output in {root / ANCHOR_LOG}")
    with open(root / ANCHOR_LOG, "a") as log:
        code = subprocess.call([python, "-m", "segbench.bench.protocol.anchor.nnunet", str(root / SPEC_FILE)],
                               stdout=log, stderr=subprocess.STDOUT, env=_environment(spec))
    failed = 0
    for run in spec.runs:
        result = WorkerResult.read(run["run_dir"])
        if result is None or result.hash != run["hash"]:
            result = WorkerResult(hash=run["hash"], error=f"the anchor's worker exited with status {code} before "
                                                          f"this run ended; see {root / ANCHOR_LOG}")
            result.write(run["run_dir"])
        if not result.ok:
            failed += 1
            say(f"{spec.name}: {Path(run['run_dir']).name} failed: {result.error}")
    return {"ran": len(spec.runs), "failed": failed, "skipped": 0}


def anchor_facts(label: str) -> dict[str, str | int]:
    """What the report says of the anchor's design, beside the registry's facts of each architecture."""
    schedule = "for its own 1000 x 250 schedule" if "default" in label else "for the review's budget"
    return {"paper": "Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical image "
                     "segmentation, Nature Methods 2021 (the anchor: docs/anchor.md)", "year": 2021,
            "summary": "nnU-Net run by its own code: it plans its U-Net, patch, batch, normalisation and augmentation "
                       f"from the data, trains on the review's training cases {schedule}, and predicts with sliding "
                       "windows and mirroring; scored by segbench's metrics."}


def anchor_record(run: AnchorRun) -> RunRecord:
    """The anchor's run as a results row, like a zoo run's (``runs.run_record``)."""
    result = WorkerResult.read(run.run_dir) or WorkerResult(hash=run.hash, error="never ran")
    metrics = result.metrics
    configuration = metrics.get("nnunet_configuration", run.configuration)
    return RunRecord(
        arch=run.label, seed=run.seed, fold=run.fold, status=result.status, error=result.error if not result.ok else "",
        recipe="nnU-Net", year=2021, backbone=f"nnU-Net {configuration} U-Net (its own plan)",
        model_options=json.dumps({"configuration": configuration}), pretrained="none (from scratch)",
        input_size=str(metrics.get("nnunet_patch_size", "")), iterations=int(result.budget.get("iterations") or 0),
        batch_size=int(metrics.get("nnunet_batch_size") or 0), config_hash=run.hash, run_dir=str(run.run_dir),
        figures=figures_of(result),
    )
