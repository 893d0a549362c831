import csv
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.engine.evaluate import json_safe, merge_shards
from segbench.engine.metrics import (
    PER_CASE_COLUMNS,
    SegmentationMetrics,
    confusion_matrix,
    hd95,
    nsd,
    scores_from_confusion,
    write_per_case_csv,
)

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
    assert hd95(a, b, spacing=(3.0, 0.5)) == 2.5  # 5 columns of 0.5 mm
    empty = np.zeros_like(a)
    assert math.isnan(hd95(empty, empty)) and math.isnan(nsd(empty, empty))  # nothing to find, nothing found
    # Missed or invented: the worst case, the diagonal of the 1 x 10 array (in its unit); NSD 0.
    assert hd95(a, empty) == hd95(empty, a) == pytest.approx(math.sqrt(1 + 10**2))
    assert hd95(a, empty, spacing=(3.0, 0.5)) == pytest.approx(math.sqrt(3**2 + 5**2))
    assert nsd(a, empty) == nsd(empty, a) == 0.0


def _squares(offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # Two 4 x 4 squares in a 12 x 12 image, the second moved by ``offset`` (rows, columns).
    a, b = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    a[2:6, 2:6] = True
    b[2 + offset[0] : 6 + offset[0], 2 + offset[1] : 6 + offset[1]] = True
    return a, b


def test_squares_offset_by_two_pixels_by_hand():
    # Each square's surface is its 12-pixel ring. B = A moved 2 columns right. From A's ring to B's:
    # the left column (4 pixels) is 2 away; the top and bottom pixels of column 4 and of column 5 lie
    # on B's ring (0); column 3's top and bottom and column 5's middle two are 1 away. So 4 x 0,
    # 4 x 1, 4 x 2 each way; pooled, 24 distances, eight each of 0, 1, 2.
    a, b = _squares((0, 2))
    assert hd95(a, b) == 2.0  # the 95th percentile sits among the eight 2s
    assert nsd(a, b, tolerance=1.0) == pytest.approx(16 / 24)
    assert nsd(a, b, tolerance=0.0) == pytest.approx(8 / 24)
    assert nsd(a, b, tolerance=2.0) == 1.0
    assert nsd(a, a, tolerance=0.0) == 1.0


def test_anisotropic_spacing_by_hand():
    # Rows 1 mm apart, columns 2 mm. Moved 2 columns (the 2-mm axis): the left column is now 4 mm
    # from B's ring and HD95 doubles; column 5's middle pixels are 1 mm from B's top/bottom pixels of
    # that column (a row away), column 3's top and bottom 2 mm from column 4's. Each way 4 x 0, 2 x 1,
    # 2 x 2, 4 x 4 (mm).
    a, b = _squares((0, 2))
    assert hd95(a, b, spacing=(1.0, 2.0)) == 4.0
    assert nsd(a, b, tolerance=1.0, spacing=(1.0, 2.0)) == pytest.approx(12 / 24)
    assert nsd(a, b, tolerance=2.0, spacing=(1.0, 2.0)) == pytest.approx(16 / 24)
    # Moved 2 rows (the 1-mm axis): the same millimetres as the pixels of the isotropic case.
    a, b = _squares((2, 0))
    assert hd95(a, b, spacing=(1.0, 2.0)) == 2.0
    assert nsd(a, b, tolerance=1.0, spacing=(1.0, 2.0)) == pytest.approx(16 / 24)
    with pytest.raises(ValueError, match="does not fit a 2D array"):
        hd95(a, b, spacing=(1.0, 1.0, 1.0))


def _brute_force_distances(a, b, spacing):
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    sa = np.argwhere(a & ~ndimage.binary_erosion(a, structure, border_value=0)) * np.asarray(spacing)
    sb = np.argwhere(b & ~ndimage.binary_erosion(b, structure, border_value=0)) * np.asarray(spacing)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return np.concatenate([d.min(1), d.min(0)])


@pytest.mark.parametrize("seed, spacing", [(0, (1.0, 1.0, 1.0)), (1, (1.0, 1.0, 1.0)), (2, (3.0, 0.7, 1.2))])
def test_surface_figures_match_brute_force_in_3d(seed, spacing):
    rng = np.random.default_rng(seed)
    a = ndimage.binary_dilation(rng.random((6, 12, 12)) > 0.97, iterations=2)
    b = ndimage.binary_dilation(rng.random((6, 12, 12)) > 0.97, iterations=2)
    distances = _brute_force_distances(a, b, spacing)
    assert hd95(a, b, spacing=spacing) == pytest.approx(np.percentile(distances, 95))
    for tolerance in (1.0, 2.0):  # 2.5 would tie with sqrt(0.7^2 + 2.4^2): float noise decides
        assert nsd(a, b, tolerance, spacing=spacing) == pytest.approx((distances <= tolerance).mean())


def test_per_case_figures_are_three_dimensional_and_in_mm_with_spacing():
    # One voxel each, on neighbouring slices of one case: 1 voxel apart in 3D (per slice: one side empty).
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    gt = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 1, 1], gt[1, 1, 1] = 1, 1
    metrics = SegmentationMetrics(2, 255)
    metrics.update(pred, gt, ["vol", "vol"], [0, 1])
    out = metrics.compute()
    assert out["hd95_fg"] == 1.0 and out["nsd_fg"] == 1.0 and out["distance_unit"] == "px"
    # 3 mm slices, 0.5 mm pixels: the voxels are 3 mm apart, beyond tau = 2 mm.
    metrics = SegmentationMetrics(2, 255, nsd_tolerance=2.0)
    metrics.update(pred, gt, ["vol", "vol"], [0, 1], [(3.0, 0.5, 0.5)] * 2)
    out = metrics.compute()
    assert out["hd95_fg"] == 3.0 and out["nsd_fg"] == 0.0
    assert out["distance_unit"] == "mm" and out["nsd_tolerance"] == 2.0


def test_empty_structure_rules():
    # Classes bg, one, two; three 1-slice cases of 4 x 6 pixels, 0.5 x 2 mm.
    spacing = (9.0, 0.5, 2.0)  # slice thickness unused: one slice is scored in 2D
    diagonal = math.sqrt((4 * 0.5) ** 2 + (6 * 2.0) ** 2)
    found = torch.zeros(1, 4, 6, dtype=torch.long)
    found[0, 1:3, 1:3] = 1
    missed_gt = torch.zeros(1, 4, 6, dtype=torch.long)
    missed_gt[0, 0, 0] = 2
    metrics = SegmentationMetrics(3, 255, ["bg", "one", "two"])
    metrics.update(found, found, ["found"], [0], [spacing])  # one: perfect; two: absent from both
    metrics.update(found, missed_gt, ["missed"], [0], [spacing])  # one: invented; two: missed
    out = metrics.compute()
    assert out["num_cases"] == 2
    assert out["dice_per_case"] == {"one": 0.5, "two": 0.0}  # (1 + 0) / 2; two's "found" NaN is not counted
    assert out["nsd_per_case"] == {"one": 0.5, "two": 0.0}
    assert out["hd95_per_case"]["one"] == pytest.approx(diagonal / 2)  # (0 + worst) / 2
    assert out["hd95_per_case"]["two"] == pytest.approx(diagonal)
    assert out["hd95_undefined"] == 1 and out["hd95_worst_case"] == 2
    assert out["nsd_fg"] == 0.25 and out["dice_fg_per_case"] == 0.25
    assert out["hd95_fg"] == pytest.approx(0.75 * diagonal)
    rows = metrics.per_case_rows()
    assert [(r["case"], r["class"], r["ref_empty"], r["pred_empty"]) for r in rows] == [
        ("found", "one", False, False), ("found", "two", True, True),
        ("missed", "one", True, False), ("missed", "two", False, True),
    ]
    assert [r["dice"] for r in rows[2:]] == [r["iou"] for r in rows[2:]] == [r["nsd"] for r in rows[2:]] == [0.0, 0.0]
    assert all(math.isnan(rows[1][k]) for k in ("dice", "iou", "nsd", "hd95"))
    assert rows[2]["hd95"] == rows[3]["hd95"] == pytest.approx(diagonal)


def test_per_case_rows_and_csv(tmp_path):
    # Class one: pred 2 pixels, truth 3, overlap 2 -> Dice 0.8, IoU 2/3. Surface distances: all 0
    # except the truth's third pixel, 1 px from the prediction: HD95 = 95th percentile of [0,0,0,0,1].
    pred = torch.tensor([[[1, 1, 0, 0]]])
    gt = torch.tensor([[[1, 1, 1, 255]]])
    metrics = SegmentationMetrics(2, 255, ["bg", "one"], nsd_tolerance=0.5)
    metrics.update(pred, gt, ["img"], [0])
    metrics.update(torch.zeros_like(pred), torch.zeros_like(gt), ["blank"], [0])
    rows = metrics.per_case_rows()
    assert list(rows[0]) == list(PER_CASE_COLUMNS)
    assert rows[0]["case"] == "img" and rows[0]["class"] == "one"
    assert rows[0]["dice"] == pytest.approx(0.8) and rows[0]["iou"] == pytest.approx(2 / 3)
    assert rows[0]["nsd"] == pytest.approx(4 / 5)
    assert rows[0]["hd95"] == pytest.approx(np.percentile([0, 0, 0, 0, 1], 95))
    assert (rows[0]["ref_empty"], rows[0]["pred_empty"]) == (False, False)
    path = tmp_path / "cases.csv"
    write_per_case_csv(path, rows)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(PER_CASE_COLUMNS)
    assert float(read[0]["dice"]) == rows[0]["dice"] and float(read[0]["hd95"]) == rows[0]["hd95"]  # exact
    assert read[1] == {"case": "blank", "class": "one", "dice": "", "iou": "", "nsd": "", "hd95": "",
                       "ref_empty": "True", "pred_empty": "True"}
    without = SegmentationMetrics(2, 255, compute_hd95=False)
    without.update(pred, gt, ["img"], [0])
    assert math.isnan(without.per_case_rows()[0]["nsd"]) and "nsd_fg" not in without.compute()


def test_spacing_must_agree_within_a_case_and_across_cases():
    zeros = torch.zeros(2, 2, 2, dtype=torch.long)
    metrics = SegmentationMetrics(2, 255)
    with pytest.raises(ValueError, match="slices of case 'a' have different spacings"):
        metrics.update(zeros, zeros, ["a", "a"], [0, 1], [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
    metrics = SegmentationMetrics(2, 255)
    metrics.update(zeros, zeros, ["a", "b"], [0, 0], [(1.0, 1.0, 1.0), None])
    with pytest.raises(ValueError, match="no common unit"):
        metrics.compute()


def test_merged_shards_keep_the_split_case_order():
    # Cases 0..3 of a split shared between two processes (k mod 2): merged, the rows are those of one
    # process that saw every case, in order.
    images = [torch.full((1, 3, 3), k % 2, dtype=torch.long) for k in range(4)]
    truths = [torch.ones(1, 3, 3, dtype=torch.long) for _ in range(4)]
    alone = SegmentationMetrics(2, 255)
    shards = [SegmentationMetrics(2, 255), SegmentationMetrics(2, 255)]
    for k in range(4):
        alone.update(images[k], truths[k], [f"case{k}"], [0])
        shards[k % 2].update(images[k], truths[k], [f"case{k}"], [0])
    for shard in shards:
        shard.finish()
    merged = SegmentationMetrics(2, 255)
    merged.cm, merged.cases = merge_shards([([0, 2], shards[0].cm, shards[0].cases),
                                            ([1, 3], shards[1].cm, shards[1].cases)])
    assert [r["case"] for r in merged.per_case_rows()] == ["case0", "case1", "case2", "case3"]
    assert merged.per_case_rows() == alone.per_case_rows() and torch.equal(merged.cm, alone.cm)
    assert json_safe(merged.compute()) == json_safe(alone.compute())  # NaN == NaN


def test_all_foreground_when_no_background():
    metrics = SegmentationMetrics(4, 255, background=None)
    metrics.update(PRED, GT)
    out = metrics.compute()
    assert out["mIoU_fg"] == out["mIoU"]
    assert list(out["dice_per_case"]) == ["0", "1", "2", "3"]
    assert list(itertools.islice(out["per_class"]["IoU"], 1)) == ["0"]


def test_per_slice_rows_score_each_slice_of_a_volume_alone():
    # Case "v": two slices; slice 0 perfect for class 1, slice 1 half right. Case "img": a 2D image, no slices.
    target = torch.zeros(3, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1
    target[1, :2, :2] = 1
    pred = target.clone()
    pred[1, :2, :2] = 0
    pred[1, 0, :2] = 1  # 2 of 4 pixels: Dice 2*2/(2+4)
    metrics = SegmentationMetrics(2, compute_hd95=False)
    metrics.update(pred[:2], target[:2], ["v", "v"], [1, 0])  # arrival order is not slice order
    metrics.update(pred[2:], target[2:], ["img"], [0])
    rows = metrics.per_slice_rows()
    assert [(r["case"], r["slice"]) for r in rows] == [("v", 0), ("v", 1)]
    assert rows[0]["dice"] == pytest.approx(2 * 2 / 6) and rows[1]["dice"] == 1.0  # index 0 got pred[1]
    assert math.isnan(metrics.per_case_rows()[1]["dice"])  # the empty 2D image: class absent from both
