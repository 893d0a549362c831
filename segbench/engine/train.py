"""The training loop: ``_train`` reads top to bottom as its named steps (set up, start or resume, the
loop, the final figures), its position in a ``TrainState``.

``train(cfg, run_dir)`` builds the data and model, then steps the optimiser for
``cfg.train.iterations`` iterations over deterministic shuffles of the training split, validating
every ``val_interval`` iterations and keeping the best checkpoint. A run killed at any moment and
started again with the same command resumes from ``last.pt`` and ends with the same weights and
metrics as a run never interrupted: the batch order is a function of (seed, epoch), the
augmentation of (data seed, epoch, item), the learning rate of the iteration, and every RNG state
is saved. Under ``torchrun`` it trains data-parallel: every process validates its share of the
cases, rank 0 alone writes.

Files in ``run_dir``: ``config.yaml`` (resolved configuration), ``data_info.json`` (classes,
channels, normalisation: what ``segbench predict`` needs), ``log.jsonl`` (one JSON object per
line: ``event`` "start" | "train" | "val" | "diverged" | "end"), ``last.pt``, ``best.pt``, and
``metrics.json``:

- ``arch``, ``recipe``, ``data``, ``iterations``, ``world_size``, ``device``, ``precision``,
  ``channels_last``, ``num_params``;
- ``best_metric`` (its name), ``best_value``, ``best_iteration``;
- ``val``: every figure of ``SegmentationMetrics.compute`` for the best checkpoint on the val split
  (``aAcc``, ``mIoU``, ``mIoU_fg``, ``mDice``, ``mDice_fg``, ..., ``dice_fg_per_case``, ``hd95_fg``,
  ``nsd_fg``, ``per_class``, ...); ``last_val``: the same for the final weights;
- ``test``: the best checkpoint on the test split (when there is one and ``eval.test_at_end``);
- ``train_time_s`` (seconds in training steps, data loading included, validation and checkpoint
  writes excluded, summed over resumptions), ``train_images_per_s`` (images / train_time_s),
  ``data_time_s`` (the part of train_time_s spent waiting for the input pipeline: loading,
  augmentation, collation), ``val_time_s`` (all validation passes) and ``val_metrics_time_s`` (the
  part of it in ``SegmentationMetrics``), ``wall_time_s`` (whole call, this session only),
  ``resumed_from`` (iteration, or null).

With ``train.trackers`` the run also logs to TensorBoard (``tensorboard/``) and MLflow (``tracking.json``
holds its run id), fed from the same ``log.jsonl`` records and ``metrics.json``: ``segbench.engine.tracking``.

JSON has no NaN: an undefined figure (see ``segbench.engine.metrics``) is written as ``null``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segbench.config import Config, TrainConfig, config_to_dict, to_yaml
from segbench.data import SegmentationData, load_data
from segbench.data.pipeline import check_batch_fits, check_batchable, split_record
from segbench.engine import run_folder
from segbench.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    DataInfo,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from segbench.engine.device import (
    Precision,
    cuda_math,
    math_settings,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
)
from segbench.engine.distributed import (
    DistInfo,
    broadcast_from_main,
    derive_seed,
    epoch_batches,
    init_distributed,
    EpochKeyed,
    RunBatchSampler,
)
from segbench.engine.evaluate import evaluate
from segbench.jsonio import json_safe, write_json
from segbench.engine.hardware import OutOfMemory, has_idle_aux_head, load_scaler, loader_workers, out_of_memory_advice
from segbench.engine.losses import build_loss
from segbench.engine.step import TrainStep, grad_scaler
from segbench.engine.tracking import TrackingContext, config_params, final_metrics, open_trackers, run_tags
from segbench.engine.train_state import PLAN_AFTER, LossWindow, RunLog, TrainState, note_validation, plan_iterations
from segbench.engine.metrics import PER_SLICE_COLUMNS, SCALAR_METRICS, SURFACE_METRICS, is_better, write_per_case_csv
from segbench.engine.lr_find import LR_FIND_FILE, find_learning_rate, read_found, within_a_decade
from segbench.engine.optim import build_optimizer, lr_factor, resolve_train_config, set_learning_rate
from segbench.checkpoints import build_pretrained_model
from segbench.models.registry import model_recipe
from segbench.run_files import BEST_FILE, CONFIG_FILE, DATA_INFO_FILE, LAST_FILE, LOG_FILE, METRICS_FILE, writable

__all__ = ["train", "TrainState", "TrainingDiverged", "ConfigMismatch", "OutOfMemory"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run folder keeps its last good checkpoint."""


class ConfigMismatch(ValueError):
    """``resume`` found a run folder trained with a different configuration."""


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Settings a run's results do not depend on: they may change between a run and its resumption.
RESULT_NEUTRAL_KEYS = ("train.num_workers", "train.trackers", "train.tracking_uri", "train.track_checkpoint")


def _same_folder(a, b) -> bool:
    return isinstance(a, str) and isinstance(b, str) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        if f"{prefix}{key}" in RESULT_NEUTRAL_KEYS:
            continue
        a, b = saved.get(key), current.get(key)
        if f"{prefix}{key}" == "data.source" and _same_folder(a, b):
            continue  # older runs stored the data folder as given, newer ones resolved
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            keys += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def _gather_rng(info: DistInfo) -> list[dict]:
    state = capture_rng_state()
    if not info.enabled:
        return [state]
    states = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def _build_model(cfg: Config, num_classes: int, in_channels: int, pretrained: str | None, info: DistInfo) -> nn.Module:
    """The model, with ``pretrained`` weights (``segbench.checkpoints.load.load_pretrained``: "imagenet" or a file).

    Under torchrun rank 0 alone loads them (one download, one cache write); the other ranks build the
    same initialisation, and DistributedDataParallel copies rank 0's parameters and buffers to every rank
    when it wraps the model. Rank 0 first tells the others whether its load worked, so that a failure
    (no network, a wrong file) stops every rank instead of leaving them waiting in that copy."""
    def build(weights: str | None) -> nn.Module:
        return build_pretrained_model(cfg.model.arch, num_classes, in_channels, pretrained=weights, **cfg.model.options)

    if not info.enabled or pretrained is None:
        return build(pretrained)
    model, error = None, None
    if info.is_main:
        try:
            model = build(pretrained)
        except Exception as err:  # noqa: BLE001 - re-raised below, once the other ranks know
            error = err
    outcome = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RuntimeError(f"rank 0 could not load model.pretrained={pretrained!r}: {outcome[0]}")
    return model if model is not None else build(None)


@dataclasses.dataclass
class _Run:
    """Everything a training run set up, passed to its steps (``_train`` below)."""

    cfg: Config
    run_dir: Path
    info: DistInfo
    device: torch.device
    precision: Precision
    data: SegmentationData
    data_info: DataInfo
    model: nn.Module
    recipe: str
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    step: TrainStep | None  # after _wrap (it wraps the data-parallel model)
    memory_format: torch.memory_format
    channels_last: bool
    workers: int
    log: RunLog
    progress: bool
    state: TrainState = dataclasses.field(default_factory=TrainState)
    resumed_from: int | None = None

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_FILE

    @property
    def aux_weight(self) -> float:
        """The auxiliary head's loss weight (the model's; 0 without one, or with ``train.aux_loss`` off)."""
        return float(self.model.aux_weight) if self.cfg.train.aux_loss else 0.0

    def step_for(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> TrainStep:
        """The run's training step (its loss, precision, clipping, memory format) for ``model``."""
        return TrainStep(model, optimizer, self.criterion, precision=self.precision, aux_weight=self.aux_weight,
                         grad_clip=self.cfg.train.grad_clip, memory_format=self.memory_format, scaler=scaler)

    def say(self, message: str) -> None:
        _say(self.info, self.progress, message)


def _say(info: DistInfo, progress: bool, message: str) -> None:
    """A progress note, from rank 0 only, without breaking the progress bar."""
    if info.is_main and progress:
        tqdm.write(message, file=sys.stderr)


def train(
    cfg: Config, run_dir: str | Path, *, resume: bool = True, progress: bool = True, data: SegmentationData | None = None,
    tracking: TrackingContext | None = None,
) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` into ``run_dir``; returns the contents of ``metrics.json``.

    ``data``: an already loaded dataset (``segbench.data.load_data`` or your own ``SegmentationData``);
    None loads ``cfg.data``.
    ``tracking``: the MLflow parent run and tags for ``cfg.train.trackers`` (a review's; ``segbench.engine.tracking``).
    ``resume``: continue from ``run_dir/last.pt`` when it exists (the configuration must match);
    False starts over, deleting only the files the folder's marker says a run wrote
    (``segbench.engine.run_folder``). A non-empty folder that holds no segbench run is refused
    (``RunFolderError``) before anything is read or written.
    Raises ``TrainingDiverged`` on a NaN/inf loss, ``ConfigMismatch`` when resuming a different run.

    CPU runs are bit-for-bit reproducible. On CUDA some kernels add in a nondeterministic order;
    ``train.deterministic`` asks for deterministic ones where PyTorch has them (slower; for this call's
    duration only), but the backward of bilinear upsampling and adaptive pooling, ``MaxUnpool2d`` and
    the 2D NLL loss have none, so a CUDA run is reproducible only statistically. Otherwise cuDNN may pick
    its fastest algorithms (``cudnn.benchmark``), also for this call only.
    """
    run_dir = Path(run_dir)
    with cuda_math(deterministic=cfg.train.deterministic):
        return _train(cfg, run_dir, resume, progress, data, tracking)


def _train(cfg: Config, run_dir: Path, resume: bool, progress: bool, data: SegmentationData | None,
           tracking: TrackingContext | None) -> dict:
    """The run, top to bottom: set up, start or resume, the loop, the final figures."""
    wall_start = time.perf_counter()
    info = init_distributed(cfg.train.device)
    # Before anything is read: a folder that is not a segbench run is refused, never cleared.
    resuming = run_folder.open_for_training(run_dir, resume=resume, is_main=info.is_main)
    run = _setup(cfg, run_dir, info, progress, data, resuming)
    if run.cfg.train.lr_policy == "find":
        _find_lr(run, cfg.train.lr, resuming)
    finished = _resume(run) if resuming else _start(run)
    if finished is not None:  # resumed a run that had already ended
        return finished
    _write_run_files(run)
    _open_tracking(run, tracking)
    try:
        _wrap(run)
        _loop(run)
        result = _finish(run, wall_start)
    except BaseException:
        run.log.tracker.close(finished=False)
        raise
    run.log.tracker.close()
    return result


def _load(cfg: Config, info: DistInfo, data: SegmentationData | None, say) -> SegmentationData:
    """The data (loaded from ``cfg.data`` unless given), with a train and a val split that fit a batch."""
    if data is None:
        data = load_data(cfg.data)
    for notice in data.notices:
        say(f"data: {notice}")
    for split in ("train", "val"):
        if split not in data.splits or len(data.splits[split]) == 0:
            raise ValueError(f"the data has no {split!r} split (splits: {', '.join(data.splits) or 'none'})")
    check_batch_fits(data, cfg.train.batch_size)
    if data.report is not None:
        check_batchable(data, max(1, cfg.train.batch_size // info.world_size), cfg.data.augment.crop_size)
    return data


def _setup(cfg: Config, run_dir: Path, info: DistInfo, progress: bool, data: SegmentationData | None,
           resuming: bool) -> _Run:
    """Data, model (with its pretrained weights unless resuming), the resolved recipe, optimiser and step."""
    device = resolve_device(cfg.train.device, info.local_rank)
    precision = resolve_precision(cfg.train.amp, device)
    say = functools.partial(_say, info, progress)
    # What the data check noticed (an affine that disagrees, a class only in val) is said without a progress
    # bar too: --quiet hides the bar, not warnings.
    data = _load(cfg, info, data, functools.partial(_say, info, True))
    _seed_everything(cfg.train.seed)  # the same initial weights on every rank
    pretrained = cfg.model.pretrained
    if pretrained and resuming:
        say(f"pretrained weights {pretrained}: not loaded, the run resumes from last.pt (its trained weights)")
        pretrained = None
    model = _build_model(cfg, data.num_classes, data.in_channels, pretrained, info)
    if model.pretrained_report is not None:
        say(str(model.pretrained_report))
    # An instance may refine its registry recipe (UPerNet on a ResNet follows the CNN papers).
    recipe = model_recipe(model, cfg.model.arch)
    cfg = dataclasses.replace(cfg, train=resolve_train_config(cfg.train, recipe))
    t = cfg.train
    if t.best_metric not in SCALAR_METRICS:
        raise ValueError(f"train.best_metric={t.best_metric!r} is not a metric; valid: {', '.join(SCALAR_METRICS)}")
    if t.best_metric in SURFACE_METRICS and not cfg.eval.hd95:
        raise ValueError(f"train.best_metric={t.best_metric!r} is a surface-distance figure; it needs eval.hd95=true")
    channels_last = resolve_channels_last(t.channels_last, recipe)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if info.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif info.enabled:
        say("data-parallel on CPU: BatchNorm statistics stay per process (PyTorch's SyncBatchNorm needs CUDA)")
    model.to(device, memory_format=memory_format)
    return _Run(
        cfg=cfg, run_dir=run_dir, info=info, device=device, precision=precision, data=data, data_info=DataInfo.of(data),
        model=model, recipe=recipe, optimizer=build_optimizer(model, t, recipe), scaler=grad_scaler(precision),
        criterion=build_loss(t.loss, data.num_classes, data.ignore_index, t.class_weights).to(device), step=None, memory_format=memory_format, channels_last=channels_last,
        workers=loader_workers(t.num_workers, device, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
        log=RunLog(run_dir / LOG_FILE, info.is_main), progress=progress,
    )


def _find_lr(run: _Run, given_lr: float | None, resuming: bool) -> None:
    """``train.lr_policy=find``: set ``train.lr`` to the range test's pick (``segbench.engine.lr_find``), read
    from the run folder's ``lr_find.json`` when resuming; every rank runs the same test and takes rank 0's
    pick. The optimiser keeps its groups: the schedule sets every group's rate before each step."""
    t = run.cfg.train
    found = read_found(run.run_dir) if resuming else None
    if given_lr is not None and given_lr != found:
        raise ValueError(f"train.lr={given_lr} and train.lr_policy=find: give one of them")
    if found is None:
        rng = capture_rng_state()
        sampler = RunBatchSampler(len(run.data.splits["train"]), t.batch_size, t.seed, run.info)
        loader = DataLoader(EpochKeyed(run.data.splits["train"]), batch_sampler=sampler, generator=torch.Generator())
        result = find_learning_rate(
            run.model, lambda m: build_optimizer(m, t, run.recipe), lambda m, o: run.step_for(m, o, grad_scaler(run.precision)),
            ((batch["image"], batch["mask"]) for batch in loader), steps=t.lr_find_steps)
        restore_rng_state(rng)
        picked = [within_a_decade(result.suggestion, t.lr)]
        if run.info.enabled:
            dist.broadcast_object_list(picked, src=0)
        found = picked[0]
        if run.info.is_main:
            write_json({**result.to_dict(), "picked": found, "recipe_lr": t.lr}, run.run_dir / LR_FIND_FILE)
        run.say(f"learning-rate range test: {len(result.lrs)} steps ({result.stopped}); suggested {result.suggestion:.3g} "
                f"({result.rule}), picked lr {found:.3g} (at most a decade from the recipe's {t.lr:g})")
    run.cfg = dataclasses.replace(run.cfg, train=dataclasses.replace(t, lr=found))


def _start(run: _Run) -> None:
    """A new run (``open_for_training`` cleared the folder's previous run files)."""
    torch.manual_seed(derive_seed(run.cfg.train.seed, 1, run.info.rank))  # dropout differs between ranks


def _resume(run: _Run) -> dict | None:
    """Restore weights, optimiser, scaler, RNG states and ``TrainState`` from ``last.pt``; the saved
    metrics when that run had already ended."""
    checkpoint = load_checkpoint(run.last_path)  # on the CPU: its RNG states must stay there
    differences = _config_differences(checkpoint["config"], config_to_dict(run.cfg))
    if differences:
        raise ConfigMismatch(
            f"{run.run_dir} holds a run with another configuration ({'; '.join(differences)}). "
            "Resume with the same configuration, use another output folder, or start over (--no-resume)."
        )
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    notice = load_scaler(run.scaler, checkpoint["scaler"], checkpoint.get("precision"), run.precision.name)
    if notice:
        run.say(f"warning: {notice}")
    rng = checkpoint["rng"]
    if len(rng) != run.info.world_size:
        run.say(f"warning: the run was saved by {len(rng)} processes and resumes with {run.info.world_size}; "
                "the rest of the run will not match an uninterrupted one exactly")
    notice = restore_rng_state(rng[run.info.rank % len(rng)])
    if notice:
        run.say(f"warning: {notice}")
    run.state = TrainState.from_checkpoint(checkpoint)
    run.resumed_from = run.state.iteration
    run.log.truncate(checkpoint["log_offset"])  # forget lines written after the checkpoint
    ended = run.state.stopped_by is not None or run.resumed_from >= run.cfg.train.iterations
    if ended and (run.run_dir / METRICS_FILE).is_file():
        try:
            return json.loads((run.run_dir / METRICS_FILE).read_text())
        except ValueError as err:  # empty or damaged: the run's own file, written again from its checkpoints
            run.say(f"{run.run_dir / METRICS_FILE} is damaged ({err}); writing it again")
    run.say(f"resuming {run.run_dir} at iteration {run.resumed_from}")
    return None


def _write_run_files(run: _Run) -> None:
    """``config.yaml``, ``data_info.json`` (what predict needs without a checkpoint) and, for a new run,
    ``data_split.json`` (the split it trains on; eval compares the data with it)."""
    if run.info.is_main:
        writable(run.run_dir / CONFIG_FILE).write_text(to_yaml(run.cfg))
        write_json(run.data_info.to_dict(), run.run_dir / DATA_INFO_FILE)
        if run.resumed_from is None:
            run_folder.write_split_record(run.run_dir, split_record(run.data))


def _open_tracking(run: _Run, context: TrackingContext | None) -> None:
    """``cfg.train.trackers`` (rank 0 only), fed from here on by the log's records; the configuration as parameters."""
    t = run.cfg.train
    if t.trackers and run.info.is_main:
        tags = run_tags(run.cfg, recipe=run.recipe, device=str(run.device), precision=run.precision.name,
                        world_size=run.info.world_size)
        run.log.tracker = open_trackers(t.trackers, run.run_dir, resumed_from=run.resumed_from,
                                        tracking_uri=t.tracking_uri, context=context, tags=tags)
        run.log.tracker.log_params(config_params(config_to_dict(run.cfg)))


def _wrap(run: _Run) -> None:
    """The training step, around the data-parallel model under torchrun; the log's start line."""
    model = run.model
    train_model = model
    if run.info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=has_idle_aux_head(model, run.aux_weight),
        )
    run.step = run.step_for(train_model, run.optimizer, run.scaler)
    run.log.write(event="start", iteration=run.state.iteration, resumed=run.resumed_from is not None,
                  arch=run.cfg.model.arch, recipe=run.recipe, device=str(run.device), precision=run.precision.name,
                  world_size=run.info.world_size, channels_last=run.channels_last, num_params=_num_params(model),
                  time=time.time())


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _out_of_memory(run: _Run, stage: str) -> OutOfMemory:
    cfg = run.cfg
    return OutOfMemory(out_of_memory_advice(stage, cfg.train.batch_size, run.info.world_size, cfg.data.augment.crop_size,
                                            cfg.data.resize, cfg.eval.batch_size, run.device))


def _save_last(run: _Run) -> None:
    """``last.pt``: everything needed to resume exactly (every rank takes part; rank 0 writes)."""
    rng = _gather_rng(run.info)
    if run.info.is_main:
        save_checkpoint(
            {"format": CHECKPOINT_FORMAT, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scaler": run.scaler.state_dict(), "precision": run.precision.name, "config": config_to_dict(run.cfg),
             "data_info": run.data_info.to_dict(), "rng": rng, "log_offset": run.log.offset(),
             **dataclasses.asdict(run.state)},
            run.last_path,
        )


def _validate(run: _Run, iteration: int) -> None:
    """Validate; on a new best, ``best.pt`` and its ``per_case_val.csv``."""
    # Every process evaluates its share of the cases with rank 0's weights: DDP keeps parameters equal,
    # but BatchNorm running statistics stay per process on CPU (no SyncBatchNorm there).
    cfg, state, model = run.cfg, run.state, run.model
    t = cfg.train
    broadcast_from_main(model.buffers(), run.info)
    timings: dict[str, float] = {}
    per_case: list[dict] = []
    per_slice: list[dict] = []
    metrics = evaluate(model, run.data.splits["val"], run.data_info, cfg.eval, run.device, run.precision,
                       memory_format=run.memory_format, num_workers=run.workers, desc="val",
                       progress=run.progress and run.info.is_main, timings=timings, dist_info=run.info,
                       per_case=per_case, per_slice=per_slice)
    state.val_time_s += timings["eval_s"]
    state.val_metrics_time_s += timings["metrics_s"]
    improved = is_better(metrics[t.best_metric], state.best["value"], t.best_metric)
    note_validation(state, metrics[t.best_metric], iteration, t.best_metric, t.min_delta)
    state.last_val = {"iteration": iteration, "metrics": metrics}
    if improved:
        state.best = {"value": metrics[t.best_metric], "iteration": iteration, "metrics": metrics}
    if improved and run.info.is_main:
        _write_per_case(run, "val", per_case, per_slice)
        save_checkpoint(
            {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": config_to_dict(cfg),
             "data_info": run.data_info.to_dict(), "iteration": iteration, "metrics": metrics},
            run.run_dir / BEST_FILE,
        )
    run.log.write(event="val", iteration=iteration, best=improved, **metrics)
    best_value = math.nan if state.best["value"] is None else state.best["value"]
    run.say(f"iter {iteration}: {t.best_metric} {metrics[t.best_metric]:.4f} "
            f"(best {best_value:.4f} at {state.best['iteration']})")


def _write_per_case(run: _Run, split: str, per_case: list[dict], per_slice: list[dict]) -> None:
    """The best checkpoint's ``per_case_<split>.csv`` and, for volumes, ``per_slice_<split>.csv``."""
    write_per_case_csv(run.run_dir / run_folder.per_case_file(split), per_case)
    if per_slice:
        write_per_case_csv(run.run_dir / run_folder.per_slice_file(split), per_slice, PER_SLICE_COLUMNS)


def _diverged(run: _Run, iteration: int, loss: float) -> TrainingDiverged:
    lr = run.cfg.train.lr * lr_factor(iteration, _schedule(run), _anneal(run))
    run.log.write(event="diverged", iteration=iteration, loss=loss, lr=lr)
    kept = f"{run.run_dir} keeps the last good checkpoint" if run.last_path.is_file() else "no checkpoint was written before it"
    return TrainingDiverged(f"the loss became {loss} at iteration {iteration} (lr {lr:.3g}); training stopped. "
                            f"{kept}. Try a lower train.lr, train.grad_clip=1.0, or train.amp=off.")


def _end(run: _Run) -> int:
    """The iteration the run ends at: train.iterations, the steps a time budget was planned to hold, or the
    end of an "auto" run's annealing."""
    if run.state.anneal is not None:
        return run.state.anneal[1]
    return run.state.planned_iterations or run.cfg.train.iterations


def _anneal(run: _Run) -> tuple[int, int] | None:
    return tuple(run.state.anneal) if run.state.anneal is not None else None


def _plateau(run: _Run, iteration: int) -> bool:
    """Budget "auto" after a validation: on the plateau, start the annealing end (``train.anneal``; the
    run goes on) or, with none to run, stop (True)."""
    t, state = run.cfg.train, run.state
    if t.budget != "auto" or state.anneal is not None or state.stale_validations < t.patience:
        return False
    steps = math.ceil(t.anneal * iteration / t.val_interval) * t.val_interval  # ends on a validation
    end = min(iteration + max(steps, t.val_interval), t.iterations) if t.anneal > 0 else iteration
    if end <= iteration:
        return True
    state.anneal = [iteration, end]
    run.log.write(event="anneal", iteration=iteration, until=end,
                  lr=t.lr * lr_factor(iteration, _schedule(run)))
    run.say(f"iter {iteration}: plateau ({t.patience} validations without a gain of {t.min_delta}); "
            f"annealing the learning rate to {t.min_lr:g} by iteration {end}")
    return False


def _schedule(run: _Run) -> TrainConfig:
    """The settings the learning rate follows: a time budget's schedule runs over its planned steps."""
    t = run.cfg.train
    return dataclasses.replace(t, iterations=run.state.planned_iterations) if run.state.planned_iterations else t


def _loop(run: _Run) -> None:
    """Step the optimiser until the budget ends (``_end``, a time budget's deadline, or a plateau) over one
    DataLoader for the rest of the run (its workers start once), reading the loss only at log,
    validation and checkpoint points."""
    t, state, info = run.cfg.train, run.state, run.info
    train_set = run.data.splits["train"]
    bar = tqdm(total=_end(run), initial=state.iteration, desc=f"train {run.cfg.model.arch}", unit="it",
               disable=not (run.progress and info.is_main), dynamic_ncols=True)
    run.model.train()
    tick = time.perf_counter()
    batches_per_epoch = len(epoch_batches(len(train_set), t.batch_size, t.seed, 0, info))
    if state.batch_in_epoch >= batches_per_epoch:  # saved at the end of an epoch
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    sampler = RunBatchSampler(len(train_set), t.batch_size, t.seed, info, start_epoch=state.epoch,
                              start_batch=state.batch_in_epoch)
    loader = DataLoader(EpochKeyed(train_set), batch_sampler=sampler, num_workers=run.workers,
                        pin_memory=run.device.type == "cuda", generator=torch.Generator(),
                        prefetch_factor=4 if run.workers else None)
    window = LossWindow(run.device, *state.log_window)
    batches = iter(loader) if state.iteration < _end(run) and state.stopped_by is None else iter(())
    try:
        for batch in batches:
            if state.batch_in_epoch >= batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            state.data_time_s += time.perf_counter() - tick  # waiting for the input pipeline
            iteration = state.iteration
            lr = set_learning_rate(run.optimizer, iteration, _schedule(run), _anneal(run))
            try:
                window.add(run.step(batch["image"], batch["mask"]), iteration)
            except torch.OutOfMemoryError as err:
                raise _out_of_memory(run, "training") from err
            state.iteration = iteration = iteration + 1
            state.batch_in_epoch += 1
            state.images_seen += t.batch_size
            spent = state.train_time_s + time.perf_counter() - tick
            if t.budget == "time" and state.planned_iterations is None and iteration >= min(PLAN_AFTER, t.iterations):
                state.planned_iterations = plan_iterations(iteration, spent, t.time_budget_s, t.iterations)
                bar.total = state.planned_iterations
            out_of_time = t.budget == "time" and spent >= t.time_budget_s
            last = iteration >= _end(run) or out_of_time
            logging = iteration % t.log_interval == 0 or last
            validating = iteration % t.val_interval == 0 or last
            saving = validating or iteration % t.checkpoint_interval == 0
            if logging or saving:  # the only points where the device is waited for
                mean_loss, bad_iteration, bad_loss = window.check(info)
                if bad_iteration is not None:
                    raise _diverged(run, bad_iteration, bad_loss)
            state.train_time_s += time.perf_counter() - tick
            bar.update(1)
            if logging:
                speed = state.images_seen / max(state.train_time_s, 1e-9)
                run.log.write(event="train", iteration=iteration, epoch=state.epoch, loss=mean_loss, lr=lr,
                              images_per_s=speed, train_time_s=state.train_time_s, data_time_s=state.data_time_s,
                              data_time_share=state.data_time_s / max(state.train_time_s, 1e-9))
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                window = LossWindow(run.device)
            if validating:
                try:
                    _validate(run, iteration)
                except torch.OutOfMemoryError as err:
                    raise _out_of_memory(run, "validation") from err
                if _plateau(run, iteration):
                    last, state.stopped_by = True, "plateau"
                bar.total = _end(run)
            if last and state.stopped_by is None:
                state.stopped_by = ("plateau" if state.anneal is not None
                                    else "time" if t.budget == "time" else "iterations")
            if saving:
                state.log_window = window.state()
                _save_last(run)
            tick = time.perf_counter()
            if last:
                break
    finally:
        bar.close()


def _track_results(run: _Run, result: dict) -> None:
    """``metrics.json`` to the trackers (``best/``, ``test/``, ``run/`` figures at the last iteration) and the
    files a tracker keeps as artifacts."""
    run.log.tracker.log_metrics(final_metrics(json_safe(result)), run.state.iteration)
    names = (CONFIG_FILE, METRICS_FILE, run_folder.per_case_file("val"), *([BEST_FILE] if run.cfg.train.track_checkpoint else []))
    for name in names:
        if (run.run_dir / name).is_file():
            run.log.tracker.log_artifact(run.run_dir / name)


def _finish(run: _Run, wall_start: float) -> dict:
    """The best checkpoint on the test split (when there is one), then ``metrics.json``."""
    cfg, state, info, model = run.cfg, run.state, run.info, run.model
    t, best = cfg.train, state.best
    test_metrics = None
    if "test" in run.data.splits and len(run.data.splits["test"]) and cfg.eval.test_at_end and best["iteration"]:
        if info.is_main:
            model.load_state_dict(load_checkpoint(run.run_dir / BEST_FILE)["model"])
        broadcast_from_main(model.state_dict().values(), info)  # best.pt may be on rank 0's disk only
        per_case: list[dict] = []
        per_slice: list[dict] = []
        test_metrics = evaluate(model, run.data.splits["test"], run.data_info, cfg.eval, run.device, run.precision,
                                memory_format=run.memory_format, num_workers=run.workers, per_case=per_case,
                                per_slice=per_slice, progress=run.progress and info.is_main, desc="test",
                                dist_info=info)
        if info.is_main:
            _write_per_case(run, "test", per_case, per_slice)
    result = {}
    if info.is_main:
        result = {
            "arch": cfg.model.arch, "recipe": run.recipe, "data": run.data.name, "iterations": t.iterations,
            "budget": t.budget, "iterations_run": state.iteration, "stopped_by": state.stopped_by,
            "planned_iterations": state.planned_iterations, "anneal": state.anneal,
            # An annealed "auto" run reached its plateau (then finished its schedule): converged.
            "converged": state.stale_validations >= t.patience or state.anneal is not None,
            "last_improvement_iteration": state.last_improvement_iteration, "lr": t.lr, "lr_policy": t.lr_policy,
            "world_size": info.world_size, "device": str(run.device), "precision": run.precision.name,
            "math": math_settings(run.device), "channels_last": run.channels_last, "num_params": _num_params(model),
            "best_metric": t.best_metric, "best_value": best["value"], "best_iteration": best["iteration"],
            "val": best["metrics"], "last_val": state.last_val["metrics"],
            "train_time_s": state.train_time_s,
            "train_images_per_s": state.images_seen / max(state.train_time_s, 1e-9),
            "data_time_s": state.data_time_s,
            "val_time_s": state.val_time_s, "val_metrics_time_s": state.val_metrics_time_s,
            "wall_time_s": time.perf_counter() - wall_start, "resumed_from": run.resumed_from,
        }
        if test_metrics is not None:
            result["test"] = test_metrics
        write_json(result, run.run_dir / METRICS_FILE)
        run.log.write(event="end", iteration=state.iteration, best_value=best["value"],
                      best_iteration=best["iteration"], train_time_s=state.train_time_s)
        _track_results(run, result)
    if info.enabled:
        shared = [result]
        dist.broadcast_object_list(shared, src=0)
        result = shared[0]
    return json_safe(result)
