"""Make an LDM-style UNet (A1111's `ldm`, Forge's copy) match a checkpoint that has no middle block.

A1111 builds the full middle block from the yaml whatever the file holds (and fills the missing
weights with zeros); Forge builds one ResBlock there and leaves it without weights. A student
without a middle block must run with that block removed. Whether the file has one is read off the
file's own key names (the safetensors header; a `.ckpt` through the weights-only loader), not its
metadata: it holds for any such file, sdkd's or not, and needs nothing a host may have decoded.
The fix uses the host's own `TimestepEmbedSequential` type (taken from the model itself), so no
host code is imported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..checkpoint import open_file
from ..convert import UNET
from ..errors import SdkdError
from ..portable import MIDDLE, has_identity_middle


def file_lacks_middle_block(path: str | Path | None) -> bool:
    """True when the checkpoint file has UNet weights but none for a middle block (BK-SDM small/tiny and the like),
    or only a portable student's identity one (`sdkd_ext.portable`: read off its keys and its one zero conv).

    Runs at every model load, so it reads key names (and only a ResBlock-only middle block's last conv): a safetensors
    header, or a zip-format `.ckpt` memory-mapped; a legacy (non-zip) pickle would have to be read whole, and no sdkd
    student is one."""
    if not path or not Path(path).is_file():
        return False
    if Path(path).suffix != ".safetensors" and not zipfile.is_zipfile(path):
        return False
    try:
        src = open_file(Path(path))
        keys = src.keys()
    except SdkdError:  # not a file sdkd can list: the host loaded it its own way, leave its model alone
        return False
    if not any(k.startswith(UNET) for k in keys):
        return False
    return not any(k.startswith(MIDDLE) for k in keys) or has_identity_middle(src)


def remove_middle_block(unet: torch.nn.Module) -> bool:
    """Replace `unet.middle_block` with an empty block of the host's own type (identity) and free the old block's
    memory; True if changed."""
    empty_type = type(unet.input_blocks[0])  # TimestepEmbedSequential in every LDM-derived codebase
    old = unet.middle_block
    if len(old) == 0:
        return False
    unet.middle_block = empty_type()  # keep a module there: lowvram hooks look it up
    old.to("meta")  # the host keeps references to the old modules (A1111's hijack lists every layer): drop the weights
    return True
