"""SegFormer: the paper's parameter counts, the All-MLP decoder's layout, the model contract."""

import pytest
import torch
import torch.nn.functional as F

from segbench import build_model
from segbench.models.architectures.segformer import SegFormer
from segbench.models.encoders.mit import MixTransformer

SLIM = dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], decoder_dim=16)

# Paper Table 1/2 (ADE20K, 150 classes), in millions, and segbench's exact count (equal to Hugging Face's
# SegformerForSemanticSegmentation at 150 labels).
PAPER_PARAMS = {
    "mit_b0": (3.8, 3_752_694),
    "mit_b1": (13.7, 13_715_798),
    "mit_b2": (27.5, 27_461_974),
    "mit_b3": (47.3, 47_337_814),
    "mit_b4": (64.1, 64_108_374),
    "mit_b5": (84.7, 84_708_694),
}


@pytest.mark.parametrize("encoder", sorted(PAPER_PARAMS))
def test_parameter_count_matches_paper(encoder):
    paper_millions, exact = PAPER_PARAMS[encoder]
    with torch.device("meta"):
        model = build_model("segformer", 150, encoder=encoder)
    count = sum(p.numel() for p in model.parameters())
    assert count == exact
    assert abs(count / 1e6 - paper_millions) / paper_millions <= 0.015
    assert model.decode_head.fuse[0].out_channels == (256 if encoder in ("mit_b0", "mit_b1") else 768)


@pytest.mark.parametrize("size", [(64, 64), (100, 75), (29, 41)])
def test_logits_at_input_resolution(size):
    model = build_model("segformer", 5, **SLIM).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size)
    model.train()
    assert isinstance(model(torch.randn(2, 3, *size)), torch.Tensor)  # no auxiliary head


def test_model_contract_and_decoder_layout():
    model = build_model("segformer", 7, in_channels=2, **SLIM)
    assert isinstance(model, SegFormer) and isinstance(model.encoder, MixTransformer)
    assert [n for n, _ in model.named_modules() if n.endswith("classifier")] == ["decode_head.classifier"]
    head = model.decode_head
    assert [p.in_channels for p in head.projections] == [8, 16, 24, 32]
    assert all(p.kernel_size == (1, 1) and p.out_channels == 16 for p in head.projections)
    assert head.fuse[0].in_channels == 64 and head.fuse[0].bias is None  # 1x1 conv, BN, ReLU
    assert head.dropout.p == 0.1
    assert head.classifier.out_channels == 7 and model.encoder.patch_embed1.proj.in_channels == 2


def test_decoder_computes_equation_4():
    """Eq. 4 by hand: linear per stage, upsample to stride 4, concat (deepest first), fuse, classify."""
    model = build_model("segformer", 3, **SLIM).eval()
    head = model.decode_head
    with torch.no_grad():
        head.fuse[1].running_mean.normal_()
        head.fuse[1].running_var.uniform_(0.5, 2.0)
        features = model.encoder(torch.randn(1, 3, 64, 48))
        size = features[0].shape[-2:]
        stages = []
        for f, projection in zip(features, head.projections):
            tokens = f.flatten(2).transpose(1, 2) @ projection.weight.flatten(1).T + projection.bias
            stage = tokens.transpose(1, 2).reshape(1, -1, *f.shape[-2:])
            stages.append(F.interpolate(stage, size=size, mode="bilinear", align_corners=False))
        fused = F.conv2d(torch.cat(stages[::-1], dim=1), head.fuse[0].weight)
        bn = head.fuse[1]
        fused = F.relu(F.batch_norm(fused, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
        expected = F.conv2d(fused, head.classifier.weight, head.classifier.bias)
        assert torch.allclose(head(features), expected, atol=1e-5)


def test_gradients_reach_every_parameter():
    model = build_model("segformer", 4, drop_path_rate=0.0, **SLIM)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mmseg_head_variant_has_bn_projections():
    model = build_model("segformer", 4, projection_bn=True, **SLIM)
    projection = model.decode_head.projections[0]
    assert isinstance(projection[1], torch.nn.BatchNorm2d) and projection[0].bias is None


def test_bad_encoder_and_small_input_are_rejected():
    with pytest.raises(ValueError, match="mit_b0"):
        build_model("segformer", 4, encoder="vgg16")
    model = build_model("segformer", 4, **SLIM).eval()
    with pytest.raises(ValueError, match="at least 29x29"):
        model(torch.randn(1, 3, 16, 64))


def test_distributed_fusion_equals_concatenate_then_fuse():
    # The decoder runs each stage's slice of the fusion conv before upsampling (cheaper); it must compute
    # Eq. 4 exactly: upsample every projection, concatenate deepest first, fuse, classify.
    from segbench.models.blocks import resize
    from segbench.models.architectures.segformer import AllMLPDecoder

    torch.manual_seed(0)
    decoder = AllMLPDecoder([4, 6, 8, 10], num_classes=3, decoder_dim=5).double().train()
    features = [torch.randn(2, c, 16 // 2**i, 20 // 2**i, dtype=torch.float64) for i, c in enumerate([4, 6, 8, 10])]
    decoder.dropout.p = 0.0
    out = decoder(features)
    size = features[0].shape[-2:]
    projected = [resize(p(f), size) for p, f in zip(decoder.projections, features)]
    expected = decoder.classifier(decoder.fuse(torch.cat(projected[::-1], dim=1)))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.autograd.grad(out.square().sum(), decoder.fuse[0].weight)[0]
    expected_grad = torch.autograd.grad(expected.square().sum(), decoder.fuse[0].weight)[0]
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)
