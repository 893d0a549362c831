"""The learning-rate range test: it finds a known good rate on a problem built for it, and
``train.lr_policy=find`` trains exactly as if its pick had been given by hand."""

import json
import math

import pytest

from segbench.config import load_config
from segbench.engine import train
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.lr_find import range_test, within_a_decade


def test_range_test_finds_a_stable_fast_rate_for_a_quadratic():
    # f(w) = a/2 |w|^2, gradient descent: w <- (1 - lr a) w. Stable for lr < 2/a, fastest at lr = 1/a.
    a = 50.0
    w = [3.0]

    def step(lr):
        loss = 0.5 * a * w[0] ** 2
        w[0] -= lr * a * w[0]
        return loss

    result = range_test(step, start=1e-6, end=10.0, steps=100)
    assert result.stopped == "diverged" and result.lrs[-1] < 10.0  # stopped when the loss ran away
    assert 0.1 / a <= result.suggestion < 2 / a  # a tenth of the edge: stable, and not timid
    assert result.suggestion == pytest.approx(result.lrs[result.smoothed.index(min(result.smoothed))] / 10)


def bowl(lr: float) -> float:
    """A loss curve over the rates with its minimum at lr 1e-2 that blows up past 1e-1, plus a
    deterministic wobble: a short test on it is where a lagging average misplaces the minimum."""
    x = math.log10(lr)
    wobble = 0.05 * math.sin(37 * x)
    return 2.0 - 1.5 * math.exp(-((x + 2) ** 2) / 0.5) + (10 ** (4 * (x + 1)) if x > -1 else 0.0) + wobble


@pytest.mark.parametrize("steps", [40, 100])
def test_range_test_picks_a_tenth_of_the_true_minimum_even_on_a_short_test(steps):
    result = range_test(bowl, start=1e-6, end=1.0, steps=steps)
    assert result.stopped == "diverged"
    # Within a quarter of a decade of 1e-3 (the minimum at 1e-2, divided by 10). A running average with
    # beta 0.98 puts it at the blow-up instead: 40 steps over six decades lag it by several decades.
    assert abs(math.log10(result.suggestion) + 3) <= 0.25


def test_the_pick_moves_the_recipe_rate_at_most_a_decade():
    assert within_a_decade(3e-3, prior=1e-2) == 3e-3
    assert within_a_decade(1e-5, prior=1e-2) == pytest.approx(1e-3)  # a plateau read at its start
    assert within_a_decade(2.0, prior=6e-5) == pytest.approx(6e-4)


def test_range_test_refuses_nonsense():
    with pytest.raises(ValueError, match="0 < start < end"):
        range_test(lambda lr: 1.0, start=1.0, end=0.1)
    with pytest.raises(ValueError, match="not finite even at lr"):
        range_test(lambda lr: math.nan)


TINY = ["model.arch=tiny", "train.iterations=8", "train.batch_size=4", "train.val_interval=4", "train.device=cpu",
        "eval.test_at_end=false"]


def test_lr_policy_find_trains_as_if_its_pick_were_given(tiny_env, tmp_path):
    found = train(load_config(None, TINY + ["train.lr_policy=find"]), tmp_path / "find", progress=False)
    record = json.loads((tmp_path / "find" / "lr_find.json").read_text())
    assert found["lr"] == record["picked"] == within_a_decade(record["suggestion"], record["recipe_lr"])
    assert found["lr_policy"] == "find"
    assert len(record["lrs"]) == len(record["losses"]) <= 100
    by_hand = train(load_config(None, TINY + [f"train.lr={record['picked']!r}"]), tmp_path / "hand", progress=False)
    assert found["val"] == by_hand["val"]  # the test left the random state as it found it
    a, b = load_checkpoint(tmp_path / "find" / "last.pt")["model"], load_checkpoint(tmp_path / "hand" / "last.pt")["model"]
    assert all((a[k] == b[k]).all() for k in a)
    # Resuming reads the pick back instead of testing again.
    again = train(load_config(None, TINY + ["train.lr_policy=find"]), tmp_path / "find", progress=False)
    assert again["lr"] == found["lr"]


def test_lr_policy_find_with_a_given_lr_is_refused(tiny_env, tmp_path):
    with pytest.raises(ValueError, match="give one of them"):
        train(load_config(None, TINY + ["train.lr_policy=find", "train.lr=0.1"]), tmp_path, progress=False)
