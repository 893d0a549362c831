"""nnU-Net raw layout (2D PNG with several channels, 3D NIfTI) and the MMSegmentation layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segbench.data import AugmentConfig, DataConfig, DataError, load_data

NO_AUGMENT = AugmentConfig(enabled=False)


def _dataset_json(root, labels, channels, ending, count):
    root.mkdir(parents=True, exist_ok=True)
    meta = {"channel_names": channels, "labels": labels, "numTraining": count, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))


def test_nnunet_2d_png_two_channels_and_ignore_label(tmp_path, helpers):
    root = tmp_path / "Dataset001_Toy"
    _dataset_json(root, {"background": 0, "cell": 1, "nucleus": 2, "ignore": 3}, {"0": "phase", "1": "dapi"}, ".png", 5)
    for k in range(5):
        for c in range(2):
            helpers.save_image(root / "imagesTr" / f"toy_{k:03d}_{c:04d}.png", np.full((6, 8), 10 * k + c, dtype=np.uint8))
        label = np.zeros((6, 8), dtype=np.uint8)
        label[1:3, 1:3], label[3, 3], label[5, 7] = 1, 2, 3
        helpers.save_image(root / "labelsTr" / f"toy_{k:03d}.png", label)
    data = load_data(DataConfig(source=str(root), normalize="none", augment=NO_AUGMENT))
    assert data.format == "nnunet" and data.in_channels == 2 and data.num_classes == 3
    assert data.class_names == ["background", "cell", "nucleus"]
    item = data.splits["val"][0]
    k = int(item["case"].split("_")[1])
    assert item["image"].shape == (2, 6, 8)
    assert item["image"][:, 0, 0].tolist() == [10 * k, 10 * k + 1]  # channel order _0000, _0001
    assert item["mask"][5, 7].item() == 255 and item["mask"][3, 3].item() == 2


def test_nnunet_missing_channel_file(tmp_path, helpers):
    root = tmp_path / "Dataset002"
    _dataset_json(root, {"background": 0, "x": 1}, {"0": "a", "1": "b"}, ".png", 2)
    for k in range(2):
        helpers.save_image(root / "imagesTr" / f"c{k}_0000.png", np.zeros((4, 4), dtype=np.uint8))
        helpers.save_image(root / "labelsTr" / f"c{k}.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"c0_0001\.png"):
        load_data(DataConfig(source=str(root)))


def test_nnunet_nifti_volumes(tmp_path, helpers):
    root = tmp_path / "Dataset003_Ball"
    _dataset_json(root, {"background": 0, "shell": 1, "core": 2}, {"0": "T1", "1": "T2"}, ".nii.gz", 3)
    for k in range(3):
        image, labels = helpers.ball_volume((8, 8, 6), seed=k)
        helpers.save_nifti(root / "imagesTr" / f"ball_{k:03d}_0000.nii.gz", image)
        helpers.save_nifti(root / "imagesTr" / f"ball_{k:03d}_0001.nii.gz", -image)
        helpers.save_nifti(root / "labelsTr" / f"ball_{k:03d}.nii.gz", labels)
    data = load_data(DataConfig(source=str(root), val_fraction=0.34, augment=NO_AUGMENT))
    assert data.volumetric and data.in_channels == 2 and data.class_names == ["background", "shell", "core"]
    # Whole volumes (6 slices each) on either side; which and how many follow the seeded split's hashes.
    val, train = len(data.splits["val"]), len(data.splits["train"])
    assert val % 6 == 0 and train % 6 == 0 and val >= 6 and train >= 6 and val + train == 18
    image = data.splits["val"][3]["image"]
    assert torch.allclose(image[0], -image[1], atol=1e-5)  # each channel normalised on its own


def test_mmseg_layout_with_reduce_zero_label(tmp_path, helpers):
    root = tmp_path / "ade_like"
    for split, count in (("train", 3), ("val", 2)):
        for k in range(count):
            helpers.save_image(root / "img_dir" / split / f"{split}_{k}.jpg", np.full((4, 5, 3), 100, dtype=np.uint8))
            annotation = np.array([[0, 1, 2, 3, 150]] * 4, dtype=np.uint8)
            helpers.save_image(root / "ann_dir" / split / f"{split}_{k}.png", annotation)
    data = load_data(DataConfig(source=str(root), reduce_zero_label=True, num_classes=150, augment=NO_AUGMENT))
    assert data.format == "mmseg" and len(data.splits["train"]) == 3 and len(data.splits["val"]) == 2
    assert data.splits["val"][0]["mask"][0].tolist() == [255, 0, 1, 2, 149]
    assert data.report.splits["val"].ignored_pixels == 2 * 4


def test_mmseg_requires_matching_ann_dir(tmp_path, helpers):
    root = tmp_path / "broken"
    helpers.save_image(root / "img_dir" / "train" / "a.jpg", np.zeros((4, 4, 3), dtype=np.uint8))
    (root / "ann_dir" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match=r"ann_dir.*train"):
        load_data(DataConfig(source=str(root)))


def test_decathlon_style_4d_images(tmp_path, helpers):
    root = tmp_path / "Task01_Ball"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "edema", "2": "tumour"}, "modality": {"0": "FLAIR", "1": "T1w"}}))
    for k in range(3):
        image, labels = helpers.ball_volume((8, 8, 6), seed=k)
        helpers.save_nifti(root / "imagesTr" / f"ball_{k}.nii.gz", np.stack([image, 2 * image], axis=-1))
        helpers.save_nifti(root / "labelsTr" / f"ball_{k}.nii.gz", labels)
    data = load_data(DataConfig(source=str(root), val_fraction=0.34, augment=NO_AUGMENT))
    assert data.in_channels == 2 and data.class_names == ["background", "edema", "tumour"]
    image = data.splits["val"][2]["image"]
    assert torch.allclose(image[0], image[1], atol=1e-5)  # z-scoring removes the factor 2
