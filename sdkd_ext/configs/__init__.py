"""Model configs derived from a topology or read off a state dict, starting from the shipped SD1.5 ones.

The JSON files beside this module are SD1.5's diffusers configs and the v1 inference yaml; every
student or small-width model changes only the fields its shape decides, so nothing is fetched
from a hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..variants import Topology

HERE = Path(__file__).parent
SD15_DIR = HERE / "sd15"
TOKENIZER_DIR = HERE / "tokenizer"


def sd15(name: str) -> dict:
    """One of the shipped SD1.5 component configs (unet, vae, text_encoder, scheduler)."""
    return json.loads((SD15_DIR / f"{name}.json").read_text())


def unet_config(t: Topology) -> dict:
    """diffusers `UNet2DConditionModel` config for topology `t`."""
    cfg = sd15("unet")
    cfg.update(
        block_out_channels=t.widths(),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in t.attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(t.attention)],
        layers_per_block=t.layers_per_block,
        mid_block_type="UNetMidBlock2DCrossAttn" if t.mid_block else None,
        cross_attention_dim=t.context_dim,
        attention_head_dim=t.num_heads,  # SD1.x configs store the head count under this name
        in_channels=t.in_channels,
        out_channels=t.out_channels,
        norm_num_groups=t.norm_groups,
    )
    if t.transformer_depth != 1:
        cfg["transformer_layers_per_block"] = t.transformer_depth
    return cfg


def topology_from_diffusers(cfg: dict) -> Topology:
    """The topology a diffusers UNet config describes."""
    widths = list(cfg["block_out_channels"])
    head = cfg.get("attention_head_dim", 8)
    return Topology(
        model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        attention=tuple(t.startswith("CrossAttn") for t in cfg["down_block_types"]),
        layers_per_block=cfg["layers_per_block"],
        mid_block=cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None,
        context_dim=cfg["cross_attention_dim"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        num_heads=head[0] if isinstance(head, list) else head,
        transformer_depth=cfg.get("transformer_layers_per_block", 1),
        norm_groups=cfg.get("norm_num_groups", 32),
    )


@dataclass(frozen=True)
class VaeShape:
    """The widths of an AutoencoderKL, read off its LDM keys."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    layers: int = 2
    norm_groups: int = 32  # GroupNorm groups; ldm fixes 32, fewer only for tiny demo models (recorded in `sdkd_vae`)

    UNSEEN = ("norm_groups",)  # fields the keys cannot show

    def metadata(self) -> dict[str, str]:
        """What sdkd exports record of this VAE beyond its keys (read back by `detect.vae_shape`)."""
        return {"sdkd_vae": json.dumps({k: getattr(self, k) for k in self.UNSEEN})}

    def config(self) -> dict:
        """diffusers `AutoencoderKL` config."""
        cfg = sd15("vae")
        n = len(self.ch_mult)
        cfg.update(block_out_channels=[self.ch * m for m in self.ch_mult], layers_per_block=self.layers,
                   down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                   norm_num_groups=self.norm_groups)
        return cfg


def text_encoder_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """transformers `CLIPTextConfig` kwargs for a CLIP text model, from its `text_model.*` shapes."""
    cfg = sd15("text_encoder")
    vocab, hidden = shapes["text_model.embeddings.token_embedding.weight"]
    layers = len({k.split(".")[3] for k in shapes if k.startswith("text_model.encoder.layers.")})
    cfg.update(
        vocab_size=vocab, hidden_size=hidden, projection_dim=hidden, num_hidden_layers=layers,
        intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        max_position_embeddings=shapes["text_model.embeddings.position_embedding.weight"][0],
        num_attention_heads=max(1, hidden // 64),  # CLIP's head width is 64
    )
    return cfg


# What a user without sdkd gets from a file without a middle block; no config can leave the block out
# (ldm's and sgm's UNetModel always build it), so the yaml says it in comments, the file's metadata in
# `sdkd_note` (what metadata viewers show), and the README in full.
NO_MIDDLE_BLOCK_LINES = (
    "This model has no middle block (BK-SDM small/tiny). No ldm config can leave that block out:",
    "- A1111 with the sdkd extension removes it on load; without it, A1111 fills the block with zeros",
    "  (an identity: images are right, but the idle block, 97M parameters at SD1.5 size, runs every step).",
    "- Forge without the sdkd extension builds a middle block the file cannot fill, and the first image fails with",
    "  `TypeError: linear(): argument 'weight' ... NoneType`: install the sdkd extension in Forge, or use a portable",
    "  student (`sdkd prune --portable`, the Portable box in the tab, `portable` on the ComfyUI node).",
    "- ComfyUI and diffusers read the shape off the weights and need nothing.",
)
# The same for a portable file (`sdkd prune --portable`): it carries an identity middle ResBlock.
PORTABLE_LINES = (
    "This model has no middle block (BK-SDM small/tiny); it carries an identity middle ResBlock (last conv zero)",
    "so that hosts without sdkd load every weight and compute the student exactly:",
    "- A1111 and Forge with the sdkd extension remove the block on load (it costs nothing there).",
    "- Without it, Forge and ComfyUI build a ResBlock middle block from the file; A1111 loads it and fills the",
    "  rest of its yaml middle block with zeros (an identity too); the idle block runs every step.",
)


def note(lines: tuple[str, ...]) -> str:
    """Host notes as yaml comment lines."""
    return "".join(f"# {line}\n" for line in lines)


def note_metadata(lines: tuple[str, ...]) -> str:
    """Host notes as one metadata line (`sdkd_note`, what metadata viewers show)."""
    return " ".join(line.strip() for line in lines)



def ldm_yaml(t: Topology, vae: VaeShape | None = None, portable: bool = False) -> str:
    """The A1111/ldm inference yaml that builds a model of topology `t` (inpainting when 9 input channels); for a
    model without a middle block it says, in comments, what each host does with it."""
    vae = vae or VaeShape()
    inpaint = t.in_channels == 9
    fields = dict(
        target="ldm.models.diffusion.ddpm.LatentInpaintDiffusion" if inpaint else "ldm.models.diffusion.ddpm.LatentDiffusion",
        conditioning_key="hybrid" if inpaint else "crossattn",
        finetune_keys="    finetune_keys: null\n" if inpaint else "",
        in_channels=t.in_channels, out_channels=t.out_channels, model_channels=t.model_channels,
        attention_resolutions=_yaml_list(2 ** i for i, a in enumerate(t.attention) if a),
        num_res_blocks=t.layers_per_block, channel_mult=_yaml_list(t.channel_mult), num_heads=t.num_heads,
        transformer_depth=t.transformer_depth, context_dim=t.context_dim,
        vae_ch=vae.ch, vae_ch_mult=_yaml_list(vae.ch_mult), vae_res_blocks=vae.layers,
    )
    comment = "" if t.mid_block else note(PORTABLE_LINES if portable else NO_MIDDLE_BLOCK_LINES)
    return (SD15_DIR / "v1-inference.yaml").read_text().format(note=comment, **fields)


def _yaml_list(items) -> str:
    """A flow-style yaml list."""
    return "[ " + ", ".join(str(i) for i in items) + " ]"
