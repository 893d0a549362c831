"""`segbench run --tracker mlflow,tensorboard` with the real libraries: the review is one MLflow parent run
with one child per run, each child's metrics equal to the run's metrics.json (bench.json), the report its
artifacts; every run's TensorBoard events hold its validations; the same command again adds no MLflow run."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from segbench.bench.protocol.record import WorkerResult
from segbench.commands.run import run
from tests.bench.test_run import write_synthetic_data



def test_trackers_leave_the_run_folders_and_hashes_as_they_were():
    from segbench.bench.protocol.profiles import get_profile
    from segbench.bench.protocol.sweep import plan_sweep

    plain = plan_sweep(data="brain-mri", profile=get_profile("quick"), out="review", archs=["unet", "segformer"])
    tracked = plan_sweep(data="brain-mri", profile=get_profile("quick"), out="review", archs=["unet", "segformer"],
                         overrides=["train.trackers=[mlflow,tensorboard]", 'train.tracking_uri="http://127.0.0.1:5000"'])
    assert [r.run_dir for r in tracked] == [r.run_dir for r in plain]  # finished runs are reused
    assert tracked[0].config.train.trackers == ("mlflow", "tensorboard")


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    for package in ("mlflow", "sqlalchemy", "tensorboard"):
        pytest.importorskip(package)
    root = tmp_path_factory.mktemp("tracked")
    data, out = write_synthetic_data(root / "data"), root / "out"
    args = [str(data), "--archs", "unet", "--seeds", "2", "--iterations", "8", "--out", str(out), "--no-speed",
            "--no-progress", "--lr", "paper", "--set", "data.resize=[32,32]", "--tracker", "mlflow", "--tracker", "tensorboard"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGBENCH_HOME", str(root / "home"))
        first = CliRunner().invoke(run, args, catch_exceptions=False)
        again = CliRunner().invoke(run, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0 and "2 reused" in again.output, again.output
    return out


def _client(out: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name("segbench").experiment_id])


def test_one_parent_and_one_child_per_run_with_the_runs_figures(review):
    client, runs = _client(review)
    parents = [r for r in runs if r.data.tags.get("segbench.kind") == "review"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2  # the second invocation reused both runs and the parent
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["profile"] == "quick"
    run_dirs = sorted(p for p in review.iterdir() if (p / "bench.json").is_file())
    assert sorted(r.info.run_name for r in children) == [p.name for p in run_dirs]
    for child in children:
        run_dir = review / child.info.run_name
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert WorkerResult.read(run_dir).metrics == metrics
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.data.tags["profile"] == "quick" and child.data.tags["arch"] == "unet"
        assert child.data.tags["seed"] == str(metrics_seed(run_dir))
        assert child.data.metrics["best/dice_fg_per_case"] == metrics["val"]["dice_fg_per_case"]
        assert child.data.metrics["test/dice_fg_per_case"] == metrics["test"]["dice_fg_per_case"]
        assert child.data.metrics["run/train_images_per_s"] == metrics["train_images_per_s"]
        assert child.data.params["train.iterations"] == str(metrics["iterations"])
        history = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val/dice_fg_per_case")]
        logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        assert sorted(history) == [(e["iteration"], e["dice_fg_per_case"]) for e in logged if e["event"] == "val"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/index.html", "report/results.csv", "report/statistics.json"} <= artifacts


def metrics_seed(run_dir: Path) -> int:
    return json.loads((run_dir / "sweep_run.json").read_text())["config"]["train"]["seed"]


def test_every_run_has_its_tensorboard_events(review):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run_dir in (p for p in review.iterdir() if (p / "bench.json").is_file()):
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        best = events.Scalars("best/dice_fg_per_case")
        assert len(best) == 1 and best[0].value == pytest.approx(metrics["val"]["dice_fg_per_case"], rel=1e-6)
