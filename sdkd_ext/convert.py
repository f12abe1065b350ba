"""Key maps between LDM (CompVis, single-file) and diffusers names, derived from a topology.

A `PrefixMap` is a bijection between module prefixes; a key converts by swapping its longest
known prefix. Maps for the UNet come from `variants.blocks`, so every variant gets exact maps for
free; the VAE and text-encoder maps are written the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .variants import Topology, Variant, block_map, blocks

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer."
EMA = "model_ema."
EMA_UNET = EMA + "diffusion_model"  # prefix of ldm's LitEma copy of the UNet (see `ema_twin`)
# Buffers some files carry that are not weights: every loader builds them itself (CLIP's position ids are
# arange(77); transformers >= 4.31 no longer saves them, 5.x has no such buffer, and float copies drift).
NOT_WEIGHTS = (TEXT + "text_model.embeddings.position_ids",)

_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
_PART_RENAMES = {"resnet": _RESNET, "attention": {"": ""}, "downsample": {"op": "conv"},
                 "upsample": {"conv": "conv"}, "plain": {"": ""}}


@dataclass
class PrefixMap:
    """A bijection of dotted module prefixes; `reshape` marks LDM 1x1 convs that are linears in diffusers."""

    forward: dict[str, str] = field(default_factory=dict)
    reshape: set[str] = field(default_factory=set)  # LDM prefixes whose weights are conv 1x1 <-> linear

    def add(self, ldm: str, diffusers: str, reshape: bool = False) -> None:
        """Record one module-prefix pair (without trailing dots)."""
        self.forward[ldm] = diffusers
        if reshape:
            self.reshape.add(ldm)

    @property
    def backward(self) -> dict[str, str]:
        """diffusers prefix -> LDM prefix."""
        return {v: k for k, v in self.forward.items()}

    def to_diffusers(self, key: str) -> str | None:
        """diffusers name of LDM key `key`, or None if it belongs to no known module."""
        return _swap(key, self.forward)

    def to_ldm(self, key: str) -> str | None:
        """LDM name of diffusers key `key`, or None if it belongs to no known module."""
        return _swap(key, self.backward)

    def needs_reshape(self, ldm_key: str) -> bool:
        """True if this LDM weight is a 1x1 conv whose diffusers twin is a linear layer."""
        return ldm_key.endswith(".weight") and ldm_key.rsplit(".", 1)[0] in self.reshape


def _swap(key: str, table: dict[str, str]) -> str | None:
    """Replace the longest prefix of `key` found in `table` (prefixes match whole dotted parts)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            new = table[head]
            return ".".join(([new] if new else []) + parts[cut:])
    return None


def unet_map(t: Topology) -> PrefixMap:
    """LDM <-> diffusers prefixes for a UNet of topology `t` (keys without the `model.diffusion_model.` prefix)."""
    m = PrefixMap()
    m.add("time_embed.0", "time_embedding.linear_1")
    m.add("time_embed.2", "time_embedding.linear_2")
    m.add("out.0", "conv_norm_out")
    m.add("out.2", "conv_out")
    for b in blocks(t):
        for sub, dprefix, kind in b.parts:
            for lsuffix, dsuffix in _PART_RENAMES[kind].items():
                m.add(_join(b.ldm, sub, lsuffix), _join(dprefix, dsuffix))
    return m


def vae_map(levels: int = 4, layers: int = 2) -> PrefixMap:
    """LDM <-> diffusers prefixes for an AutoencoderKL with `levels` levels of `layers` resnets (encoder)."""
    m = PrefixMap()
    for name in ("conv_in", "conv_out", "quant_conv", "post_quant_conv"):
        m.add(name, name)
    for side, n_res, sampler in (("encoder", layers, "downsample"), ("decoder", layers + 1, "upsample")):
        for name in ("conv_in", "conv_out"):
            m.add(f"{side}.{name}", f"{side}.{name}")
        m.add(f"{side}.norm_out", f"{side}.conv_norm_out")
        m.add(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0")
        m.add(f"{side}.mid.block_2", f"{side}.mid_block.resnets.1")
        for ldm, dif in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            m.add(f"{side}.mid.attn_1.{ldm}", f"{side}.mid_block.attentions.0.{dif}", reshape=ldm != "norm")
        for i in range(levels):
            d = i if side == "encoder" else levels - 1 - i
            group = "down" if side == "encoder" else "up"
            for j in range(n_res):
                ldm_res, dif_res = f"{side}.{group}.{i}.block.{j}", f"{side}.{group}_blocks.{d}.resnets.{j}"
                for sub in ("norm1", "conv1", "norm2", "conv2"):
                    m.add(f"{ldm_res}.{sub}", f"{dif_res}.{sub}")
                m.add(f"{ldm_res}.nin_shortcut", f"{dif_res}.conv_shortcut")
            has_sampler = i < levels - 1 if side == "encoder" else i > 0
            if has_sampler:
                m.add(f"{side}.{group}.{i}.{sampler}.conv", f"{side}.{group}_blocks.{d}.{group}samplers.0.conv")
    return m


def ema_twin(unet_key: str) -> str:
    """The name ldm's LitEma gives the EMA copy of UNet key `unet_key` (no prefix): dots removed."""
    return EMA_UNET + unet_key.replace(".", "")


def _join(*parts: str) -> str:
    """Dotted join that skips empty parts."""
    return ".".join(p for p in parts if p)


def student_renamer(variant: Variant, teacher: Topology) -> dict[str, str | None]:
    """Teacher LDM UNet block -> student block it becomes (None: dropped), for every teacher block."""
    inverse = {t: s for s, t in block_map(variant, teacher).items()}
    return {b.ldm: inverse.get(b.ldm) for b in blocks(teacher)}


def student_key(key: str, renamer: dict[str, str | None]) -> str | None:
    """The student's name for teacher UNet key `key` (no prefix), or None where the student drops it."""
    parts = key.split(".")
    block = parts[0] if parts[0] == "middle_block" else ".".join(parts[:2])
    if block not in renamer and parts[0] in ("input_blocks", "middle_block", "output_blocks"):
        return None  # a block the teacher topology does not have
    if block not in renamer:
        return key  # time_embed, out: shared by every variant
    new = renamer[block]
    return None if new is None else new + key[len(block):]
