"""The names of the files ``segbench train`` writes into a run folder: one definition, read by the engine
(``segbench.engine.run_folder``) and by the review's records, which must load without torch."""

from __future__ import annotations

__all__ = ["MARKER", "SPLIT_FILE", "LAST_FILE", "BEST_FILE", "LOG_FILE", "METRICS_FILE", "CONFIG_FILE", "DATA_INFO_FILE",
           "ONNX_FILE", "PER_CASE_FILES", "LR_FIND_FILE", "RUN_FILES", "per_case_file", "per_slice_file", "eval_file",
           "eval_per_case_file"]

LAST_FILE = "last.pt"  # everything needed to resume exactly
BEST_FILE = "best.pt"  # the weights of the best validation
LOG_FILE = "log.jsonl"  # one JSON line per event: start, train, val, diverged, end
METRICS_FILE = "metrics.json"  # the run's figures (segbench.engine.train)
CONFIG_FILE = "config.yaml"  # the resolved configuration
DATA_INFO_FILE = "data_info.json"  # classes, channels, normalisation: what predict needs
ONNX_FILE = "model.onnx"  # written by segbench export
MARKER = "segbench_run.json"
SPLIT_FILE = "data_split.json"  # case ids per split and the data's content hash (``eval`` compares)
# The best checkpoint's scores per (case, class) and per (volume slice, class) of val and test.
PER_CASE_FILES = ("per_case_val.csv", "per_case_test.csv", "per_slice_val.csv", "per_slice_test.csv")


def per_case_file(split: str) -> str:
    """``per_case_<split>.csv``: one row per (case, foreground class) of ``split`` (``engine.metrics``)."""
    return f"per_case_{split}.csv"


def per_slice_file(split: str) -> str:
    """``per_slice_<split>.csv``: one row per (volume slice, foreground class) of ``split``."""
    return f"per_slice_{split}.csv"


LR_FIND_FILE = "lr_find.json"  # train.lr_policy=find: the range test's curve and its pick
# Every file ``segbench train`` writes into its run folder.
RUN_FILES = (LAST_FILE, BEST_FILE, LOG_FILE, METRICS_FILE, CONFIG_FILE, DATA_INFO_FILE, SPLIT_FILE, *PER_CASE_FILES,
             LR_FIND_FILE)


def eval_file(split: str) -> str:
    """``eval_<split>.json``: what ``segbench eval`` measured on ``split``."""
    return f"eval_{split}.json"


def eval_per_case_file(split: str) -> str:
    """``eval_per_case_<split>.csv``: its per-case rows."""
    return f"eval_per_case_{split}.csv"
