import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT = SCRIPTS / "gpu_check.sh"


def test_gpu_check_script_parses():
    # It cannot run here (no GPU); at least bash must accept it. Its install step runs in test_offline_install.py.
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert 'OUT="${1:-gpu_check_out}"' in text and "kill -9" in text and "--nproc_per_node=2 -m segbench" in text
    assert "--install-only" in text and "pip install" not in text  # installs go through scripts/offline_deps.py


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_gpu_check_script_is_shellcheck_clean():
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def summary(out: Path) -> str:
    done = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check_summary.py"), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_summary_of_a_run_that_failed_early_says_where(tmp_path):
    (tmp_path / "steps.tsv").write_text("install\tok\t12\nenvironment\tFAILED\t3\n")
    text = summary(tmp_path)
    assert "device: not recorded" in text and "review: no finished run" in text and "speed: no table" in text
    assert text.rstrip().splitlines()[-1] == "result: FAILED at environment"


def test_summary_lays_out_what_the_steps_wrote(tmp_path):
    (tmp_path / "steps.tsv").write_text("install\tok\t12\nreview\tok\t130\nddp\tskipped (1 GPU)\t0\n")
    (tmp_path / "environment.json").write_text(json.dumps(
        {"python": "3.12.3", "torch": "2.11.0+cu130", "cuda": "13.0", "cudnn": 91000,
         "gpus": [{"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}]}))
    run = tmp_path / "review" / "unet-0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(
        {"arch": "unet", "device": "cuda:0", "precision": "bf16", "resumed_from": 20, "best_metric": "mDice_fg",
         "best_value": 0.81234, "best_iteration": 60, "train_images_per_s": 1234.5}))
    (tmp_path / "eval-unet-0.log").write_text("val (best checkpoint):\naAcc 0.98  mIoU 0.75\n  class ...\n")
    (tmp_path / "speed.log").write_text("segbench speed: 1 architecture(s)\narch  impl      precision  train ms\n"
                                        "----  --------  ---------  --------\nunet  segbench  bf16       3.2 ±1%\n\n"
                                        "bf16 matmul 4096x4096 (same rounds, median): 700000.0 GFLOP/s\nunet: a note\n")
    lines = summary(tmp_path).rstrip().splitlines()
    assert "NVIDIA H100 80GB HBM3 (capability 9.0)" in lines[2] and "total 2 min 22 s" in lines[3]
    assert any("unet" in line and "resumed at iteration 20" in line and "0.8123" in line for line in lines)
    assert "    eval val, best checkpoint: aAcc 0.98  mIoU 0.75" in lines
    assert "  unet  segbench  bf16       3.2 ±1%" in lines and any(" matmul " in line for line in lines)
    assert not any("a note" in line for line in lines) and lines[-1] == "result: PASSED"
