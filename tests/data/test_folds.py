"""Cross-validation by case: every case in exactly one validation fold, groups (patients) and volumes
never on both sides, a lone volume folded by slab with the gap, nnU-Net's fold lists honoured."""

import json

import pytest

from segbench.data import DataConfig, DataError
from segbench.data.splits import plan_splits


def _plan(cases, cfg, volumetric=False, slices=None):
    slices = slices or [1] * len(cases)
    return plan_splits(cases, [None] * len(cases), slices, cfg, volumetric=volumetric)


def _members(plan, split, cases):
    return {cases[i] for i, _, _ in plan.ranges.get(split, [])}


@pytest.mark.parametrize("n, k", [(10, 5), (23, 5), (7, 3)])
def test_every_case_is_in_exactly_one_validation_fold(n, k):
    cases = [f"case{i:03d}" for i in range(n)]
    folds = [_members(_plan(cases, DataConfig(folds=k, fold=f)), "val", cases) for f in range(k)]
    assert sorted(c for fold in folds for c in fold) == sorted(cases)  # a partition
    assert max(map(len, folds)) - min(map(len, folds)) <= 1  # balanced
    for f in range(k):
        plan = _plan(cases, DataConfig(folds=k, fold=f))
        assert _members(plan, "train", cases) == set(cases) - folds[f]


def test_a_group_never_sits_on_both_sides_and_a_test_split_is_the_same_in_every_fold():
    cases = [f"patient{p}_scan{s}" for p in range(9) for s in range(3)]
    test_sets = set()
    for f in range(3):
        cfg = DataConfig(folds=3, fold=f, group_pattern=r"(patient\d+)_", test_fraction=0.2)
        plan = _plan(cases, cfg)
        val, train, test = (_members(plan, s, cases) for s in ("val", "train", "test"))
        group = lambda c: c.split("_")[0]  # noqa: E731
        assert not {group(c) for c in val} & {group(c) for c in train}
        assert not test & (val | train)
        test_sets.add(frozenset(test))
    assert len(test_sets) == 1


def test_a_lone_volume_folds_by_slab_with_the_gap():
    seen = set()
    for f in range(5):
        plan = _plan(["vol"], DataConfig(folds=5, fold=f, slab_gap=2), volumetric=True, slices=[100])
        val = [(a, b) for _, a, b in plan.ranges["val"]]
        train = [(a, b) for _, a, b in plan.ranges["train"]]
        val_slices = {s for a, b in val for s in range(a, b)}
        train_slices = {s for a, b in train for s in range(a, b)}
        assert not val_slices & train_slices and plan.by_slab
        assert all(abs(v - t) > 2 for v in val_slices for t in train_slices if abs(v - t) <= 3)  # the gap
        seen |= val_slices
    assert len(seen) >= 100 - 2 * 2 * 4  # every slab validates once (less the gaps)


def test_folds_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(DataError, match="too few for 5 folds"):
        _plan(["a", "b", "c"], DataConfig(folds=5, fold=0))
    with pytest.raises(ValueError, match="folds must be 0"):
        DataConfig(folds=3, fold=3)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    with pytest.raises(DataError, match="names one split, not folds"):
        _plan(["a", "b", "c"], DataConfig(folds=3, fold=1, split_file=str(split)))


def test_nnunet_fold_lists_give_the_asked_fold(tmp_path):
    split = tmp_path / "splits_final.json"
    split.write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]))
    plan = _plan(["a", "b", "c"], DataConfig(folds=2, fold=1, split_file=str(split)))
    assert _members(plan, "val", ["a", "b", "c"]) == {"b"}
