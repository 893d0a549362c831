"""Ensembles of runs and flip TTA through the one evaluation loop, ``segbench eval``/``predict`` with several
runs: an ensemble of identical runs is the run, predict's mask is the arg-max of the mean probabilities,
incompatible runs are refused, and ``--compare`` judges and prices with the review's code."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from segbench.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _copy(run_dir, to, perturb: float = 0.0):
    """A copy of a trained run; ``perturb``: its classifier's weights moved by that much noise (another model)."""
    from segbench.engine.checkpoint import load_checkpoint, save_checkpoint

    shutil.copytree(run_dir, to)
    if perturb:
        for name in ("best.pt", "last.pt"):
            state = load_checkpoint(to / name)
            weight = state["model"]["classifier.weight"]
            state["model"]["classifier.weight"] = weight + perturb * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
            save_checkpoint(state, to / name)
    return to


@pytest.fixture
def tiny_test_env(monkeypatch, tiny_module):
    """Tiny data with a test split of 16 cases (16 units: enough for the review's intervals)."""
    tiny_module.install(monkeypatch, data_factory=lambda: tiny_module.tiny_data(test=16))
    return tiny_module


def test_ensemble_of_identical_runs_equals_the_run(tiny_cli_run, tiny_test_env, tmp_path):
    from segbench.engine.ensemble import evaluate_runs, load_members

    data = tiny_test_env.tiny_data(test=16)
    a, b = _copy(tiny_cli_run, tmp_path / "a"), _copy(tiny_cli_run, tmp_path / "b")
    one = evaluate_runs(load_members([a]), "test", data=data)
    two = evaluate_runs(load_members([a, b]), "test", data=data)
    assert two.per_case == one.per_case and two.metrics["mDice_fg"] == one.metrics["mDice_fg"]
    assert two.record()["forward_passes_per_image"] == 2 and one.record()["forward_passes_per_image"] == 1


def test_incompatible_runs_are_refused(tiny_cli_run, tiny_test_env, tmp_path):
    from segbench.engine.checkpoint import load_checkpoint, save_checkpoint
    from segbench.engine.ensemble import EnsembleError, Members, evaluate_runs, load_members

    a = _copy(tiny_cli_run, tmp_path / "a")
    with pytest.raises(EnsembleError, match="named twice"):
        load_members([a, a])
    other = _copy(tiny_cli_run, tmp_path / "other")
    state = load_checkpoint(other / "best.pt")
    state["config"]["data"]["resize"] = [8, 8]
    save_checkpoint(state, other / "best.pt")
    with pytest.raises(EnsembleError, match=r"data\.resize"):
        load_members([a, other])
    members = load_members([a])
    folds = Members(members.run_dirs * 2, members.models * 2, members.cfg, members.info, folds=[0, 1])
    with pytest.raises(EnsembleError, match="--split test"):
        evaluate_runs(folds, "val")


def test_predict_with_two_runs_writes_the_mask_of_the_mean_probabilities(tiny_cli_run, tiny_env, tmp_path):
    from segbench.engine.predict import _Runner

    a, b = _copy(tiny_cli_run, tmp_path / "a"), _copy(tiny_cli_run, tmp_path / "b", perturb=2.0)
    image = tiny_env.TinySegmentation(1, seed=7)[0]["image"][0].numpy()
    Image.fromarray(image).save(tmp_path / "x.tif")
    result = _invoke("predict", a, b, tmp_path / "x.tif", tmp_path / "out")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "out" / "x_mask.png"))
    x = torch.from_numpy(image)[None, None]
    runner = _Runner([a, b], "torch", "best")  # the networks predict runs: BatchNorm folded
    with torch.no_grad(), runner.precision.autocast():
        probabilities = [model(x).float().softmax(1) for model in runner.models]
    alone = [p.argmax(1)[0].numpy() for p in probabilities]
    assert not np.array_equal(alone[0], alone[1])  # the two runs disagree somewhere...
    expected = ((probabilities[0] + probabilities[1]) / 2).argmax(1)[0].numpy()
    assert np.array_equal(mask, expected)  # ...and the mask is the arg-max of their mean probabilities
    tta = _invoke("predict", a, tmp_path / "x.tif", tmp_path / "tta", "--tta")
    assert tta.exit_code == 0, tta.output
    onnx = CliRunner().invoke(main, ["predict", str(a), str(b), str(tmp_path / "x.tif"), str(tmp_path / "o"),
                                     "--engine", "onnx"])
    assert onnx.exit_code == 1 and "ensemble with --engine torch" in onnx.output


def test_eval_compare_judges_and_prices_the_candidates(tiny_cli_run, tiny_test_env, tmp_path):
    a, b = _copy(tiny_cli_run, tmp_path / "a"), _copy(tiny_cli_run, tmp_path / "b", perturb=0.5)
    out = tmp_path / "ens"
    result = _invoke("eval", a, b, "--split", "test", "--tta", "--compare", "--out", out)
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 + TTA (horizontal)" in result.output and "against each run alone" in result.output
    saved = json.loads((out / "candidates_test.json").read_text())
    rows = {r["name"]: r for r in saved["rows"]}
    assert saved["n_units"] == 16 and set(rows) == {"a", "b", "ensemble of 2", "ensemble of 2 + TTA (horizontal)"}
    passes = {name: row["forward_passes"] for name, row in rows.items()}
    assert passes == {"a": 1, "b": 1, "ensemble of 2": 2, "ensemble of 2 + TTA (horizontal)": 4}
    best = saved["best_single"]
    assert rows[best]["answer"] == "best single" and rows[best]["diff"] == 0
    for name in ("ensemble of 2", "ensemble of 2 + TTA (horizontal)"):
        row = rows[name]
        assert row["answer"] in {"better", "worse", "equivalent", "inconclusive"}
        assert row["diff_low"] <= row["diff"] <= row["diff_high"]
        assert row["diff"] == pytest.approx(row["mean"] - rows[best]["mean"])
        assert row["latency_ms"] > 0
    record = json.loads((out / "eval_test.json").read_text())
    assert record["flips"] == ["horizontal"] and record["forward_passes_per_image"] == 4
    assert (out / "eval_per_case_test.csv").read_text().startswith("case,")


def test_export_of_several_runs_says_why_not(tiny_cli_run, tiny_env, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny_cli_run), str(tiny_cli_run)])
    assert result.exit_code == 2 and "not exported as one ONNX graph" in result.output
    assert "segbench predict RUN1 RUN2" in result.output


def test_a_member_trained_on_other_statistics_sees_its_own_normalisation():
    from segbench.engine.ensemble import Renormalized

    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, 3, padding=1)
    raw = torch.rand(1, 2, 8, 8) * 255
    first = {"kind": "dataset", "mean": [100.0, 20.0], "std": [50.0, 10.0]}  # the ensemble's input (member 0's)
    own = {"kind": "dataset", "mean": [90.0, 30.0], "std": [40.0, 12.0]}  # this member's training split
    normalise = lambda n: (raw - torch.tensor(n["mean"]).view(1, -1, 1, 1)) / torch.tensor(n["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = net(normalise(own))
        assert torch.allclose(Renormalized(net, first, own)(normalise(first)), expected, atol=1e-5)
        assert not torch.allclose(Renormalized(net, own, first)(normalise(first)), expected, atol=1e-2)  # the wrong way
