"""Port a LoRA made for the full SD1.x model onto a BK-SDM student through the variant spec.

The student's blocks are copies of some teacher blocks, so a teacher LoRA's update for a kept
block is exactly right for the student's copy: kept modules are renamed by the spec's block map,
modules in removed blocks are dropped, the text encoder's are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import open_model
from ..convert import UNET, student_key, student_renamer
from ..detect import describe
from ..errors import SdkdError
from ..export import Outputs, sha256_file
from .file import Lora, check_made_for, fits, kohya_metadata, load_raw, resolve, write_kohya
from .names import Layout, build_layout, layout_of_source, relatives, sd15_te_shapes
from ..prune import checkpoint_path, default_out
from ..variants import SD15, Variant, get_variant


@dataclass
class Ported:
    """Where a ported LoRA went and what survived."""

    path: Path
    variant: str
    kept: int
    dropped: list[str]  # teacher module ids in blocks the student removed

    def dropped_blocks(self) -> list[str]:
        """The teacher's LDM blocks the dropped modules lay in (`input_blocks.2`, `middle_block`, ...), in order."""
        blocks = {}
        for m in self.dropped:
            parts = m[len(UNET):].split(".")
            blocks[".".join(parts[:1] if parts[0] == "middle_block" else parts[:2])] = None
        return list(blocks)


def port_modules(lora: Lora, teacher: Layout, variant: Variant) -> tuple[dict, list[str]]:
    """(student module id -> module, dropped teacher module ids) for a LoRA resolved on the teacher's layout."""
    renamer = student_renamer(variant, teacher.topology)
    kept, dropped = {}, []
    for module_id, mod in lora.modules.items():
        if not module_id.startswith(UNET):
            kept[module_id] = mod  # the text encoder is shared
            continue
        new = student_key(module_id[len(UNET):], renamer)
        if new is None:
            dropped.append(module_id)
        else:
            kept[UNET + new] = mod
    return kept, dropped


def target_layouts(to: str) -> tuple[Variant, Layout, Layout, dict[str, str]]:
    """(variant, teacher layout, student layout, base-model metadata) for `--to VARIANT` or `--to STUDENT_FILE`."""
    path = Path(to).expanduser()
    if not path.exists():
        teacher = build_layout(SD15, sd15_te_shapes())
        variant = get_variant(to)
        return variant, teacher, relatives(teacher)[variant.name], {}
    src = open_model(path)
    info = describe(src)
    if info.kind != "student":
        raise SdkdError(f"{path.name}: --to needs a BK-SDM student or a variant name; this is "
                        + ("an SD1.x teacher (its own LoRAs need no port)" if info.kind == "sd1" else info.reason))
    student = layout_of_source(src, info.topology)
    base = {"sdkd_base": path.name}
    if path.is_file():
        base["sdkd_base_sha256"] = sha256_file(path)
    return get_variant(info.variant), relatives(student)["teacher"], student, base


def port_lora(lora_path: str | Path, to: str, out: str | Path | None = None, overwrite: bool = False,
              alpha_equals_rank: bool = False) -> Ported:
    """Write the student version of a teacher LoRA as a kohya file with LDM names for the student's topology."""
    src_path = Path(lora_path).expanduser()
    v, teacher, student, base = target_layouts(to)
    variant = v.name
    out_path = checkpoint_path(out) if out else default_out(src_path, variant)
    if out_path.resolve() == src_path.resolve():
        raise SdkdError(f"--out {out_path} is the input LoRA itself; sdkd never overwrites its input")
    Outputs(overwrite).check(out_path)
    raw = load_raw(src_path)
    if "sdkd_ported_from" in raw.metadata:
        raise SdkdError(f"{raw.name}: this LoRA was already ported (from {raw.metadata['sdkd_ported_from']} to "
                        f"BK-SDM {raw.metadata.get('sdkd_variant')}); port the original instead")
    check_made_for(raw, teacher)
    lora = resolve(raw, teacher, alpha_equals_rank)
    if fits(raw, student):
        raise SdkdError(f"{raw.name}: this LoRA already fits the BK-SDM {variant} student as it is (made for a student, "
                        "or it touches only layers the student shares unchanged); it needs no port")
    kept, dropped = port_modules(lora, teacher, v)
    if not kept:
        raise SdkdError(f"{raw.name}: every module of this LoRA lies in blocks the BK-SDM {variant} student removed; nothing to port")
    ported = Lora(kept, lora.metadata)
    provenance = {"sdkd_ported_from": raw.name, "sdkd_ported_from_sha256": sha256_file(src_path) if src_path.is_file() else "",
                  "sdkd_ported_dropped": str(len(dropped)), **base}
    write_kohya(ported, out_path, kohya_metadata(ported, variant, provenance), overwrite)
    return Ported(out_path, variant, len(kept), dropped)
