"""The tab's jobs: each turns the widgets' values into one core call, run later with a progress callback.

Output names go through `names.Output` (inside the host's folder, never an input), and core messages come back
naming the tab's widgets (each job's table maps the CLI flags the core names to the labels) with paths shown
relative to the folder. gradio is not imported here: the jobs are plain functions the tests call directly.
A job given a `Live` records there the run folder its loss curve and samples go to and the checkpoint it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SdkdError
from ..hosts.base import DEMO_LISTED, FolderHost
from ..names import Output
from ..plan import parse_vram
from ..progress import ProgressFn
from ..sampling import DEFAULT_SAMPLER
from ..terms import JOBS, NONE as NO_LORA, PORTABLE, labels
from ..train import TrainConfig
from ..variants import VARIANTS
from .facts import describe_file, estimate_text, table, train_device
from .run import Live

# The tab's words for what the core's messages name, from the one table (sdkd_ext.terms): its widgets show these labels.
PRUNE_NAME, PRUNE_OVERWRITE = JOBS["prune"]["out"].tab, JOBS["prune"]["overwrite"].tab
DISTIL_NAME, DISTIL_OVERWRITE = JOBS["distil"]["out"].tab, JOBS["distil"]["overwrite"].tab
LORA_NAME, LORA_OVERWRITE = JOBS["lora"]["out"].tab, JOBS["lora"]["overwrite"].tab
REPORT_NAME, BENCH_NAME = JOBS["compare"]["out"].tab, JOBS["bench"]["out"].tab
PORT_NAME, PORT_OVERWRITE = JOBS["port"]["out"].tab, JOBS["port"]["overwrite"].tab
REBASE_NAME, REBASE_OVERWRITE = JOBS["rebase"]["out"].tab, JOBS["rebase"]["overwrite"].tab
DISTIL_WIDGETS, LORA_WIDGETS, COMPARE_WIDGETS, BENCH_WIDGETS, PORT_WIDGETS, REBASE_WIDGETS = (
    labels(job, "tab") for job in ("distil", "lora", "compare", "bench", "port", "rebase"))
COMPARE_LORA_WEIGHT = JOBS["compare"]["lora_weight"].tab
PUBLIC_STUDENTS = ("Public distilled students of SD1.x are on Hugging Face: Nota's `nota-ai/bk-sdm-base`, `-small`, "
                   "`-tiny` (and their `-2m` versions) and Segmind's `segmind/small-sd` (a BK-SDM base) and "
                   "`segmind/tiny-sd` (a BK-SDM tiny). Download one and turn it into a checkpoint this list shows with "
                   "`sdkd convert FOLDER --out NAME` into your checkpoint folder; its base is SD1.5.")


def _output(live: Live | None, path: Path | None) -> None:
    """Tell the page which checkpoint a job wrote (for "Load it now")."""
    if live is not None:
        live.output = path


def prune_job(host: FolderHost, checkpoint: str, variant: str, name: str, dtype: str, overwrite: bool,
              live: Live | None = None, portable: bool = False) -> Callable[[ProgressFn], str]:
    """The tab's prune action: teacher from the host's list, student into the host's checkpoint folder (`portable`:
    with the identity middle block, see `sdkd_ext.portable`)."""
    from ..prune import prune

    out = Output.of("prune", "tab", host.output_dir(), "your checkpoint folder")

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        target = out.path(name, f"{teacher.stem}-bk-{variant}", ".safetensors", (teacher,))
        with out.worded():
            r = prune(teacher, variant, target, dtype, overwrite=overwrite, progress=progress, portable=portable)
        host.refresh()
        _output(live, r.checkpoint)
        return (f"Done: {r.variant} student, {r.unet_params:,} UNet parameters -> {out.shown(r.checkpoint)} "
                f"(+ {r.yaml.name}) in {r.seconds:.1f}s")

    return job


def _teacher(host: FolderHost, checkpoint: str) -> Path:
    """The file behind a name from the host's checkpoint list."""
    path = host.checkpoints().get(checkpoint)
    if path is None:
        raise SdkdError(f"pick a checkpoint first (got {checkpoint!r}); press refresh if you just added it")
    return path


def _data(kind: str, path: str, count: int):
    """The training data the tab's fields describe: an image folder, a prompt file, or built-in prompts."""
    from ..data import FolderData, PromptData, builtin_prompts, read_prompts

    if kind == DATA_KINDS[0]:
        if not path.strip():
            raise SdkdError("give the folder of training images (with .txt captions or metadata.jsonl)")
        return FolderData(Path(path.strip()).expanduser())
    if kind == DATA_KINDS[1]:
        return PromptData(tuple(read_prompts(path.strip())), origin=f"prompts {Path(path.strip()).name}")
    return PromptData(tuple(builtin_prompts(int(count))), origin="built-in prompts")


DATA_KINDS = ("image folder", "prompt file (teacher generates)", "built-in prompts (teacher generates)")


def distil_output(host: FolderHost) -> Output:
    """Where Distil writes, and its widgets."""
    return Output.of("distil", "tab", host.output_dir(), "your checkpoint folder")


def distil_config(steps: int, samples_every: int, keep_state: bool = False) -> TrainConfig:
    """The training settings the Distil fields give (the rest as the CLI's defaults)."""
    return TrainConfig(steps=int(steps), preview_every=max(0, int(samples_every or 0)), keep_state=bool(keep_state))


def run_notes(train, out: Output) -> tuple[str, str]:
    """How a training run ended, and a sentence on a missing preview and what its run folder keeps, in the tab's
    words (the widgets' labels for the flags, paths inside the folder relative)."""
    from ..train import disk_note

    state = f"Cancelled at step {train.steps}/{train.total}" if train.cancelled else "Done"
    preview = f" The final sample grid was {train.preview_note}." if train.preview_note else ""
    return state, f"{preview} {out.reword(disk_note(train))}."


def distill_job(host: FolderHost, checkpoint: str, variant: str, kind: str, path: str, count: int, steps: int,
                resolution: int, vram: str, l_sd: float, l_out: float, l_feat: float, name: str, resume: bool,
                overwrite: bool, samples_every: int = 0, live: Live | None = None,
                portable: bool = False, keep_state: bool = False) -> Callable[[ProgressFn], str]:
    """The tab's distil action: a student distilled on the GPU, exported into the host's checkpoint folder, with a
    sample grid (teacher beside student, fixed prompts and seeds) every `samples_every` steps and at the end."""
    from ..distill import LossWeights, distill, run_folder

    out = distil_output(host)

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        target = out.path(name, f"{teacher.stem}-bk-{variant}-kd", ".safetensors", (teacher,))
        with out.worded():
            budget = parse_vram(vram)
            if live is not None:
                live.run_dir = run_folder(target)
            r = distill(teacher, variant, target, _data(kind, path, count), distil_config(steps, samples_every, keep_state),
                        LossWeights(l_sd, l_out, l_feat), resolution=int(resolution), vram=budget, resume=resume,
                        overwrite=overwrite, portable=portable, progress=progress)
        host.refresh()
        _output(live, r.exported.checkpoint if r.exported else None)
        where = out.shown(r.exported.checkpoint) if r.exported else "(no student written)"
        state, notes = run_notes(r.train, out)
        return (f"{state}: {where}; losses {', '.join(f'{k} {v:.4g}' for k, v in r.train.losses.items())}."
                + notes)

    return job


def lora_output(host: FolderHost) -> Output:
    """Where LoRA training writes, and its widgets."""
    return Output.of("lora", "tab", host.lora_dir(), "your LoRA folder")


def lora_config(steps: int, samples_every: int = 0, keep_state: bool = False) -> TrainConfig:
    """The training settings the LoRA fields give (the CLI's LoRA learning rate)."""
    return TrainConfig(steps=int(steps), lr=1e-4, preview_every=max(0, int(samples_every or 0)), keep_state=bool(keep_state))


def lora_job(host: FolderHost, checkpoint: str, folder: str, rank: int, alpha: float, steps: int, resolution: int,
             text_encoder: bool, name: str, resume: bool, overwrite: bool, vram: str = "", samples_every: int = 0,
             live: Live | None = None, keep_state: bool = False) -> Callable[[ProgressFn], str]:
    """The tab's LoRA action: train on an image folder, write the LoRA into the host's LoRA folder, with a sample
    grid (the model without, then with the LoRA) every `samples_every` steps and at the end."""
    from ..distill import run_folder
    from ..lora.train import LoraSpec, train_lora

    out = lora_output(host)

    def job(progress: ProgressFn) -> str:
        base = _teacher(host, checkpoint)
        if not folder.strip():
            raise SdkdError(f"give the {LORA_WIDGETS['--data']!r}")
        target = out.path(name, f"{base.stem}-lora", ".safetensors", (base,))
        with out.worded():
            budget = parse_vram(vram)
            if live is not None:
                live.run_dir = run_folder(target)
            r = train_lora(base, Path(folder.strip()).expanduser(), target,
                           LoraSpec(int(rank), float(alpha), text_encoder), lora_config(steps, samples_every, keep_state),
                           resolution=int(resolution), vram=budget, resume=resume, overwrite=overwrite, progress=progress)
        host.refresh()
        state, notes = run_notes(r.train, out)
        if r.path is None:
            return f"{state}: no LoRA written"
        return (f"{state}: {out.shown(r.path)} ({r.modules} modules); use it as <lora:{r.path.stem}:1> in a prompt."
                + notes)

    return job


@dataclass(frozen=True)
class CompareForm:
    """The tab's Compare settings as its widgets give them: image size, the students' sampling and LoRA (a name from
    the host's LoRA list, or none), the teacher's (the reference's) steps and guidance."""

    size: int = 512
    sampler: str = DEFAULT_SAMPLER
    steps: int = 25
    guidance: float = 7.5
    lora: str | None = None
    lora_weight: float = 1.0
    reference_steps: int = 25
    reference_guidance: float = 7.5


def compare_job(host: FolderHost, teacher: str, students: list[str], prompts: str, seeds: str, form: CompareForm,
                name: str) -> Callable[[ProgressFn], tuple[str, str | None]]:
    """The tab's compare action: same prompts and seeds through each model, a grid and agreement figures."""
    from ..compare import CompareSpec, compare, lacking_few_step, write_report
    from ..lora.kind import poor_images_line
    from ..sampling import flags, sampler

    out = Output.of("compare", "tab", host.report_dir(), "the sdkd-compare folder")  # a same-named report is replaced

    def job(progress: ProgressFn) -> tuple[str, str | None]:
        folder = out.path(name, "report")
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not students:
            raise SdkdError("pick at least one student to compare with the teacher")
        loras = host.loras()
        lora = None if form.lora in (None, "", NO_LORA) else form.lora
        if lora and lora not in loras:
            raise SdkdError(f"{COMPARE_WIDGETS['--lora']} {lora!r} is not in the LoRA list; press Refresh if you just "
                            "added it")
        with out.worded():
            picked = tuple(int(x) for x in seeds.replace(",", " ").split()) or (0,)
            spec = CompareSpec(tuple(lines), picked, int(form.size),
                               sampler(DEFAULT_SAMPLER, int(form.reference_steps), float(form.reference_guidance),
                                       flags("reference-")),
                               sampler(form.sampler, int(form.steps), float(form.guidance)),
                               ((loras[lora], float(form.lora_weight)),) if lora else ())
            paths = [_teacher(host, s) for s in students]
            result = compare(_teacher(host, teacher), paths, spec, progress=progress)
        files = write_report(result, folder, overwrite=True)
        poor = lacking_few_step(_teacher(host, teacher), paths, spec)
        fix = f"pick an LCM LoRA as {COMPARE_WIDGETS['--lora']!r}"
        note = f"; {poor_images_line(', '.join(poor), fix)}" if poor else ""
        return f"Report: {out.shown(files['report'])}{note}", str(files["grid"])

    return job


# ---- before a job: what the file is, and whether the run fits ----------------------------------------------------

def file_text(host: FolderHost, checkpoint: str) -> str:
    """"What this file is" for a name from the host's list: a sentence and a small table."""
    from ..checkpoint import open_model
    from ..detect import describe

    path = host.checkpoints().get(checkpoint or "")
    if path is None:
        if host.own_checkpoints():
            return "Pick a checkpoint to see what it is."
        folders = ", ".join(f"`{d}`" for d in host.checkpoint_dirs)
        demo = f" Meanwhile the shipped demo teacher (**{DEMO_LISTED}**) lets you try every section." if host.demo else ""
        return f"No checkpoint found in {folders}: {host.models_hint}.{demo}"
    try:
        text = describe_file(checkpoint, describe(open_model(path)))
    except SdkdError as e:
        return f"Cannot read **{checkpoint}**: {e}"
    if checkpoint == DEMO_LISTED and host.demo:
        text += ("\n\nThis is sdkd's shipped demo teacher: a small model with SD1.5's layout trained to draw coloured "
                 "shapes, so every section runs in minutes on a CPU (students it makes go to your checkpoint folder). "
                 f"For your own models, {host.models_hint}.")
    return text


def _sd1_source(host: FolderHost, checkpoint: str, kinds: tuple[str, ...]):
    """(source, info) of a listed checkpoint of one of `kinds`, refused in words otherwise."""
    from ..checkpoint import open_model
    from ..detect import describe

    src = open_model(_teacher(host, checkpoint))
    info = describe(src)
    if info.kind not in kinds:
        raise SdkdError(f"{checkpoint}: {info.reason or 'this is a BK-SDM student; pick its SD1.x teacher'}")
    return src, info


def distil_estimate(host: FolderHost, checkpoint: str, variant: str, steps: int, resolution: int, vram: str,
                    samples_every: int = 0) -> str:
    """The planner's estimate for the Distil fields on this machine's GPU (Markdown), or why there is none."""
    from ..plan import check_resolution, fit, kd_estimator

    out = distil_output(host)
    try:
        with out.worded():
            _, info = _sd1_source(host, checkpoint, ("sd1",))
            check_resolution(int(resolution))
            budget = parse_vram(vram)
            estimator = kd_estimator(variant, int(resolution), info.topology)
    except SdkdError as e:
        return f"No estimate yet: {e}"
    plan = lambda cfg, v, device, say: fit(cfg, v, device, estimator, say, f"{variant} at {int(resolution)} px",  # noqa: E731
                                           "lower --resolution, pick a smaller --variant, or install bitsandbytes "
                                           "for 8-bit AdamW")
    return estimate_text(plan, estimator, distil_config(steps, samples_every), budget, out, host.memory_note)


def lora_estimate(host: FolderHost, checkpoint: str, rank: int, alpha: float, steps: int, resolution: int,
                  text_encoder: bool, vram: str) -> str:
    """The planner's estimate for the LoRA fields on this machine's GPU (Markdown), or why there is none."""
    from ..lora.names import layout_of_source
    from ..lora.train import LoraSpec, estimate_lora, plan_lora
    from ..plan import check_resolution

    out = lora_output(host)
    spec = LoraSpec(int(rank), float(alpha), bool(text_encoder))
    try:
        with out.worded():
            spec.check()
            src, info = _sd1_source(host, checkpoint, ("sd1", "student"))
            check_resolution(int(resolution))
            budget = parse_vram(vram)
            layout = layout_of_source(src, info.topology)
    except SdkdError as e:
        return f"No estimate yet: {e}"
    res = int(resolution)
    return estimate_text(lambda cfg, v, device, say: plan_lora(cfg, v, layout, spec, res, device, say),
                         lambda s: estimate_lora(layout, spec, res, s), lora_config(steps), budget, out, host.memory_note)


# ---- bench, LoRA port, rebase ---------------------------------------------------------------------------------------

def bench_markdown(result) -> str:
    """A bench result's figures as a Markdown table (teacher first; speed-ups against it)."""
    rows = [(m.label, m.variant or "?", f"{m.unet_params / 1e6:.1f}M", f"{m.unet_step.median * 1e3:.0f} ms",
             f"{m.unet_speedup:.2f}x", f"{m.mac_ratio:.2f}x", f"{m.text_to_image.median:.2f} s", f"{m.t2i_speedup:.2f}x",
             f"{m.memory / 2**20:,.0f} MiB") for m in result.models]
    s = result.settings
    return (table(("model", "variant", "UNet params", "UNet step", "speed-up", "MAC ratio", "text-to-image",
                   "speed-up", "memory"), rows)
            + f"\n\n{s['device']} {s['dtype']}, {s['size']} px, {s['sampler']} {s['steps']} steps, guidance {s['guidance']}; "
              "medians of repeated runs, every model timed in turn.")


@dataclass(frozen=True)
class BenchForm:
    """The tab's Bench settings as its widgets give them."""

    size: int = 512
    sampler: str = DEFAULT_SAMPLER
    steps: int = 25
    guidance: float = 7.5
    repeats: int = 5
    t2i_repeats: int = 3


def bench_job(host: FolderHost, teacher: str, students: list[str], form: BenchForm,
              name: str) -> Callable[[ProgressFn], tuple[str, str, object]]:
    """The tab's bench action: teacher vs students on this machine's GPU (or CPU); (status, figures, chart)."""
    from ..bench import bench, chart, write_outputs
    from ..sampling import sampler

    out = Output.of("bench", "tab", host.bench_dir(), "the sdkd-bench folder")  # a same name is replaced

    def job(progress: ProgressFn) -> tuple[str, str, object]:
        folder = out.path(name, "bench")
        if not students:
            raise SdkdError("pick at least one student to bench against the teacher")
        with out.worded():
            result = bench(_teacher(host, teacher), [_teacher(host, s) for s in students], train_device().type,
                           size=int(form.size), sampling=sampler(form.sampler, int(form.steps), float(form.guidance)),
                           repeats=int(form.repeats), t2i_repeats=int(form.t2i_repeats), progress=progress)
        js, _ = write_outputs(result, folder, overwrite=True)
        return f"Bench: {out.shown(js)}", bench_markdown(result), chart(result)

    return job


def port_targets(host: FolderHost) -> list[str]:
    """What a LoRA can be ported to: a variant (SD1.5 widths) or a student in the host's list (its own widths)."""
    return [*VARIANTS, *host.checkpoints()]


def port_job(host: FolderHost, lora: str, to: str, name: str, alpha_equals_rank: bool,
             overwrite: bool) -> Callable[[ProgressFn], str]:
    """The tab's LoRA-port action: a teacher LoRA renamed onto a student's blocks, into the host's LoRA folder."""
    from ..lora.port import port_lora

    out = Output.of("port", "tab", host.lora_dir(), "your LoRA folder")

    def job(progress: ProgressFn) -> str:
        source = host.loras().get(lora or "")
        if source is None:
            raise SdkdError(f"pick a LoRA to port (got {lora!r}); press Refresh if you just added it")
        target = to if to in VARIANTS else str(_teacher(host, to))
        target_stem = to if to in VARIANTS else Path(target).stem
        path = out.path(name, f"{source.stem}-for-{target_stem}", ".safetensors", (source,))
        with out.worded():
            r = port_lora(source, target, path, overwrite=overwrite, alpha_equals_rank=alpha_equals_rank)
        host.refresh()
        dropped = f", {len(r.dropped)} dropped in removed blocks ({', '.join(r.dropped_blocks())})" if r.dropped else ""
        return f"Done: {out.shown(r.path)} for BK-SDM {r.variant}: {r.kept} modules kept{dropped}"

    return job


def rebase_job(host: FolderHost, community: str, base: str, student: str, strength: float, name: str, dtype: str,
               overwrite: bool, live: Live | None = None) -> Callable[[ProgressFn], str]:
    """The tab's rebase action: the student plus what the chosen (community) checkpoint changed in its base."""
    from ..rebase import rebase

    out = Output.of("rebase", "tab", host.output_dir(), "your checkpoint folder")

    def job(progress: ProgressFn) -> str:
        paths = [_teacher(host, c) for c in (community, base, student)]
        target = out.path(name, f"{paths[0].stem}-{paths[2].stem}-rebased", ".safetensors", tuple(paths))
        with out.worded():
            r, d = rebase(*paths, target, float(strength), dtype, overwrite, progress=progress)
        host.refresh()
        _output(live, r.checkpoint)
        return (f"Done: {r.variant} student {out.shown(r.checkpoint)} (+ {r.yaml.name}), strength {float(strength):g}; "
                f"difference from the base: {d.summary()}")

    return job
