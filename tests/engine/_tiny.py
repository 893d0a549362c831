"""A tiny dataset and model for engine tests (no registry entry outside a test's monkeypatch).

Loaded by file path from ``conftest.py`` and ``ddp_worker.py`` so subprocesses can use it too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from segbench.models.blocks import SegmentationModel
from segbench.data import SegmentationData
from segbench.data.dataset import Normalization
from segbench.models.registry import ModelEntry


class SimulatedKill(BaseException):
    """Raised from inside the data pipeline to stand for SIGKILL at an arbitrary moment."""


class TinySegmentation(Dataset):
    """Images with a bright square (class 1) and a dark bar (class 2) on noise; 16 x 16, 1 channel.

    Training items are "augmented" with noise drawn from a generator seeded by (seed, epoch,
    index), like the real data layer. ``cases`` groups items into volumes of ``slices`` slices.
    ``kill_after``: raise SimulatedKill on that many-th ``__getitem__`` (counted across instances).
    """

    calls = 0
    kill_after: int | None = None

    def __init__(self, count: int, seed: int = 0, augment: bool = False, slices: int = 1, size: int = 16,
                 nan_from_epoch: int | None = None):
        rng = np.random.default_rng(seed)
        self.images, self.masks = [], []
        for _ in range(count):
            mask = np.zeros((size, size), dtype=np.int64)
            top, left = rng.integers(0, size // 2, size=2)
            mask[top : top + size // 3, left : left + size // 3] = 1
            bar = rng.integers(0, size - 2)
            mask[bar : bar + 2, :] = np.where(mask[bar : bar + 2, :] == 0, 2, mask[bar : bar + 2, :])
            image = rng.normal(0, 0.3, size=(1, size, size)).astype(np.float32)
            image[0][mask == 1] += 1.5
            image[0][mask == 2] -= 1.5
            self.images.append(torch.from_numpy(image))
            self.masks.append(torch.from_numpy(mask))
        self.seed, self.augment, self.slices, self.epoch = seed, augment, slices, 0
        self.nan_from_epoch = nan_from_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        TinySegmentation.calls += 1
        if TinySegmentation.kill_after is not None and TinySegmentation.calls >= TinySegmentation.kill_after:
            TinySegmentation.kill_after = None
            raise SimulatedKill(f"killed at item call {TinySegmentation.calls}")
        image = self.images[index]
        if self.augment:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + index)
            image = image + 0.1 * torch.randn(image.shape, generator=generator)
        if self.nan_from_epoch is not None and self.epoch >= self.nan_from_epoch:
            image = torch.full_like(image, float("nan"))
        return {"image": image, "mask": self.masks[index], "case": f"case{index // self.slices}",
                "index": index % self.slices}


def tiny_data(train: int = 14, val: int = 6, test: int = 0, size: int = 16, **kwargs) -> SegmentationData:
    splits = {"train": TinySegmentation(train, seed=1, augment=True, size=size, **kwargs),
              "val": TinySegmentation(val, seed=2, slices=3, size=size)}
    if test:
        splits["test"] = TinySegmentation(test, seed=3, size=size)
    return SegmentationData(name="tiny", num_classes=3, in_channels=1, class_names=["background", "square", "bar"],
                            ignore_index=255, splits=splits, notices=[], report=None,
                            normalization=Normalization("none", (0.0,), (1.0,)))


class TinyNet(SegmentationModel):
    """conv-BN-ReLU encoder, dropout, 1x1 classifier; optional auxiliary head (aux_weight 0.4)."""

    def __init__(self, *, num_classes: int, in_channels: int = 3, width: int = 8, aux_head: bool = False):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                     nn.ReLU())
        self.dropout = nn.Dropout2d(0.2)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        if aux_head:
            self.aux_head = nn.Conv2d(width, num_classes, 1)
            self.aux_weight = 0.4

    def forward(self, x):
        features = self.encoder(x)
        logits = self.classifier(self.dropout(features))
        if self.training and hasattr(self, "aux_head"):
            return {"out": logits, "aux": self.aux_head(features)}
        return logits


def tiny_builder(*, num_classes: int, in_channels: int = 3, width: int = 8, aux_head: bool = False) -> nn.Module:
    return TinyNet(num_classes=num_classes, in_channels=in_channels, width=width, aux_head=aux_head)


TINY_ENTRY = ModelEntry("tiny", tiny_builder, paper="test", year=2024, recipe="cnn")
TINY_TRANSFORMER_ENTRY = ModelEntry("tiny_tf", tiny_builder, paper="test", year=2024, recipe="transformer")


def install(monkeypatch, data_factory=tiny_data) -> None:
    """Register the tiny architectures and make ``load_data`` return tiny data, for one test."""
    import importlib

    import segbench.data
    from segbench.models.registry import ARCHITECTURES, list_models

    train_module = importlib.import_module("segbench.engine.train")  # the attribute is the function

    list_models()  # load the real registry first so the patch is undone cleanly
    monkeypatch.setitem(ARCHITECTURES, "tiny", TINY_ENTRY)
    monkeypatch.setitem(ARCHITECTURES, "tiny_tf", TINY_TRANSFORMER_ENTRY)
    monkeypatch.setattr(train_module, "load_data", lambda cfg: data_factory())
    monkeypatch.setattr(segbench.data, "load_data", lambda cfg: data_factory())
