import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.engine.metrics import SegmentationMetrics, confusion_matrix, hd95, scores_from_confusion

NAN = float("nan")

# 2 x 3 image, one ignored pixel (255). Classes 0..3; class 3 appears in neither map.
GT = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [1, 0, 2]]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, GT, num_classes=4, ignore_index=255)
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # rows: truth, columns: prediction
    assert cm.tolist() == expected


def test_dataset_level_scores_by_hand():
    # TP = [1, 2, 0, 0]; truth areas [2, 2, 1, 0]; predicted areas [2, 3, 0, 0]
    metrics = SegmentationMetrics(4, 255, ["bg", "a", "b", "absent"], background=0)
    metrics.update(PRED, GT, ["img"], [0])
    out = metrics.compute()
    iou = out["per_class"]["IoU"]
    assert iou["bg"] == pytest.approx(1 / 3) and iou["a"] == pytest.approx(2 / 3) and iou["b"] == 0.0
    assert math.isnan(iou["absent"])  # absent from prediction and truth: NaN, left out of the mean
    assert out["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert out["mIoU_fg"] == pytest.approx((2 / 3 + 0) / 2)
    dice = out["per_class"]["Dice"]
    assert (dice["bg"], dice["a"], dice["b"]) == pytest.approx((0.5, 0.8, 0.0))
    assert out["mDice"] == pytest.approx(1.3 / 3) and out["mDice_fg"] == pytest.approx(0.4)
    assert out["aAcc"] == pytest.approx(3 / 5) and out["num_pixels"] == 5
    precision = out["per_class"]["Precision"]
    assert precision["a"] == pytest.approx(2 / 3) and math.isnan(precision["b"])  # b never predicted
    assert out["per_class"]["Recall"]["b"] == 0.0 and math.isnan(out["per_class"]["Acc"]["absent"])
    assert out["mPrecision"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert out["per_class"]["Fscore"]["a"] == pytest.approx(0.8) and out["mFscore"] == pytest.approx(0.65)


def test_scores_accumulate_over_batches():
    one = SegmentationMetrics(4, 255)
    one.update(torch.cat([PRED, PRED.flip(-1)]), torch.cat([GT, GT.flip(-1)]))
    two = SegmentationMetrics(4, 255)
    two.update(PRED, GT)
    two.update(PRED.flip(-1), GT.flip(-1))
    assert torch.equal(one.cm, two.cm)
    assert scores_from_confusion(one.cm)["aAcc"] == pytest.approx(0.6)


def test_per_case_dice_stacks_slices_and_skips_ignored_pixels():
    metrics = SegmentationMetrics(3, 255, ["bg", "one", "two"], background=0, compute_hd95=False)
    # case a: two slices given out of order; class 1: |P|=2 |G|=2 overlap 1 -> 0.5; class 2: 1, 2, 1 -> 2/3
    metrics.update(torch.tensor([[[0, 0], [2, 1]], [[1, 0], [0, 0]]]), torch.tensor([[[0, 0], [2, 2]], [[1, 1], [0, 0]]]),
                   ["a", "a"], [1, 0])
    # case b: class 1 predicted but absent -> 0; class 2 absent from both -> NaN (skipped)
    metrics.update(torch.tensor([[[0, 1], [0, 0]]]), torch.tensor([[[0, 0], [0, 0]]]), ["b"], [0])
    # case c: the pixel predicted 1 on an ignored label is no false positive -> class 1 Dice 1
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 255]]]), ["c"], [0])
    out = metrics.compute()
    assert out["num_cases"] == 3
    assert out["dice_per_case"]["one"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["dice_per_case"]["two"] == pytest.approx(2 / 3)
    assert out["dice_fg_per_case"] == pytest.approx(((1.5 / 3) + 2 / 3) / 2)
    assert "hd95_fg" not in out


def test_cases_must_be_contiguous():
    metrics = SegmentationMetrics(2, 255)
    zeros = torch.zeros(3, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="slices of case 'a' are not contiguous"):
        metrics.update(zeros, zeros, ["a", "b", "a"], [0, 0, 1])


def test_hd95_known_distances_and_empty_masks():
    a, b = np.zeros((1, 10), bool), np.zeros((1, 10), bool)
    a[0, 0], b[0, 5] = True, True
    assert hd95(a, b) == 5.0
    assert hd95(a, a) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a))) and math.isnan(hd95(np.zeros_like(a), a))


def _brute_force_hd95(a, b):
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    sa = np.argwhere(a & ~ndimage.binary_erosion(a, structure, border_value=0))
    sb = np.argwhere(b & ~ndimage.binary_erosion(b, structure, border_value=0))
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


@pytest.mark.parametrize("seed", [0, 1])
def test_hd95_matches_brute_force_in_3d(seed):
    rng = np.random.default_rng(seed)
    a = ndimage.binary_dilation(rng.random((6, 12, 12)) > 0.97, iterations=2)
    b = ndimage.binary_dilation(rng.random((6, 12, 12)) > 0.97, iterations=2)
    assert hd95(a, b) == pytest.approx(_brute_force_hd95(a, b))


def test_hd95_per_case_is_three_dimensional():
    # One voxel each, on neighbouring slices of one case: 1 voxel apart in 3D (per-slice: undefined).
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    gt = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 1, 1], gt[1, 1, 1] = 1, 1
    metrics = SegmentationMetrics(2, 255)
    metrics.update(pred, gt, ["vol", "vol"], [0, 1])
    metrics.update(pred[:1], torch.zeros(1, 4, 4, dtype=torch.long), ["empty"], [0])
    out = metrics.compute()
    assert out["hd95_fg"] == 1.0 and out["hd95_undefined"] == 1
    assert out["dice_fg_per_case"] == 0.0  # vol: no overlap -> 0; empty: predicted, absent -> 0


def test_all_foreground_when_no_background():
    metrics = SegmentationMetrics(4, 255, background=None)
    metrics.update(PRED, GT)
    out = metrics.compute()
    assert out["mIoU_fg"] == out["mIoU"]
    assert list(out["dice_per_case"]) == ["0", "1", "2", "3"]
    assert list(itertools.islice(out["per_class"]["IoU"], 1)) == ["0"]
