"""Make an LDM-style UNet (A1111's `ldm`, Forge's and ComfyUI's copies) match a pruned checkpoint it was built for.

A1111 and Forge build the full middle block whatever the file holds; an sdkd student without one must
run with that block removed. The fix uses the host's own `TimestepEmbedSequential` type (taken from
the model itself), so no host code is imported.
"""

from __future__ import annotations

import json

import torch


def student_has_no_middle_block(metadata: dict | None) -> bool:
    """True when safetensors metadata says this is an sdkd student without a middle block."""
    topo = (metadata or {}).get("sdkd_topology")
    if not topo:
        return False
    try:
        return json.loads(topo).get("mid_block") is False
    except (ValueError, AttributeError):
        return False


def remove_middle_block(unet: torch.nn.Module) -> bool:
    """Replace `unet.middle_block` with an empty block of the host's own type (identity); True if changed."""
    empty_type = type(unet.input_blocks[0])  # TimestepEmbedSequential in every LDM-derived codebase
    if len(unet.middle_block) == 0:
        return False
    unet.middle_block = empty_type()  # keep a module there: lowvram hooks look it up
    return True
