"""LoRA files in the formats people have, read into one form and written as kohya files every host applies.

Reading accepts kohya keys (`lora_unet_*`/`lora_te_*`, LDM- or diffusers-style names, LoCon and
LyCORIS parts), diffusers/peft keys (`unet.down_blocks...lora_A.weight`, `...lora.down.weight`,
the old attention-processor keys) and peft folders. Every module is resolved against a `Layout`
and checked against its weight shape; a LoRA that does not fit is refused with the reason (made
for SDXL/SD2, for the full model, for another student, or matching nothing), never half-applied.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import DictSource, open_file
from ..convert import UNET
from ..detect import describe
from ..errors import SdkdError
from ..export import atomic_outputs, plan_from, write_safetensors
from .names import Layout, kohya_name, relatives

DOWN, UP, MID, ALPHA = "lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha"
_DOTTED_PARTS = {  # diffusers/peft key endings -> kohya part names
    "lora_A.weight": DOWN, "lora_B.weight": UP, "lora_A.default.weight": DOWN, "lora_B.default.weight": UP,
    "lora.down.weight": DOWN, "lora.up.weight": UP, "alpha": ALPHA,
    "lora_magnitude_vector": "dora_scale", "lora_B.bias": "lora_up.bias",
}
_LEGACY_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_DOTTED_PREFIXES = ("unet.", "text_encoder.", "base_model.model.")
_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.")
PEFT_FILES = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.bin", "pytorch_lora_weights.bin")
CONTEXT_FAMILIES = {1024: "SD2.x", 2048: "SDXL"}  # cross-attention width -> model family
TE_FAMILIES = {1024: "SD2.x", 1280: "SDXL"}  # text-encoder width -> model family


@dataclass
class LoraModule:
    """One layer's LoRA: its tensors under kohya part names (`lora_down.weight`, ...) and its alpha."""

    tensors: dict[str, torch.Tensor]
    alpha: float | None = None

    @property
    def is_lora(self) -> bool:
        """Plain LoRA/LoCon (down/up, optional mid), which sdkd can apply; else a LyCORIS kind it only renames."""
        return DOWN in self.tensors and set(self.tensors) <= {DOWN, UP, MID}

    @property
    def rank(self) -> int | None:
        """Inner dimension of a LoRA/LoCon module."""
        return self.tensors[DOWN].shape[0] if DOWN in self.tensors else None

    def dims(self) -> tuple[int, int] | None:
        """(out, in x kernel) the module's update has, where its parametrisation tells (LoRA, LoCon, LoHa)."""
        t = self.tensors
        if DOWN in t and UP in t:
            inner = t[DOWN].flatten(1).shape[1] * (math.prod(t[MID].shape[2:]) if MID in t else 1)
            return t[UP].shape[0], inner
        if "hada_w1_a" in t and "hada_w1_b" in t and "hada_t1" not in t:
            return t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1]
        return None

    def delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight update (alpha/rank scaled, fp32) in the target weight's shape."""
        t = {k: v.float() for k, v in self.tensors.items()}
        up, down = t[UP].flatten(1), t[DOWN].flatten(1)
        if MID in t:  # LoCon with a Tucker core: down/up are 1x1, the kernel lives in mid
            d = torch.einsum("oa,abhw,bi->oihw", up, t[MID], down)
        else:
            d = up @ down
        return d.reshape(shape) * (self.alpha / self.rank)


@dataclass
class Lora:
    """A LoRA resolved to one model's layers: module id (LDM name, see `names`) -> weights."""

    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)

    def network_dim(self) -> tuple[int, float] | None:
        """The most common (rank, alpha), as kohya's `ss_network_dim`/`ss_network_alpha` report it."""
        pairs = Counter((m.rank, m.alpha) for m in self.modules.values() if m.rank is not None)
        return pairs.most_common(1)[0][0] if pairs else None


@dataclass
class RawLora:
    """A LoRA file's tensors grouped by the module name it spells, before resolving names."""

    name: str
    groups: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str]
    config: dict | None  # peft/diffusers adapter config, where the file has one


def load_raw(path: str | Path) -> RawLora:
    """Read a LoRA file (or peft/diffusers LoRA folder) and group its tensors by module name."""
    p = Path(path).expanduser()
    if p.is_dir():
        weights = next((p / n for n in PEFT_FILES if (p / n).is_file()), None)
        if weights is None:
            raise SdkdError(f"{p}: no LoRA weights in this folder (looked for {', '.join(PEFT_FILES)})")
        p = weights
    if not p.is_file():
        raise SdkdError(f"{p}: no such file")
    src = open_file(p)
    kind = describe(src).kind
    if kind not in ("lora", "unknown"):
        raise SdkdError(f"{p.name}: this is a model file ({kind}), not a LoRA")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key in src.keys():
        if key.startswith(_SDXL_PREFIXES):
            raise SdkdError(f"{p.name}: this LoRA is for SDXL (it has keys for SDXL's second text encoder, e.g. {key}); "
                            "sdkd works with SD1.x models")
        name, part = split_key(key)
        groups.setdefault(name, {})[part] = src.get(key)
    if not groups:
        raise SdkdError(f"{p.name}: the file holds no tensors")
    return RawLora(p.name, groups, dict(src.metadata), _adapter_config(p, src.metadata))


def split_key(key: str) -> tuple[str, str]:
    """(module spelling, kohya part name) of one LoRA key in any supported format."""
    if key.startswith("lora_"):
        name, _, part = key.partition(".")
        return name, part
    m = _LEGACY_PROCESSOR.match(key)
    if m:
        module = m[2] + (".0" if m[2] == "to_out" else "")
        return _strip_prefix(f"{m[1]}.{module}"), DOWN if m[3] == "down" else UP
    for ending, part in _DOTTED_PARTS.items():
        if key.endswith("." + ending):
            return _strip_prefix(key[: -len(ending) - 1]), part
    return key, ""  # unknown: reported as a name that matches nothing


def _strip_prefix(name: str) -> str:
    """A dotted module name without the component prefix diffusers or peft put before it."""
    for prefix in _DOTTED_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _adapter_config(weights: Path, metadata: dict[str, str]) -> dict | None:
    """peft adapter config: diffusers' `lora_adapter_metadata` in the file, else `adapter_config.json` beside it."""
    if metadata.get("lora_adapter_metadata"):
        return json.loads(metadata["lora_adapter_metadata"])
    beside = weights.parent / "adapter_config.json"
    return json.loads(beside.read_text()) if beside.is_file() else None


def fits(raw: RawLora, layout: Layout) -> bool:
    """True if every module of the LoRA names a layer of `layout` with the right shape."""
    return not _misfits(raw, layout)


def _misfits(raw: RawLora, layout: Layout) -> list[str]:
    """The LoRA's module spellings that name no layer of `layout`, or one of another shape."""
    bad = []
    for name, parts in raw.groups.items():
        module_id = layout.spellings.get(name)
        dims = LoraModule(parts).dims()
        if module_id is None or (dims and dims != _flat_shape(layout.shapes[module_id])):
            bad.append(name)
    return bad


def _flat_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in x kernel) of a weight shape."""
    return shape[0], math.prod(shape[1:])


def resolve(raw: RawLora, layout: Layout, alpha_equals_rank: bool = False) -> Lora:
    """The LoRA's modules on `layout`'s layers, with alphas; SdkdError (nothing applied) unless all of it fits."""
    bad = _misfits(raw, layout)
    if bad:
        raise SdkdError(f"{raw.name}: {diagnose(raw, layout, bad)}")
    modules: dict[str, LoraModule] = {}
    missing_alpha = []
    for name, parts in raw.groups.items():
        module_id = layout.spellings[name]
        tensors = {k: v for k, v in parts.items() if k != ALPHA}
        _check_complete(raw.name, name, tensors)
        mod = LoraModule(tensors, float(parts[ALPHA].item()) if ALPHA in parts else None)
        if mod.alpha is None:
            mod.alpha = _config_alpha(raw.config, layout, module_id, mod.rank)
        if mod.alpha is None and alpha_equals_rank and mod.rank is not None:
            mod.alpha = float(mod.rank)
        if mod.alpha is None and mod.rank is not None:
            missing_alpha.append(name)
        modules[module_id] = mod
    if missing_alpha:
        raise SdkdError(
            f"{raw.name}: rank/alpha missing: {len(missing_alpha)} modules state no alpha (e.g. {missing_alpha[0]}) and the "
            "file has no adapter config; if it was trained with alpha = rank (the diffusers/peft default), pass --alpha-equals-rank")
    return Lora(modules, dict(raw.metadata))


def _check_complete(file: str, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a LoRA module whose down/up halves are missing or disagree on the rank."""
    down, up = tensors.get(DOWN), tensors.get(UP)
    if (down is None) != (up is None):
        raise SdkdError(f"{file}: rank/alpha missing: {name} has {'lora_down' if up is None else 'lora_up'} only; "
                        "the file is incomplete, re-download or re-export it")
    if down is not None and up.shape[1] != down.shape[0]:
        raise SdkdError(f"{file}: {name} has lora_down of rank {down.shape[0]} but lora_up of rank {up.shape[1]}: a damaged file")
    if not tensors:
        raise SdkdError(f"{file}: {name} has an alpha but no weights: the file is incomplete")


def _config_alpha(config: dict | None, layout: Layout, module_id: str, rank: int | None) -> float | None:
    """Alpha for one module from a peft/diffusers adapter config (its `alpha_pattern` and rsLoRA included)."""
    if not config or rank is None:
        return None
    component = "unet." if module_id.startswith(UNET) else "text_encoder."
    cfg = {k[len(component):]: v for k, v in config.items() if k.startswith(component)} or config
    if "lora_alpha" not in cfg:
        return None
    name = layout.diffusers_name(module_id)
    pattern = next((k for k in cfg.get("alpha_pattern") or {} if re.match(rf"(.*\.)?({k})$", name)), None)
    alpha = float(cfg["alpha_pattern"][pattern] if pattern else cfg["lora_alpha"])
    return alpha * math.sqrt(rank) if cfg.get("use_rslora") else alpha  # rsLoRA scales by alpha/sqrt(r)


def diagnose(raw: RawLora, layout: Layout, bad: list[str]) -> str:
    """Why a LoRA does not fit this model, in the user's terms, with the fix."""
    family = _family(raw, layout)
    if family:
        return f"this LoRA is for {family} (its layers have other widths); sdkd works with SD1.x models"
    for name, other in relatives(layout).items():
        if name != layout.variant and fits(raw, other):
            return made_for_message(name, layout.variant, raw.name)
    if len(bad) == len(raw.groups):
        return (f"none of the LoRA's {len(bad)} modules names a layer of an SD1.x UNet or text encoder "
                f"(e.g. {bad[0]!r}): not an SD1.x LoRA, or a format sdkd does not read")
    return (f"{len(bad)} of the LoRA's {len(raw.groups)} modules name no layer of this model or have other shapes "
            f"(e.g. {bad[0]!r}); it was made for a different model")


def made_for_message(made_for: str, here: str | None, file: str) -> str:
    """What to say when a LoRA made for one variant meets a model of another."""
    if made_for == "teacher":
        return (f"this LoRA was made for the full SD1.x model; on this BK-SDM {here} student its layers land on "
                f"missing or wrong blocks. Port it first: sdkd lora-port {file} --to {here}")
    if here == "teacher":
        return f"this LoRA was made for a BK-SDM {made_for} student (already ported or trained on one); it needs no port"
    return f"this LoRA was made for a BK-SDM {made_for} student, but the model is a BK-SDM {here} student"


def check_made_for(raw: RawLora, layout: Layout) -> None:
    """Refuse a LoRA whose sdkd metadata names another variant than the model's."""
    made_for = raw.metadata.get("sdkd_variant")
    if made_for and layout.variant and made_for != layout.variant:
        raise SdkdError(f"{raw.name}: {made_for_message(made_for, layout.variant, raw.name)}")


def _family(raw: RawLora, layout: Layout) -> str | None:
    """SD2.x or SDXL when the LoRA's cross-attention or text-encoder width says so."""
    context = layout.topology.context_dim
    hidden = next((s[1] for m, s in layout.shapes.items() if m.endswith("self_attn.q_proj")), None)
    for name, parts in raw.groups.items():
        down = parts.get(DOWN)
        if down is None or down.ndim < 2:
            continue
        width = down.shape[1]
        if re.search(r"attn2[._]to_[kv]$", name) and width != context and width in CONTEXT_FAMILIES:
            return CONTEXT_FAMILIES[width]
        if re.search(r"self_attn[._]q_proj$", name) and width != hidden and width in TE_FAMILIES:
            return TE_FAMILIES[width]
    return None


def read_lora(path: str | Path, layout: Layout, alpha_equals_rank: bool = False) -> Lora:
    """A LoRA file resolved onto the layers of `layout` (see `resolve`), refused if its metadata names another variant."""
    raw = load_raw(path)
    check_made_for(raw, layout)
    return resolve(raw, layout, alpha_equals_rank)


def kohya_tensors(lora: Lora, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """kohya state dict: `<lora_unet_/lora_te_ name>.<part>` tensors and an fp32 `.alpha` holding the real alpha."""
    out: dict[str, torch.Tensor] = {}
    for module_id, mod in lora.modules.items():
        stem = kohya_name(module_id)
        for part, t in mod.tensors.items():
            out[f"{stem}.{part}"] = t.detach().to(dtype or t.dtype).contiguous()
        if mod.alpha is not None:
            out[f"{stem}.{ALPHA}"] = torch.tensor(float(mod.alpha), dtype=torch.float32)
    return out


def kohya_metadata(lora: Lora, variant: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata hosts read from a kohya LoRA (base model version, rank, alpha) plus sdkd's own."""
    meta = {k: v for k, v in lora.metadata.items()  # training provenance; hashes of the source file no longer hold
            if k.startswith(("ss_", "modelspec.")) and "hash" not in k.split(".")[-1]}
    meta.update({"ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_network_module": "networks.lora"})
    dim = lora.network_dim()
    if dim:
        meta.update(ss_network_dim=str(dim[0]), ss_network_alpha=f"{dim[1]:g}")
    if variant:
        meta["sdkd_variant"] = variant
    meta.update(extra or {})
    return meta


def write_kohya(lora: Lora, out: Path, metadata: dict[str, str], overwrite: bool = False,
                dtype: torch.dtype | None = None) -> Path:
    """Write `lora` as a kohya `.safetensors` LoRA, atomically; refuses an existing file unless `overwrite`."""
    tensors = kohya_tensors(lora, dtype)
    src = DictSource(tensors)
    with atomic_outputs(overwrite) as outs:
        write_safetensors(outs.temp(out), plan_from(src, {k: k for k in tensors}, lambda n, d: d), metadata)
    return out

