"""What a run folder holds, and proof of which files in it segbench wrote.

A tool must never delete what it cannot prove it wrote: ``segbench train --out .`` in a project
folder used to delete that folder's own ``config.yaml`` and ``eval_*.json``. So a run folder carries a
marker, ``segbench_run.json``, whose ``files`` list every file name the run (training, ``eval``, a
sweep) may write there. Starting over deletes those files and nothing else, bar its ``inputs``: files
written for the run to read (the sweep's ``sweep_run.json``), which the run's start must not take away
from what it describes. A non-empty folder without the marker is refused. Folders written before the marker existed are recognised by a
``last.pt`` that loads as a segbench checkpoint and adopted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from segbench.run_files import BEST_FILE, LAST_FILE

__all__ = [
    "MARKER",
    "RUN_FILES",
    "SPLIT_FILE",
    "RunFolderError",
    "is_run_folder",
    "claim",
    "record",
    "open_for_training",
    "write_split_record",
    "compare_split_record",
]

from segbench.run_files import MARKER, PER_CASE_FILES, RUN_FILES, SPLIT_FILE, per_case_file, per_slice_file  # noqa: F401
# Left behind by an atomic write that was interrupted; ours when the file they stand for is.
_TEMPORARY = (".{}.tmp",)


class RunFolderError(ValueError):
    """The output folder is not one segbench may write into (or start over in)."""


def _read_marker(run_dir: Path) -> dict | None:
    path = run_dir / MARKER
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) and isinstance(values.get("files"), list) else None


def _write_marker(run_dir: Path, files: list[str], inputs: list[str] = ()) -> None:
    tmp = run_dir / f".{MARKER}.tmp"
    marker = {"segbench_run": 1, "files": sorted(set(files) | set(inputs)), "inputs": sorted(set(inputs))}
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.rename(tmp, run_dir / MARKER)  # atomic on POSIX, as os.replace


def _legacy_run(run_dir: Path) -> bool:
    """A run folder from before the marker: its ``last.pt`` or ``best.pt`` is a segbench checkpoint."""
    from segbench.engine.checkpoint import load_checkpoint

    for name in (LAST_FILE, BEST_FILE):
        if (run_dir / name).is_file():
            try:
                load_checkpoint(run_dir / name)
                return True
            except (OSError, ValueError):
                return False
    return False


def is_run_folder(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a segbench run (marker, or a segbench checkpoint of an older run)."""
    run_dir = Path(run_dir)
    return _read_marker(run_dir) is not None or _legacy_run(run_dir)


def claim(run_dir: str | Path, files: tuple[str, ...] | list[str] = (), inputs: tuple[str, ...] | list[str] = ()) -> None:
    """Create ``run_dir`` if needed and mark it as a segbench run that writes ``files`` (plus RUN_FILES)
    and ``inputs`` (kept when the run starts over).

    Refuses a non-empty folder that is not already a segbench run, unless it holds only ``files`` and
    ``inputs`` (a sweep's own records, written by an older segbench before the marker existed)."""
    run_dir = Path(run_dir)
    marker = _read_marker(run_dir)
    if marker is None:
        foreign = [p for p in run_dir.iterdir() if p.name not in (*files, *inputs)] if run_dir.is_dir() else []
        if foreign and not _legacy_run(run_dir):
            raise _not_ours(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        known = [p.name for p in run_dir.iterdir() if p.name in RUN_FILES or p.name.startswith("eval_")]
        marker = {"files": known}
    _write_marker(run_dir, list(marker["files"]) + list(RUN_FILES) + list(files),
                  list(marker.get("inputs", [])) + list(inputs))


def record(run_dir: str | Path, *names: str) -> None:
    """Add ``names`` to the files the run owns (e.g. ``eval_test.json`` written by ``segbench eval``)."""
    run_dir = Path(run_dir)
    marker = _read_marker(run_dir)
    if marker is not None and not set(names) <= set(marker["files"]):
        _write_marker(run_dir, list(marker["files"]) + list(names), marker.get("inputs", []))


def _not_ours(run_dir: Path) -> RunFolderError:
    entries = sorted(p.name for p in run_dir.iterdir())
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    return RunFolderError(
        f"--out {run_dir} is not empty ({shown}) and holds no segbench run (no {MARKER}); segbench deletes only "
        "files it wrote, so it will not write there: give a new or empty folder"
    )


def _delete_own_files(run_dir: Path, marker: dict) -> None:
    keep = set(marker.get("inputs", []))
    for name in marker["files"]:
        if name == MARKER or name in keep or "/" in name or name in ("", ".", ".."):
            continue
        (run_dir / name).unlink(missing_ok=True)
        for pattern in _TEMPORARY:
            (run_dir / pattern.format(name)).unlink(missing_ok=True)


def open_for_training(run_dir: str | Path, *, resume: bool, is_main: bool = True) -> bool:
    """Check that training may write into ``run_dir``; returns True when it resumes from ``last.pt``.

    - a missing or empty folder: a new run;
    - a segbench run: resumed when ``resume`` and it has ``last.pt``, else started over, deleting only the
      files its marker lists (its inputs kept);
    - anything else: RunFolderError (nothing is deleted).

    Only ``is_main`` (rank 0 under torchrun) creates or deletes anything; every process checks."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} is a file, not a folder")
    # The marker's temporary alone is a folder rank 0 is claiming this instant (a new run under torchrun):
    # another rank that checks then must not take it for someone else's files.
    claiming = f".{MARKER}.tmp"
    if run_dir.is_dir() and any(p.name != claiming for p in run_dir.iterdir()) and not is_run_folder(run_dir):
        raise _not_ours(run_dir)
    resuming = resume and (run_dir / LAST_FILE).is_file()
    if is_main:
        claim(run_dir)
        if not resuming:
            _delete_own_files(run_dir, _read_marker(run_dir) or {"files": []})
    return resuming


def write_split_record(run_dir: str | Path, record: dict | None) -> None:
    """Save which cases each split held, and the data's content hash, for ``compare_split_record``."""
    if record is not None:
        path = Path(run_dir) / SPLIT_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.rename(tmp, path)


def compare_split_record(run_dir: str | Path, record: dict | None, split: str) -> list[str]:
    """Compare the data now with what the run trained on; returns warnings, raises on what falsifies ``split``.

    Refused: other classes (a class added since training would silently be left out), or a ``split``
    holding cases other than those recorded (e.g. training images moved into val). Warned: the same
    cases with changed content (files rewritten or touched)."""
    from segbench.data import DataError

    path = Path(run_dir) / SPLIT_FILE
    if record is None or not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if saved.get("class_names") != record["class_names"]:
        raise DataError(f"the data's classes changed since {run_dir} was trained: {saved.get('class_names')} -> "
                        f"{record['class_names']}; train again on the new classes")
    before, now = set(saved["splits"].get(split, [])), set(record["splits"].get(split, []))
    if before != now:
        trained = set(saved["splits"].get("train", []))
        leaked = sorted(now & trained) if split != "train" else []
        added, removed = sorted(now - before), sorted(before - now)
        parts = [f"{len(added)} case(s) added (e.g. {', '.join(added[:3])})" if added else "",
                 f"{len(removed)} removed (e.g. {', '.join(removed[:3])})" if removed else "",
                 f"{len(leaked)} of them were training cases" if leaked else ""]
        raise DataError(f"the {split} split changed since {run_dir} was trained ({SPLIT_FILE}): "
                        + "; ".join(p for p in parts if p) + ". Evaluate on the data it was trained with, or train again")
    if saved.get("content_hash") != record["content_hash"]:
        return [f"warning: the data's files changed since {run_dir} was trained (same cases, other content hash); "
                "the figures are for the data as it is now"]
    return []
