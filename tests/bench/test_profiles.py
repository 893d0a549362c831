"""Every profile builds every architecture of the review with its options, at the sizes it claims."""

import pytest
import torch

from segbench.bench.protocol.profiles import PROFILES, REVIEW_ARCHS, get_profile, with_available_crf
from segbench.bench.protocol.runs import backbone_label, crf_note
from segbench.models.registry import build_model, list_models


def _params(arch: str, options: dict) -> int:
    with torch.device("meta"):  # counts parameters without allocating them
        model = build_model(arch, 4, 1, **options)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_covers_the_review_and_builds(profile):
    p, _ = with_available_crf(get_profile(profile))  # the paper's dense CRF where pydensecrf2 is installed
    assert tuple(p.arch_options) == REVIEW_ARCHS
    assert set(REVIEW_ARCHS) <= set(list_models())
    for arch, options in p.arch_options.items():
        assert _params(arch, options) > 0
    assert p.settings()["input_size"] == f"{p.input_size[0]}x{p.input_size[1]}"


def test_quick_is_slim_and_standard_is_canonical():
    quick, standard = get_profile("quick"), get_profile("standard")
    for arch in REVIEW_ARCHS:
        assert _params(arch, quick.arch_options[arch]) < 20e6, arch  # laptop-sized
    # The papers' backbones: ResNet-101 under the dilated heads, VGG16 at full width, Swin-T.
    assert _params("deeplabv3", standard.arch_options["deeplabv3"]) > 55e6
    assert _params("fcn8s", standard.arch_options["fcn8s"]) > 130e6
    assert standard.arch_options["upernet"] == {"encoder": "swin_t"}


def test_backbone_label_says_what_ran():
    assert backbone_label("pspnet", {"encoder": "resnet18", "output_stride": 8}) == "resnet18 (output_stride=8)"
    assert backbone_label("segformer", {}) == "mit_b0"  # the builder's default encoder
    assert backbone_label("unet", {"base_width": 16}) == "own encoder (base_width=16)"
    # DeepLab v1/v2's row names the CRF that post-processed it (the paper profile falls back to conv).
    assert [crf_note({"crf": c}) for c in ("dense", "conv", True, "none")] == [", dense CRF", ", conv CRF", ", conv CRF", ""]
    assert crf_note({"encoder": "vgg16"}) == ""


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(KeyError, match="quick, standard, paper"):
        get_profile("fast")


def test_budgets_plan_the_runs_as_asked(tmp_path):
    from segbench.bench.protocol.sweep import BUDGET_CAP, parse_budget, plan_sweep

    assert parse_budget("iterations") == ("iterations", None) and parse_budget("iterations:300") == ("iterations", 300)
    assert parse_budget("time:90") == ("time", 90.0) and parse_budget("auto") == ("auto", None)
    for bad in ("time", "time:-1", "iterations:0", "auto:3", "epochs:2"):
        with pytest.raises(ValueError, match="expected iterations:N, time:SECONDS, flops:N or auto"):
            parse_budget(bad)
    quick = get_profile("quick")
    fixed = plan_sweep(data="brain-mri", profile=quick, out=tmp_path, archs=["unet"], budget="iterations:300")[0].config.train
    timed = plan_sweep(data="brain-mri", profile=quick, out=tmp_path, archs=["unet"], budget="time:90")[0].config.train
    auto = plan_sweep(data="brain-mri", profile=quick, out=tmp_path, archs=["unet"], budget="auto")[0].config.train
    assert (fixed.budget, fixed.iterations) == ("iterations", 300)
    assert (timed.budget, timed.time_budget_s, timed.iterations) == ("time", 90.0, quick.iterations * BUDGET_CAP)
    assert (auto.budget, auto.iterations) == ("auto", quick.iterations * BUDGET_CAP)
    # Validation keeps the profile's rhythm whatever the cap.
    assert timed.val_interval == auto.val_interval == quick.iterations // quick.validations


def test_folds_plan_one_run_per_fold_and_seed(tmp_path):
    from segbench.bench.protocol.sweep import plan_sweep

    plan = plan_sweep(data="brain-mri", profile=get_profile("quick"), out=tmp_path, archs=["unet"], seeds=2, folds=3)
    assert [(r.fold, r.seed) for r in plan] == [(f, s) for f in range(3) for s in range(2)]
    assert {r.config.data.folds for r in plan} == {3} and len({r.config_hash for r in plan}) == 6
    assert plan[2].run_dir.name.startswith("unet-f1-s0-") and plan[2].name == "fold 1 seed 0"
    with pytest.raises(ValueError, match="--folds must be >= 2"):
        plan_sweep(data="brain-mri", profile=get_profile("quick"), out=tmp_path, archs=["unet"], folds=1)


def test_the_annealing_setting_names_a_new_run_only_where_it_acts():
    from segbench.bench.protocol.sweep import config_hash
    from segbench.config import load_config

    def digest(*overrides):
        return config_hash(load_config(None, list(overrides)), {})

    assert digest("train.budget=auto") != digest("train.budget=auto", "train.anneal=0")
    assert digest("train.budget=iterations") == digest("train.budget=iterations", "train.anneal=0")
