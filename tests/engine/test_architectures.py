"""The engine trains real registered architectures: the contract between models and the loop
(auxiliary outputs, encoder/head parameter groups, family defaults). Narrow variants keep it fast."""

import math

import pytest

from segbench.config import load_config
from segbench.engine import train

CASES = {
    "unet": "{base_width: 8}",
    "fcn8s": "{base_width: 8}",
    "pspnet": "{encoder: resnet18}",  # auxiliary head in training mode
    "segformer": "{}",  # transformer family: AdamW, head lr x10, warm-up
}


@pytest.mark.parametrize("arch", list(CASES))
def test_train_and_validate_a_real_architecture(arch, tiny_env, tmp_path, monkeypatch):
    tiny_env.install(monkeypatch, lambda: tiny_env.tiny_data(train=4, val=2, size=32))
    cfg = load_config(None, [f"model.arch={arch}", f"model.options={CASES[arch]}", "train.iterations=2",
                             "train.batch_size=2", "train.device=cpu", "eval.hd95=false"])
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics["best_iteration"] == 2 and math.isfinite(metrics["last_val"]["aAcc"])
    assert metrics["recipe"] == ("transformer" if arch == "segformer" else "cnn")
