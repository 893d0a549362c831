"""nnU-Net as the review's anchor: the worker that runs in nnU-Net's own environment (``python -m
segbench.bench.protocol.anchor.nnunet SPEC``), one process for all of the anchor's runs.

The steps, each nnU-Net's own code but the export and the scoring:

1. **Export** every split's cases from segbench's dataset (the same cached, checked, label-mapped slices
   the zoo trains on, on the same grid) into nnU-Net's raw format: one NIfTI per case, 2D images as 2D
   NIfTI (nnU-Net then plans only its ``2d`` configuration), volumes as 3D NIfTI with their voxel spacing
   (nnU-Net may plan ``3d_fullres``); a volume's split into slabs (a lone volume folded by slab) becomes one
   case per contiguous run of slices. ``splits_final.json`` holds segbench's split of that fold, so nnU-Net
   trains on exactly the zoo's training cases and never sees the validation ones. Folds whose train and
   validation cases are the same set share one export.
2. **Plan and preprocess** with nnU-Net's default planner (``ExperimentPlanner``) and preprocessor.
3. **Train** ``nnUNetTrainer_segbench`` (nnU-Net's trainer with the matched schedule, ``trainers/``) or
   nnU-Net's own ``nnUNetTrainer`` (its default 1000 x 250 schedule, the ``nnunet-default`` anchor).
4. **Predict** the validation (and test) cases with ``nnUNetPredictor`` as ``nnUNetv2_predict`` does
   (sliding window, Gaussian weighting, mirroring TTA: nnU-Net's defaults), one process.
5. **Score** each prediction with segbench's own metrics (``SegmentationMetrics``), item by item in the
   split's order, into the run folder's ``per_case_<split>.csv`` / ``per_slice_<split>.csv``: the files a
   zoo run writes, so the review's statistics pair the anchor with every architecture unit by unit.
6. **Cost** from segbench's harness: the network's batch-1 forward (``measure_inference``) for 2D, its
   training step timed interleaved with a zoo architecture's to turn a time budget into iterations, its
   step FLOPs for a FLOPs budget; nnU-Net's end-to-end prediction time separately, labelled.

nnU-Net reads ``nnUNet_def_n_proc`` when imported: the parent sets it, ``nnUNet_n_proc_DA`` (0: the
augmentation runs in this process) and the thread count before this module imports nnU-Net.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from segbench.bench.protocol.anchor.spec import NNUNET_FOLDER, SCHEDULE_FILE, AnchorSpec, schedule_of
from segbench.bench.protocol.record import WorkerResult
from segbench.jsonio import write_json
from segbench.run_files import METRICS_FILE, per_case_file, per_slice_file

__all__ = ["run_worker", "export_cases", "case_runs", "score", "plan_iterations", "main"]

FILE_ENDING = ".nii.gz"
PLANS = "nnUNetPlans"


def _say(text: str) -> None:
    print(f"anchor: {text}", flush=True)


# --- 1. export ------------------------------------------------------------------------------------------


def case_runs(dataset) -> list[tuple[str, list[int]]]:
    """(segbench case, [dataset positions]) per contiguous run of one case's slices, in the split's order."""
    runs: list[tuple[str, list[int]]] = []
    last_index = None
    for i in range(len(dataset)):
        case, index = _case_index(dataset, i)
        if runs and runs[-1][0] == case and last_index is not None and index == last_index + 1:
            runs[-1][1].append(i)
        else:
            runs.append((case, [i]))
        last_index = index
    return runs


def _case_index(dataset, i: int) -> tuple[str, int]:
    if hasattr(dataset, "items") and hasattr(dataset, "cases"):  # segbench's SliceDataset: no decoding
        case, index = dataset.items[i]
        return str(dataset.cases[case]), int(index)
    item = dataset[i]
    return str(item["case"]), int(item["index"])


def export_cases(dataset, positions: list[int], name: str, images_dir: Path, labels_dir: Path | None,
                 volumetric: bool, ignore_index: int, ignore_label: int | None) -> None:
    """One nnU-Net case ``name`` from the dataset items at ``positions``: ``{name}_{c:04d}.nii.gz`` per
    channel, and its label map (``ignore_index`` -> nnU-Net's ``ignore`` label)."""
    import SimpleITK as sitk

    items = [dataset[i] for i in positions]
    images = np.stack([item["image"].numpy() for item in items], axis=1)  # (C, S, H, W)
    masks = np.stack([item["mask"].numpy() for item in items])  # (S, H, W)
    spacing = tuple(float(s) for s in items[0].get("spacing") or (1.0, 1.0, 1.0))

    def write(array: np.ndarray, path: Path) -> None:
        array = array if volumetric else array[0]
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing[::-1] if volumetric else spacing[1:][::-1])  # SimpleITK: x (column) first
        sitk.WriteImage(image, str(path), useCompression=True)

    for c, channel in enumerate(images):
        write(channel.astype(np.float32), images_dir / f"{name}_{c:04d}{FILE_ENDING}")
    if labels_dir is not None:
        labels = masks.astype(np.int16)
        if ignore_label is not None:
            labels[masks == ignore_index] = ignore_label
        write(labels.astype(np.uint8 if labels.max() < 255 else np.uint16), labels_dir / f"{name}{FILE_ENDING}")


def _dataset_json(data, channels: int, cases: int, ignore_label: int | None) -> dict:
    labels = {"background" if k == 0 else f"{n}_{k}" if n == "background" else n: k
              for k, n in enumerate(data.class_names)}
    if ignore_label is not None:
        labels["ignore"] = ignore_label
    # Any channel name but "CT" (and nnU-Net's few special ones) makes nnU-Net z-score each case's channel.
    return {"channel_names": {str(c): f"channel{c}" for c in range(channels)}, "labels": labels,
            "numTraining": cases, "file_ending": FILE_ENDING, "name": data.name}


# --- the worker -----------------------------------------------------------------------------------------


class _Export:
    """One nnU-Net dataset: the cases of a fold's train + val splits (and the test split)."""

    def __init__(self, dataset_id: int, name: str, cases: dict[str, dict[str, list[tuple[str, list[int]]]]]):
        self.dataset_id = dataset_id
        self.name = f"Dataset{dataset_id:03d}_{name}"
        self.cases = cases  # split -> nnU-Net case name -> (segbench case, positions)


def _nnunet_names(data, split: str) -> dict[str, tuple[str, list[int]]]:
    return {f"{split}_{k:04d}": run for k, run in enumerate(case_runs(data.splits[split]))}


def _ignore_label(data) -> int | None:
    return data.num_classes if data.config.ignore_index is not None else None


def prepare(spec: AnchorSpec, data, dataset_id: int, root: Path) -> _Export:
    """Export the fold's data, write its split and plan and preprocess it (skipped when done before)."""
    name = "".join(ch if ch.isalnum() else "_" for ch in (data.name or "segbench"))[:40]
    splits = {s: _nnunet_names(data, s) for s in ("train", "val", "test") if s in data.splits}
    export = _Export(dataset_id, name, splits)
    raw = root / "raw" / export.name
    done = root / "preprocessed" / export.name / f"{PLANS}.json"
    if done.is_file() and (root / "preprocessed" / export.name / "splits_final.json").is_file():
        _say(f"{export.name}: planned and preprocessed before")
        return export
    ignore = _ignore_label(data)
    for split, cases in splits.items():
        images = raw / ("imagesTs" if split == "test" else "imagesTr")
        labels = raw / ("labelsTs" if split == "test" else "labelsTr")
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for case, (_, positions) in cases.items():
            export_cases(data.splits[split], positions, case, images, labels, data.volumetric,
                         data.ignore_index, ignore)
    write_json(_dataset_json(data, data.in_channels, len(splits["train"]) + len(splits.get("val", {})), ignore),
               raw / "dataset.json")
    _say(f"{export.name}: exported {sum(len(c) for c in splits.values())} cases; planning and preprocessing")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess,
    )  # fmt: skip

    # The planner sets torch's threads to nnU-Net's augmentation workers while it sizes networks (0 is refused).
    os.environ["nnUNet_n_proc_DA"] = str(max(1, spec.threads))
    try:
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
        plan_experiments([dataset_id])
        configurations = ["2d"] if not data.volumetric else ["2d", "3d_fullres"]
        preprocess([dataset_id], PLANS, configurations, [1] * len(configurations), verbose=False)
    finally:
        os.environ["nnUNet_n_proc_DA"] = "0"  # training: augmentation in this process, no worker pool
    write_json([{"train": sorted(splits["train"]), "val": sorted(splits.get("val", {}))}],
               root / "preprocessed" / export.name / "splits_final.json")
    return export


def _configuration(export: _Export, root: Path, wanted: str) -> str:
    plans = json.loads((root / "preprocessed" / export.name / f"{PLANS}.json").read_text())
    available = [c for c in plans["configurations"] if "cascade" not in c and "lowres" not in c]
    if wanted != "auto":
        if wanted not in available:
            raise ValueError(f"nnU-Net planned {', '.join(available)} for this data, not {wanted}")
        return wanted
    return "3d_fullres" if "3d_fullres" in available else "2d"


def _trainer(spec: AnchorSpec, export: _Export, configuration: str, device):
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(export.dataset_id), configuration, 0, spec.trainer, PLANS, device=device)


def _synthetic_batch(trainer):
    """A training batch of the trainer's patch and batch size: random input, random labels at each deep
    supervision scale (what a step's cost depends on is the shapes)."""
    import torch

    patch = list(trainer.configuration_manager.patch_size)
    channels = trainer.num_input_channels
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(trainer.batch_size, channels, *patch, generator=generator)
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else [[1.0] * len(patch)]
    classes = trainer.label_manager.num_segmentation_heads
    target = [torch.randint(0, classes, (trainer.batch_size, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]),
                            generator=generator) for scale in scales]
    return {"data": data, "target": target if trainer.enable_deep_supervision else target[0]}


def _step_closure(trainer):
    batch = _synthetic_batch(trainer)
    return lambda: trainer.train_step(batch)


def _step_flops(trainer) -> int:
    """Training FLOPs of one nnU-Net step (forward + backward), by segbench's one FLOP counter."""
    from segbench.bench.measure.flops import count_flops_of

    return int(count_flops_of(_step_closure(trainer)))


def plan_iterations(spec: AnchorSpec, trainer) -> tuple[int, dict]:
    """The anchor's iterations under the review's budget, and how they were derived (the bench.json record)."""
    budget = spec.budget
    kind = budget["kind"]
    if spec.schedule == "default":
        total = trainer.num_epochs * trainer.num_iterations_per_epoch
        return total, {"budget_kind": "nnunet default", "budget_why": f"nnU-Net's own schedule: {trainer.num_epochs} "
                                                                     f"epochs x {trainer.num_iterations_per_epoch}"}
    if kind in ("iterations", "auto"):
        n = int(budget["iterations"])
        why = (f"{n} iterations, as every architecture" if kind == "iterations" else
               f"the auto budget's cap of {n} iterations (nnU-Net has no early stop on segbench's validation)")
        return n, {"budget_kind": kind, "budget_why": why}
    if kind == "flops":
        flops = _step_flops(trainer)
        n = max(1, int(budget["amount"] // flops))
        return n, {"budget_kind": "flops", "budget_step_flops": flops,
                   "budget_why": f"{budget['amount']:.3g} training FLOPs / {flops:.3g} per step"}
    return _time_iterations(budget, trainer)


def _time_iterations(budget: dict, trainer) -> tuple[int, dict]:
    """A time budget: nnU-Net's training step timed interleaved with the reference architecture's (the one
    timing harness, here in nnU-Net's process), and the reference's planned iterations scaled by the ratio of
    their step times, so the anchor gets the seconds the zoo got in the plan's units."""
    import torch

    from segbench.bench.measure.speed import SpeedSettings, training_step_of
    from segbench.bench.measure.step_time import time_steps

    settings = SpeedSettings(**{**budget["speed"], "size": tuple(budget["speed"]["size"]), "peers": False})
    reference = budget["reference"]
    torch.manual_seed(0)
    ref_step, _ = training_step_of(reference, settings)
    steps = {reference: ref_step, "nnunet": _step_closure(trainer)}
    times = time_steps(steps, rounds=settings.rounds, max_warmup=settings.max_warmup, device=settings.device,
                       min_seconds=float(budget.get("min_seconds", 0.0)))
    ratio = times.step_s["nnunet"] / times.step_s[reference]
    n = max(1, round(budget["reference_iterations"] / ratio))
    n = min(n, int(budget["iterations"]))
    why = (f"{budget['amount']:g} s: {reference}'s {budget['reference_iterations']} planned iterations x its step time "
           f"/ nnU-Net's ({times.step_s[reference]:.3f} s / {times.step_s['nnunet']:.3f} s, interleaved)")
    return n, {"budget_kind": "time", "budget_step_s": times.step_s["nnunet"], "budget_reference": reference,
               "budget_reference_step_s": times.step_s[reference], "budget_why": why}


def _predict(spec: AnchorSpec, export: _Export, model_dir: Path, split: str, out_dir: Path, root: Path) -> float:
    """nnU-Net's prediction of ``split``'s cases into ``out_dir``, as ``nnUNetv2_predict`` makes it (one process);
    returns its seconds."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = root / "raw" / export.name / ("imagesTs" if split == "test" else "imagesTr")
    cases = sorted(export.cases[split])
    channels = len(json.loads((root / "raw" / export.name / "dataset.json").read_text())["channel_names"])
    inputs = [[str(folder / f"{case}_{c:04d}{FILE_ENDING}") for c in range(channels)] for case in cases]
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    predictor.predict_from_files_sequential(inputs, [str(out_dir / case) for case in cases], save_probabilities=False,
                                            overwrite=True)
    return time.perf_counter() - start


def score(data, split: str, cases: dict[str, tuple[str, list[int]]], predictions: Path, eval_cfg) -> tuple[dict, list, list]:
    """segbench's metrics of the predictions in ``predictions`` (``{nnU-Net case}.nii.gz``) against the split's
    own masks, item by item in the split's order: (figures, per-case rows, per-slice rows)."""
    import SimpleITK as sitk
    import torch

    from segbench.engine.metrics import SegmentationMetrics

    dataset = data.splits[split]
    metrics = SegmentationMetrics(data.num_classes, data.ignore_index, data.class_names, eval_cfg.background,
                                  eval_cfg.hd95, eval_cfg.nsd_tolerance)
    for name, (_, positions) in sorted(cases.items(), key=lambda kv: kv[1][1][0]):
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / f"{name}{FILE_ENDING}")))
        predicted = predicted.reshape(len(positions), *predicted.shape[-2:])
        for k, i in enumerate(positions):
            item = dataset[i]
            metrics.update(torch.from_numpy(predicted[k].astype(np.int64))[None], item["mask"][None],
                           [str(item["case"])], [int(item["index"])], [item.get("spacing")])
    return metrics.compute(), metrics.per_case_rows(), metrics.per_slice_rows()


def _cost(trainer, spec: AnchorSpec, configuration: str) -> dict:
    """The network's parameters, FLOPs, latency and memory from segbench's harness (2D: at the review's input
    size, or nnU-Net's patch when the review's size does not fit the network's strides)."""
    from segbench.bench.measure.cost import measure_inference

    network = trainer.network
    trainer.set_deep_supervision_enabled(False)
    if configuration != "2d":
        import torch

        from segbench.bench.measure.flops import count_flops, count_parameters

        patch = tuple(trainer.configuration_manager.patch_size)
        params = count_parameters(network)
        with torch.inference_mode():
            flops = count_flops(network.eval(), (1, trainer.num_input_channels, *patch))
        return {"params": params, "params_m": params / 1e6, "gflops": flops / 1e9, "measure_size": "x".join(map(str, patch)),
                "measure_note": "3d network: FLOPs of one patch; its forward is not timed by segbench's 2D harness "
                                "(see nnunet_predict_s)"}
    strides = np.prod(np.array(trainer.configuration_manager.pool_op_kernel_sizes), axis=0)[-2:]
    size = tuple(spec.measure["size"])
    if any(s % int(k) for s, k in zip(size, strides)):
        size = tuple(trainer.configuration_manager.patch_size[-2:])
    figures = measure_inference(network, in_channels=trainer.num_input_channels, size=size,
                                rounds=spec.measure.get("rounds", 20), max_warmup=spec.measure.get("max_warmup", 10))
    figures.pop("timing", None)
    return {**figures, "measure_size": f"{size[0]}x{size[1]}"}


def _run_one(spec: AnchorSpec, run: dict, export: _Export, root: Path, data) -> WorkerResult:
    import torch

    from segbench.bench.measure.cost import machine_info
    from segbench.config import config_from_dict

    run_dir = Path(run["run_dir"])
    cfg = config_from_dict(run["config"])
    result = WorkerResult(hash=run["hash"], machine=machine_info("cpu"))
    result.data = {"name": data.name, "num_classes": data.num_classes, "in_channels": data.in_channels,
                   "class_names": list(data.class_names), "splits": {s: len(d) for s, d in data.splits.items()},
                   "format": data.format, "volumetric": data.volumetric}
    results = run_dir / NNUNET_FOLDER
    os.environ["nnUNet_results"] = str(results)
    device = torch.device("cpu")
    configuration = _configuration(export, root, spec.configuration)
    os.environ.pop("SEGBENCH_NNUNET_SCHEDULE", None)  # a previous run's: this first trainer only measures
    trainer = _trainer(spec, export, configuration, device)
    trainer.initialize()
    torch.set_num_threads(spec.threads)
    iterations, budget = plan_iterations(spec, trainer)
    schedule = schedule_of(iterations, spec.schedule == "default", seed=int(run["seed"]), threads=spec.threads)
    write_json(schedule, run_dir / SCHEDULE_FILE)
    os.environ["SEGBENCH_NNUNET_SCHEDULE"] = str(run_dir / SCHEDULE_FILE)
    result.budget = {**budget, "iterations": schedule["epochs"] * schedule["iterations_per_epoch"]}
    _say(f"{run_dir.name}: nnU-Net {configuration}, {schedule['epochs']} epochs x {schedule['iterations_per_epoch']} "
         f"iterations (batch {trainer.batch_size}, patch {'x'.join(map(str, trainer.configuration_manager.patch_size))})")
    trainer = _trainer(spec, export, configuration, device)  # reads the schedule; seeded
    start = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - start
    model_dir = Path(trainer.output_folder_base)
    metrics: dict = {"iterations_run": result.budget["iterations"], "train_time_s": train_s,
                     "train_images_per_s": result.budget["iterations"] * trainer.batch_size / train_s,
                     "nnunet_configuration": configuration, "nnunet_batch_size": trainer.batch_size,
                     "nnunet_patch_size": "x".join(map(str, trainer.configuration_manager.patch_size)),
                     "nnunet_epochs": schedule["epochs"], "nnunet_iterations_per_epoch": schedule["iterations_per_epoch"],
                     "converged": None}
    for split in [s for s in ("val", "test") if s in export.cases]:
        predictions = run_dir / NNUNET_FOLDER / f"predictions_{split}"
        seconds = _predict(spec, export, model_dir, split, predictions, root)
        figures, per_case, per_slice = score(data, split, export.cases[split], predictions, cfg.eval)
        metrics[split] = figures
        metrics[f"nnunet_predict_{split}_s"] = seconds
        from segbench.engine.metrics import write_per_case_csv

        write_per_case_csv(run_dir / per_case_file(split), per_case)
        if per_slice:
            write_per_case_csv(run_dir / per_slice_file(split), per_slice, tuple(per_slice[0]))
    result.measure = {**_cost(trainer, spec, configuration), "nnunet_predict_s": metrics.get("nnunet_predict_val_s"),
                      "nnunet_predict_note": "nnU-Net's end-to-end prediction of the validation cases (preprocessing, "
                                             "sliding window, mirroring, export), one process"}
    result.metrics = metrics
    write_json(metrics, run_dir / METRICS_FILE)
    result.status = "ok"
    return result


def run_worker(spec_path: str | Path) -> int:
    """Every run of the anchor's spec (skipping those finished before); returns the exit status."""
    from segbench.data import load_data
    from segbench.config import config_from_dict

    spec = AnchorSpec.read(spec_path)
    root = Path(spec.root)
    exports: dict[str, _Export] = {}
    failed = 0
    for run in spec.runs:
        run_dir = Path(run["run_dir"])
        previous = WorkerResult.read(run_dir)
        if previous is not None and previous.ok and previous.hash == run["hash"]:
            _say(f"{run_dir.name}: finished before")
            continue
        try:
            data = load_data(config_from_dict(run["config"]).data)
            key = json.dumps({s: [list(r) for r in case_runs(d)] for s, d in data.splits.items()}, sort_keys=True)
            if key not in exports:
                exports[key] = prepare(spec, data, 900 + len(exports), root)
            result = _run_one(spec, run, exports[key], root, data)
        except Exception as err:  # a failed anchor is a failed row, never a failed review
            failed += 1
            result = WorkerResult(hash=run["hash"], error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                                  traceback=traceback.format_exc())
            _say(f"{run_dir.name}: failed: {result.error}")
        result.write(run_dir)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m segbench.bench.protocol.anchor.nnunet ANCHOR_SPEC.json", file=sys.stderr)
        return 2
    return run_worker(argv[0])


if __name__ == "__main__":  # nnU-Net starts its workers with spawn: the guard keeps them from rerunning this
    sys.exit(main())
