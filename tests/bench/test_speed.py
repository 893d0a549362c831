"""`segbench speed`: the timing protocol, the FLOP accounting, the speed options' numerics, the table."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import segbench
from segbench.bench.measure.peers import Peer, PeerModel, PeerSpec
from segbench.bench.measure.speed import SpeedSettings, _train_flops, benchmark_arch, format_table, train_step
from segbench.bench.protocol.review_speed import speed_rows
from segbench.engine.device import Precision
from segbench.engine.losses import build_loss
from segbench.engine.step import TrainStep
from segbench.bench.measure.flops import count_flops_of
from tests.small_configs import small_options
from tests.test_export import small_model


def test_training_step_runs_under_the_precision_and_updates_the_weights():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1))
    dtypes = []
    model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    before = model[0].weight.detach().clone()
    step = train_step(model, "cnn", SpeedSettings(num_classes=3, loss="ce+dice"), Precision(torch.bfloat16, "cpu"))
    assert isinstance(step.optimizer, torch.optim.SGD) and type(step.criterion).__name__ == "CEDiceLoss"
    step(torch.randn(2, 1, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    assert dtypes == [torch.bfloat16] and model[0].weight.dtype == torch.float32
    assert not torch.equal(model[0].weight, before)


def test_a_share_above_100_percent_is_starred_and_explained():
    entry = {"params": 1e6, "precision": "fp32", "infer_s": 0.01, "infer_flops_per_s": 3e11, "infer_matmul_fraction": 1.5}
    results = {"archs": {"deeplabv1": {"impls": {"segbench": entry}, "notes": [],
                                        "matmul_flops_per_s_by_precision": {"fp32": 2e11}}}}
    table = format_table(results)
    assert "300.0 (150%*)" in table and "* marks a share above 100%" in table and "zero padding" in table
    assert "fp32 matmul 2048x2048 (same rounds, median): 200.0 GFLOP/s" in table


def test_flop_counts_are_two_per_multiply_add_and_training_adds_the_backward():
    m, k, n = 16, 32, 8
    model = nn.Linear(k, n, bias=False)
    x, target = torch.randn(m, k), torch.randint(0, n, (m,))
    assert count_flops_of(lambda: model(x)) == 2 * m * k * n
    # The input needs no gradient, so the backward computes only the weight gradient: one more matmul.
    step = train_step(model, "cnn", SpeedSettings(num_classes=n), Precision(None, "cpu"))
    assert _train_flops(step, x, target) == (2 * (2 * m * k * n), [])


def test_parameters_the_training_step_leaves_without_a_gradient_are_named():
    class HoldsANorm(nn.Module):
        # A module held but never applied (HF's Swin backbone keeps a final LayerNorm its UperNet never uses).
        def __init__(self):
            super().__init__()
            self.conv, self.unused = nn.Conv2d(1, 3, 1), nn.LayerNorm(5)

        def forward(self, x):
            return self.conv(x)

    step = train_step(HoldsANorm(), "cnn", SpeedSettings(num_classes=3), Precision(None, "cpu"))
    _, unused = _train_flops(step, torch.randn(2, 1, 4, 4), torch.randint(0, 3, (2, 4, 4)))
    assert unused == ["unused.weight", "unused.bias"]


def _compared(peer_params: int | None, ours_params: int = 1000, **result) -> dict:
    impls = {"segbench": {"params": ours_params, "params_unused": 10, "train_s": 0.2, "infer_s": 0.1}}
    if peer_params is not None:
        impls["peer"] = {"params": peer_params, "train_s": 0.25, "infer_s": 0.1}
    return {"impls": impls, "notes": [], **result}


def test_a_peer_gets_a_ratio_only_with_the_same_parameter_count():
    from segbench.bench.measure.speed import compare_with_peer

    same = compare_with_peer(_compared(990, peer_name="lib Net", ratio={"train": 0.8, "infer": 1.0}))
    assert (same.status, same.cell, same.note) == ("ratio", "train 0.80, infer 1.00", None)
    other = compare_with_peer(_compared(1200, peer_name="lib Net", ratio={"train": 0.8}))
    assert other.status == other.cell == "different configuration" and other.ratio == {}
    assert other.note == "different configuration: segbench 990 parameters, lib Net 1,200; no ratio"
    none = compare_with_peer(_compared(None, no_peer="no peer: needs torchvision: run `make peers`"))
    assert none.cell == "no peer" and none.note == ("no peer: needs torchvision: run `make peers`; the matmul share "
                                                    "is the only yardstick")


def _lazy_import_fails(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    # What transformers does when the class's own module does not import (its lazy import).
    raise ModuleNotFoundError("Could not import module 'FakeSegmenter'")


class _BrokenForward(PeerModel):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the peer's forward broke")


def _builds_a_broken_peer(model: nn.Module, num_classes: int, in_channels: int) -> Peer:
    return Peer("fakelib Broken", _BrokenForward(nn.Conv2d(in_channels, num_classes, 1)))


@pytest.mark.parametrize("builder, why", [
    (_lazy_import_fails, "no peer: json import failed (ModuleNotFoundError: Could not import module 'FakeSegmenter')"),
    (_builds_a_broken_peer, "no peer: fakelib Broken failed (RuntimeError: the peer's forward broke)"),
])
def test_a_failing_peer_leaves_segbenchs_own_figures_in_place(builder, why):
    # A real peer table with one entry whose library imports (json) but whose peer fails.
    peers = {"unet": PeerSpec("json", "fakelib", builder, encoder=None)}
    settings = SpeedSettings(size=(32, 32), batch=2, amp="off", rounds=1, max_warmup=0, num_classes=2,
                             in_channels=1, options={"unet": small_options("unet")}, train=False)
    result = benchmark_arch("unet", settings, peers=peers)
    ours = result["impls"]["segbench"]
    assert ours["infer_s"] > 0 and ours["infer_flops"] > 0
    assert "peer" not in result["impls"] and "peer_name" not in result
    assert result["no_peer"] == why and result["peer_failed"] is True and isinstance(result["machine_busy"], bool)
    row = speed_rows({"archs": {"unet": result}}, {})[0]
    assert "error" not in row and row["peer"] == why and row["infer_ms"] == ours["infer_s"] * 1e3


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus", "pspnet", "segformer"])
def test_channels_last_gives_the_same_logits_and_gradients(arch):
    if arch not in segbench.list_models():
        pytest.skip(f"{arch} is not registered yet")
    model = small_model(arch)
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-4, rtol=1e-4)
    # Training mode (dropout off, so both compute the same function): same loss and gradients. In float64:
    # BatchNorm over a batch of two 1x1 maps (ASPP's image pooling) amplifies float32 summation-order
    # differences between the layouts' kernels to ~1% of a gradient, hiding what this test looks for.
    model, twin = model.double(), twin.double()
    x = x.double()
    for module in (model, twin):
        for layer in module.modules():
            if isinstance(layer, (nn.Dropout, nn.Dropout2d)):
                layer.p = 0.0
    target = torch.randint(0, 3, (2, 64, 64))
    losses = []
    for module, images in ((model, x), (twin, x.contiguous(memory_format=torch.channels_last))):
        module.train()
        torch.manual_seed(1)  # the same stochastic-depth draws
        step = TrainStep(module, None, build_loss("ce", 3), precision=Precision(None, "cpu"),
                         aux_weight=getattr(module, "aux_weight", 0.0))
        loss = step.loss(images, target)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-9, rtol=1e-7, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not os.environ.get("SEGBENCH_SLOW_TESTS"), reason="torch.compile takes minutes on a small CPU; "
                    "set SEGBENCH_SLOW_TESTS=1 to run")
def test_compiled_model_gives_the_same_logits():
    model = small_model("unet").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-4, rtol=1e-4)


def test_speed_command_prints_ratio_and_flop_rate_columns(tmp_path):
    from segbench.cli import main

    archs = [a for a in ("unet", "segformer") if a in segbench.list_models()]
    if not archs:
        pytest.skip("neither unet nor segformer is registered yet")
    out = tmp_path / "speed.json"
    # bf16 whatever the CPU (emulated where it is not native: slower, still correct), ONNX Runtime in fp32.
    args = ["speed", "--archs", ",".join(archs), "--size", "64", "64", "--batch", "2", "--rounds", "1",
            "--max-warmup", "0", "--precision", "bf16", "--threads", "1", "--engine", "onnx", "--out", str(out),
            "--set", "unet.base_width=8", "--set", "segformer.embed_dims=[16,32,64,128]",
            "--set", "segformer.depths=[1,1,1,1]", "--set", "segformer.num_heads=[1,2,4,8]",
            "--set", "segformer.decoder_dim=32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("arch"))
    for column in ("precision", "params", "train ms", "infer ms", "train GFLOP/s (% matmul)",
                   "infer GFLOP/s (% matmul)", "segbench/peer"):
        assert column in header
    # Each contender's share is of a matmul in its own precision.
    assert "bf16 matmul 2048x2048" in result.output and "fp32 matmul 2048x2048" in result.output
    figures = json.loads(out.read_text())
    assert figures["matmul_flops_per_s"] > 0 and figures["precision"] == "bf16"
    for arch in archs:
        rates = figures["archs"][arch]["matmul_flops_per_s_by_precision"]
        ours = figures["archs"][arch]["impls"]["segbench"]
        assert ours["precision"] == "bf16" and ours["train_flops"] > ours["infer_flops"] > 0
        assert ours["infer_matmul_fraction"] == pytest.approx(ours["infer_flops_per_s"] / rates["bf16"])
        assert 0 < ours["train_matmul_fraction"] and ours["infer_q1_s"] <= ours["infer_s"] <= ours["infer_q3_s"]
        onnx = figures["archs"][arch]["impls"]["onnx"]  # ONNX Runtime times our export's inference
        assert onnx["infer_s"] > 0 and onnx["infer_flops"] == ours["infer_flops"] and "train_s" not in onnx
        assert onnx["infer_matmul_fraction"] == pytest.approx(onnx["infer_flops_per_s"] / rates["fp32"])
    if "segformer" in archs:
        segformer = figures["archs"]["segformer"]
        # The transformers peer is configured from our slim model: same parameter count.
        assert segformer["impls"]["peer"]["params"] == segformer["impls"]["segbench"]["params"]
        assert segformer["ratio"]["train"] > 0
        row = next(line for line in result.output.splitlines() if line.startswith("segformer") and "segbench" in line)
        assert "train " in row and "infer " in row  # the ratios
    if "unet" in archs:
        row = next(line for line in result.output.splitlines() if line.startswith("unet") and "segbench" in line)
        assert row.endswith("no peer") and "unet: no peer: " in result.output  # and why


def test_set_option_must_name_an_architecture():
    from segbench.cli import main

    result = CliRunner().invoke(main, ["speed", "--set", "base_width=8"])
    assert result.exit_code != 0 and "ARCH.OPTION=VALUE" in result.output


def test_pipeline_overhead_splits_batches_into_loading_compute_and_metrics():
    from segbench.bench.measure.input_pipeline import pipeline_overhead
    from segbench.bench.measure.speed import SpeedSettings

    if "unet" not in segbench.list_models():
        pytest.skip("unet is not registered yet")
    settings = SpeedSettings(size=(64, 64), batch=2, options={"unet": {"base_width": 8}})
    result = pipeline_overhead(settings, "unet", max_batches=2)
    train, val = result["train"], result["val"]
    assert train["batches"] == 2 and train["data_s"] > 0 and train["compute_s"] > 0
    assert train["overhead"] == pytest.approx(train["data_s"] / (train["data_s"] + train["compute_s"]))
    assert val["images"] == 4 and min(val["data_s"], val["compute_s"], val["metrics_s"]) > 0
    assert 0 < val["metrics_share"] < val["overhead"] < 1


def test_breakdown_bins_cpu_self_time_into_categories():
    from segbench.bench.measure.op_profile import profile_step

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    x = torch.randn(2, 1, 16, 16)
    result = profile_step(lambda: model(x).sum().backward(), warmup=1, device="cpu")
    assert result["clock"] == "cpu" and result["total_ms"] > 0
    assert sum(result["categories"].values()) == pytest.approx(1.0)
    assert {"convolution", "batchnorm"} <= set(result["categories"])


def test_the_ratio_is_the_geometric_mean_of_paired_rounds_with_scipys_bootstrap_interval():
    import math

    from scipy import stats

    from segbench.bench.measure.speed import paired_ratio
    from segbench.bench.measure.timing import Timing

    ours = (1.00, 1.30, 0.96, 1.22, 1.05, 0.99, 1.40)  # a machine whose speed drifts between rounds,
    peer = (1.02, 1.35, 1.00, 1.21, 1.10, 1.01, 1.45)  # which hits both contenders of a round alike
    ratio, interval = paired_ratio(Timing(ours[:4], 0, True, 2, False, (ours[:4], ours[4:])),
                                   Timing(peer[4:], 0, True, 2, False, (peer[:4], peer[4:])))  # two attempts
    logs = np.log(np.array(ours) / np.array(peer))
    assert ratio == pytest.approx(math.exp(logs.mean()))
    expected = stats.bootstrap((logs,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
                               random_state=np.random.default_rng(0), vectorized=True).confidence_interval
    assert interval == pytest.approx([math.exp(expected.low), math.exp(expected.high)])
    assert interval[1] < 1  # paired, the 2-4% gap shows through the drift
    # A single round pairs with nothing to spread: the ratio of the medians, without an interval.
    single = paired_ratio(Timing(ours[:1], 0, True, 1, False, (ours[:1],)), Timing(peer[:1], 0, True, 1, False, (peer[:1],)))
    assert single == (pytest.approx(ours[0] / peer[0]), None)
