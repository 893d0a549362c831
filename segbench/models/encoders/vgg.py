"""VGG16 and VGG16-BN (Simonyan & Zisserman, ICLR 2015, Table 1 column D: 13 convolutions in five
stages, each closed by a max pooling), in the variants the VGG-based segmentation papers use.

``variant`` selects the paper:

- ``"plain"``: torchvision's trunk. Outputs after each pooling: strides 2..32, channels 64..512.
- ``"fcn"`` (Long et al. CVPR 2015): Caffe's reference FCN trunk. conv1_1 pads 100 pixels so that any input
  leaves at least one 7x7 window for fc6, pooling rounds up (Caffe), and fc6/fc7 become convolutions
  (7x7x4096 and 1x1x4096, ReLU, dropout 0.5). The fifth output is fc7 (4096 channels, stride 32). Because
  of the padding the maps are larger than ``input / stride``: the FCN heads crop them back
  (``segbench.models.architectures.fcn_vgg``).
- ``"atrous"`` (DeepLab, Chen et al. ICLR 2015, Sec. 3.1 and their Caffe net): pool1-3 are 3x3 stride 2
  pad 1, pool4/pool5 3x3 stride 1 pad 1, conv5 dilated by 2; output stride 8. Fifth output: pool5 (512).
- ``"largefov"``: ``"atrous"`` plus DeepLab-LargeFOV's fc6 (3x3, dilation 12, 1024 channels) and fc7
  (1x1, 1024), ReLU and dropout 0.5 after each. The released train.prototxt also average-pools pool5
  (3x3, stride 1, pad 1; "pool5a") before fc6, which we keep. Fifth output: fc7 (1024, stride 8).

In every variant ``self.features`` has exactly torchvision's module indices (conv/ReLU/pool, or
conv/BN/ReLU/pool for ``_bn``), so torchvision's ``vgg16-*.pth`` / ``vgg16_bn-*.pth`` load with
``strict=True``; ``adapt_state_dict`` turns their fully connected layers into fc6/fc7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.blocks import Encoder
from segbench.models.registry import register_encoder

__all__ = ["VGGEncoder", "VARIANTS", "CONVS_PER_STAGE", "vgg16"]

VARIANTS = ("plain", "fcn", "atrous", "largefov")
CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG16, Table 1 column D
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)  # stage widths 64, 128, 256, 512, 512 at base_width 64
# fc6/fc7 width per base_width: FCN keeps VGG's 4096; DeepLab-LargeFOV reduces it to 1024 (Sec. 3.2).
FC_WIDTH_MULTIPLIER = {"fcn": 64, "largefov": 16}
IMAGENET_FC_WIDTH = 4096  # torchvision's classifier.0 / classifier.3


class VGGEncoder(Encoder):
    """VGG16 trunk returning the five stage outputs (see the module docstring for the variants).

    Args:
        in_channels: channels of the input image (the first conv).
        batch_norm: VGG16-BN (a BatchNorm after each conv).
        variant: ``"plain"``, ``"fcn"``, ``"atrous"`` or ``"largefov"``.
        ceil_mode: round pooled sizes up (Caffe) instead of down (torchvision). ``None``: down for
            ``"plain"``, up for the Caffe-derived variants. SegNet's Caffe net also rounds up.
        base_width: width of stage 1 (64 in the paper); the stages are 1, 2, 4, 8, 8 times it. Smaller
            values only make quick tests; ImageNet weights need 64.
        dropout: dropout after fc6 and fc7 (``"fcn"``, ``"largefov"``).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        batch_norm: bool = False,
        variant: str = "plain",
        ceil_mode: bool | None = None,
        base_width: int = 64,
        dropout: float = 0.5,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown VGG variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if in_channels < 1 or base_width < 1:
            raise ValueError(f"in_channels and base_width must be >= 1, got {in_channels} and {base_width}")
        self.variant = variant
        self.in_channels = in_channels
        self.batch_norm = batch_norm
        self.base_width = base_width
        self.stage_widths = tuple(m * base_width for m in WIDTH_MULTIPLIERS)
        self.convs_per_stage = CONVS_PER_STAGE
        self.ceil_mode = variant != "plain" if ceil_mode is None else ceil_mode
        dilated = variant in ("atrous", "largefov")

        layers: list[nn.Module] = []
        channels = in_channels
        for stage, (width, n_convs) in enumerate(zip(self.stage_widths, CONVS_PER_STAGE)):
            dilation = 2 if dilated and stage == 4 else 1  # DeepLab: conv5 atrous, rate 2 (Sec. 3.1)
            for i in range(n_convs):
                padding = 100 if variant == "fcn" and stage == 0 and i == 0 else dilation
                layers.append(nn.Conv2d(channels, width, 3, padding=padding, dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(self._pool(stage, dilated))
        self.features = nn.Sequential(*layers)
        self._pool_positions = tuple(i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d))

        self.fc_width = None
        if variant in FC_WIDTH_MULTIPLIER:
            self.fc_width = FC_WIDTH_MULTIPLIER[variant] * base_width
            if variant == "fcn":
                self.fc6 = nn.Conv2d(channels, self.fc_width, 7)  # pad 0: the reference net's fc6
            else:
                self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
                self.fc6 = nn.Conv2d(channels, self.fc_width, 3, padding=12, dilation=12)
            self.fc7 = nn.Conv2d(self.fc_width, self.fc_width, 1)
            self.drop6 = nn.Dropout(dropout)
            self.drop7 = nn.Dropout(dropout)
            channels = self.fc_width

        self.out_channels: tuple[int, ...] = (*self.stage_widths[:4], channels)
        self.strides: tuple[int, ...] = (2, 4, 8, 8, 8) if dilated else (2, 4, 8, 16, 32)
        self._init_weights()

    def _pool(self, stage: int, dilated: bool) -> nn.MaxPool2d:
        if not dilated:
            return nn.MaxPool2d(2, stride=2, ceil_mode=self.ceil_mode)
        # DeepLab: overlapping 3x3 pooling; pool4 and pool5 keep the resolution (output stride 8).
        return nn.MaxPool2d(3, stride=2 if stage < 3 else 1, padding=1, ceil_mode=self.ceil_mode)

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation; ImageNet weights replace it for the trunk.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _fully_connected(self, x: Tensor) -> Tensor:
        if self.variant == "largefov":
            x = self.pool5a(x)
        x = self.drop6(F.relu(self.fc6(x)))
        return self.drop7(F.relu(self.fc7(x)))

    def _run(self, x: Tensor, with_indices: bool) -> tuple[list[Tensor], list[Tensor], list[torch.Size]]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        outputs, indices, sizes = [], [], []
        for position, layer in enumerate(self.features):
            if position in self._pool_positions:
                sizes.append(x.shape[-2:])
                if with_indices:
                    x, idx = F.max_pool2d(
                        x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                        ceil_mode=layer.ceil_mode, return_indices=True,
                    )
                    indices.append(idx)
                else:
                    x = layer(x)
                outputs.append(x)
            else:
                x = layer(x)
        if self.fc_width is not None:
            outputs[-1] = self._fully_connected(outputs[-1])
        return outputs, indices, sizes

    def forward(self, x: Tensor) -> list[Tensor]:
        return self._run(x, with_indices=False)[0]

    def forward_with_indices(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[torch.Size]]:
        """The stage outputs, plus for each of the five max poolings the argmax indices and the size of
        its input: what SegNet's decoder needs to unpool (Badrinarayanan et al. 2017, Sec. 3)."""
        return self._run(x, with_indices=True)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Adapt a torchvision-keyed VGG16 checkpoint to this encoder.

        - ``"fcn"``: ``classifier.0`` (4096 x 25088, i.e. 4096 x 512 x 7 x 7 flattened) becomes fc6 and
          ``classifier.3`` fc7, as FCN's "convolutionalization" (Sec. 3.1).
        - ``"largefov"``: the same layers decimated as DeepLab Sec. 3.2 describes: fc6 subsampled
          spatially by 3 (7x7 -> 3x3, matching dilation 12 = 4 x 3) and both layers to every 4th
          channel (4096 -> 1024; the paper does not say which channels, we take every 4th).
        - ``classifier.6`` (the 1000 ImageNet classes) is dropped.
        - A first conv for ``in_channels != 3`` is derived from the RGB filters: every channel gets the
          filter's grey response (sum over RGB) divided by ``in_channels``.
        - BatchNorm ``num_batches_tracked`` counters, absent from torchvision's older files, are set to 0.
        """
        state = dict(state)
        for key in ("classifier.6.weight", "classifier.6.bias"):
            state.pop(key, None)
        if self.fc_width is not None and "fc6.weight" not in state and "classifier.0.weight" in state:
            state.update(self._convolutionalize(state))
        first = "features.0.weight"
        if first in state and state[first].shape[1] == 3 and self.in_channels != 3:
            state[first] = _adapt_input_conv(state[first], self.in_channels)
        for key, tensor in self.state_dict().items():
            if key.endswith("num_batches_tracked") and key not in state:
                if key.replace("num_batches_tracked", "running_mean") in state:
                    state[key] = torch.zeros_like(tensor, device="cpu")
        return state

    def _convolutionalize(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        fc6_w = state.pop("classifier.0.weight")
        fc6_b = state.pop("classifier.0.bias")
        fc7_w = state.pop("classifier.3.weight")
        fc7_b = state.pop("classifier.3.bias")
        pool5_channels = self.stage_widths[-1]
        if fc6_w.shape[1] != pool5_channels * 49:
            raise ValueError(
                f"classifier.0.weight has shape {tuple(fc6_w.shape)}; expected (*, {pool5_channels * 49}) "
                "(VGG's first fully connected layer on a 7x7 pool5)"
            )
        fc6_w = fc6_w.reshape(-1, pool5_channels, 7, 7)
        fc7_w = fc7_w.reshape(*fc7_w.shape, 1, 1)
        if self.variant == "largefov":
            step = fc6_w.shape[0] // self.fc_width
            if step * self.fc_width != fc6_w.shape[0]:
                raise ValueError(f"cannot decimate {fc6_w.shape[0]} fc channels to {self.fc_width}")
            fc6_w, fc6_b = fc6_w[::step, :, ::3, ::3], fc6_b[::step]
            fc7_w, fc7_b = fc7_w[::step, ::step], fc7_b[::step]
        return {
            "fc6.weight": fc6_w.contiguous(),
            "fc6.bias": fc6_b.contiguous(),
            "fc7.weight": fc7_w.contiguous(),
            "fc7.bias": fc7_b.contiguous(),
        }


def _adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    # Non-RGB channels have no colour to match, so each gets the filter's response to grey (the sum over
    # RGB) shared among the channels: a grey image copied to every channel gives the RGB net's response.
    grey = weight.sum(dim=1, keepdim=True) / in_channels
    return grey.expand(-1, in_channels, -1, -1).contiguous()


@register_encoder("vgg16_bn", kind="vgg", batch_norm=True)
@register_encoder("vgg16", kind="vgg", batch_norm=False)
def vgg16(
    *,
    batch_norm: bool = False,
    in_channels: int = 3,
    variant: str = "plain",
    ceil_mode: bool | None = None,
    base_width: int = 64,
    dropout: float = 0.5,
) -> VGGEncoder:
    """VGG16 (``vgg16``) or VGG16-BN (``vgg16_bn``); see ``VGGEncoder`` for the options."""
    return VGGEncoder(
        in_channels=in_channels,
        batch_norm=batch_norm,
        variant=variant,
        ceil_mode=ceil_mode,
        base_width=base_width,
        dropout=dropout,
    )
