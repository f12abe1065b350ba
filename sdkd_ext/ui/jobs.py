"""The tab's jobs: each turns a section's widget values (one `terms.Form`, or a few plain values) into one core call,
run later with a progress callback.

Output names go through `names.Output` (inside the host's folder, never an input), and core messages come back
naming the tab's widgets (sdkd_ext.terms maps the CLI flags the core names to their labels) with paths shown
relative to the folder. gradio is not imported here: the jobs are plain functions the tests call directly.
A job given a `Live` records there the run folder its loss curve and samples go to and the checkpoint it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import SdkdError
from ..hosts.base import DEMO_LISTED, FolderHost
from ..names import Output
from ..plan import parse_vram
from ..progress import ProgressFn
from ..sampling import DEFAULT_SAMPLER
from ..terms import LR, NONE as NO_LORA, Form, labels
from ..train import TrainConfig
from ..variants import VARIANTS, get_variant
from .facts import describe_file, estimate_text, table, train_device
from .run import Live

# The tab's words for what the core's messages name, from the one table (sdkd_ext.terms): its widgets show these labels.
DISTIL_WIDGETS, LORA_WIDGETS, COMPARE_WIDGETS = (labels(job, "tab") for job in ("distil", "lora", "compare"))
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
    from ..prune import PruneJob, prune

    out = Output.of("prune", "tab", host.output_dir(), "your checkpoint folder")

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        target = out.path(name, f"{teacher.stem}-bk-{variant}", ".safetensors", (teacher,))
        with out.worded():
            r = prune(PruneJob(teacher, get_variant(variant), target, dtype=dtype, overwrite=overwrite,
                               portable=portable),
                      progress)
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


def distill_job(host: FolderHost, f: Form, live: Live | None = None) -> Callable[[ProgressFn], str]:
    """The tab's distil action (the Distil section's form and the tab's checkpoint): a student distilled on the GPU,
    exported into the host's checkpoint folder, with a sample grid (teacher beside student, fixed prompts and seeds)
    every `preview_every` steps and at the end."""
    from ..distill import DistillJob, LossWeights, distill, run_folder

    out = distil_output(host)

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, f.checkpoint)
        target = out.path(f.out, f"{teacher.stem}-bk-{f.variant}-kd", ".safetensors", (teacher,))
        with out.worded():
            budget = parse_vram(f.vram)
            if live is not None:
                live.run_dir = run_folder(target)
            r = distill(DistillJob(teacher, get_variant(f.variant), target, _data(f.kind, f.data, f.self_n),
                                   distil_config(f.steps, f.preview_every, f.keep_state), LossWeights(f.l_sd, f.l_out, f.l_feat),
                                   resolution=int(f.resolution), vram=budget, resume=f.resume, overwrite=f.overwrite,
                                   portable=f.portable), progress)
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
    return TrainConfig(steps=int(steps), lr=LR["lora"], preview_every=max(0, int(samples_every or 0)),
                       keep_state=bool(keep_state))


def lora_job(host: FolderHost, f: Form, live: Live | None = None) -> Callable[[ProgressFn], str]:
    """The tab's LoRA action (the LoRA section's form and the tab's checkpoint): train on an image folder, write the
    LoRA into the host's LoRA folder, with a sample grid (the model without, then with the LoRA) every
    `preview_every` steps and at the end."""
    from ..distill import run_folder
    from ..lora.train import LoraJob, LoraSpec, train_lora

    out = lora_output(host)

    def job(progress: ProgressFn) -> str:
        base = _teacher(host, f.checkpoint)
        if not f.data.strip():
            raise SdkdError(f"give the {LORA_WIDGETS['--data']!r}")
        target = out.path(f.out, f"{base.stem}-lora", ".safetensors", (base,))
        with out.worded():
            budget = parse_vram(f.vram)
            if live is not None:
                live.run_dir = run_folder(target)
            r = train_lora(LoraJob(base, Path(f.data.strip()).expanduser(), target,
                                   LoraSpec(int(f.rank), float(f.alpha), f.text_encoder),
                                   lora_config(f.steps, f.preview_every, f.keep_state), resolution=int(f.resolution),
                                   vram=budget, resume=f.resume, overwrite=f.overwrite), progress)
        host.refresh()
        state, notes = run_notes(r.train, out)
        if r.path is None:
            return f"{state}: no LoRA written"
        return (f"{state}: {out.shown(r.path)} ({r.modules} modules); use it as <lora:{r.path.stem}:1> in a prompt."
                + notes)

    return job


def compare_job(host: FolderHost, f: Form) -> Callable[[ProgressFn], tuple[str, str | None]]:
    """The tab's compare action (the Compare section's form, the tab's checkpoint as the teacher): same prompts and
    seeds through each model, a grid and agreement figures."""
    from ..compare import CompareSpec, compare, lacking_few_step, write_report
    from ..lora.kind import poor_images_line
    from ..sampling import flags, sampler

    out = Output.of("compare", "tab", host.report_dir(), "the sdkd-compare folder")  # a same-named report is replaced

    def job(progress: ProgressFn) -> tuple[str, str | None]:
        folder = out.path(f.out, "report")
        lines = [p.strip() for p in f.prompts.splitlines() if p.strip()]
        students = f.students or []
        if not students:
            raise SdkdError("pick at least one student to compare with the teacher")
        loras = host.loras()
        lora = None if f.lora in (None, "", NO_LORA) else f.lora
        if lora and lora not in loras:
            raise SdkdError(f"{COMPARE_WIDGETS['--lora']} {lora!r} is not in the LoRA list; press Refresh if you just "
                            "added it")
        with out.worded():
            picked = tuple(int(x) for x in f.seeds.replace(",", " ").split()) or (0,)
            spec = CompareSpec(tuple(lines), picked, int(f.size),
                               sampler(DEFAULT_SAMPLER, int(f.reference_steps), float(f.reference_guidance),
                                       flags("reference-")),
                               sampler(f.sampler, int(f.steps), float(f.guidance)),
                               ((loras[lora], float(f.lora_weight)),) if lora else ())
            paths = [_teacher(host, s) for s in students]
            result = compare(_teacher(host, f.checkpoint), paths, spec, progress=progress)
        files = write_report(result, folder, overwrite=True)
        poor = lacking_few_step(_teacher(host, f.checkpoint), paths, spec)
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


def distil_estimate(host: FolderHost, f: Form) -> str:
    """The planner's estimate for the Distil fields on this machine's GPU (Markdown), or why there is none."""
    from ..plan import check_resolution, fit, kd_estimator

    out = distil_output(host)
    try:
        with out.worded():
            _, info = _sd1_source(host, f.checkpoint, ("sd1",))
            check_resolution(int(f.resolution))
            budget = parse_vram(f.vram)
            estimator = kd_estimator(get_variant(f.variant), int(f.resolution), info.topology)
    except SdkdError as e:
        return f"No estimate yet: {e}"
    plan = lambda cfg, v, device, say: fit(cfg, v, device, estimator, say,  # noqa: E731
                                           f"{f.variant} at {int(f.resolution)} px",
                                           "lower --resolution, pick a smaller --variant, or install bitsandbytes "
                                           "for 8-bit AdamW")
    return estimate_text(plan, estimator, distil_config(f.steps, f.preview_every), budget, out, host.memory_note)


def lora_estimate(host: FolderHost, f: Form) -> str:
    """The planner's estimate for the LoRA fields on this machine's GPU (Markdown), or why there is none."""
    from ..lora.names import layout_of_source
    from ..lora.train import LoraSpec, estimate_lora, plan_lora
    from ..plan import check_resolution

    out = lora_output(host)
    spec = LoraSpec(int(f.rank), float(f.alpha), bool(f.text_encoder))
    try:
        with out.worded():
            spec.check()
            src, info = _sd1_source(host, f.checkpoint, ("sd1", "student"))
            check_resolution(int(f.resolution))
            budget = parse_vram(f.vram)
            layout = layout_of_source(src, info.topology)
    except SdkdError as e:
        return f"No estimate yet: {e}"
    res = int(f.resolution)
    return estimate_text(lambda cfg, v, device, say: plan_lora(cfg, v, layout, spec, res, device, say),
                         lambda s: estimate_lora(layout, spec, res, s), lora_config(f.steps), budget, out,
                         host.memory_note)


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


def bench_job(host: FolderHost, f: Form) -> Callable[[ProgressFn], tuple[str, str, object]]:
    """The tab's bench action (the Bench section's form, the tab's checkpoint as the teacher): teacher vs students on
    this machine's GPU (or CPU); (status, figures, chart)."""
    from ..bench import BenchSpec, bench, chart, write_outputs
    from ..sampling import sampler

    out = Output.of("bench", "tab", host.bench_dir(), "the sdkd-bench folder")  # a same name is replaced

    def job(progress: ProgressFn) -> tuple[str, str, object]:
        folder = out.path(f.out, "bench")
        if not f.students:
            raise SdkdError("pick at least one student to bench against the teacher")
        with out.worded():
            spec = BenchSpec(train_device().type, size=int(f.size), sampling=sampler(f.sampler, int(f.steps), float(f.guidance)),
                             repeats=int(f.repeats), t2i_repeats=int(f.t2i_repeats))
            result = bench(_teacher(host, f.checkpoint), [_teacher(host, s) for s in f.students], spec, progress)
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


def rebase_job(host: FolderHost, f: Form, live: Live | None = None) -> Callable[[ProgressFn], str]:
    """The tab's rebase action (the Rebase section's form): the student plus what the tab's checkpoint (a community
    one) changed in its base."""
    from ..rebase import RebaseJob, rebase

    out = Output.of("rebase", "tab", host.output_dir(), "your checkpoint folder")

    def job(progress: ProgressFn) -> str:
        paths = [_teacher(host, c) for c in (f.checkpoint, f.base, f.student)]
        target = out.path(f.out, f"{paths[0].stem}-{paths[2].stem}-rebased", ".safetensors", tuple(paths))
        with out.worded():
            r, d = rebase(RebaseJob(*paths, target, float(f.strength), f.dtype, f.overwrite), progress)
        host.refresh()
        _output(live, r.checkpoint)
        return (f"Done: {r.variant} student {out.shown(r.checkpoint)} (+ {r.yaml.name}), strength {float(f.strength):g}; "
                f"difference from the base: {d.summary()}")

    return job
