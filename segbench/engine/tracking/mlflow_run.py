"""The MLflow tracker: one MLflow run per segbench run, in experiment ``segbench`` of the tracking URI.

Parameters are the resolved configuration (dotted keys), metrics carry their iteration as step, tags say
what ran where (architecture, seed, fold, device, precision, host, segbench version, git commit), and the
run folder's config.yaml, metrics.json and per_case_val.csv become artifacts. A review is a parent run
(``open_parent``) whose children are its runs (``mlflow.parentRunId``).

A resumed run reopens the MLflow run whose id its folder stores and never logs a (metric, step) twice:
the steps an interrupted session logged after its checkpoint are skipped when the resumed one reaches them
(a CPU run logs the same values again; see ``segbench.engine.train``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MLflowTracker", "EXPERIMENT", "open_parent", "client_for"]

EXPERIMENT = "segbench"
# MLflow's limits per log_batch call.
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000


def client_for(tracking_uri: str):
    """An ``MlflowClient`` on ``tracking_uri``, and the id of experiment ``segbench`` there (created
    with its artifacts next to a sqlite file, not in the working directory, which MLflow's default is)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return client, found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client, client.create_experiment(EXPERIMENT, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process created it first (runs of a review side by side)
        found = client.get_experiment_by_name(EXPERIMENT)
        if found is None:
            raise
        return client, found.experiment_id


def open_parent(tracking_uri: str, run_id: str | None, name: str, params: Mapping[str, Any],
                tags: Mapping[str, str]) -> str:
    """The MLflow run of a review: ``run_id`` reopened when it exists there, else a new one; its id."""
    tracker = MLflowTracker.open(tracking_uri, run_id=run_id, run_name=name, parent_run_id=None, tags=tags)
    tracker.log_params(params)
    return tracker.run_id


class MLflowTracker:
    """``MlflowClient`` calls for one run, behind the ``Tracker`` seam."""

    def __init__(self, client, run_id: str, logged_params: Mapping[str, str], logged_steps: dict[str, int]):
        self.client, self.run_id = client, run_id
        self.logged_params = dict(logged_params)
        self.logged_steps = logged_steps  # metric -> the last step already in MLflow (resumed runs)

    @classmethod
    def open(cls, tracking_uri: str, *, run_id: str | None, run_name: str, parent_run_id: str | None,
             tags: Mapping[str, str]) -> MLflowTracker:
        client, experiment_id = client_for(tracking_uri)
        run = _existing(client, run_id)
        if run is not None:
            client.update_run(run.info.run_id, status="RUNNING")
            steps = {key: max(m.step for m in client.get_metric_history(run.info.run_id, key))
                     for key in run.data.metrics}
            return cls(client, run.info.run_id, run.data.params, steps)
        tags = {key: str(value) for key, value in tags.items()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return cls(client, run.info.run_id, {}, {})

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # A parameter is set once in MLflow: a resumed run adds only those it lacks.
        new = [Param(key, str(value)) for key, value in params.items() if key not in self.logged_params]
        for start in range(0, len(new), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[start:start + _PARAMS_PER_BATCH])
        self.logged_params.update({p.key: p.value for p in new})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        new = [Metric(key, value, stamp, step) for key, value in metrics.items()
               if step > self.logged_steps.get(key, -1)]
        for start in range(0, len(new), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=new[start:start + _METRICS_PER_BATCH])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, finished: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "FAILED")


def _existing(client, run_id: str | None):
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None  # another store, or deleted: a new run
