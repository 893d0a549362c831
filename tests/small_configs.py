"""Small options per architecture for wiring tests (shapes, gradients, export): the same code paths as the
paper configurations with fewer channels or a smaller backbone. An architecture missing here is tested
in its default configuration."""

SMALL_OPTIONS: dict[str, dict] = {
    "unet": {"base_width": 8},
    "segformer": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "decoder_dim": 16, "drop_path_rate": 0.0},
    # VGG nets: stage widths 4..32. FCN's zero-initialised score layers (the paper's) would give the trunk
    # no gradient on the first step, which the every-parameter-gets-a-gradient test would flag.
    "fcn32s": {"base_width": 4, "zero_init_scores": False},
    "fcn16s": {"base_width": 4, "zero_init_scores": False},
    "fcn8s": {"base_width": 4, "zero_init_scores": False},
    "segnet": {"base_width": 4},
    "deeplabv1": {"base_width": 4},
    # ResNet-18 instead of ResNet-50/101: the same dilated trunk and heads, a fraction of the compute.
    "fcn": {"encoder": "resnet18"},
    "pspnet": {"encoder": "resnet18"},
    "deeplabv2": {"encoder": "resnet18"},
    "deeplabv3": {"encoder": "resnet18"},
    "deeplabv3plus": {"encoder": "resnet18"},
    "lraspp": {"encoder": "mobilenet_v3_small"},  # the same head on the smaller MobileNetV3
    # Slim Swin-T + narrow UPerNet head; no stochastic depth, which drops whole residual branches (and so
    # their gradient) at random in training.
    "upernet": {"embed_dim": 8, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "channels": 16, "aux_channels": 8,
                "drop_path_rate": 0.0},
}


def small_options(arch: str) -> dict:
    return dict(SMALL_OPTIONS.get(arch, {}))
