"""NIfTI volumes: slicing, per-volume normalisation, split by volume or slab, empty slices, predict round trip."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from segbench.data import AugmentConfig, DataConfig, DataError, load_data
from segbench.data.volumes import normalize_volume, prepare_volume, read_volume, restore_volume, write_labels

NO_AUGMENT = AugmentConfig(enabled=False)


def _write_cases(helpers, root, count, shape=(10, 12, 8), images="imagesTr", labels="labelsTr"):
    for k in range(count):
        image, label = helpers.ball_volume(shape, seed=k)
        helpers.save_nifti(root / images / f"vol{k}.nii.gz", image * (k + 1))  # different scale per volume
        helpers.save_nifti(root / labels / f"vol{k}.nii.gz", label)


def test_volumes_are_sliced_normalised_and_split_by_volume(tmp_path, helpers):
    root = tmp_path / "task"
    _write_cases(helpers, root, 5)
    data = load_data(DataConfig(source=str(root), keep_empty_slices=1.0, augment=NO_AUGMENT))
    assert data.format == "nifti" and data.volumetric and data.num_classes == 3 and data.in_channels == 1
    val = data.splits["val"]
    assert len(val) == 8 and len(data.splits["train"]) == 32  # 1 of 5 volumes, 8 axial slices each
    assert {val[i]["case"] for i in range(len(val))} == {val[0]["case"]}  # one volume, all its slices
    assert [val[i]["index"] for i in range(len(val))] == list(range(8))
    train_cases = {data.splits["train"][i]["case"] for i in range(len(data.splits["train"]))}
    assert val[0]["case"] not in train_cases
    # Axial slice z of the stored volume, (X, Y) in-plane, and per-volume z-scored intensities.
    k = int(val[0]["case"][3:])
    image, labels = helpers.ball_volume(seed=k)
    assert torch.equal(val[4]["mask"], torch.from_numpy(labels[:, :, 4].astype(np.int64)))
    volume = torch.stack([val[i]["image"][0] for i in range(8)], dim=-1)
    assert torch.allclose(volume, torch.from_numpy(normalize_volume(image * (k + 1))), atol=1e-5)
    assert abs(volume.mean().item()) < 0.05 and abs(volume.std().item() - 1) < 0.05


def test_reoriented_volume_gives_the_same_slices(tmp_path, helpers):
    image, labels = helpers.ball_volume(centre=(3, 5, 4))
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored as LAS: x runs right-to-left
    for name, affine, flip in (("ras", np.eye(4), False), ("las", flipped_affine, True)):
        root = tmp_path / name
        for k in range(2):
            helpers.save_nifti(root / "images" / f"v{k}.nii.gz", image[::-1].copy() if flip else image, affine)
            helpers.save_nifti(root / "labels" / f"v{k}.nii.gz", labels[::-1].copy() if flip else labels, affine)
    ras = load_data(DataConfig(source=str(tmp_path / "ras"), normalize="none", augment=NO_AUGMENT))
    las = load_data(DataConfig(source=str(tmp_path / "las"), normalize="none", augment=NO_AUGMENT))
    for split in ("train", "val"):
        for i in range(len(ras.splits[split])):
            assert torch.equal(ras.splits[split][i]["mask"], las.splits[split][i]["mask"])
            assert torch.equal(ras.splits[split][i]["image"], las.splits[split][i]["image"])


def test_single_volume_split_by_slab_with_gap(tmp_path, helpers):
    root = tmp_path / "one"
    image, labels = helpers.ball_volume((6, 6, 60), radius=40)
    helpers.save_nifti(root / "imagesTr" / "only.nii.gz", image)
    helpers.save_nifti(root / "labelsTr" / "only.nii.gz", labels)
    data = load_data(DataConfig(source=str(root), val_fraction=0.2, test_fraction=0.1, slab_gap=2, augment=NO_AUGMENT))
    indices = {s: sorted(ds.items[i][1] for i in range(len(ds))) for s, ds in data.splits.items()}
    assert len(indices["val"]) >= 8 and len(indices["test"]) >= 3
    for held in ("val", "test"):
        for other in set(indices) - {held}:
            distance = min(abs(a - b) for a in indices[held] for b in indices[other])
            assert distance > 2, (held, other, distance)
    assert any("slab" in n for n in data.notices)


def test_empty_slices_are_subsampled_per_epoch(tmp_path, helpers):
    root = tmp_path / "task"
    for k in range(3):
        image, labels = helpers.ball_volume((8, 8, 20), centre=(4, 4, 4), radius=2.5, seed=k)
        helpers.save_nifti(root / "imagesTr" / f"v{k}.nii.gz", image)
        helpers.save_nifti(root / "labelsTr" / f"v{k}.nii.gz", labels)
    data = load_data(DataConfig(source=str(root), val_fraction=0.34, keep_empty_slices=0.25))
    train = data.splits["train"]
    # Per volume: slices 2..6 hold the ball (5 with foreground), 15 are empty -> 2 * (5 + round(0.25 * 30) / 2).
    assert len(train) == 10 + round(0.25 * 30)
    assert data.report.splits["train"].slices == 40 and data.report.train_slices_per_epoch == len(train)
    first = list(train.items)
    train.set_epoch(1)
    assert len(train) == len(first) and train.items != first
    train.set_epoch(0)
    assert train.items == first
    assert len(data.splits["val"]) == 20  # val keeps every slice


def test_prepare_and_restore_round_trip(tmp_path, helpers):
    image, labels = helpers.ball_volume((9, 7, 5))
    affine = np.array([[0, 0, 2.0, 0], [-1.5, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # permuted and flipped axes
    path = helpers.save_nifti(tmp_path / "in.nii.gz", image, affine)
    prepared = prepare_volume(path, slice_axis=2, resize=(16, 12))
    assert prepared.slices.shape[1:] == (1, 16, 12)
    stored_labels = nib.Nifti1Image(labels, affine)
    canonical = nib.as_closest_canonical(stored_labels).get_fdata().astype(np.int64)
    slices = np.moveaxis(canonical, 2, 0)
    upsampled = torch.nn.functional.interpolate(torch.from_numpy(slices)[:, None].float(), size=(16, 12), mode="nearest-exact")
    restored = restore_volume(upsampled[:, 0].long().numpy(), prepared)
    assert restored.shape == labels.shape
    # Nearest up- then down-sampling by a non-integer factor may move a boundary voxel; the bulk returns.
    assert (restored == labels).mean() > 0.95
    native = prepare_volume(path, slice_axis=2)
    assert np.array_equal(restore_volume(slices, native), labels)  # no resize: exact inverse
    write_labels(restored, prepared, tmp_path / "out.nii.gz")
    written, written_affine, _ = read_volume(tmp_path / "out.nii.gz")
    assert np.array_equal(written, restored) and np.allclose(written_affine, affine)


# Stored axes 0, 1, 2 run along world -y (1.5 mm), z (1 mm), x (2 mm): RAS+ reorientation permutes
# them to x, y, z with voxel sizes (2, 1.5, 1) mm and shape (8, 10, 12) for a stored (10, 12, 8).
ANISOTROPIC = np.array([[0, 0, 2.0, 0], [-1.5, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize(
    "slice_axis, resize, mask_shape, spacing",
    [
        (2, None, (8, 10), (1.0, 2.0, 1.5)),  # axial: 1 mm apart, rows along x (2 mm), columns along y
        (0, None, (10, 12), (2.0, 1.5, 1.0)),  # sagittal: slices along x
        (2, (16, 5), (16, 5), (1.0, 1.0, 3.0)),  # rows 8 -> 16 halve 2 mm, columns 10 -> 5 double 1.5 mm
    ],
)
def test_cached_spacing_follows_reorientation_slicing_and_resize(
    tmp_path, helpers, slice_axis, resize, mask_shape, spacing
):
    root = tmp_path / "task"
    for k in range(3):
        image, labels = helpers.ball_volume((10, 12, 8), seed=k)
        helpers.save_nifti(root / "imagesTr" / f"vol{k}.nii.gz", image, ANISOTROPIC)
        helpers.save_nifti(root / "labelsTr" / f"vol{k}.nii.gz", labels, ANISOTROPIC)
    # nibabel's own reorientation gives the same zooms the cache builder reads from the affine.
    canonical = nib.as_closest_canonical(nib.load(str(root / "labelsTr" / "vol0.nii.gz")))
    assert canonical.header.get_zooms()[:3] == (2.0, 1.5, 1.0)
    cfg = DataConfig(source=str(root), slice_axis=slice_axis, resize=resize, val_fraction=0.34, augment=NO_AUGMENT)
    data = load_data(cfg)
    assert [case["spacing"] for case in data.splits["val"].store.meta["cases"]] == [list(spacing)] * 3
    for split in ("train", "val"):
        item = data.splits[split][0]
        assert item["mask"].shape == mask_shape and item["spacing"] == spacing


class _Background(torch.nn.Module):
    """Predicts background everywhere: every foreground structure is missed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:])
        logits[:, 0] = self.scale
        return logits


def test_evaluation_measures_volumes_in_mm(tmp_path, helpers):
    from segbench.config import EvalConfig
    from segbench.engine.checkpoint import DataInfo
    from segbench.engine.evaluate import evaluate

    root = tmp_path / "task"
    for k in range(3):
        image, labels = helpers.ball_volume((10, 12, 8), seed=k)
        helpers.save_nifti(root / "imagesTr" / f"vol{k}.nii.gz", image, ANISOTROPIC)
        helpers.save_nifti(root / "labelsTr" / f"vol{k}.nii.gz", labels, ANISOTROPIC)
    data = load_data(DataConfig(source=str(root), val_fraction=0.34, augment=NO_AUGMENT))
    info = DataInfo("task", 3, 1, list(data.class_names), data.ignore_index)
    out = evaluate(_Background(3), data.splits["val"], info, EvalConfig())
    # Both foreground classes missed in the one val volume: HD95 is the worst case, the diagonal of its
    # 12 x 8 x 10 voxels of 1 x 2 x 1.5 mm: sqrt(12^2 + 16^2 + 15^2) = 25 mm (in voxels it would be 17.5).
    assert out["distance_unit"] == "mm" and out["hd95_fg"] == 25.0 and out["hd95_worst_case"] == 2
    assert out["nsd_fg"] == 0.0 and out["dice_fg_per_case"] == 0.0 and out["nsd_tolerance"] == 1.0


def test_images_have_no_spacing(tmp_path, helpers):
    data = load_data(DataConfig(source=str(helpers.make_folder(tmp_path / "ds", count=4)), augment=NO_AUGMENT))
    assert "spacing" not in data.splits["val"][0] and "spacing" not in data.splits["train"][0]
    assert data.splits["val"].store.meta["cases"][0]["spacing"] is None


def test_truncated_nifti_is_named(tmp_path, helpers):
    root = tmp_path / "task"
    _write_cases(helpers, root, 3)
    path = root / "imagesTr" / "vol1.nii.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data)[:200])
    with pytest.raises(DataError, match=r"cannot read .*vol1\.nii\.gz"):
        load_data(DataConfig(source=str(root)))


def test_volume_shape_mismatch(tmp_path, helpers):
    root = tmp_path / "task"
    _write_cases(helpers, root, 3)
    helpers.save_nifti(root / "labelsTr" / "vol2.nii.gz", np.zeros((10, 12, 7), dtype=np.uint8))
    with pytest.raises(DataError, match=r"vol2\.nii\.gz.*\(10, 12, 8\).*\(10, 12, 7\)"):
        load_data(DataConfig(source=str(root)))


@pytest.mark.parametrize("normalize", ["auto", "dataset"])
def test_prepare_volume_slices_match_training_input(tmp_path, helpers, normalize):
    from segbench.data.prepare import prepare_volume_slices

    root = tmp_path / "task"
    _write_cases(helpers, root, 3)
    cfg = DataConfig(source=str(root), normalize=normalize, val_fraction=0.34, augment=NO_AUGMENT)
    data = load_data(cfg)
    val = data.splits["val"]
    stored, prepared = prepare_volume_slices(root / "imagesTr" / f"{val[0]['case']}.nii.gz",
                                             data.normalization.to_dict(), data.in_channels, cfg)
    slices = prepared.slices
    assert slices.shape == stored.shape == (8, 1, 10, 12) and prepared.canonical_shape == (10, 12, 8)
    assert torch.allclose(torch.from_numpy(slices), torch.stack([val[i]["image"] for i in range(len(val))]), atol=1e-5)
