"""The names of the files ``segbench train`` writes into a run folder: one definition, read by the engine
(``segbench.engine.run_folder``) and by the review's records, which must load without torch.

Also the one rule every writer obeys (``writable``): segbench never deletes, truncates or writes through a
path it did not create in this run or list in its own marker (``segbench_run.json`` of the folder, or of
the folder above it), and never through a symbolic link. Standard library only, so any layer may use it.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

__all__ = ["MARKER", "SPLIT_FILE", "LAST_FILE", "BEST_FILE", "LOG_FILE", "METRICS_FILE", "CONFIG_FILE", "DATA_INFO_FILE",
           "ONNX_FILE", "INT8_ONNX_FILE", "PER_CASE_FILES", "LR_FIND_FILE", "TRACKING_FILE", "RUN_FILES", "per_case_file", "per_slice_file",
           "eval_file", "eval_per_case_file", "RunFolderError", "DiskFull", "WRITE_ERRNOS", "read_marker", "listed", "writable"]

LAST_FILE = "last.pt"  # everything needed to resume exactly
BEST_FILE = "best.pt"  # the weights of the best validation
LOG_FILE = "log.jsonl"  # one JSON line per event: start, train, val, diverged, end
METRICS_FILE = "metrics.json"  # the run's figures (segbench.engine.train)
CONFIG_FILE = "config.yaml"  # the resolved configuration
DATA_INFO_FILE = "data_info.json"  # classes, channels, normalisation: what predict needs
ONNX_FILE = "model.onnx"  # written by segbench export
INT8_ONNX_FILE = "model.int8.onnx"  # segbench export --quantize int8: ONNX_FILE quantized (segbench.export.quantize)
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
# train.trackers: the tracker runs this run logs to (its MLflow run id), so that a resumed run continues them.
# A review's OUT holds one too (its parent run). The trackers' own files (tensorboard/, mlflow.db, mlartifacts/)
# are not listed: starting a run over keeps their history, and its new tracker run starts at step 0.
TRACKING_FILE = "tracking.json"
# Every file ``segbench train`` writes into its run folder.
RUN_FILES = (LAST_FILE, BEST_FILE, LOG_FILE, METRICS_FILE, CONFIG_FILE, DATA_INFO_FILE, SPLIT_FILE, *PER_CASE_FILES,
             LR_FIND_FILE, TRACKING_FILE)


def eval_file(split: str) -> str:
    """``eval_<split>.json``: what ``segbench eval`` measured on ``split``."""
    return f"eval_{split}.json"


def eval_per_case_file(split: str) -> str:
    """``eval_per_case_<split>.csv``: its per-case rows."""
    return f"eval_per_case_{split}.csv"


class RunFolderError(ValueError):
    """The output folder is not one segbench may write into (or start over in), or a path in it is not ours."""


# A disk that is full or may not be written: the user's environment, not a bug.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG})


class DiskFull(OSError):
    """No space left on the device a file was being written to; says which device and which file (torch's
    zip writer reports a full disk as "unexpected pos", other writers as a bare errno)."""

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, "No space left on device", str(path))
        self.device = _mount_point(Path(path))

    def __str__(self) -> str:
        return f"no space left on {self.device} writing {self.filename}"


def _mount_point(path: Path) -> str:
    path = Path(os.path.abspath(path))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


# How far above a file its folder's marker may sit: RUN/metrics.json, OUT/report/index.html, OUT/sub/x_mask.png.
_MARKER_LEVELS = 3


def read_marker(folder: str | Path) -> dict | None:
    """The marker of ``folder`` (``{"files": [...], "inputs": [...], "kind": ...}``), or None."""
    path = Path(folder) / MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) and isinstance(values.get("files"), list) else None


def listed(marker: dict, relative: str) -> bool:
    """Whether the marker lists ``relative`` (a POSIX path in its folder); an entry ending in "/" lists a
    whole subfolder (a sweep's ``report/``)."""
    files = marker.get("files", [])
    return relative == MARKER or relative in files or any(f.endswith("/") and relative.startswith(f) for f in files)


def writable(path: str | Path, managed: str | Path | None = None) -> Path:
    """``path``, once it is proven safe to write, truncate or replace: the one check every writer of a
    run folder, a sweep folder or a predict folder goes through.

    Refused (``RunFolderError``, nothing touched): ``path`` or its temporary (``.NAME.tmp``) is a symbolic
    link (a write would land wherever it points); ``path`` exists and the nearest marker above it does not
    list it (a file the user put there; folders segbench manages are claimed, with a marker, before their
    first write, so outside them only links are refused). A new file is fine: the writer creates it in this run, and
    records it in the marker when it must rewrite it later. ``managed``: the folder whose marker decides
    (a folder about to be claimed: without a marker it lists nothing)."""
    path = Path(path)
    for candidate in (path, path.with_name(f".{path.name}.tmp")):
        if candidate.is_symlink():
            raise RunFolderError(f"{candidate} is a symbolic link; segbench never writes, truncates or deletes "
                                 "through a link (it may point out of the folder): remove the link and run again")
    if not path.exists():
        return path
    if managed is not None:
        if listed(read_marker(managed) or {}, path.relative_to(managed).as_posix()):
            return path
        raise _not_written_by_segbench(path)
    folder = path.parent
    for _ in range(_MARKER_LEVELS):
        marker = read_marker(folder)
        if marker is not None:
            if listed(marker, path.relative_to(folder).as_posix()):
                return path
            break
        folder = folder.parent
    else:  # no folder segbench manages (those are claimed, with a marker, before their first write)
        return path
    raise _not_written_by_segbench(path)


def _not_written_by_segbench(path: Path) -> RunFolderError:
    return RunFolderError(f"{path} exists and segbench did not write it (no {MARKER} lists it); segbench never "
                          "overwrites a file it did not write: move it away or choose another folder")
