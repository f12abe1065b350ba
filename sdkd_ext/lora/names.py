"""Which layers a LoRA can target in one model, and every way LoRA files spell their names.

A `Layout` lists the model's weight-bearing modules under one canonical id (the LDM single-file
name without `.weight`, e.g. `model.diffusion_model.input_blocks.4.1.proj_in`) with their weight
shapes, plus a table from each spelling found in the wild to that id: kohya names in LDM or
diffusers terms (underscore-joined, so they are resolved against the real names, never split),
and dotted diffusers/peft names. All of it is derived from the topology's key maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..checkpoint import Source
from ..convert import TEXT, UNET, unet_map
from ..variants import VARIANTS, Topology, full_topology, identify

KOHYA_UNET = "lora_unet_"
KOHYA_TE = "lora_te_"
TE_ROOT = "text_model."  # CLIP text-model module names, as LDM files and transformers 4.x spell them
WEIGHT = ".weight"


def flat(name: str) -> str:
    """A dotted module name as kohya and A1111 spell it (`name.replace('.', '_')`)."""
    return name.replace(".", "_")


@dataclass(frozen=True)
class Layout:
    """The LoRA-targetable modules of one model: id -> weight shape, and spelling -> id."""

    topology: Topology
    shapes: dict[str, tuple[int, ...]]
    spellings: dict[str, str]

    @property
    def variant(self) -> str | None:
        """teacher, base, small, tiny (or None for a shape sdkd does not know)."""
        return identify(self.topology)

    def diffusers_name(self, module_id: str) -> str:
        """The module's name inside diffusers' UNet (`down_blocks...`) or a CLIP text model (`text_model...`)."""
        if module_id.startswith(UNET):
            return unet_map(self.topology).to_diffusers(module_id[len(UNET):] + WEIGHT)[: -len(WEIGHT)]
        return module_id[len(TEXT):]


def kohya_name(module_id: str) -> str:
    """kohya key stem of a module: `lora_unet_<LDM path>` or `lora_te_<text_model path>`, dots as underscores."""
    if module_id.startswith(UNET):
        return KOHYA_UNET + flat(module_id[len(UNET):])
    return KOHYA_TE + flat(module_id[len(TEXT):])


def build_layout(topology: Topology, te_shapes: dict[str, tuple[int, ...]]) -> Layout:
    """The layout of a model with UNet `topology` and text-encoder weights of `te_shapes` (`text_model.*` names)."""
    shapes: dict[str, tuple[int, ...]] = {}
    spellings: dict[str, str] = {}
    pmap = unet_map(topology)
    for key, shape in _unet_shapes(topology).items():
        path = key[: -len(WEIGHT)]
        module_id = UNET + path
        dif = pmap.to_diffusers(key)[: -len(WEIGHT)]
        shapes[module_id] = shape
        for spelling in (KOHYA_UNET + flat(path), KOHYA_UNET + flat(dif), dif):
            spellings[spelling] = module_id
    for key, shape in te_shapes.items():
        if key.endswith(WEIGHT):
            path = key[: -len(WEIGHT)]
            module_id = TEXT + path
            shapes[module_id] = shape
            for spelling in (KOHYA_TE + flat(path), path, path[len(TE_ROOT):]):
                spellings[spelling] = module_id
    if len(set(spellings.values())) != len(shapes):
        raise AssertionError("two module names flatten to the same LoRA key")  # the maps are derived: never expected
    return Layout(topology, shapes, spellings)


@lru_cache(maxsize=16)
def _unet_shapes(topology: Topology) -> dict[str, tuple[int, ...]]:
    """LDM UNet weight key -> shape, from a diffusers UNet of `topology` built on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    from ..configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(topology))
    pmap = unet_map(topology)
    return {pmap.to_ldm(k): tuple(v.shape) for k, v in unet.state_dict().items() if k.endswith(WEIGHT)}


@lru_cache(maxsize=1)
def sd15_te_shapes() -> dict[str, tuple[int, ...]]:
    """SD1.5's CLIP text-encoder weight shapes (`text_model.*`), from its config on the meta device."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..configs import sd15

    with torch.device("meta"):
        return te_shapes_of(CLIPTextModel(CLIPTextConfig(**sd15("text_encoder"))))


def te_shapes_of(text_encoder: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight shapes of a transformers CLIP text model under `text_model.*` names (any transformers version)."""
    from ..compat import clip_prefix

    prefix = clip_prefix(text_encoder)
    return {TE_ROOT + k[len(prefix):]: tuple(v.shape) for k, v in text_encoder.state_dict().items()}


def layout_of_source(src: Source, topology: Topology) -> Layout:
    """Layout of an LDM-named model file (text-encoder shapes from the file, SD1.5's if it has none)."""
    te = {k[len(TEXT):]: src.shape(k) for k in src.keys() if k.startswith(TEXT + TE_ROOT)}
    return build_layout(topology, te or sd15_te_shapes())


def layout_of_pipeline(pipe) -> Layout:
    """Layout of a loaded diffusers Stable Diffusion pipeline."""
    from ..configs import topology_from_diffusers

    return build_layout(topology_from_diffusers(dict(pipe.unet.config)), te_shapes_of(pipe.text_encoder))


def relatives(layout: Layout) -> dict[str, Layout]:
    """Layouts of the teacher and every student at this model's widths (same text encoder), by variant name."""
    teacher = full_topology(layout.topology)
    te = {m[len(TEXT):] + WEIGHT: s for m, s in layout.shapes.items() if m.startswith(TEXT)}
    tops = {"teacher": teacher, **{n: v.student(teacher) for n, v in VARIANTS.items()}}
    return {n: layout if t == layout.topology else build_layout(t, te) for n, t in tops.items()}
