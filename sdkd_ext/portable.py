"""A 'portable' student: a small/tiny file with an identity middle ResBlock, so hosts that build one load it whole.

Forge (huggingface_guess) and ComfyUI build a ResBlock-only middle block when the file has `middle_block.0` and no
`middle_block.1`; Forge builds one even when the file has none and then cannot fill it. A ResBlock whose last conv
(`out_layers.3`) is zero returns its input unchanged, so writing such a block makes every host load every weight
and compute exactly the student; sdkd and its load hook recognise the block (those keys only, a zero last conv) and
drop it again. It costs one ResBlock at the deepest width (~31M parameters, 62 MB in fp16, at SD1.5 size).
"""

from __future__ import annotations

import math

from .convert import UNET
from .errors import SdkdError
from .variants import Topology
from .source import Source

MIDDLE = UNET + "middle_block."
IDENTITY = MIDDLE + "0."
LAST_CONV = IDENTITY + "out_layers.3."

# LDM ResBlock parts: (name, shape from (width, time-embedding width), fill)
_PARTS = (
    ("in_layers.0.weight", lambda w, e: (w,), 1.0), ("in_layers.0.bias", lambda w, e: (w,), 0.0),
    ("in_layers.2.weight", lambda w, e: (w, w, 3, 3), 0.0), ("in_layers.2.bias", lambda w, e: (w,), 0.0),
    ("emb_layers.1.weight", lambda w, e: (w, e), 0.0), ("emb_layers.1.bias", lambda w, e: (w,), 0.0),
    ("out_layers.0.weight", lambda w, e: (w,), 1.0), ("out_layers.0.bias", lambda w, e: (w,), 0.0),
    ("out_layers.3.weight", lambda w, e: (w, w, 3, 3), 0.0), ("out_layers.3.bias", lambda w, e: (w,), 0.0),
)


def identity_middle(t: Topology) -> dict[str, tuple[tuple[int, ...], float]]:
    """LDM key -> (shape, fill) of an identity middle ResBlock for topology `t` (norms one, everything else zero)."""
    width, emb = t.widths()[-1], 4 * t.model_channels  # ldm's time embedding is 4x the base width
    return {IDENTITY + name: (shape(width, emb), fill) for name, shape, fill in _PARTS}


def refuse_middle_block(t: Topology, variant: str) -> None:
    """Refuse `--portable` for a model that has a middle block of its own (base, a teacher): nothing to stand in for."""
    if t.mid_block:
        raise SdkdError(f"--portable is for students without a middle block (small, tiny); a {variant} model has one "
                        "and loads in every host as it is: drop --portable")


def identity_params(t: Topology) -> int:
    """Parameters the identity middle block adds to a file of topology `t`."""
    return sum(math.prod(shape) for shape, _ in identity_middle(t).values())


def has_identity_middle(src: Source) -> bool:
    """True when the source's middle block is one ResBlock (`middle_block.0` only) whose last conv is all zero."""
    middle = [k for k in src.keys() if k.startswith(MIDDLE)]
    if not middle or any(not k.startswith(IDENTITY) for k in middle):
        return False
    last = (LAST_CONV + "weight", LAST_CONV + "bias")
    return all(k in middle for k in last) and all(not src.get(k).any() for k in last)


def add_portable_option(parser) -> None:
    """The CLI flag that writes a portable student (prune, distill)."""
    parser.add_argument("--portable", action="store_true",
                        help="small/tiny: also write an identity middle block (~31M parameters, 62 MB in fp16, at "
                             "SD1.5 size) so Forge and A1111 without the sdkd extension load every weight and render "
                             "the student exactly; with the extension it is removed on load and costs nothing")
