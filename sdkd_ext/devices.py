"""The device a job asks for, checked before any model is read: a name this machine cannot run is refused at once."""

from __future__ import annotations

import torch

from .errors import SdkdError


def usable_device(name: str | torch.device, flag: str = "--device") -> torch.device:
    """`name` as a torch device this machine has (CPU, a CUDA GPU it counts, MPS when built and present)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SdkdError(f"{flag} {name!r}: not a device name; use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SdkdError(f"{flag} {name}: this machine has no CUDA GPU torch can use; use {flag} cpu")
        if device.index is not None and device.index >= count:
            raise SdkdError(f"{flag} {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SdkdError(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SdkdError(f"{flag} {name}: sdkd runs on cpu, cuda or mps")
    return device
