"""Every data check: what is mapped with a notice, and what is refused with a DataError naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from segbench.commands.check import check
from segbench.data import AugmentConfig, DataConfig, DataError, load_data


def test_binary_0_255_masks_are_mapped_with_a_notice(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=4, high=255)
    data = load_data(DataConfig(source=str(root)))
    assert data.num_classes == 2 and data.class_names == ["background", "foreground"]
    assert any("0/255" in n and "0/1" in n for n in data.notices)
    assert set(torch.unique(data.splits["val"][0]["mask"]).tolist()) == {0, 1}
    with pytest.raises(DataError, match="0 and 255"):
        load_data(DataConfig(source=str(root), strict=True))


def test_values_beyond_num_classes_name_the_file_and_values(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=3)
    bad = np.zeros((12, 16), dtype=np.uint8)
    bad[0, :3] = [1, 7, 9]
    helpers.save_image(root / "masks" / "img1.png", bad)
    with pytest.raises(DataError) as error:
        load_data(DataConfig(source=str(root), num_classes=3))
    message = str(error.value)
    assert "img1.png" in message and "7, 9" in message and "img0" not in message
    # The ignore value is allowed anywhere.
    bad[0, :3] = [1, 255, 2]
    helpers.save_image(root / "masks" / "img1.png", bad)
    data = load_data(DataConfig(source=str(root), num_classes=3, val_fraction=0.34))
    assert sum(s.ignored_pixels for s in data.report.splits.values()) == 1


def test_rgb_masks_inferred_palette_explicit_palette_and_refusals(tmp_path, helpers):
    root = tmp_path / "ds"
    colours = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 128, 0)}
    for k in range(3):
        labels = np.zeros((6, 6), dtype=np.uint8)
        labels[:, k:] = 1
        labels[4:, :] = 2
        rgb = np.zeros((6, 6, 3), dtype=np.uint8)
        for label, colour in colours.items():
            rgb[labels == label] = colour
        helpers.save_image(root / "images" / f"c{k}.png", np.zeros((6, 6), dtype=np.uint8))
        helpers.save_image(root / "masks" / f"c{k}.png", rgb)
    inferred = load_data(DataConfig(source=str(root), val_fraction=0.34))
    # Sorted by (r, g, b): black 0, green (0, 128, 0) 1, red 2.
    assert inferred.num_classes == 3 and inferred.palette == [(0, 0, 0), (0, 128, 0), (255, 0, 0)]
    assert any("inferred palette" in n for n in inferred.notices)
    palette = [colours[0], colours[1], colours[2]]
    explicit = load_data(DataConfig(source=str(root), val_fraction=0.34, palette=palette))
    item = explicit.splits["val"][0]
    k = int(item["case"][1])
    expected = np.zeros((6, 6), dtype=np.int64)
    expected[:, k:] = 1
    expected[4:, :] = 2
    assert torch.equal(item["mask"], torch.from_numpy(expected))
    # A mask saved as grey joins the colour masks: grey level v is colour (v, v, v).
    helpers.save_image(root / "images" / "grey.png", np.zeros((6, 6), dtype=np.uint8))
    helpers.save_image(root / "masks" / "grey.png", np.array([[0] * 6, [128] * 6] * 3, dtype=np.uint8))
    with_grey = load_data(
        DataConfig(source=str(root), val_fraction=0.25, palette=palette + [(128, 128, 128)], augment=AugmentConfig(enabled=False))
    )
    grey = [item for split in with_grey.splits.values() for item in split if item["case"] == "grey"]
    assert grey[0]["mask"].tolist() == [[0] * 6, [3] * 6] * 3 and with_grey.num_classes == 4
    (root / "images" / "grey.png").unlink()
    (root / "masks" / "grey.png").unlink()
    with pytest.raises(DataError, match="palette"):
        load_data(DataConfig(source=str(root), strict=True))
    with pytest.raises(DataError, match=r"c\d.png.*\(0, 128, 0\)"):
        load_data(DataConfig(source=str(root), palette=[(0, 0, 0), (255, 0, 0)]))
    noisy = np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)  # JPEG-like noise
    helpers.save_image(root / "masks" / "c0.png", noisy)
    with pytest.raises(DataError, match="distinct colours"):
        load_data(DataConfig(source=str(root)))


def test_p_mode_masks_use_their_indices_and_palette(tmp_path, helpers):
    root = tmp_path / "ds"
    for k in range(3):
        mask = Image.fromarray(np.array([[0, 1], [2, 255]], dtype=np.uint8), mode="P")
        mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        mask.save(root / "masks" / f"c{k}.png")
        helpers.save_image(root / "images" / f"c{k}.png", np.zeros((2, 2, 3), dtype=np.uint8))
    data = load_data(DataConfig(source=str(root), val_fraction=0.34))
    assert data.num_classes == 3 and data.palette == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert data.splits["val"][0]["mask"].tolist() == [[0, 1], [2, 255]]


def test_size_mismatch_names_both_files_and_sizes(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=3)
    helpers.save_image(root / "masks" / "img2.png", np.zeros((10, 16), dtype=np.uint8))
    with pytest.raises(DataError) as error:
        load_data(DataConfig(source=str(root)))
    message = str(error.value)
    assert "img2.png" in message and "images" in message and "masks" in message
    assert "12x16" in message and "10x16" in message


def test_truncated_and_unreadable_files_are_named(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=3, size=(64, 64))
    image = root / "images" / "img1.png"
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    with pytest.raises(DataError, match="img1.png"):
        load_data(DataConfig(source=str(root)))
    image.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="cannot read .*img1.png"):
        load_data(DataConfig(source=str(root)))


def test_missing_mask_names_the_image(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=3)
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(DataError, match=r"no mask .*img1\.png"):
        load_data(DataConfig(source=str(root)))


def test_empty_splits_are_refused(tmp_path, helpers):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
    helpers.save_image(root / "images" / "train" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    helpers.save_image(root / "masks" / "train" / "a.png", np.eye(4, dtype=np.uint8))
    with pytest.raises(DataError, match="val split folder .* holds no images"):
        load_data(DataConfig(source=str(root)))
    flat = helpers.make_folder(tmp_path / "flat", count=3)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["img0", "img1", "img2"], "val": []}))
    with pytest.raises(DataError, match="val hold no cases"):
        load_data(DataConfig(source=str(flat), split_file=str(split_file)))
    single = helpers.make_folder(tmp_path / "single", count=1)
    with pytest.raises(DataError, match="too few"):
        load_data(DataConfig(source=str(single)))


def test_reduce_zero_label(tmp_path, helpers):
    root = tmp_path / "ds"
    for k in range(3):
        helpers.save_image(root / "images" / f"c{k}.png", np.zeros((2, 2), dtype=np.uint8))
        helpers.save_image(root / "masks" / f"c{k}.png", np.array([[0, 1], [2, 255]], dtype=np.uint8))
    data = load_data(DataConfig(source=str(root), reduce_zero_label=True, val_fraction=0.34))
    assert data.num_classes == 2
    assert data.splits["val"][0]["mask"].tolist() == [[255, 0], [1, 255]]


def test_check_command(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=4, high=255)
    runner = CliRunner()
    ok = runner.invoke(check, [str(root), "--cache-dir", str(tmp_path / "cache")])
    assert ok.exit_code == 0, ok.output
    assert "class histogram" in ok.output and "mapped to 0/1" in ok.output and "OK with 1 notice" in ok.output
    strict = runner.invoke(check, [str(root), "--strict", "--cache-dir", str(tmp_path / "cache")])
    assert strict.exit_code != 0 and "0 and 255" in strict.output and "Traceback" not in strict.output
    bad = helpers.make_folder(tmp_path / "bad", count=3)
    helpers.save_image(bad / "masks" / "img0.png", np.full((12, 16), 7, dtype=np.uint8))
    refused = runner.invoke(check, [str(bad), "--num-classes", "2", "--cache-dir", str(tmp_path / "cache")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "data check failed" in refused.output and "img0.png: 7" in refused.output
