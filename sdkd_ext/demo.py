"""`sdkd demo`: the whole product on the built-in demo teacher, in a few minutes on a CPU.

The demo teacher is a small model with SD1.5's exact topology that was trained to draw coloured
shapes from captions (`sdkd_ext/models/demo-teacher.md`). The demo prunes it to every BK-SDM
variant and has teacher and students draw the same held-out captions and seeds: a labelled grid,
the shapes scorer's accuracy per attribute and each student's agreement with the teacher. Then it
distils the tiny student for a few minutes and draws again: pruned and distilled side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .checkpoint import resolve
from .data import FolderData
from .distill import DistillJob, distill
from .export import atomic_outputs
from .fidelity import SIZE, STEPS, Fidelity, FidelitySpec, fidelity, write
from .progress import ProgressFn
from .prune import PruneJob, prune
from .shapes import sample_specs, split_specs, write_folder
from .train import TrainConfig
from .variants import VARIANTS


@dataclass(frozen=True)
class DemoSettings:
    """How much the demo draws and trains; the defaults take a few minutes on 2 CPU cores."""

    captions: int = 8  # held-out captions each model draws (one seed each)
    steps: int = STEPS  # sampler steps per image
    images: int = 512  # rendered training images for distillation
    distill_steps: int = 300
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0


@dataclass
class DemoResult:
    """What the demo made: the students, both fidelity checks and the folders holding their reports."""

    students: dict[str, Path]
    pruned: Fidelity
    distilled: Fidelity
    reports: dict[str, Path]


def run_demo(out: Path, overwrite: bool = False, progress: ProgressFn | None = None,
             log: Callable[[str], None] = print, teacher: str | Path = "demo",
             settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Prune `teacher` (default: the shipped demo teacher) to every variant, check fidelity, distil tiny, check again."""
    s = settings
    teacher = resolve(teacher)
    out.mkdir(parents=True, exist_ok=True)
    students = {v: prune(PruneJob(teacher, VARIANTS[v], out / f"demo-bk-{v}", overwrite=overwrite), progress).checkpoint
                for v in VARIANTS}
    log(f"pruned {teacher} to {', '.join(VARIANTS)}: " + ", ".join(str(p) for p in students.values()))

    reports = {name: out / name for name in ("pruned", "distilled")}

    def check(models: list[Path], name: str) -> Fidelity:
        result = fidelity(teacher, models, FidelitySpec(s.captions, steps=s.steps), progress)
        files = write(result, reports[name], overwrite)
        log(f"\n{name}: {s.captions} held-out captions, accuracy per attribute and agreement with the teacher\n"
            f"{result.table()}\ngrid: {files['grid']}  report: {files['report']}")
        return result

    pruned = check(list(students.values()), "pruned")
    data = out / "shapes-data"
    with atomic_outputs(overwrite) as outs:
        write_folder(sample_specs(s.images, s.seed, split_specs()[0]), outs.temp(data, is_dir=True))
    log(f"\ndistilling the tiny student for {s.distill_steps} steps on {s.images} rendered training images ({data})")
    cfg = TrainConfig(steps=s.distill_steps, batch=s.batch, lr=s.lr, seed=s.seed, device="cpu",
                      checkpoint_every=s.distill_steps)
    kd = distill(DistillJob(teacher, VARIANTS["tiny"], out / "demo-bk-tiny-kd", FolderData(data), cfg,
                            resolution=SIZE, overwrite=overwrite, preview_prompts=[]), progress).exported.checkpoint
    students["tiny-kd"] = kd
    distilled = check([students["tiny"], kd], "distilled")
    return DemoResult(students, pruned, distilled, reports)
