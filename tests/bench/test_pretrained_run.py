"""`segbench run --pretrained imagenet|both`: which architectures start from ImageNet weights, how the
plan and the report tell the two starts apart, and what happens without the weights. Nothing trains
here (the sweep's own training is covered by test_run.py)."""

import json

import pytest
import torch
from click.testing import CliRunner

import segbench.checkpoints.load as pretrained_module
from segbench.bench.protocol import sweep as sweep_module
from segbench.bench.protocol.profiles import PROFILES, REVIEW_ARCHS, get_profile
from segbench.bench.report.results import aggregate
from segbench.bench.protocol.review_input import review_input
from segbench.bench.report.review import write_review
from segbench.bench.protocol.record import WorkerResult
from segbench.bench.protocol.runs import run_record
from segbench.bench.protocol.sweep import imagenet_starts, plan_sweep, run_sweep
from segbench.commands.run import run
from segbench.checkpoints.load import imagenet_weights_fit
from segbench.checkpoints import build_pretrained_model
from segbench.models.registry import ENCODERS, build_encoder

QUICK_IMAGENET = ["pspnet", "deeplabv2", "deeplabv3", "deeplabv3plus", "segformer"]  # ResNet-18 and MiT-B0


@pytest.mark.parametrize(
    "arch, options, fits, reason",
    [
        ("unet", {"base_width": 16}, False, "own encoder (UNetEncoder)"),
        ("fcn8s", {"encoder": "vgg16", "base_width": 16}, False, "features.0.weight: model (16, 3, 3, 3), published (64"),
        ("fcn8s", {"encoder": "vgg16"}, True, "4 tensors derived"),  # fc6/fc7 from VGG's classifier
        ("pspnet", {"encoder": "resnet18", "output_stride": 8}, True, "'resnet18' matches"),
        ("segformer", {"encoder": "mit_b0"}, True, "'mit_b0' matches"),
        ("upernet", PROFILES["quick"].arch_options["upernet"], False, "not in the model (e.g. layers.2.blocks.2"),
        ("upernet", {"encoder": "swin_t", "depths": [2, 2, 2, 2]}, False, "not in the model"),  # widths kept
        ("upernet", {"encoder": "swin_t"}, True, "'swin_t' matches"),
    ],
)
def test_imagenet_weights_fit(arch, options, fits, reason):
    answer, why = imagenet_weights_fit(arch, options)
    assert answer is fits and reason in why, why


def _published_stand_in(name: str) -> dict[str, torch.Tensor]:
    """A meta-device stand-in for ``imagenet_state_dict(name)``: the default encoder's tensors plus what
    torchvision's files add (the ImageNet classifier, which VGG's fc6/fc7 are made from)."""
    with torch.device("meta"):
        state = dict(build_encoder(name).state_dict())
    family = ENCODERS[name].kind
    if family == "resnet":
        features = state["layer4.0.conv1.weight"].shape[0] * (4 if "layer4.0.conv3.weight" in state else 1)
        state.update({"fc.weight": torch.empty(1000, features, device="meta"), "fc.bias": torch.empty(1000, device="meta")})
    elif family == "vgg":
        for index, (rows, cols) in {0: (4096, 512 * 49), 3: (4096, 4096), 6: (1000, 4096)}.items():
            state[f"classifier.{index}.weight"] = torch.empty(rows, cols, device="meta")
            state[f"classifier.{index}.bias"] = torch.empty(rows, device="meta")
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")  # VGG's num_batches_tracked
@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_answer_agrees_with_load_pretrained(profile, monkeypatch):
    """Where ``imagenet_weights_fit`` says yes, ``build_pretrained_model(..., pretrained="imagenet")`` loads (with a
    one-channel input: the first conv is adapted); where it says no, that load fails or has no weights."""
    monkeypatch.setattr(pretrained_module, "imagenet_state_dict",
                        lambda name: (_published_stand_in(name), {"url": "stand-in", "sha256": "0"}))  # fmt: skip
    for arch in REVIEW_ARCHS:
        options = PROFILES[profile].arch_options.get(arch, {})
        fits, why = imagenet_weights_fit(arch, options)
        with torch.device("meta"):
            if fits:
                report = build_pretrained_model(arch, 2, in_channels=1, pretrained="imagenet", **options).pretrained_report
                assert report.loaded and not [k for k in report.missing if k.startswith("encoder.")], (arch, why)
            else:
                with pytest.raises(ValueError):
                    build_pretrained_model(arch, 2, in_channels=1, pretrained="imagenet", **options)


def _plan(profile: str, tmp_path, overrides=(), **kwargs):
    return plan_sweep(data="brain-mri", profile=get_profile(profile), out=tmp_path, overrides=list(overrides), **kwargs)


def test_which_architectures_start_from_imagenet_weights(tmp_path):
    quick, notes = imagenet_starts(_plan("quick", tmp_path), "imagenet")
    assert quick == dict.fromkeys(QUICK_IMAGENET, "imagenet")
    assert [n.split(":")[0] for n in notes] == ["fcn8s", "unet", "segnet", "deeplabv1", "upernet"]
    assert all("from scratch" in n for n in notes) and "own encoder" in notes[1]

    standard, notes = imagenet_starts(_plan("standard", tmp_path), "imagenet")
    assert standard == dict.fromkeys([a for a in REVIEW_ARCHS if a != "unet"], "imagenet")
    assert len(notes) == 1 and notes[0].startswith("unet: from scratch")

    # Decided on the resolved options: a --set that slims the VGGs takes their weights away.
    vggs = ["fcn8s", "segnet"]
    both, notes = imagenet_starts(_plan("standard", tmp_path, archs=vggs), "both")
    assert both == dict.fromkeys(vggs, (None, "imagenet")) and notes == []
    slim, notes = imagenet_starts(_plan("standard", tmp_path, ["model.options.base_width=16"], archs=vggs), "both")
    assert slim == {} and [n.split(":")[0] for n in notes] == vggs and "shapes differ" in notes[0]
    with pytest.raises(ValueError, match="'none', 'imagenet' or 'both'"):
        imagenet_starts([], "in1k")


def test_plans_label_imagenet_runs_and_both_plans_two_runs(tmp_path):
    base = _plan("quick", tmp_path, archs=["unet", "pspnet"])
    starts, _ = imagenet_starts(base, "both")
    plan = _plan("quick", tmp_path, archs=["unet", "pspnet"], pretrained=starts)
    assert [(r.label, r.config.model.pretrained) for r in plan] == [
        ("unet", None), ("pspnet", None), ("pspnet+in1k", "imagenet")
    ]
    scratch, imagenet = plan[1], plan[2]
    assert scratch.config_hash == base[1].config_hash  # the from-scratch run is the plain sweep's run
    assert scratch.config_hash != imagenet.config_hash and scratch.run_dir != imagenet.run_dir
    assert imagenet.run_dir.name == f"pspnet+in1k-s0-{imagenet.config_hash}"

    rows = [run_record(r).row() for r in plan]
    assert [r["arch"] for r in rows] == ["unet", "pspnet", "pspnet+in1k"]
    assert [r["pretrained"] for r in rows] == ["none (from scratch)"] * 2 + ["imagenet"]
    assert rows[2]["backbone"] == "resnet18 (output_stride=8), ImageNet weights"
    assert rows[1]["backbone"] == "resnet18 (output_stride=8)"
    assert [r["arch"] for r in aggregate(rows, ["val_dice_fg_per_case"])] == ["unet", "pspnet", "pspnet+in1k"]  # not merged

    with pytest.raises(ValueError, match="share a label"):
        _plan("quick", tmp_path, archs=["pspnet"], pretrained={"pspnet": ("imagenet", "imagenet")})


def test_the_report_has_a_row_and_a_section_per_start(tmp_path):
    plan = _plan("quick", tmp_path, archs=["pspnet"], pretrained={"pspnet": (None, "imagenet")})
    write_review(review_input(plan, get_profile("quick"), tmp_path), "segbench run --pretrained both")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| pspnet | resnet18 (output_stride=8) |" in markdown
    assert "| pspnet+in1k | resnet18 (output_stride=8), ImageNet weights |" in markdown
    assert markdown.count("Pyramid Scene Parsing Network. CVPR 2017*") == 2  # the design text of both rows
    assert "Backbone weights: imagenet, none (from scratch)." in markdown


def test_unavailable_weights_fail_those_runs_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))  # an empty cache
    monkeypatch.setenv("SEGBENCH_OFFLINE", "1")
    started = []
    monkeypatch.setattr(sweep_module, "_execute", lambda run, progress: started.append(run.label) or WorkerResult(hash=run.config_hash))
    plan = _plan("quick", tmp_path / "out", archs=["pspnet", "deeplabv2"],
                 pretrained={"pspnet": "imagenet", "deeplabv2": "imagenet"})  # fmt: skip
    said = []
    counts = run_sweep(plan, get_profile("quick"), progress=False, say=said.append)
    assert counts == {"skipped": 0, "ran": 2, "failed": 2} and started == []  # no worker started
    assert sum("from the cache, or downloading" in line for line in said) == 1  # resnet18 tried once
    for planned in plan:
        row = run_record(planned).row()
        assert row["status"] == "failed" and row["pretrained"] == "imagenet"
        assert row["error"].startswith("no ImageNet weights for resnet18, not trained: WeightsUnavailableError")
        assert "SEGBENCH_OFFLINE is set" in row["error"] and "resnet18-f37072fd.pth" in row["error"]
        assert json.loads((planned.run_dir / "bench.json").read_text())["hash"] == planned.config_hash


def test_run_command_plans_both_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    result = CliRunner().invoke(run, ["--archs", "unet,segformer", "--pretrained", "both", "--out", str(out),
                                      "--report-only"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "unet: from scratch (unet has its own encoder (UNetEncoder)" in result.output
    assert "3 run(s) (1 from ImageNet weights)" in result.output
    rows = json.loads((out / "report" / "results.json").read_text())
    assert [(r["arch"], r["pretrained"]) for r in rows] == [
        ("unet", "none (from scratch)"), ("segformer", "none (from scratch)"), ("segformer+in1k", "imagenet")
    ]
