"""Ensembles of trained runs and flip test-time augmentation, evaluated by the one evaluation loop.

An ensemble is a list of trained runs (seeds or folds of one architecture, or several architectures) that
take the same input: the same data settings (the fold aside), classes, channels and normalisation kind. Fold
models normalise with their own training split's mean/std (kind "dataset"): the ensemble's input is
normalised as the first member's, and every other member maps it to its own statistics first
(``Renormalized``, a per-channel affine map), so each network sees exactly what it was trained on. Its
prediction is the mean of its members' softmax probabilities (``inference.predict_scores``, as nnU-Net
ensembles), and with TTA the mean over every member and every flipped view. Nothing is retrained.

``evaluate_runs`` scores an ensemble (or one run with TTA) on a split with ``evaluate.evaluate`` (the same
loop and metrics as every run) and returns the per-case rows the review's statistics read.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from segbench.config import Config, EvalConfig, config_to_dict
from segbench.engine import run_folder
from segbench.engine.checkpoint import DataInfo, load_run_model, load_run_settings

__all__ = [
    "EnsembleError", "Members", "Renormalized", "load_members", "load_exported", "with_flips", "EnsembleResult",
    "evaluate_runs",
]  # fmt: skip

# Data settings that only training reads: members may differ in them and still see the same evaluation input.
_TRAINING_ONLY = ("fold", "augment", "keep_empty_slices", "cache_dir")


class EnsembleError(ValueError):
    """Runs that cannot be combined (the message says which differ, and how)."""


def with_flips(cfg: EvalConfig, flips: tuple[str, ...]) -> EvalConfig:
    return replace(cfg, flips=tuple(flips))


@dataclass
class Members:
    """The runs of an ensemble, loaded: their networks, and the settings they share (the first run's)."""

    run_dirs: list[Path]
    models: list[nn.Module]
    cfg: Config  # the first member's: its data settings are every member's, the fold aside
    info: DataInfo
    folds: list[int] = field(default_factory=list)  # each member's validation fold (empty without folds)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.run_dirs]

    def member(self, index: int) -> "Members":
        """One member alone, as an ensemble of one."""
        return Members([self.run_dirs[index]], [self.models[index]], self.cfg, self.info,
                       [self.folds[index]] if self.folds else [])

    def with_eval(self, cfg: EvalConfig) -> "Members":
        """The same members evaluated with ``cfg`` (e.g. ``eval.*`` overrides)."""
        return Members(self.run_dirs, self.models, replace(self.cfg, eval=cfg), self.info, self.folds)


class Renormalized(nn.Module):
    """A member whose training split had other statistics than the ensemble's input: input normalised with
    ``source`` (mean/std per channel, stored units) becomes this member's ``target`` normalisation,
    ((x * s_source + m_source) - m_target) / s_target, before its network runs."""

    def __init__(self, model: nn.Module, source: dict, target: dict):
        super().__init__()
        self.model = model
        mean_s, std_s = (torch.tensor(source[k], dtype=torch.float32) for k in ("mean", "std"))
        mean_t, std_t = (torch.tensor(target[k], dtype=torch.float32) for k in ("mean", "std"))
        self.register_buffer("scale", (std_s / std_t).view(1, -1, 1, 1))
        self.register_buffer("shift", ((mean_s - mean_t) / std_t).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def _restated(normalization: dict | None) -> bool:
    """Whether a member with this normalisation can take another member's input through ``Renormalized``."""
    return bool(normalization) and normalization.get("kind") == "dataset"


def _same_but_statistics(a: dict | None, b: dict | None) -> bool:
    return (_restated(a) and _restated(b) and a.get("image_dtype") == b.get("image_dtype")
            and len(a["mean"]) == len(b["mean"]))


def _data_settings(cfg: Config) -> dict:
    data = config_to_dict(cfg)["data"]
    return {k: v for k, v in data.items() if k not in _TRAINING_ONLY}


def _check_same_input(first: tuple[Path, Config, DataInfo], other: tuple[Path, Config, DataInfo]) -> None:
    (dir_a, cfg_a, info_a), (dir_b, cfg_b, info_b) = first, other
    facts = ("num_classes", "in_channels", "class_names", "ignore_index", "volumetric", "normalization")
    differ = [f for f in facts if getattr(info_a, f) != getattr(info_b, f)
              and not (f == "normalization" and _same_but_statistics(info_a.normalization, info_b.normalization))]
    a, b = _data_settings(cfg_a), _data_settings(cfg_b)
    differ += [f"data.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differ:
        raise EnsembleError(
            f"{dir_b} cannot join an ensemble with {dir_a}: their inputs or classes differ ({', '.join(differ)}); "
            "an ensemble averages the probabilities of networks that see the same input, so combine runs trained "
            "on the same data settings (seeds, folds or architectures of one review)")


def load_members(run_dirs: list[str | Path], which: str = "best") -> Members:
    """Load every run's ``which`` checkpoint and check that they take the same input (``EnsembleError``)."""
    if not run_dirs:
        raise EnsembleError("an ensemble needs at least one run folder")
    dirs = [Path(d) for d in run_dirs]
    if len(set(d.resolve() for d in dirs)) != len(dirs):
        raise EnsembleError("a run folder is named twice: each member of an ensemble counts once")
    loaded = [(d, *load_run_model(d, which)) for d in dirs]
    first = (loaded[0][0], loaded[0][2], loaded[0][3])
    for run_dir, _, cfg, info in loaded[1:]:
        _check_same_input(first, (run_dir, cfg, info))
    folds = [cfg.data.fold for _, _, cfg, _ in loaded] if loaded[0][2].data.folds else []
    source = loaded[0][3].normalization
    models = [model if info.normalization == source else Renormalized(model, source, info.normalization)
              for _, model, _, info in loaded]
    return Members(dirs, models, loaded[0][2], loaded[0][3], folds)


def load_exported(run_dir: str | Path, path: str | Path) -> Members:
    """One run as its exported ONNX file at ``path`` (``model.onnx`` or ``model.int8.onnx``) run by ONNX Runtime,
    with the run's own settings: an ensemble of one that the one evaluation loop scores like the network."""
    from segbench.engine.onnx_runtime import load_onnx_model

    cfg, info = load_run_settings(run_dir)
    return Members([Path(run_dir)], [load_onnx_model(path)], cfg, info)


@dataclass
class EnsembleResult:
    """What ``evaluate_runs`` measured: the metrics, the per-case and per-slice rows, and what was evaluated."""

    metrics: dict
    per_case: list[dict]
    per_slice: list[dict]
    members: list[str]
    flips: tuple[str, ...]
    split: str

    def record(self) -> dict:
        """The JSON record (``eval_<split>.json`` of an ensemble's output folder)."""
        # forward passes of whole-image inference (slide mode: times the windows of each view)
        return {"split": self.split, "members": self.members, "flips": list(self.flips),
                "forward_passes_per_image": len(self.members) * 2 ** len(self.flips), **self.metrics}


def evaluate_runs(members: Members, split: str, *, flips: tuple[str, ...] | None = None, data=None,
                  progress: bool = False) -> EnsembleResult:
    """The ensemble of ``members`` (one member: that run) with ``flips`` (None: the runs' own ``eval.flips``)
    on ``split``, by ``evaluate.evaluate``. ``data``: the loaded data (None: loaded from the first run's
    settings). Every member's recorded cases of ``split`` must be the data's (``run_folder``): fold models
    share only the test split, so a fold ensemble is refused on val."""
    from segbench.data import load_data
    from segbench.data.pipeline import split_record
    from segbench.engine.device import inference_precision, resolve_device
    from segbench.engine.evaluate import evaluate
    from segbench.engine.hardware import loader_workers

    if len(set(members.folds)) > 1 and split != "test":
        raise EnsembleError(f"the members validate on different folds ({sorted(set(members.folds))}), so no {split} "
                            "case was held out by all of them: evaluate a fold ensemble on the test split (--split test)")
    data = data if data is not None else load_data(members.cfg.data)
    if split not in data.splits:
        raise EnsembleError(f"the data has no {split!r} split; it has: {', '.join(data.splits)}")
    record = split_record(data)
    for run_dir in members.run_dirs:
        for warning in run_folder.compare_split_record(run_dir, record, split):
            print(warning, file=sys.stderr)
    cfg = members.cfg.eval if flips is None else with_flips(members.cfg.eval, flips)
    device = resolve_device("auto")
    precision = inference_precision(members.cfg.train.amp, device)
    models = [model.to(device) for model in members.models]
    per_case, per_slice = [], []
    metrics = evaluate(models, data.splits[split], members.info, cfg, device, precision, progress=progress,
                       desc=split, num_workers=loader_workers(members.cfg.train.num_workers, device),
                       per_case=per_case, per_slice=per_slice)
    return EnsembleResult(metrics, per_case, per_slice, [str(d) for d in members.run_dirs], tuple(cfg.flips), split)
