"""The published distilled students (Nota's BK-SDM, Segmind's small-sd/tiny-sd) read as sdkd students, and `sdkd convert`.

Nota's and Segmind's diffusers folders describe their UNets honestly (BK-SDM base/small/tiny:
`layers_per_block` 1, `mid_block_type` null for small and tiny, three levels for tiny; Segmind's
small-sd is BK-SDM base's shape, tiny-sd BK-SDM tiny's), so they open like any diffusers folder.
Single files made from them with diffusers' `convert_diffusers_to_original_stable_diffusion.py`
do not: that script numbers every block at its SD1.5 slot (gaps where blocks were removed) and
leaves blocks it has no slot for under their diffusers names. Those files are read back here the
way ComfyUI's model detection works: the UNet's shape is read off its diffusers-named keys, and
the keys are renamed through the key map that shape derives from the variant spec.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .checkpoint import RenamedSource, Source, open_model, resolve
from .convert import UNET, unet_map
from .detect import ModelInfo, describe
from .errors import SdkdError
from .export import Outputs, add_output_options
from .progress import ProgressFn
from .prune import Exported, Target, checkpoint_path, export_model, teacher_metadata
from .variants import SD15, Topology, Variant, get_variant


def topology_from_diffusers_keys(keys: list[str], shape: Callable[[str], tuple[int, ...]],
                                 unseen: dict | None = None) -> Topology:
    """The UNet topology that diffusers-named UNet keys (no prefix) spell out; `unseen` supplies heads and norm groups."""
    def indices(prefix: str) -> list[int]:
        return sorted({int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)})

    levels = indices("down_blocks.")
    if not levels or levels != list(range(len(levels))) or "conv_in.weight" not in keys:
        raise SdkdError("the UNet's down blocks are not numbered 0..N: not an SD-style UNet")
    per_level = [len(indices(f"down_blocks.{i}.resnets.")) for i in levels]
    up = [len(indices(f"up_blocks.{i}.resnets.")) for i in levels]
    if len(set(per_level)) != 1 or set(up) != {per_level[0] + 1}:
        raise SdkdError(f"the UNet has {per_level} resnets per down level and {up} per up level: not a shape sdkd knows")
    attention = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in levels)
    to_k = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    first = next((f"down_blocks.{i}.attentions.0.transformer_blocks." for i in levels if attention[i]), None)
    width = shape("conv_in.weight")[0]
    return Topology(
        model_channels=width,
        channel_mult=tuple(shape(f"down_blocks.{i}.resnets.0.conv2.weight")[0] // width for i in levels),
        attention=attention,
        layers_per_block=per_level[0],
        mid_block=any(k.startswith("mid_block.") for k in keys),
        context_dim=shape(to_k)[1] if to_k else SD15.context_dim,
        in_channels=shape("conv_in.weight")[1],
        out_channels=shape("conv_out.weight")[0],
        transformer_depth=len(indices(first)) if first else 1,
        **{k: v for k, v in (unseen or {}).items() if k in Topology.UNSEEN},
    )


def from_teacher_slots(src: Source, unseen: dict | None = None) -> Source:
    """`src` with a UNet numbered at SD1.5's slots (diffusers' conversion script) renamed to the layout its shape has."""
    slots = unet_map(SD15)
    ukeys = [k[len(UNET):] for k in src.keys() if k.startswith(UNET)]
    diffusers = {slots.to_diffusers(k) or k: k for k in ukeys}  # keys the script left unconverted are diffusers names
    topo = topology_from_diffusers_keys(list(diffusers), lambda k: src.shape(UNET + diffusers[k]), unseen)
    own = unet_map(topo)
    names = {k: k for k in src.keys() if not k.startswith(UNET)}
    for dk, k in diffusers.items():
        ldm = own.to_ldm(dk)
        if ldm is None:
            raise SdkdError(f"UNet key {k!r} has no place in a {topo.levels}-level UNet of its own shape")
        names[UNET + ldm] = UNET + k
    metadata = {**src.metadata, "sdkd_topology": json.dumps({k: getattr(topo, k) for k in Topology.UNSEEN})}
    return RenamedSource(src, names, metadata=metadata, has_ema=getattr(src, "has_ema", False))


def _folder_unseen(path: Path) -> dict:
    """Heads and norm groups from a diffusers folder's UNet config ({} for a single file)."""
    cfg = path / "unet" / "config.json"
    if not cfg.is_file():
        return {}
    c = json.loads(cfg.read_text())
    heads = c.get("attention_head_dim", SD15.num_heads)
    return {"num_heads": heads[0] if isinstance(heads, list) else heads, "norm_groups": c.get("norm_num_groups", 32)}


def open_student(path: str | Path) -> tuple[Source, ModelInfo]:
    """Any model sdkd reads, plus public students in either published layout, with what `describe` says of it."""
    p = resolve(path)
    src = open_model(p)
    info = describe(src)
    if info.kind != "unknown" or info.topology is not None or not any(k.startswith(UNET) for k in src.keys()):
        return src, info
    try:
        renamed = from_teacher_slots(src, _folder_unseen(p))
    except SdkdError:
        return src, info  # not that layout either: keep the first reason
    renamed_info = describe(renamed)
    return (renamed, renamed_info) if renamed_info.kind in ("sd1", "student") else (src, info)


def check_student_of(info: ModelInfo, teacher: Topology, flag: str, teacher_flag: str) -> Variant:
    """The variant of `info`, refusing unless it is a BK-SDM student whose shape is its variant's student of `teacher`
    (same widths)."""
    if info.kind != "student":
        what = "a full SD1.x checkpoint" if info.kind == "sd1" else f"not a BK-SDM student ({info.reason})"
        raise SdkdError(f"{flag} is {what}; pass a BK-SDM base/small/tiny student (one of sdkd's, or a Nota "
                        "BK-SDM / Segmind folder or a file converted from one)")
    variant = get_variant(info.variant)
    expected = replace(variant.student(teacher), **{k: getattr(info.topology, k) for k in Topology.UNSEEN})
    if expected != info.topology:
        raise SdkdError(f"{flag} is a {info.variant} student of a teacher of other widths ({info.topology}); "
                        f"{teacher_flag} would give {expected}")
    return variant


def convert(student: str | Path, out: str | Path, dtype: str = "fp16", overwrite: bool = False,
            progress: ProgressFn | None = None) -> Exported:
    """Write a public student (folder or converted file) as the single file, yaml and metadata hosts load."""
    path = resolve(student)
    src, info = open_student(path)
    if info.kind not in ("sd1", "student"):
        raise SdkdError(f"{path.name}: {info.reason}")
    missing = [name for name, present in (("VAE", info.has_vae), ("text encoder", info.has_text_encoder)) if not present]
    if missing:
        raise SdkdError(f"{path.name} has no {' or '.join(missing)}; give the whole pipeline folder (unet/, vae/, "
                        "text_encoder/) so the converted file carries its own")
    out_path = checkpoint_path(out)
    if out_path.resolve() == path.resolve():
        raise SdkdError(f"--out {out_path} is the input itself; sdkd never overwrites its input")
    for final in (out_path, out_path.with_suffix(".yaml")):
        Outputs(overwrite).check(final)
    hashed = teacher_metadata(path)
    extra = lambda: {"sdkd_source": hashed()["sdkd_teacher"], "sdkd_source_sha256": hashed()["sdkd_teacher_sha256"]}  # noqa: E731
    return export_model(src, {k: k for k in src.keys()}, info.topology, info.variant, Target(out_path, dtype, overwrite),
                        extra, progress)


def cmd_convert(a: argparse.Namespace) -> int:
    """`sdkd convert`: report what was read and where it went."""
    from .progress import tqdm_progress

    r = convert(a.student, a.out, a.dtype, a.overwrite, tqdm_progress())
    print(f"{r.variant}: {r.unet_params:,} UNet parameters -> {r.checkpoint} (+ {r.yaml.name}) in {r.seconds:.1f}s")
    return 0


def add_commands(sub) -> None:
    """`sdkd convert`."""
    s = sub.add_parser("convert", help="write a public BK-SDM/Segmind student (diffusers folder or converted file) "
                                       "as a single file A1111, Forge and ComfyUI load")
    s.add_argument("student", help="e.g. a downloaded nota-ai/bk-sdm-small or segmind/tiny-sd folder")
    add_output_options(s)
    s.set_defaults(fn=cmd_convert)
