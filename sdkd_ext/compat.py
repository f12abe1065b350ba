"""The one place that absorbs differences between the two dependency sets (A1111's pins and the latest releases)."""

from __future__ import annotations

import torch


def clip_prefix(model: torch.nn.Module) -> str:
    """Prefix of a CLIPTextModel's own state-dict keys: 'text_model.' up to transformers 4.x, '' from 5.x."""
    return "text_model." if hasattr(model, "text_model") else ""


def grad_scaler() -> object:
    """A CUDA gradient scaler for fp16 training: `torch.amp.GradScaler` from torch 2.3, `torch.cuda.amp`'s before
    (A1111 1.10 ships torch 2.1)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()
