"""The `Source` protocol: lazily readable named tensors (a model file, a renamed or chained view of one)."""

from __future__ import annotations

from typing import Protocol

import torch


class Source(Protocol):
    """Lazily readable named tensors."""

    metadata: dict[str, str]

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> torch.dtype: ...
    def get(self, key: str) -> torch.Tensor: ...
