"""The review's speed section: its table cells from known figures, and OUT/speed.json measured once,
kept through failures and reused while the settings match."""

import json

import pytest

from segbench.bench.protocol import review_speed
from segbench.bench.protocol.profiles import get_profile
from segbench.bench.protocol.review_speed import measure_review_speed, review_speed_settings, speed_rows
from segbench.bench.report.columns import SPEED_COLUMNS
from segbench.bench.report.render import ReportInputs, write_markdown
from segbench.bench.protocol.sweep import plan_sweep

DATA = {"name": "brain-mri", "num_classes": 4, "in_channels": 1}


def _figures(arch: str, *, peer: bool) -> dict:
    result = {
        "arch": arch, "notes": [], "matmul_flops_per_s": 200e9, "precision": "bf16",
        "impls": {"segbench": {"params": 3_000_000, "precision": "bf16", "train_s": 0.5, "train_q1_s": 0.49, "train_q3_s": 0.51,
                               "infer_s": 0.125, "infer_q1_s": 0.12, "infer_q3_s": 0.13, "infer_noisy": True,
                               "train_flops_per_s": 100e9, "train_matmul_fraction": 0.5,
                               "infer_flops_per_s": 250e9, "infer_matmul_fraction": 1.25}},
    }
    if peer:
        result["impls"]["peer"] = {"params": 3_000_000, "train_s": 0.625, "infer_s": 0.1}
        result.update(peer_name="transformers Peer", ratio={"train": 0.8, "infer": 1.25},
                      ratio_interval={"train": [0.75, 0.86]})  # inference's rounds did not pair: no interval
    return result


def test_speed_rows_carry_known_figures_under_the_columns_keys(tmp_path):
    other = _figures("deeplabv3plus", peer=True)
    other["impls"]["peer"]["params"] = 2_500_000  # another configuration: no ratio, both counts
    speed = {"archs": {"segformer": _figures("segformer", peer=True), "unet": _figures("unet", peer=False),
                       "pspnet": {"arch": "pspnet", "error": "RuntimeError: out of memory"}, "deeplabv3plus": other}}
    pipeline = {"segformer": {"train_time_s": 20.0, "data_time_s": 1.0, "val_time_s": 4.0, "val_metrics_time_s": 0.1}}
    rows = speed_rows(speed, pipeline)
    segformer, unet, pspnet, deeplabv3plus = rows
    assert {c.key for c in SPEED_COLUMNS} <= set(segformer)  # every column has its key in a measured row
    assert segformer["peer"] == "transformers Peer" and segformer["precision"] == "bf16"
    assert (segformer["train_ms"], segformer["train_q1_ms"], segformer["train_q3_ms"]) == pytest.approx((500, 490, 510))
    assert segformer["infer_noisy"] is True and segformer["train_noisy"] is False
    assert (segformer["train_gflops_per_s"], segformer["infer_matmul_pct"]) == pytest.approx((100.0, 125.0))
    assert (segformer["train_ratio"], segformer["infer_ratio"]) == (0.8, 1.25)
    assert (segformer["train_ratio_low"], segformer["train_ratio_high"]) == (0.75, 0.86)
    assert "infer_ratio_low" not in segformer
    assert (segformer["data_wait_pct"], segformer["metrics_pct"]) == pytest.approx((5.0, 2.5))
    assert unet["peer"] == "no peer" and unet["train_ratio"] is None and unet["data_wait_pct"] is None
    assert deeplabv3plus["peer"] == "transformers Peer: different configuration" and deeplabv3plus["train_ratio"] is None
    assert (deeplabv3plus["params"], deeplabv3plus["peer_params"]) == (3_000_000, 2_500_000)
    assert pspnet["error"] == "RuntimeError: out of memory"
    # Rendered through the columns, as the comparison table is: median [IQR], noisy marked.
    inputs = ReportInputs(title="t", command="c", profile={}, machine={}, data={}, table=[], accuracy_key="val_dice_fg_per_case",
                          class_keys=[], class_names=[], figures={}, architectures={}, findings={}, overall=[],
                          speed={"intro": "i", "rows": rows, "notes": []})
    text = write_markdown(inputs, tmp_path / "r.md", []).read_text()
    line = next(line for line in text.splitlines() if line.startswith("| segformer"))
    assert "| 500.0 [490.0–510.0] |" in line and "| 125.0 [120.0–130.0] noisy |" in line
    assert "| 3,000,000 | 3,000,000 | 0.80 [0.75–0.86] | 1.25 |" in line
    line = next(line for line in text.splitlines() if line.startswith("| deeplabv3plus"))
    assert "| transformers Peer: different configuration |" in line and "| 3,000,000 | 2,500,000 | – | – |" in line
    assert "| pspnet | failed: RuntimeError: out of memory |" in text


def test_table_throughput_is_the_sections_inference_measurement():
    speed = {"settings": {"batch": 8}, "archs": {"unet": _figures("unet", peer=False),
                                                 "pspnet": {"arch": "pspnet", "error": "RuntimeError: out of memory"}}}
    figures = review_speed.throughput_figures(speed)
    assert list(figures) == ["unet"]  # a failed measurement gives no throughput
    unet = figures["unet"]
    assert unet["throughput_ips"] == pytest.approx(8 / 0.125) and unet["throughput_batch"] == 8
    # images/s from the time's quartiles: the slow quartile gives the low rate
    assert (unet["throughput_lo_ips"], unet["throughput_hi_ips"]) == pytest.approx((8 / 0.13, 8 / 0.12))
    assert unet["throughput_noisy"] is True and unet["throughput_precision"] == "bf16"


def test_drift_is_read_off_the_matmul_timed_with_each_architecture():
    speed = {"archs": {"a": {"matmul_flops_per_s": 300e9}, "b": {"matmul_flops_per_s": 400e9},
                       "c": {"matmul_flops_per_s": 350e9}}}
    assert "300-400 GFLOP/s (29% of its median)" in review_speed.drift_note(speed)
    assert review_speed.drift_note({"archs": {"a": {"matmul_flops_per_s": 1e9}}}) is None


def test_settings_follow_the_review(tmp_path):
    plan = plan_sweep(data="brain-mri", profile=get_profile("quick"), out=tmp_path, archs=["unet", "segformer"],
                      seeds=2, overrides=["data.resize=[48,64]", "train.device=cpu"])
    archs, settings = review_speed_settings(plan, get_profile("quick"), DATA)
    assert archs == ["unet", "segformer"]  # one per architecture, whatever the seeds
    assert settings.size == (48, 64) and settings.batch == get_profile("quick").batch_size
    assert (settings.num_classes, settings.in_channels, settings.device) == (4, 1, "cpu")
    assert settings.options["unet"] == get_profile("quick").arch_options["unet"]
    assert settings.channels_last is None  # by family, as training
    assert settings.amp == "auto" and settings.rounds == get_profile("quick").speed_rounds  # the runs' precision


def test_measured_once_failures_kept_and_reused_while_settings_match(tmp_path, monkeypatch):
    plan = plan_sweep(data="brain-mri", profile=get_profile("quick"), out=tmp_path, archs=["unet", "segformer"])
    calls = []

    def fake_benchmark(arch, settings, progress):
        calls.append(arch)
        if arch == "segformer" and calls.count(arch) == 1:
            raise RuntimeError("peer exploded")
        return _figures(arch, peer=False)

    monkeypatch.setattr(review_speed, "benchmark_arch", fake_benchmark)
    first = measure_review_speed(plan, get_profile("quick"), tmp_path, DATA, say=lambda m: None)
    assert calls == ["unet", "segformer"]
    assert first["archs"]["segformer"]["error"] == "RuntimeError: peer exploded"
    assert json.loads((tmp_path / "speed.json").read_text())["archs"]["unet"]["impls"]["segbench"]["train_s"] == 0.5

    second = measure_review_speed(plan, get_profile("quick"), tmp_path, DATA, say=lambda m: None)
    assert calls == ["unet", "segformer", "segformer"]  # only the failed one again
    assert "error" not in second["archs"]["segformer"]

    measure_review_speed(plan, get_profile("quick"), tmp_path, {**DATA, "num_classes": 5}, say=lambda m: None)
    assert calls[3:] == ["unet", "segformer"]  # other settings: everything again


@pytest.mark.parametrize("content", ["", "{not json"])
def test_unreadable_speed_file_reads_as_none(tmp_path, content):
    (tmp_path / "speed.json").write_text(content)
    assert review_speed.read_review_speed(tmp_path) is None
