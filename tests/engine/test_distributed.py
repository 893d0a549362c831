import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segbench.engine.distributed import DistInfo, epoch_batches

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_epoch_batches_shard_one_global_order():
    alone = epoch_batches(10, 4, seed=3, epoch=1, info=DistInfo())
    ranks = [epoch_batches(10, 4, seed=3, epoch=1, info=DistInfo(r, 2, r)) for r in (0, 1)]
    assert len(alone) == 2 and all(len(b) == 4 for b in alone)  # the incomplete batch is dropped
    for j, batch in enumerate(alone):
        assert ranks[0][j] == batch[0::2] and ranks[1][j] == batch[1::2]
    assert epoch_batches(10, 4, 3, 1, DistInfo()) == alone  # deterministic
    assert epoch_batches(10, 4, 3, 2, DistInfo()) != alone  # reshuffled per epoch
    with pytest.raises(ValueError, match="divisible"):
        epoch_batches(10, 3, 0, 0, DistInfo(0, 2, 0))
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        epoch_batches(3, 4, 0, 0, DistInfo())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_ranks(tmp_path, *overrides: str):
    """Run the DDP worker as 2 Gloo processes into tmp_path/run (``overrides``: config KEY=VALUE); what each
    rank saved."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "run"), str(tmp_path), *overrides],
                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    return rank0, rank1


def test_two_cpu_processes_train_identical_weights(tmp_path):
    rank0, rank1 = _train_two_ranks(tmp_path)
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
    assert rank0["metrics"] == rank1["metrics"] and rank0["metrics"]["world_size"] == 2
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(torch.equal(last["model"][n], v) for n, v in rank0["params"].items())
    assert len(last["rng"]) == 2  # each rank's RNG state, for an exact resume
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])  # dropout differs per rank
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log if e["event"] == "train"] == list(range(1, 7))  # rank 0 alone writes


def test_two_cpu_processes_share_evaluation_and_match_one_process(tmp_path, tiny_module):
    # Each rank validates (and tests) its share of the cases; merged, the figures must be those of one
    # process evaluating the same weights alone, HD95 and per-case Dice included.
    from segbench.config import load_config
    from segbench.engine.checkpoint import DataInfo
    from segbench.engine.device import resolve_precision
    from segbench.engine.evaluate import evaluate, json_safe

    rank0, rank1 = _train_two_ranks(tmp_path)
    metrics = rank0["metrics"]
    assert metrics == rank1["metrics"]
    for name, value in rank0["buffers"].items():  # BatchNorm statistics: rank 0's, broadcast before evaluating
        assert torch.equal(value, rank1["buffers"][name]), name
    data = tiny_module.tiny_data(train=16, val=9, test=4)
    info = DataInfo("tiny", 3, 1, list(data.class_names), 255)
    cfg = load_config(tmp_path / "run" / "config.yaml")
    precision = resolve_precision(cfg.train.amp, torch.device("cpu"))
    for checkpoint, split, key in (("last.pt", "val", "last_val"), ("best.pt", "test", "test")):
        model = tiny_module.TinyNet(num_classes=3, in_channels=1)
        model.load_state_dict(torch.load(tmp_path / "run" / checkpoint, weights_only=True)["model"])
        alone = json_safe(evaluate(model, data.splits[split], info, cfg.eval, "cpu", precision))
        assert alone["num_cases"] == (3 if split == "val" else 4) and "hd95_fg" in alone
        assert metrics[key] == alone, split


def test_process_group_timeout(monkeypatch):
    from datetime import timedelta

    from segbench.engine.distributed import init_distributed, process_group_timeout

    assert process_group_timeout() == timedelta(minutes=60)  # NCCL's own default is 10
    monkeypatch.setenv("SEGBENCH_DIST_TIMEOUT_MIN", "90")
    seen = {}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert init_distributed("cpu").rank == 1
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=90)}
    monkeypatch.setenv("SEGBENCH_DIST_TIMEOUT_MIN", "ten")
    with pytest.raises(ValueError, match="SEGBENCH_DIST_TIMEOUT_MIN='ten': expected a positive number of minutes"):
        process_group_timeout()


def test_run_batch_sampler_continues_epoch_after_epoch_from_where_the_run_stopped():
    from segbench.engine.distributed import RunBatchSampler

    info = DistInfo()
    expected = [[(epoch, i) for i in batch] for epoch in (1, 2, 3) for batch in epoch_batches(10, 4, 3, epoch, info)]
    sampler = iter(RunBatchSampler(10, 4, 3, info, start_epoch=1, start_batch=1))
    assert [next(sampler) for _ in range(5)] == expected[1:6]  # endless: the caller stops it


def test_epoch_keyed_sets_the_epoch_of_the_copy_that_serves_the_item():
    from segbench.engine.distributed import EpochKeyed

    class Recorder:
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 3

        def __getitem__(self, index):
            return (self.epoch, index)

    keyed = EpochKeyed(Recorder())
    assert len(keyed) == 3 and keyed[(0, 2)] == (0, 2) and keyed[(1, 0)] == (1, 0) and keyed[(1, 1)] == (1, 1)
