"""DeepLab's CRF post-processing measured: what the fully connected CRF (crf=dense, pydensecrf2) and its
local-window approximation (crf=conv, ConvCRF) cost, and what they change.

    python scripts/crf_benchmark.py cost [--sizes 96 256 512] [--classes 2 21] [--rounds 7]
        seconds per image of each CRF alone on synthetic scores, timed side by side (interleaved, one
        process: segbench.bench.measure.timing), and the ratio dense / conv.

    python scripts/crf_benchmark.py effect RUN_DIR [RUN_DIR ...] [--split test]
        for each finished DeepLab v1/v2 run: its best checkpoint evaluated on the split with no CRF,
        ConvCRF and the dense CRF (segbench.engine.evaluate, the loop the review uses; the CRFs as the
        builders make them). Dice compared as the review compares architectures (its units, paired,
        simultaneous intervals: segbench.bench.report.evidence.gather), HD95 and NSD averaged over cases,
        and the seconds per image of a batch-1 forward pass with each (timed interleaved). Prints a
        Markdown table.

Needs pydensecrf2 (pip install 'segbench[crf]') for the dense columns. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import time
from pathlib import Path

import torch

from segbench.bench.measure.timing import time_interleaved
from segbench.models.architectures.crf import build_crf
from segbench.models.architectures.deeplab import PAPER_CRF_V2
from segbench.models.architectures.deeplab_v1 import PAPER_CRF

KINDS = ("none", "conv", "dense")


def _crf(kind: str, arch: str) -> torch.nn.Module | None:
    kernels = PAPER_CRF if arch == "deeplabv1" else PAPER_CRF_V2
    return build_crf(kind, iterations=10, window=7, dense_kernels=kernels)


def cost(sizes: list[int], classes: list[int], rounds: int) -> None:
    print(f"CRF alone, seconds per image (median of {rounds} interleaved rounds), {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    print("| size | classes | conv (ConvCRF 7x7, 10 it.) | dense (v1 kernels, 10 it.) | dense (v2 kernels) | dense / conv |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        for count in classes:
            g = torch.Generator().manual_seed(0)
            logits = torch.randn(1, count, size, size, generator=g)
            image = torch.rand(1, 3, size, size, generator=g) * 255
            crfs = {"conv": _crf("conv", "deeplabv1"), "dense v1": _crf("dense", "deeplabv1"),
                    "dense v2": _crf("dense", "deeplabv2")}
            with torch.no_grad():
                timings = time_interleaved({name: (lambda c=c: c(logits, image)) for name, c in crfs.items()},
                                           rounds=rounds, max_warmup=3)
            s = {name: t.median for name, t in timings.items()}
            print(f"| {size}x{size} | {count} | {s['conv']:.4f} | {s['dense v1']:.4f} | {s['dense v2']:.4f} | "
                  f"{s['dense v1'] / s['conv']:.2f} |")


def _case_means(rows: list[dict], metric: str) -> float:
    """The mean over cases of each case's mean over its finite foreground classes (NaN if none)."""
    by_case: dict[str, list[float]] = {}
    for row in rows:
        if math.isfinite(row[metric]):
            by_case.setdefault(row["case"], []).append(row[metric])
    means = [sum(v) / len(v) for v in by_case.values()]
    return sum(means) / len(means) if means else math.nan


def effect(run_dirs: list[str], split: str | None, rounds: int) -> None:
    from segbench.bench.report.evidence import RunKey, RunScores, gather, unit_scores
    from segbench.data import load_data
    from segbench.engine.checkpoint import load_run_model
    from segbench.engine.evaluate import evaluate

    print("| run | CRF | Dice (review's units) [95% CI] | vs leader [simultaneous CI], status | slices better / worse "
          "than no CRF (mean dDice) | HD95 | NSD | s/image (batch 1) | added by the CRF |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run_dir in run_dirs:
        model, cfg, info = load_run_model(run_dir, "best")
        data = load_data(cfg.data)
        chosen = split or ("test" if "test" in data.splits else "val")
        dataset = data.splits[chosen]
        models = {}
        for kind in KINDS:  # one trained network, three post-processings
            models[kind] = copy.deepcopy(model)
            models[kind].crf = _crf(kind, cfg.model.arch)
        rows, per_arch = {}, {}
        for kind, refined in models.items():
            cases: list[dict] = []
            slices: list[dict] = []
            evaluate(refined, dataset, info, cfg.eval, per_case=cases, per_slice=slices)
            rows[kind] = cases
            per_arch[kind] = {RunKey(None, 0): RunScores(cases, slices)}
        # The review's statistics on the review's units (cases, or blocks of slices of a lone volume).
        evidence = gather(per_arch)
        standings = {s.name: s for s in evidence.comparison.standings}
        image = dataset[0]["image"][None]
        with torch.no_grad():
            timings = time_interleaved({kind: (lambda m=m: m(image)) for kind, m in models.items()},
                                       rounds=rounds, max_warmup=3)
        seconds = {kind: timings[kind].median for kind in KINDS}
        units = f"{evidence.n_units} {evidence.unit}s"
        print(f"<!-- {Path(run_dir).name}: {chosen} split, {evidence.n_cases} case(s), {units}, "
              f"{'inferential' if evidence.comparison.inferential else 'too few units for intervals'} -->")
        # Descriptive only (neighbouring slices are correlated): slices whose Dice the CRF raised / lowered.
        slice_dice = {kind: unit_scores(runs[RunKey(None, 0)], "slice") for kind, runs in per_arch.items()}
        for kind in KINDS:
            s = standings[kind]
            deltas = [slice_dice[kind][u] - slice_dice["none"][u] for u in slice_dice["none"]]
            moved = (f"{sum(d > 0 for d in deltas)} / {sum(d < 0 for d in deltas)} of {len(deltas)} "
                     f"({sum(deltas) / len(deltas):+.4f})") if kind != "none" and deltas else ""
            vs = "leader" if s.status == "leader" else f"{s.diff:+.4f} [{s.diff_low:+.4f}, {s.diff_high:+.4f}], {s.status}"
            print(f"| {Path(run_dir).name} | {kind} | {s.mean:.4f} [{s.low:.4f}, {s.high:.4f}] | {vs} | {moved} | "
                  f"{_case_means(rows[kind], 'hd95'):.2f} | {_case_means(rows[kind], 'nsd'):.4f} | "
                  f"{seconds[kind]:.4f} | {seconds[kind] - seconds['none']:+.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cost", help="seconds per image of each CRF alone, side by side")
    c.add_argument("--sizes", type=int, nargs="+", default=[96, 256, 512])
    c.add_argument("--classes", type=int, nargs="+", default=[2, 21])
    c.add_argument("--rounds", type=int, default=7)
    e = sub.add_parser("effect", help="no CRF, ConvCRF and the dense CRF on finished DeepLab runs")
    e.add_argument("run_dirs", nargs="+")
    e.add_argument("--split", default=None, help="default: test where the data has one, else val")
    e.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.command == "cost":
        cost(args.sizes, args.classes, args.rounds)
    else:
        effect(args.run_dirs, args.split, args.rounds)


if __name__ == "__main__":
    main()
