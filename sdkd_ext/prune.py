"""Prune an SD1.x teacher into a BK-SDM student and export it as files every host loads."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .checkpoint import SHIPPED_DIR, Source, open_model, resolve
from .configs import NO_MIDDLE_BLOCK_LINES, PORTABLE_LINES, ldm_yaml, note_metadata
from .convert import TEXT, UNET, VAE, student_key, student_renamer
from .detect import ModelInfo, describe, require_teacher, vae_shape
from .errors import SdkdError
from .export import Outputs, atomic_outputs, parse_dtype, plan_from, sha256_file, write_safetensors
from .portable import identity_middle, identity_params, refuse_middle_block
from .progress import ProgressFn
from .variants import SD15, Topology, Variant

FORMAT_VERSION = "1"
MODEL_PREFIXES = (UNET, VAE, TEXT)


@dataclass
class Exported:
    """Where an export went and what it holds."""

    checkpoint: Path
    yaml: Path
    variant: str
    unet_params: int
    seconds: float
    diffusers: Path | None = None


@dataclass(frozen=True)
class Target:
    """Where and how an export is written: the .safetensors path (its .yaml beside it), the weights' dtype, whether
    existing files are replaced, and the optional diffusers folder and identity middle block."""

    out: Path
    dtype: str = "fp16"
    overwrite: bool = False
    diffusers: bool = False
    portable: bool = False


@dataclass(frozen=True)
class PruneJob:
    """One prune, as every front end builds it: the teacher file, the resolved variant, and how the student is written
    (`out` None: beside the teacher, see `default_out`)."""

    teacher: Path
    variant: Variant
    out: Path | None = None
    dtype: str = "fp16"
    ema: bool = False  # read the teacher's EMA weights where it has them
    overwrite: bool = False
    diffusers: bool = False
    portable: bool = False


def default_out(teacher: Path, variant: str) -> Path:
    """`<teacher>-bk-<variant>.safetensors` beside the teacher (A1111 and ComfyUI list it there); in the current
    folder for a model sdkd ships (never inside the installed package)."""
    stem = teacher.name if teacher.is_dir() else teacher.stem
    folder = Path.cwd() if teacher.resolve().parent == SHIPPED_DIR.resolve() else teacher.parent
    return folder / f"{stem}-bk-{variant}.safetensors"


def checkpoint_path(out: str | Path) -> Path:
    """The .safetensors path for an --out given with or without the suffix."""
    p = Path(out).expanduser()
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


def kept_unet(src: Source, variant: Variant, teacher: Topology) -> dict[str, str]:
    """Student UNet key -> teacher UNet key of `src` for every UNet tensor `variant` keeps of a `teacher`-shaped UNet."""
    renamer = student_renamer(variant, teacher)
    names = {}
    for k in src.keys():
        if k.startswith(UNET):
            new = student_key(k[len(UNET):], renamer)
            if new is not None:
                names[UNET + new] = k
    return names


def student_names(src: Source, info: ModelInfo, variant: Variant) -> dict[str, str]:
    """Student key -> teacher key for every tensor the student keeps (UNet renumbered, the rest as is)."""
    return {**kept_unet(src, variant, info.topology), **{k: k for k in src.keys() if not k.startswith(UNET)}}


def teacher_metadata(path: Path) -> Callable[[], dict[str, str]]:
    """Provenance of the teacher (file name, sha256 of the file or of a folder's UNet weights), hashed in a
    background thread while the student is written; call the result to wait for it."""
    target = path if path.is_file() else next((path / "unet").glob("diffusion_pytorch_model*"), None)
    pool = ThreadPoolExecutor(1)
    digest = pool.submit(sha256_file, target) if target else None
    pool.shutdown(wait=False)
    return lambda: {"sdkd_teacher": path.name, "sdkd_teacher_sha256": digest.result() if digest else ""}


def export_model(src: Source, names: dict[str, str], topology: Topology, variant: str, to: Target,
                 extra: dict[str, str] | Callable[[], dict[str, str]] | None = None,
                 progress: ProgressFn | None = None) -> Exported:
    """Write `<to.out>.safetensors` (LDM names, metadata; `variant` names the model in it) and its `.yaml`, optionally a
    diffusers folder, atomically.

    `extra` metadata may be a callable, evaluated only once the tensor data is written (see `teacher_metadata`);
    `to.portable` adds an identity middle block to a student without one (see `sdkd_ext.portable`)."""
    start = time.perf_counter()
    portable = to.portable
    if portable:
        refuse_middle_block(topology, variant)
    target = parse_dtype(to.dtype)
    ckpt = checkpoint_path(to.out)
    yaml_path = ckpt.with_suffix(".yaml")

    def cast(name: str, current: torch.dtype) -> torch.dtype:
        return target if current.is_floating_point and name.startswith(MODEL_PREFIXES) else current

    plan = plan_from(src, names, cast)
    params = sum(math.prod(shape) for name, shape, _, _ in plan if name.startswith(UNET))
    if portable:
        plan += [(k, shape, target, (lambda s=shape, f=fill: torch.full(s, f)))
                 for k, (shape, fill) in identity_middle(topology).items()]
    vae = vae_shape(src)
    notes = PORTABLE_LINES if portable else NO_MIDDLE_BLOCK_LINES
    metadata = {
        "sdkd_format": FORMAT_VERSION, "sdkd_version": __version__, "sdkd_variant": variant,
        "sdkd_unet_params": str(params), "sdkd_topology": json.dumps(asdict(topology)),
        "modelspec.architecture": "stable-diffusion-v1",
        **(vae.metadata() if vae else {}),
        **({} if topology.mid_block else {"sdkd_note": note_metadata(notes)}),
        **({"sdkd_portable": f"identity middle block, {identity_params(topology)} parameters"} if portable else {}),
    }
    folder = ckpt.with_suffix("") if to.diffusers else None
    with atomic_outputs(to.overwrite) as outs:
        tmp_yaml = outs.temp(yaml_path)
        tmp_yaml.write_text(ldm_yaml(topology, vae, portable))
        tmp_ckpt = outs.temp(ckpt)
        write_safetensors(tmp_ckpt, plan, lambda: {**metadata, **(extra() if callable(extra) else extra or {})}, progress)
        if folder is not None:
            from .pipeline import load_pipeline

            tmp_dir = outs.temp(folder, is_dir=True)
            load_pipeline(tmp_ckpt).pipe.save_pretrained(str(tmp_dir), safe_serialization=True)
    return Exported(ckpt, yaml_path, variant, params, time.perf_counter() - start, folder)


def fresh_out(out: Path | None, teacher: Path, default: str) -> Path:
    """The checkpoint path of `--out` (None: `default_out(teacher, default)`), refusing the teacher itself."""
    out_path = checkpoint_path(out) if out else default_out(teacher, default)
    if out_path.resolve() == teacher.resolve():
        raise SdkdError(f"--out {out_path} is the teacher itself; sdkd never overwrites its input")
    return out_path


def prune(job: PruneJob, progress: ProgressFn | None = None) -> Exported:
    """Copy the teacher's kept blocks into a BK-SDM student and export it (teacher file untouched)."""
    path = resolve(job.teacher)
    v = job.variant
    parse_dtype(job.dtype)  # every setting is checked before the teacher is read (a .ckpt is read whole)
    if job.portable:
        refuse_middle_block(v.student(SD15), v.name)  # a variant's middle block does not depend on the teacher's widths
    out_path = fresh_out(job.out, path, v.name)
    for final in (out_path, out_path.with_suffix(".yaml")):
        Outputs(job.overwrite).check(final)
    src = open_model(path, ema=job.ema)
    info = describe(src)
    require_teacher(info, path.name)
    provenance = teacher_metadata(path)
    extra = lambda: {**provenance(), "sdkd_ema": str(job.ema).lower()}  # noqa: E731
    return export_model(src, student_names(src, info, v), v.student(info.topology), v.name,
                        Target(out_path, job.dtype, job.overwrite, job.diffusers, job.portable), extra, progress)
