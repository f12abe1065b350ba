"""The public SD1.5 LCM-LoRA's file layout, built in code with random weights (no hub here): for port and host tests.

`latent-consistency/lcm-lora-sdv1-5`, `pytorch_lora_weights.safetensors`, as the evidence shows it:
- keys are kohya-style over diffusers module paths, `lora_unet_up_blocks_2_attentions_0_proj_in.lora_up.weight`
  (quoted from the file in luosiallen/latent-consistency-model issue #57), three per module: `.lora_down.weight`,
  `.lora_up.weight` and `.alpha`, as diffusers' `train_lcm_distill_lora_sd_wds.py` `get_module_kohya_state_dict` writes
  them from its peft UNet (`base_model.model` -> `lora_unet`, lora_A/B -> lora_down/up, dots to `_` but the last two);
- the modules are that script's peft `target_modules` (its help: "all conv and linear layers"), matched peft's way
  (the name or its dotted tail): every UNet Linear/Conv2d but conv_in, conv_out and time_embedding.linear_1/2;
- rank 64, alpha 64 (the script's defaults and the card's), fp16 tensors, the alpha too (`.to(dtype)`);
- convolutions as peft builds them: lora_down a conv with the layer's kernel (3x3 or 1x1), lora_up 1x1.
At SD1.5's widths that is 278 modules, 834 keys and 67.25 M fp16 parameters: 134.5 MB, the size the hub lists (135 MB).
"""

from __future__ import annotations

from pathlib import Path

import torch

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
           "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
RANK = ALPHA = 64
SD15_MODULES, SD15_KEYS = 278, 834


def targeted_modules(width: int = 320, context: int = 768) -> dict[str, tuple[int, ...]]:
    """diffusers module name -> weight shape of every UNet layer the public LCM-LoRA adapts, at these widths."""
    from diffusers import UNet2DConditionModel

    from sdkd_ext.configs import unet_config
    from sdkd_ext.tiny import unet_topology

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(unet_topology(width, context)))
    return {name: tuple(m.weight.shape) for name, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and any(name == t or name.endswith("." + t) for t in TARGETS)}


def stem(diffusers_name: str) -> str:
    """The file's key stem of a module: `lora_unet_` and its diffusers path with dots as underscores."""
    return "lora_unet_" + diffusers_name.replace(".", "_")


def public_lcm_tensors(width: int = 320, context: int = 768, rank: int = RANK, scale: float = 1.0,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """The file's tensors with random weights (see `random_pair`)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in targeted_modules(width, context).items():
        down, up = random_pair(shape, rank, scale, g)
        out.update({f"{stem(name)}.lora_down.weight": down.half(), f"{stem(name)}.lora_up.weight": up.half(),
                    f"{stem(name)}.alpha": torch.tensor(float(ALPHA)).half()})
    return out


def random_pair(shape: tuple[int, ...], rank: int, scale: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a layer of weight `shape`, peft's shapes (down has the kernel, up is 1x1); with alpha = rank
    the update's entries are about `scale` / sqrt(fan-in), `scale` x the size of a layer's own initial weights."""
    kernel = shape[2:]
    fan_in = shape[1] * (kernel[0] * kernel[1] if kernel else 1)
    down = torch.randn(rank, *shape[1:], generator=g) / fan_in ** 0.5
    up = torch.randn(shape[0], rank, *(1,) * len(kernel), generator=g) * scale / rank ** 0.5
    return down, up


def write_public_lcm(path: Path, width: int = 320, context: int = 768, rank: int = RANK, scale: float = 1.0,
                     seed: int = 0) -> Path:
    """The layout written as a safetensors file with the metadata diffusers' save writes (`format: pt`)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(public_lcm_tensors(width, context, rank, scale, seed), str(path), metadata={"format": "pt"})
    return path
