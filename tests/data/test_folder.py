"""Folder pairs (images/ + masks/): bit depths, colour modes, split layouts, split files, collation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data import AugmentConfig, DataConfig, DataError, load_data
from segbench.data.dataset import pad_collate
from segbench.data.splits import _case_position

NO_AUGMENT = AugmentConfig(enabled=False)


def test_grey_pngs_seeded_split(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=10)
    data = load_data(DataConfig(source=str(root), val_fraction=0.3, augment=NO_AUGMENT))
    assert data.format == "folder" and data.in_channels == 1 and data.num_classes == 2
    assert data.class_names == ["background", "class_1"]
    train, val = data.splits["train"], data.splits["val"]
    assert len(train) + len(val) == 10 and len(val) >= 1 and "test" not in data.splits
    cases = {train[i]["case"] for i in range(len(train))} | {val[i]["case"] for i in range(len(val))}
    assert cases == {f"img{k}" for k in range(10)}
    # Each case's side is its own hash's: (seed, case id) below val_fraction is val.
    by_hash = {f"img{k}" for k in range(10) if _case_position(f"img{k}", 0) < 0.3}
    assert {val[i]["case"] for i in range(len(val))} == (by_hash or {val[0]["case"]})
    item = val[0]
    assert item["image"].shape == (1, 12, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (12, 16) and item["mask"].dtype == torch.long and item["index"] == 0
    # The stored mask is the file's content.
    k = int(item["case"][3:])
    expected = helpers.disc_mask((12, 16), (6, 8), 2 + k % 3)
    assert torch.equal(item["mask"], torch.from_numpy(expected.astype(np.int64)))
    # Dataset normalisation: the train split is standardised per channel.
    pixels = torch.stack([train[i]["image"] for i in range(len(train))])
    assert abs(pixels.mean().item()) < 1e-4 and abs(pixels.std().item() - 1) < 1e-2
    # Same seed, same split; another seed, another split.
    again = load_data(DataConfig(source=str(root), val_fraction=0.3))
    assert [again.splits["val"][i]["case"] for i in range(len(val))] == [val[i]["case"] for i in range(len(val))]
    other = load_data(DataConfig(source=str(root), val_fraction=0.3, seed=1)).splits["val"]
    assert {other[i]["case"] for i in range(len(other))} != {val[i]["case"] for i in range(len(val))}


def test_rgb_jpeg_images_use_imagenet_statistics(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=4, rgb=True, image_ext=".jpg")
    data = load_data(DataConfig(source=str(root), augment=NO_AUGMENT))
    assert data.in_channels == 3 and data.normalization.kind == "imagenet"
    raw = np.asarray(Image.open(root / "images" / f"{data.splits['val'][0]['case']}.jpg"), dtype=np.float32)
    expected = (raw[6, 8] / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(data.splits["val"][0]["image"][:, 6, 8].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_sixteen_bit_grey(tmp_path, helpers, ext):
    root = tmp_path / "ds"
    for k in range(3):
        image = np.full((8, 8), 1000 * (k + 1), dtype=np.uint16)
        image[0, 0] = 60000  # beyond 8 bits: must survive
        helpers.save_image(root / "images" / f"c{k}{ext}", image)
        helpers.save_image(root / "masks" / f"c{k}.png", np.eye(8, dtype=np.uint8))
    assert Image.open(root / "images" / f"c0{ext}").mode.startswith("I;16")
    data = load_data(DataConfig(source=str(root), val_fraction=0.34, normalize="none", augment=NO_AUGMENT))
    item = data.splits["val"][0]
    k = int(item["case"][1])
    assert item["image"][0, 0, 0].item() == 60000 and item["image"][0, 3, 4].item() == 1000 * (k + 1)


def test_mixed_grey_and_rgb_images_become_rgb(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=3, rgb=True)
    helpers.save_image(root / "images" / "grey.png", np.full((12, 16), 7, dtype=np.uint8))
    helpers.save_image(root / "masks" / "grey.png", np.zeros((12, 16), dtype=np.uint8))
    data = load_data(DataConfig(source=str(root), normalize="none", split_file=None, val_fraction=0.25))
    assert data.in_channels == 3 and any("grey image(s) among RGB" in n for n in data.notices)


@pytest.mark.parametrize("layout", ["images/train", "train/images"])
def test_split_subfolders(tmp_path, helpers, layout):
    root = tmp_path / "ds"
    counts = {"train": 4, "val": 2, "test": 1}
    for split, count in counts.items():
        for k in range(count):
            image_dir = root / ("images" if layout == "images/train" else split) / (split if layout == "images/train" else "images")
            mask_dir = root / ("masks" if layout == "images/train" else split) / (split if layout == "images/train" else "masks")
            helpers.save_image(image_dir / f"{split}{k}.png", np.full((6, 6), k, dtype=np.uint8))
            helpers.save_image(mask_dir / f"{split}{k}.png", np.eye(6, dtype=np.uint8))
    data = load_data(DataConfig(source=str(root)))
    assert {name: len(ds) for name, ds in data.splits.items()} == counts
    assert data.splits["test"][0]["case"] == "test0"


def test_a_split_without_its_mask_folder_is_named(tmp_path, helpers):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        helpers.save_image(root / "images" / split / f"{split}0.png", np.zeros((6, 6), dtype=np.uint8))
    helpers.save_image(root / "masks" / "train" / "train0.png", np.eye(6, dtype=np.uint8))
    with pytest.raises(DataError, match=r"images/val has no matching .*masks/val folder"):
        load_data(DataConfig(source=str(root)))


def test_split_file_and_unknown_case(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=5)
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["img0", "img1", "img2"], "val": ["img3"], "test": ["img4"]}))
    data = load_data(DataConfig(source=str(root), split_file=str(split_file)))
    assert [data.splits[s][0]["case"] for s in ("val", "test")] == ["img3", "img4"]
    split_file.write_text(json.dumps({"train": ["img0", "nope"], "val": ["img3"]}))
    with pytest.raises(DataError, match="nope"):
        load_data(DataConfig(source=str(root), split_file=str(split_file)))


def test_suffixes_pair_cityscapes_style_names(tmp_path, helpers):
    root = tmp_path / "ds"
    for k in range(3):
        helpers.save_image(root / "images" / f"f{k}_leftImg8bit.png", np.zeros((4, 4), dtype=np.uint8))
        helpers.save_image(root / "masks" / f"f{k}_gtFine_labelTrainIds.png", np.eye(4, dtype=np.uint8))
    data = load_data(DataConfig(source=str(root), image_suffix="_leftImg8bit", mask_suffix="_gtFine_labelTrainIds", val_fraction=0.34))
    assert data.splits["val"][0]["case"] in {"f0", "f1", "f2"}


def test_pad_collate_mixed_sizes(tmp_path, helpers):
    root = tmp_path / "ds"
    for k, size in enumerate([(5, 7), (9, 4), (6, 6)]):
        helpers.save_image(root / "images" / f"c{k}.png", np.full(size, 50 * k, dtype=np.uint8))
        helpers.save_image(root / "masks" / f"c{k}.png", np.ones(size, dtype=np.uint8))
    data = load_data(DataConfig(source=str(root), val_fraction=0.34, augment=NO_AUGMENT))
    assert data.report.image_sizes == ((5, 7), (9, 4))
    train = data.splits["train"]
    batch = pad_collate([train[0], train[1]], ignore_index=255)
    heights = [train[i]["mask"].shape[0] for i in range(2)]
    widths = [train[i]["mask"].shape[1] for i in range(2)]
    assert batch["image"].shape == (2, 1, max(heights), max(widths))
    h, w = heights[0], widths[0]
    assert (batch["mask"][0, :h, :w] == 1).all() and (batch["mask"][0].eq(255).sum() == max(heights) * max(widths) - h * w)


def test_prepare_image_matches_training_input(tmp_path, helpers):
    from segbench.data.prepare import prepare_image, restore_image

    root = helpers.make_folder(tmp_path / "ds", count=4, rgb=True)
    cfg = DataConfig(source=str(root), resize=(6, 8), augment=NO_AUGMENT)
    data = load_data(cfg)
    item = data.splits["val"][0]
    stored, image = prepare_image(root / "images" / f"{item['case']}.png", data.normalization.to_dict(),
                                  data.in_channels, cfg)
    assert stored.shape == (3, 12, 16) and torch.allclose(torch.from_numpy(image), item["image"])
    assert restore_image(item["mask"].numpy(), stored.shape[-2:]).shape == (12, 16)


def test_same_stem_in_two_split_folders_gets_split_prefixed_case_ids(tmp_path, helpers):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        helpers.save_image(root / split / "images" / "0001.png", np.zeros((4, 4), dtype=np.uint8))
        helpers.save_image(root / split / "masks" / "0001.png", np.eye(4, dtype=np.uint8))
    data = load_data(DataConfig(source=str(root)))
    assert (data.splits["train"][0]["case"], data.splits["val"][0]["case"]) == ("train/0001", "val/0001")
