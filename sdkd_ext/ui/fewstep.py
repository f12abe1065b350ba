"""The tab's few-step jobs: "Make it fast" (one job from the loaded checkpoint to a tiny student and its 4-step LoRA)
and "Few-step LoRA" (an LCM LoRA for any listed checkpoint), with their estimates.

Each section's widget values arrive as one frozen `terms.Form` (job "fast", "lcm"), resolved here into the
core's job spec (`fast.FastJob`, `lcm.job.LcmJob`); outputs go through `names.Output` like every tab job, and core
messages come back naming the section's widgets. No gradio here: the tests call these functions directly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import SdkdError
from ..export import Outputs
from ..hosts.base import FolderHost
from ..names import Output
from ..progress import Event, ProgressFn
from ..train import TrainConfig
from ..plan import parse_vram
from ..terms import JOBS, LR, Form
from .facts import estimate_text, table, train_device
from .jobs import _data, _output, _sd1_source, _teacher
from .run import Live, clock

if TYPE_CHECKING:
    from ..fast import FastJob

FAST_STEPS = {"distil": JOBS["fast"]["distill_steps"].tab, "lcm": JOBS["fast"]["lcm_steps"].tab}  # each --steps
NO_TEACHER = JOBS["lcm"]["teacher"].default_for("tab")  # the teacher list's first choice


def _use_line() -> str:
    """How to sample with a few-step LoRA in each host."""
    from ..lcm.job import USE

    return (f"sampler LCM, {USE.steps} steps, CFG {USE.guidance:g} (A1111/Forge: sampler 'LCM'; ComfyUI: KSampler "
            "'lcm' after ModelSamplingDiscrete 'lcm')")


# ---- Few-step LoRA ----------------------------------------------------------------------------------------------

def lcm_config(f: Form) -> TrainConfig:
    """The training settings the Few-step LoRA fields give (the CLI's LCM learning rate)."""
    return TrainConfig(steps=int(f.steps), lr=LR["lcm"], preview_every=max(0, int(f.preview_every or 0)),
                       keep_state=bool(f.keep_state))


def teacher_name(f: Form) -> str | None:
    """The teacher's list name, or None for the model itself (blank, or NO_TEACHER)."""
    return f.teacher if f.teacher and f.teacher != NO_TEACHER else None


def lcm_output(host: FolderHost) -> Output:
    """Where a few-step LoRA goes (the host's LoRA folder), and the section's widgets."""
    return Output.of("lcm", "tab", host.lora_dir(), "your LoRA folder")


def _lcm_estimator(host: FolderHost, f: Form):
    """The planner's estimator for the fields (model and teacher checked as the job checks them)."""
    from ..lcm.job import estimator
    from ..lora.names import layout_of_source
    from ..lora.peft import FULL_UNET_TARGETS
    from ..lora.train import LoraSpec
    from ..plan import check_resolution

    LoraSpec(int(f.rank), float(f.rank)).check()
    src, info = _sd1_source(host, f.checkpoint, ("sd1", "student"))
    teacher = teacher_name(f)
    if teacher is not None:
        _sd1_source(host, teacher, ("sd1", "student"))
    check_resolution(int(f.resolution))
    layout = layout_of_source(src, info.topology)
    separate = teacher is not None and _teacher(host, teacher).resolve() != _teacher(host, f.checkpoint).resolve()
    return estimator(layout, FULL_UNET_TARGETS, int(f.rank), int(f.resolution), separate)


def lcm_estimate(host: FolderHost, f: Form) -> str:
    """The planner's estimate for the Few-step LoRA fields on this machine's GPU (Markdown), or why there is none."""
    from ..plan import fit

    out = lcm_output(host)
    try:
        with out.worded():
            est = _lcm_estimator(host, f)
            budget = parse_vram(f.vram)
    except SdkdError as e:
        return f"No estimate yet: {e}"
    plan = lambda cfg, v, device, say: fit(cfg, v, device, est, say,  # noqa: E731
                                           f"few-step LoRA training at {int(f.resolution)} px",
                                           "lower --resolution or --rank")
    return estimate_text(plan, est, lcm_config(f), budget, out)


def lcm_job(host: FolderHost, f: Form, live: Live | None = None) -> Callable[[ProgressFn], str]:
    """The tab's few-step LoRA action: an LCM LoRA for the chosen checkpoint along its teacher's guided sampling,
    written into the host's LoRA folder, with a sample grid (the teacher at 25 steps above the model + LoRA at 4 LCM
    steps) every `preview_every` steps and at the end."""
    from ..distill import run_folder
    from ..lcm.job import LcmJob, few_step_lora
    from ..lcm.objective import ConsistencySpec
    from ..lora.train import LoraSpec

    out = lcm_output(host)

    def job(progress: ProgressFn) -> str:
        model = _teacher(host, f.checkpoint)
        teacher = teacher_name(f)
        teacher_path = _teacher(host, teacher) if teacher is not None else None
        inputs = (model,) + ((teacher_path,) if teacher_path else ())
        target = out.path(f.out, f"{Path(f.checkpoint).stem}-lcm", ".safetensors", inputs)
        with out.worded():
            _sd1_source(host, f.checkpoint, ("sd1", "student"))  # refused in the tab's words, not MODEL's
            budget = parse_vram(f.vram)
            g = float(f.guidance)
            spec = LcmJob(model, target, _data(f.kind, f.data, f.self_n), teacher_path,
                          lora=LoraSpec(int(f.rank), float(f.rank)), consistency=ConsistencySpec((g, g)),
                          train=lcm_config(f), resolution=int(f.resolution), overwrite=f.overwrite, resume=f.resume,
                          vram=budget)
            if live is not None:
                live.run_dir = run_folder(target)
            r = few_step_lora(spec, progress)
        host.refresh()
        state = f"Cancelled at step {r.train.steps}/{r.train.total} (tick Resume to continue)" if r.train.cancelled else "Done"
        if r.path is None:
            return f"{state}: no LoRA written"
        return (f"{state}: {out.shown(r.path)} ({r.modules} modules). Use it as <lora:{r.path.stem}:1> in a prompt "
                f"on {Path(f.checkpoint).stem} with {_use_line()}")

    return job


# ---- Make it fast -------------------------------------------------------------------------------------------------

def fast_outputs(host: FolderHost) -> tuple[Output, Output]:
    """Where the student (checkpoint folder) and its LoRA (LoRA folder) go, and the section's widgets."""
    return (Output.of("fast", "tab", host.output_dir(), "your checkpoint folder"),
            Output.of("fast", "tab", host.lora_dir(), "your LoRA folder", "--lora-out"))


def fast_spec(host: FolderHost, f: Form) -> FastJob:
    """The core's `FastJob` for the fields: outputs inside the host's folders, the host's other checkpoints as the
    route's candidates; settings refused in the section's words."""
    from ..fast import TARGETS, FastJob
    from ..plan import check_resolution

    students, loras = fast_outputs(host)
    checkpoint = _teacher(host, f.checkpoint)
    target = next((k for k, label in TARGETS.items() if label == f.target), None)
    if target is None:
        raise SdkdError(f"'Target' {f.target!r}: choose {' or '.join(TARGETS.values())}")
    student = students.path(f.out, f"{Path(f.checkpoint).stem}-bk-tiny-fast", ".safetensors", (checkpoint,))
    lora = (loras.path(f.lora_out, f"{student.stem}-lcm", ".safetensors", (checkpoint,)) if target == "tiny+lcm" else None)
    with students.worded():
        budget = parse_vram(f.vram)
    configs = {"distil": TrainConfig(steps=int(f.distill_steps)), "lcm": TrainConfig(steps=int(f.lcm_steps), lr=LR["lcm"])}
    for phase, cfg in configs.items():
        with replace(students, widgets={"--steps": FAST_STEPS[phase]}).worded():
            cfg.check()
    candidates = tuple(p for p in host.checkpoints().values() if p.resolve() != checkpoint.resolve())
    with students.worded():
        _sd1_source(host, f.checkpoint, ("sd1",))
        job = FastJob(checkpoint, target, student, lora, candidates, configs["distil"], configs["lcm"], int(f.prompts),
                      int(f.resolution), budget, bool(f.overwrite))
        job.check()
        check_resolution(job.resolution)
    return job


def fast_estimate(job: FastJob, out: Output) -> str:
    """The planner's estimate for each training phase of `job`: distilling the tiny student, then its few-step LoRA
    (adapters on the student's UNet, the checkpoint as a separate frozen teacher)."""
    from ..checkpoint import open_model
    from ..detect import describe
    from ..lcm.job import LcmJob, estimator
    from ..lora.names import build_layout
    from ..lora.peft import FULL_UNET_TARGETS
    from ..plan import fit, kd_estimator
    from ..variants import get_variant

    topology = describe(open_model(job.checkpoint)).topology
    phases = [("Distil", kd_estimator(get_variant("tiny"), job.resolution, topology), job.distill)]
    if job.lora_out is not None:
        student = build_layout(get_variant("tiny").student(topology), {})  # the UNet's layers are what it adapts
        phases.append(("Few-step LoRA", estimator(student, FULL_UNET_TARGETS, LcmJob.lora.rank, job.resolution, True),
                       job.lcm))
    texts = []
    for title, est, cfg in phases:
        plan = lambda c, v, device, say, est=est, title=title: fit(  # noqa: E731
            c, v, device, est, say, f"{title.lower()} at {job.resolution} px", "lower --resolution")
        texts.append(f"**{title}**: " + estimate_text(plan, est, cfg, job.vram, out))
    return "\n\n".join(texts)


def time_text(seconds: dict[str, float], device: str) -> str:
    """The expected time per phase and in all, as a table."""
    rows = [(phase, clock(s)) for phase, s in seconds.items()]
    rows.append(("**in all**", f"**{clock(sum(seconds.values()))}**"))
    return (f"Expected time on this machine's {'GPU' if device == 'cuda' else 'CPU'} (from one timed UNet call of the "
            "teacher and of the student):\n\n" + table(("phase", "expected"), rows))


def fast_plan(host: FolderHost, f: Form) -> str:
    """What Make it fast will do for the fields: the route it takes with the files on disk, the planner's estimate and
    the expected time (Markdown), or why it cannot run. It times one UNet call: run it on a click, not at page load."""
    from ..fast import choose_route, expected_seconds

    students, _ = fast_outputs(host)
    try:
        job = fast_spec(host, f)
        with students.worded():
            route = choose_route(job)
            device = train_device().type
            seconds = expected_seconds(job, route, device)
    except SdkdError as e:
        return f"No plan yet: {e}"
    steps = "\n".join(f"{i}. {line}" for i, line in enumerate(route.steps(job), 1))
    return (f"Route: **{route.kind}**\n\n{steps}\n\n{time_text(seconds, device)}\n\n"
            + fast_estimate(job, students))


def following(live: Live | None, progress: ProgressFn, folders: dict[str, Path]) -> ProgressFn:
    """`progress` that also points the live view at the run folder of the training stage now reporting (stage names
    as `fast.stepped` gives them: 'step 2/3: distill'), so the curve and samples follow the job from phase to phase."""
    def relay(e: Event) -> None:
        stage = e.stage.rsplit(": ", 1)[-1]
        if live is not None and stage in folders:
            live.run_dir = folders[stage]
        progress(e)

    return relay


def fast_job(host: FolderHost, f: Form, live: Live | None = None) -> Callable[[ProgressFn], str]:
    """The tab's Make-it-fast action: the tiny student of the checkpoint (and its 4-step LoRA) by the cheapest route,
    as one job; the student lands in the checkpoint folder, the LoRA in the LoRA folder."""
    from ..distill import run_folder
    from ..fast import make_fast

    students, loras = fast_outputs(host)

    def job(progress: ProgressFn) -> str:
        spec = fast_spec(host, f)
        with students.worded():
            Outputs(spec.overwrite).check(spec.student_out)
        if spec.lora_out is not None:
            with loras.worded():
                Outputs(spec.overwrite).check(spec.lora_out)
        folders = {"distill": run_folder(spec.student_out)}
        if spec.lora_out is not None:
            folders["lcm"] = run_folder(spec.lora_out)
        with students.worded():
            r = make_fast(spec, following(live, progress, folders))
        host.refresh()
        _output(live, r.student)
        made = [students.shown(r.student)] if r.student else []
        made += [loras.shown(r.lora)] if r.lora else []
        state = "Cancelled; what was written is kept" if r.cancelled else "Done"
        text = f"{state} ({r.route.kind}): {', '.join(made) or 'nothing written'}"
        if r.cancelled or r.student is None:
            return text
        if r.lora is None:
            return f"{text}. {r.use()}"
        return f"{text}. Load {r.student.name}, put <lora:{r.lora.stem}:1> in the prompt and use {_use_line()}"

    return job
