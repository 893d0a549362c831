import dataclasses

import pytest
import torch
from torch import nn

from segbench.config import TrainConfig
from segbench.engine.optim import build_optimizer, lr_factor, resolve_train_config, set_learning_rate


class EncoderHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.classifier = nn.Linear(4, 2)


def test_family_defaults():
    cnn = resolve_train_config(TrainConfig(iterations=1000), "cnn")
    assert (cnn.optimizer, cnn.lr, cnn.weight_decay, cnn.head_lr_mult, cnn.poly_power, cnn.warmup_iters) == (
        "sgd", 0.01, 5e-4, 1.0, 0.9, 0)
    tf = resolve_train_config(TrainConfig(iterations=1000), "transformer")
    assert (tf.optimizer, tf.lr, tf.weight_decay, tf.head_lr_mult, tf.poly_power, tf.warmup_iters) == (
        "adamw", 6e-5, 0.01, 10.0, 1.0, 10)
    assert resolve_train_config(TrainConfig(iterations=500_000), "transformer").warmup_iters == 1500
    mine = resolve_train_config(TrainConfig(optimizer="sgd", lr=0.1, poly_power=2.0), "transformer")
    assert (mine.optimizer, mine.lr, mine.poly_power) == ("sgd", 0.1, 2.0)  # explicit settings are kept
    assert resolve_train_config(tf, "transformer") == tf  # idempotent: a saved config resolves to itself


def test_poly_and_cosine_with_warmup():
    train = resolve_train_config(TrainConfig(iterations=100, schedule="poly"), "cnn")
    assert lr_factor(0, train) == 1.0
    assert lr_factor(50, train) == pytest.approx(0.5**0.9)
    assert lr_factor(100, train) == 0.0
    warm = dataclasses.replace(train, warmup_iters=10, warmup_ratio=0.1)
    assert lr_factor(0, warm) == pytest.approx(0.1)
    assert lr_factor(5, warm) == pytest.approx((0.95**0.9) * (1 - 0.5 * 0.9))
    assert lr_factor(10, warm) == pytest.approx(0.9**0.9)
    cosine = dataclasses.replace(train, schedule="cosine", min_lr=0.001)
    assert lr_factor(50, cosine) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, cosine) == pytest.approx(0.1)


def test_parameter_groups_head_lr_and_no_decay():
    model = EncoderHead()
    tf = resolve_train_config(TrainConfig(iterations=100, warmup_iters=0), "transformer")
    optimizer = build_optimizer(model, tf, "transformer")
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"encoder", "encoder/no_decay", "head", "head/no_decay"}
    assert len(groups["encoder/no_decay"]["params"]) == 2  # LayerNorm weight and bias
    assert groups["head/no_decay"]["params"] == [model.absolute_pos_embed]
    assert groups["head"]["weight_decay"] == 0.01 and groups["encoder/no_decay"]["weight_decay"] == 0.0
    set_learning_rate(optimizer, 0, tf)
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["encoder"]["lr"] == pytest.approx(6e-5)

    cnn = resolve_train_config(TrainConfig(iterations=100), "cnn")
    sgd = build_optimizer(model, cnn, "cnn")
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert all(g["weight_decay"] == 5e-4 for g in sgd.param_groups)  # CNN recipes decay everything
    assert sum(len(g["params"]) for g in sgd.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_fused_step_matches_the_plain_update(family):
    train = resolve_train_config(TrainConfig(iterations=10), family)
    torch.manual_seed(0)
    fused_model = EncoderHead()
    plain_model = EncoderHead()
    plain_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, train, family)
    assert all(group["fused"] for group in fused.param_groups)  # float parameters on the CPU: fused kernels
    groups = [{k: v for k, v in g.items() if k not in ("params", "fused", "foreach")} for g in fused.param_groups]
    plain_params = dict(plain_model.named_parameters())
    names = {id(p): n for n, p in fused_model.named_parameters()}
    plain = type(fused)([{**g, "params": [plain_params[names[id(p)]] for p in fg["params"]]}
                         for g, fg in zip(groups, fused.param_groups)], foreach=False)
    x = torch.randn(3, 4)
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for _ in range(3):
            optimizer.zero_grad()
            (model.classifier(model.encoder(x) + model.absolute_pos_embed) ** 2).sum().backward()
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
