"""`segbench speed`: training and inference speed against peers, FLOP/s against the machine's matmul."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import yaml


def _parse_sets(values: tuple[str, ...]) -> dict[str, dict]:
    """``ARCH.KEY=VALUE`` (VALUE parsed as YAML) -> {arch: {key: value}}."""
    options: dict[str, dict] = {}
    for text in values:
        key, sep, value = text.partition("=")
        arch, dot, option = key.partition(".")
        if not (sep and dot and arch and option):
            raise click.BadParameter(f"expected ARCH.OPTION=VALUE (e.g. unet.base_width=32), got {text!r}", param_hint="--set")
        options.setdefault(arch, {})[option] = yaml.safe_load(value)
    return options


def _split_archs(values: tuple[str, ...]) -> list[str]:
    from segbench.models.registry import list_models

    valid = list_models()
    archs = [a for v in values for a in v.split(",") if a] or valid
    unknown = [a for a in archs if a not in valid]
    if unknown:
        raise click.BadParameter(f"unknown architecture(s) {', '.join(unknown)}; valid: {', '.join(valid)}", param_hint="--archs")
    return archs


@click.command()
@click.option("--archs", multiple=True, help="Architectures, comma-separated or repeated (default: all registered).")
@click.option("--profile", type=click.Choice(["quick", "standard", "paper"]), default=None,
              help="Take each architecture's options (and the input size) from this sweep profile; default: "
              "the architectures' own defaults (the papers' configurations) at 512x512.")
@click.option("--size", nargs=2, type=int, default=None, help="Input H W [default: the profile's, else 512 512].")
@click.option("--batch", type=int, default=2, show_default=True, help="Images per step (>= 2 for BatchNorm in training).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--precision", "amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True,
              help="Autocast as train.amp: auto is what training picks on this device (bf16 on CPUs with native "
              "bf16 and on GPUs that have it, fp16 on older GPUs, else fp32); off: fp32.")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Timed rounds; figures are medians with their interquartile range.")
@click.option("--max-warmup", type=int, default=10, show_default=True,
              help="Untimed rounds at most before timing; warm-up ends earlier once consecutive timings agree.")
@click.option("--engine", "engines", multiple=True, type=click.Choice(["torch", "onnx"]), default=("torch",),
              show_default=True, help="Add 'onnx' to time ONNX Runtime inference of our export too.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="--no-train: time inference only (quicker engine and memory-format comparisons).")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile every model first (compile time reported).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Model and input in channels-last memory format [default: auto, as training does: "
              "channels-last for CNN-family models, not for transformers].")
@click.option("--peers/--no-peers", default=True, show_default=True, help="Time peer implementations where installed.")
@click.option("--threads", type=int, default=None,
              help="Intra-op threads for torch and ONNX Runtime (default: torch's). On a busy machine 1 is steadier.")
@click.option("--classes", "num_classes", type=int, default=21, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="ARCH.OPTION=VALUE",
              help="Builder option for one architecture, e.g. --set unet.base_width=32 --set pspnet.encoder=resnet101.")
@click.option("--pipeline/--no-pipeline", default=False, show_default=True,
              help="Also measure, for each architecture, the share of up to 20 train and validation batches "
              "spent in the DataLoader and in SegmentationMetrics rather than the model.")
@click.option("--data", "data_source", default="brain-mri", show_default=True,
              help="Dataset for --pipeline: a built-in name or a directory.")
@click.option("--breakdown", is_flag=True, help="Also profile a segbench training step per architecture: time by operator kind.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write every figure to this JSON file.")
def speed(archs, size, batch, device, amp, rounds, max_warmup, engines, train, use_compile, channels_last, peers, threads, num_classes, sets,
          pipeline, data_source, breakdown, profile, out) -> None:
    """Time a training step and inference of each architecture, interleaved with its peer and a matmul.

    Prints per architecture the median times, the ratio segbench/peer (below 1: segbench is faster),
    and the achieved GFLOP/s with its share of this machine's matmul rate, in the precision the model
    ran in, measured in the same run.
    """
    import torch

    from segbench.bench.measure.speed import SpeedSettings, format_table, run_speed

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available here", param_hint="--device")
    if rounds < 1:
        raise click.BadParameter("at least one timed round is needed", param_hint="--rounds")
    if max_warmup < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--max-warmup")
    if batch < 2:
        raise click.BadParameter("training with BatchNorm needs at least 2 images per batch", param_hint="--batch")
    options: dict[str, dict] = {}
    if profile:
        from segbench.bench.protocol.profiles import get_profile, with_available_crf

        chosen, crf_notes = with_available_crf(get_profile(profile))
        for line in crf_notes:
            click.echo(line, err=True)
        options = {arch: dict(values) for arch, values in chosen.arch_options.items()}
        size = size or chosen.input_size
    for arch, values in _parse_sets(sets).items():
        options.setdefault(arch, {}).update(values)
    size = tuple(size or (512, 512))
    settings = SpeedSettings(
        size=size, batch=batch, device=device, amp=amp, rounds=rounds, max_warmup=max_warmup,
        engines=tuple(dict.fromkeys(("torch", *engines))), channels_last=channels_last, compile=use_compile,
        peers=peers, num_classes=num_classes, options=options, threads=threads,
        breakdown=breakdown, train=train,
    )
    names = _split_archs(archs)
    if threads:
        torch.set_num_threads(threads)
    from segbench.engine.device import resolve_precision

    try:
        precision = resolve_precision(amp, torch.device(device))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--precision") from None
    click.echo(f"segbench speed: {len(names)} architecture(s), batch {batch} x {size[0]}x{size[1]}, {device}, "
               f"{precision.name}, {torch.get_num_threads()} threads, medians of {rounds} interleaved rounds")
    def progress(message: str) -> None:
        click.echo(f"  {message}", err=True)

    results = run_speed(names, settings, progress=progress)
    if pipeline:
        from segbench.bench.measure.input_pipeline import pipeline_overhead

        for arch, result in results["archs"].items():
            progress(f"{arch}: input pipeline and metrics on {data_source}")
            own = dataclasses.replace(settings, channels_last=result["channels_last"])  # as it was timed
            result["pipeline"] = pipeline_overhead(own, arch=arch, source=data_source)
    click.echo(format_table(results))
    if breakdown:
        from segbench.bench.measure.op_profile import format_breakdown

        for arch, result in results["archs"].items():
            click.echo(format_breakdown(arch, result["breakdown"]))
    if pipeline:
        from segbench.bench.measure.input_pipeline import format_pipeline

        for result in results["archs"].values():
            click.echo(format_pipeline(result["pipeline"]))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))
        click.echo(f"wrote {out}")
