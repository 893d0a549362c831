"""ONNX export: every registered architecture, run by ONNX Runtime, reproduces PyTorch's logits."""

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import segbench
from segbench.export.onnx import _pooling_matrix, export_onnx, load_onnx_model
from tests.numerics import assert_same_function
from tests.small_configs import small_options

pytest.importorskip("onnxruntime")


def small_model(arch: str, **kwargs) -> nn.Module:
    """The architecture in the slim configuration of tests/small_configs.py (same code paths as the paper's)."""
    return segbench.build_model(arch, num_classes=3, **small_options(arch), **kwargs)


@pytest.mark.parametrize("arch", segbench.list_models())
def test_onnx_runtime_matches_pytorch(arch, tmp_path):
    model = small_model(arch).train()  # export must switch to eval and back
    info = export_onnx(model, tmp_path / "model.onnx", input_size=(64, 64), in_channels=3)
    assert model.training
    model.eval()
    onnx_model = load_onnx_model(tmp_path)  # a run folder resolves to its model.onnx
    assert info.num_classes == 3 and onnx_model.info == info
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    got = onnx_model(x)
    assert got.shape == expected.shape == (2, 3, 64, 64)
    assert_same_function(got, expected)
    other = torch.randn(1, 3, 80, 96)
    if info.dynamic:
        with torch.no_grad():
            assert_same_function(onnx_model(other), model(other))
    else:
        assert info.note, "a static export must say why it is static"
        with pytest.raises(ValueError, match="takes only 64x64"):
            onnx_model(other)


def test_pooling_matrices_equal_adaptive_pooling_for_bins_that_do_not_divide():
    x = torch.randn(2, 4, 13, 10)
    for bins in [(3, 3), (6, 4), (2, 7)]:
        pooled = _pooling_matrix(13, bins[0], x) @ x @ _pooling_matrix(10, bins[1], x).t()
        torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, bins))


class _Pyramid(nn.Module):
    """Pyramid pooling over 9x9 features (bins 3 and 6 do not divide 8x8 ones)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.classifier = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        y = self.encoder(x)
        pooled = [F.interpolate(F.adaptive_avg_pool2d(y, b), size=y.shape[-2:]) for b in (1, 2, 3, 6)]
        return F.interpolate(self.classifier(torch.cat(pooled, 1)), size=x.shape[-2:], mode="bilinear")


def test_adaptive_pooling_falls_back_to_a_static_shape_with_a_note(tmp_path):
    model = _Pyramid().eval()
    info = export_onnx(model, tmp_path / "p.onnx", input_size=(36, 36), in_channels=3)
    assert info.shape_mode == "static-hw" and "3x3 bins" not in info.note and "bins" in info.note
    x = torch.randn(3, 3, 36, 36)
    assert_same_function(load_onnx_model(tmp_path / "p.onnx")(x), model(x).detach())
    with pytest.raises(RuntimeError, match="needs a fixed input size"):
        export_onnx(model, tmp_path / "q.onnx", input_size=(36, 36), in_channels=3, dynamic=True)
    assert not (tmp_path / "q.onnx").exists()
    # Its idle threads must not spin after a run: they would slow whatever torch does next.
    options = load_onnx_model(tmp_path / "p.onnx").session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_missing_onnx_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="segbench export"):
        load_onnx_model(tmp_path)


def test_export_command_writes_model_onnx_of_a_run(tmp_path):
    from segbench.cli import main
    from segbench.config import Config, ModelConfig, config_to_dict
    from segbench.data import AugmentConfig, DataConfig
    from segbench.engine.checkpoint import CHECKPOINT_FORMAT, DataInfo, save_checkpoint

    model = segbench.build_model("unet", num_classes=2, in_channels=1, base_width=8).eval()
    cfg = Config(model=ModelConfig(arch="unet", options={"base_width": 8}),
                 data=DataConfig(augment=AugmentConfig(crop_size=(48, 40))))
    info = DataInfo("toy", 2, 1, ["background", "object"], 255)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": config_to_dict(cfg),
                     "data_info": info.to_dict(), "iteration": 1, "metrics": {}}, tmp_path / "best.pt")
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.onnx.json").is_file()
    onnx_model = load_onnx_model(tmp_path)
    assert onnx_model.info.in_channels == 1 and onnx_model.info.num_classes == 2
    x = torch.randn(2, 1, 48, 40)
    with torch.no_grad():
        assert_same_function(onnx_model(x), model(x))


def test_export_command_explains_a_folder_without_a_checkpoint(tmp_path):
    from segbench.cli import main

    result = CliRunner().invoke(main, ["export", str(tmp_path)])
    assert result.exit_code != 0 and "best.pt" in result.output


def test_onnx_runtime_uses_cuda_only_when_asked_and_offered():
    from segbench.export.onnx import onnx_providers

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cuda", both) == both
    assert onnx_providers("cuda:1", both) == both
    assert onnx_providers("cpu", both) == ["CPUExecutionProvider"]
    assert onnx_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
