"""Issue 15, item 8: 16-bit input to an 8-bit model is refused; Ctrl-C in train says how to resume."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segbench.cli import main
from segbench.commands.train import _interrupted


@pytest.mark.parametrize("rgb", [True, False], ids=["rgb-imagenet-normalised", "grey-dataset-normalised"])
def test_predict_refuses_16_bit_images_for_a_model_trained_on_8_bit(tmp_path, monkeypatch, rgb):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    for k in range(5):
        for kind in ("images", "masks"):
            (data / kind).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((16, 16), np.uint8)
        mask[3:9, 4:12] = 1
        Image.fromarray(mask).save(data / "masks" / f"c{k}.png")
        image = (mask * 200 + 10).astype(np.uint8)
        Image.fromarray(np.stack([image] * 3, -1) if rgb else image).save(data / "images" / f"c{k}.png")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--arch", "unet", "--data", str(data), "--out", str(out), "--quiet",
                                       "--set", "model.options.base_width=4", "--set", "train.iterations=2",
                                       "--set", "train.batch_size=2", "--set", "train.device=cpu"])
    assert result.exit_code == 0, result.output
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(inputs / "deep.png")
    result = CliRunner().invoke(main, ["predict", str(out), str(inputs), str(tmp_path / "pred"), "--which", "last"])
    assert result.exit_code == 1 and result.output.count("Error") == 1  # after the progress bar
    assert "deep.png" in result.output and "8-bit" in result.output
    assert not any((tmp_path / "pred").rglob("*.png"))
    # The same model takes 8-bit input.
    (inputs / "deep.png").unlink()
    Image.fromarray(np.full((16, 16), 40, np.uint8)).save(inputs / "shallow.png")
    result = CliRunner().invoke(main, ["predict", str(out), str(inputs), str(tmp_path / "pred"), "--which", "last"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "shallow_mask.png").is_file()


def test_interrupt_names_the_checkpoint_and_how_to_resume(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _interrupted(tmp_path)
    assert stop.value.code == 130
    message = capsys.readouterr().err
    assert "interrupted" in message and "run the same command again to resume" in message
