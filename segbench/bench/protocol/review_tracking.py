"""A review in the trackers (``segbench run --tracker``): every run logs as ``segbench train`` does, into
the review's store, and with MLflow the review is a parent run whose children are its runs.

The trackers reach the runs as ``train.trackers`` and ``train.tracking_uri`` in their configurations,
which ``config_hash`` leaves out (they change no result: turning tracking on reuses finished runs). The
parent's id is kept in ``OUT/tracking.json``, so the same command run again (to finish an interrupted
review) continues the same parent run; the report's files become its artifacts once it is written. As
for a run, a tracker that fails warns once and never stops the review.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from segbench.engine.tracking import TrackingContext, TrackingFailed, check_available, default_tracking_uri
from segbench.run_files import TRACKING_FILE, writable

__all__ = ["ReviewTracking", "tracking_overrides", "open_review_tracking"]


def tracking_overrides(trackers: tuple[str, ...], tracking_uri: str | None, out: str | Path) -> list[str]:
    """The ``--set`` overrides that give every run of the review its trackers (and MLflow store: by default
    ``OUT/mlflow.db``, one store for the whole review); checks first that every tracker's package is there."""
    if not trackers:
        return []
    uri = tracking_uri or (default_tracking_uri(out) if "mlflow" in trackers else None)
    check_available(trackers, uri)
    return [f"train.trackers=[{','.join(trackers)}]"] + ([f"train.tracking_uri={json.dumps(uri)}"] if uri else [])


@dataclass
class ReviewTracking:
    """The review's MLflow parent run (``parent_run_id`` None: no MLflow, or it failed)."""

    tracking_uri: str | None = None
    parent_run_id: str | None = None
    profile: str = ""

    @property
    def context(self) -> TrackingContext:
        """What each run adds to its own tracker run: this parent, and the review's profile as a tag."""
        return TrackingContext(self.parent_run_id, {"profile": self.profile})

    def finish(self, report_dir: Path) -> None:
        """The report's files as the parent's artifacts (``report/``); the parent run ended."""
        if self.parent_run_id is None:
            return
        try:
            from segbench.engine.tracking.mlflow_run import client_for

            client, _ = client_for(self.tracking_uri)
            client.log_artifacts(self.parent_run_id, str(report_dir), artifact_path="report")
            client.set_terminated(self.parent_run_id, "FINISHED")
        except Exception as err:  # noqa: BLE001 - the report is written; tracking never fails the review
            _warn(err)


def _warn(err: BaseException) -> None:
    warnings.warn(TrackingFailed(f"tracker mlflow failed for the review's parent run ({type(err).__name__}: "
                                 f"{str(err)[:300]}); the runs log without a parent"), stacklevel=3)


def open_review_tracking(out: str | Path, trackers: tuple[str, ...], tracking_uri: str | None, profile: str,
                         params: Mapping[str, Any]) -> ReviewTracking:
    """The review's parent run (MLflow only): the one ``OUT/tracking.json`` names when it is in the same store,
    else a new one named after OUT. ``params``: the command's settings (profile, architectures, seeds, ...)."""
    if "mlflow" not in trackers:
        return ReviewTracking(profile=profile)
    out = Path(out)
    uri = tracking_uri or default_tracking_uri(out)
    stored = {}
    if (out / TRACKING_FILE).is_file():
        try:
            stored = json.loads((out / TRACKING_FILE).read_text()).get("mlflow") or {}
        except (OSError, ValueError, AttributeError):
            stored = {}
    try:
        from segbench.engine.tracking.mlflow_run import open_parent

        parent = open_parent(uri, stored.get("run_id") if stored.get("tracking_uri") == uri else None,
                             name=f"review {out.resolve().name}", params={k: str(v) for k, v in params.items()},
                             tags={"segbench.kind": "review", "profile": profile})
    except Exception as err:  # noqa: BLE001 - a tracker never stops the review
        _warn(err)
        return ReviewTracking(uri, None, profile)
    writable(out / TRACKING_FILE).write_text(json.dumps({"mlflow": {"tracking_uri": uri, "run_id": parent}}, indent=1) + "\n")
    return ReviewTracking(uri, parent, profile)
