"""The columns of the review's comparison table: the one list the HTML and Markdown tables, the CSV's
aggregates, the findings and the plots read. A column's ``key`` is the name its producer gives the
figure (``segbench.bench.protocol.record.figures_of``: the measurement's, the training's, or a split's
score prefixed ``val_``/``test_``), so adding a column to the review is a key in the producer's output
and a line here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from segbench.metric_defs import metric

__all__ = ["Column", "COLUMNS", "SPEED_COLUMNS", "ACCURACY_KEY", "column", "metric_column"]

# The score the review ranks, tests and names a best by: the mean over validation units of each unit's
# foreground Dice, empty structures scored by Metrics Reloaded's rules (segbench.bench.report.evidence).
ACCURACY_KEY = "val_unit_dice"


@dataclass(frozen=True)
class Column:
    """A number the review compares: its row key, header, unit, and which direction is better."""

    key: str
    label: str
    better: str  # "higher", "lower", or "" (neither: not marked, no superlatives)
    digits: int = 3
    unit: str = ""
    help: str = ""
    # Timed figures: the row keys of the interquartile range shown next to the median, and of the flag
    # that says the figure stayed noisy after re-measuring (segbench.bench.measure.timing).
    spread: tuple[str, str] | None = None
    noisy: str | None = None
    # The row key naming the unit where the data decides it (distances: "mm" with voxel spacing, else "px").
    unit_key: str | None = None
    # False: a figure of the architecture over all its runs (the statistics), not in a run's results row.
    per_run: bool = True
    # Values below this print as "<floor" (p-values: "<0.001" rather than a row of zeros).
    floor: float | None = None
    # Over an architecture's runs: "mean" (± sample std) or "median" (with the runs' [min–max]): costs,
    # where one run on a busy machine would inflate a mean and its std (segbench.bench.report.results.aggregate).
    over_runs: str = "mean"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every numeric row key the column shows: its value and its spread."""
        return (self.key, *(self.spread or ()))


def metric_column(key: str, label: str, digits: int, **extra) -> Column:
    """The column of a split's metric (``val_nsd_fg``): direction, unit and help from ``segbench.metric_defs``."""
    m = metric(key)
    unit = "px" if m.unit == "distance" else m.unit
    split = key.split("_", 1)[0]
    unit_key = f"{split}_distance_unit" if m.unit == "distance" else None
    return Column(key, label, m.better, digits, unit, f"{m.help}; {split} split", unit_key=unit_key, **extra)


# The comparison table, in display order. Accuracy first, then cost.
COLUMNS: tuple[Column, ...] = (
    Column("val_unit_dice", "Val Dice", "higher", 4, help="mean over validation units (cases; blocks of contiguous "
           "slices of a lone volume) of each unit's mean foreground Dice, a unit with nothing in reference and "
           "prediction scoring 1 [95% bootstrap interval over units and seeds] (segbench.bench.report.evidence): the "
           "one quantity the verdict ranks and tests", spread=("val_unit_dice_low", "val_unit_dice_high"), per_run=False),
    Column("val_vs_leader", "vs leader", "", 4, help="difference from the leader's Val Dice [simultaneous 95% "
           "interval] (segbench.comparison)", spread=("val_vs_leader_low", "val_vs_leader_high"), per_run=False),
    Column("val_answer", "Answer", "", help="against the leader: worse, equivalent within the margin, inconclusive; "
           "'not shown learned' when not shown better than predicting background everywhere", per_run=False),
    Column("vs_best_single", "vs best single", "", 4, help="ensembles and flip TTA (segbench run --ensembles): "
           "difference from the best single architecture's Val Dice (by mean validation Dice per case) [simultaneous "
           "95% interval, the same family as the verdict's] (segbench.bench.report.candidates)",
           spread=("vs_best_single_low", "vs_best_single_high"), per_run=False),
    Column("best_single_answer", "vs single", "", help="against the best single architecture: better, worse, "
           "equivalent within the margin, inconclusive", per_run=False),
    Column("dice_per_ms", "Dice per ms", "higher", 5, help="Val Dice gained per millisecond of batch-1 latency added "
           "over the best single architecture, both timed in one interleaved measurement; empty when not slower",
           per_run=False),
    metric_column("val_mIoU", "Val mIoU", 4),
    metric_column("val_hd95_fg", "Val HD95", 2),
    metric_column("val_nsd_fg", "Val NSD", 4),
    metric_column("val_hd95_worst_case", "Missed/invented", 0),
    metric_column("test_dice_fg_per_case", "Test Dice", 4),
    metric_column("test_mIoU", "Test mIoU", 4),
    Column("params_m", "Params", "lower", 2, "M", "all parameters, millions", over_runs="median"),
    Column("gflops", "FLOPs", "lower", 2, "GFLOPs", "one forward pass, batch 1, profile input size (FlopCounterMode)",
           over_runs="median"),
    Column("latency_ms", "Latency", "lower", 2, "ms", "median of timed batch-1 forward passes [interquartile range]",
           spread=("latency_q1_ms", "latency_q3_ms"), noisy="latency_noisy", over_runs="median"),
    Column("onnx_latency_ms", "ONNX latency", "lower", 2, "ms", "the same batch-1 latency with the architecture's "
           "ONNX export run by ONNX Runtime on the CPU (segbench run --latency-engine onnx) [interquartile range]",
           spread=("onnx_latency_q1_ms", "onnx_latency_q3_ms"), noisy="onnx_latency_noisy", over_runs="median"),
    Column("throughput_ips", "Throughput", "higher", 1, "img/s",
           "images/s of inference at the training batch: the Speed section's measurement [from its quartiles]",
           spread=("throughput_lo_ips", "throughput_hi_ips"), noisy="throughput_noisy", over_runs="median"),
    Column("infer_peak_mb", "Infer mem", "lower", 1, "MB", "peak tensor memory of a batch-1 forward pass over what it "
           "started with; empty where it could not be measured", over_runs="median"),
    Column("train_peak_mb", "Train mem", "lower", 1, "MB", "peak memory added by training", over_runs="median"),
    Column("train_time_s", "Train time", "lower", 1, "s", "seconds in training steps (data loading included, validation excluded)"),
    Column("train_images_per_s", "Train speed", "higher", 1, "img/s", "training images per second"),
    Column("lr", "LR", "", 5, "", "peak learning rate the run trained with (the recipe's, or the range test's pick)"),
    Column("best_iteration", "Best iter", "", 0, "", "iteration of the best validation score"),
    Column("iterations_run", "Iterations", "", 0, "", "training steps the run took (its budget decides)"),
    Column("last_improvement_iteration", "Last gain", "", 0, "", "iteration of the last validation that improved "
           "the metric by more than train.min_delta"),
    Column("converged", "Converged", "", 2, "", "share of seeds whose last train.patience validations gained at "
           "most train.min_delta (1: every seed had stopped improving; 0: all were cut by the budget)"),
    Column("nnunet_predict_s", "nnU-Net predict", "", 1, "s", "the nnU-Net anchor's end-to-end prediction of the "
           "validation cases by its own predictor (preprocessing, sliding window, mirroring, export; one process), "
           "not a batch-1 forward like the Latency column", over_runs="median"),
)
_BY_KEY = {c.key: c for c in COLUMNS}

# The Speed section's table, one row per architecture (``segbench.bench.protocol.review_speed.speed_rows``).
SPEED_COLUMNS: tuple[Column, ...] = (
    Column("peer", "Peer", "", help="the peer implementation timed side by side with segbench's: 'no peer' where none "
           "exists or imports, 'different configuration' where its parameter count differs from segbench's"),
    Column("precision", "Precision", "", help="the precision the architecture trained in, timed in the same"),
    Column("train_ms", "Train step", "lower", 1, "ms", "median training step: forward, the run's loss, backward, "
           "optimiser [interquartile range]", spread=("train_q1_ms", "train_q3_ms"), noisy="train_noisy"),
    Column("infer_ms", "Inference", "lower", 1, "ms", "median eval-mode forward pass at the batch [interquartile range]",
           spread=("infer_q1_ms", "infer_q3_ms"), noisy="infer_noisy"),
    Column("train_gflops_per_s", "Train GFLOP/s", "higher", 1, help="convolution and matmul FLOPs (forward + backward) per second"),
    Column("train_matmul_pct", "Train % matmul", "higher", 0, "%", "that rate as a share of a same-precision matmul's"),
    Column("infer_gflops_per_s", "Inference GFLOP/s", "higher", 1, help="convolution and matmul FLOPs per second"),
    Column("infer_matmul_pct", "Inference % matmul", "higher", 0, "%", "that rate as a share of a same-precision matmul's"),
    Column("params", "Params", "", 0, "", "parameters segbench's training step uses"),
    Column("peer_params", "Peer params", "", 0, "", "parameters the peer's training step uses; a count unlike "
           "segbench's is a different configuration, which gets no ratio"),
    Column("train_ratio", "Train ratio", "lower", 2, "", "segbench's training step time / the peer's (below 1: faster): "
           "the geometric mean of the rounds' paired ratios [95% bootstrap interval]",
           spread=("train_ratio_low", "train_ratio_high")),
    Column("infer_ratio", "Inference ratio", "lower", 2, "", "segbench's inference time / the peer's (below 1: faster): "
           "the geometric mean of the rounds' paired ratios [95% bootstrap interval]",
           spread=("infer_ratio_low", "infer_ratio_high")),
    Column("data_wait_pct", "Data wait", "lower", 1, "%", "share of the training run's step time spent waiting for data"),
    Column("metrics_pct", "Metrics", "lower", 1, "%", "share of the run's validation time spent computing metrics"),
)


def column(key: str) -> Column:
    """The column for ``key``; per-class keys get a generated one."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    match = re.fullmatch(r"(val|test)_(dice|iou)_(.+)", key)
    if match:
        split, kind, name = match.groups()
        label = {"dice": "Dice", "iou": "IoU"}[kind]
        return Column(key, f"{split.capitalize()} {label} {name}", "higher", 4)
    raise KeyError(f"no column {key!r}; known: {', '.join(_BY_KEY)}")
