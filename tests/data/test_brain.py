"""The built-in brain-mri dataset: geometry, labels, slab split, and no nilearn import."""

from __future__ import annotations

import sys

import numpy as np
import torch

from segbench.data import AugmentConfig, DataConfig, load_data
from segbench.data.brain import BRAIN_CLASS_NAMES, brain_volume, template_files


def test_template_is_found_without_importing_nilearn(monkeypatch):
    for name in [m for m in sys.modules if m == "nilearn" or m.startswith("nilearn.")]:
        monkeypatch.delitem(sys.modules, name)
    files = template_files()
    assert all(path.is_file() for path in files.values())
    assert not any(m == "nilearn" or m.startswith("nilearn.") for m in sys.modules)


def test_label_map_rule():
    t1, labels, affine = brain_volume()
    assert t1.shape == labels.shape == (80, 98, 77) and t1.dtype == np.float32
    fractions = np.bincount(labels.ravel(), minlength=4) / labels.size
    # Background, CSF, grey matter, white matter of the cropped 2 mm volume (deterministic rule).
    assert np.allclose(fractions, [0.624, 0.0176, 0.2277, 0.1307], atol=0.002)
    assert np.allclose(np.diag(affine)[:3], 2.0)  # 2 mm voxels
    # White matter is brighter than grey matter in T1, grey brighter than CSF.
    means = [t1[labels == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # Deterministic: the cached function and a fresh computation agree byte for byte.
    fresh = brain_volume.__wrapped__()
    assert np.array_equal(fresh[0], t1) and np.array_equal(fresh[1], labels)


def test_brain_mri_loads_with_a_slab_split(tmp_path):
    data = load_data(DataConfig(source="brain-mri", cache_dir=str(tmp_path), test_fraction=0.1, augment=AugmentConfig(enabled=False)))
    assert data.name == "brain-mri" and data.num_classes == 4 and data.in_channels == 1
    assert data.class_names == BRAIN_CLASS_NAMES and data.volumetric
    sizes = {name: split.slices for name, split in data.report.splits.items()}
    assert sizes == {"train": 50, "val": 14, "test": 5}
    item = data.splits["val"][0]
    assert item["image"].shape == (1, 80, 98) and item["case"] == "mni152"
    assert item["spacing"] == (2.0, 2.0, 2.0)  # mm: the 2 mm grid, so surface distances are in mm
    assert set(torch.unique(item["mask"]).tolist()) <= {0, 1, 2, 3}
    slices = {name: {index for _, index in ds.items} for name, ds in data.splits.items()}
    assert min(abs(a - b) for a in slices["train"] for b in slices["val"] | slices["test"]) > 2
