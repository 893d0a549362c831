"""Sweep profiles: one protocol (input size, iteration budget, batch, validation schedule) shared by
every architecture, plus a small per-architecture table of model options (which backbone, how wide).

Everything a profile sets is printed in the report. A profile is one flat table, never a chain of
inherited presets: to see what ``quick`` trains, read ``QUICK`` below.

- ``quick``: a laptop CPU. Slim backbones (ResNet-18, MiT-B0, a 2-2-2-2 Swin at half width, VGG16 and
  U-Net at base width 16) on 96x96 inputs, CE+Dice (the same loss for all; Dice keeps the thin CSF class
  from drowning in background in so short a run), the same 60 s of training steps for every architecture
  (``time:60``) at the rate its own 60-step range test picks (``find``: the published recipes' rates were
  written for ImageNet-pretrained backbones and long schedules, not 60 s from scratch), sized so all ten
  architectures train, validate and get measured in about 15 minutes on 2 idle cores. Its numbers rank
  the *designs at small scale*; they are not the papers' numbers.
- ``standard``: the papers' canonical backbones (VGG-16, ResNet-101, MiT-B2, Swin-T, U-Net width 64)
  at a moderate 256x256 resolution and a 20k-iteration schedule: one GPU, hours.
- ``paper``: the papers' backbones and output strides at 512x512 crops (sliding-window evaluation on
  larger images), batch 16, 80k iterations: a multi-hour GPU run per architecture.

Every profile trains every architecture from scratch by default (the report says so next to the
numbers); the papers all start from ImageNet weights, which ``--pretrained imagenet`` does wherever the
encoder's published weights fit the profile's backbone (``standard`` and ``paper``: all but U-Net, which
has no pretrained encoder; ``quick``: the ResNet-18 and MiT-B0 architectures only, its width-16 VGG and
slim Swin have no published weights), and ``--pretrained both`` runs each of those both ways.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Profile", "PROFILES", "REVIEW_ARCHS", "get_profile", "with_available_crf"]

# The ten architectures of the review, in the order of the report (by year).
REVIEW_ARCHS: tuple[str, ...] = (
    "fcn8s",
    "unet",
    "segnet",
    "deeplabv1",
    "pspnet",
    "deeplabv2",
    "deeplabv3",
    "deeplabv3plus",
    "segformer",
    "upernet",
)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # Network input (H, W). With ``resize_inputs`` every image is resized to it (train, val and test
    # alike); otherwise images keep their size, training uses random crops of it, and evaluation
    # slides a window of it over larger images.
    input_size: tuple[int, int]
    resize_inputs: bool
    iterations: int
    batch_size: int
    # Validations during training (the last one is at the final iteration).
    validations: int
    seeds: int
    # Model options per architecture: the only per-architecture differences in the protocol.
    arch_options: dict[str, dict[str, Any]]
    # Latency (segbench.bench.measure.timing): timed rounds of a batch-1 pass after a warm-up of at most
    # timing_max_warmup rounds that waits for stable times.
    timing_rounds: int = 20
    timing_max_warmup: int = 10
    # The engine the table's deployment latency is timed in besides PyTorch: "onnx" adds each architecture's
    # export run by ONNX Runtime on the CPU (``onnx_latency_ms``), which `--latency-budget` then reads
    # (``segbench run --latency-engine onnx``).
    latency_engine: str = "torch"
    # The Speed section's timed rounds (training step and inference at the training batch, interleaved
    # with the peer and a matmul); the table's throughput is its inference figure.
    speed_rounds: int = 7
    # A time budget's plan times its steps (interleaved) for at least speed_rounds rounds and at least this
    # long: on a shared machine two designs' step-time ratio drifts by a few percent from minute to minute
    # (docs/budget.md), and a longer stretch averages it.
    plan_seconds: float = 30.0
    # Validation images shown per architecture in the report's prediction grid.
    preview_images: int = 4
    # How long each run trains (``segbench run --budget``): "iterations" (``iterations`` steps),
    # "time:SECONDS" or "auto" (stop on a validation plateau); the latter two may take up to 4x the steps.
    budget: str = "iterations"
    # Learning rate (``segbench run --lr``): "paper" (each recipe's) or "find" (a range test per run).
    lr: str = "paper"
    # Extra configuration overrides (``key=value``) applied to every run, shown in the report.
    overrides: tuple[str, ...] = field(default_factory=tuple)
    # GPU memory one training process needs for the heaviest architectures (the dilated ResNet-101
    # heads), so a run can be placed before it starts. An estimate, scaled from MMSegmentation's model
    # zoo (PSPNet R101-D8, 4 images of 512x512 per GPU in fp32: about 12 GB); not measured on a GPU here.
    expected_gpu_memory: str = "n/a (CPU profile)"
    # After the sweep, ensembles and flip TTA from the trained runs (``segbench run --ensembles``): on in every
    # profile (measured on the built-in data, 2 CPU cores: 12 candidates evaluated and timed in 67 s, the quick
    # review from 16.5 to about 17.6 minutes, docs/ensembles.md).
    ensembles: bool = True
    # The field's baseline as a row (``segbench run --anchor``, segbench.bench.protocol.anchor): "" none,
    # "nnunet" (the review's budget), "nnunet,nnunet-default" (and nnU-Net's own schedule). A profile's anchor
    # runs where nnU-Net is installed; elsewhere one line says how to install it.
    anchor: str = ""

    def settings(self) -> dict[str, Any]:
        """The protocol as printed in the report (the per-architecture table is printed separately)."""
        return {
            "input_size": f"{self.input_size[0]}x{self.input_size[1]}",
            "inputs": "every image resized to input_size" if self.resize_inputs
            else "native size; random crops of input_size for training, sliding window for evaluation",
            "iterations": self.iterations,
            "budget": self.budget,
            "learning_rate": self.lr,
            "batch_size": self.batch_size,
            "validations": self.validations,
            "seeds": self.seeds,
            "latency": f"median (and IQR) of {self.timing_rounds} batch-1 passes after a warm-up until stable "
                       f"(at most {self.timing_max_warmup})",
            "throughput": f"the Speed section's inference at the training batch ({self.batch_size}), median of "
                          f"{self.speed_rounds} rounds",
            "profile_overrides": list(self.overrides) or "none",
            "expected_gpu_memory": self.expected_gpu_memory,
        }


# Slim variants for a 2-core laptop. VGG16 and U-Net at a quarter of their width (stages 16..128/256
# channels; FCN-8s keeps its 100-pixel conv1 padding, which makes it the slowest here); ResNet-18
# (basic blocks, so DeepLab v3's multi-grid has two rates) under every dilated head at the papers'
# output strides; MiT-B0; Swin at half width with two blocks per stage and a 128-channel UPerNet head.
QUICK = Profile(
    name="quick",
    description="Laptop CPU: slim backbones, 96x96 inputs, CE+Dice loss, from scratch; every architecture gets the "
    "same 60 s of training steps (matched compute) at the learning rate its own range test picks. About 15 minutes "
    "for all ten on 2 idle cores; ranks the designs at small scale and this budget, not the papers' numbers.",
    input_size=(96, 96),
    resize_inputs=True,
    iterations=250,
    batch_size=8,
    validations=4,
    seeds=1,
    arch_options={
        "fcn8s": {"encoder": "vgg16", "base_width": 16},
        "unet": {"base_width": 16},
        "segnet": {"encoder": "vgg16_bn", "base_width": 16},
        "deeplabv1": {"encoder": "vgg16", "base_width": 16},
        "pspnet": {"encoder": "resnet18", "output_stride": 8},
        "deeplabv2": {"encoder": "resnet18", "output_stride": 8},
        "deeplabv3": {"encoder": "resnet18", "output_stride": 16, "multi_grid": [1, 2]},
        "deeplabv3plus": {"encoder": "resnet18", "output_stride": 16, "multi_grid": [1, 2]},
        "segformer": {"encoder": "mit_b0"},
        "upernet": {"encoder": "swin_t", "embed_dim": 48, "depths": [2, 2, 2, 2], "channels": 128, "aux_channels": 64},
    },
    overrides=("train.loss=ce+dice", "train.lr_find_steps=60"),
    budget="time:60",
    lr="find",
)

STANDARD = Profile(
    name="standard",
    anchor="nnunet",
    description="The papers' canonical backbones at a moderate 256x256 resolution and a 20k-iteration "
    "schedule: one GPU, hours.",
    expected_gpu_memory="about 4 GB in bf16/fp16, 7 GB in fp32 (ResNet-101 at output stride 8, 256x256, batch 8; "
    "estimated): a 16 GB GPU",
    input_size=(256, 256),
    resize_inputs=True,
    iterations=20_000,
    batch_size=8,
    validations=10,
    seeds=1,
    arch_options={
        "fcn8s": {"encoder": "vgg16"},
        "unet": {"base_width": 64},
        "segnet": {"encoder": "vgg16_bn"},
        "deeplabv1": {"encoder": "vgg16"},
        "pspnet": {"encoder": "resnet101", "output_stride": 8},
        "deeplabv2": {"encoder": "resnet101", "output_stride": 8},
        "deeplabv3": {"encoder": "resnet101", "output_stride": 16},
        "deeplabv3plus": {"encoder": "resnet101", "output_stride": 16},
        # MiT-B2's encoder (25M) is the size class of Swin-T's (28M) in the UPerNet row.
        "segformer": {"encoder": "mit_b2"},
        "upernet": {"encoder": "swin_t"},
    },
)

PAPER = Profile(
    name="paper",
    anchor="nnunet,nnunet-default",
    description="The papers' backbones and output strides, 512x512 crops, batch 16, 80k iterations "
    "(MMSegmentation's long schedule): GPUs, many hours per architecture.",
    expected_gpu_memory="about 30 GB in bf16/fp16, 50 GB in fp32, on one GPU (ResNet-101 at output stride 8, "
    "512x512 crops, batch 16; estimated): a 40/80 GB GPU, or torchrun over 2-4 GPUs (they split the batch), "
    "else a lower train.batch_size",
    input_size=(512, 512),
    resize_inputs=False,
    iterations=80_000,
    batch_size=16,
    validations=10,
    seeds=1,
    arch_options={
        "fcn8s": {"encoder": "vgg16"},
        "unet": {"base_width": 64},
        "segnet": {"encoder": "vgg16_bn"},
        # DeepLab v1/v2 post-process with the papers' fully connected CRF (eval only; dense_crf.py), or,
        # without pydensecrf2, its local-window approximation ConvCRF (``with_available_crf``).
        "deeplabv1": {"encoder": "vgg16", "crf": "dense"},
        "pspnet": {"encoder": "resnet101", "output_stride": 8},
        "deeplabv2": {"encoder": "resnet101", "output_stride": 8, "crf": "dense"},
        "deeplabv3": {"encoder": "resnet101", "output_stride": 8},
        "deeplabv3plus": {"encoder": "resnet101", "output_stride": 16},
        "segformer": {"encoder": "mit_b2"},
        "upernet": {"encoder": "swin_t"},
    },
)

PROFILES: dict[str, Profile] = {p.name: p for p in (QUICK, STANDARD, PAPER)}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[name]


def with_available_crf(profile: Profile, installed: bool | None = None) -> tuple[Profile, list[str]]:
    """``profile`` with every ``crf: dense`` it asks for replaced by ``crf: conv`` where pydensecrf2 is not
    ``installed`` (default: whether it is here), and one line per replacement saying so (the report's
    rows then name the CRF that ran)."""
    if installed is None:
        from segbench.models.architectures.dense_crf import dense_crf_available  # torch: only when planning

        installed = dense_crf_available()
    if installed:
        return profile, []
    options, notes = {}, []
    for arch, values in profile.arch_options.items():
        if values.get("crf") == "dense":
            values = {**values, "crf": "conv"}
            notes.append(f"{arch}: crf conv (ConvCRF, the local-window approximation) instead of the paper's dense "
                         "CRF: pydensecrf2 is not installed (pip install 'segbench[crf]')")
        options[arch] = values
    return dataclasses.replace(profile, arch_options=options), notes
