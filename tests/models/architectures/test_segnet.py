"""SegNet: the reference net's layout and parameter count, index unpooling, any input size."""

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.models.architectures.segnet import max_unpool


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count():
    with torch.device("meta"):
        model = segbench.build_model("segnet", num_classes=12)
    # Encoder: VGG16-BN convs 14,723,136. Decoder: the mirrored 12 conv-BN (14,719,872) + 3x3 classifier 6,924.
    assert count(model.encoder) == 14_723_136
    assert count(model) == 29_449_932
    assert abs(count(model) - 29.5e6) / 29.5e6 < 0.01


def test_decoder_mirrors_the_encoder():
    with torch.device("meta"):
        model = segbench.build_model("segnet", num_classes=12)
    convs = [(m.in_channels, m.out_channels) for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [
        (512, 512), (512, 512), (512, 512),  # conv5_3_D .. conv5_1_D
        (512, 512), (512, 512), (512, 256),  # conv4_*_D
        (256, 256), (256, 256), (256, 128),  # conv3_*_D
        (128, 128), (128, 64),  # conv2_*_D
        (64, 64),  # conv1_2_D; conv1_1_D is the classifier
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.decoder.modules()) == 12
    head = model.classifier
    assert (head.in_channels, head.out_channels, head.kernel_size) == (64, 12, (3, 3))
    pools = [m for m in model.encoder.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 and p.ceil_mode for p in pools)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules()) == 13


@pytest.mark.parametrize("size", [(97, 131), (1, 1), (33, 6)])
def test_any_input_size(size):
    model = segbench.build_model("segnet", num_classes=3, in_channels=1, base_width=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, *size)).shape == (2, 3, *size)


def test_unpooling_puts_values_back_at_the_maxima():
    model = segbench.build_model("segnet", num_classes=3, base_width=4).eval()
    x = torch.randn(1, 3, 45, 37)
    seen = {}
    model.decoder[0].register_forward_pre_hook(lambda module, args: seen.update(unpooled=args[0]))
    with torch.no_grad():
        model(x)
        feats, indices, sizes = model.encoder.forward_with_indices(x)
    unpooled = seen["unpooled"]
    assert unpooled.shape[-2:] == sizes[-1] == (3, 3)  # pool5's input size, restored exactly
    flat = unpooled.flatten(2)
    assert torch.equal(flat.gather(2, indices[-1].flatten(2)), feats[-1].flatten(2))
    # Sparse: only the argmax positions carry values (pool5 here is 2x2 from 3x3).
    assert (flat != 0).sum() <= feats[-1].numel() < flat.numel()


def test_unpool_equals_torch_max_unpool():
    x = torch.randn(2, 3, 11, 8)
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    expected = F.max_unpool2d(pooled, indices, 2, 2, output_size=(11, 8))
    assert torch.equal(max_unpool(pooled, indices, (11, 8)), expected)


def test_every_parameter_gets_a_gradient():
    model = segbench.build_model("segnet", num_classes=3, base_width=4).train()
    model(torch.randn(2, 3, 35, 29)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_errors():
    with pytest.raises(ValueError, match="vgg16"):
        segbench.build_model("segnet", num_classes=3, encoder="resnet18")
    from segbench.models.architectures.segnet import SegNet

    with pytest.raises(ValueError, match="plain"):
        SegNet(segbench.build_encoder("vgg16_bn", variant="atrous", base_width=2), num_classes=3)
