"""Rebase a distilled student onto a community checkpoint: add what the community model changed in SD1.5, block by block.

    out = STUDENT + strength * spec_map(COMMUNITY - BASE)

for every UNet tensor the student keeps (each student block takes the difference of the teacher
block the variant spec says it came from); the text encoder and VAE are COMMUNITY's as they are.
One tensor of each model is in memory at a time, as in `sdkd prune`. Before writing anything the
difference is measured per UNet block (relative norm ||COMMUNITY - BASE|| / ||BASE||): a
fine-tune or merge of BASE changes each block by a small fraction, a model trained on its own
changes every block by about its whole norm, and then the difference carries nothing to add.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import ChainSource, RenamedSource, Source, open_model, resolve
from .convert import UNET
from .detect import ModelInfo, describe
from .errors import SdkdError
from .export import Outputs, add_output_options, parse_dtype
from .progress import ProgressFn, report
from .prune import Exported, Target, checkpoint_path, export_model, kept_unet, teacher_metadata
from .public import check_student_of, open_student
from .variants import Topology, Variant, differences

# Median relative difference per UNet block above which COMMUNITY is not taken as derived from BASE.
# Measured (benchmarks/rebase.py, README): a merged LoRA and a full fine-tune of the demo teacher 0.04 and
# 0.035, a model of the same shape never trained from it 1.07 (two random inits of the test model: 1.08).
DERIVED_LIMIT = 0.5


@dataclass(frozen=True)
class Difference:
    """How far COMMUNITY is from BASE, per UNet block (relative norm of the difference)."""

    per_block: dict[str, float]

    @property
    def median(self) -> float:
        """The median block's relative difference: the figure the derived/not-derived test uses."""
        return statistics.median(self.per_block.values())

    def largest(self) -> tuple[str, float]:
        """The block that changed most, and by how much."""
        return max(self.per_block.items(), key=lambda kv: kv[1])

    def summary(self) -> str:
        """One line for messages and metadata."""
        block, value = self.largest()
        return f"median {self.median:.3g} over {len(self.per_block)} UNet blocks, largest {value:.3g} ({block})"


def block_of(key: str) -> str:
    """The LDM block a UNet key (no prefix) belongs to: `input_blocks.4`, `middle_block`, `time_embed`, `out`."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] in ("input_blocks", "output_blocks") else parts[0]


def measure(community: Source, base: Source, progress: ProgressFn | None = None) -> Difference:
    """Relative norm of COMMUNITY - BASE per UNet block, streamed one tensor pair at a time."""
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    keys = [k for k in base.keys() if k.startswith(UNET)]
    for i, k in enumerate(keys):
        b = base.get(k).double()
        block = block_of(k[len(UNET):])
        diff[block] = diff.get(block, 0.0) + float((community.get(k).double() - b).square().sum())
        norm[block] = norm.get(block, 0.0) + float(b.square().sum())
        report(progress, "measure", i + 1, len(keys), k)
    return Difference({blk: math.sqrt(diff[blk]) / max(math.sqrt(norm[blk]), 1e-12) for blk in diff})


def _full_model(path: Path, role: str) -> tuple[Source, ModelInfo]:
    """An SD1.x checkpoint given as COMMUNITY or --base, or a clear refusal."""
    src = open_model(path)
    info = describe(src)
    if info.kind == "student":
        raise SdkdError(f"{role} {path.name} is a BK-SDM {info.variant} student; {role} must be a full SD1.x checkpoint")
    if info.kind != "sd1":
        raise SdkdError(f"{role} {path.name}: {info.reason}")
    return src, info


def _same_layout(a: Source, b: Source) -> str | None:
    """Why two UNets cannot be subtracted key by key (None when they can)."""
    ka, kb = ({k for k in s.keys() if k.startswith(UNET)} for s in (a, b))
    if ka != kb:
        odd = sorted(ka ^ kb)
        return f"{len(odd)} UNet tensors are in one and not the other (e.g. {odd[0][len(UNET):]})"
    bad = next((k for k in sorted(ka) if a.shape(k) != b.shape(k)), None)
    return None if bad is None else f"{bad[len(UNET):]} is {a.shape(bad)} in one and {b.shape(bad)} in the other"


def student_sources(base: Source, base_topology: Topology, s_src: Source, variant: Variant) -> dict[str, str]:
    """Student UNet key -> BASE/COMMUNITY key it takes its difference from (every student UNet key has one)."""
    teacher_of = kept_unet(base, variant, base_topology)
    for k in s_src.keys():
        if k.startswith(UNET) and (k not in teacher_of or s_src.shape(k) != base.shape(teacher_of[k])):
            raise SdkdError(f"--student tensor {k[len(UNET):]} has no same-shaped block in --base; the student "
                            "was not pruned from a model of --base's widths")
    return {k: teacher_of[k] for k in s_src.keys() if k.startswith(UNET)}


@dataclass(frozen=True)
class RebaseJob:
    """One rebase, as every front end builds it: STUDENT + strength * (COMMUNITY - BASE) written to `out`."""

    community: Path
    base: Path
    student: Path
    out: Path
    strength: float = 1.0
    dtype: str = "fp16"
    overwrite: bool = False
    limit: float = DERIVED_LIMIT  # the median block difference above which COMMUNITY is refused as not derived


def rebase(job: RebaseJob, progress: ProgressFn | None = None) -> tuple[Exported, Difference]:
    """Write STUDENT + strength * (COMMUNITY - BASE) through the variant's block map, with COMMUNITY's text encoder and VAE."""
    strength, limit, overwrite = job.strength, job.limit, job.overwrite
    if not math.isfinite(strength):
        raise SdkdError(f"--strength must be a number (got {strength})")
    parse_dtype(job.dtype)  # before any checkpoint is read
    paths = {"COMMUNITY": resolve(job.community), "--base": resolve(job.base), "--student": resolve(job.student)}
    c_src, c_info = _full_model(paths["COMMUNITY"], "COMMUNITY")
    b_src, b_info = _full_model(paths["--base"], "--base")
    why = (_same_layout(c_src, b_src) if c_info.topology == b_info.topology
           else differences(c_info.topology, b_info.topology))
    if why:
        raise SdkdError(f"COMMUNITY and --base differ in topology ({why}); --base must be the checkpoint COMMUNITY "
                        "was fine-tuned or merged from (SD1.5 for most community checkpoints)")
    s_src, s_info = open_student(paths["--student"])
    s_variant = check_student_of(s_info, b_info.topology, f"--student {paths['--student'].name}", "--base")
    sources = student_sources(b_src, b_info.topology, s_src, s_variant)
    out_path = checkpoint_path(job.out)
    for role, p in paths.items():
        if out_path.resolve() == p.resolve():
            raise SdkdError(f"--out {out_path} is {role} itself; sdkd never overwrites its input")
    for final in (out_path, out_path.with_suffix(".yaml")):
        Outputs(overwrite).check(final)  # fail before the slow part
    difference = measure(c_src, b_src, progress)
    if difference.median > limit:
        raise SdkdError(f"COMMUNITY does not look derived from --base: the difference has {difference.summary()} "
                        f"(relative norm; fine-tunes and merges measure well under {limit:g}, a model trained on its "
                        "own about 1.4). Pass the checkpoint COMMUNITY was made from as --base")

    def shifted(key: str, s: torch.Tensor) -> torch.Tensor:
        if strength == 0:
            return s
        k = sources[key]
        return (s.float() + strength * (c_src.get(k).float() - b_src.get(k).float())).to(s.dtype)

    unet = RenamedSource(s_src, {k: k for k in sources}, shifted)
    rest = RenamedSource(c_src, {k: k for k in c_src.keys() if not k.startswith(UNET)})
    hashes = {role: teacher_metadata(p) for role, p in paths.items()}
    extra = lambda: {  # noqa: E731
        **{f"sdkd_rebase_{role.strip('-').lower()}{suffix}": h()[f"sdkd_teacher{suffix}"]
           for role, h in hashes.items() for suffix in ("", "_sha256")},
        "sdkd_rebase_strength": f"{strength:g}", "sdkd_rebase_difference": difference.summary(),
    }
    exported = export_model(ChainSource([unet, rest]), {k: k for k in [*sources, *rest.keys()]}, s_info.topology,
                            s_info.variant, Target(out_path, job.dtype, overwrite), extra, progress)
    return exported, difference


def cmd_rebase(a: argparse.Namespace) -> int:
    """`sdkd rebase`: say how far COMMUNITY is from BASE and where the rebased student went."""
    from .progress import tqdm_progress

    job = RebaseJob(Path(a.community), Path(a.base), Path(a.student), Path(a.out), a.strength, a.dtype, a.overwrite)
    r, d = rebase(job, tqdm_progress())
    print(f"{r.variant}: difference {d.summary()}; strength {a.strength:g} -> {r.checkpoint} (+ {r.yaml.name}) "
          f"in {r.seconds:.1f}s")
    return 0


def add_commands(sub) -> None:
    """`sdkd rebase`."""
    s = sub.add_parser("rebase", help="give a distilled student what a community checkpoint changed in SD1.5 "
                                      "(student + strength x (community - base))")
    s.add_argument("community", help="the community SD1.x checkpoint (a fine-tune or merge of --base)")
    s.add_argument("--base", required=True, help="the checkpoint COMMUNITY was made from (usually SD1.5)")
    s.add_argument("--student", required=True, help="a BK-SDM student of --base: sdkd's, or a Nota/Segmind folder or file")
    s.add_argument("--strength", type=float, default=1.0, help="how much of the difference to add (default 1)")
    add_output_options(s)
    s.set_defaults(fn=cmd_rebase)
