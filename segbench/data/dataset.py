"""Torch datasets over the cache: normalisation, train-time augmentation, epoch-seeded sampling.

Every random draw of the train split comes from a ``torch.Generator`` seeded by (seed, epoch, item),
never from global state, so DataLoader workers, their number and a resumed run all see exactly the
same batches. Call ``set_epoch`` before creating each epoch's iterator (workers copy the dataset when
the iterator starts; with ``persistent_workers=True`` they would keep the first epoch's value).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from segbench.data.augment import JointAugment
from segbench.data.cache import CacheStore
from segbench.data.config import AugmentConfig

__all__ = ["Normalization", "SliceDataset", "TrainSliceDataset", "pad_collate", "item_generator"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """How stored pixels become network input: ``(x - mean[c]) / std[c]`` per channel.

    kind: "imagenet" (8-bit RGB; the statistics ImageNet-pretrained encoders expect), "dataset" (the
    train split's per-channel mean/std in stored units), "volume" (already applied per volume when
    cached: percentile clip + z-score, see ``volumes.normalize_volume``; identity here), "none".
    """

    kind: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The stored dtype of the training images ("uint8", "uint16", "float32" for volumes): what the
    # mean/std are in units of, so predict can refuse inputs of another depth. None: not recorded.
    image_dtype: str | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) as stored -> float32 network input."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (image.astype(np.float32) - mean) / std

    def describe(self) -> str:
        if self.kind == "volume":
            return "per volume: clip to 0.5/99.5 percentiles, z-score"
        if self.kind == "none":
            return "none (stored values)"
        values = ", ".join(f"{m:.4g}/{s:.4g}" for m, s in zip(self.mean, self.std))
        return f"{self.kind} mean/std per channel {values}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Normalization":
        return cls(values["kind"], tuple(values["mean"]), tuple(values["std"]), values.get("image_dtype"))


def item_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """A generator whose state depends on (seed, epoch, index, stream) only, mixed by SeedSequence.
    Streams keep unrelated draws apart: 0 augments item ``index``, 1 picks an epoch's empty slices."""
    entropy = [int(v) % 2**64 for v in (seed, epoch, index, stream)]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


class SliceDataset(Dataset):
    """Val/test: every slice of its cases, in case order, never augmented."""

    def __init__(self, store: CacheStore, items: list[tuple[int, int]], normalization: Normalization) -> None:
        self.store = store
        self.items = list(items)  # (case index in the cache, slice index)
        self.normalization = normalization
        self.cases = [c["case"] for c in store.meta["cases"]]
        # Voxel size (mm) per case, ordered (slice, row, column) like a case's stacked slices; None: 2D.
        self.spacings = [tuple(c["spacing"]) if c.get("spacing") else None for c in store.meta["cases"]]

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        case, index = item
        image = torch.from_numpy(self.normalization(self.store.image(case, index)))
        mask = torch.from_numpy(self.store.mask(case, index).astype(np.int64))
        return image, mask

    def __getitem__(self, i: int) -> dict:
        case, index = self.items[i]
        image, mask = self._load(self.items[i])
        item = {"image": image, "mask": mask, "case": self.cases[case], "index": index}
        if self.spacings[case] is not None:
            # Absent for 2D images (pixels): torch's default collate, which training uses, rejects None.
            item["spacing"] = self.spacings[case]
        return item


class TrainSliceDataset(SliceDataset):
    """Train: augmented (``AugmentConfig``), and slices without foreground subsampled per epoch.

    ``keep_empty`` of the empty slices (rounded) are drawn anew each epoch from (seed, epoch), so the
    length is the same every epoch and the model still sees every empty slice over time.
    """

    def __init__(
        self,
        store: CacheStore,
        items: list[tuple[int, int]],
        normalization: Normalization,
        augment: AugmentConfig,
        ignore_index: int,
        seed: int = 0,
        empty: set[tuple[int, int]] | None = None,
        keep_empty: float = 1.0,
    ) -> None:
        super().__init__(store, items, normalization)
        empty = empty or set()
        self.full = self.items
        self.foreground = [item for item in self.items if item not in empty]
        self.empty = [item for item in self.items if item in empty]
        self.keep = round(keep_empty * len(self.empty))
        self.seed = seed
        self.augment = JointAugment(augment, ignore_index) if augment.enabled else None
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select this epoch's empty slices and augmentation draws; call before each epoch's iterator."""
        self.epoch = int(epoch)
        if self.keep == len(self.empty):
            self.items = self.full
            return
        chosen = torch.randperm(len(self.empty), generator=item_generator(self.seed, self.epoch, 0, stream=1))[: self.keep]
        dropped = set(self.empty) - {self.empty[j] for j in chosen.tolist()}
        self.items = [item for item in self.full if item not in dropped]

    def unaugmented(self) -> SliceDataset:
        """Every training slice (the empty ones too) as prepared for inference: normalised, never augmented
        (what int8 calibration reads, ``segbench.export.quantize``)."""
        return SliceDataset(self.store, self.full, self.normalization)

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if self.augment is not None:
            generator = item_generator(self.seed, self.epoch, i)
            item["image"], item["mask"] = self.augment(item["image"], item["mask"], generator)
        return item


def pad_collate(batch: list[dict], ignore_index: int = 255) -> dict:
    """Collate items of different sizes: pad images with 0 (the normalised mean) and masks with
    ``ignore_index`` at the bottom/right to the largest H and W in the batch."""
    height = max(item["image"].shape[-2] for item in batch)
    width = max(item["image"].shape[-1] for item in batch)
    images = batch[0]["image"].new_zeros((len(batch), batch[0]["image"].shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.long)
    for k, item in enumerate(batch):
        h, w = item["mask"].shape
        images[k, :, :h, :w] = item["image"]
        masks[k, :h, :w] = item["mask"]
    return {
        "image": images,
        "mask": masks,
        "case": [item["case"] for item in batch],
        "index": torch.tensor([item["index"] for item in batch]),
    }
