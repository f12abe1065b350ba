"""Small models with the exact SD1.5 topology (tiny channel counts), built in code: for tests, demos and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import DictSource
from .compat import clip_prefix
from .configs import VaeShape, sd15, unet_config
from .convert import NOT_WEIGHTS, TEXT, UNET, VAE, unet_map, vae_map
from .export import plan_from, write_safetensors
from .variants import Topology


def unet_topology(width: int = 32, context_dim: int = 32, in_channels: int = 4) -> Topology:
    """SD1.5's UNet topology at `width` base channels (320 is the real one)."""
    return Topology(model_channels=width, context_dim=context_dim, in_channels=in_channels)


def _jitter(module: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Perturb every parameter, so constant-initialised norms differ and a misplaced tensor changes outputs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def make_unet(topology: Topology, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised diffusers UNet of `topology`."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return _jitter(UNet2DConditionModel.from_config(unet_config(topology)), 0.02)


def make_vae(shape: VaeShape, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised diffusers AutoencoderKL of `shape`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return _jitter(AutoencoderKL.from_config(shape.config()), 0.02)


def make_text_encoder(hidden: int = 32, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised CLIP text model with SD1.5's vocabulary and context length."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15("text_encoder")
    cfg.update(hidden_size=hidden, projection_dim=hidden, intermediate_size=hidden * 4,
               num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64))
    torch.manual_seed(seed)
    return _jitter(CLIPTextModel(CLIPTextConfig(**cfg)), 0.02)


def to_ldm(unet: torch.nn.Module | None = None, vae: torch.nn.Module | None = None,
           text_encoder: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """diffusers/transformers modules as one LDM-named single-file state dict (weights only, whatever the library's
    version saves beside them)."""
    from .configs import topology_from_diffusers

    out: dict[str, torch.Tensor] = {}
    if unet is not None:
        pmap = unet_map(topology_from_diffusers(dict(unet.config)))
        out.update({UNET + pmap.to_ldm(k): v for k, v in unet.state_dict().items()})
    if vae is not None:
        pmap = vae_map(len(vae.config.block_out_channels), vae.config.layers_per_block)
        for k, v in vae.state_dict().items():
            ldm = pmap.to_ldm(k)
            out[VAE + ldm] = v[:, :, None, None] if pmap.needs_reshape(ldm) and v.ndim == 2 else v
    if text_encoder is not None:
        prefix = clip_prefix(text_encoder)
        out.update({TEXT + "text_model." + k[len(prefix):]: v for k, v in text_encoder.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in out.items() if k not in NOT_WEIGHTS}


def tiny_checkpoint(width: int = 32, seed: int = 0, in_channels: int = 4, vae: bool = True, text_encoder: bool = True,
                    topology: Topology | None = None) -> dict[str, torch.Tensor]:
    """An LDM-named SD1.5-topology checkpoint with `width` base channels and random weights."""
    topo = topology or unet_topology(width, width, in_channels)
    return to_ldm(
        make_unet(topo, seed),
        make_vae(VaeShape(ch=width), seed + 1) if vae else None,
        make_text_encoder(width, 2, seed + 2) if text_encoder else None,
    )


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write an in-memory state dict as a single .safetensors file."""
    src = DictSource(tensors)
    write_safetensors(Path(path), plan_from(src, {k: k for k in tensors}, lambda n, d: d), metadata or {})
    return Path(path)

