"""Run configuration: frozen, typed dataclasses loaded from one YAML preset plus ``--set`` overrides.

There is one level of layering only: defaults (the dataclasses below) <- a preset file <- overrides
given as ``key=value`` with dotted keys (``train.lr=0.01``, ``model.options.base_width=16``;
values are parsed as YAML, so ``eval.window=[256,256]`` is a list). Preset files cannot include
other files. Unknown keys are errors with a "did you mean" hint, and every value is checked
against its field's type, so a typo never trains a different model silently.

The resolved configuration is saved in every run folder as ``config.yaml`` (``to_yaml``), and that
file loads back to the same ``Config``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segbench.data import DataConfig
from segbench.metric_defs import HEADLINE

__all__ = [
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "read_preset",
    "to_yaml",
]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and why."""


@dataclass(frozen=True)
class ModelConfig:
    # Registered architecture name (``segbench models`` lists them).
    arch: str = "unet"
    # Keyword options of the architecture's builder, e.g. {encoder: resnet50, output_stride: 8}.
    options: dict[str, Any] = field(default_factory=dict)
    # Starting weights: None, 'imagenet', or a checkpoint path in any supported format (segbench,
    # torchvision, timm, HF, NVlabs, Microsoft, MMSeg); see segbench.checkpoints.load.
    pretrained: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    # Optimisation steps (the schedule is iteration-based, as in MMSegmentation); with the "time" and
    # "auto" budgets the most a run may take.
    iterations: int = 2000
    # How long a run trains. "iterations": train.iterations steps. "time": train.time_budget_s seconds
    # of training steps (validation excluded); after the first steps the schedule is planned over the
    # steps the measured speed fits into the budget, and the run stops there or at the deadline.
    # "auto": once the best_metric has not improved by more than train.min_delta for train.patience
    # validations (the schedule runs over train.iterations, the cap), anneal (train.anneal), then stop.
    budget: Literal["iterations", "time", "auto"] = "iterations"
    time_budget_s: float | None = None
    # budget "auto": when the plateau rule fires the learning rate is still where the schedule over the cap
    # left it (measured: U-Net on the built-in data stopped at 60% of its peak and scored 0.05 Dice below a
    # run whose schedule had ended). So the run goes on for this fraction of the steps it has taken (at
    # least one validation interval, never past the cap) with the rate falling linearly to train.min_lr,
    # still validated, then stops: the "decay" of a warmup-stable-decay schedule. 0: stop at the plateau.
    anneal: float = 0.25
    # Convergence, recorded for every budget (and the "auto" stopping rule): a run has converged when
    # its last train.patience validations improved best_metric by no more than train.min_delta (or, under
    # "auto", it reached that plateau and then annealed).
    patience: int = 3
    min_delta: float = 0.001
    # Images per step, summed over all processes under torchrun (each gets batch_size / world_size).
    batch_size: int = 8
    # "auto" follows the architecture family's papers: cnn -> sgd, transformer -> adamw.
    optimizer: Literal["auto", "sgd", "adamw"] = "auto"
    # Peak learning rate; None: the family's (cnn 0.01, FCN/DeepLab/PSPNet; transformer 6e-5, SegFormer).
    lr: float | None = None
    # "paper": train.lr (or the family's). "find": a learning-rate range test on the training split picks
    # it before training (segbench.engine.lr_find: the minimum of the lag-free smoothed loss / 10; lr_find.json).
    lr_policy: Literal["paper", "find"] = "paper"
    # Steps of that range test (rates from 1e-6 to 1, exponentially).
    lr_find_steps: int = 100
    # None: the family's (cnn 5e-4, transformer 0.01).
    weight_decay: float | None = None
    # SGD momentum.
    momentum: float = 0.9
    # AdamW betas.
    betas: tuple[float, float] = (0.9, 0.999)
    # Learning-rate multiplier of everything outside ``model.encoder``; None: 10 for transformers
    # (SegFormer's decoder lr x10), 1 for CNNs.
    head_lr_mult: float | None = None
    # Decay after warm-up: "poly" (lr * (1 - t)^power, DeepLab) or "cosine".
    schedule: Literal["poly", "cosine"] = "poly"
    # Exponent of the poly schedule; None: the family's (cnn 0.9, DeepLab/PSPNet; transformer 1.0,
    # SegFormer and Swin-UPerNet).
    poly_power: float | None = None
    # Learning rate the schedule ends at.
    min_lr: float = 0.0
    # Linear warm-up steps; None: transformers 1% of the run up to 1500 (SegFormer warms up 1500 of
    # 160k iterations), CNNs none.
    warmup_iters: int | None = None
    # Warm-up starts at lr * warmup_ratio (MMSegmentation's LinearLR start factor).
    warmup_ratio: float = 1e-6
    # Clip the global gradient norm to this value; None: no clipping.
    grad_clip: float | None = None
    # "ce" (cross-entropy), "dice" (soft Dice), or "ce+dice" (nnU-Net).
    loss: Literal["ce", "dice", "ce+dice"] = "ce"
    # Per-class weights of the cross-entropy term; None: uniform.
    class_weights: list[float] | None = None
    # Add the auxiliary head's loss times the model's ``aux_weight`` (PSPNet 0.4) when it has one.
    aux_loss: bool = True
    # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # Mixed precision. "auto": bf16 on CUDA when supported else fp16 with loss scaling; on CPU bf16
    # only where the CPU computes it natively (AVX512-BF16 or AMX), else off.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # Memory format of activations; "auto": channels-last for CNNs, where convolutions gain most.
    channels_last: bool | Literal["auto"] = "auto"
    # Validate (and maybe save the best checkpoint) every this many iterations, and at the end.
    val_interval: int = 200
    # Write a log line every this many iterations.
    log_interval: int = 20
    # Save the resumable "last" checkpoint every this many iterations (and after every validation).
    checkpoint_interval: int = 100
    # Metric that selects the best checkpoint (a key of segbench.metric_defs.METRICS; its direction is defined
    # there): by default the headline, mean foreground Dice per case.
    best_metric: str = HEADLINE
    # DataLoader worker processes (augmentation is seeded per item, so results do not depend on it).
    # "auto": none on CPU (the workers would take the cores the model computes on), on CUDA
    # min(8, CPU cores / processes on this node) so the GPU does not wait for data.
    num_workers: int | Literal["auto"] = "auto"
    # Seeds weight initialisation, the order of training images, and dropout.
    seed: int = 0
    # Deterministic CUDA kernels where PyTorch has them (slower). Not all do (bilinear upsampling and
    # adaptive pooling backward, MaxUnpool2d, 2D NLL loss): a resumed GPU run still differs in the last
    # bits (README, GPUs). CPU runs are always exact.
    deterministic: bool = False
    # Experiment trackers the run also logs to (docs/tracking.md): "tensorboard" (event files in
    # RUN/tensorboard) and/or "mlflow" (train.tracking_uri); pip install 'segbench[tensorboard]' /
    # 'segbench[mlflow]'. They change no result: a run may resume with other trackers, and a review's hash
    # leaves them out.
    trackers: tuple[Literal["tensorboard", "mlflow"], ...] = ()
    # MLflow tracking URI (a server's http://..., sqlite:///..., databricks); None: sqlite:///RUN/mlflow.db
    # (segbench run: OUT/mlflow.db).
    tracking_uri: str | None = None
    # Also keep best.pt as an MLflow artifact (a copy of the weights in the artifact store).
    track_checkpoint: bool = False

    def __post_init__(self) -> None:
        # Zero or negative counts used to fail deep in the loop (a division by zero, an empty run).
        for name in ("iterations", "batch_size", "val_interval", "log_interval", "checkpoint_interval", "patience", "lr_find_steps"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        if self.budget == "time" and not (isinstance(self.time_budget_s, (int, float)) and self.time_budget_s > 0):
            raise ValueError("budget=time needs train.time_budget_s, the seconds of training steps, > 0")
        if isinstance(self.min_delta, (int, float)) and self.min_delta < 0:
            raise ValueError(f"min_delta={self.min_delta} must be >= 0")
        if isinstance(self.anneal, (int, float)) and not 0 <= self.anneal <= 1:
            raise ValueError(f"anneal={self.anneal} must be a fraction of the steps taken, from 0 to 1")


@dataclass(frozen=True)
class EvalConfig:
    # "whole" image at once, or "slide" (overlapping windows).
    mode: Literal["whole", "slide"] = "whole"
    # Sliding-window size (H, W) in pixels.
    window: tuple[int, int] | None = None
    # Fraction of a window shared with its neighbour.
    overlap: float = 0.5
    # Blending of overlapping windows: "gaussian" (nnU-Net) or "mean" (MMSegmentation).
    blend: Literal["gaussian", "mean"] = "gaussian"
    # Flip test-time augmentation: any of "horizontal", "vertical"; every combination of them is predicted
    # and the softmax probabilities averaged (nnU-Net's mirroring). `segbench eval/predict --tta` picks them.
    flips: tuple[str, ...] = ()
    # Images (or windows) per forward pass.
    batch_size: int = 8
    # Compute the surface-distance figures, HD95 and NSD (distance transforms: CPU time on large volumes).
    hd95: bool = True
    # NSD tolerance tau: surface points within this distance of the other surface count as matched.
    # In mm for NIfTI volumes (their voxel spacing), in pixels for 2D images.
    nsd_tolerance: float = 1.0
    # Class left out of the *_fg figures; None when every class is foreground.
    background: int | None = 0
    # After training, evaluate the best checkpoint on the test split too, when the data has one.
    test_at_end: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be a positive integer")
        if isinstance(self.nsd_tolerance, (int, float)) and self.nsd_tolerance < 0:
            raise ValueError(f"nsd_tolerance={self.nsd_tolerance} must be >= 0")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and lightly converted to) type ``tp``; ConfigError if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(" / ".join(errors))
    if origin is Literal:
        word = {False: "off", True: "on"}.get(value) if isinstance(value, bool) else None
        if word in args:
            return word  # YAML 1.1 reads a bare off/on as a boolean: train.amp=off means "off"
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin in (dict,) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 6e-5 as a string; 6.0e-5 as a float
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    hint = difflib.get_close_matches(key, valid, n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"unknown key {where + key!r}.{did_you_mean} Valid keys here: {', '.join(valid)}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    where = f"{prefix}." if prefix else ""
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), where)
        kwargs[key] = _coerce(value, hints[key], where + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix or 'config'}: {err}") from err


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (lists instead of tuples): YAML-, JSON- and ``weights_only``-safe."""
    return _plain(cfg)


def config_from_dict(values: dict) -> Config:
    """A ``Config`` from a nested dict; missing keys take their defaults, unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration is a mapping of sections (model, data, train, eval), got {values!r}")
    return _build(Config, values)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------------------
# files and overrides


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """``values`` (a nested dict) with each ``a.b.c=value`` applied; unknown keys are errors.

    Keys are checked against the dataclasses as the path descends; below a free-form mapping
    (``model.options``) any key is accepted and the builder checks it later.
    """
    values = _deep_copy(values)
    for text in overrides:
        path, value = _parse_override(text)
        node, section = values, Config  # section: the dataclass the path is in; None inside a mapping
        for depth, part in enumerate(path):
            if section is not None:
                fields = [f.name for f in dataclasses.fields(section) if f.init]
                if part not in fields:
                    raise _unknown_key(part, fields, "".join(p + "." for p in path[:depth]))
                hint = typing.get_type_hints(section)[part]
                is_mapping = hint is dict or typing.get_origin(hint) is dict
                if depth < len(path) - 1 and not (dataclasses.is_dataclass(hint) or is_mapping):
                    raise ConfigError(f"override {text!r}: {'.'.join(path[: depth + 1])} is not a section")
                section = hint if dataclasses.is_dataclass(hint) else None
            if depth == len(path) - 1:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
    return values


def _deep_copy(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _deep_copy(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_deep_copy(v) for v in values]
    return values


def read_preset(path: str | Path) -> dict:
    """A preset file's raw nested dict (not yet checked; ``config_from_dict`` checks it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no configuration file at {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start}); "
                          "save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, eval)")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the preset at ``path`` (if any), then ``overrides`` (``key=value`` strings)."""
    values = read_preset(path) if path is not None else {}
    values = apply_overrides(values, list(overrides))
    try:
        return config_from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from err
