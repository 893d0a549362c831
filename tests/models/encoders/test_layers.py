import pytest
import torch

from segbench.models.encoders.layers import DropPath


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    layer = DropPath(0.5)
    x = torch.ones(4000, 3)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept samples are rescaled by 1/keep
    assert (y[:, 0] == y[:, 1]).all()  # whole samples are dropped
    assert y[:, 0].mean().item() == pytest.approx(1.0, abs=0.1)
    assert torch.equal(DropPath(0.0).train()(x), x)
