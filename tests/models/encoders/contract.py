"""The encoder contract every family's tests check: ``forward`` returns one map per declared stage, with the
channels ``out_channels`` declares and the size its ``strides`` imply (``ceil(input / stride)``)."""

import math

import torch


def outputs_as_declared(encoder, size: tuple[int, int] = (65, 97)) -> list[torch.Tensor]:
    """``encoder``'s outputs on an odd-sized input (every stride-2 layer rounds up), each checked against the
    declared channels and stride; returned for the family's own checks."""
    with torch.no_grad():
        outputs = encoder.eval()(torch.randn(1, 3, *size))
    assert len(outputs) == len(encoder.strides) == len(encoder.out_channels)
    for out, stride, channels in zip(outputs, encoder.strides, encoder.out_channels):
        assert out.shape[1] == channels
        assert tuple(out.shape[-2:]) == tuple(math.ceil(s / stride) for s in size)
    return outputs
