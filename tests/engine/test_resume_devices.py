"""Resuming where the device differs from the saving one: tensors on another device, fewer GPUs, another precision."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from segbench.config import load_config
from segbench.engine import evaluate_run, train
from segbench.engine.checkpoint import CHECKPOINT_FORMAT, capture_rng_state, load_checkpoint, restore_rng_state
from segbench.engine.checkpoint import save_checkpoint
from segbench.engine.hardware import has_idle_aux_head, load_scaler as _load_scaler

TINY = ["model.arch=tiny", "train.iterations=12", "train.batch_size=4", "train.val_interval=4",
        "train.checkpoint_interval=3", "train.log_interval=2", "train.device=cpu", 'train.amp="off"']  # YAML reads a bare off as false


def test_resume_loads_the_checkpoint_to_the_cpu(tiny_env, tmp_path, monkeypatch):
    # On a GPU, map_location=device put numpy's RNG state on the GPU and `.numpy()` raised. Here any
    # map_location but "cpu" yields meta tensors (no data: `.numpy()` fails the same way), standing for a GPU.
    cfg = load_config(None, TINY)
    straight = train(cfg, tmp_path / "straight", progress=False)
    real_load, asked = torch.load, []

    def load_like_a_gpu(f, map_location=None, **kwargs):
        asked.append(map_location)
        return real_load(f, map_location=map_location if map_location == "cpu" else "meta", **kwargs)

    tiny_env.TinySegmentation.kill_after = tiny_env.TinySegmentation.calls + 23  # resumes from iteration 4
    with pytest.raises(tiny_env.SimulatedKill):
        train(cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(torch, "load", load_like_a_gpu)
    resumed = train(cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(torch, "load", real_load)
    assert asked and all(where == "cpu" for where in asked)
    assert resumed["resumed_from"] == 4 and resumed["val"] == straight["val"]
    last = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert last["precision"] == "fp32"
    for name, value in load_checkpoint(tmp_path / "straight" / "last.pt")["model"].items():
        assert torch.equal(value, last["model"][name]), name


def test_fewer_gpus_than_saved_rng_states_restore_what_there_is(monkeypatch):
    state = capture_rng_state()
    state["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: restored.__setitem__(device, int(s[0])))
    expected = (torch.rand(2).tolist(), np.random.rand(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    notice = restore_rng_state(state)
    assert restored == {0: 1}
    assert "RNG states of 2 GPU(s) and 1 are visible" in notice and "CUDA_VISIBLE_DEVICES" in notice
    assert (torch.rand(2).tolist(), np.random.rand(), random.random()) == expected  # the CPU RNGs all came back
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert restore_rng_state(state) is None and restored == {0: 1, 1: 2}


def test_a_bf16_run_resumed_in_fp16_warns_and_starts_loss_scaling_afresh():
    bf16_state = torch.amp.GradScaler("cpu", enabled=False).state_dict()  # bf16 needs no scaler: saved empty
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    notice = _load_scaler(scaler, bf16_state, "bf16", "fp16")
    assert "trained in bf16 and continues in fp16" in notice and "loss scaling starts afresh" in notice
    assert scaler.get_scale() == 1024.0
    fp16_state = {**scaler.state_dict(), "scale": 256.0}
    assert _load_scaler(scaler, fp16_state, "fp16", "fp16") is None and scaler.get_scale() == 256.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert "trained in fp16 and continues in bf16" in _load_scaler(disabled, fp16_state, "fp16", "bf16")
    assert _load_scaler(disabled, bf16_state, None, "fp32") is None  # checkpoints from before the precision was saved


def test_ddp_looks_for_unused_parameters_only_with_an_idle_aux_head(tiny_module):
    with_aux = tiny_module.TinyNet(num_classes=3, aux_head=True)
    assert has_idle_aux_head(with_aux, 0.0) and not has_idle_aux_head(with_aux, 0.4)
    assert not has_idle_aux_head(tiny_module.TinyNet(num_classes=3), 0.0)

    class DeclaredNone(nn.Module):  # DeepLab v3/v3+ built without an aux head
        aux_head = None

    assert not has_idle_aux_head(DeclaredNone(), 0.0)


def test_eval_of_a_gpu_fp16_run_on_a_cpu(tiny_env, tmp_path, monkeypatch):
    import segbench.engine.device as device_module

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)  # an AVX2 CPU
    train(load_config(None, TINY + ["train.iterations=4", "eval.test_at_end=false"]), tmp_path, progress=False)
    reference = evaluate_run(tmp_path, "val")
    best = load_checkpoint(tmp_path / "best.pt")
    for amp in ("fp16", "bf16"):  # as trained on a GPU: fp16 autocast does not exist on CPU, bf16 is emulated
        best["config"]["train"]["amp"] = amp
        save_checkpoint(best, tmp_path / "best.pt")
        again = evaluate_run(tmp_path, "val")
        assert {k: again[k] for k in ("aAcc", "mIoU", "dice_fg_per_case")} == {
            k: reference[k] for k in ("aAcc", "mIoU", "dice_fg_per_case")}  # evaluated in fp32, as the amp=off run
    assert best["format"] == CHECKPOINT_FORMAT


@pytest.mark.parametrize("stage", ["training", "validation"])
def test_out_of_memory_names_the_remedies_in_one_line(tiny_env, tmp_path, monkeypatch, stage):
    from click.testing import CliRunner

    import importlib

    from segbench.cli import main

    train_module = importlib.import_module("segbench.engine.train")  # the package attribute is the function

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB")

    if stage == "training":
        monkeypatch.setattr(train_module.TrainStep, "__call__", no_memory)
    else:
        monkeypatch.setattr(train_module, "evaluate", no_memory)
    result = CliRunner().invoke(main, ["train", "--arch", "tiny", "--out", str(tmp_path), "--quiet", "--set",
                                       "train.device=cpu", "--set", "train.batch_size=4", "--set",
                                       "data.augment.crop_size=[12,12]"], catch_exceptions=False)
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("Error: out of memory on cpu") and "\n" not in message
    if stage == "training":
        assert "train.batch_size=4 (4 per process), crop 12x12" in message
        assert "data.augment.crop_size" in message and "no gradient accumulation" in message
    else:
        assert "eval.batch_size (now 8)" in message and "eval.mode=slide" in message


def test_loader_workers_by_device(monkeypatch):
    import os

    from segbench.engine.hardware import loader_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert loader_workers("auto", torch.device("cpu")) == 0  # CPU runs keep the tested single-process loader
    assert loader_workers("auto", torch.device("cuda:0")) == 8
    assert loader_workers("auto", torch.device("cuda:0"), local_processes=8) == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert loader_workers("auto", torch.device("cuda:0"), local_processes=4) == 1
    assert loader_workers(3, torch.device("cpu")) == 3


def test_worker_count_may_change_when_a_run_resumes(tiny_env, tmp_path):
    cfg = load_config(None, TINY + ["train.iterations=6"])
    assert cfg.train.num_workers == "auto"
    first = train(cfg, tmp_path, progress=False)
    again = train(load_config(None, TINY + ["train.iterations=6", "train.num_workers=2"]), tmp_path, progress=False)
    assert again == first  # resumed (finished) instead of refused as another configuration
