"""The slice cache: a second load decodes nothing; changed options or files rebuild; builds are atomic."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from segbench.data import AugmentConfig, DataConfig, DataError, imageio, load_data
from segbench.data.cache import cache_root

NO_AUGMENT = AugmentConfig(enabled=False)


@pytest.fixture
def decode_counter(monkeypatch):
    calls = {"image": 0, "mask": 0}
    read_image, read_mask = imageio.read_image, imageio.read_mask

    def counting_image(path):
        calls["image"] += 1
        return read_image(path)

    def counting_mask(path):
        calls["mask"] += 1
        return read_mask(path)

    monkeypatch.setattr(imageio, "read_image", counting_image)
    monkeypatch.setattr(imageio, "read_mask", counting_mask)
    return calls


def _all_items(data):
    return [(item["image"], item["mask"]) for split in data.splits.values() for item in split]


def test_second_load_decodes_nothing_and_serves_the_same_tensors(tmp_path, helpers, decode_counter):
    root = helpers.make_folder(tmp_path / "ds", count=5)
    cfg = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), augment=NO_AUGMENT)
    first = load_data(cfg)
    assert decode_counter == {"image": 5, "mask": 5}
    second = load_data(cfg)
    assert decode_counter == {"image": 5, "mask": 5}  # no decode at all
    for (image_a, mask_a), (image_b, mask_b) in zip(_all_items(first), _all_items(second)):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)
    # Split, seed and augmentation are applied on top of the cache: no rebuild either.
    load_data(DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), seed=3, val_fraction=0.4))
    assert decode_counter == {"image": 5, "mask": 5}
    # Cached slices are memory-mapped, not loaded.
    store = first.splits["train"].store
    assert isinstance(store._array("000000_image.npy"), np.memmap)


@pytest.mark.parametrize("change", [{"resize": (6, 8)}, {"ignore_index": 100}, {"reduce_zero_label": True}])
def test_changed_option_misses_the_cache(tmp_path, helpers, decode_counter, change):
    root = helpers.make_folder(tmp_path / "ds", count=4)
    base = dict(source=str(root), cache_dir=str(tmp_path / "cache"))
    load_data(DataConfig(**base))
    assert decode_counter["image"] == 4
    if "reduce_zero_label" in change:  # 0/1 masks then hold one class: refused (issue 26), once the cache missed
        with pytest.raises(DataError, match="no foreground"):
            load_data(DataConfig(**base, **change))
    else:
        changed = load_data(DataConfig(**base, **change))
    assert decode_counter["image"] == 8
    if "resize" in change:
        assert changed.splits["val"][0]["image"].shape == (1, 6, 8)


def test_touched_file_misses_the_cache(tmp_path, helpers, decode_counter):
    root = helpers.make_folder(tmp_path / "ds", count=4)
    cfg = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"))
    load_data(cfg)
    mask = root / "masks" / "img2.png"
    helpers.save_image(mask, np.zeros((12, 16), dtype=np.uint8))
    os.utime(mask, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    load_data(cfg)
    assert decode_counter["mask"] == 8


def test_failed_build_leaves_no_cache_and_default_location(tmp_path, helpers, monkeypatch):
    root = helpers.make_folder(tmp_path / "ds", count=3)
    helpers.save_image(root / "masks" / "img1.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(DataError):
        load_data(DataConfig(source=str(root)))
    location = cache_root(DataConfig())
    assert location == tmp_path / "segbench_home" / "cache"  # $SEGBENCH_HOME/cache
    assert list(location.iterdir()) == []  # the temporary build folder was removed
    monkeypatch.delenv("SEGBENCH_HOME")
    assert cache_root(DataConfig()) == cache_root(DataConfig(cache_dir="~/.cache/segbench/cache"))
