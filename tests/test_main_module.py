import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_dash_m_segbench_runs_the_cli():
    # What `torchrun --nproc_per_node=N -m segbench train ...` starts in every process.
    done = subprocess.run([sys.executable, "-m", "segbench", "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: segbench" in done.stdout and "train" in done.stdout and "eval" in done.stdout
    done = subprocess.run([sys.executable, "-m", "segbench", "train", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "--out" in done.stdout
