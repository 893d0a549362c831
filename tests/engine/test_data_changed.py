"""Issue 15, item 7: a run records its split and the data's content hash; `eval` notices when the data changed."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segbench.cli import main
from segbench.data import DataConfig
from segbench.data.splits import plan_splits
from segbench.engine.run_folder import SPLIT_FILE


def _pair(root, name, label=1):
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 5:11] = label
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    Image.fromarray((mask * 80 + 20).astype(np.uint8)).save(root / "images" / f"{name}.png")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    for k in range(10):
        _pair(data, f"case{k:02d}")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--arch", "unet", "--data", str(data), "--out", str(out), "--quiet",
                                       "--set", "model.options.base_width=4", "--set", "train.iterations=2",
                                       "--set", "train.batch_size=2", "--set", "train.device=cpu"])
    assert result.exit_code == 0, result.output
    return data, out


def test_the_split_and_content_hash_are_recorded_and_the_data_path_resolved(run):
    data, out = run
    record = json.loads((out / SPLIT_FILE).read_text())
    # All ten cases, each on one side; the seeded split sizes follow val_fraction only on average.
    val, train = record["splits"]["val"], record["splits"]["train"]
    assert len(val) >= 1 and sorted(val + train) == sorted(set(val + train)) and len(val + train) == 10
    assert record["content_hash"]
    assert (out / "config.yaml").read_text().count(str(data.resolve())) == 1


def test_eval_refuses_a_class_added_since_training(run):
    data, out = run
    _pair(data, "case03", label=2)  # rewrite one mask with a new class
    result = CliRunner().invoke(main, ["eval", str(out)])
    assert result.exit_code == 1
    assert result.output.count("Error") == 1 and "classes changed" in result.output and "class_2" in result.output
    assert not (out / "eval_val.json").exists()


def test_eval_warns_when_files_changed_but_the_split_did_not(run):
    data, out = run
    val = json.loads((out / SPLIT_FILE).read_text())["splits"]["val"]
    train_case = json.loads((out / SPLIT_FILE).read_text())["splits"]["train"][0]
    _pair(data, train_case)  # same labels, rewritten file
    result = CliRunner().invoke(main, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    assert "files changed" in result.output and val


def test_seeded_splits_are_stable_when_cases_are_added():
    cfg = DataConfig(val_fraction=0.2, seed=0)
    cases = [f"case{k:03d}" for k in range(40)]

    def split_of(names):
        plan = plan_splits(names, [None] * len(names), [1] * len(names), cfg, volumetric=False)
        return {names[i]: split for split, ranges in plan.ranges.items() for i, _, _ in ranges}

    before = split_of(cases)
    for added in (["case999"], [f"new{k}" for k in range(30)]):
        after = split_of(cases + added)
        assert [c for c in cases if before[c] != after[c]] == []  # no case changes side, however many join
    removed = split_of(cases[5:])
    assert all(removed[c] == before[c] for c in cases[5:])


def test_seeded_split_sizes_follow_the_fractions():
    from scipy.stats import binom

    cfg = DataConfig(val_fraction=0.2, test_fraction=0.1, seed=3)
    cases = [f"c{k}" for k in range(2000)]
    plan = plan_splits(cases, [None] * len(cases), [1] * len(cases), cfg, volumetric=False)
    sizes = {split: len(ranges) for split, ranges in plan.ranges.items()}
    assert sum(sizes.values()) == 2000
    for split, fraction in (("val", 0.2), ("test", 0.1)):  # inside the central 99.9% of the binomial
        low, high = binom.ppf([0.0005, 0.9995], 2000, fraction)
        assert low <= sizes[split] <= high, (split, sizes)


def test_few_cases_still_get_a_validation_case():
    for seed in range(20):  # with 3 cases some seeds put all of them below a 0.34 band
        cfg = DataConfig(val_fraction=0.34, seed=seed)
        for n in range(2, 8):
            names = [f"x{k}" for k in range(n)]
            plan = plan_splits(names, [None] * n, [1] * n, cfg, volumetric=False)
            assert len(plan.ranges["val"]) >= 1 and len(plan.ranges["train"]) >= 1, (seed, n)
