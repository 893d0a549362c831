"""``model.pretrained`` in the training loop: the run starts from the file's weights, whatever its layout.

The file is a ResNet-18 in torchvision's layout (the encoder's keys plus the ImageNet ``fc``), random
values so nothing matches by chance; the tiny data has one channel, so the first conv is the RGB filters
summed (``load_pretrained``'s adaptation). With ``train.lr=0`` the final encoder parameters must be the
file's exactly (BatchNorm running statistics move in training mode, so only parameters are compared).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segbench.config import load_config
from segbench.engine import train
from segbench.engine.checkpoint import load_checkpoint
from segbench.models.registry import build_encoder

FCN_RESNET18 = [
    "model.arch=fcn",
    "model.options={encoder: resnet18, output_stride: 8, aux_head: false}",
    "train.iterations=2",
    "train.batch_size=2",
    "train.val_interval=2",
    "train.checkpoint_interval=1",
    "train.log_interval=1",
    "train.device=cpu",
    "train.lr=0",
]


def torchvision_resnet18_file(path: Path) -> dict[str, torch.Tensor]:
    """Write a torchvision-keyed ResNet-18 state dict with random values (and the 1000-class ``fc``)."""
    generator = torch.Generator().manual_seed(7)
    state = {}
    for key, tensor in build_encoder("resnet18").state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # torchvision's IMAGENET1K_V1 files predate the counter
        values = torch.rand(tensor.shape, generator=generator) + 0.5 if key.endswith("running_var") else None
        state[key] = values if values is not None else 0.1 * torch.randn(tensor.shape, generator=generator)
    state["fc.weight"] = torch.randn(1000, 512, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    torch.save(state, path)
    return state


def expected_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's parameters as the one-channel model holds them (conv1 = the sum over RGB)."""
    expected = {k: v for k, v in state.items() if not k.startswith("fc.") and "running_" not in k}
    expected["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    return expected


def test_training_starts_from_a_torchvision_resnet18_file(tiny_env, tmp_path, capsys):
    state = torchvision_resnet18_file(tmp_path / "resnet18-tv.pth")
    cfg = load_config(None, [*FCN_RESNET18, f"model.pretrained={tmp_path / 'resnet18-tv.pth'}"])
    train(cfg, tmp_path / "run", progress=True)

    said = capsys.readouterr().err
    assert f"pretrained weights: {tmp_path / 'resnet18-tv.pth'} (torchvision layout, encoder)" in said
    assert "skipped 2 tensors of the file: fc.weight, fc.bias" in said and "1 adapted: encoder.conv1.weight" in said
    final = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for key, value in expected_encoder(state).items():
        assert torch.equal(final[f"encoder.{key}"], value), key

    # Without model.pretrained the same run starts elsewhere: the comparison above can fail.
    scratch = load_config(None, FCN_RESNET18)
    train(scratch, tmp_path / "scratch", progress=False)
    initial = load_checkpoint(tmp_path / "scratch" / "last.pt")["model"]
    assert not torch.equal(initial["encoder.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_resume_does_not_load_pretrained_weights_again(tiny_env, tmp_path, capsys):
    file = tmp_path / "resnet18-tv.pth"
    state = torchvision_resnet18_file(file)
    cfg = load_config(None, [*FCN_RESNET18, f"model.pretrained={file}", "train.lr=0.01"])
    train(cfg, tmp_path / "run", progress=False)
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert not torch.equal(trained["encoder.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])  # it trained
    file.unlink()  # a resume that read the file again would fail now
    capsys.readouterr()
    train(cfg, tmp_path / "run", progress=True)  # finished already: resumes at the end
    assert "not loaded, the run resumes from last.pt" in capsys.readouterr().err
    assert torch.equal(load_checkpoint(tmp_path / "run" / "last.pt")["model"]["encoder.layer1.0.conv1.weight"],
                       trained["encoder.layer1.0.conv1.weight"])


def test_a_missing_file_fails_before_training(tiny_env, tmp_path):
    cfg = load_config(None, [*FCN_RESNET18, f"model.pretrained={tmp_path / 'absent.pth'}"])
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


# --- data-parallel: rank 0 loads, DistributedDataParallel copies its weights to rank 1 ------------------

_WORKER = textwrap.dedent(
    """
    import importlib, importlib.util, os, sys
    from pathlib import Path
    import torch
    spec = importlib.util.spec_from_file_location("segbench_engine_tiny", sys.argv[3])
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    from segbench.config import load_config
    train_module = importlib.import_module("segbench.engine.train")
    train_module.load_data = lambda cfg: tiny.tiny_data(train=8, val=3)
    built = []
    real_build = train_module.build_pretrained_model
    train_module.build_pretrained_model = lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
    cfg = load_config(None, sys.argv[4:])
    train_module.train(cfg, Path(sys.argv[1]), progress=False)
    torch.save({n: p.detach() for n, p in built[0].named_parameters()},
               Path(sys.argv[2]) / f"rank{os.environ['RANK']}.pt")
    torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(tmp_path: Path, overrides: list[str]) -> list[tuple[int, str]]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    tiny_file = Path(__file__).with_name("_tiny.py")
    command = [sys.executable, "-c", _WORKER, str(tmp_path / "run"), str(tmp_path), str(tiny_file), *overrides]
    procs = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:  # a rank left waiting for the other must not outlive the test
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out) for p, out in zip(procs, outputs)]


def test_data_parallel_ranks_start_from_rank_0s_pretrained_weights(tmp_path):
    state = torchvision_resnet18_file(tmp_path / "resnet18-tv.pth")
    overrides = [*FCN_RESNET18, "train.batch_size=4", f"model.pretrained={tmp_path / 'resnet18-tv.pth'}"]
    results = _two_ranks(tmp_path, overrides)
    assert [code for code, _ in results] == [0, 0], results
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in expected_encoder(state).items():
        assert torch.equal(ranks[0][f"encoder.{key}"], value), key
        assert torch.equal(ranks[1][f"encoder.{key}"], value), key  # rank 1 got them from rank 0 (lr=0)
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end"


def test_data_parallel_load_failure_stops_every_rank(tmp_path):
    results = _two_ranks(tmp_path, [*FCN_RESNET18, "train.batch_size=4", f"model.pretrained={tmp_path / 'absent.pth'}"])
    (code0, out0), (code1, out1) = results
    # The whole of both ranks' output on failure: a rank that fails elsewhere (seen once in CI: rank 0 inside a
    # collective, its message cut short by pytest) is then told apart from this rule breaking.
    assert code0 != 0 and "FileNotFoundError" in out0 and "absent.pth" in out0, f"rank 0:\n{out0}\nrank 1:\n{out1}"
    assert code1 != 0 and "rank 0 could not load model.pretrained" in out1, f"rank 0:\n{out0}\nrank 1:\n{out1}"
