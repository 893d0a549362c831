import pytest
import torch
from torch import nn

from segbench.engine.inference import InferenceSettings, flip_views, gaussian_weights, predict_scores, window_positions

predict_logits = predict_scores  # one network, no flips: its logits


def conv_model(kernel_size: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, kernel_size, padding=kernel_size // 2).eval()


def test_window_positions_cover_the_axis():
    assert window_positions(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    assert window_positions(32, 32, 0.5) == [0] and window_positions(20, 32, 0.0) == [0]
    assert window_positions(10, 4, 0.0) == [0, 4, 6]


def test_window_at_least_image_equals_whole_image():
    model, image = conv_model(3), torch.randn(2, 2, 19, 23)
    whole = predict_logits(model, image)
    for blend in ("gaussian", "mean"):
        slide = predict_logits(model, image, InferenceSettings(mode="slide", window=(32, 32), blend=blend))
        torch.testing.assert_close(slide, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_blending_of_translation_equivariant_model_equals_whole_image(blend):
    # A 1x1 convolution sees no context, so every window predicts exactly what the whole image does.
    model, image = conv_model(1), torch.randn(1, 2, 37, 53)
    settings = InferenceSettings(mode="slide", window=(16, 16), overlap=0.5, blend=blend, batch_size=5)
    torch.testing.assert_close(predict_logits(model, image, settings), predict_logits(model, image), rtol=1e-5, atol=1e-5)


def test_sliding_window_differs_for_a_model_with_context():
    model, image = conv_model(5), torch.randn(1, 2, 30, 30)
    slide = predict_logits(model, image, InferenceSettings(mode="slide", window=(12, 12), blend="mean"))
    assert not torch.allclose(slide, predict_logits(model, image), atol=1e-4)


def test_flip_views_are_every_combination_of_the_flips():
    assert flip_views(()) == [()]
    assert flip_views(("horizontal",)) == [(), (-1,)]
    assert flip_views(("horizontal", "vertical")) == [(), (-1,), (-2,), (-1, -2)]


def test_flip_tta_of_a_flip_equivariant_model_equals_the_model():
    image = torch.randn(1, 2, 9, 11)
    equivariant = conv_model(1)  # a 1x1 convolution commutes with every flip
    plain = predict_scores(equivariant, image).softmax(1)
    tta = predict_scores(equivariant, image, InferenceSettings(flips=("horizontal", "vertical")))
    torch.testing.assert_close(tta, plain, rtol=1e-6, atol=1e-6)


def test_flip_tta_averages_the_probabilities_of_the_views_flipped_back():
    image = torch.randn(1, 2, 9, 11)
    asymmetric = conv_model(3)
    expected = (asymmetric(image).softmax(1) + asymmetric(image.flip(-1)).flip(-1).softmax(1)) / 2
    got = predict_scores(asymmetric, image, InferenceSettings(flips=("horizontal",)))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, predict_scores(asymmetric, image).softmax(1), atol=1e-4)
    # A flip left undone breaks the equivariant case: the check above would catch it.
    equivariant = conv_model(1)
    undone = (equivariant(image).softmax(1) + equivariant(image.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(predict_scores(equivariant, image, InferenceSettings(flips=("horizontal",))),
                               equivariant(image).softmax(1))
    assert not torch.allclose(undone, equivariant(image).softmax(1), atol=1e-3)


def test_ensemble_of_identical_models_equals_the_model():
    image, model = torch.randn(2, 2, 7, 9), conv_model(3)
    one = predict_scores(model, image).softmax(1)
    torch.testing.assert_close(predict_scores([model, model, model], image), one, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(predict_scores([model], image), predict_scores(model, image))  # one member: itself


def test_ensemble_probabilities_are_the_members_mean():
    image = torch.randn(1, 2, 7, 9)
    torch.manual_seed(1)
    members = [nn.Conv2d(2, 3, 3, padding=1).eval() for _ in range(3)]
    expected = sum(m(image).softmax(1) for m in members) / 3
    got = predict_scores(members, image)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(1, 7, 9))
    # the mean of probabilities, not the softmax of the mean logits
    assert not torch.allclose(got, (sum(m(image) for m in members) / 3).softmax(1), atol=1e-4)


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("members, flips, passes", [(1, (), 1), (1, ("horizontal",), 2), (3, (), 3),
                                                    (2, ("horizontal", "vertical"), 8)])
def test_forward_passes_are_members_times_flip_views(members, flips, passes):
    models = [_Counting(conv_model(1)) for _ in range(members)]
    predict_scores(models, torch.randn(1, 2, 8, 8), InferenceSettings(flips=flips))
    assert sum(m.calls for m in models) == passes and len({m.calls for m in models}) == 1


def test_gaussian_weights_peak_in_the_centre():
    w = gaussian_weights(9, 9)
    assert w[4, 4] == 1.0 and w.min() > 0 and w[0, 0] < w[2, 2] < w[4, 4]


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="needs a window size"):
        InferenceSettings(mode="slide")
    with pytest.raises(ValueError, match="overlap must be in"):
        InferenceSettings(overlap=1.0)
    with pytest.raises(ValueError, match="unknown flip"):
        InferenceSettings(flips=("diagonal",))


def test_dict_outputs_are_unwrapped():
    class WithAux(nn.Module):
        def forward(self, x):
            return {"out": x[:, :2], "aux": x}

    image = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(predict_logits(WithAux(), image), image[:, :2])


# --- the network segbench infers with ---------------------------------------------------------------


class _WeightInTheOutput(torch.nn.Module):
    """Uses its conv's weight outside the convolution too, where autocast leaves it in fp32."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * (1 + self.conv.weight.mean())


def test_inference_network_stores_weights_in_the_autocast_dtype_with_identical_outputs():
    from segbench.engine.device import Precision
    from segbench.engine.inference import inference_network
    from segbench.models import build_model
    from tests.numerics import randomise_constants

    model = randomise_constants(build_model("deeplabv3plus", 3, encoder="resnet18")).eval()
    x = torch.randn(2, 3, 64, 64)
    bf16 = Precision(torch.bfloat16, "cpu")
    network = inference_network(model, x, bf16)
    assert network.stored_in == "bf16" and network.fold.folded == network.fold.ran > 0
    convs = [m for m in network.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert "weights stored in bf16" in network.describe()
    with torch.inference_mode(), bf16.autocast():
        assert torch.equal(network.model(x), network.fold.model(x))  # autocast casts them so on every call
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the trained model is left alone

    fp32 = inference_network(model, x, Precision(None, "cpu"))
    assert not fp32.stored_in and all(p.dtype == torch.float32 for p in fp32.model.parameters())


def test_inference_network_keeps_fp32_weights_where_storing_them_would_change_the_output():
    from segbench.engine.device import Precision
    from segbench.engine.inference import inference_network

    network = inference_network(_WeightInTheOutput(), torch.randn(1, 3, 8, 8), Precision(torch.bfloat16, "cpu"))
    assert not network.stored_in and "changed the output" in network.note
    assert network.model.conv.weight.dtype == torch.float32
