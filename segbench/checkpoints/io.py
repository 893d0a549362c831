"""Reading checkpoint files: the one place a file becomes a state dict.

``read_checkpoint`` reads ``.safetensors`` or a torch pickle with ``weights_only=True`` (opening a file
never executes code) and ``unwrap_state_dict`` takes the tensors out of the usual wrappers.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_torch_file", "read_checkpoint", "unwrap_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: empty, truncated, not a torch file, or holding code."""


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with one line naming the file when it cannot be read.

    torch's own messages run to a dozen lines and advise retrying with ``weights_only=False``, which
    would execute whatever the file holds: never print that advice to a user."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A pickle of another protocol than torch.save's (a plain pickle.dump) makes torch warn in two
            # lines before it fails; the one-line error below says what the file is.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except EOFError:  # click would print a bare "Aborted!" for it
        raise CheckpointError(f"{path} is empty ({path.stat().st_size} bytes): not a checkpoint; "
                              "write it again (train again, or download it again)") from None
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "weights_only" in str(err) and "GLOBAL" in str(err):
            reason = "it holds Python objects other than tensors, which segbench never unpickles; use the original file"
        elif _plain_pickle(path):
            reason = ("it is a plain Python pickle (pickle.dump), not a file torch.save wrote, and segbench never "
                      "unpickles those (they can run code); save its tensors with torch.save or as safetensors")
        else:
            reason = "it is not a torch checkpoint (garbage or another format); use the original file"
        raise CheckpointError(f"{path} cannot be read as a checkpoint: {reason}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):  # these name the file already
        raise
    except Exception as err:  # noqa: BLE001 - torch's unpickler fails on damaged bytes in many ways
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} cannot be read as a checkpoint (truncated or damaged: {first.split('. ')[0]}); "
                              "use a complete copy, or train again") from None


# torch.save's files: a zip archive, or (before torch 1.6) a pickle of this magic number first.
_ZIP_START = b"PK"
_LEGACY_TORCH_START = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _plain_pickle(path: Path) -> bool:
    """Whether ``path`` starts as a pickle (protocol 2 or later) but is not one torch.save wrote."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_START))
    except OSError:
        return False
    return head[:1] == b"\x80" and not head.startswith((_ZIP_START, _LEGACY_TORCH_START))


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: ``.safetensors`` (needs the safetensors package) or a torch
    pickle read with ``weights_only=True``; the usual wrappers ``{"state_dict": ...}`` (MMSeg, Lightning)
    and ``{"model": ...}`` (Swin, DeiT releases) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{path} is a safetensors file: pip install safetensors to read it") from err
        return load_file(str(path))
    state = load_torch_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return unwrap_state_dict(state)


def unwrap_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint dict: inside ``{"state_dict": ...}`` (MMSeg, Lightning) or
    ``{"model": ...}`` (Swin, DeiT releases), without DataParallel's ``module.`` prefix, tensors only."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
