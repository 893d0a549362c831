"""Checkpoints: atomic writes, random-number-generator states, and loading a trained run's model.

A run folder holds ``last.pt`` (everything needed to resume: model, optimizer, loss scaler, the
position in the data order, every RNG state, the best result so far), ``best.pt`` (model weights
of the best validation), ``config.yaml``, ``log.jsonl`` and ``metrics.json``. Checkpoints hold only
tensors and plain Python values (the config as a dict), so they load with
``torch.load(weights_only=True)``: opening a checkpoint cannot execute code.

Writes go to a temporary file in the same folder that then replaces the old one (``os.replace``
is atomic), so a run killed mid-write still has its previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segbench.config import Config, config_from_dict
from segbench.checkpoints.io import CheckpointError, load_torch_file
from segbench.run_files import BEST_FILE, CONFIG_FILE, DATA_INFO_FILE, LAST_FILE, DiskFull, writable

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DataInfo",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "load_run_model",
    "load_run_settings",
]

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class DataInfo:
    """What a trained model needs to know about its data, without the data itself."""

    name: str
    num_classes: int
    in_channels: int
    class_names: list[str]
    ignore_index: int
    volumetric: bool = False
    normalization: dict | None = None  # the data layer's Normalization as a dict (for predict)
    palette: list[list[int]] | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict) -> "DataInfo":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    @classmethod
    def of(cls, data) -> "DataInfo":
        """The facts of a loaded dataset (``segbench.data.SegmentationData`` or alike)."""
        normalization = getattr(data, "normalization", None)
        if normalization is not None and dataclasses.is_dataclass(normalization):
            normalization = json.loads(json.dumps(dataclasses.asdict(normalization), default=float))
        palette = getattr(data, "palette", None)
        return cls(
            name=data.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            class_names=list(data.class_names),
            ignore_index=data.ignore_index,
            volumetric=bool(getattr(data, "volumetric", False)),
            normalization=normalization,
            palette=[list(map(int, c)) for c in palette] if palette else None,
        )


class _Recorded:
    """A file passing writes through and keeping the OSError one raised: torch's zip writer replaces it by
    ``RuntimeError: [enforce fail ...] unexpected pos``, which says nothing of a full disk."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.stream.flush()


def save_checkpoint(state: dict[str, Any], path: str | Path, *, open_file=open) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, ``os.replace``). A full disk is
    ``DiskFull`` naming the device and the file. ``open_file``: how the temporary is opened (tests give a
    disk that fills up)."""
    path = writable(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open_file(tmp, "wb") as f:
            recorded = _Recorded(f)
            try:
                torch.save(state, recorded)
            except RuntimeError as err:
                if recorded.error is not None:
                    raise recorded.error from err
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full or read-only disk: leave no half-written .tmp behind
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(path) from None
        raise
    except BaseException:  # a kill: no half-written .tmp either
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, its tensors on the CPU.

    Keep ``map_location`` at "cpu" to resume: a checkpoint holds RNG states that must stay on the
    CPU (numpy's is read back with ``.numpy()``); ``load_state_dict`` moves weights and optimizer
    state onto the model's device by itself.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_torch_file(path, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a segbench checkpoint (format {found!r}); give a run folder written by "
                              "`segbench train`, or load other toolkits' weights with model.pretrained")
    return state


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python ``random`` states, as tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> str | None:
    """Set every RNG from ``capture_rng_state``'s output; returns a warning when it cannot set them all.

    Tensors may come on any device (they are copied to the CPU first). CUDA states are restored for
    the GPUs visible now: fewer GPUs than saved, or none, restore what there is and say so.
    """
    torch.set_rng_state(state["torch"].cpu())
    saved_cuda = list(state["cuda"])
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(saved_cuda[:visible]):
        torch.cuda.set_rng_state(cuda_state.cpu(), device=index)
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if len(saved_cuda) > visible:
        return (f"the checkpoint holds the RNG states of {len(saved_cuda)} GPU(s) and {visible} are visible; "
                f"{'only the first ' + str(visible) + ' were' if visible else 'none was'} restored, so random draws on the GPU "
                "(e.g. dropout) will not match an uninterrupted run (CUDA_VISIBLE_DEVICES sets which GPUs a run sees)")
    return None


def _missing_best_hint(run_dir: Path) -> str:
    """Why best.pt is absent: no defined best metric, or the file is gone though last.pt records a best."""
    try:
        best = load_checkpoint(run_dir / LAST_FILE).get("best") or {}
    except (OSError, ValueError):
        best = {}
    if best.get("iteration") is not None:
        return (f" although last.pt records a best at iteration {best['iteration']}: the file was deleted or moved; "
                "restore it, use --which last, or train again with --overwrite")
    return " (no validation gave a defined best metric; use --which last)"


def load_run_model(
    run_dir: str | Path, which: str = "best", map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, DataInfo]:
    """The model of a finished (or running) training run, in eval mode, with its config and data info.

    ``which`` is "best" (best validation, ``best.pt``) or "last" (``last.pt``).
    """
    from segbench.models.registry import build_model

    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no run folder at {run_dir}")
        hint = _missing_best_hint(run_dir) if (run_dir / LAST_FILE).is_file() else \
            "; has training run and validated at least once?"
        raise FileNotFoundError(f"{run_dir} has no {which}.pt{hint}")
    state = load_checkpoint(path, map_location)
    cfg = config_from_dict(state["config"])
    info = DataInfo.from_dict(state["data_info"])
    model = build_model(cfg.model.arch, info.num_classes, info.in_channels, **cfg.model.options)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, info


def load_run_settings(run_dir: str | Path) -> tuple[Config, DataInfo]:
    """A run's config and data info without its weights (an exported model needs no checkpoint): from
    ``config.yaml`` and ``data_info.json``, else from ``best.pt``."""
    from segbench.config import load_config

    run_dir = Path(run_dir)
    info_path = run_dir / DATA_INFO_FILE
    if (run_dir / CONFIG_FILE).is_file() and info_path.is_file():
        return load_config(run_dir / CONFIG_FILE), DataInfo.from_dict(json.loads(info_path.read_text()))
    state = load_checkpoint(run_dir / BEST_FILE)
    return config_from_dict(state["config"]), DataInfo.from_dict(state["data_info"])
