"""The BK-SDM variants as data: a UNet topology, and per variant which teacher blocks the student keeps.

Everything else (key renumbering, configs, key maps, feature-loss hook pairs) is derived from
these two small declarations, so a new variant is one more `Variant(...)` line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import SdkdError


@dataclass(frozen=True)
class Topology:
    """The shape of an SD1.x-family UNet: enough to name every block in LDM and diffusers terms."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    attention: tuple[bool, ...] = (True, True, True, False)  # per resolution level
    layers_per_block: int = 2  # resnets per down level; up levels have one more
    mid_block: bool = True
    context_dim: int = 768
    in_channels: int = 4
    out_channels: int = 4
    num_heads: int = 8
    transformer_depth: int = 1
    norm_groups: int = 32  # GroupNorm groups; A1111's ldm code fixes 32, smaller only for tiny demo models

    # Fields a state dict cannot show; sdkd's exports record them in the `sdkd_topology` metadata.
    UNSEEN = ("num_heads", "norm_groups")

    @property
    def levels(self) -> int:
        """Number of resolution levels."""
        return len(self.channel_mult)

    @property
    def up_layers(self) -> int:
        """Resnets per up level (one more than down: the extra one consumes the level's input skip)."""
        return self.layers_per_block + 1

    def widths(self) -> list[int]:
        """Channel count of each level."""
        return [self.model_channels * m for m in self.channel_mult]


SD15 = Topology()


@dataclass(frozen=True)
class Variant:
    """A BK-SDM student: which teacher resnet(+attention) of each level it keeps, and what else survives.

    Down levels keep `down_keep` (teacher indices), up levels keep `up_keep`; kept blocks move to
    consecutive student slots. `levels` drops the teacher's innermost levels; `mid_block` keeps the
    middle block or removes it.
    """

    name: str
    down_keep: tuple[int, ...]
    up_keep: tuple[int, ...]
    mid_block: bool
    levels: int | None = None  # None: as many as the teacher
    aliases: tuple[str, ...] = ()

    def student(self, teacher: Topology) -> Topology:
        """The student topology this variant makes from `teacher`."""
        n = self.levels or teacher.levels
        return replace(
            teacher,
            channel_mult=teacher.channel_mult[:n],
            attention=teacher.attention[:n],
            layers_per_block=len(self.down_keep),
            mid_block=self.mid_block and teacher.mid_block,
        )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("base", down_keep=(0,), up_keep=(0, 2), mid_block=True, aliases=("segmind-small", "bk-sdm-base")),
        Variant("small", down_keep=(0,), up_keep=(0, 2), mid_block=False, aliases=("bk-sdm-small",)),
        Variant("tiny", down_keep=(0,), up_keep=(0, 2), mid_block=False, levels=3, aliases=("segmind-tiny", "bk-sdm-tiny")),
    )
}
VARIANT_NAMES = [n for v in VARIANTS.values() for n in (v.name, *v.aliases)]  # what --variant accepts


def get_variant(name: str) -> Variant:
    """Look a variant up by name or alias (case-insensitive)."""
    key = name.strip().lower()
    for v in VARIANTS.values():
        if key == v.name or key in v.aliases:
            return v
    known = ", ".join(n for v in VARIANTS.values() for n in (v.name, *v.aliases))
    raise SdkdError(f"unknown variant {name!r}; choose one of: {known}")


def full_topology(topology: Topology, teacher: Topology = SD15) -> Topology:
    """The full SD1.x topology with this model's widths: what its teacher was (or what it is, for a teacher)."""
    return replace(teacher, model_channels=topology.model_channels, context_dim=topology.context_dim,
                   in_channels=topology.in_channels, out_channels=topology.out_channels,
                   num_heads=topology.num_heads, norm_groups=topology.norm_groups)


def identify(topology: Topology, teacher: Topology = SD15) -> str | None:
    """Name of the variant (or 'teacher') whose shape `topology` has, judged relative to an SD1.x teacher."""
    full = full_topology(topology, teacher)
    if topology == full:
        return "teacher"
    for v in VARIANTS.values():
        if topology == v.student(full):
            return v.name
    return None


# Topology fields that make a UNet's shape (the rest are free: widths, channels, heads), as messages name them.
SHAPE_WORDS = {"channel_mult": "channel multipliers", "attention": "cross-attention at",
               "layers_per_block": "resnets per down level", "mid_block": "middle block",
               "transformer_depth": "transformer blocks per attention"}


# Every Topology field as a message names it (the shape fields above, and the free widths).
FIELD_WORDS = {**SHAPE_WORDS, "model_channels": "base width", "context_dim": "text context width",
               "in_channels": "input channels", "out_channels": "output channels", "num_heads": "attention heads",
               "norm_groups": "norm groups"}


def differences(a: Topology, b: Topology) -> str:
    """Where two UNet topologies differ, in words: 'base width 320 vs 32; ...' ('' when they are the same)."""
    return "; ".join(f"{FIELD_WORDS.get(f.name, f.name)} {_words(getattr(a, f.name))} vs {_words(getattr(b, f.name))}"
                     for f in fields(Topology) if getattr(a, f.name) != getattr(b, f.name))


def supported_shapes(topology: Topology, teacher: Topology = SD15) -> dict[str, Topology]:
    """Every shape sdkd handles, at this model's widths: the SD1.x teacher and its students, by name."""
    full = full_topology(topology, teacher)
    return {"SD1.x": full, **{f"BK-SDM {v.name}": v.student(full) for v in VARIANTS.values()}}


def explain_unknown(topology: Topology, teacher: Topology = SD15) -> str:
    """Why sdkd refuses `topology`: what it has where the nearest supported shape differs, and what is supported."""
    shapes = supported_shapes(topology, teacher)
    differ = {name: [f.name for f in fields(Topology) if getattr(topology, f.name) != getattr(t, f.name)]
              for name, t in shapes.items()}
    nearest = min(differ, key=lambda name: len(differ[name]))
    found = "; ".join(f"{SHAPE_WORDS.get(f, f)} {_words(getattr(topology, f))} ({nearest} has "
                      f"{_words(getattr(shapes[nearest], f))})" for f in differ[nearest])
    names = list(VARIANTS)
    return (f"a UNet of a shape sdkd does not know: {found}. sdkd prunes SD1.x UNets (channel multipliers "
            f"{_words(teacher.channel_mult)} of any base width, cross-attention at {_words(teacher.attention)}, "
            f"{teacher.layers_per_block} resnets per down level, a middle block) and reads their BK-SDM "
            f"{', '.join(names[:-1])} and {names[-1]} students")


def _words(value: object) -> str:
    """A topology field's value as a message shows it: '1, 2, 4, 4', 'levels 1, 2, 3 of 4', 'none' (no middle block)."""
    if isinstance(value, bool):
        return "yes" if value else "none"
    if isinstance(value, tuple) and all(isinstance(v, bool) for v in value):
        return f"levels {', '.join(str(i + 1) for i, v in enumerate(value) if v) or 'none'} of {len(value)}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


# ---- block naming, shared by key maps and hooks ------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One LDM block (a `TimestepEmbedSequential`) and the diffusers modules its parts become."""

    ldm: str  # e.g. "input_blocks.4"
    parts: tuple[tuple[str, str, str], ...]  # (ldm sub-index, diffusers prefix, part kind)
    level: int | None = None
    role: str = ""  # "down", "up", "mid", "stem", "downsample"
    slot: int | None = None  # resnet index within its level


def blocks(t: Topology) -> list[Block]:
    """Every UNet block of topology `t`, in LDM order, with its diffusers names."""
    out = [Block("input_blocks.0", (("0", "conv_in", "plain"),), role="stem")]
    i = 1
    for lvl in range(t.levels):
        for j in range(t.layers_per_block):
            parts = [("0", f"down_blocks.{lvl}.resnets.{j}", "resnet")]
            if t.attention[lvl]:
                parts.append(("1", f"down_blocks.{lvl}.attentions.{j}", "attention"))
            out.append(Block(f"input_blocks.{i}", tuple(parts), lvl, "down", j))
            i += 1
        if lvl < t.levels - 1:
            out.append(Block(f"input_blocks.{i}", (("0", f"down_blocks.{lvl}.downsamplers.0", "downsample"),), lvl, "downsample"))
            i += 1
    if t.mid_block:
        out.append(Block("middle_block", (
            ("0", "mid_block.resnets.0", "resnet"),
            ("1", "mid_block.attentions.0", "attention"),
            ("2", "mid_block.resnets.1", "resnet"),
        ), role="mid"))
    o = 0
    for lvl in reversed(range(t.levels)):
        up = t.levels - 1 - lvl
        for j in range(t.up_layers):
            parts = [("0", f"up_blocks.{up}.resnets.{j}", "resnet")]
            if t.attention[lvl]:
                parts.append(("1", f"up_blocks.{up}.attentions.{j}", "attention"))
            if lvl > 0 and j == t.up_layers - 1:
                parts.append((str(len(parts)), f"up_blocks.{up}.upsamplers.0", "upsample"))
            out.append(Block(f"output_blocks.{o}", tuple(parts), lvl, "up", j))
            o += 1
    return out


def block_map(variant: Variant, teacher: Topology = SD15) -> dict[str, str]:
    """Student LDM block name -> teacher LDM block name it is initialised from."""
    student = variant.student(teacher)
    by_pos = {(b.role, b.level, b.slot): b.ldm for b in blocks(teacher)}
    keep = {"down": variant.down_keep, "up": variant.up_keep}
    mapping = {}
    for b in blocks(student):
        slot = keep[b.role][b.slot] if b.role in keep else b.slot
        mapping[b.ldm] = by_pos[(b.role, b.level, slot)]
    return mapping


def hook_pairs(variant: Variant, teacher: Topology = SD15) -> list[tuple[str, str]]:
    """(teacher module, student module) pairs, diffusers names, whose outputs the feature loss compares.

    Each down and up level is compared at its output. Where the student lost a level's
    downsampler (tiny's innermost kept level), both sides are compared before it instead: at the
    last attention's `proj_out` (or last resnet) of that level.
    """
    student = variant.student(teacher)
    pairs = []
    for lvl in range(student.levels):
        t_name, s_name = f"down_blocks.{lvl}", f"down_blocks.{lvl}"
        if lvl == student.levels - 1 and lvl < teacher.levels - 1:
            t_name = _level_tail(teacher, lvl)
            s_name = _level_tail(student, lvl)
        pairs.append((t_name, s_name))
    for lvl in reversed(range(student.levels)):
        pairs.append((f"up_blocks.{teacher.levels - 1 - lvl}", f"up_blocks.{student.levels - 1 - lvl}"))
    return pairs


def _level_tail(t: Topology, lvl: int) -> str:
    """Diffusers name of the last module of down level `lvl` before its downsampler."""
    j = t.layers_per_block - 1
    return f"down_blocks.{lvl}.attentions.{j}.proj_out" if t.attention[lvl] else f"down_blocks.{lvl}.resnets.{j}"
