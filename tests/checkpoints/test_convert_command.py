import torch
from click.testing import CliRunner

import segbench
from segbench.commands.convert import convert
from segbench.checkpoints.convert.segformer import to_nvlabs

SLIM = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "decoder_dim": 16}


def test_convert_nvlabs_file_and_load_it_back(tmp_path):
    model = segbench.build_model("segformer", 4, **SLIM).eval()
    src, dst = tmp_path / "nvlabs.pth", tmp_path / "segbench.pt"
    torch.save({"state_dict": to_nvlabs(model.state_dict())}, src)
    options = [f"--option={k}={v}" for k, v in SLIM.items()]
    result = CliRunner().invoke(convert, [str(src), str(dst), "--from", "nvlabs", "--arch", "segformer", *options])
    assert result.exit_code == 0, result.output
    assert "missing 0, unexpected 0, shape mismatches 0" in result.output
    fresh = segbench.build_model("segformer", 4, **SLIM).eval()
    fresh.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_convert_refuses_incomplete_mapping(tmp_path):
    src, dst = tmp_path / "bad.pth", tmp_path / "out.pt"
    torch.save({"backbone.nothing.weight": torch.zeros(1)}, src)
    result = CliRunner().invoke(convert, [str(src), str(dst), "--from", "nvlabs", "--arch", "segformer"])
    assert result.exit_code != 0
    assert "missing" in result.output and not dst.exists()


def test_convert_unknown_pair_is_a_clear_error(tmp_path):
    src = tmp_path / "x.pth"
    torch.save({"a": torch.zeros(1)}, src)
    result = CliRunner().invoke(convert, [str(src), str(tmp_path / "y.pt"), "--from", "hf", "--arch", "unet"])
    assert result.exit_code != 0 and "no converter from 'hf' for architecture 'unet'" in result.output
