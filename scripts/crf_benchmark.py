"""DeepLab's CRF post-processing measured: what the fully connected CRF (crf=dense, pydensecrf2) and its
local-window approximation (crf=conv, ConvCRF) cost, and what they change.

    python scripts/crf_benchmark.py cost [--sizes 96 256 512] [--classes 2 21] [--rounds 7]
        seconds per image of each CRF alone on synthetic scores, timed side by side (interleaved, one
        process: segbench.bench.measure.timing), and the ratio dense / conv.

    python scripts/crf_benchmark.py effect RUN_DIR [RUN_DIR ...] [--split test]
        for each finished DeepLab v1/v2 run: its best checkpoint evaluated on the split with no CRF,
        ConvCRF and the dense CRF (segbench.engine.evaluate, the loop the review uses; the CRFs as the
        builders make them), Dice, HD95 and NSD per case, each CRF's paired difference from no CRF over
        the cases (mean, 95% bootstrap interval, Wilcoxon p), and the seconds per image each adds to a
        batch-1 forward pass (timed interleaved). Prints a Markdown table.

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
from segbench.stats import bootstrap_ci, paired_test

KINDS = ("none", "conv", "dense")
METRICS = ("dice", "hd95", "nsd")  # per case, averaged over the foreground classes scored there


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


def _per_case(rows: list[dict]) -> dict[str, dict[str, float]]:
    """metric -> case -> mean over the foreground classes finite for that case."""
    out: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values: dict[str, list[float]] = {}
        for row in rows:
            if math.isfinite(row[metric]):
                values.setdefault(row["case"], []).append(row[metric])
        out[metric] = {case: sum(v) / len(v) for case, v in values.items()}
    return out


def effect(run_dirs: list[str], split: str | None, rounds: int) -> None:
    from segbench.data import load_data
    from segbench.engine.checkpoint import load_run_model
    from segbench.engine.evaluate import evaluate

    print(f"| run | split | CRF | Dice | HD95 | NSD | dDice vs none [95% CI] p | dHD95 | dNSD | s/image added |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run_dir in run_dirs:
        model, cfg, info = load_run_model(run_dir, "best")
        data = load_data(cfg.data)
        chosen = split or ("test" if "test" in data.splits else "val")
        dataset = data.splits[chosen]
        models = {}
        for kind in KINDS:  # one trained network, three post-processings
            models[kind] = copy.deepcopy(model)
            models[kind].crf = _crf(kind, cfg.model.arch)
        scores = {}
        for kind, refined in models.items():
            rows: list[dict] = []
            evaluate(refined, dataset, info, cfg.eval, per_case=rows)
            scores[kind] = _per_case(rows)
        image = dataset[0]["image"][None]
        with torch.no_grad():
            timings = time_interleaved({kind: (lambda m=m: m(image)) for kind, m in models.items()},
                                       rounds=rounds, max_warmup=3)
        seconds = {kind: timings[kind].median for kind in KINDS}
        name = Path(run_dir).name
        for kind in KINDS:
            means = {m: bootstrap_ci(scores[kind][m]).mean for m in METRICS}
            cells = [f"{means['dice']:.4f}", f"{means['hd95']:.2f}", f"{means['nsd']:.4f}"]
            if kind == "none":
                cells += ["", "", "", f"({seconds['none']:.4f} s without)"]
            else:
                deltas = []
                for m in METRICS:
                    diff = {c: scores[kind][m][c] - scores["none"][m][c]
                            for c in scores[kind][m].keys() & scores["none"][m].keys()}
                    ci = bootstrap_ci(diff)
                    p = paired_test(scores[kind][m], scores["none"][m]).pvalue
                    digits = 2 if m == "hd95" else 4
                    deltas.append(f"{ci.mean:+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}] p={p:.2g}")
                cells += deltas + [f"{seconds[kind] - seconds['none']:+.4f}"]
            print(f"| {name} | {chosen} ({len(scores[kind]['dice'])} cases) | {kind} | " + " | ".join(cells) + " |")


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
