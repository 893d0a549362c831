"""int8 post-training quantization (``segbench.export.quantize``, ``segbench export --quantize int8``) and its
evaluation against fp32 (``segbench eval --engine onnx-int8 --compare``), on a run folder and a data folder
the tests write themselves."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import segbench

pytest.importorskip("onnxruntime")

SIZE = 32


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "segbench_home"))  # never the user's ~/.cache


def _smooth_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of two soft blobs (uint8) and its mask (the brighter blob is class 1)."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    image = np.zeros((SIZE, SIZE), np.float32)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for level, label in ((200, 1), (90, 0)):
        cy, cx = rng.uniform(6, SIZE - 6, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 6) ** 2))
        image += level * blob
        if label:
            mask[blob > 0.5] = label
    return np.clip(image + 20, 0, 255).astype(np.uint8), mask


def _data_folder(root, train: int = 6, val: int = 3):
    """images/{train,val} + masks/{train,val}: training stems tr*, validation stems va* (told apart by name)."""
    rng = np.random.default_rng(0)
    for split, prefix, count in (("train", "tr", train), ("val", "va", val)):
        for k in range(count):
            image, mask = _smooth_image(rng)
            for kind, array in (("images", image), ("masks", mask)):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / kind / split / f"{prefix}{k}.png")
    return root


def _run_folder(run_dir, data_root, *, arch="unet", options=None, seed=0):
    """A run folder as `segbench train` leaves it (best.pt holding weights, config and data info), untrained."""
    from segbench.config import Config, ModelConfig, config_to_dict
    from segbench.data import AugmentConfig, DataConfig, load_data
    from segbench.engine.checkpoint import CHECKPOINT_FORMAT, DataInfo, save_checkpoint

    options = options if options is not None else {"base_width": 8}
    cfg = Config(model=ModelConfig(arch=arch, options=options),
                 data=DataConfig(source=str(data_root), augment=AugmentConfig(crop_size=(SIZE, SIZE))))
    info = DataInfo.of(load_data(cfg.data)) if data_root.is_dir() else DataInfo("toy", 2, 1, ["background", "blob"], 255)
    torch.manual_seed(seed)
    model = segbench.build_model(arch, num_classes=info.num_classes, in_channels=info.in_channels, **options).eval()
    run_dir.mkdir(parents=True)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": config_to_dict(cfg),
                     "data_info": info.to_dict(), "iteration": 1, "metrics": {}}, run_dir / "best.pt")
    return run_dir, model


def _invoke(*args):
    from segbench.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_calibration_draws_unaugmented_images_of_the_training_split_only(tmp_path):
    from segbench.data import DataConfig, load_data
    from segbench.export.quantize import calibration_set

    data = load_data(DataConfig(source=str(_data_folder(tmp_path / "data"))))
    train = data.splits["train"]
    drawn = calibration_set(train, 4, seed=3)
    assert len(drawn.ids) == 4 and drawn.available == 6 and drawn.split == "train"
    assert all(case.startswith("tr") and index == 0 for case, index in drawn.ids)
    assert calibration_set(train, 4, seed=3).ids == drawn.ids  # deterministic
    assert calibration_set(train, 4, seed=4).ids != drawn.ids  # the seed chooses
    assert {c for c, _ in calibration_set(train, 50, seed=0).ids} == {f"tr{k}" for k in range(6)}  # all, once each
    # As inference prepares them: normalised, not augmented (the split itself flips, rotates and adds noise).
    plain = {item["case"]: item["image"] for item in train.unaugmented()}
    for image, (case, _) in zip(drawn.images, drawn.ids):
        assert image.shape == (1, 1, SIZE, SIZE) and torch.equal(image[0], plain[case])
    assert any(not torch.equal(train[i]["image"], plain[train[i]["case"]]) for i in range(len(train)))
    resized = calibration_set(train, 2, seed=0, size=(24, 20))
    assert all(image.shape == (1, 1, 24, 20) for image in resized.images)
    with pytest.raises(ValueError, match="at least 1"):
        calibration_set(train, 0)


def test_int8_model_agrees_with_fp32_within_the_logits_scale(tmp_path):
    from segbench.data import DataConfig, load_data
    from segbench.export.onnx import export_onnx, load_onnx_model
    from segbench.export.quantize import calibration_set, quantize_int8

    data = load_data(DataConfig(source=str(_data_folder(tmp_path / "data", train=8))))
    # Trained a little, so that its classes depend on the image (an untrained net's arg-max is one class
    # everywhere and agrees with anything).
    torch.manual_seed(0)
    model = segbench.build_model("unet", num_classes=2, in_channels=1, base_width=8)
    train = [item for item in data.splits["train"].unaugmented()]
    x, y = torch.stack([i["image"] for i in train]), torch.stack([i["mask"] for i in train])
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    export_onnx(model, tmp_path / "model.onnx", input_size=(SIZE, SIZE), in_channels=1)
    info = quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", calibration_set(data.splits["train"], 8))
    fp32, int8 = load_onnx_model(tmp_path / "model.onnx"), load_onnx_model(tmp_path / "model.int8.onnx")
    assert int8.info == fp32.info  # the export's metadata travels with the quantized graph
    images = torch.stack([item["image"] for item in data.splits["val"]])  # smooth inputs calibration did not see
    a, b = fp32(images), int8(images)
    assert 0.05 < (a.argmax(1) == 1).float().mean() < 0.95  # both classes predicted: agreement means something
    # Measured: 0.02 of the scale and 99.3% of the pixels; calibrated on blank (or 10x dimmed) images instead,
    # ranges that clip every activation: about 1.0 and 83-88%.
    assert (a - b).abs().max().item() < 0.1 * a.abs().max().item()
    assert (a.argmax(1) == b.argmax(1)).float().mean().item() > 0.97
    assert info.quantized_ops.get("Conv", 0) >= 10 and info.format == "QDQ" and info.per_channel
    assert 0.97 < info.argmax_agreement <= 1 and info.max_logit_error < 0.1


def test_export_quantize_int8_writes_the_model_and_a_sidecar_of_its_settings(tmp_path):
    data_root = _data_folder(tmp_path / "data")
    run_dir, model = _run_folder(tmp_path / "run", data_root)
    result = _invoke("export", run_dir, "--quantize", "int8", "--calibration", "4", "--calibration-seed", "7")
    assert result.exit_code == 0, result.output
    assert "int8 QDQ, calibrated on 4 training images, seed 7" in result.output
    sidecar = json.loads((run_dir / "model.int8.onnx.json").read_text())
    assert sidecar["calibration_count"] == 4 and sidecar["calibration_seed"] == 7
    assert sidecar["calibration_split"] == "train" and sidecar["source"] == "model.onnx"
    assert len(sidecar["calibration_ids"]) == 4 and all(i.startswith("tr") for i in sidecar["calibration_ids"])
    assert sidecar["format"] == "QDQ" and sidecar["calibration_method"] == "MinMax"
    assert sidecar["activations"].startswith("uint8") and sidecar["weights"].startswith("int8, symmetric, per output")
    assert sidecar["quantized_ops"]["Conv"] >= 10 and isinstance(sidecar["float_ops"], dict)
    assert (run_dir / "model.onnx").is_file()  # the fp32 export it was quantized from
    from segbench.data import DataConfig, load_data
    from segbench.export.onnx import load_onnx_model

    x = torch.stack([item["image"] for item in load_data(DataConfig(source=str(data_root))).splits["val"]])
    with torch.no_grad():
        expected = model(x)
    got = load_onnx_model(run_dir / "model.int8.onnx")(x)
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_eval_engine_int8_compare_judges_against_fp32_and_prices_both(tmp_path):
    run_dir, _ = _run_folder(tmp_path / "run", _data_folder(tmp_path / "data"))
    assert _invoke("eval", run_dir, "--engine", "onnx-int8").exit_code == 1  # not exported yet: says how
    assert _invoke("export", run_dir, "--quantize", "int8", "--calibration", "4").exit_code == 0
    result = _invoke("eval", run_dir, "--engine", "onnx-int8", "--compare", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "fp32 (model.onnx): val" in result.output and "int8 (model.int8.onnx): val" in result.output
    assert "latency int8/fp32 at batch 1, 32x32" in result.output
    saved = json.loads((tmp_path / "out" / "candidates_val.json").read_text())
    assert saved["best_single"] == "fp32 (model.onnx)" and saved["n_units"] == 3 and saved["unit"] == "case"
    int8_row = next(r for r in saved["rows"] if r["name"].startswith("int8"))
    assert int8_row["latency_ms"] > 0 and abs(int8_row["diff"]) < 0.2
    assert saved["costs"]["latency_ratio"]["ratio_int8_fp32"] > 0
    # The fp32 row is the evaluation loop's on model.onnx: the same Dice as the torch engine's on the run.
    fp32 = _invoke("eval", run_dir, "--engine", "onnx", "--out", tmp_path / "fp32")
    torch_eval = _invoke("eval", run_dir, "--out", tmp_path / "torch", "--which", "best")
    assert fp32.exit_code == 0 and torch_eval.exit_code == 0, fp32.output + torch_eval.output
    onnx_dice = json.loads((tmp_path / "fp32" / "eval_val.json").read_text())["dice_fg_per_case"]
    torch_dice = json.loads((tmp_path / "torch" / "eval_val.json").read_text())["dice_fg_per_case"]
    assert onnx_dice == pytest.approx(torch_dice, abs=1e-3)


def test_int8_calibration_without_the_run_data_is_one_line_naming_it(tmp_path):
    run_dir, _ = _run_folder(tmp_path / "run", tmp_path / "gone")
    result = _invoke("export", run_dir, "--quantize", "int8")
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = result.output.strip().removeprefix("Error: ")
    assert "\n" not in message and str(tmp_path / "gone") in message and "--data PATH" in message
    assert not (run_dir / "model.onnx").exists()  # refused before exporting anything


def test_int8_export_of_a_dense_crf_model_is_refused_in_one_line(tmp_path):
    pytest.importorskip("pydensecrf")
    run_dir, _ = _run_folder(tmp_path / "run", tmp_path / "absent", arch="deeplabv1",
                             options={"crf": "dense", "base_width": 8})
    result = _invoke("export", run_dir, "--quantize", "int8")
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = result.output.strip().removeprefix("Error: ")
    assert "\n" not in message and "crf='dense'" in message and "crf='conv'" in message
    assert not (run_dir / "model.onnx").exists() and not (run_dir / "model.int8.onnx").exists()
