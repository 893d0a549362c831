"""`segbench run --launcher ray` (issue 17) on a local Ray instance of 2 CPUs.

- the same two-architecture, two-seed sweep run by `--launcher local` and by `--launcher ray` gives the
  same accuracy in results.csv (CPU training is bit-exact at the same thread count: 1 here, as Ray's
  1-CPU tasks set OMP_NUM_THREADS=1), while two of the Ray runs are lost mid-run: one by killing the Ray
  worker running its task (a lost node), one by killing the run's worker process (a preemption, the
  out-of-memory killer); Ray retries both and each resumes from its last.pt;
- a table whose rows came from different device models says so first;
- Ctrl-C on the driver cancels the tasks and leaves no worker process writing into a run folder;
- `--out` that a node does not see (a second Ray node in its own mount namespace, where a tmpfs hides
  the test's folder: a machine without the shared disk) stops the sweep before any run;
- without Ray, the error says how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from segbench.bench.protocol.launch_ray import RayLauncher, RayOptions, run_resources
from segbench.bench.protocol.profiles import get_profile
from segbench.bench.protocol.sweep import plan_sweep
from segbench.bench.report.results import read_results_csv
from segbench.commands.run import run
from tests.bench.test_run import write_synthetic_data
from tests.bench.test_run_exit_status import interruptible

ARCHS = ("unet", "segformer")
ACCURACY = ("val_dice_fg_per_case", "val_mIoU", "test_dice_fg_per_case", "best_iteration")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [str(data), "--archs", ",".join(ARCHS), "--seeds", "2", "--iterations", "20", "--out", str(out),
            "--set", "data.resize=[32,32]", "--no-progress", "--no-speed", *extra]


def _worker_pids(run_dir: Path) -> list[int]:
    """The processes running the worker of ``run_dir`` (started, through Ray, by this test)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"segbench.bench.protocol.worker" in command and str(run_dir).encode() in command:
            pids.append(int(proc.name))
    return pids


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _starts(run_dir: Path) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == "start"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray instance of 2 CPUs started here (its workers inherit this environment: a private cache, one
    thread), and the data. Stopped at the end."""
    ray = pytest.importorskip("ray", reason="pip install 'segbench[ray]' (the dev extra has it)")
    root = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEGBENCH_HOME", str(root / "home"))
        env.setenv("OMP_NUM_THREADS", "1")  # the local workers' threads = the 1-CPU Ray tasks' threads
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # ours, whatever runs
        try:
            yield {"ray": ray, "root": root, "data": write_synthetic_data(root / "data")}
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def local(cluster):
    out = cluster["root"] / "local"
    result = CliRunner().invoke(run, _args(cluster["data"], out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ray_sweep(cluster, local):
    """The same sweep as Ray tasks (two at once), losing two runs mid-run once they have a checkpoint."""
    out = cluster["root"] / "ray"
    plan = {(r.arch, r.seed): r.run_dir for r in plan_sweep(
        data=str(cluster["data"]), profile=get_profile("quick"), out=out, archs=list(ARCHS), seeds=2, iterations=20,
        overrides=["data.resize=[32,32]"])}
    node_lost, process_lost = plan["unet", 0], plan["unet", 1]
    outcome = {}
    driver = threading.Thread(target=lambda: outcome.update(result=CliRunner().invoke(
        run, _args(cluster["data"], out, "--launcher", "ray", "--cpus-per-run", "1"), catch_exceptions=False)))
    driver.start()
    killed = {}
    deadline = time.monotonic() + 180
    while len(killed) < 2 and driver.is_alive() and time.monotonic() < deadline:
        for run_dir, whom in ((node_lost, "ray worker"), (process_lost, "run worker")):
            pids = _worker_pids(run_dir) if run_dir not in killed and (run_dir / "last.pt").is_file() else []
            if pids:
                assert not (run_dir / "bench.json").exists()
                victim = _parent(pids[0]) if whom == "ray worker" else pids[0]
                os.kill(victim, signal.SIGKILL)
                killed[run_dir] = victim
        time.sleep(0.02)
    driver.join(timeout=300)
    assert not driver.is_alive()
    assert len(killed) == 2, f"only {len(killed)} run(s) could be killed mid-run"
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "node_lost": node_lost, "process_lost": process_lost}


def test_ray_gives_the_local_results(local, ray_sweep):
    rows = {(r["arch"], r["seed"]): r for r in read_results_csv(local / "report" / "results.csv")}
    ray_rows = {(r["arch"], r["seed"]): r for r in read_results_csv(ray_sweep["out"] / "report" / "results.csv")}
    assert sorted(ray_rows) == sorted(rows) == sorted((a, s) for a in ARCHS for s in (0, 1))
    for key, row in rows.items():
        assert row["status"] == ray_rows[key]["status"] == "ok", (key, ray_rows[key]["error"])
        assert row["val_dice_fg_per_case"] > 0.1, key  # learnt something: the comparison means something
        for name in ACCURACY:
            assert ray_rows[key][name] == row[name], (key, name)  # exactly: the same arithmetic
        assert Path(ray_rows[key]["run_dir"]).name == Path(row["run_dir"]).name  # same folders, same hashes
        assert ray_rows[key]["host"] == row["host"] == socket.gethostname() and ray_rows[key]["device_name"]
    assert "4 ran (0 failed), 0 reused" in ray_sweep["output"]
    assert "runs: " in ray_sweep["output"] and " running, " in ray_sweep["output"]  # the driver's one display


def test_lost_runs_are_retried_and_resume_from_their_checkpoint(ray_sweep):
    for run_dir in (ray_sweep["node_lost"], ray_sweep["process_lost"]):
        starts = _starts(run_dir)
        assert [s["resumed"] for s in starts] == [False, True], starts
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert 0 < starts[1]["iteration"] == metrics["resumed_from"] < 20 and metrics["iterations_run"] == 20
        assert f"({run_dir.name}): retried on {socket.gethostname()} (attempt 2 of 4)" in ray_sweep["output"]
    assert not _worker_pids(ray_sweep["out"])  # nothing left running


def test_rows_from_different_device_models_are_flagged(cluster, ray_sweep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ray_sweep["out"], out)
    bench = next(out.glob("segformer-s1-*")) / "bench.json"
    record = json.loads(bench.read_text())
    record["machine"].update(device_name="NVIDIA A100-SXM4-80GB", host="gpu-node-7")
    bench.write_text(json.dumps(record))
    result = CliRunner().invoke(run, _args(cluster["data"], out, "--report-only"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html = (out / "report" / "index.html").read_text()
    warning = html.split('<p class="warning"><b>Warning.</b> ', 1)[1].split("</p>", 1)[0]
    assert html.index('class="warning"') < html.index('id="verdict"')  # before anything else
    assert "come from 2 device models" in warning and "not comparable" in warning
    assert "NVIDIA A100-SXM4-80GB: segformer-s1 on gpu-node-7" in warning
    assert "(on NVIDIA A100-SXM4-80GB; " in html or "; NVIDIA A100-SXM4-80GB)" in html  # segformer's row names both
    assert "> **Warning.** The timing and memory figures" in (out / "report" / "report.md").read_text()
    rows = {(r["arch"], r["seed"]): r for r in read_results_csv(out / "report" / "results.csv")}
    assert (rows["segformer", 1]["device_name"], rows["segformer", 1]["host"]) == ("NVIDIA A100-SXM4-80GB", "gpu-node-7")
    assert rows["unet", 0]["device_name"] != "NVIDIA A100-SXM4-80GB"
    # One device model: no warning.
    result = CliRunner().invoke(run, _args(cluster["data"], ray_sweep["out"], "--report-only"), catch_exceptions=False)
    assert 'class="warning"' not in (ray_sweep["out"] / "report" / "index.html").read_text()


def test_ctrl_c_cancels_the_tasks_and_leaves_no_worker(cluster, tmp_path):
    out = tmp_path / "out"
    address = cluster["ray"].get_runtime_context().gcs_address
    command = [sys.executable, "-m", "segbench", "run", str(cluster["data"]), "--archs", "unet", "--iterations",
               "100000", "--out", str(out), "--set", "data.resize=[32,32]", "--no-speed", "--no-progress",
               "--launcher", "ray", "--ray-address", address, "--cpus-per-run", "1"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 120
    while not list(out.glob("unet-*/log.jsonl")) and time.monotonic() < deadline:  # a task is training
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.2)
    run_dir = next(out.glob("unet-*"))
    assert _worker_pids(run_dir)
    os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "interrupted: run the same command again to continue where it stopped" in stderr
    assert "Traceback" not in stdout + stderr
    deadline = time.monotonic() + 10  # the worker gets SIGTERM when its Ray worker is killed
    while _worker_pids(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _worker_pids(run_dir), "a worker is still running after Ctrl-C"
    assert not (run_dir / "bench.json").exists()


def _unshare() -> list[str] | None:
    """How to run a command in a private mount namespace here, or None where that is not allowed."""
    for command in (["unshare", "-m"], ["unshare", "-Urm"]):
        try:
            if subprocess.run([*command, "true"], capture_output=True, timeout=10).returncode == 0:
                return command
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def test_out_that_a_node_does_not_see_is_refused(cluster, tmp_path):
    ray = cluster["ray"]
    unshare = _unshare()
    ray_command = Path(sys.executable).parent / "ray"
    if unshare is None or not ray_command.is_file():
        pytest.skip("needs `unshare` (util-linux) with mount namespaces, to start a Ray node that does not see --out")
    alive = lambda: [n for n in ray.nodes() if n["Alive"]]  # noqa: E731
    address = ray.get_runtime_context().gcs_address
    # A second node of the cluster, on a "machine" where a tmpfs hides tmp_path: it sees an empty folder.
    node = subprocess.Popen(
        [*unshare, "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$1" start --address="$2" --num-cpus=1 --block',
         str(tmp_path), str(ray_command), address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while len(alive()) < 2 and time.monotonic() < deadline:
            assert node.poll() is None, node.communicate()[1][-2000:]
            time.sleep(0.5)
        assert len(alive()) == 2
        out = tmp_path / "out"
        result = CliRunner().invoke(run, _args(cluster["data"], out, "--launcher", "ray", "--cpus-per-run", "1"))
        assert result.exit_code == 1, result.output
        error = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and f"--out {out} must be storage every Ray node sees at the same path" in error[0]
        assert "does not see" in error[0] and ".segbench-shared-check-" in error[0]
        assert list(out.iterdir()) == []  # no run folder, and the check's markers removed
    finally:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        deadline = time.monotonic() + 60
        while len(alive()) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        # `ray start` noted our cluster as this machine's current one; a plain ray.init() would try to join it.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip() == address:
            current.unlink()


def test_task_resources_and_environment(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_TEST_FORWARDED", "yes")  # set after Ray started: only the launcher can pass it on
    plan = plan_sweep(data=str(cluster["data"]), profile=get_profile("quick"), out=tmp_path, archs=["unet"],
                      iterations=2)
    launcher = RayLauncher(say=lambda message: None, cpus_per_run=1)
    launcher.connect(plan, tmp_path)
    # A task gets what a run gets: its CPUs as threads, and the driver's SEGBENCH_* settings.
    assert launcher.call(os.getenv, "OMP_NUM_THREADS") == "1"
    assert launcher.call(os.getenv, "SEGBENCH_TEST_FORWARDED") == "yes"
    launcher.close()
    assert cluster["ray"].is_initialized()  # not this launcher's to stop
    result = CliRunner().invoke(run, _args(cluster["data"], tmp_path / "gpu", "--launcher", "ray", "--gpus-per-run", "1"))
    assert result.exit_code == 1 and "no node of the Ray cluster can hold a run asking for 1 GPU(s)" in result.output


def test_default_resources():
    plan = plan_sweep(data="brain-mri", profile=get_profile("quick"), out="unused", archs=["unet"])
    gpu_nodes = [{"Resources": {"CPU": 32.0, "GPU": 4.0}}, {"Resources": {"CPU": 16.0, "GPU": 4.0}}]
    assert run_resources(RayOptions(), gpu_nodes, plan) == (1, 4)  # one GPU and its share of the CPUs
    assert run_resources(RayOptions(gpus_per_run=4), gpu_nodes, plan) == (4, 16)
    cpu_nodes = [{"Resources": {"CPU": 8.0}}, {"Resources": {"CPU": 2.0}}]
    assert run_resources(RayOptions(), cpu_nodes, plan) == (0, 2)  # a whole (smallest) node
    assert run_resources(RayOptions(cpus_per_run=1), cpu_nodes, plan) == (0, 1)
    on_cpu = plan_sweep(data="brain-mri", profile=get_profile("quick"), out="unused", archs=["unet"],
                        overrides=["train.device=cpu"])
    assert run_resources(RayOptions(), gpu_nodes, on_cpu) == (0, 16)


def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = write_synthetic_data(tmp_path / "data", splits=(("train", 8), ("val", 2)))
    result = CliRunner().invoke(run, _args(data, tmp_path / "out", "--launcher", "ray"))
    assert result.exit_code == 1
    assert "Error: --launcher ray needs Ray: pip install 'segbench[ray]'" in result.output
    result = CliRunner().invoke(run, _args(data, tmp_path / "out", "--gpus-per-run", "1"))
    assert result.exit_code == 2 and "--gpus-per-run: not an option of --launcher local" in result.output




def test_the_anchor_runs_as_one_more_task(cluster, tmp_path):
    """``run_anchor`` through the launcher's ``call``: a Ray task runs the anchor's worker and its run folders are
    written where the task ran. The anchor's "Python" here exits at once, so its run is a failed row naming the
    anchor's log, and the sweep's launcher goes on (the real nnU-Net: tests/bench/test_anchor_nnunet.py)."""
    from segbench.bench.protocol.anchor import parse_anchors, plan_anchor, run_anchor
    from segbench.bench.protocol.record import WorkerResult

    plan = plan_sweep(data=str(cluster["data"]), profile=get_profile("quick"), out=tmp_path, archs=["unet"],
                      iterations=2)
    spec = plan_anchor(parse_anchors("nnunet")[0], plan, get_profile("quick"), tmp_path, threads=1)
    launcher = RayLauncher(say=lambda message: None, cpus_per_run=1)
    launcher.connect(plan, tmp_path)
    try:
        counts = launcher.call(run_anchor, spec, "/bin/false", say=lambda message: None)
    finally:
        launcher.close()
    assert counts == {"ran": 1, "failed": 1, "skipped": 0}
    result = WorkerResult.read(spec.runs[0]["run_dir"])
    assert result.status == "failed" and "exited with status 1" in result.error and "anchor.log" in result.error


def test_a_time_budget_is_planned_in_a_ray_task(cluster, tmp_path):
    """`--launcher ray --budget time:S`: the plan is measured in one Ray task (with a run's resources, like the
    Speed section, so on a node like the runs'), saved in OUT, and its counts are the sweep's."""
    out = tmp_path / "planned"
    args = [str(cluster["data"]), "--archs", ",".join(ARCHS), "--iterations", "5", "--budget", "time:0.2", "--out",
            str(out), "--set", "data.resize=[32,32]", "--no-progress", "--launcher", "ray", "--cpus-per-run", "1",
            "--show-plan"]
    result = CliRunner().invoke(run, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # Measured in the task (its own log line stays there), not on the driver.
    assert "budget: plan saved in" in result.output and "timing the training steps" not in result.output
    plan_file, = (out / "budget").glob("plan-*.json")
    plan = json.loads(plan_file.read_text())
    assert plan["measured"]["threads"] == 1 and plan["measured"]["rounds"] >= 7
    counts = {arch: entry["iterations"] for arch, entry in plan["archs"].items()}
    assert set(counts) == set(ARCHS) and all(1 <= n <= 20 for n in counts.values())  # the cap: 4 x 5
    for arch, n in counts.items():
        assert f"  {arch}: {n} iterations = 0.2 s / " in result.output
    assert not any(p.name.startswith(ARCHS) for p in out.iterdir())  # nothing trained
