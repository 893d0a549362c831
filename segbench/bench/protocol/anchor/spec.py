"""What the review asks of an anchor, as a file: the one definition the sweep writes and the anchor's worker
(in the anchor's own environment) reads. Standard library only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from segbench.jsonio import write_json

__all__ = ["AnchorSpec", "SPEC_FILE", "SCHEDULE_FILE", "NNUNET_FOLDER", "TRAINERS_DIR", "schedule_of",
           "NNUNET_DEFAULT_EPOCHS", "NNUNET_DEFAULT_ITERATIONS"]

SPEC_FILE = "anchor_run.json"  # in OUT/<anchor>/: what the worker runs
SCHEDULE_FILE = "nnunet_schedule.json"  # in a run folder: the trainer's epochs, iterations, seed, threads
NNUNET_FOLDER = "nnunet"  # in a run folder: nnU-Net's results (checkpoints, logs) and predictions
TRAINERS_DIR = Path(__file__).parent / "trainers"  # nnUNet_extTrainer: nnUNetTrainer_segbench
NNUNET_DEFAULT_EPOCHS = 1000  # nnUNetTrainer's own schedule
NNUNET_DEFAULT_ITERATIONS = 250
_VALIDATION_ITERATIONS = 50  # nnUNetTrainer's per-epoch pseudo-Dice batches (logging only)


@dataclass
class AnchorSpec:
    name: str  # the row's label: "nnunet" or "nnunet-default"
    schedule: str  # "matched" (the review's budget) or "default" (nnU-Net's 1000 x 250)
    configuration: str  # "auto" (3d_fullres where nnU-Net plans it, else 2d), "2d" or "3d_fullres"
    root: str  # OUT/<anchor>/: nnU-Net's raw and preprocessed folders
    threads: int  # torch threads, as each zoo run's
    # kind ("iterations", "auto", "time", "flops"), iterations (the cap), amount; a time budget also names a
    # reference architecture, its planned iterations and the speed settings to time both steps at
    budget: dict = field(default_factory=dict)
    measure: dict = field(default_factory=dict)  # size, rounds, max_warmup: as the zoo's latency
    runs: list[dict] = field(default_factory=list)  # fold, seed, hash, run_dir, config (a zoo run's, for its data)
    trainer: str = "nnUNetTrainer_segbench"

    def write(self, path: str | Path) -> None:
        write_json(asdict(self), path)

    @classmethod
    def read(cls, path: str | Path) -> AnchorSpec:
        values = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def schedule_of(iterations: int, default: bool, *, seed: int, threads: int | None) -> dict:
    """The trainer's epochs x iterations per epoch: nnU-Net's own 1000 x 250 (``default``), or the fewest epochs
    of at most 250 iterations that hold ``iterations`` (at most one iteration per epoch more, in all)."""
    if default:
        epochs, per_epoch = NNUNET_DEFAULT_EPOCHS, NNUNET_DEFAULT_ITERATIONS
    else:
        epochs = max(1, math.ceil(iterations / NNUNET_DEFAULT_ITERATIONS))
        per_epoch = max(1, math.ceil(iterations / epochs))
    return {"epochs": epochs, "iterations_per_epoch": per_epoch,
            "val_iterations_per_epoch": max(1, min(_VALIDATION_ITERATIONS, per_epoch // 5)), "seed": seed,
            "threads": threads}
