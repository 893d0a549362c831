"""`segbench run` end to end: two small architectures for a few iterations on synthetic PNG data.

Checks the report's files, that the comparison table has a number in every cell, that results.json
matches results.csv, that running the same command again trains nothing, that a failing run is
recorded while the sweep goes on, and that the HTML opens in headless Chromium without script errors
(and its table sorts).
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segbench.bench.protocol.profiles import get_profile
from segbench.bench.report.render import JS_ERRORS, JS_MARKER
from segbench.bench.report.columns import COLUMNS
from segbench.bench.report.results import read_results_csv
from segbench.bench.protocol.review_input import review_input
from segbench.bench.report.review import write_review
from segbench.bench.protocol.runs import run_record
from segbench.bench.protocol.record import is_sweep_run
from segbench.bench.protocol.sweep import write_spec, plan_sweep, run_sweep
from segbench.commands.run import run

ARCHS = ("unet", "segformer")
CHROMIUM = "/usr/bin/chromium"


def write_synthetic_data(root: Path, size: int = 32, splits=(("train", 8), ("val", 4), ("test", 2))) -> Path:
    """images/{train,val,test} + masks/...: a bright disc (class 1) and a dark bar (class 2) on noise.
    A split named "" puts its images straight in images/ and masks/ (no split folders)."""
    rng = np.random.default_rng(0)
    for split, count in splits:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            yy, xx = np.mgrid[:size, :size]
            cy, cx = rng.integers(8, size - 8, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 1
            row = rng.integers(2, size - 4)
            band = mask[row : row + 3]
            band[band == 0] = 2
            image = 60 + 120 * (mask == 1) - 40 * (mask == 2) + rng.normal(0, 15, mask.shape)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
    return root


def _args(data: Path, out: Path) -> list[str]:
    return [str(data), "--archs", ",".join(ARCHS), "--iterations", "30", "--out", str(out),
            "--set", "data.resize=[32,32]", "--no-progress", "--no-ensembles"]  # candidates: test_run_ensembles.py


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep, shared by the tests of this module (workers inherit SEGBENCH_HOME: a private cache)."""
    root = tmp_path_factory.mktemp("review")
    data = write_synthetic_data(root / "data")
    out = root / "out"
    old_home = os.environ.get("SEGBENCH_HOME")
    os.environ["SEGBENCH_HOME"] = str(root / "home")
    try:
        result = CliRunner().invoke(run, _args(data, out), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        yield {"root": root, "data": data, "out": out, "output": result.output}
    finally:
        if old_home is None:
            os.environ.pop("SEGBENCH_HOME", None)
        else:
            os.environ["SEGBENCH_HOME"] = old_home


def _table_cells(html: str) -> list[list[str]]:
    body = re.search(r'<table id="results">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [re.findall(r'<td[^>]*data-v="([^"]*)"', row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_every_file_exists(sweep):
    report = sweep["out"] / "report"
    for name in ("index.html", "report.md", "results.csv", "results.json", "accuracy_vs_flops.png",
                 "accuracy_vs_latency.png", "training_curves.png", "class_dice.png", "predictions.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    run_dirs = sorted(p.name for p in sweep["out"].iterdir() if p.is_dir() and p.name != "report")
    assert [re.sub(r"-[0-9a-f]{10}$", "", n) for n in run_dirs] == sorted(f"{a}-s0" for a in ARCHS)
    for name in run_dirs:
        for file in ("config.yaml", "log.jsonl", "metrics.json", "best.pt", "bench.json", "preview.npz", "per_case_val.csv",
                     "sweep_run.json"):  # the spec too: training's fresh start keeps it
            assert (sweep["out"] / name / file).is_file(), (name, file)
        assert is_sweep_run(sweep["out"] / name)
        # The best checkpoint's per-case rows: the per-case means of metrics.json come from them.
        val = json.loads((sweep["out"] / name / "metrics.json").read_text())["val"]
        with open(sweep["out"] / name / "per_case_val.csv") as f:
            cases = list(csv.DictReader(f))
        assert len(cases) == val["num_cases"] * len(val["dice_per_case"])
        for cls, mean in val["dice_per_case"].items():
            scores = [float(r["dice"]) for r in cases if r["class"] == cls and r["dice"] != ""]
            assert (sum(scores) / len(scores) if scores else None) == pytest.approx(mean, nan_ok=True)


def test_table_has_a_number_in_every_cell(sweep):
    rows = read_results_csv(sweep["out"] / "report" / "results.csv")
    assert sorted(r["arch"] for r in rows) == sorted(ARCHS)
    for row in rows:
        assert row["status"] == "ok", row["error"]
        # the others are the architectures' (statistics.json); nnunet_*: the nnU-Net anchor's own figures;
        # onnx_*: only with --latency-engine onnx (tests/bench/test_deployment_budget.py)
        for column in (c for c in COLUMNS if c.per_run and not c.key.startswith(("nnunet_", "onnx_"))):
            assert isinstance(row[column.key], (int, float)), (row["arch"], column.key, row[column.key])
        assert row["input_size"] == "32x32" and row["iterations"] == 30
        assert 0.0 <= row["val_dice_fg_per_case"] <= 1.0 and row["params"] > 0
        assert row["timing_rounds"] == get_profile("quick").timing_rounds
        assert row["latency_q1_ms"] <= row["latency_ms"] <= row["latency_q3_ms"]
        assert row["throughput_lo_ips"] <= row["throughput_ips"] <= row["throughput_hi_ips"]
        # One precision: the measurement's is the training's.
        assert row["measure_precision"] == row["precision"] in ("fp32", "bf16")
    html = (sweep["out"] / "report" / "index.html").read_text()
    cells = _table_cells(html)
    assert len(cells) == len(ARCHS)
    statistics = json.loads((sweep["out"] / "report" / "statistics.json").read_text())
    comparison = statistics["comparison"]
    answers = {"leader", "worse", "equivalent", "inconclusive", "not shown learned"}
    for row in cells:
        # architecture, backbone, then numbers only: every column (the answer only where a claim was possible),
        # bar the text of the answer and the leader's empty difference from itself
        # (the ensembles' columns only with --ensembles: none here)
        # and the nnU-Net anchor's own columns only with --anchor, the ONNX latency only with --latency-engine onnx
        candidate_only = {"vs_best_single", "best_single_answer", "dice_per_ms"} | {
            c.key for c in COLUMNS if c.key.startswith(("nnunet_", "onnx_"))}
        assert len(row) == 3 + len([c for c in COLUMNS if c.key not in candidate_only]) - (not comparison["inferential"])
        texts = [value for value in row[2:] if value in answers]
        assert len(texts) == comparison["inferential"]
        empty = [value for value in row[2:] if value == ""]
        assert len(empty) == (row[0] == comparison["leader"])
        for value in row[2:]:
            if value not in answers and value != "":
                float(value)


def test_json_matches_csv(sweep):
    report = sweep["out"] / "report"
    from_json = json.loads((report / "results.json").read_text())
    assert from_json == read_results_csv(report / "results.csv")
    assert all(r["arch"] in ARCHS for r in from_json)


def test_report_is_self_contained_and_describes_the_run(sweep):
    html = (sweep["out"] / "report" / "index.html").read_text()
    assert "<link" not in html and not re.search(r'src="(?!data:)', html)
    statistics = json.loads((sweep["out"] / "report" / "statistics.json").read_text())
    # the intervals and the rank distribution only where the comparison could make a claim
    assert html.count('src="data:image/png;base64,') == 5 + 2 * statistics["comparison"]["inferential"]
    for arch in ARCHS:
        assert f'id="arch-{arch}"' in html
    assert "Main innovation" in html and "Measured in this run" in html
    assert "Intel" in html or "device_name" in html  # the machine is printed
    md = (sweep["out"] / "report" / "report.md").read_text()
    assert "| Architecture | Backbone | Runs |" in md and "`iterations`: 30" in md
    assert "data.resize=[32,32]" in md  # the command-line override is printed with the settings


def test_speed_section_is_measured_with_the_review_settings(sweep):
    speed = json.loads((sweep["out"] / "speed.json").read_text())
    assert list(speed["archs"]) == list(ARCHS)
    assert speed["settings"]["size"] == [32, 32] and speed["settings"]["batch"] == get_profile("quick").batch_size
    assert speed["settings"]["options"]["unet"] == get_profile("quick").arch_options["unet"]
    segformer, unet = speed["archs"]["segformer"], speed["archs"]["unet"]
    assert segformer["peer_name"].startswith("transformers") and segformer["ratio"]["train"] > 0
    assert "peer" not in unet["impls"] and unet["channels_last"] and not segformer["channels_last"]
    assert unet["impls"]["segbench"]["train_matmul_fraction"] > 0
    html = (sweep["out"] / "report" / "index.html").read_text()
    body = re.search(r'<table id="speed-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]
    assert [row[0] for row in rows] == list(ARCHS)
    csv_rows = read_results_csv(sweep["out"] / "report" / "results.csv")
    for row, result in zip(rows, csv_rows):
        assert row[2] == result["precision"]  # timed in the precision the run trained in
        for cell in row[3:5]:  # train and inference: median ms [interquartile range], as the comparison table
            assert re.fullmatch(r"[\d,]+\.\d<br><small>\[[\d,]+\.\d–[\d,]+\.\d\]( noisy)?</small>", cell), cell
        assert re.fullmatch(r"\d+\.\d", row[-2]) and re.fullmatch(r"\d+\.\d", row[-1])  # data wait, metrics (%)
    assert rows[1][9] == rows[1][10] != "–"  # Params, Peer params: the same configuration, so a ratio
    # The ratio, with its interval when the rounds paired up (both kept the same measurement attempt).
    ratio = re.fullmatch(r"(\d+\.\d\d)(<br><small>\[(\d+\.\d\d)–(\d+\.\d\d)\]</small>)?", rows[1][11])
    assert ratio and float(ratio[1]) == round(segformer["ratio"]["train"], 2), rows[1][11]
    interval = segformer.get("ratio_interval", {}).get("train")
    assert (ratio[2] is None) == (interval is None)
    if interval:
        assert [float(ratio[3]), float(ratio[4])] == [round(v, 2) for v in sorted(interval)]
    assert "## Speed" in (sweep["out"] / "report" / "report.md").read_text()
    # One measurement for the table's throughput and the section's inference time.
    for result in csv_rows:
        infer_s = speed["archs"][result["arch"]]["impls"]["segbench"]["infer_s"]
        assert result["throughput_ips"] == pytest.approx(speed["settings"]["batch"] / infer_s)
    assert "Drift: the matmul timed with each architecture" in html
    assert all(0 < r["data_time_s"] < r["train_time_s"] and 0 < r["val_metrics_time_s"] < r["val_time_s"] for r in csv_rows)


def test_rerun_trains_nothing(sweep):
    run_files = sorted(sweep["out"].glob("*/last.pt")) + sorted(sweep["out"].glob("*/bench.json"))
    before = {p: p.stat().st_mtime_ns for p in run_files}
    result = CliRunner().invoke(run, _args(sweep["data"], sweep["out"]), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier") == len(ARCHS)
    assert "0 ran (0 failed), 2 reused" in result.output
    assert "speed 1/" not in result.output  # the speed figures of these settings are reused too
    assert {p: p.stat().st_mtime_ns for p in run_files} == before


def test_no_speed_leaves_the_speed_section_out(sweep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    (out / "speed.json").unlink()
    result = CliRunner().invoke(run, _args(sweep["data"], out) + ["--no-speed"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 ran (0 failed), 2 reused" in result.output and "speed 1/" not in result.output
    assert not (out / "speed.json").exists()
    assert 'id="speed-table"' not in (out / "report" / "index.html").read_text()
    assert "## Speed" not in (out / "report" / "report.md").read_text()


def test_a_latency_budget_restricts_the_verdict_and_draws_the_line(sweep, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    summary = {row["arch"]: row for row in read_results_csv(sweep["out"] / "report" / "summary.csv")}
    fast, slow = sorted(ARCHS, key=lambda a: summary[a]["latency_ms"])
    limit = (summary[fast]["latency_ms"] + summary[slow]["latency_ms"]) / 2
    result = CliRunner().invoke(run, _args(sweep["data"], out) + ["--report-only", "--latency-budget", f"{limit}ms"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "report" / "deployment_budget.json").read_text())
    assert saved["within"] == [fast] and list(saved["outside"]) == [slow]
    verdict = (out / "report" / "report.md").read_text().split("## Verdict", 1)[1].split("## Findings", 1)[0]
    assert f"Deployment budget: latency <= {limit:g} ms" in verdict and f"Within it: {fast}." in verdict
    assert f"Outside the budget: {slow} (latency " in verdict
    assert f"One architecture within the budget: {fast} " in verdict
    assert (out / "report" / "accuracy_vs_latency.png").stat().st_size > 0


def test_settings_change_the_run_folder(sweep):
    profile = get_profile("quick")
    common = dict(data=str(sweep["data"]), profile=profile, out=sweep["out"], archs=["unet"], overrides=["data.resize=[32,32]"])
    same = plan_sweep(iterations=30, **common)[0]
    assert same.finished  # the folder the sweep wrote
    other = plan_sweep(iterations=31, **common)[0]
    assert other.run_dir != same.run_dir and not other.finished
    assert [r.seed for r in plan_sweep(iterations=30, seeds=2, **common)] == [0, 1]
    with pytest.raises(KeyError, match="unknown architecture"):
        plan_sweep(iterations=30, **{**common, "archs": ["unet", "nosuchnet"]})


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    profile = get_profile("quick")
    with pytest.raises(ValueError, match="no dataset folder"):
        plan_sweep(data=str(tmp_path / "missing"), profile=profile, out=tmp_path / "out")
    (tmp_path / "empty").mkdir()  # exists, but holds no images: the data layer fails inside the workers
    plan = plan_sweep(data=str(tmp_path / "empty"), profile=profile, out=tmp_path / "out", archs=["unet", "segformer"],
                      iterations=2)
    messages = []
    counts = run_sweep(plan, profile, progress=False, say=messages.append)
    assert counts == {"skipped": 0, "ran": 2, "failed": 2}
    rows = [run_record(r).row() for r in plan]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("while loading data" in r["error"] for r in rows)
    assert sum("FAILED" in m for m in messages) == 2
    # The report still gets written, and says what went wrong.
    html = write_review(review_input(plan, profile, tmp_path / "out"), "segbench run (test)").read_text()
    assert html.count("failed: DataError while loading data") == 2
    assert "Failed: unet, segformer (see their rows)." in html


def test_killed_run_resumes_where_it_stopped(sweep, tmp_path):
    """SIGKILL a worker once it has saved a checkpoint; the next sweep continues that run."""
    profile = get_profile("quick")
    plan = plan_sweep(data=str(sweep["data"]), profile=profile, out=tmp_path / "out", archs=["unet"], iterations=60,
                      overrides=["data.resize=[32,32]", "train.checkpoint_interval=5"])
    run_dir = plan[0].run_dir
    write_spec(plan[0], profile)
    worker = subprocess.Popen([sys.executable, "-m", "segbench.bench.protocol.worker", str(run_dir), "--no-progress"])
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "last.pt").is_file() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.wait()
    assert worker.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    assert not plan[0].finished
    messages = []
    assert run_sweep(plan, profile, progress=False, say=messages.append) == {"skipped": 0, "ran": 1, "failed": 0}
    assert "resuming" in messages[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["resumed_from"] < 60 and metrics["iterations"] == 60
    assert run_record(plan[0]).row()["status"] == "ok"


def _chromium_dom(page: Path, tmp_path: Path) -> tuple[str, str]:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_html_opens_in_headless_chromium_and_sorts(sweep, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium'); the HTML check needs it")
    html = (sweep["out"] / "report" / "index.html").read_text()
    # A copy with a script that clicks the Params header twice and records the row orders.
    probe = """<script>
    (function(){
      var th=Array.prototype.filter.call(document.querySelectorAll('#results thead th'),
        function(h){return h.textContent.indexOf('Params')===0;})[0];
      function order(){return Array.prototype.map.call(document.querySelectorAll('#results tbody tr'),
        function(r){return r.cells[0].textContent;}).join(',');}
      th.click(); var up=order(); th.click(); var down=order();
      document.body.setAttribute('data-sorted', up+';'+down);
    })();
    </script></body>"""
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe))
    dom, log = _chromium_dom(page, tmp_path)
    assert f'{JS_MARKER}="ok"' in dom, "the report's script did not run to the end"
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert JS_ERRORS not in html_tag, html_tag  # the page's error catcher records script errors there
    assert "Uncaught" not in log, log[-2000:]
    rows = read_results_csv(sweep["out"] / "report" / "results.csv")
    ascending = ",".join(r["arch"] for r in sorted(rows, key=lambda r: r["params"]))
    descending = ",".join(r["arch"] for r in sorted(rows, key=lambda r: -r["params"]))
    assert f'data-sorted="{ascending};{descending}"' in dom
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_the_verdict_is_generated_from_the_statistics(sweep):
    report = sweep["out"] / "report"
    statistics = json.loads((report / "statistics.json").read_text())
    comparison = statistics["comparison"]
    assert statistics["unit"] in ("case", "block") and comparison["leader"] in ARCHS
    assert set(comparison["architectures"]) == set(ARCHS)
    markdown = (report / "report.md").read_text()
    verdict = markdown.split("## Verdict", 1)[1].split("## Findings", 1)[0]
    lead = comparison["architectures"][comparison["leader"]]
    if comparison["inferential"]:
        for arch, figures in comparison["architectures"].items():
            assert figures["ci_low"] <= figures["mean"] <= figures["ci_high"], arch
        assert f"{comparison['leader']} {lead['mean']:.4f} [{lead['ci_low']:.4f}–{lead['ci_high']:.4f}]" in verdict
    else:  # too few units for any claim: the means only, and no best
        assert "No interval or test" in verdict and "Best:" not in verdict
    with open(report / "per_case.csv") as f:
        assert {row["arch"] for row in csv.DictReader(f)} == set(ARCHS)
    summary = {row["arch"]: row for row in read_results_csv(report / "summary.csv")}
    for arch, figures in comparison["architectures"].items():  # the table's headline is the verdict's quantity
        assert summary[arch]["val_unit_dice"] == pytest.approx(figures["mean"])
        interval = (summary[arch]["val_unit_dice_low"], summary[arch]["val_unit_dice_high"])
        expected = (figures["ci_low"], figures["ci_high"])
        assert interval == (pytest.approx(expected) if None not in expected else expected)
    assert 'id="verdict"' in (report / "index.html").read_text()


def test_cross_validation_runs_every_fold_and_scores_every_case_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    data = write_synthetic_data(tmp_path / "data", splits=(("", 12),))
    out = tmp_path / "out"
    result = CliRunner().invoke(run, [str(data), "--archs", "unet", "--iterations", "4", "--folds", "3", "--out", str(out),
                                      "--set", "data.resize=[32,32]", "--no-progress", "--no-speed", "--no-ensembles"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name[:7] for p in out.glob("unet-f*")) == ["unet-f0", "unet-f1", "unet-f2"]
    with open(out / "report" / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["class"] == "class_1"]
    assert sorted(r["case"] for r in rows) == sorted(f"{i}" for i in range(12))  # each case in one fold
    assert {r["run"] for r in rows} == {"fold 0 seed 0", "fold 1 seed 0", "fold 2 seed 0"}
    statistics = json.loads((out / "report" / "statistics.json").read_text())
    assert statistics["folds"] == 3 and statistics["seeds"] == {"unet": 1} and statistics["n_units"] == 12
    results = read_results_csv(out / "report" / "results.csv")
    assert sorted(r["fold"] for r in results) == [0, 1, 2]  # each run's fold, not three rows of "seed 0"


def test_a_missing_nnunet_is_one_line_and_the_review_goes_on_without_its_row(sweep):
    # This Python lacks nnU-Net: the anchor is skipped with one line naming how to install it; nothing retrains.
    result = CliRunner().invoke(run, _args(sweep["data"], sweep["out"]) + ["--anchor", "nnunet", "--anchor-python", sys.executable],
                                catch_exceptions=False)
    if "import nnunetv2" not in result.output:
        pytest.skip("this Python has nnU-Net (the peers environment): tests/bench/test_anchor_nnunet.py runs it")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("nnU-Net anchor:"))
    assert "pip install nnunetv2" in line and "make peers" in line
    assert "finished earlier" in result.output and not list(sweep["out"].glob("nnunet*"))
    assert "nnunet" not in {row["arch"] for row in json.loads((sweep["out"] / "report" / "summary.json").read_text())}


def test_a_wrong_anchor_is_a_usage_error_before_anything_runs(sweep, tmp_path):
    result = CliRunner().invoke(run, _args(sweep["data"], tmp_path / "out") + ["--anchor", "nnunet:3d"])
    assert result.exit_code == 2 and "auto, 2d, 3d_fullres" in result.output and not (tmp_path / "out").exists()


def test_an_anchor_run_is_a_row_of_the_table_and_of_the_statistics(sweep, tmp_path):
    """An anchor's run folder as nnU-Net's worker leaves it (here: a copy of unet's scores under another name)
    is a row marked ``anchor``, in results.csv and in the per-unit statistics, and the verdict speaks of it."""
    from segbench.bench.protocol.anchor import AnchorRun

    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    unet = next(p for p in out.iterdir() if p.name.startswith("unet-"))
    anchor_dir = out / "nnunet-s0-abc"
    anchor_dir.mkdir()
    for name in ("bench.json", "per_case_val.csv"):
        shutil.copy(unet / name, anchor_dir / name)
    result = json.loads((anchor_dir / "bench.json").read_text())
    # what the anchor's worker records: its validation scores and nnU-Net's plan (no zoo architecture's name)
    result.update(hash="abc", metrics={"val": result["metrics"]["val"], "nnunet_configuration": "2d",
                                       "nnunet_patch_size": "32x32", "iterations_run": 30})
    (anchor_dir / "bench.json").write_text(json.dumps(result))
    plan = plan_sweep(data=str(sweep["data"]), profile=get_profile("quick"), out=str(out), archs=list(ARCHS), seeds=1,
                      iterations=30, overrides=["data.resize=[32,32]"], budget=None, lr=None, folds=None)
    anchors = [AnchorRun("nnunet", None, 0, anchor_dir, "abc", "auto")]
    write_review(review_input(plan, get_profile("quick"), out, anchors=anchors), "segbench run")
    summary = {row["arch"]: row for row in json.loads((out / "report" / "summary.json").read_text())}
    assert summary["nnunet"]["anchor"] is True and summary["nnunet"]["backbone"] == "nnU-Net 2d U-Net (its own plan)"
    assert summary["nnunet"]["val_unit_dice"] == pytest.approx(summary["unet"]["val_unit_dice"])  # the same per-case file
    assert "nnunet" in {row["arch"] for row in read_results_csv(out / "report" / "results.csv")}
    report = (out / "report" / "report.md").read_text()
    assert "the nnU-Net anchor (nnunet" in report and "Isensee et al." in report
