"""peft LoRA adapters on a diffusers UNet and a CLIP text encoder: add them for training, read them out as a `Lora`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import SdkdError
from .file import DOWN, UP, Lora, LoraModule
from .names import Layout

ADAPTER = "sdkd"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections, as in diffusers' LoRA scripts
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# Every conv and linear layer inside the UNet's blocks, as few-step (LCM) LoRAs adapt them (diffusers' LCM-LoRA
# trainer's list): attention, transformer in/out and feed-forward, resnet convs, time projections and shortcuts, and
# the down/upsamplers. The stem and head convs and the time embedding MLP stay as they are.
FULL_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                     "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")


def add_lora(module: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> torch.nn.Module:
    """Inject a trainable peft LoRA (B = 0: the model starts unchanged) into `module`'s `targets`, in place."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    return inject_adapter_in_model(config, module, adapter_name=ADAPTER)


def lora_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """name -> peft LoRA layer carrying sdkd's adapter, for every such layer in `module`."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


@contextmanager
def adapters_off(module: torch.nn.Module) -> Iterator[None]:
    """`module` computes without its LoRA adapters inside the block (the base model's output), with them after."""
    layers = list(lora_layers(module).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # also makes the adapters trainable again (peft's enable_adapters(False) froze them)


def lora_from_peft(layout: Layout, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> Lora:
    """The adapters of a peft-wrapped UNet (and text encoder) as a `Lora` on `layout`, alpha from peft's own scaling."""
    modules: dict[str, LoraModule] = {}
    for part in (unet, text_encoder):
        for name, layer in lora_layers(part).items() if part is not None else ():
            if layer.lora_B[ADAPTER].bias is not None or ADAPTER in layer.lora_magnitude_vector:
                raise SdkdError(f"{name}: LoRA bias and DoRA adapters have no kohya form; train plain LoRA")
            down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            module_id = layout.spellings[name]
            alpha = float(layer.scaling[ADAPTER] * layer.r[ADAPTER])  # kohya applies alpha/rank; rsLoRA included
            modules[module_id] = LoraModule({DOWN: down.detach().float().cpu(), UP: up.detach().float().cpu()}, alpha)
    if not modules:
        raise SdkdError("the model carries no sdkd LoRA adapter")
    return Lora(modules)
