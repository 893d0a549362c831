"""Issue 26, item 10: nothing silently surprising. Conflicting options are refused, data problems that
falsify a run are said in `train` (with or without --quiet) and before a sweep, not only in `check`."""

import json
import pickle
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.test_never_lose_files import _invoke, _one_line_error

QUIET_TRAIN = ["--quiet", "--set", "train.iterations=2", "--set", "train.val_interval=2", "--set", "train.batch_size=4",
               "--set", "train.device=cpu", "--set", "eval.test_at_end=false"]


@pytest.fixture
def tiny_arch(tiny_module, monkeypatch, tmp_path):
    """The tiny architecture registered, real data loading (unlike ``tiny_env``), a private cache."""
    from segbench.models.registry import ARCHITECTURES, list_models

    list_models()
    monkeypatch.setitem(ARCHITECTURES, "tiny", tiny_module.TINY_ENTRY)
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))


def _volumes(root, label_affine=None, voxel=1.0, cases=3):
    """imagesTr/ + labelsTr/: a bright box (class 1) in each 12 x 12 x 8 volume of ``voxel`` mm voxels; the
    labels' affine is ``label_affine`` (default: the image's)."""
    affine = np.diag([voxel, voxel, voxel, 1.0])
    for k in range(cases):
        labels = np.zeros((12, 12, 8), np.uint8)
        labels[3 + k : 8 + k, 4:9, 2:6] = 1
        image = (100 + 50 * labels + np.random.default_rng(k).normal(0, 5, labels.shape)).astype(np.float32)
        for sub, array, matrix in (("imagesTr", image, affine), ("labelsTr", labels, label_affine)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine if matrix is None else matrix), str(root / sub / f"case{k}.nii.gz"))
    return root


def _pngs(root, split, count, labels):
    for k in range(count):
        mask = np.zeros((16, 16), np.uint8)
        mask[2:8, 2:8] = 1
        if 2 in labels:
            mask[10:14, 10:14] = 2
        for sub, array in (("images", (mask * 60 + 30).astype(np.uint8)), ("masks", mask)):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / split / f"{split}{k}.png")
    return root


# --- --iterations and --budget iterations:N that disagree ----------------------------------------------------


def test_iterations_and_a_budget_of_other_iterations_are_refused(tmp_path):
    out = tmp_path / "sweep"
    result = _invoke("run", "--archs", "unet", "--iterations", 2, "--budget", "iterations:5", "--out", out)
    assert result.exit_code == 2, result.output
    assert "--iterations 2 and --budget iterations:5" in result.output and not out.exists()


# --- a NIfTI label whose affine disagrees with its image ------------------------------------------------------


def test_a_label_placed_elsewhere_than_its_image_is_warned_in_quiet_train(tiny_arch, tmp_path):
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 3.0  # the label's voxels 3 mm (3 voxels) right of the image's
    data = _volumes(tmp_path / "vols", label_affine=shifted)
    result = _invoke("train", "--arch", "tiny", "--data", data, "--out", tmp_path / "run", "--set",
                     "data.val_fraction=0.34", *QUIET_TRAIN)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "disagree on where their voxels are" in line]
    assert warning and warning[0].startswith("data: warning: image ") and "labelsTr/case" in warning[0], result.output
    assert "3 voxel(s) apart" in warning[0] and "(3 images in all)" in warning[0]


def test_a_label_in_another_orientation_that_disagrees_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])  # the same voxels, stored as if x ran right to left
    message = _one_line_error(_invoke("check", _volumes(tmp_path / "vols", label_affine=flipped)))
    assert "different orientations (RAS and LAS)" in message and "labelsTr/case0.nii.gz" in message


@pytest.mark.parametrize("voxel, shift, warned", [(0.001, 0.0009, True), (10.0, 0.01, False)])
def test_the_affine_tolerance_is_relative_to_the_voxel_size(tmp_path, monkeypatch, voxel, shift, warned):
    """0.9 um at 1 um voxels misplaces the label by 0.9 voxel; 0.01 mm at 10 mm voxels is header rounding."""
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    label_affine = np.diag([voxel, voxel, voxel, 1.0])
    label_affine[0, 3] = shift
    result = _invoke("check", _volumes(tmp_path / "vols", label_affine=label_affine, voxel=voxel))
    assert result.exit_code == 0, result.output
    assert ("affines" in result.output) is warned, result.output  # the warning, or any notice about the affines


# --- a class present only in validation ------------------------------------------------------------------------


def test_a_class_only_in_validation_is_warned_in_quiet_train(tiny_arch, tmp_path):
    data = _pngs(_pngs(tmp_path / "pngs", "train", 4, labels=(1,)), "val", 2, labels=(1, 2))
    result = _invoke("train", "--arch", "tiny", "--data", data, "--out", tmp_path / "run", *QUIET_TRAIN)
    assert result.exit_code == 0, result.output
    assert "warning: class 'class_2' is in val (32 px) but never in train" in result.output, result.output


# --- eval after a case was added -------------------------------------------------------------------------------


def test_eval_after_a_case_was_added_does_not_say_same_cases(tmp_path):
    from segbench.engine.run_folder import SPLIT_FILE, compare_split_record

    saved = {"class_names": ["a", "b"], "splits": {"train": ["x", "y"], "val": ["v"]}, "content_hash": "before"}
    (tmp_path / SPLIT_FILE).write_text(json.dumps(saved))
    now = {"class_names": ["a", "b"], "splits": {"train": ["x", "y", "new"], "val": ["v"]}, "content_hash": "after"}
    [warning] = compare_split_record(tmp_path, now, "val")
    assert "same cases" not in warning and "1 case(s) added to train (e.g. new)" in warning
    assert "the val split holds the cases it held" in warning


# --- a batch larger than the training split --------------------------------------------------------------------


def test_a_batch_larger_than_the_training_split_is_refused_once_before_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = _pngs(_pngs(tmp_path / "pngs", "train", 5, labels=(1,)), "val", 2, labels=(1,))
    out = tmp_path / "sweep"
    result = _invoke("run", data, "--archs", "unet,segnet", "--iterations", 2, "--no-speed", "--no-progress",
                     "--out", out)
    message = _one_line_error(result)  # once, not once per architecture
    assert "serves 5 image(s) per epoch, fewer than train.batch_size=8" in message
    assert "--set train.batch_size=5" in message and not out.exists()  # no run started, OUT untouched


# --- converting a plain pickle -----------------------------------------------------------------------------------


def test_converting_a_plain_pickle_says_what_it_is_without_torchs_warning(tmp_path):
    source = tmp_path / "weights.pkl"
    source.write_bytes(pickle.dumps({"conv.weight": torch.zeros(2)}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _invoke("convert", source, tmp_path / "out.pt", "--from", "torchvision", "--arch", "fcn")
    assert not [w for w in caught if "pickle protocol" in str(w.message)]
    assert "a plain Python pickle (pickle.dump)" in _one_line_error(result) and not (tmp_path / "out.pt").exists()
