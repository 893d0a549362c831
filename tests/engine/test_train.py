import json
import math
import os

import pytest
import torch

from segbench.metric_defs import HEADLINE

from segbench.config import load_config
from segbench.engine import ConfigMismatch, TrainingDiverged, evaluate_run, load_run_model, train
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.device import resolve_precision

TINY = [
    "model.arch=tiny",
    "train.iterations=12",
    "train.batch_size=4",
    "train.val_interval=4",
    "train.checkpoint_interval=3",
    "train.log_interval=2",
    "train.device=cpu",
]


def tiny_config(*extra):
    return load_config(None, TINY + list(extra))


def final_state(run_dir):
    return load_checkpoint(run_dir / "last.pt")["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def log_events(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_train_writes_run_folder_and_learns(tiny_env, tmp_path):
    cfg = tiny_config("train.iterations=40", "train.val_interval=20", "train.lr=0.05")
    metrics = train(cfg, tmp_path, progress=False)
    for name in ("config.yaml", "log.jsonl", "last.pt", "best.pt", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["best_metric"] == HEADLINE == "dice_fg_per_case" and metrics["best_iteration"] in (20, 40)
    assert metrics["best_value"] == metrics["val"][HEADLINE] > 0.7  # the squares and bars are easy
    assert metrics["train_time_s"] > 0 and metrics["train_images_per_s"] > 0
    # The rule, not this machine's outcome: amp=auto is bf16 on CPUs with native bf16, else fp32.
    assert metrics["precision"] == resolve_precision("auto", torch.device("cpu")).name
    assert metrics["channels_last"] is True  # a CNN
    events = log_events(tmp_path)
    assert [e["iteration"] for e in events if e["event"] == "train"] == list(range(2, 41, 2))
    assert [e["iteration"] for e in events if e["event"] == "val"] == [20, 40]
    # resolved optimisation settings are saved (cnn family defaults)
    saved = load_config(tmp_path / "config.yaml")
    assert (saved.train.optimizer, saved.train.weight_decay, saved.train.poly_power) == ("sgd", 5e-4, 0.9)
    assert saved.train.warmup_iters == 0 and saved.model.arch == "tiny"


@pytest.mark.parametrize("kill_after", [3, 23, 41])
def test_killed_run_resumes_to_identical_result(tiny_env, tmp_path, kill_after):
    # 14 training images, batches of 4: 3 batches per epoch. kill_after counts item loads (4 per
    # iteration, 6 per validation at iterations 4, 8, 12; checkpoints at 3, 4, 6, 8, 9, 12):
    # 3 -> before any checkpoint; 23 -> loading iteration 5's batch, resumes from 4 (mid-epoch);
    # 41 -> during the validation at iteration 8, resumes from 6 (an epoch boundary).
    cfg = tiny_config("model.options={aux_head: true}")  # dropout + aux loss + augmentation all in play
    straight = train(cfg, tmp_path / "straight", progress=False)

    tiny_env.TinySegmentation.kill_after = tiny_env.TinySegmentation.calls + kill_after
    with pytest.raises(tiny_env.SimulatedKill):
        train(cfg, tmp_path / "killed", progress=False)
    resumed = train(cfg, tmp_path / "killed", progress=False)

    assert_same_weights(final_state(tmp_path / "straight"), final_state(tmp_path / "killed"))
    assert resumed["val"] == straight["val"] and resumed["best_iteration"] == straight["best_iteration"]
    strip = lambda events: [{k: v for k, v in e.items() if "time" not in k and k != "images_per_s"}
                            for e in events if e["event"] in ("train", "val")]
    assert strip(log_events(tmp_path / "killed")) == strip(log_events(tmp_path / "straight"))


def test_kill_during_checkpoint_write_keeps_previous(tiny_env, tmp_path, monkeypatch):
    cfg = tiny_config()
    straight = train(cfg, tmp_path / "straight", progress=False)
    real_replace, calls = os.replace, {"n": 0}

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint write dies between write and rename
            raise tiny_env.SimulatedKill("killed while saving")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(tiny_env.SimulatedKill):
        train(cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"] == 3
    resumed = train(cfg, tmp_path / "killed", progress=False)
    assert_same_weights(final_state(tmp_path / "straight"), final_state(tmp_path / "killed"))
    assert resumed["val"] == straight["val"]


def test_finished_run_returns_its_metrics_and_no_resume_starts_over(tiny_env, tmp_path):
    cfg = tiny_config()
    first = train(cfg, tmp_path, progress=False)
    assert train(cfg, tmp_path, progress=False) == first
    again = train(cfg, tmp_path, resume=False, progress=False)
    assert again["val"] == first["val"] and again["resumed_from"] is None
    assert len([e for e in log_events(tmp_path) if e["event"] == "start"]) == 1


def test_resume_with_other_config_is_refused(tiny_env, tmp_path):
    train(tiny_config("train.iterations=4"), tmp_path, progress=False)
    with pytest.raises(ConfigMismatch, match=r"train.lr: 0.01 -> 0.02"):
        train(tiny_config("train.iterations=4", "train.lr=0.02"), tmp_path, progress=False)


def _install_nan_from_epoch(tiny_env, monkeypatch, epoch: int) -> None:
    """Tiny data whose training images are all NaN from ``epoch`` on (2 batches per epoch)."""
    data = tiny_env.TinySegmentation
    factory = lambda: tiny_env.SegmentationData(
        name="tiny", num_classes=3, in_channels=1, class_names=["bg", "a", "b"], ignore_index=255,
        splits={"train": data(10, seed=1, augment=True, nan_from_epoch=epoch), "val": data(4, seed=2)},
        notices=[], report=None)
    tiny_env.install(monkeypatch, factory)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_env, tmp_path, monkeypatch):
    _install_nan_from_epoch(tiny_env, monkeypatch, 2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration 4 .*last good checkpoint"):
        train(tiny_config(), tmp_path, progress=False)  # 2 batches per epoch: epoch 2 starts at iteration 4
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path).values() if v.is_floating_point())
    assert log_events(tmp_path)[-1]["event"] == "diverged"
    assert not (tmp_path / "metrics.json").exists()


def test_nan_loss_before_any_checkpoint_does_not_claim_one(tiny_env, tmp_path, monkeypatch):
    _install_nan_from_epoch(tiny_env, monkeypatch, 0)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration 0 .*no checkpoint was written before it"):
        train(tiny_config(), tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_transformer_family_defaults_and_head_lr(tiny_env, tmp_path):
    metrics = train(tiny_config("model.arch=tiny_tf", "train.iterations=4"), tmp_path, progress=False)
    saved = load_config(tmp_path / "config.yaml")
    assert (saved.train.optimizer, saved.train.lr, saved.train.weight_decay) == ("adamw", 6e-5, 0.01)
    assert (saved.train.head_lr_mult, saved.train.poly_power) == (10.0, 1.0)
    assert metrics["channels_last"] is False
    groups = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(10 * by_name["encoder"]["lr"])
    assert by_name["encoder/no_decay"]["weight_decay"] == 0.0  # BatchNorm exempt under AdamW


def test_evaluate_run_and_load_run_model(tiny_env, tmp_path):
    cfg = tiny_config("eval.test_at_end=false")
    metrics = train(cfg, tmp_path, progress=False)
    again = evaluate_run(tmp_path, "val")
    assert {k: again[k] for k in ("mIoU", "mDice_fg", "dice_fg_per_case")} == {
        k: metrics["val"][k] for k in ("mIoU", "mDice_fg", "dice_fg_per_case")}
    assert json.loads((tmp_path / "eval_val.json").read_text())["split"] == "val"
    model, loaded_cfg, info = load_run_model(tmp_path)
    assert not model.training and loaded_cfg.model.arch == "tiny"
    assert (info.num_classes, info.in_channels, info.class_names[1]) == (3, 1, "square")
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["iteration"] == metrics["best_iteration"]
    assert_same_weights(model.state_dict(), best["model"])
    with pytest.raises(ValueError, match="no 'test' split"):
        evaluate_run(tmp_path, "test")


def test_test_split_is_evaluated_at_the_end(tiny_env, tmp_path, monkeypatch):
    tiny_env.install(monkeypatch, lambda: tiny_env.tiny_data(test=4))
    metrics = train(tiny_config("train.iterations=4"), tmp_path, progress=False)
    assert math.isfinite(metrics["test"]["mIoU"]) and metrics["test"]["num_cases"] == 4


def test_bad_best_metric_fails_before_training(tiny_env, tmp_path):
    with pytest.raises(ValueError, match="train.best_metric='mdice' is not a metric"):
        train(tiny_config("train.best_metric=mdice"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="best_metric='nsd_fg' is a surface-distance figure; it needs eval.hd95=true"):
        train(tiny_config("train.best_metric=nsd_fg", "eval.hd95=false"), tmp_path, progress=False)


def test_deterministic_flag_is_scoped_to_the_call(tiny_env, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    plain = train(tiny_config("train.iterations=4"), tmp_path / "a", progress=False)
    strict = train(tiny_config("train.iterations=4", "train.deterministic=true"), tmp_path / "b", progress=False)
    assert strict["val"] == plain["val"]  # on CPU both are exact
    assert torch.are_deterministic_algorithms_enabled() == before


def test_loader_workers_do_not_change_the_result(tiny_env, tmp_path):
    alone = train(tiny_config("train.iterations=6"), tmp_path / "a", progress=False)
    workers = train(tiny_config("train.iterations=6", "train.num_workers=2"), tmp_path / "b", progress=False)
    assert_same_weights(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    assert workers["val"] == alone["val"]


def test_instance_family_overrides_registry_family(tiny_env, tmp_path):
    # UPerNet is registered as a transformer design, but on a ResNet it follows the CNN recipe (SGD).
    cfg = tiny_config("model.arch=upernet", "model.options={encoder: resnet18, channels: 16, aux_channels: 8}",
                      "train.iterations=1", "train.val_interval=1")
    train(cfg, tmp_path, progress=False)
    saved = load_config(tmp_path / "config.yaml")
    assert (saved.train.optimizer, saved.train.lr, saved.train.head_lr_mult) == ("sgd", 0.01, 1.0)


def test_train_takes_an_already_loaded_dataset(tiny_env, tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("segbench.engine.train")  # the package's attribute is the function

    def no_loading(cfg):
        raise AssertionError("train(data=...) must not load cfg.data")

    monkeypatch.setattr(train_module, "load_data", no_loading)
    given = train(tiny_config(), tmp_path / "given", progress=False, data=tiny_env.tiny_data())
    monkeypatch.setattr(train_module, "load_data", lambda cfg: tiny_env.tiny_data())
    loaded = train(tiny_config(), tmp_path / "loaded", progress=False)
    assert given["val"] == loaded["val"] and given["best_iteration"] == loaded["best_iteration"]
    assert_same_weights(final_state(tmp_path / "given"), final_state(tmp_path / "loaded"))
