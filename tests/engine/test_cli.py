import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segbench.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_dir(tiny_cli_run):
    return tiny_cli_run


def test_eval_prints_table_and_writes_json(run_dir, tiny_env):
    result = _invoke("eval", run_dir, "--split", "val")
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "bar" in result.output
    saved = json.loads((run_dir / "eval_val.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert saved["mDice_fg"] == metrics["val"]["mDice_fg"]


def test_resume_without_arguments_uses_the_saved_config(run_dir, tiny_env):
    result = _invoke("train", "--out", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert "resuming with" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--arch", "tinny", "--out", "{tmp}/x"], "unknown architecture 'tinny'. Did you mean 'tiny'?"),
        (["train", "--arch", "tiny", "--out", "{tmp}/x", "--set", "train.lr=fast"], "train.lr: expected a number"),
        (["train", "--arch", "tiny", "--out", "{tmp}/x", "--set", "model.options.widht=4"],
         "unknown option(s) for architecture 'tiny': 'widht' (did you mean 'width'?)"),
        (["train", "{tmp}/missing.yaml", "--out", "{tmp}/x"], "no configuration file"),
        (["eval", "{tmp}/nothing"], "no run folder"),
        (["predict", "{tmp}/nothing", "{tmp}", "{tmp}/out"], "no images or volumes"),
    ],
)
def test_user_errors_are_one_line(tiny_env, tmp_path, args, message):
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_preset_options_are_dropped_for_another_arch(tiny_env, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {arch: unet, options: {base_width: 16}}\ntrain: {iterations: 2, val_interval: 2, "
                      "batch_size: 4, device: cpu}\n")
    result = _invoke("train", preset, "--arch", "tiny", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert "preset options {'base_width': 16} are for unet; tiny uses its own defaults" in result.output


def test_predict_image_and_nifti(run_dir, tiny_env, tmp_path):
    data = tiny_env.TinySegmentation(3, seed=5)
    images = np.stack([data[i]["image"][0].numpy() for i in range(3)], axis=-1)  # (16, 16, 3): x, y, z
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(images[..., 0]).save(inputs / "slice.tif")  # float TIFF: the stored units of training
    # The same physical volume stored twice: RAS, and with the first axis flipped (LAS).
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = 15.0
    nib.save(nib.Nifti1Image(images, ras), inputs / "ras.nii.gz")
    nib.save(nib.Nifti1Image(images[::-1].copy(), las), inputs / "las.nii.gz")

    result = _invoke("predict", run_dir, inputs, tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    mask = np.asarray(Image.open(out / "slice_mask.png"))
    assert mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 1, 2} and len(np.unique(mask)) > 1
    assert Image.open(out / "slice_overlay.png").size == (16, 16)
    ras_seg, las_seg = nib.load(out / "ras_seg.nii.gz"), nib.load(out / "las_seg.nii.gz")
    assert np.array_equal(ras_seg.affine, ras) and np.array_equal(las_seg.affine, las)
    ras_labels, las_labels = np.asarray(ras_seg.dataobj), np.asarray(las_seg.dataobj)
    assert ras_labels.shape == (16, 16, 3) and len(np.unique(ras_labels)) > 1
    assert np.array_equal(las_labels[::-1], ras_labels)  # same anatomy -> same labels, in each file's grid
    # the volume's z-slices are the training-like images: the squares are found
    truth = np.stack([data[i]["mask"].numpy() for i in range(3)], axis=-1)
    assert ((ras_labels == 1) & (truth == 1)).sum() > 0.5 * (truth == 1).sum()
    assert (out / "ras_overlay.png").is_file()


def test_predict_runs_the_network_with_batchnorm_folded(run_dir, tiny_env):
    import torch

    from segbench.engine import load_run_model
    from segbench.engine.predict import _Runner

    runner = _Runner([run_dir], "torch", "best")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.models[0].modules())
    model, _, _ = load_run_model(run_dir)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    images = np.stack([tiny_env.TinySegmentation(4, seed=3)[i]["image"].numpy() for i in range(4)])
    with torch.no_grad(), runner.precision.autocast():
        unfolded = model(torch.from_numpy(images)).argmax(1).numpy()
    labels = runner.labels(images, (16, 16))
    assert (labels == unfolded).mean() > 0.999 and len(np.unique(labels)) > 1


def test_predict_onnx_without_export_is_explained(run_dir, tiny_env, tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(tmp_path / "a.png"), str(tmp_path / "o"),
                                       "--engine", "onnx"])
    assert result.exit_code == 1 and "no ONNX model" in result.output and "segbench export" in result.output


def test_predict_onnx_matches_torch(run_dir, tiny_env, tmp_path):
    pytest.importorskip("onnxruntime")
    from segbench.engine import load_run_model
    from segbench.export.onnx import export_onnx

    model, _, _ = load_run_model(run_dir)
    export_onnx(model, tmp_path / "run" / "model.onnx", input_size=(16, 16), in_channels=1)
    for name in ("best.pt", "config.yaml", "data_info.json"):
        (tmp_path / "run" / name).write_bytes((run_dir / name).read_bytes())
    image = tiny_env.TinySegmentation(1, seed=7)[0]["image"][0].numpy()
    Image.fromarray(image).save(tmp_path / "x.tif")
    (tmp_path / "run" / "best.pt").unlink()  # onnx needs no checkpoint
    assert _invoke("predict", tmp_path / "run", tmp_path / "x.tif", tmp_path / "onnx", "--engine", "onnx").exit_code == 0
    assert _invoke("predict", run_dir, tmp_path / "x.tif", tmp_path / "torch").exit_code == 0
    onnx_mask = np.asarray(Image.open(tmp_path / "onnx" / "x_mask.png"))
    torch_mask = np.asarray(Image.open(tmp_path / "torch" / "x_mask.png"))
    assert np.array_equal(onnx_mask, torch_mask) and len(np.unique(torch_mask)) > 1


def test_eval_with_sliding_window_and_tta(run_dir, tiny_env):
    args = ["eval", run_dir, "--set", "eval.mode=slide", "--set", "eval.window=[8, 8]", "--set", "eval.flips=[horizontal]"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "eval_val.json").read_text())
    assert saved["eval"]["mode"] == "slide" and saved["eval"]["window"] == [8, 8]
    assert saved["mIoU"] is not None
    bad = CliRunner().invoke(main, ["eval", str(run_dir), "--set", "train.lr=1"])
    assert bad.exit_code == 1 and "only eval.* settings can change after training" in bad.output


def test_predict_resizes_like_training_and_back(tiny_env, tmp_path):
    out = tmp_path / "run"
    result = _invoke("train", "--arch", "tiny", "--out", out, "--quiet", "--set", "train.iterations=2",
                     "--set", "train.batch_size=4", "--set", "train.device=cpu", "--set", "data.resize=[8, 8]")
    assert result.exit_code == 0, result.output
    volume = np.random.default_rng(0).normal(size=(20, 12, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii")
    Image.fromarray(volume[..., 0]).save(tmp_path / "i.tif")
    for name in ("v.nii", "i.tif"):
        assert _invoke("predict", out, tmp_path / name, tmp_path / "pred").exit_code == 0
    assert nib.load(tmp_path / "pred" / "v_seg.nii.gz").shape == (20, 12, 3)
    assert np.asarray(Image.open(tmp_path / "pred" / "i_mask.png")).shape == (20, 12)
