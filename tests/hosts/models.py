"""Models and data the host checks feed the hosts, built in code with sdkd's own modules, and sdkd's reference outputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdkd_ext.checkpoint import open_model
from sdkd_ext.configs import VaeShape
from sdkd_ext.detect import describe
from sdkd_ext.pipeline import build_unet
from sdkd_ext.tiny import make_text_encoder, make_unet, make_vae, save, to_ldm, unet_topology

from .harness import SCRATCH

# SD1.5's real sizes: hosts that read the model type off the keys (ComfyUI) or build CLIP-L (A1111) insist on them.
FULL = {"width": 320, "context": 768, "vae_ch": 128, "text_hidden": 768, "text_layers": 12}


def teacher(path: Path, width: int = 320, context: int = 768, vae_ch: int = 128, text_hidden: int = 768,
            text_layers: int = 12, seed: int = 0) -> Path:
    """An SD1.5-topology teacher with random weights, fp16 on disk, written once."""
    if path.exists():
        return path
    parts = to_ldm(make_unet(unet_topology(width, context), seed), make_vae(VaeShape(ch=vae_ch), seed + 1),
                   make_text_encoder(text_hidden, text_layers, seed + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    save({k: v.half() for k, v in parts.items()}, path)
    return path


def full_teacher(dest: Path) -> Path:
    """The full-size random teacher, built once in the scratch folder and hard-linked (or copied) to `dest`."""
    built = teacher(SCRATCH / "teachers" / "full-sd15.safetensors", **FULL)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(built, dest)
        except OSError:
            shutil.copy(built, dest)
    return dest


def caption_folder(folder: Path, n: int = 2, size: int = 64) -> Path:
    """A tiny captioned image folder (flat colours) for `sdkd lora --data`."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30)]
    for i in range(n):
        Image.new("RGB", (size, size), colours[i % len(colours)]).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a flat {['red', 'blue', 'green', 'yellow'][i % 4]} square")
    return folder


def unet_inputs(seed: int = 0, context: int = 768, side: int = 8) -> dict[str, torch.Tensor]:
    """One latent, timestep and text context for a single UNet call in a host and in sdkd."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(1, 4, side, side, generator=g), "t": torch.tensor([500.0]),
            "context": torch.randn(1, 77, context, generator=g)}


def sdkd_unet_call(student: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """sdkd's own diffusers UNet of the file, run once in fp32 on `inputs`."""
    src = open_model(student)
    unet = build_unet(src, describe(src)).float()
    with torch.no_grad():
        return unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["context"]).sample


def pixels(path: Path) -> np.ndarray:
    """An image file's RGB pixels as int16 (so differences don't wrap)."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def image_diff(a: Path, b: Path) -> float:
    """Mean absolute pixel difference of two images (0 = identical)."""
    pa, pb = pixels(a), pixels(b)
    return float(np.abs(pa - pb).mean()) if pa.shape == pb.shape else float("inf")


def write_yaml(checkpoint: Path) -> Path:
    """The ldm inference yaml sdkd writes for a model of this file's shape, beside it (A1111 builds from it)."""
    from sdkd_ext.configs import ldm_yaml
    from sdkd_ext.detect import vae_shape

    src = open_model(checkpoint)
    path = checkpoint.with_suffix(".yaml")
    path.write_text(ldm_yaml(describe(src).topology, vae_shape(src)))
    return path


def text_config(checkpoint: Path) -> dict:
    """The CLIPTextConfig fields of the file's text encoder (for a host that builds CLIP from a config.json)."""
    from sdkd_ext.configs import text_encoder_config
    from sdkd_ext.convert import TEXT

    src = open_model(checkpoint)
    return text_encoder_config({k[len(TEXT):]: tuple(src.shape(k)) for k in src.keys() if k.startswith(TEXT)})
