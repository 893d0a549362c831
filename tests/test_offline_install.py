"""``scripts/gpu_check.sh --install-only`` on a Python like a borrowed GPU machine's: torch and most of segbench's
requirements installed, nibabel not, and pip reaching no index.

The "image" is a venv whose site-packages links to every package of the Python running the tests except
nibabel and segbench. ``make wheelhouse`` fetches nibabel (3 MB, pure Python), so that test needs an index
(CI has PyPI): it skips, saying so, where pip reaches none, and fails under ``SEGBENCH_REQUIRE_NETWORK=1``.
"""

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = ("nibabel", "segbench")  # what the image lacks: one dependency, and segbench itself
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

pytest.importorskip("onnx")  # the check installs the onnx extra too: the tests' Python must have it, as CI's has
pytest.importorskip("onnxruntime")


@pytest.fixture
def image_python(tmp_path) -> Path:
    """A Python with this one's packages but nibabel and segbench, as a venv whose site-packages holds links."""
    image = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(image)], check=True)
    site_packages = image / "lib" / f"python{VERSION}" / "site-packages"
    skip = {part for name in LEFT_OUT for part in {f.parts[0] for f in importlib.metadata.distribution(name).files}}
    skip -= {"..", "__pycache__"}
    for folder in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]):
        for entry in Path(folder).iterdir():
            if entry.name not in skip and not (site_packages / entry.name).exists():
                (site_packages / entry.name).symlink_to(entry)
    return image / "bin" / "python"


def install_only(image_python: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The script's install step, pip forbidden every index and this machine's pip configuration."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environment |= {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PYTHON": str(image_python),
                    "GPU_VENV": str(tmp_path / "venv-gpu"), **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--install-only", str(tmp_path / "out")],
                          capture_output=True, text=True, env=environment, timeout=300)


def test_install_without_a_wheelhouse_names_what_is_missing(image_python, tmp_path):
    done = install_only(image_python, tmp_path)
    assert done.returncode != 0, done.stdout
    missing = [line for line in done.stdout.splitlines() if line.startswith("missing:")]
    assert missing == ["missing: nibabel>=5.0 (not installed)"], done.stdout
    assert f"make wheelhouse PY_VERSION={VERSION} " in done.stdout and "WHEELHOUSE_PACKAGES='nibabel>=5.0'" in done.stdout
    assert "stopped before installing anything" in done.stdout
    assert not list((tmp_path / "venv-gpu").glob("lib/*/site-packages/*segbench*")), "segbench was installed anyway"
    assert (tmp_path / "out" / "check.log").read_text() == done.stdout  # everything printed is in the log


@pytest.fixture
def wheelhouse(tmp_path) -> Path:
    """``make wheelhouse`` for nibabel alone, for this Python."""
    reached = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(tmp_path / "probe"),
                              "nibabel>=5.0"], capture_output=True, text=True)
    if reached.returncode != 0:
        if os.environ.get("SEGBENCH_REQUIRE_NETWORK") == "1":
            pytest.fail(f"pip reaches no index: {reached.stderr.strip().splitlines()[-1:]}")
        pytest.skip("make wheelhouse needs a package index and pip reaches none here (CI has PyPI)")
    folder = tmp_path / "wheelhouse"
    subprocess.run(["make", "-s", "-C", str(ROOT), "wheelhouse", f"WHEELHOUSE={folder}", "WHEELHOUSE_PACKAGES=nibabel",
                    f"PY_VERSION={VERSION}", f"DOWNLOAD_PY={sys.executable}"], check=True)
    return folder


def test_install_from_a_wheelhouse_adds_the_missing_dependency_and_leaves_torch(image_python, wheelhouse, tmp_path):
    done = install_only(image_python, tmp_path, WHEELHOUSE=str(wheelhouse))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "missing: none" in done.stdout.splitlines()
    venv_python = tmp_path / "venv-gpu" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-c", "import nibabel, segbench, torch; "
                            "print(nibabel.__file__, segbench.__file__, torch.__file__, sep='\\n')"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv-gpu")), where  # from the wheel folder, into the venv
    assert where[1] == str(ROOT / "segbench" / "__init__.py"), where
    assert not where[2].startswith(str(tmp_path / "venv-gpu")), where  # the image's own torch, untouched
    again = install_only(image_python, tmp_path)  # nothing left to install: no wheel folder needed any more
    assert again.returncode == 0 and "missing: none" in again.stdout.splitlines(), again.stdout
