"""`--tracker mlflow` against a real `mlflow server` started by the test on a free local port: a run logged
there reads back through the server equal to its log.jsonl, metrics.json and files; a server stopped in the
middle of a run leaves training finished with one warning, and the store holds what was logged before it
stopped. The server is in the full `mlflow` package (mlflow-skinny, the client, ships without its
dependencies): skipped without it, failed instead under SEGBENCH_REQUIRE_MLFLOW_SERVER=1 (CI installs it)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from torch.utils.data import Dataset

from segbench.engine import train
from segbench.engine.tracking import TrackingFailed
from tests.engine.test_tracking import _history, assert_run_holds_the_folder, log_events, tiny_config


def _server_missing() -> str | None:
    """What is missing for `mlflow server`, or None. The distribution `mlflow` (not only mlflow-skinny, which
    ships the `mlflow.server` module too) and Flask, which the server imports."""
    try:
        version("mlflow")
    except PackageNotFoundError:
        return "the full mlflow package"
    missing = [m for m in ("flask", "sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
    return ", ".join(missing) or None


def needs_mlflow_server() -> None:
    missing = _server_missing()
    if missing:
        reason = f"needs {missing} for `mlflow server`: pip install mlflow (or 'segbench[mlflow-server]')"
        (pytest.fail if os.environ.get("SEGBENCH_REQUIRE_MLFLOW_SERVER") == "1" else pytest.skip)(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`python -m mlflow server` on a free local port, its store a sqlite file in ``folder`` and its
    artifacts served by it (``--artifacts-destination``), in a process group of its own so that stopping it
    stops its workers too."""

    STARTUP_S = 300  # a deadline, not an expectation: it answers after ~10 s on an idle 2-core machine

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
        self.log = folder / "server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", self.store, "--artifacts-destination", str(folder / "artifacts")]
        # No background job runner (its seven worker processes serve MLflow's GenAI jobs, not tracking).
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                            start_new_session=True)
        self._wait(self._healthy, "answer /health")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _refused(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) != 0

    def _wait(self, done, what: str) -> None:
        deadline = time.monotonic() + self.STARTUP_S
        while not done():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not {what} within {self.STARTUP_S} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the server's process group; returns once nothing listens on its port."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._wait(self._refused, "stop listening")


@pytest.fixture
def mlflow_server(tmp_path):
    needs_mlflow_server()
    server = MlflowServer(tmp_path / "server")
    yield server
    server.stop()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([client.get_experiment_by_name("segbench").experiment_id])


def test_a_run_logged_to_an_mlflow_server_reads_back_through_it(tiny_env, tmp_path, mlflow_server):
    run_dir = tmp_path / "run"
    metrics = train(tiny_config("train.trackers=[mlflow]", f"train.tracking_uri={mlflow_server.uri}"), run_dir,
                    progress=False)
    client, runs = _client(mlflow_server.uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"] == {
        "tracking_uri": mlflow_server.uri, "run_id": run.info.run_id}
    assert_run_holds_the_folder(client, run, run_dir, metrics, ("loss", "lr", "images_per_s"))
    assert run.data.metrics["run/num_params"] == metrics["num_params"]
    assert run.data.tags["arch"] == "tiny" and run.data.tags["device"] == "cpu"
    # Artifacts go through the server (mlflow-artifacts:/ proxied to --artifacts-destination) and come back whole.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "metrics.json", "per_case_val.csv"}
    copy = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(copy.read_text()) == json.loads((run_dir / "metrics.json").read_text())


class StopsServerAt(Dataset):
    """A training split that stops ``server`` (and waits until its port is closed) as its ``at``-th item is
    read: the stop falls at a known point of the run, with no timing involved (the data loads in the
    training process on CPU)."""

    def __init__(self, items: Dataset, at: int, server: MlflowServer):
        self.items, self.at, self.server, self.reads = items, at, server, 0

    def set_epoch(self, epoch: int) -> None:
        self.items.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        self.reads += 1
        if self.reads == self.at:
            self.server.stop()
        return self.items[index]


def test_an_mlflow_server_stopped_mid_run_warns_once_and_training_finishes(tiny_env, tmp_path, mlflow_server, monkeypatch,
                                                                          caplog):
    # The MLflow client's retries (7, about 4 minutes) would only delay the one warning.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = tiny_config("train.trackers=[mlflow]", f"train.tracking_uri={mlflow_server.uri}")
    data = tiny_env.tiny_data()
    # Stop as iteration 3 reads its first image: the train line of iteration 2 has reached the server, the
    # next one (iteration 4) finds it gone.
    first_log = cfg.train.log_interval * cfg.train.batch_size
    stopping = StopsServerAt(data.splits["train"], first_log + 1, mlflow_server)
    data = dataclasses.replace(data, splits={**data.splits, "train": stopping})
    run_dir = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        metrics = train(cfg, run_dir, progress=False, data=data)

    assert stopping.reads > first_log + 1 and mlflow_server.process.poll() is not None  # stopped, mid-run
    failed = [w for w in caught if issubclass(w.category, TrackingFailed)]
    assert len(failed) == 1 and "tracker mlflow failed" in str(failed[0].message), [str(w.message) for w in caught]
    assert not [w for w in caught if "mlflow" in str(w.message).lower() and w not in failed]
    assert not [r for r in caplog.records if r.name.startswith(("mlflow", "urllib3"))], caplog.text
    assert metrics["iterations_run"] == 12
    assert json.loads((run_dir / "metrics.json").read_text())["iterations_run"] == 12
    assert [e["iteration"] for e in log_events(run_dir, "train")] == [2, 4, 6, 8, 10, 12]

    # The server's own store, read directly: the run holds the train line logged before the stop and no later
    # one, and was never closed (RUNNING; the close went to the stopped server).
    client, runs = _client(mlflow_server.store)
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    first = log_events(run_dir, "train")[0]
    assert _history(client, runs[0].info.run_id, "train/loss") == [(first["iteration"], first["loss"])]
    assert "val/mDice_fg" not in runs[0].data.metrics and "best/mDice_fg" not in runs[0].data.metrics
