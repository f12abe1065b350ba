"""Apply LoRAs to a loaded diffusers pipeline by merging their weight updates (what `sdkd generate --lora` does)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..compat import clip_prefix
from ..convert import UNET
from ..errors import SdkdError
from .file import Lora, read_lora
from .names import TE_ROOT, Layout, kohya_name, layout_of_pipeline


def parse_spec(spec: str) -> tuple[Path, float]:
    """`FILE:WEIGHT` (or just `FILE`, weight 1) as given to `--lora`."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            return Path(path), float(tail)
        except ValueError:
            pass  # a colon inside the path (e.g. a Windows drive), no weight
    return Path(spec), 1.0


def pipeline_module(pipe, layout: Layout, module_id: str) -> torch.nn.Module:
    """The pipeline's own layer for a LoRA module id (UNet in diffusers names, text encoder in any transformers)."""
    if module_id.startswith(UNET):
        return pipe.unet.get_submodule(layout.diffusers_name(module_id))
    te = pipe.text_encoder
    return te.get_submodule(clip_prefix(te) + layout.diffusers_name(module_id)[len(TE_ROOT):])


def apply_lora(pipe, lora: str | Path | Lora, weight: float = 1.0, alpha_equals_rank: bool = False) -> int:
    """Merge `weight` x a LoRA (file or resolved `Lora`) into the pipeline's UNet and text encoder; returns modules changed.

    The whole LoRA is checked first (names, shapes, variant, kind), so a LoRA that does not fit
    changes nothing. A file is resolved against this pipeline's own topology."""
    layout = layout_of_pipeline(pipe)
    if not isinstance(lora, Lora):
        lora = read_lora(lora, layout, alpha_equals_rank)
    unsupported = [m for m, mod in lora.modules.items() if not mod.is_lora]
    if unsupported:
        raise SdkdError(f"{kohya_name(unsupported[0])}: sdkd previews plain LoRA/LoCon modules only; this one is "
                        f"{'/'.join(sorted(lora.modules[unsupported[0]].tensors))} (LyCORIS kinds load in A1111, Forge and ComfyUI)")
    with torch.no_grad():
        for module_id, mod in lora.modules.items():
            w = pipeline_module(pipe, layout, module_id).weight
            w += (weight * mod.delta(tuple(w.shape))).to(w.device, w.dtype)
    return len(lora.modules)
