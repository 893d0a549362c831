"""After the sweep: ensembles and flip TTA from the runs already trained (no retraining), scored on the
review's validation units and priced with the review's timing harness (``segbench run --ensembles``).

The candidates:

- each architecture with flip TTA (``inference.tta_flips``: horizontal for 2D images, both in-plane axes
  for slices of volumes), every run of it (fold x seed) evaluated again with the flips;
- the ensemble of the top ``top_k`` architectures by mean validation Dice per case (softmax averaged),
  with and without TTA: for each (fold, seed), the members' runs of that fold and seed, evaluated on that
  fold's validation split, so every validation unit is scored by models that held it out, as the singles;
- with cross-validation and a test split: each architecture's K fold models as one ensemble (nnU-Net's
  way), per seed, on the test split (the same in every fold; no validation case is held out by all K).
  Its files are ``per_case_test.csv``; the report compares it with the architecture's single fold models
  on the same test cases (``segbench.bench.report.fold_ensembles``).

Each is evaluated by ``engine.ensemble.evaluate_runs`` (the one evaluation loop and metrics) and its per-case
rows written like a run's (``OUT/candidates/<name>/f<fold>-s<seed>/per_case_val.csv``), so the review's
evidence reads them as it reads a run's. Costs: one ``price_candidates`` call times every candidate and
the best single architecture interleaved (batch 1, the profile's input size, the runs' precision), on the
first (fold, seed) members. The records: ``record.CandidateRecord`` in ``OUT/candidates/candidates.json``.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path
from typing import Callable

from segbench.bench.protocol.profiles import Profile
from segbench.bench.protocol.record import CANDIDATES_DIR, CandidateRecord, WorkerResult, write_candidates
from segbench.bench.protocol.sweep import PlannedRun, input_size
from segbench.run_files import per_case_file, per_slice_file

__all__ = ["TOP_K", "build_candidates"]

TOP_K = 3  # architectures in the top ensemble (``segbench run --ensemble-top``)
RANK_KEY = "dice_fg_per_case"  # the validation figure the top architectures are picked by (mean over runs)


def _ok_runs(plan: list[PlannedRun]) -> dict[str, dict[tuple[int | None, int], PlannedRun]]:
    """Architecture label -> (fold, seed) -> its finished run of this plan."""
    out: dict[str, dict] = {}
    for run in plan:
        if run.finished:
            out.setdefault(run.label, {})[(run.fold, run.seed)] = run
    return out


def _top(runs: dict[str, dict], top_k: int) -> list[str]:
    means = {}
    for label, by_key in runs.items():
        values = [WorkerResult.read(r.run_dir).metrics.get("val", {}).get(RANK_KEY) for r in by_key.values()]
        values = [v for v in values if isinstance(v, (int, float))]
        if values:
            means[label] = statistics.fmean(values)
    return sorted(means, key=lambda a: (-means[a], a))[:top_k]


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "-", name).strip("-").lower()


def _specs(runs: dict[str, dict], top: list[str], flips: tuple[str, ...]) -> list[CandidateRecord]:
    specs = [CandidateRecord(f"{label} + TTA", "tta", [label], list(flips)) for label in runs]
    if len(top) >= 2:
        specs.append(CandidateRecord(f"ensemble of {len(top)}", "ensemble", list(top), []))
        specs.append(CandidateRecord(f"ensemble of {len(top)} + TTA", "ensemble+tta", list(top), list(flips)))
    return specs


def _folds(by_key: dict[tuple[int | None, int], PlannedRun]) -> tuple[list[int], list[int]]:
    """An architecture's folds, and the seeds for which every one of them finished."""
    folds = sorted({f for f, _ in by_key} - {None})
    seeds = sorted(s for s in {s for _, s in by_key} if all((f, s) in by_key for f in folds))
    return folds, seeds


def _fold_specs(runs: dict[str, dict], has_test: bool) -> list[CandidateRecord]:
    """Each cross-validated architecture's fold models as one ensemble on the test split (module docstring)."""
    if not has_test:
        return []
    specs = []
    for label, by_key in runs.items():
        folds, seeds = _folds(by_key)
        if len(folds) >= 2 and seeds:
            specs.append(CandidateRecord(f"{label} {len(folds)}-fold ensemble", "folds", [label], [], split="test"))
    return specs


def _member_runs(spec: CandidateRecord, runs: dict[str, dict]) -> dict[tuple[int | None, int], list[PlannedRun]]:
    """(fold, seed) -> the runs the candidate combines there: the members' runs of that fold and seed, or for
    a fold ensemble (None, seed) -> its architecture's runs of every fold."""
    if spec.kind == "folds":
        by_key = runs[spec.members[0]]
        folds, seeds = _folds(by_key)
        return {(None, seed): [by_key[(f, seed)] for f in folds] for seed in seeds}
    keys = sorted(set.intersection(*(set(runs[m]) for m in spec.members)), key=lambda k: (k[0] or 0, k[1]))
    return {key: [runs[m][key] for m in spec.members] for key in keys}


def _evaluate(spec: CandidateRecord, runs: dict[str, dict], out: Path, data_of: Callable, say) -> None:
    from segbench.engine.ensemble import evaluate_runs, load_members
    from segbench.engine.metrics import PER_SLICE_COLUMNS, write_per_case_csv

    combined = _member_runs(spec, runs)
    for (fold, seed), member_runs in combined.items():
        members = load_members([run.run_dir for run in member_runs])
        result = evaluate_runs(members, spec.split, flips=tuple(spec.flips), data=data_of(member_runs[0]))
        folder = Path(CANDIDATES_DIR) / _slug(spec.name) / ((f"f{fold}-" if fold is not None else "") + f"s{seed}")
        (out / folder).mkdir(parents=True, exist_ok=True)
        write_per_case_csv(out / folder / per_case_file(spec.split), result.per_case)
        write_per_case_csv(out / folder / per_slice_file(spec.split), result.per_slice, PER_SLICE_COLUMNS)
        spec.folders[CandidateRecord.key(fold, seed)] = folder.as_posix()
        spec.member_runs[CandidateRecord.key(fold, seed)] = [run.run_dir.name for run in member_runs]
        spec.metrics[CandidateRecord.key(fold, seed)] = {
            k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    say(f"candidates: {spec.name} evaluated on {len(combined)} {'seed' if spec.kind == 'folds' else 'run'}(s)"
        + (" on the test split" if spec.split == "test" else ""))


def _price(specs: list[CandidateRecord], runs: dict[str, dict], reference: str, profile: Profile) -> None:
    from segbench.bench.measure.predictors import Candidate, price_candidates
    from segbench.engine.checkpoint import load_run_model
    from segbench.engine.device import inference_precision, resolve_device
    from segbench.engine.evaluate import inference_settings

    first = {label: by_key[min(by_key, key=lambda k: (k[0] or 0, k[1]))] for label, by_key in runs.items()}
    loaded = {label: load_run_model(run.run_dir) for label, run in first.items()}
    cfg, info = loaded[reference][1], loaded[reference][2]
    settings = inference_settings(cfg.eval)
    single = dataclasses.replace(settings, flips=())
    priced = {"reference": Candidate([loaded[reference][0]], single)}
    for spec in specs:
        if not spec.folders:
            continue
        if spec.kind == "folds":  # its reference: one fold model of its own architecture, in the same measurement
            label = spec.members[0]
            fold_runs = next(iter(_member_runs(spec, runs).values()))
            priced[f"one model: {label}"] = Candidate([loaded[label][0]], single)
            models = [loaded[label][0] if run is first[label] else load_run_model(run.run_dir)[0] for run in fold_runs]
            priced[spec.name] = Candidate(models, single)
        else:
            priced[spec.name] = Candidate([loaded[m][0] for m in spec.members],
                                          dataclasses.replace(settings, flips=tuple(spec.flips)))
    device = resolve_device("auto")
    costs = price_candidates(priced, in_channels=info.in_channels, size=input_size(cfg, profile), device=device,
                             precision=inference_precision(cfg.train.amp, device), rounds=profile.timing_rounds,
                             max_warmup=profile.timing_max_warmup)
    for spec in specs:
        own = spec.members[0] if spec.kind == "folds" else reference
        spec.cost, spec.reference = costs.get(spec.name, {}), own
        spec.reference_cost = costs.get(f"one model: {own}", {}) if spec.kind == "folds" else costs["reference"]


def build_candidates(plan: list[PlannedRun], profile: Profile, out: str | Path, *, top_k: int = TOP_K,
                     say: Callable[[str], None] = print) -> list[CandidateRecord]:
    """Evaluate and price every candidate of the module docstring from ``plan``'s finished runs; writes
    ``OUT/candidates/``; returns the records (an empty list when no run finished)."""
    from segbench.data import load_data
    from segbench.engine.checkpoint import load_run_model
    from segbench.engine.inference import tta_flips

    out = Path(out)
    runs = _ok_runs(plan)
    if not runs:
        return []
    top = _top(runs, top_k)
    any_run = next(iter(next(iter(runs.values())).values()))
    flips = tta_flips(load_run_model(any_run.run_dir)[2].volumetric)
    loaded: dict = {}

    def data_of(run: PlannedRun):
        fold = run.config.data.fold if run.config.data.folds else None
        if fold not in loaded:
            loaded[fold] = load_data(run.config.data)
        return loaded[fold]

    specs = _specs(runs, top, flips)
    specs += _fold_specs(runs, len(data_of(any_run).splits.get("test") or ()) > 0)
    for spec in specs:
        try:
            _evaluate(spec, runs, out, data_of, say)
        except Exception as err:  # noqa: BLE001 - one candidate failing is recorded, as a failed run is
            spec.error, spec.folders, spec.member_runs = f"{type(err).__name__}: {err}", {}, {}
            say(f"candidates: {spec.name} failed: {spec.error}")
    if top:
        _price(specs, runs, top[0], profile)
    write_candidates(specs, out)
    return specs
