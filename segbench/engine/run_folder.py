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
    "claim_output",
    "record",
    "open_for_training",
    "write_split_record",
    "compare_split_record",
]

from segbench.run_files import (  # noqa: F401
    CONFIG_FILE, DATA_INFO_FILE, LOG_FILE, LR_FIND_FILE, MARKER, METRICS_FILE, PER_CASE_FILES, RUN_FILES, SPLIT_FILE,
    RunFolderError, per_case_file, per_slice_file, read_marker, writable,
)  # fmt: skip
# Left behind by an atomic write that was interrupted; ours when the file they stand for is.
_TEMPORARY = (".{}.tmp",)


def _read_marker(run_dir: Path) -> dict | None:
    """A run's marker (a sweep's or predict's folder marker is not a run's)."""
    marker = read_marker(run_dir)
    return marker if marker is not None and marker.get("kind", "run") == "run" else None


def _write_marker(run_dir: Path, files: list[str], inputs: list[str] = (), kind: str = "run") -> None:
    tmp = writable(run_dir / MARKER).with_name(f".{MARKER}.tmp")
    marker = {"segbench_run": 1, "kind": kind, "files": sorted(set(files) | set(inputs)), "inputs": sorted(set(inputs))}
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
    ``inputs`` (a sweep's own records, written by an older segbench before the marker existed). A name
    is added to the marker only while no file bears it, or when it is listed already: a file of the
    user's that bears one of segbench's names (their own config.yaml) is never adopted."""
    run_dir = Path(run_dir)
    marker = _read_marker(run_dir)
    if marker is None:
        foreign = [p for p in run_dir.iterdir() if p.name not in (*files, *inputs)] if run_dir.is_dir() else []
        if foreign and not _legacy_run(run_dir):
            raise _not_ours(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = {"files": [*_proven_files(run_dir, {p.name for p in run_dir.iterdir()}), *files]}
    owned = list(marker["files"])
    owned += [name for name in (*RUN_FILES, *files) if name not in owned and not (run_dir / name).exists()]
    _write_marker(run_dir, owned, list(marker.get("inputs", [])) + list(inputs))


def _proven_files(run_dir: Path, present: set[str]) -> list[str]:
    """The files of an older run (no marker) that segbench provably wrote: its checkpoints, a config.yaml
    equal to the checkpoint's configuration, and JSON files holding the keys segbench writes."""
    from segbench.engine.checkpoint import load_checkpoint

    proven, saved = [], None
    for name in (LAST_FILE, BEST_FILE):
        if name in present:
            try:
                saved = load_checkpoint(run_dir / name)
                proven.append(name)
            except (OSError, ValueError):
                pass
    if CONFIG_FILE in present and saved is not None and _same_config(run_dir / CONFIG_FILE, saved.get("config")):
        proven.append(CONFIG_FILE)
    keys = {METRICS_FILE: "best_metric", DATA_INFO_FILE: "class_names", SPLIT_FILE: "splits", LR_FIND_FILE: "picked",
            **{f"eval_{split}.json": "per_class" for split in ("val", "test", "train")}}
    for name, key in keys.items():
        if name in present and _json_with(run_dir / name, key):
            proven.append(name)
    if LOG_FILE in present and _json_with(run_dir / LOG_FILE, "event", first_line=True):
        proven.append(LOG_FILE)
    tables = [*PER_CASE_FILES, *(f"eval_per_case_{split}.csv" for split in ("val", "test", "train"))]
    proven += [name for name in tables if name in present and _first_line(run_dir / name).startswith("case,")]
    return proven


def _first_line(path: Path) -> str:
    try:
        with open(path) as f:
            return f.readline()
    except (OSError, ValueError):
        return ""


def _same_config(path: Path, saved: dict | None) -> bool:
    from segbench.config import config_from_dict, config_to_dict, load_config

    try:
        return saved is not None and config_to_dict(load_config(path)) == config_to_dict(config_from_dict(saved))
    except Exception:  # noqa: BLE001 - any file that is not the checkpoint's configuration is the user's
        return False


def _json_with(path: Path, key: str, first_line: bool = False) -> bool:
    try:
        text = path.read_text()
        values = json.loads(text.splitlines()[0] if first_line else text)
    except (OSError, ValueError, IndexError):
        return False
    return isinstance(values, dict) and key in values


def record(run_dir: str | Path, *names: str) -> None:
    """Add ``names`` to the files the folder's marker lists (e.g. ``eval_test.json`` written by ``segbench
    eval``), before they are written; a name that is a file the marker does not list is refused."""
    run_dir = Path(run_dir)
    marker = read_marker(run_dir)
    if marker is not None and not set(names) <= set(marker["files"]):
        for name in names:
            writable(run_dir / name)
        _write_marker(run_dir, list(marker["files"]) + list(names), marker.get("inputs", []),
                      marker.get("kind", "run"))


def claim_output(folder: str | Path, kind: str, files: tuple[str, ...] = (),
                 legacy: tuple[str, ...] | None = None) -> None:
    """Mark ``folder`` as the output of ``kind`` ("predict", "sweep"), which writes ``files`` (an entry
    ending in "/" is a whole subfolder) and the names it records before writing them.

    Without a marker: ``legacy`` None adopts nothing (an existing file is then refused when the command
    would write it: predict into a folder of other files); else the folder must be empty, or hold only
    names in ``legacy`` and at least one segbench run folder (a sweep from before the marker)."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None and legacy is not None and folder.is_dir():
        entries = list(folder.iterdir())
        runs = [p for p in entries if p.is_dir() and is_run_folder(p)]
        foreign = [p for p in entries if p not in runs and p.name.rstrip("/") not in legacy]
        if entries and (foreign or not runs):
            raise _not_ours(folder, kind)
    if marker is not None and set(files) <= set(marker["files"]):
        return
    folder.mkdir(parents=True, exist_ok=True)
    listed = list(marker["files"]) if marker else []
    _write_marker(folder, listed + list(files), marker.get("inputs", []) if marker else [],
                  marker.get("kind", kind) if marker else kind)


def _not_ours(run_dir: Path, what: str = "run") -> RunFolderError:
    entries = sorted(p.name for p in run_dir.iterdir())
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    return RunFolderError(
        f"--out {run_dir} is not empty ({shown}) and holds no segbench {what} (no {MARKER}); segbench deletes only "
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
        # Before anything is deleted: every file training will write must be the run's own.
        for name in RUN_FILES:
            writable(run_dir / name)
        if not resuming:
            _delete_own_files(run_dir, _read_marker(run_dir) or {"files": []})
    return resuming


def write_split_record(run_dir: str | Path, record: dict | None) -> None:
    """Save which cases each split held, and the data's content hash, for ``compare_split_record``."""
    if record is not None:
        path = writable(Path(run_dir) / SPLIT_FILE)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.rename(tmp, path)


def compare_split_record(run_dir: str | Path, record: dict | None, split: str) -> list[str]:
    """Compare the data now with what the run trained on; returns warnings, raises on what falsifies ``split``.

    Refused: other classes (a class added since training would silently be left out), or a ``split``
    holding cases other than those recorded (e.g. training images moved into val). Warned, saying what
    changed: cases added to or removed from another split, or the same cases with changed content."""
    from segbench.data import DataError

    path = Path(run_dir) / SPLIT_FILE
    if record is None or not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
        saved["splits"].items()
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is damaged ({type(err).__name__}: {err}), so whether the data changed since "
                        f"{run_dir} was trained cannot be checked; delete it to evaluate without that check") from None
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
        return [f"warning: {_what_changed(saved, record, split, run_dir)}; the figures are for the data as it is now"]
    return []


def _what_changed(saved: dict, record: dict, split: str, run_dir: str | Path) -> str:
    """What changed when ``split`` holds the cases it held: cases added to or removed from another split,
    or only the files' contents (the content hash covers every file of every split)."""
    changes = []
    for name in sorted(set(saved["splits"]) | set(record["splits"])):
        before, now = set(saved["splits"].get(name, [])), set(record["splits"].get(name, []))
        added, removed = sorted(now - before), sorted(before - now)
        if added:
            changes.append(f"{len(added)} case(s) added to {name} (e.g. {', '.join(added[:3])})")
        if removed:
            changes.append(f"{len(removed)} case(s) removed from {name} (e.g. {', '.join(removed[:3])})")
    if changes:
        return (f"the data changed since {run_dir} was trained: " + "; ".join(changes)
                + f" ({SPLIT_FILE}); the {split} split holds the cases it held")
    return (f"the data's files changed since {run_dir} was trained (every split holds the cases it held; files were "
            "rewritten or touched: another content hash)")
