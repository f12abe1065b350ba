"""`sdkd fast`: "make my checkpoint fast" as one job: a BK-SDM tiny student of the user's checkpoint, and optionally
its few-step LoRA, by the cheapest route the files on disk allow.

Route: where a converted public tiny student (one `sdkd convert` wrote) and the checkpoint the user's
model was made from (its base, e.g. SD1.5) are both on disk, the student is rebased onto the user's
checkpoint and polished by a short distillation (`sdkd rebase`, then `sdkd distill --init`); otherwise
the checkpoint is pruned and distilled (`sdkd distill`). Both are data-free by default (the teacher
draws its own training latents from built-in prompts). With the few-step target the student then
gets an LCM LoRA along the user's checkpoint's own guided trajectory (`sdkd lcm --teacher`). Every
step reports through one progress callback (stage names say which step of how many) and one cancel
stops the whole job, leaving what was written usable.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import open_model, resolve
from .data import PromptData, builtin_prompts
from .detect import describe, require_teacher
from .errors import SdkdError
from .progress import Event, ProgressFn
from .train import TrainConfig
from .variants import Topology, get_variant

SHARED_CACHE = "fast-cache"  # in the student's run folder: the latents the distil and LoRA steps share

TARGETS = {"tiny": "Tiny", "tiny+lcm": "Tiny + 4-step LoRA"}
POLISH_SHARE = 4  # the rebase route distils for 1/4 of the steps: it starts from a distilled student


@dataclass(frozen=True)
class FastJob:
    """One "make it fast" run, as every front end builds it."""

    checkpoint: Path  # the user's SD1.x checkpoint (the teacher)
    target: str  # a TARGETS key
    student_out: Path  # the student file (.safetensors, its .yaml beside it)
    lora_out: Path | None = None  # the few-step LoRA (target tiny+lcm)
    candidates: tuple[Path, ...] = ()  # other models on disk: public students and bases for the rebase route
    distill: TrainConfig = field(default_factory=TrainConfig)
    lcm: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    prompts: int = 256  # built-in prompts the teacher draws its training latents from
    resolution: int = 512
    vram: float | str | None = None
    overwrite: bool = False

    def check(self) -> None:
        """Refuse a target or settings that cannot work, before any model is read."""
        if self.target not in TARGETS:
            raise SdkdError(f"--target {self.target}: choose one of {', '.join(TARGETS)}")
        if self.target == "tiny+lcm" and self.lora_out is None:
            raise SdkdError("--target tiny+lcm needs --lora-out (where the few-step LoRA goes)")
        self.distill.check()
        self.lcm.check()
        builtin_prompts(self.prompts)  # its own range check


@dataclass(frozen=True)
class Route:
    """How the student is made: prune + KD, or a public student rebased onto the checkpoint and polished."""

    kind: str  # "prune+kd" | "rebase+polish"
    public: Path | None = None
    base: Path | None = None
    difference: float | None = None  # the base's median relative difference to the checkpoint

    def steps(self, job: FastJob) -> list[str]:
        """What will run, one line per step."""
        if self.kind == "rebase+polish":
            out = [f"rebase {self.public.name} onto {job.checkpoint.name} (base {self.base.name})",
                   f"polish it: distil {polish_steps(job)} steps"]
        else:
            out = [f"prune {job.checkpoint.name} to tiny and distil {job.distill.steps} steps"]
        if job.target == "tiny+lcm":
            out.append(f"few-step LoRA: {job.lcm.steps} steps along {job.checkpoint.name}'s guided sampling")
        return out


def polish_steps(job: FastJob) -> int:
    """Distillation steps of the rebase route's polish."""
    return max(1, job.distill.steps // POLISH_SHARE)


def _public_tiny(path: Path, teacher: Topology) -> bool:
    """Whether `path` is a converted public tiny student of a teacher of `teacher`'s widths."""
    from .public import check_student_of

    try:
        src = open_model(path)
        info = describe(src)
        if info.variant != "tiny" or "sdkd_source" not in (info.metadata or {}):
            return False
        check_student_of(info, teacher, path.name, "the checkpoint")
    except SdkdError:
        return False
    return True


def choose_route(job: FastJob) -> Route:
    """Rebase + polish when a converted public tiny student and the checkpoint's base are among the candidates
    (the base: the full SD1.x model the checkpoint differs least from, if it looks derived from it); else prune + KD."""
    from .rebase import DERIVED_LIMIT, measure

    src = open_model(job.checkpoint)
    info = describe(src)
    public = [p for p in job.candidates if p.resolve() != job.checkpoint.resolve() and _public_tiny(p, info.topology)]
    if not public:
        return Route("prune+kd")
    best: tuple[float, Path] | None = None
    for p in job.candidates:
        if p.resolve() == job.checkpoint.resolve() or p in public:
            continue
        try:
            b_src = open_model(p)
            if describe(b_src).kind != "sd1" or describe(b_src).topology != info.topology:
                continue
            median = measure(src, b_src).median
        except SdkdError:
            continue
        if median <= DERIVED_LIMIT and (best is None or median < best[0]):
            best = (median, p)
    if best is None:
        return Route("prune+kd")
    return Route("rebase+polish", public[0], best[1], best[0])


# ---- expected time -------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def seconds_per_call(topology: Topology, resolution: int, device: str) -> float:
    """Seconds of one UNet forward of `topology` at `resolution` (batch 1) on `device`, timed once (random weights)."""
    from diffusers import UNet2DConditionModel

    from .configs import unet_config

    unet = UNet2DConditionModel.from_config(unet_config(topology)).to(device).eval()
    latent = resolution // 8
    x = torch.zeros(1, topology.in_channels, latent, latent, device=device)
    ctx = torch.zeros(1, 77, topology.context_dim, device=device)
    times = []
    with torch.no_grad():
        for _ in range(2):  # the first call warms kernels and allocator
            start = time.perf_counter()
            unet(x, torch.tensor([500], device=device), encoder_hidden_states=ctx)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times[-1]


def expected_seconds(job: FastJob, route: Route, device: str) -> dict[str, float]:
    """The job's expected seconds per phase, from one timed forward of teacher and student on `device` (a backward
    costs about two forwards; guided sampling two forwards a step)."""
    info = describe(open_model(job.checkpoint))
    teacher = seconds_per_call(info.topology, job.resolution, device)
    student = seconds_per_call(get_variant("tiny").student(info.topology), job.resolution, device)
    out = {"teacher draws the training latents": job.prompts * 25 * 2 * teacher}
    steps = polish_steps(job) if route.kind == "rebase+polish" else job.distill.steps
    b = job.distill.batch * job.distill.accum
    out["distil"] = steps * b * (teacher + 3 * student)
    if job.target == "tiny+lcm":
        b = job.lcm.batch * job.lcm.accum
        out["few-step LoRA"] = job.lcm.steps * b * (2 * teacher + 4 * student)
    return out


# ---- the job ---------------------------------------------------------------------------------------------------

@dataclass
class FastResult:
    """What the job made."""

    route: Route
    student: Path | None
    lora: Path | None
    cancelled: bool
    notes: list[str]

    def use(self) -> str:
        """How to sample with the result."""
        from .lcm.job import USE

        if self.lora is not None:
            return (f"sample {self.student.name} with the LoRA {self.lora.stem} at weight 1: sampler LCM, {USE.steps} "
                    f"steps, CFG {USE.guidance:g}")
        return f"sample {self.student.name} as its teacher (same prompts, sampler, steps and CFG)" if self.student else ""


def stepped(progress: ProgressFn | None, index: int, total: int) -> ProgressFn | None:
    """`progress` with each event's stage named as step `index` of `total` (one bar follows the whole job)."""
    if progress is None:
        return None
    return lambda e: progress(Event(f"step {index}/{total}: {e.stage}", e.step, e.total, e.message, e.metrics))


def make_fast(job: FastJob, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> FastResult:
    """Make the tiny student (and its few-step LoRA) of `job.checkpoint`; a cancel keeps what was written."""
    from .distill import DistillJob, distill, run_folder
    from .lcm.job import LcmJob, few_step_lora
    from .lcm.objective import ConsistencySpec
    from .rebase import RebaseJob, rebase

    job.check()
    say = log or (lambda msg: None)
    path = resolve(job.checkpoint)
    info = describe(open_model(path))
    require_teacher(info, path.name)
    route = choose_route(replace(job, checkpoint=path))
    plan = route.steps(job)
    say(f"make {path.name} fast ({TARGETS[job.target]}): " + "; then ".join(plan))
    data = PromptData(tuple(builtin_prompts(job.prompts)), origin="built-in prompts")
    total, index, notes = len(plan), 1, []
    init = None
    drawn = run_folder(job.student_out) / SHARED_CACHE  # the teacher's training latents, drawn once for both steps
    if route.kind == "rebase+polish":
        init = run_folder(job.student_out) / "rebased.safetensors"  # deleted once polished
        rebase(RebaseJob(path, route.base, route.public, init, overwrite=True), stepped(progress, index, total))
        index += 1
    cfg = replace(job.distill, steps=polish_steps(job)) if init is not None else job.distill
    r = distill(DistillJob(path, get_variant("tiny"), job.student_out, data, cfg, resolution=job.resolution,
                           overwrite=job.overwrite, vram=job.vram, init=init, cache_dir=drawn),
                stepped(progress, index, total), log=say)
    notes += r.notes
    if init is not None:
        init.unlink(missing_ok=True)
        init.with_suffix(".yaml").unlink(missing_ok=True)
    student = r.exported.checkpoint if r.exported else None
    if r.train.cancelled or job.target != "tiny+lcm" or student is None:
        return FastResult(route, student, None, r.train.cancelled, notes + drop_shared_cache(drawn, r.train.cancelled))
    index += 1
    guidance = data.guidance
    lcm = LcmJob(student, job.lora_out, data, teacher=path, consistency=ConsistencySpec((guidance, guidance)),
                 train=job.lcm, resolution=job.resolution, overwrite=job.overwrite, vram=job.vram, cache_dir=drawn)
    few = few_step_lora(lcm, stepped(progress, index, total), say)
    return FastResult(route, student, few.path, few.train.cancelled, notes + drop_shared_cache(drawn, few.train.cancelled))


def drop_shared_cache(folder: Path, cancelled: bool) -> list[str]:
    """Delete the job's shared latent cache once the job is done; a cancelled job keeps it (a rerun reuses it) and says
    so."""
    if not folder.exists():
        return []
    if not cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        return []
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return [f"the teacher's training latents are kept in {folder} ({size / 2**20:.0f} MiB): running the job again "
            "(with --overwrite) reuses them; delete the folder if you will not"]


# ---- command line ----------------------------------------------------------------------------------------------

def cmd_fast(a: argparse.Namespace) -> int:
    """`sdkd fast`: say the route, run it, say what was made and how to sample with it."""
    from .distill import stop_on_ctrl_c
    from .plan import parse_vram
    from .prune import checkpoint_path, default_out
    from .progress import tqdm_progress

    path = resolve(a.checkpoint)
    student = checkpoint_path(a.out) if a.out else default_out(path, "tiny-fast")
    lora = None
    if a.target == "tiny+lcm":
        lora = checkpoint_path(a.lora_out) if a.lora_out else student.with_name(student.stem + "-lcm.safetensors")
    job = FastJob(path, a.target, student, lora, tuple(Path(p) for p in a.candidates),
                  TrainConfig(steps=a.distill_steps, batch=a.batch, device=a.device, seed=a.seed),
                  TrainConfig(steps=a.lcm_steps, batch=a.batch, lr=1e-4, device=a.device, seed=a.seed),
                  a.prompts, a.resolution, parse_vram(a.vram), a.overwrite)
    with stop_on_ctrl_c(tqdm_progress()) as progress:
        r = make_fast(job, progress, log=lambda m: print(f"sdkd: {m}", file=sys.stderr))
    state = "cancelled; what was written is kept" if r.cancelled else "done"
    made = ", ".join(str(p) for p in (r.student, r.lora) if p is not None) or "nothing"
    print(f"{state} ({r.route.kind}): {made}")
    if not r.cancelled:
        print(r.use())
    return 0


def add_commands(sub) -> None:
    """Register `sdkd fast`."""
    s = sub.add_parser("fast", help="make a checkpoint fast in one job: its BK-SDM tiny student (rebase + polish where a "
                                    "converted public student and the base are given, else prune + distil), and a "
                                    "4-step LoRA for it with --target tiny+lcm")
    s.add_argument("checkpoint", help="your SD1.x checkpoint (.safetensors, .ckpt or diffusers folder)")
    s.add_argument("--target", default="tiny+lcm", choices=list(TARGETS), help="tiny, or tiny + its 4-step LoRA (default)")
    s.add_argument("--out", help="the student (default: <checkpoint>-bk-tiny-fast.safetensors beside it)")
    s.add_argument("--lora-out", help="the few-step LoRA (default: <student>-lcm.safetensors beside the student)")
    s.add_argument("--candidates", nargs="*", default=[], metavar="MODEL",
                   help="other models on disk for the rebase route: converted public tiny students and the checkpoint "
                        "your model was made from (SD1.5 for most)")
    s.add_argument("--distill-steps", type=int, default=1000, help="distillation steps (rebase route: a quarter)")
    s.add_argument("--lcm-steps", type=int, default=1000, help="few-step LoRA steps")
    s.add_argument("--prompts", type=int, default=256, help="built-in prompts the teacher draws its training latents from")
    s.add_argument("--resolution", type=int, default=512, help="training image size in pixels (multiple of 64)")
    s.add_argument("--batch", type=int, default=1, help="micro-batch per process (default 1)")
    s.add_argument("--vram", help="'auto' or GiB: let the memory planner choose batch split and checkpointing")
    s.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto: accelerate's choice (GPU if any)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs and start the runs over")
    s.set_defaults(fn=cmd_fast)
