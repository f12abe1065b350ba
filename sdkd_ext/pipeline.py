"""Turn any SD1.x single file or sdkd student into diffusers models, offline, and generate images with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .compat import clip_prefix
from .checkpoint import Source, open_model
from .configs import TOKENIZER_DIR, unet_config
from .convert import TEXT, UNET, VAE, unet_map, vae_map
from .detect import ModelInfo, describe, text_encoder_shape, vae_shape
from .errors import SdkdError
from .progress import ProgressFn
from .sampling import Sampler, sample_latents, scheduler_for
from .speed import prepack_convs


def _build(factory: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Build a module without random init (on `meta`) and load `state` into it exactly."""
    with torch.device("meta"):
        module = factory()
    try:
        result = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # torch's size-mismatch report: weights of other shapes than the config implies
        raise SdkdError(f"the {what} weights don't fit its config ({str(e).splitlines()[-1].strip()[:200]}); "
                        "the file is damaged or not SD1.x") from e
    buffers = {name for name, _ in module.named_buffers()}
    missing = [k for k in result.missing_keys if k not in buffers]  # buffers are rebuilt below, not read from files
    if missing or result.unexpected_keys:
        raise SdkdError(f"the {what} weights don't fit its config: {len(missing)} missing (e.g. {missing[:3]}), "
                        f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}); the file is damaged or not SD1.x")
    unset = [name for name, buf in module.named_buffers() if buf.is_meta]
    if unset:  # buffers (e.g. CLIP position ids) are not weights: rebuild them as the model makes them, in one build
        fresh = factory()
        for name in unset:
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner).register_buffer(leaf, fresh.get_buffer(name), persistent=False)
    return module.eval()


def build_unet(src: Source, info: ModelInfo) -> torch.nn.Module:
    """diffusers `UNet2DConditionModel` holding the file's UNet (any variant)."""
    from diffusers import UNet2DConditionModel

    pmap = unet_map(info.topology)
    state = {pmap.to_diffusers(k[len(UNET):]): src.get(k) for k in src.keys() if k.startswith(UNET)}
    return _build(lambda: UNet2DConditionModel.from_config(unet_config(info.topology)), state, "UNet")


def build_vae(src: Source) -> torch.nn.Module:
    """diffusers `AutoencoderKL` holding the file's VAE."""
    from diffusers import AutoencoderKL

    shape = vae_shape(src)
    if shape is None:
        raise SdkdError("this checkpoint carries no VAE weights; use a checkpoint that includes its VAE")
    pmap = vae_map(len(shape.ch_mult), shape.layers)
    state = {}
    for k in src.keys():
        if k.startswith(VAE):
            t = src.get(k)
            ldm = k[len(VAE):]
            state[pmap.to_diffusers(ldm)] = t.flatten(1) if pmap.needs_reshape(ldm) and t.ndim == 4 else t
    return _build(lambda: AutoencoderKL.from_config(shape.config()), state, "VAE")


def build_text_encoder(src: Source) -> torch.nn.Module:
    """transformers `CLIPTextModel` holding the file's text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    shape = text_encoder_shape(src)
    if shape is None:
        raise SdkdError("this checkpoint carries no text-encoder weights; use a checkpoint that includes its text encoder")
    names = {k[len(TEXT):]: k for k in src.keys() if k.startswith(TEXT)}
    cfg = CLIPTextConfig(**shape)
    with torch.device("meta"):
        prefix = clip_prefix(CLIPTextModel(cfg))
    state = {prefix + k[len("text_model."):]: src.get(v) for k, v in names.items()}
    return _build(lambda: CLIPTextModel(cfg), state, "text encoder")


def tokenizer():
    """The SD1.x CLIP tokenizer from the files shipped with sdkd (no hub access)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


@dataclass
class Loaded:
    """A pipeline and what sdkd knows about the file it came from."""

    pipe: object
    info: ModelInfo


def load_pipeline(model: str | Path | Source, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  ema: bool = False) -> Loaded:
    """A diffusers `StableDiffusionPipeline` for an SD1.x file, diffusers folder or sdkd student, built offline."""
    from diffusers import StableDiffusionPipeline

    src = model if not isinstance(model, (str, Path)) else open_model(model, ema=ema)
    info = describe(src)
    if info.kind not in ("sd1", "student"):
        raise SdkdError(info.reason)
    if info.inpainting:
        raise SdkdError("this is an inpainting checkpoint: sdkd prunes it, but generates text-to-image only from normal checkpoints")
    models = {"vae": build_vae(src), "text_encoder": build_text_encoder(src), "unet": build_unet(src, info)}
    prepack_convs(models["unet"])  # CPU inference stops re-converting conv weights every step (see speed.py)
    for m in models.values():
        m.to(device=device, dtype=dtype)  # per module: the pipeline's own .to() warns about fp32 modules
    pipe = StableDiffusionPipeline(**models, tokenizer=tokenizer(), scheduler=scheduler_for(Sampler()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return Loaded(pipe, info)


def render(pipe, prompt: str, spec: Sampler, seed: int = 0, size: int = 512, negative: str = "",
           progress: ProgressFn | None = None) -> tuple[object, torch.Tensor]:
    """One image (PIL) and its final latents (what the VAE decodes), drawn by sdkd's sampler: reproducible by seed on
    any device, the same as the training previews draw."""
    unet, vae = pipe.unet, pipe.vae
    device = next(unet.parameters()).device
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, device, 1, True, negative or None)
        latents = sample_latents(unet, spec, cond, uncond, [seed], size // 8, unet.config.in_channels, progress)
        decoded = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0], latents[0].float().cpu()
