"""Experiment tracking with the real libraries (no mocks): what a tiny run logs to TensorBoard and MLflow reads
back equal to its own log.jsonl and metrics.json; a killed and resumed run is one tracker run without a step
twice; a tracker that cannot reach its server warns once and training finishes; a missing package is one line."""

import json
import math
import sys
import warnings

import pytest
from click.testing import CliRunner

from segbench.config import load_config
from segbench.engine import train
from segbench.engine.tracking import TrackingFailed, check_available, config_params
from segbench.config import config_to_dict

TINY = ["model.arch=tiny", "train.iterations=12", "train.batch_size=4", "train.val_interval=4",
        "train.checkpoint_interval=3", "train.log_interval=2", "train.device=cpu", "eval.hd95=false"]


def tiny_config(*extra):
    return load_config(None, TINY + list(extra))


def log_events(run_dir, event):
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [line for line in lines if line["event"] == event]


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_series(logged, expected):
    """TensorBoard keeps scalars as float32: the same steps, values equal to float32 precision."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_tensorboard_holds_the_logged_scalars_at_their_steps(tiny_env, tmp_path):
    pytest.importorskip("tensorboard")
    metrics = train(tiny_config("train.trackers=[tensorboard]"), tmp_path, progress=False)
    logged = scalars(tmp_path / "tensorboard")
    for key in ("loss", "lr", "images_per_s", "data_time_share"):
        expected = [(e["iteration"], e[key]) for e in log_events(tmp_path, "train")]
        assert [step for step, _ in expected] == list(range(2, 13, 2))
        assert_series(logged[f"train/{key}"], expected)
    vals = log_events(tmp_path, "val")
    assert_series(logged["val/mDice_fg"], [(e["iteration"], e["mDice_fg"]) for e in vals])
    name = next(iter(vals[-1]["per_class"]["IoU"]))
    assert_series(logged[f"val/per_class/IoU/{name}"], [(e["iteration"], e["per_class"]["IoU"][name]) for e in vals])
    assert_series(logged["best/mDice_fg"], [(12, metrics["val"]["mDice_fg"])])


def test_tensorboard_of_a_killed_and_resumed_run_holds_each_step_once(tiny_env, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config("train.trackers=[tensorboard]")
    tiny_env.TinySegmentation.kill_after = tiny_env.TinySegmentation.calls + 54  # in iteration 11 (see below)
    with pytest.raises(tiny_env.SimulatedKill):
        train(cfg, tmp_path, progress=False)
    tiny_env.TinySegmentation.kill_after = None
    train(cfg, tmp_path, progress=False)
    logged = scalars(tmp_path / "tensorboard")
    assert_series(logged["train/loss"], [(e["iteration"], e["loss"]) for e in log_events(tmp_path, "train")])
    assert [step for step, _ in logged["val/mDice_fg"]] == [4, 8, 12]


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("segbench")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def assert_run_holds_the_folder(client, run, run_dir, metrics, train_keys=("loss", "lr")):
    """The MLflow run holds what the run folder holds: the train/* and val/mDice_fg histories of log.jsonl, the
    best/ and run/ figures of metrics.json, the params of config.yaml."""
    for key in train_keys:
        assert _history(client, run.info.run_id, f"train/{key}") == [
            (e["iteration"], e[key]) for e in log_events(run_dir, "train")]
    assert _history(client, run.info.run_id, "val/mDice_fg") == [
        (e["iteration"], e["mDice_fg"]) for e in log_events(run_dir, "val")]
    assert run.data.metrics["best/mDice_fg"] == metrics["val"]["mDice_fg"]
    assert run.data.metrics["run/best_iteration"] == metrics["best_iteration"]
    assert run.data.params == config_params(config_to_dict(load_config(run_dir / "config.yaml")))


def test_mlflow_run_killed_and_resumed_is_one_run_with_each_step_once(tiny_env, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    cfg = tiny_config("train.trackers=[mlflow]", "train.track_checkpoint=true")
    # 4 item loads per iteration, 6 per validation (at 4 and 8): the 54th is inside iteration 11, after the
    # log line of iteration 10 and before the next checkpoint (12), so the resumed run (from 9) reaches a
    # step MLflow already holds.
    tiny_env.TinySegmentation.kill_after = tiny_env.TinySegmentation.calls + 54
    with pytest.raises(tiny_env.SimulatedKill):
        train(cfg, tmp_path, progress=False)
    from segbench.engine.checkpoint import load_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, runs = _runs(uri)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 9
    assert _history(client, runs[0].info.run_id, "train/loss")[-1][0] == 10 and runs[0].info.status == "FAILED"
    tiny_env.TinySegmentation.kill_after = None
    metrics = train(cfg, tmp_path, progress=False)

    client, runs = _runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert json.loads((tmp_path / "tracking.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    assert_run_holds_the_folder(client, run, tmp_path, metrics)
    assert run.data.tags["arch"] == "tiny" and run.data.tags["seed"] == "0" and run.data.tags["device"] == "cpu"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "per_case_val.csv", "best.pt"} <= artifacts


def test_an_unreachable_mlflow_server_warns_once_and_training_finishes(tiny_env, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as s:  # a local port nothing listens on: the server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = tiny_config("train.trackers=[mlflow,tensorboard]", f"train.tracking_uri=http://127.0.0.1:{port}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg, tmp_path, progress=False)
    failed = [w for w in caught if issubclass(w.category, TrackingFailed)]
    assert len(failed) == 1 and "tracker mlflow failed" in str(failed[0].message)
    assert metrics["iterations_run"] == 12 and (tmp_path / "metrics.json").is_file()
    if "tensorboard" in sys.modules or _importable("tensorboard"):
        assert scalars(tmp_path / "tensorboard")["best/mDice_fg"][0][1] == pytest.approx(metrics["val"]["mDice_fg"])


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tiny_env, tmp_path, monkeypatch):
    from segbench.cli import main

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    result = CliRunner().invoke(main, ["train", "--arch", "tiny", "--out", str(tmp_path / "run"), "--quiet",
                                       "--tracker", "tensorboard", "--set", "train.device=cpu"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: --tracker tensorboard needs tensorboard: pip install 'segbench[tensorboard]'")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_trackers_change_no_result_a_run_resumes_with_others(tiny_env, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config("train.iterations=8")
    train(cfg, tmp_path, progress=False)
    longer = tiny_config("train.iterations=8", "train.trackers=[tensorboard]")
    assert train(longer, tmp_path, progress=False)["iterations_run"] == 8  # resumed (finished): no ConfigMismatch


def test_review_refuses_a_missing_tracker_in_one_line_before_any_run(tmp_path, monkeypatch):
    from segbench.commands.run import run

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    result = CliRunner().invoke(run, ["--archs", "unet", "--out", str(tmp_path / "out"), "--tracker", "mlflow"])
    assert result.exit_code == 1 and not (tmp_path / "out").exists()
    line = result.output.strip().splitlines()[-1]  # sqlalchemy and alembic too where they are missing as well
    assert line.startswith("Error: --tracker mlflow needs mlflow") and line.endswith(": pip install 'segbench[mlflow]'")
    result = CliRunner().invoke(run, ["--archs", "unet", "--out", str(tmp_path / "out"), "--tracking-uri", "sqlite:///x.db"])
    assert result.exit_code == 2 and "--tracking-uri only with --tracker mlflow" in result.output


def test_data_parallel_ranks_log_once_from_rank_0(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from tests.engine.test_distributed import _train_two_ranks

    rank0, _ = _train_two_ranks(tmp_path, "train.trackers=[tensorboard,mlflow]")
    run_dir = tmp_path / "run"
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer: rank 0
    logged = scalars(run_dir / "tensorboard")
    assert_series(logged["train/loss"], [(e["iteration"], e["loss"]) for e in log_events(run_dir, "train")])
    client, runs = _runs(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    assert runs[0].data.metrics["best/mDice_fg"] == rank0["metrics"]["val"]["mDice_fg"]
