"""BatchNorm folding (segbench.models.fold): every architecture computes the same function folded, every
BatchNorm that runs at inference is folded (bar the one SegFormer applies to a functional conv), and a
pair is left alone wherever folding would change what the network computes."""

import pytest
import torch
from torch import Tensor, nn

from segbench.models.fold import fold_batchnorm
from segbench.models.registry import build_model, list_models
from tests.numerics import assert_same_function, randomise_constants
from tests.small_configs import small_options

# BatchNorms that run at inference but cannot fold: SegFormer's fusion conv is applied as a sum of
# per-level functional convolutions with slices of its weight (segformer.py), so no conv module
# produces the BatchNorm's input.
UNFOLDABLE_AT_INFERENCE = {"segformer": 1}


def _batchnorm_calls(model: nn.Module, x: Tensor) -> int:
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_folds_to_the_same_function(arch):
    torch.manual_seed(0)
    model = randomise_constants(build_model(arch, 3, **small_options(arch)))  # BN statistics away from 0/1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.encoder.eval()  # a part in eval mode inside a model in training mode (a frozen encoder)
    x = torch.randn(2, 3, 64, 64)
    folded = fold_batchnorm(model, x)
    assert model.training and not any(m.training for m in frozen.modules())  # left as it was, every module's mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    assert not folded.reason
    assert _batchnorm_calls(folded.model, x) == UNFOLDABLE_AT_INFERENCE.get(arch, 0)
    assert folded.ran == _batchnorm_calls(model, x)  # each runs once
    assert folded.folded == folded.ran - UNFOLDABLE_AT_INFERENCE.get(arch, 0)
    with torch.no_grad():
        assert_same_function(folded.model(x), model(x))
    other = torch.randn(1, 3, 80, 48)  # read off one input, the fold holds for any
    with torch.no_grad():
        assert_same_function(folded.model(other), model(other))


class ConvBN(nn.Module):
    """conv -> BN, with the conv's output also read elsewhere when ``residual``, or changed in place
    in between when ``inplace_relu``."""

    def __init__(self, residual: bool = False, inplace_relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.residual, self.inplace_relu = residual, inplace_relu

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.inplace_relu:
            torch.relu_(y)  # the same tensor object reaches the BN, changed
        out = self.bn(y)
        return out + y if self.residual else out


@pytest.mark.parametrize("kind, folds", [("plain", 1), ("residual", 0), ("inplace_relu", 0)])
def test_a_conv_output_read_elsewhere_or_changed_is_not_folded(kind, folds):
    model = randomise_constants(ConvBN(residual=kind == "residual", inplace_relu=kind == "inplace_relu")).eval()
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batchnorm(model, x)
    assert folded.folded == folds and not folded.reason
    with torch.no_grad():
        assert_same_function(folded.model(x), model(x))


class SharedBN(nn.Module):
    """One BatchNorm applied after two convolutions."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1, bias=False), nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


def test_a_batchnorm_used_twice_is_not_folded():
    model = randomise_constants(SharedBN()).eval()
    folded = fold_batchnorm(model, torch.randn(2, 3, 4, 4))
    assert folded.folded == 0 and not folded.reason


class HiddenAlias(nn.Module):
    """Its forward calls the BatchNorm through a plain list the module tree does not see: replacing the
    registered one changes nothing, so the folded network would apply the BatchNorm twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.alias = [self.bn]

    def forward(self, x: Tensor) -> Tensor:
        return self.alias[0](self.conv(x))


def test_a_fold_that_changes_the_output_is_refused_with_the_reason():
    model = randomise_constants(HiddenAlias()).eval()
    x = torch.randn(2, 3, 4, 4)
    folded = fold_batchnorm(model, x)
    assert folded.folded == 0 and "off at scale" in folded.reason
    with torch.no_grad():
        assert_same_function(folded.model(x), model(x))
