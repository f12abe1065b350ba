"""The one place that absorbs differences between the two dependency sets (A1111's pins and the latest releases)."""

from __future__ import annotations

import torch


def clip_prefix(model: torch.nn.Module) -> str:
    """Prefix of a CLIPTextModel's own state-dict keys: 'text_model.' up to transformers 4.x, '' from 5.x."""
    return "text_model." if hasattr(model, "text_model") else ""
