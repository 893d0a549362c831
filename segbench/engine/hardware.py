"""What the training loop adapts to the machine it runs on, kept apart from the loop itself.

- DDP's unused-parameter search, only for a model whose auxiliary head is left out of the loss;
- the loss scaler on resume, when ``amp=auto`` resolves to another precision on another machine;
- what to do when a run runs out of GPU memory;
- how many DataLoader workers feed the device.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["OutOfMemory", "has_idle_aux_head", "load_scaler", "out_of_memory_advice", "loader_workers"]


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the settings that lower the need."""


def has_idle_aux_head(model: nn.Module, aux_weight: float) -> bool:
    """Whether the model has an auxiliary head whose output the loss leaves out (DDP must be told: it
    then searches for unused parameters every step, which costs time, so only then). DeepLab v3/v3+
    declare ``aux_head = None`` when built without one: that is no head."""
    return getattr(model, "aux_head", None) is not None and aux_weight == 0.0


def load_scaler(scaler: torch.amp.GradScaler, saved: dict, saved_precision: str | None, precision: str) -> str | None:
    """Restore the loss scaler; a warning (not an exception) when the run changes precision on resume.

    ``amp=auto`` resolves per machine: a bf16 run (no scaler) resumed on a GPU without native bf16
    continues in fp16, whose scaler then starts from its initial scale."""
    if scaler.is_enabled() and not saved:
        scaler_note = "; loss scaling starts afresh"
    else:
        scaler.load_state_dict(saved)  # a disabled scaler ignores a saved state
        scaler_note = ""
    if saved_precision is None or saved_precision == precision:
        return None
    return (f"the run trained in {saved_precision} and continues in {precision} on this device{scaler_note}; "
            f"the rest of the run will not match an uninterrupted one exactly (resume on a device with native "
            f"{saved_precision} to keep it)")


def out_of_memory_advice(stage: str, batch_size: int, world_size: int, crop_size, resize, eval_batch_size: int,
                         device: torch.device) -> str:
    """One line for a run that ran out of memory in ``stage`` ("training" or "validation")."""
    where = str(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where += f" ({torch.cuda.get_device_name(device)}, {total:.0f} GiB)"
    if stage == "training":
        size = f"crop {crop_size[0]}x{crop_size[1]}" if crop_size else (
            f"resize {resize[0]}x{resize[1]}" if resize else "native image size")
        return (f"out of memory on {where} in a training step: train.batch_size={batch_size} "
                f"({batch_size // world_size} per process), {size}. Lower train.batch_size, set a smaller "
                "data.augment.crop_size (or data.resize), use train.amp=auto/bf16/fp16 if it is off, or spread the "
                "batch over more GPUs with torchrun (segbench has no gradient accumulation); the run folder keeps its "
                "last checkpoint, but a smaller batch is a different run (--no-resume or another --out)")
    return (f"out of memory on {where} while evaluating: lower eval.batch_size (now {eval_batch_size}) or "
            "evaluate large images with eval.mode=slide and a smaller eval.window")


def loader_workers(setting: int | str, device: torch.device, local_processes: int = 1) -> int:
    """DataLoader workers for ``train.num_workers``: a number as given; "auto" none on CPU (the model
    computes on the same cores, and the CPU results stay those of the tested single-process loader),
    min(8, cores / processes on this node) on CUDA."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_processes)))
