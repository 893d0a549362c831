"""A run with several GPUs under the Ray launcher (`--gpus-per-run N`) is one worker started under
`torchrun` with N processes: every rank trains, rank 0 alone measures, predicts and writes bench.json.
Checked here with 2 CPU processes (Gloo), as the engine's DDP tests are."""

import json

from segbench.bench.protocol.profiles import get_profile
from segbench.bench.protocol.sweep import write_spec, plan_sweep
from segbench.bench.protocol.worker import run_worker_process, worker_command
from tests.bench.test_run import write_synthetic_data


def test_a_run_of_two_processes_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_synthetic_data(tmp_path / "data")
    profile = get_profile("quick")
    run = plan_sweep(data=str(data), profile=profile, out=tmp_path / "out", archs=["unet"], iterations=6,
                     overrides=["data.resize=[32,32]", "train.device=cpu"])[0]
    write_spec(run, profile)
    command = worker_command(run.run_dir, progress=False, processes=2)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    result, lost = run_worker_process(run.run_dir, run.config_hash, progress=False, processes=2)
    assert result.ok and not lost, result.error + result.traceback
    assert result.metrics["world_size"] == 2 and result.metrics["iterations_run"] == 6
    assert result.measure["latency_ms"] > 0 and result.machine["host"]  # measured once, by rank 0
    assert json.loads((run.run_dir / "bench.json").read_text())["status"] == "ok"
    assert (run.run_dir / "preview.npz").is_file()
