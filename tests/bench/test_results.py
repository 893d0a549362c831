"""The results table: Pareto front, aggregation over seeds, CSV/JSON round trip, findings."""

import json
import math

import pytest

from segbench.bench.report.findings import findings, overall_findings
from segbench.bench.protocol.record import class_key
from segbench.bench.report.results import aggregate, pareto_front, read_results_csv, write_results


def test_pareto_front_known_points():
    # cost, score: (1, .5) (2, .7) (3, .6) dominated by (2, .7); (4, .9); (4, .8) dominated; (5, .9) dominated.
    costs = [1, 2, 3, 4, 4, 5]
    scores = [0.5, 0.7, 0.6, 0.9, 0.8, 0.9]
    assert pareto_front(costs, scores) == [0, 1, 3]


def test_pareto_front_ignores_missing_and_keeps_ties():
    assert pareto_front([1, None, 2, float("nan")], [0.5, 0.9, 0.6, 1.0]) == [0, 2]
    # Two identical points: neither strictly dominates the other.
    assert pareto_front([1, 1], [0.5, 0.5]) == [0, 1]


def _rows():
    return [
        {"arch": "a", "seed": 0, "status": "ok", "recipe": "cnn", "backbone": "r18", "val_dice_fg_per_case": 0.80, "gflops": 2.0},
        {"arch": "a", "seed": 1, "status": "ok", "recipe": "cnn", "backbone": "r18", "val_dice_fg_per_case": 0.84, "gflops": 2.0},
        {"arch": "b", "seed": 0, "status": "ok", "recipe": "cnn", "backbone": "vgg", "val_dice_fg_per_case": 0.70, "gflops": 1.0},
        {"arch": "b", "seed": 1, "status": "failed", "recipe": "cnn", "backbone": "vgg", "error": "OOM", "val_dice_fg_per_case": None},
        {"arch": "c", "seed": 0, "status": "failed", "recipe": "transformer", "backbone": "mit", "error": "boom"},
    ]


def test_aggregate_mean_std_and_failures():
    table = {r["arch"]: r for r in aggregate(_rows(), ["val_dice_fg_per_case", "gflops"])}
    assert table["a"]["val_dice_fg_per_case"] == pytest.approx(0.82)
    assert table["a"]["val_dice_fg_per_case_std"] == pytest.approx(math.sqrt(((0.02**2) * 2) / 1))
    assert table["a"]["runs"] == 2 and table["a"]["seeds"] == 2 and table["a"]["failed_runs"] == 0
    assert table["b"]["val_dice_fg_per_case"] == pytest.approx(0.70) and table["b"]["val_dice_fg_per_case_std"] == 0.0
    assert table["b"]["runs"] == 1 and table["b"]["failed_runs"] == 1 and table["b"]["error"] == ""
    assert table["c"]["runs"] == 0 and table["c"]["val_dice_fg_per_case"] is None and table["c"]["error"] == "boom"
    assert table["a"]["backbone"] == "r18"


def test_csv_json_round_trip(tmp_path):
    rows = [
        {"arch": "unet", "seed": 0, "val_dice_fg_per_case": 0.123456789012345, "params": 1234, "hd95": float("inf"), "ok": True},
        {"arch": "segnet", "seed": 0, "val_dice_fg_per_case": None, "params": 99, "error": "x, \"quoted\"\nline"},
    ]
    csv_path, json_path = write_results(rows, tmp_path)
    from_csv = read_results_csv(csv_path)
    from_json = json.loads(json_path.read_text())
    assert from_csv == from_json
    assert from_json[0]["val_dice_fg_per_case"] == 0.123456789012345  # exact round trip
    assert from_json[0]["hd95"] is None  # non-finite numbers are missing, in both files
    assert from_json[1]["error"] == "x, \"quoted\"\nline"
    assert list(from_json[0]) == ["arch", "seed", "val_dice_fg_per_case", "params", "hd95", "ok", "error"]


def test_a_hash_of_decimal_digits_stays_text(tmp_path):
    # config_hash is ten hex digits; about 1% of them are all decimal (a sweep's hash depends on its data path)
    rows = [{"arch": "unet", "seed": 0, "config_hash": "3533153248", "params": 1234, "error": ""}]
    csv_path, json_path = write_results(rows, tmp_path)
    assert read_results_csv(csv_path) == json.loads(json_path.read_text())
    assert read_results_csv(csv_path)[0] == {"arch": "unet", "seed": 0, "config_hash": "3533153248", "params": 1234,
                                             "error": None}


def test_write_results_rejects_nested_values(tmp_path):
    with pytest.raises(TypeError, match="flat"):
        write_results([{"arch": "a", "per_class": {"x": 1}}], tmp_path)


def test_class_key_sanitises_names():
    assert class_key("val", "dice", "left ventricle/LV") == "val_dice_left_ventricle_LV"


def _table():
    # Three CNNs and a transformer with known numbers.
    base = {"runs": 1, "seeds": 1, "failed_runs": 0}
    return [
        dict(base, arch="fcn8s", recipe="cnn", val_unit_dice=0.70, gflops=10.0, latency_ms=20.0, params_m=130.0, infer_peak_mb=300.0),
        dict(base, arch="unet", recipe="cnn", val_unit_dice=0.85, gflops=4.0, latency_ms=8.0, params_m=2.0, infer_peak_mb=120.0),
        dict(base, arch="segnet", recipe="cnn", val_unit_dice=0.80, gflops=5.0, latency_ms=9.0, params_m=29.0, infer_peak_mb=60.0),
        dict(base, arch="segformer", recipe="transformer", val_unit_dice=0.83, gflops=1.0, latency_ms=12.0, params_m=3.7, infer_peak_mb=40.0),
    ]


def test_findings_from_known_numbers():
    notes = findings(_table())
    assert notes["unet"][0] == "Most accurate here: Val Dice 0.8500 (1st of 4)."
    assert "Fewest parameters of all 4 architectures here (2.00 M)." in notes["unet"]
    assert "Lowest latency of all 4 architectures here (8.00 ms)." in notes["unet"]
    # SegNet is not the leanest overall (SegFormer is) but it is among the CNNs.
    assert "Lowest inference memory of the CNNs here (60.0 MB)." in notes["segnet"]
    assert "Lowest inference memory of all 4 architectures here (40.0 MB)." in notes["segformer"]
    assert notes["fcn8s"][0] == "4th of 4 on Val Dice (0.7000, 0.1500 behind unet)."
    assert "Most FLOPs of all 4 architectures here (10.00 GFLOPs)." in notes["fcn8s"]
    assert any("Dominated on accuracy vs FLOPs by unet, segnet, segformer" in n for n in notes["fcn8s"])
    assert "On the accuracy-vs-FLOPs and accuracy-vs-latency Pareto front." in notes["unet"]
    assert "On the accuracy-vs-FLOPs Pareto front." in notes["segformer"]  # cheapest FLOPs, but slower than unet
    assert "Reaches 98% of the best Val Dice at 25% of its FLOPs." in notes["segformer"]


def test_findings_seed_noise_and_failures():
    table = _table()
    for r in table:
        r["seeds"] = 3
        r["val_unit_dice_std"] = 0.04
    table.append({"arch": "pspnet", "recipe": "cnn", "runs": 0, "seeds": 0, "val_unit_dice": None, "error": "out of memory"})
    notes = findings(table)
    assert "the gap is within the spread between seeds" in notes["segnet"][0]  # 0.05 <= hypot(.04, .04)
    assert "the gap exceeds the spread between seeds" in notes["fcn8s"][0]  # 0.15 > 0.057
    assert notes["pspnet"] == ["No result: out of memory."]
    overall = overall_findings(table)
    assert overall[0].startswith("Highest Val Dice: unet (0.8500); whether that beats the others")
    assert "Pareto front, Val Dice vs FLOPs: segformer -> unet." in overall
    assert overall[-1] == "Failed: pspnet (see their rows)."


def test_other_sweep_runs_in_out_are_mentioned_and_nothing_else(tmp_path, capsys):
    from types import SimpleNamespace

    from segbench.bench.protocol.record import SPEC_FILE
    from segbench.commands.run import _mention_other_runs

    for name in ("unet-s0-0123456789", "pspnet-s0-abcdefabcd", "my-notes-s1-x"):
        (tmp_path / name).mkdir()
    for name in ("unet-s0-0123456789", "pspnet-s0-abcdefabcd"):
        (tmp_path / name / SPEC_FILE).write_text("{}")
    plan = [SimpleNamespace(run_dir=tmp_path / "unet-s0-0123456789", finished=True)]
    _mention_other_runs(plan, str(tmp_path), report_only=False)
    err = capsys.readouterr().err
    assert "1 run folder(s) of other settings (e.g. pspnet-s0-abcdefabcd)" in err and "my-notes" not in err


def test_costs_over_runs_are_the_median_with_the_runs_range_not_mean_and_std():
    from segbench.bench.report.columns import column
    from segbench.bench.report.render import _best_arch, _cell

    # Issue 25: one seed measured ~530 ms on a busy machine, the other ~4 ms.
    rows = [{"arch": "unet", "status": "ok", "latency_ms": 530.0, "latency_q1_ms": 529.0, "latency_q3_ms": 531.0,
             "latency_noisy": False, "infer_peak_mb": None},
            {"arch": "unet", "status": "ok", "latency_ms": 4.0, "latency_q1_ms": 3.9, "latency_q3_ms": 4.1,
             "latency_noisy": True, "infer_peak_mb": None},
            {"arch": "fcn", "status": "ok", "latency_ms": 9.0, "latency_q1_ms": 8.5, "latency_q3_ms": 9.5,
             "infer_peak_mb": 12.5}]
    keys = [*column("latency_ms").keys, "infer_peak_mb"]
    table = {r["arch"]: r for r in aggregate(rows, keys)}
    unet = table["unet"]
    assert (unet["latency_ms"], unet["latency_ms_min"], unet["latency_ms_max"]) == (267.0, 4.0, 530.0)
    assert unet["latency_ms_std"] is None
    # Marked when any run's figure stayed noisy after re-measuring, not only when the first one did.
    assert _cell(unet, column("latency_ms")) == "267.00 [4.00–530.00] over 2 runs noisy"
    # One run: its interquartile range, as before.
    assert _cell(table["fcn"], column("latency_ms")) == "9.00 [8.50–9.50]"
    # Not measured: an empty cell, never the column's best.
    assert unet["infer_peak_mb"] is None and _cell(unet, column("infer_peak_mb")) == "–"
    assert _best_arch(list(table.values()), column("infer_peak_mb")) == "fcn"


def test_a_zero_memory_in_an_older_bench_json_reads_as_not_measured():
    from segbench.bench.protocol.record import WorkerResult, figures_of

    figures = figures_of(WorkerResult(hash="h", measure={"infer_peak_mb": 0.0, "latency_ms": 4.0}, train_peak_mb=0.0))
    assert figures["infer_peak_mb"] is None and figures["train_peak_mb"] is None and figures["latency_ms"] == 4.0
