"""Experiment tracking: what a training run already records, handed to TensorBoard and MLflow as it happens.

One seam, ``Tracker`` (``log_params``, ``log_metrics``, ``log_artifact``, ``close``), fed by the numbers
the run writes anyway: the resolved configuration, every ``train`` and ``val`` line of ``log.jsonl``
(``RunLog`` forwards each record as it writes it, ``record_metrics``), and ``metrics.json`` at the end
(``final_metrics``). No figure is computed for a tracker, so a tracker and the run folder never disagree.
Without trackers the seam is ``NullTracker``: no tracking package is imported and nothing is written.

- ``open_trackers``: the run's trackers (the engine opens them on rank 0 only). A resumed run continues
  its tracker runs: the MLflow run whose id ``RUN/tracking.json`` stores, and TensorBoard's event files
  with the steps after the checkpoint purged, so no step is logged twice;
- a tracker that fails (a server down, a full disk) warns once (``TrackingFailed``) and is dropped:
  tracking never stops training;
- a tracker whose package is missing is ``TrackerMissing``, whose one line names the pip command.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import socket
import subprocess
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from segbench.run_files import TRACKING_FILE, writable

if TYPE_CHECKING:
    from segbench.config import Config

__all__ = ["TRACKERS", "Tracker", "NullTracker", "TrackingContext", "TrackerMissing", "TrackingFailed", "check_available",
           "open_trackers", "record_metrics", "final_metrics", "flatten", "config_params", "run_tags", "default_tracking_uri"]

TRACKERS = ("tensorboard", "mlflow")
# The modules each tracker needs (the sqlite store also needs sqlalchemy and alembic, which the extra installs).
_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow",)}
_SQL_MODULES = ("sqlalchemy", "alembic")


class TrackerMissing(RuntimeError):
    """A tracker was asked for whose package is not installed."""


class TrackingFailed(UserWarning):
    """A tracker failed during a run; the run went on without it."""


class Tracker(Protocol):
    """Where a run's numbers go besides its run folder."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's settings (the resolved configuration, flattened to dotted keys)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Figures at iteration ``step`` (keys like ``train/loss``, ``val/mDice_fg``)."""

    def log_artifact(self, path: Path) -> None:
        """A file of the run folder (config.yaml, metrics.json, ...)."""

    def close(self, finished: bool = True) -> None:
        """The run ended (``finished``) or stopped (an error, a kill that Python saw)."""


class NullTracker:
    """No tracking: every call does nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def close(self, finished: bool = True) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class TrackingContext:
    """What a caller adds to a run's tracker run: its MLflow parent (the run of a review) and tags."""

    parent_run_id: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"parent_run_id": self.parent_run_id, "tags": dict(self.tags)}

    @classmethod
    def from_dict(cls, values: Mapping | None) -> TrackingContext:
        values = values or {}
        return cls(values.get("parent_run_id"), dict(values.get("tags") or {}))


def default_tracking_uri(folder: str | Path) -> str:
    """MLflow's store when none is given: ``sqlite:///FOLDER/mlflow.db`` (the run folder, or a review's OUT)."""
    return f"sqlite:///{(Path(folder).resolve() / 'mlflow.db').as_posix()}"


def check_available(names: tuple[str, ...] | list[str], tracking_uri: str | None = None) -> None:
    """``TrackerMissing`` (one line, the pip command) unless every tracker in ``names`` can be imported."""
    for name in names:
        if name not in TRACKERS:
            raise TrackerMissing(f"unknown tracker {name!r}; valid: none, {', '.join(TRACKERS)}")
        needed = _MODULES[name] + (_SQL_MODULES if name == "mlflow" and (tracking_uri or "sqlite:").startswith("sqlite:") else ())
        missing = [module for module in needed if importlib.util.find_spec(module) is None]
        if missing:
            raise TrackerMissing(f"--tracker {name} needs {', '.join(missing)}: pip install 'segbench[{name}]'")


_KEY_CHARACTERS = re.compile(r"[^0-9A-Za-z_\-. :/]")  # what MLflow accepts in a metric or parameter name


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists and None are left out, names kept to MLflow's characters."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{_KEY_CHARACTERS.sub('_', str(key))}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        elif value is not None and not isinstance(value, (list, tuple)):
            out[name] = value
    return out


def config_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A configuration (``config_to_dict``) as tracker parameters: ``{"train.lr": "0.01", "train.betas": "[0.9, 0.999]"}``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{_KEY_CHARACTERS.sub('_', str(key))}"
        if isinstance(value, Mapping) and value:
            out.update(config_params(value, f"{name}."))
        else:
            out[name] = str(list(value) if isinstance(value, tuple) else value)
    return out


def run_tags(cfg: Config, **resolved: Any) -> dict[str, str]:
    """What ran where: architecture, seed, fold, host, segbench version, git commit (when run from a
    checkout), and the settings the run ``resolved`` (recipe, device, precision, world size)."""
    tags = {"arch": cfg.model.arch, "seed": cfg.train.seed, **resolved, "host": socket.gethostname(),
            "segbench_version": _version()}
    if cfg.data.folds:
        tags["fold"] = cfg.data.fold
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {key: str(value) for key, value in tags.items()}


def _version() -> str:
    try:
        return version("segbench")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def _git_commit() -> str | None:
    """The commit of the segbench checkout this runs from, when it is one."""
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a flattened record (no flags, no text, no undefined figure)."""
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def record_metrics(record: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
    """A ``log.jsonl`` record as (step, metrics): ``train`` lines as ``train/...``, ``val`` lines as
    ``val/...`` (per class too: ``val/per_class/IoU/<class>``); None for the other events."""
    event = record.get("event")
    if event not in ("train", "val"):
        return None
    figures = {key: value for key, value in record.items() if key not in ("event", "iteration")}
    return int(record["iteration"]), _numbers(flatten(figures, f"{event}/"))


# Parts of metrics.json logged at the end: the best checkpoint's validation and test figures, and the run's costs.
_RUN_FIGURES = ("best_value", "best_iteration", "iterations_run", "num_params", "train_time_s", "train_images_per_s",
                "data_time_s", "val_time_s", "val_metrics_time_s")


def final_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``metrics.json`` as tracker metrics: ``best/...`` (``val``, the best checkpoint), ``test/...``, ``run/...``."""
    values = {"best": result.get("val") or {}, "test": result.get("test") or {},
              "run": {key: result.get(key) for key in _RUN_FIGURES}}
    return _numbers(flatten(values))


class _Guarded:
    """A tracker whose first failure is a warning, after which it is dropped."""

    def __init__(self, name: str, tracker: Tracker | None):
        self.name, self.tracker = name, tracker

    def call(self, method: str, *args) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as err:  # noqa: BLE001 - a tracker never stops training
            self.fail(err)

    def fail(self, err: BaseException) -> None:
        warnings.warn(TrackingFailed(f"tracker {self.name} failed ({type(err).__name__}: {str(err)[:300]}); "
                                     "the run goes on without it"), stacklevel=3)
        self.tracker = None


class Trackers:
    """Every tracker of a run behind one ``Tracker``; each one's failure is its own (``_Guarded``)."""

    def __init__(self, guarded: list[_Guarded]):
        self.guarded = guarded

    @property
    def active(self) -> list[str]:
        return [g.name for g in self.guarded if g.tracker is not None]

    def log_params(self, params: Mapping[str, Any]) -> None:
        for g in self.guarded:
            g.call("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if metrics:
            for g in self.guarded:
                g.call("log_metrics", metrics, step)

    def log_artifact(self, path: Path) -> None:
        for g in self.guarded:
            g.call("log_artifact", path)

    def close(self, finished: bool = True) -> None:
        for g in self.guarded:
            g.call("close", finished)
            g.tracker = None


def _stored(run_dir: Path) -> dict:
    try:
        values = json.loads((run_dir / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def open_trackers(names: tuple[str, ...] | list[str], run_dir: Path, *, resumed_from: int | None,
                  tracking_uri: str | None, context: TrackingContext | None = None,
                  tags: Mapping[str, str] | None = None) -> Tracker:
    """The trackers ``names`` for the run in ``run_dir``, starting at iteration ``resumed_from`` (None: a
    new run). ``tracking_uri``: MLflow's store (None: ``default_tracking_uri(run_dir)``). A tracker that
    cannot open (a server down) warns and is left out."""
    if not names:
        return NullTracker()
    check_available(names, tracking_uri)
    context = context or TrackingContext()
    stored = _stored(run_dir) if resumed_from is not None else {}
    guarded = []
    for name in dict.fromkeys(names):
        slot = _Guarded(name, None)
        try:
            if name == "tensorboard":
                from segbench.engine.tracking.tensorboard_run import TensorBoardTracker

                slot.tracker = TensorBoardTracker(run_dir / "tensorboard", start_step=resumed_from or 0)
            else:
                from segbench.engine.tracking.mlflow_run import MLflowTracker

                uri = tracking_uri or default_tracking_uri(run_dir)
                previous = stored.get("mlflow") or {}
                path = writable(run_dir / TRACKING_FILE)  # checked before a run is created that it would not name
                slot.tracker = MLflowTracker.open(
                    uri, run_id=previous.get("run_id") if previous.get("tracking_uri") == uri else None,
                    run_name=run_dir.name, parent_run_id=context.parent_run_id, tags={**(tags or {}), **context.tags})
                stored["mlflow"] = {"tracking_uri": uri, "run_id": slot.tracker.run_id}
                path.write_text(json.dumps(stored, indent=1) + "\n")
        except Exception as err:  # noqa: BLE001 - a tracker never stops training
            slot.fail(err)
        guarded.append(slot)
    return Trackers(guarded)
