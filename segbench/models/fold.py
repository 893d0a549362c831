"""Inference-time BatchNorm folding: a BatchNorm in eval mode is an affine map per channel, so when it
reads a convolution's output and nothing else reads that output, the pair is one convolution with
scaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). The network computes the
same function, up to float rounding, with one pass over the activations fewer per pair.

Which BatchNorms qualify is read off one probe forward pass rather than off module names, so it holds
for every architecture without a list per block. A (conv, BN) pair is folded when, in that pass:

- the BN's input is the tensor the conv returned, with no operation in between (compared by autograd
  node, so an in-place ReLU on the conv's output, which keeps the tensor object, does not pass);
- nothing else reads the conv's output (its autograd node has exactly one consumer and is not a
  model output);
- each of the two modules ran exactly once and is registered under one name (a shared module would be
  folded for one use and wrong for the other);
- the BN keeps running statistics.

The folded copy's output is then compared with the original's on the probe, relative to the
output's scale; should it differ (some use of a module this reading cannot see), the unfolded copy
is returned with the reason. The model passed in is never changed.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["Folded", "fold_batchnorm", "output_tensors", "FOLD_RTOL"]

# Folded and unfolded outputs agree to float rounding: ~1e-6 of the output's scale in fp32 through a
# ResNet-50 (measured 3e-6); a missed second reader of a folded conv changes the output by O(1).
FOLD_RTOL = 1e-3


@dataclass
class Folded:
    """An eval-mode copy of a model with BatchNorms folded into the convolutions before them."""

    model: nn.Module
    folded: int  # BatchNorms folded away
    ran: int  # BatchNorms the eval-mode forward runs
    batchnorms: int  # BatchNorm modules the model has (an auxiliary head's run only in training)
    reason: str = ""  # why nothing was folded despite qualifying pairs ('' when the fold held)

    def describe(self) -> str:
        if self.reason:
            return f"BatchNorm not folded: {self.reason}"
        idle = self.batchnorms - self.ran
        return (f"{self.folded} of the {self.ran} BatchNorms inference runs folded into their convolutions"
                + (f" ({idle} more run only in training)" if idle else ""))


def output_tensors(output: object) -> list[Tensor]:
    """The tensors of a model's output: a tensor, or a dict, list or tuple of them (nested)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in output_tensors(item)]
    return []


def _consumers(roots: list[Tensor]) -> Counter:
    """For every autograd node reachable from ``roots``: how many edges lead into it (a model output
    counts as one)."""
    count: Counter = Counter()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    count.update(stack)
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                count[child] += 1
                stack.append(child)
    return count


def _foldable_pairs(model: nn.Module, example: Tensor) -> tuple[list[tuple[str, str]], int, list[Tensor]]:
    """The (conv name, BN name) pairs that qualify (see the module docstring), how many BatchNorms ran,
    and the probe's outputs."""
    names: dict[nn.Module, list[str]] = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        names[module].append(name)
    calls: Counter = Counter()
    conv_out: dict[str, object] = {}  # conv name -> autograd node of its output
    bn_in: dict[str, object] = {}  # BN name -> autograd node of its input

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            calls[name] += 1
            if isinstance(module, nn.Conv2d) and isinstance(output, Tensor):
                conv_out[name] = output.grad_fn
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and args and isinstance(args[0], Tensor):
                bn_in[name] = args[0].grad_fn
        return record

    handles = [module.register_forward_hook(hook(found[0])) for module, found in names.items()
               if len(found) == 1 and isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))]
    try:
        with torch.enable_grad():
            outputs = output_tensors(model(example.detach().clone().requires_grad_(True)))
    finally:
        for handle in handles:
            handle.remove()
    consumers = _consumers(outputs)
    by_node = {node: name for name, node in conv_out.items() if node is not None and calls[name] == 1}
    modules = dict(model.named_modules())
    pairs = []
    for bn_name, node in bn_in.items():
        conv_name = by_node.get(node)
        bn = modules[bn_name]
        if (conv_name is not None and calls[bn_name] == 1 and consumers[node] == 1 and bn.running_mean is not None
                and modules[conv_name].out_channels == bn.num_features):
            pairs.append((conv_name, bn_name))
    ran = sum(isinstance(modules[name], nn.modules.batchnorm._BatchNorm) for name in calls)
    return pairs, ran, [t.detach() for t in outputs]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fold_batchnorm(model: nn.Module, example: Tensor) -> Folded:
    """An eval-mode copy of ``model`` with every qualifying BatchNorm folded into its convolution,
    read off and checked on ``example`` (a batch the model takes, on its device, in its dtype).
    ``model`` itself is left as it was (every module's train/eval mode included)."""
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    folded = copy.deepcopy(model).eval()  # read off the copy: the model keeps its modes and has no hooks
    pairs, ran, reference = _foldable_pairs(folded, example)
    if not pairs:
        return Folded(folded, 0, ran, batchnorms)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        _replace(folded, conv_name, fuse_conv_bn_eval(modules[conv_name], modules[bn_name]))
        _replace(folded, bn_name, nn.Identity())
    with torch.no_grad():
        outputs = output_tensors(folded(example))
    for ours, theirs in zip(outputs, reference):
        scale = theirs.abs().max().item()
        off = (ours - theirs).abs().max().item()
        if ours.shape != theirs.shape or not off <= FOLD_RTOL * max(scale, 1e-12):
            return Folded(copy.deepcopy(model).eval(), 0, ran, batchnorms,
                          reason=f"the folded model's output is {off:.3g} off at scale {scale:.3g} on the probe")
    return Folded(folded, len(pairs), ran, batchnorms)
