"""Data-parallel training under ``torchrun``: process group set-up and deterministic batch sharding.

Every process draws the same global permutation of the training set for an epoch, seeded by
(seed, epoch), cuts it into global batches of ``batch_size`` images, and takes every
``world_size``-th image of each batch. So a global batch holds the same images whatever the number
of processes, and a resumed run redraws exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from segbench.env_settings import env_seconds

__all__ = [
    "DistInfo",
    "RunBatchSampler",
    "EpochKeyed",
    "init_distributed",
    "process_group_timeout",
    "epoch_batches",
    "mean_across_ranks",
    "derive_seed",
    "broadcast_from_main",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def process_group_timeout() -> timedelta:
    """How long a collective waits for the other processes: ``SEGBENCH_DIST_TIMEOUT_MIN`` minutes, 60 by default.

    NCCL's default (10 minutes) is too short for what rank 0 does alone while the others wait: the
    first download of pretrained weights, a checkpoint written to a slow disk. Evaluation is shared
    between the processes (``evaluate``), so it keeps them all busy instead.
    """
    return timedelta(minutes=env_seconds("SEGBENCH_DIST_TIMEOUT_MIN", 60.0, unit="minutes"))


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (a no-op when run alone).

    NCCL for CUDA runs, Gloo for CPU runs; collectives time out after ``process_group_timeout()``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=process_group_timeout())
    return DistInfo(rank, world_size, local_rank)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from several integers (numpy's SeedSequence: no collisions by addition)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, info: DistInfo) -> list[list[int]]:
    """This process's share of each full global batch of the epoch (the incomplete last batch is dropped)."""
    if batch_size % info.world_size:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the {info.world_size} processes")
    if num_items < batch_size:
        raise ValueError(
            f"the training split has {num_items} images, fewer than train.batch_size={batch_size}; "
            "lower the batch size"
        )
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    order = torch.randperm(num_items, generator=generator).tolist()
    batches = [order[start : start + batch_size] for start in range(0, num_items - batch_size + 1, batch_size)]
    return [batch[info.rank :: info.world_size] for batch in batches]


class RunBatchSampler:
    """Every batch of the rest of the run, epoch after epoch (``epoch_batches`` of each), from batch
    ``start_batch`` of ``start_epoch`` on, endlessly, as ``(epoch, index)`` keys for :class:`EpochKeyed`:
    one DataLoader, and so one set of workers, serves the whole run instead of one per epoch."""

    def __init__(self, num_items: int, batch_size: int, seed: int, info: DistInfo, *, start_epoch: int = 0,
                 start_batch: int = 0):
        self.num_items, self.batch_size, self.seed, self.info = num_items, batch_size, seed, info
        self.start_epoch, self.start_batch = start_epoch, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.start_epoch, self.start_batch
        while True:
            for batch in epoch_batches(self.num_items, self.batch_size, self.seed, epoch, self.info)[start:]:
                yield [(epoch, i) for i in batch]
            epoch, start = epoch + 1, 0


class EpochKeyed(Dataset):
    """``dataset`` asked for by ``(epoch, index)``: its ``set_epoch`` (when it has one: augmentation and
    selection drawn per epoch) is called whenever the epoch changes, in whichever process holds this
    copy. A loader's workers copy the dataset once, so they could not be told of a new epoch otherwise."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        return self.dataset[index]


def mean_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (itself when run alone)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def broadcast_from_main(tensors: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Copy rank 0's values of ``tensors`` (e.g. a model's buffers) into every process's, in place."""
    if info.enabled:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)
