"""Faster CPU inference: convolutions keep their weights in oneDNN's blocked layout instead of converting every call.

torch's CPU convolution hands oneDNN plain NCHW weights, and oneDNN reorders them into its blocked
layout on every call: work proportional to the weights, repeated at every denoising step. In the
UNet's low-resolution levels (1280 channels at 8x8 for 512 px) that reorder costs about as much as
the convolution itself, so a model with more weights per MAC (the teacher, BK-SDM base) loses
more than its MACs say. `prepack_convs` converts each weight once (per weight version and input
shape) and reuses it, the way torch's own compiler does when it freezes a model.

It applies only where it cannot change results: CPU, float32, grad disabled (training is
untouched); a weight changed in place, even through `.data` (as LoRA merges do), is noticed
and converted again.
"""

from __future__ import annotations

import weakref

import torch

PROBES = 64  # weight elements compared on each call to notice in-place edits that bypass version counters
_cache: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()  # conv -> (key, probe, packed)


def available() -> bool:
    """Whether this torch build has oneDNN's prepacked convolution (CPU builds since torch 2.0)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def _probe(weight: torch.Tensor) -> torch.Tensor:
    """A fixed sample of the weight's elements: a cheap fingerprint of its values."""
    flat = weight.detach().reshape(-1)
    return flat[torch.arange(PROBES) * (flat.numel() - 1) // (PROBES - 1)].clone()  # integer steps: exact ends


class PackedConv2d(torch.nn.Conv2d):
    """A `Conv2d` whose CPU inference calls reuse a prepacked copy of its weight (same parameters, same state dict)."""

    def _usable(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether the prepacked path computes exactly this call: CPU float32 inference with our own weight."""
        return (not torch.is_grad_enabled() and weight is self.weight and x.device.type == "cpu" and x.dim() == 4
                and x.dtype == weight.dtype == torch.float32 and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple))

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's layout for this input shape, converted again whenever the weight changed."""
        w = self.weight
        key = (w.data_ptr(), w._version, tuple(x.shape))
        probe = _probe(w)
        hit = _cache.get(self)
        if hit is not None and hit[0] == key and torch.equal(hit[1], probe):
            return hit[2]
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.detach().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape))
        _cache[self] = (key, probe, packed)
        return packed

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._usable(x, weight):
            return super()._conv_forward(x, weight, bias)
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed(x), bias, list(self.padding), list(self.stride),
                                                       list(self.dilation), self.groups, "none", [], "")


def prepack_convs(module: torch.nn.Module) -> int:
    """Make every plain `Conv2d` in `module` a `PackedConv2d` (in place); returns how many. No-op without oneDNN."""
    if not available():
        return 0
    convs = [m for m in module.modules() if type(m) is torch.nn.Conv2d]
    for m in convs:
        m.__class__ = PackedConv2d
    return len(convs)
