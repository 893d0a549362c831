"""Fixtures for the data-layer tests: every dataset is written by the test itself into tmp_path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # The default cache location must never be the user's ~/.cache during tests.
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "segbench_home"))


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def disc_mask(size: tuple[int, int], centre: tuple[int, int], radius: int, label: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2, label, 0).astype(np.uint8)


def make_folder(
    root: Path,
    count: int = 6,
    size: tuple[int, int] = (12, 16),
    rgb: bool = False,
    high: int = 1,
    image_ext: str = ".png",
    prefix: str = "",
    seed: int = 0,
) -> Path:
    """images/ + masks/ with ``count`` pairs; mask k holds a disc of label 1 (times ``high``)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        shape = (*size, 3) if rgb else size
        image = rng.integers(0, 255, shape, dtype=np.uint8)
        mask = disc_mask(size, (size[0] // 2, size[1] // 2), 2 + k % 3) * high
        save_image(root / "images" / f"{prefix}img{k}{image_ext}", image)
        save_image(root / "masks" / f"{prefix}img{k}.png", mask.astype(np.uint8))
    return root


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def ball_volume(shape=(10, 12, 8), centre=None, radius=3.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8): a bright ball (label 1) with a brighter core (label 2)."""
    centre = np.array(centre if centre is not None else [s / 2 for s in shape])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    distance = np.linalg.norm(grid - centre, axis=-1)
    labels = np.where(distance <= radius, 1, 0) + np.where(distance <= radius / 2, 1, 0)
    rng = np.random.default_rng(seed)
    image = (100 + 50 * labels + rng.normal(0, 5, shape)).astype(np.float32)
    return image, labels.astype(np.uint8)


@pytest.fixture
def helpers():
    """The writers above (test modules cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(
        save_image=save_image, disc_mask=disc_mask, make_folder=make_folder, save_nifti=save_nifti, ball_volume=ball_volume
    )
