"""What `--tracker` costs a training run (docs/tracking.md): the same small run trained without trackers and
with each, interleaved, and the trackers' own time on that run's records.

    PYTHONPATH=. python scripts/tracking_overhead.py OUT [--repeats 3] [--iterations 100]

Trains U-Net (width 16) on synthetic 64x64 PNGs, batch 8, a log line every iteration (what a review of 100
iterations writes: log_interval = iterations // 100) and a validation every 25. Prints, per setting, the
median wall time of ``train`` and of its training steps (``metrics.json``: ``wall_time_s``, ``train_time_s``),
then the seconds the trackers alone take to log one run's records (``log.jsonl`` replayed through
``open_trackers``, interleaved too), which is the overhead free of the machine's noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS = {"none": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "both": ["tensorboard", "mlflow"]}


def synthetic_data(root: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("val", 8)):
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            yy, xx = np.mgrid[:size, :size]
            cy, cx = rng.integers(12, size - 12, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < 80).astype(np.uint8)
            image = 60 + 120 * mask + rng.normal(0, 15, mask.shape)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


def replay_seconds(trackers: list[str], log: Path, folder: Path) -> tuple[float, float]:
    """Seconds to open ``trackers`` (a new store), and to log every record of ``log`` and the final metrics
    and close."""
    from segbench.engine.tracking import final_metrics, open_trackers, record_metrics

    records = [json.loads(line) for line in log.read_text().splitlines()]
    metrics = json.loads((log.parent / "metrics.json").read_text())
    started = time.perf_counter()
    tracker = open_trackers(trackers, folder, resumed_from=None, tracking_uri=None, tags={"arch": "unet"})
    opened = time.perf_counter()
    for record in records:
        tracked = record_metrics(record)
        if tracked is not None:
            tracker.log_metrics(tracked[1], tracked[0])
    tracker.log_metrics(final_metrics(metrics), metrics["iterations_run"])
    tracker.close()
    return opened - started, time.perf_counter() - opened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--replay-only", metavar="RUN", help="Time only the trackers, on the records of RUN (a "
                        "finished run folder, e.g. OUT/none-0 of an earlier call): no training.")
    args = parser.parse_args()
    if args.replay_only:
        return replay(Path(args.replay_only), Path(args.out), args.repeats)

    from segbench.config import load_config
    from segbench.engine import train

    out = Path(args.out)
    data = synthetic_data(out / "data")
    base = [f"data.source={data}", "model.arch=unet", "model.options.base_width=16", "train.batch_size=8",
            f"train.iterations={args.iterations}", "train.log_interval=1", "train.val_interval=25",
            "train.checkpoint_interval=50", "train.device=cpu", "train.num_workers=0", "eval.test_at_end=false"]
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, trackers in SETTINGS.items():
            cfg = load_config(None, [*base, f"train.trackers=[{','.join(trackers)}]"])
            metrics = train(cfg, out / f"{name}-{repeat}", resume=False, progress=False)
            results[name].append(metrics)
            print(f"{name} #{repeat}: wall {metrics['wall_time_s']:.2f} s, steps {metrics['train_time_s']:.2f} s",
                  file=sys.stderr)
    print(f"{'trackers':<12} {'wall s (median)':>16} {'steps s (median)':>17}")
    for name, runs in results.items():
        print(f"{name:<12} {statistics.median(r['wall_time_s'] for r in runs):>16.2f} "
              f"{statistics.median(r['train_time_s'] for r in runs):>17.2f}")
    return replay(out / "none-0", out, args.repeats)


def replay(run: Path, out: Path, repeats: int) -> int:
    """The trackers alone on the records of ``run``, interleaved, ``repeats`` times each."""
    log = run / "log.jsonl"
    lines = sum(1 for _ in log.open())
    alone = {name: [] for name in SETTINGS if name != "none"}
    for repeat in range(repeats):
        for name in alone:
            alone[name].append(replay_seconds(SETTINGS[name], log, out / f"replay-{name}-{repeat}"))
    print(f"\ntrackers alone, one run's {lines} log records (median of {repeats}):")
    steps = json.loads((run / "metrics.json").read_text())["train_time_s"]
    for name, pairs in alone.items():
        opening, logging = (statistics.median(p[k] for p in pairs) for k in (0, 1))
        print(f"{name:<12} open {opening:.2f} s (a new store), log {logging:.2f} s = {1000 * logging / lines:.1f} ms "
              f"per record ({100 * logging / steps:.1f}% of the run's {steps:.1f} s of training steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
