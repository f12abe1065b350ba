"""What is this file? Read the UNet's shape off its keys (ComfyUI's model_detection style) and classify it."""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from .checkpoint import Source, open_model, unet_keys
from .configs import VaeShape, text_encoder_config
from .convert import TEXT, UNET, VAE
from .errors import SdkdError
from .variants import Topology, explain_unknown, identify

LORA_MARKERS = ("lora_down", "lora_up", "lora_A.", "lora_B.", "hada_w1", "lokr_w1", ".alpha")


@dataclass
class ModelInfo:
    """What a file is, as `sdkd inspect` reports it."""

    kind: str  # sd1, student, sdxl, sd2, lora, vae, text_encoder, unknown
    variant: str | None = None  # teacher, base, small, tiny
    reason: str = ""  # why it can't be pruned, when it can't
    topology: Topology | None = None
    unet_params: int = 0
    dtype: str | None = None
    has_vae: bool = False
    has_text_encoder: bool = False
    has_ema: bool = False
    portable: bool = False  # a small/tiny file carrying an identity middle block for hosts without sdkd
    inpainting: bool = False
    metadata: dict[str, str] | None = None

    def as_dict(self) -> dict:
        """JSON-ready form."""
        d = {k: v for k, v in self.__dict__.items() if k != "topology"}
        d["topology"] = self.topology.__dict__ if self.topology else None
        return d


@contextmanager
def reading(part: str) -> Iterator[None]:
    """Turn any lookup that trips on a file's own keys (one missing, one of an odd shape) into the one-line SdkdError:
    a partial file is bad input, never a traceback. A context manager or a decorator."""
    try:
        yield
    except KeyError as e:
        raise SdkdError(f"{part} lacks {e.args[0]!r}: the file is partial or damaged; re-download or re-export it") from e
    except (IndexError, ValueError, ZeroDivisionError) as e:
        raise SdkdError(f"{part} has weights of unexpected shapes ({e}): the file is partial or damaged; "
                        "re-download or re-export it") from e


@reading("the UNet")
def read_topology(src: Source) -> Topology:
    """The UNet topology of an LDM-named source; raises SdkdError if the blocks don't form an SD-style UNet."""
    keys = set(unet_keys(src))

    def shape(k: str) -> tuple[int, ...]:
        return src.shape(UNET + k)

    indices = sorted({int(k.split(".")[1]) for k in keys if k.startswith("input_blocks.")})
    if indices != list(range(len(indices))) or len(indices) < 2:
        raise SdkdError("the UNet's input blocks are not numbered 0..N without gaps: not an SD-style UNet, or a damaged export")
    levels: list[list[int]] = [[]]
    for i in indices[1:]:
        if f"input_blocks.{i}.0.op.weight" in keys:
            levels.append([])
        else:
            levels[-1].append(i)
    counts = {len(lv) for lv in levels}
    if len(counts) != 1 or 0 in counts:
        raise SdkdError(f"the UNet has uneven levels ({[len(lv) for lv in levels]} resnets): not a shape sdkd knows")
    model_channels, in_channels = shape("input_blocks.0.0.weight")[:2]
    widths = [shape(f"input_blocks.{lv[0]}.0.out_layers.3.weight")[0] for lv in levels]
    to_k = sorted(k for k in keys if k.endswith("attn2.to_k.weight"))
    first_attn = next((f"input_blocks.{lv[0]}.1." for lv in levels if f"input_blocks.{lv[0]}.1.proj_in.weight" in keys), None)
    depth = len({k.split(".")[4] for k in keys if first_attn and k.startswith(first_attn + "transformer_blocks.")}) or 1
    topo = Topology(
        model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths),
        attention=tuple(f"input_blocks.{lv[0]}.1.proj_in.weight" in keys for lv in levels),
        layers_per_block=counts.pop(),
        mid_block="middle_block.0.in_layers.0.weight" in keys,
        context_dim=shape(to_k[0])[1] if to_k else 768,
        in_channels=in_channels,
        out_channels=shape("out.2.weight")[0],
        transformer_depth=depth,
    )
    n_out = len({k.split(".")[1] for k in keys if k.startswith("output_blocks.")})
    if n_out != topo.levels * topo.up_layers:
        raise SdkdError(f"the UNet has {n_out} output blocks where its input side implies {topo.levels * topo.up_layers}: a damaged export")
    recorded = _recorded(src.metadata, "sdkd_topology")
    return replace(topo, **{k: recorded[k] for k in Topology.UNSEEN if k in recorded})


def _recorded(metadata: dict, key: str) -> dict:
    """The JSON object an sdkd export wrote into metadata `key` ({} if none or unreadable); A1111 hands metadata
    over with such values already decoded."""
    found = metadata.get(key, "{}")
    try:
        found = found if isinstance(found, dict) else json.loads(found)
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@reading("the VAE")
def vae_shape(src: Source) -> VaeShape | None:
    """Widths of the file's VAE (LDM names), or None without one."""
    key = VAE + "encoder.conv_in.weight"
    if key not in set(src.keys()):
        return None
    ch = src.shape(key)[0]
    names = [k for k in src.keys() if k.startswith(VAE + "encoder.down.")]
    levels = sorted({int(k.split(".")[3]) for k in names})
    layers = len({k.split(".")[5] for k in names if ".block." in k and k.split(".")[3] == "0"})
    mult = tuple(src.shape(f"{VAE}encoder.down.{i}.block.0.conv2.weight")[0] // ch for i in levels)
    recorded = _recorded(src.metadata, "sdkd_vae")
    return VaeShape(ch, mult, layers, **{k: recorded[k] for k in VaeShape.UNSEEN if k in recorded})


@reading("the text encoder")
def text_encoder_shape(src: Source) -> dict | None:
    """`CLIPTextConfig` arguments for the file's text encoder (LDM names), or None without one."""
    shapes = {k[len(TEXT):]: src.shape(k) for k in src.keys() if k.startswith(TEXT)}
    return text_encoder_config(shapes) if shapes else None


def describe(src: Source) -> ModelInfo:
    """Classify a normalised LDM-named source: SD1 teacher, sdkd student, or what else it is and why it won't prune."""
    keys = src.keys()
    info = ModelInfo(
        kind="unknown", metadata=dict(src.metadata),
        has_vae=any(k.startswith(VAE) for k in keys),
        has_text_encoder=any(k.startswith(TEXT) for k in keys),
        has_ema=getattr(src, "has_ema", False), portable=getattr(src, "portable", False),
    )
    ukeys = [k for k in keys if k.startswith(UNET)]
    if ukeys:
        info.unet_params = sum(math.prod(src.shape(k)) for k in ukeys)
        floats = Counter(str(src.dtype(k)).replace("torch.", "") for k in ukeys if src.dtype(k).is_floating_point)
        info.dtype = floats.most_common(1)[0][0] if floats else None
    if any(k.startswith(("conditioner.", UNET + "label_emb.")) for k in keys):
        return _refuse(info, "sdxl", "this is an SDXL checkpoint; sdkd compresses SD1.x models")
    if UNET + "input_blocks.0.0.weight" not in keys:
        return _not_a_checkpoint(info, keys)
    try:
        if _sd2_marks(src, keys):
            return _refuse(info, "sd2", "this is an SD2.x checkpoint; sdkd compresses SD1.x models")
        topo = read_topology(src)
        vae_shape(src)  # prune and the loaders read these: a partial file is refused here, not halfway through a job
        text_encoder_shape(src)
    except SdkdError as e:
        return _refuse(info, "unknown", str(e))
    info.topology = topo
    info.inpainting = topo.in_channels == 9
    info.variant = identify(topo)
    if info.variant is None:
        return _refuse(info, "unknown", explain_unknown(topo))
    info.kind = "sd1" if info.variant == "teacher" else "student"
    return info


@reading("the UNet")
def _sd2_marks(src: Source, keys: list[str]) -> bool:
    """SD2.x's signs, read off single keys so a partial file is still named: an OpenCLIP text encoder, linear
    `proj_in` layers, 1024-wide cross-attention."""
    return any(k.startswith("cond_stage_model.model.")
               or (k.startswith(UNET) and k.endswith("proj_in.weight") and len(src.shape(k)) == 2)
               or (k.startswith(UNET) and k.endswith("attn2.to_k.weight") and src.shape(k)[-1] == 1024) for k in keys)


def _refuse(info: ModelInfo, kind: str, reason: str) -> ModelInfo:
    """Mark `info` as something sdkd cannot prune, with the one-line reason."""
    info.kind, info.reason = kind, reason
    return info


def _not_a_checkpoint(info: ModelInfo, keys: list[str]) -> ModelInfo:
    """Classify a file with no LDM UNet: a LoRA, a VAE, a text encoder, a bare diffusers UNet, or nothing."""
    if any(m in k for k in keys for m in LORA_MARKERS):
        return _refuse(info, "lora", "this is a LoRA, not a checkpoint; sdkd prunes full SD1.x checkpoints")
    if any(k.startswith(("encoder.", "decoder.", VAE)) for k in keys):
        return _refuse(info, "vae", "this is a VAE on its own; sdkd prunes full SD1.x checkpoints")
    if any(k.startswith(("text_model.", TEXT, "transformer.text_model.")) for k in keys):
        return _refuse(info, "text_encoder", "this is a text encoder on its own; sdkd prunes full SD1.x checkpoints")
    if any(k.startswith("down_blocks.") for k in keys):
        return _refuse(info, "unknown", "this is a bare diffusers UNet file; pass the whole diffusers pipeline folder instead")
    return _refuse(info, "unknown", "not a model: no UNet, VAE, text encoder or LoRA weights found")


def require_teacher(info: ModelInfo, name: str, action: str = "prune") -> None:
    """Raise the user-facing reason unless `info` describes an SD1.x teacher sdkd can `action` (prune, distil ...):
    the message names the job's own action."""
    if info.kind == "student":
        raise SdkdError(f"{name}: this is already a BK-SDM {info.variant} student; {action} its teacher (the full SD1.x "
                        "checkpoint) instead")
    if info.kind != "sd1":
        raise SdkdError(f"{name}: {info.reason}")


def open_trainable(path: Path, label: str, job: str) -> tuple[Source, ModelInfo]:
    """Open and describe a model a LoRA is trained for, refusing what is not SD1.x or a BK-SDM student and inpainting
    models (messages start with `label`; `job` says what needs a normal checkpoint)."""
    src = open_model(path)
    info = describe(src)
    if info.kind not in ("sd1", "student"):
        raise SdkdError(f"{label}: {info.reason}")
    if info.inpainting:
        raise SdkdError(f"{label}: {job} a normal (text-to-image) checkpoint, not an inpainting one")
    return src, info
