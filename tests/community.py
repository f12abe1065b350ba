"""SD1.5 single files laid out as people really have them, built in code at tiny widths.

Each `Layout` is one way such files come: what the text encoder carries beside its weights (CLIP's
`position_ids`, int64 as ldm saved them or float as merge tools re-saved them, slightly off), what
the EMA part holds (nothing, LitEma's two counters, or the full `model_ema.*` copy of the UNet),
fp32 or fp16, `.safetensors` or a `.ckpt` with or without the `state_dict` wrapper, with or without
a baked VAE. All carry ldm's noise-schedule buffers, as every LDM-saved checkpoint does. Students
that carry what an earlier sdkd prune copied (position ids, schedule buffers) are made from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdkd_ext.convert import EMA, TEXT, UNET, VAE
from sdkd_ext.tiny import save

POSITION_IDS = TEXT + "text_model.embeddings.position_ids"
EMA_SCALE = 0.95  # the EMA copy is the live weights times this, so tests can tell which one was used


@dataclass(frozen=True)
class Layout:
    """One community file layout."""

    name: str
    suffix: str = ".safetensors"
    dtype: torch.dtype = torch.float32
    position_ids: str | None = None  # None, "int64", "drifted" (float32, values a hair below the integers)
    ema: str = "none"  # "none", "counters" (model_ema.decay/num_updates only), "full"
    wrapped: bool = False  # .ckpt only: {"state_dict": ..., "global_step": ...}
    vae: bool = True

    @property
    def file(self) -> str:
        """The file name it is saved under."""
        return self.name + self.suffix


LAYOUTS = (
    Layout("v1-5-pruned", ".ckpt", position_ids="int64", ema="full", wrapped=True),
    Layout("v1-5-pruned-emaonly", position_ids="int64", ema="counters"),
    Layout("v1-5-pruned-emaonly-fp16", dtype=torch.float16, position_ids="int64", ema="counters"),
    Layout("merge-fp16", dtype=torch.float16, position_ids="drifted"),
    Layout("merge-fp32-ema", position_ids="drifted", ema="full"),
    Layout("pruned-novae-fp16", dtype=torch.float16, vae=False),
    Layout("bare-emaonly", ".ckpt", dtype=torch.float16, position_ids="int64", ema="counters"),
)


def schedule_buffers(steps: int = 1000) -> dict[str, torch.Tensor]:
    """ldm's DDPM noise-schedule buffers (SD1.5's linear schedule), under the names `register_schedule` gives them."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=np.float64) ** 2
    alphas = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas[:-1])
    variance = betas * (1.0 - prev) / (1.0 - alphas)
    found = {
        "betas": betas, "alphas_cumprod": alphas, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas - 1), "posterior_variance": variance,
        "posterior_log_variance_clipped": np.log(np.maximum(variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - alphas),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in found.items()}


def position_ids(kind: str) -> torch.Tensor:
    """CLIP's position ids as files carry them: int64 arange, or float32 a hair below the integers (merge drift)."""
    ids = torch.arange(77)[None]
    return ids if kind == "int64" else ids.float() - 2e-5 * (ids % 3 != 0)


def ema_name(key: str) -> str:
    """ldm's LitEma name for the EMA copy of a full-checkpoint UNet key (test_community checks it against LitEma)."""
    return EMA + key.removeprefix("model.").replace(".", "")


def state_dict(layout: Layout, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` (an fp32 tiny checkpoint) laid out as `layout` says."""
    sd = {k: v.to(layout.dtype) if v.is_floating_point() else v
          for k, v in weights.items() if layout.vae or not k.startswith(VAE)}
    sd.update(schedule_buffers())
    if layout.position_ids:
        sd[POSITION_IDS] = position_ids(layout.position_ids)
    if layout.ema != "none":
        sd[EMA + "decay"] = torch.tensor(0.9999)
        sd[EMA + "num_updates"] = torch.tensor(1234, dtype=torch.int32)
    if layout.ema == "full":
        sd.update({ema_name(k): v * EMA_SCALE for k, v in sd.items() if k.startswith(UNET)})
    return sd


def write(layout: Layout, weights: dict[str, torch.Tensor], folder: Path) -> Path:
    """Save `weights` in `layout` into `folder`; a .ckpt goes through torch.save as training scripts write it."""
    sd, path = state_dict(layout, weights), folder / layout.file
    if layout.suffix == ".safetensors":
        return save(sd, path)
    torch.save({"state_dict": sd, "global_step": 470000, "epoch": 5} if layout.wrapped else sd, path)
    return path


def with_extra(student: Path, extra: dict[str, torch.Tensor], out: Path) -> Path:
    """A copy of an sdkd student with `extra` tensors added (metadata kept): what an earlier prune copied over."""
    from safetensors import safe_open

    with safe_open(str(student), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return save({**tensors, **extra}, out, metadata)
