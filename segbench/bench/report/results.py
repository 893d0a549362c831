"""The results table: one flat row per (architecture, seed), the columns the review compares, the
per-architecture aggregate over seeds (mean and sample standard deviation; costs: median and range), and
the CSV/JSON files.

Rows are flat dicts of str/int/float/None so that ``results.csv`` and ``results.json`` hold exactly
the same values (the tests check it). Per-class scores are columns ``val_dice_<class>``,
``val_iou_<class>`` (and ``test_...`` when the data has a test split).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

from segbench.bench.protocol.record import RunRecord
from segbench.bench.report.columns import COLUMNS
from segbench.run_files import writable


__all__ = [
    "aggregate",
    "pareto_front",
    "write_results",
    "read_results_csv",
    "format_value",
]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def aggregate(rows: Iterable[dict], keys: Iterable[str], medians: Iterable[str] | None = None,
              extra: dict[str, dict] | None = None) -> list[dict]:
    """One row per architecture (in first-seen order): ``<key>`` the mean over its successful runs,
    ``<key>_std`` the sample standard deviation (0 with one run), ``runs`` how many succeeded (seeds x
    folds), ``seeds`` and ``folds`` how many distinct ones among them, ``failed_runs`` how many failed and
    ``error`` the first failure's message when none succeeded. Keys in ``medians``
    (default: those of the columns aggregated ``over_runs="median"``) get the median instead, with
    ``<key>_min`` and ``<key>_max`` and no std. ``extra``: per architecture, figures of the architecture as a
    whole (the statistics' intervals, its devices), added to its row as they are."""
    keys = list(keys)
    medians = {k for c in COLUMNS if c.over_runs == "median" for k in c.keys} if medians is None else set(medians)
    noisy = [c.noisy for c in COLUMNS if c.noisy and c.key in keys]  # marked when any run's figure stayed noisy
    by_arch: dict[str, list[dict]] = {}
    for row in rows:
        by_arch.setdefault(row["arch"], []).append(row)
    table = []
    for arch, group in by_arch.items():
        ok = [r for r in group if r.get("status") == "ok"]
        failed = [r for r in group if r.get("status") != "ok"]
        first = (ok or group)[0]
        out = {k: v for k, v in first.items() if not _is_number(v) or k in ("seed", "fold")}
        out.pop("seed", None)
        out.pop("fold", None)
        out.update(arch=arch, runs=len(ok), seeds=len({r.get("seed") for r in ok}),
                   folds=len({r.get("fold") for r in ok} - {None}), failed_runs=len(failed))
        out["error"] = failed[0].get("error", "") if failed and not ok else ""
        out.update({flag: any(bool(r.get(flag)) for r in ok) for flag in noisy if any(flag in r for r in ok)})
        for key in keys:
            values = [float(r[key]) for r in ok if _is_number(r.get(key)) or isinstance(r.get(key), bool)]
            if key in medians:
                out[key] = statistics.median(values) if values else None
                out[f"{key}_min"], out[f"{key}_max"] = (min(values), max(values)) if values else (None, None)
                out[f"{key}_std"] = None
                continue
            out[key] = statistics.fmean(values) if values else None
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        out.update((extra or {}).get(arch, {}))
        table.append(out)
    return table


def pareto_front(costs: list[float], scores: list[float]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal score with
    one of them strict. Sorted by cost (then score), which is the order to draw the front in.
    ``None``/NaN points are ignored."""
    valid = [i for i in range(len(costs)) if _is_number(costs[i]) and _is_number(scores[i])]
    front = []
    for i in valid:
        dominated = any(
            costs[j] <= costs[i] and scores[j] >= scores[i] and (costs[j] < costs[i] or scores[j] > scores[i])
            for j in valid
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -scores[i]))


# --- files ---------------------------------------------------------------------------------------


def _fieldnames(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    return names


def write_results(rows: list[dict], out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.json`` (same rows, same columns) into ``out_dir``: ``results`` one
    row per run, ``summary`` one per architecture (the table, with its intervals and p-values). Missing
    values (None, NaN, inf, empty strings) are empty cells in the CSV and ``null`` in the JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _fieldnames(rows)
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (dict, list, tuple)):
                raise TypeError(f"results rows must be flat; {key!r} holds a {type(value).__name__}")
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    with open(writable(csv_path), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else _csv_value(row.get(k))) for k in names})
    with open(writable(json_path), "w") as f:
        json.dump([{k: _json_value(row.get(k)) for k in names} for row in rows], f, indent=1)
    return csv_path, json_path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""  # repr round-trips exactly; JSON has no inf
    return value


def _json_value(value: Any) -> Any:
    # Missing in both files: a CSV cannot tell an empty string from no value.
    if (isinstance(value, float) and not math.isfinite(value)) or value == "":
        return None
    return value


def _parse(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if math.isfinite(number):
            return number
    if text in ("True", "False"):
        return text == "True"
    return text


# A run's text identity stays text when it reads as a number: a config hash of ten decimal digits.
_TEXT_COLUMNS = frozenset(f.name for f in fields(RunRecord) if f.type in ("str", str))


def read_results_csv(path: str | Path) -> list[dict]:
    """Rows of a ``results.csv`` with numbers parsed back (empty cells are ``None``; ``RunRecord``'s text
    fields stay text)."""
    with open(path, newline="") as f:
        return [{k: (v or None) if k in _TEXT_COLUMNS else _parse(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def format_value(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, thousands separators for big ones, '–' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"
