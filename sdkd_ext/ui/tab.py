"""The gradio Blocks of the sdkd tab, one builder for A1111 (gradio 3.41), Forge (4.40) and the standalone app (latest).

Only what those versions share is used: `gr.update`, `gr.Progress`, `.click/.change(fn, inputs, outputs)`
with `queue=False` for Cancel (so it is not queued behind the job it stops), generator handlers for the jobs that
stream (Distil, LoRA), and PIL images as image outputs (gradio 4+ refuses to serve file paths outside its allowed
folders). The one keyword they spell differently (the page function run before a click) is chosen in
`before_click`. Element ids are the ones the host checks drive (see tests/hosts/browser.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SdkdError
from ..hosts.base import FolderHost
from ..terms import CHECKPOINT
from ..variants import VARIANTS
from .fewstep import NO_TEACHER, fast_job, fast_plan, lcm_estimate, lcm_job
from .jobs import (DATA_KINDS, NO_LORA, PUBLIC_STUDENTS, bench_job, compare_job, distil_estimate, distill_job, file_text,
                   lora_estimate, lora_job, port_job, port_targets, prune_job, rebase_job)
from .run import JobControl, Live, run_in_host, stream
from .widgets import Widgets, form

# Each section's widgets in the order its click passes them (after the tab's checkpoint, which comes first): the
# handler zips the values with these names into the section's `terms.Form`.
FAST = ("target", "out", "lora_out", "distill_steps", "lcm_steps", "prompts", "resolution", "vram", "overwrite")
PRUNE = ("variant", "out", "dtype", "overwrite", "portable")
DISTIL = ("variant", "kind", "data", "self_n", "steps", "resolution", "vram", "preview_every", "l_sd", "l_out", "l_feat",
          "out", "resume", "overwrite", "portable", "keep_state")
LORA = ("data", "rank", "alpha", "steps", "resolution", "vram", "text_encoder", "out", "resume", "overwrite",
        "preview_every", "keep_state")
FEW_STEP = ("teacher", "kind", "data", "self_n", "steps", "rank", "resolution", "guidance", "vram", "preview_every",
            "out", "resume", "overwrite", "keep_state")
COMPARE = ("students", "prompts", "seeds", "out", "size", "sampler", "steps", "guidance", "lora", "lora_weight",
           "reference_steps", "reference_guidance")
BENCH = ("students", "size", "sampler", "steps", "guidance", "repeats", "t2i_repeats", "out")
PORT = ("lora", "to", "out", "alpha_equals_rank", "overwrite")
REBASE = ("base", "student", "strength", "out", "dtype", "overwrite")


def before_click(js: str | None) -> dict:
    """gradio's keyword for a page function run before the call: `_js` up to 3.x (A1111), `js` from 4.0 (Forge's
    4.40 takes both, the latest only `js`)."""
    if not js:
        return {}
    import gradio as gr

    return {"_js" if int(gr.__version__.split(".")[0]) < 4 else "js": js}


def listed_name(host: FolderHost, path: Path | None) -> str | None:
    """The name the host's checkpoint list gives `path`, if it lists it."""
    if path is None:
        return None
    return next((n for n, p in host.checkpoints().items() if p.resolve() == Path(path).resolve()), None)


def load_checkpoint(host: FolderHost, name: str | None) -> str:
    """The "Load it now" action: the finished student becomes the host's checkpoint; errors as a status line."""
    path = host.checkpoints().get(name or "")
    if path is None:
        return "Error: nothing to load yet; run Prune, Distil or Rebase first"
    try:
        return host.load_checkpoint(path)
    except SdkdError as e:
        return f"Error: {e}"


@dataclass
class Section:
    """A tab section's widgets (by field name), the names its click passes in order, its action buttons and its
    Markdown."""

    widgets: Widgets
    order: tuple[str, ...]
    go: object
    estimate: object = None
    plan: object = None
    show: object = None

    def inputs(self, checkpoint: object) -> list:
        """The click's inputs: the tab's checkpoint, then the section's widgets in `order`."""
        return [checkpoint, *self.widgets.inputs(self.order)]

    def form(self, checkpoint: str, values: tuple):
        """The section's `terms.Form` from the values of `inputs` (the checkpoint first)."""
        return form(self.widgets.job, ("checkpoint", *self.order), (checkpoint, *values))


def row(gr, w: Widgets, *names: str) -> None:
    """One row of a section's plain widgets, each made from its field."""
    with gr.Row():
        row_of(w, *names)


def data_rows(gr, w: Widgets, first: Callable[[], object]) -> None:
    """The rows of where a training job's data comes from: `first` (the section's own lead widget) beside the kind
    of data, then the path and the built-in prompt count."""
    with gr.Row():
        first()
        w.add("kind", choices=list(DATA_KINDS))
    row(gr, w, "data", "self_n")


def make_it_fast_section(gr) -> Section:
    """The Make-it-fast widgets."""
    from ..fast import TARGETS

    gr.Markdown("Make the checkpoint above fast in one job: its BK-SDM **tiny** student (about 2x faster per step), "
                "and a **4-step LoRA** for it (4 sampler steps at CFG 1 instead of 25). Where a converted public tiny "
                "student and the checkpoint's base (e.g. SD1.5) are in your checkpoint list, the student is rebased and "
                "polished; otherwise the checkpoint is pruned and distilled. No training images needed: the checkpoint "
                "draws its own. Each step is also its own section (Distil, Rebase, Few-step LoRA).")
    w = Widgets(gr, "fast")
    with gr.Row():
        w.add("target", choices=list(TARGETS.values()))
        w.add("out", placeholder="blank: <checkpoint>-bk-tiny-fast")
        w.add("lora_out", placeholder="blank: <student>-lcm")
    row(gr, w, "distill_steps", "lcm_steps", "prompts", "resolution", "vram", "overwrite")
    plan = gr.Markdown("Press *Show route and time* to see what will run, the memory estimate and the time it expects.",
                       elem_id="sdkd_fast_plan")
    with gr.Row():
        show = gr.Button("Show route and time", elem_id="sdkd_fast_show")
        go = gr.Button("Make it fast", variant="primary", elem_id="sdkd_fast")
    return Section(w, FAST, go, plan=plan, show=show)


def few_step_section(gr, checkpoints: list[str]) -> Section:
    """The Few-step LoRA widgets."""
    gr.Markdown("Train a few-step (LCM) LoRA for the checkpoint above (a teacher or a BK-SDM student): with it the "
                "model draws in 4 sampler steps at CFG 1. It learns to jump along the teacher's guided sampling (the "
                "model itself, or for a student the checkpoint it was made from). It lands in your LoRA folder.")
    w = Widgets(gr, "lcm")
    data_rows(gr, w, lambda: w.add("teacher", gr.Dropdown, choices=[NO_TEACHER, *checkpoints]))
    row(gr, w, "steps", "rank", "resolution", "guidance", "vram", "preview_every")
    with gr.Row():
        w.add("out", placeholder="blank: <checkpoint>-lcm")
        row_of(w, "resume", "keep_state", "overwrite")
    estimate = gr.Markdown("Pick a checkpoint to see the memory estimate.", elem_id="sdkd_fewstep_estimate")
    go = gr.Button("Train few-step LoRA", variant="primary", elem_id="sdkd_fewstep")
    return Section(w, FEW_STEP, go, estimate=estimate)


def row_of(w: Widgets, *names: str) -> None:
    """Plain widgets made from their fields, in the row being built."""
    for name in names:
        w.add(name)


def prune_section(gr) -> Section:
    """The Prune widgets."""
    gr.Markdown("Cut the UNet down to a BK-SDM student, initialised from the teacher's own blocks. "
                "The student appears in your checkpoint list.")
    w = Widgets(gr, "prune")
    with gr.Row():
        w.add("variant", choices=list(VARIANTS))
        w.add("dtype")
    with gr.Row():
        w.add("out", placeholder="blank: <checkpoint>-bk-<variant>")
        w.add("overwrite", elem_id="sdkd_overwrite")
        w.add("portable")
    return Section(w, PRUNE, gr.Button("Prune", variant="primary", elem_id="sdkd_prune"))


def distil_section(gr) -> Section:
    """The Distil widgets."""
    gr.Markdown("Train the student to imitate the teacher (output and per-block feature distillation). "
                "The loss curve and sample grids (teacher row above student row, fixed prompts and seeds) "
                "show below while it trains. Cancel keeps a usable student and the run's state; tick "
                "Resume to continue later. A finished run keeps only its loss log and samples unless Keep "
                "training state is ticked.")
    w = Widgets(gr, "distil")
    data_rows(gr, w, lambda: w.add("variant", choices=list(VARIANTS)))
    row(gr, w, "steps", "resolution", "vram", "preview_every")
    row(gr, w, "l_sd", "l_out", "l_feat")
    with gr.Row():
        w.add("out", placeholder="blank: <checkpoint>-bk-<variant>-kd")
        row_of(w, "resume", "keep_state", "overwrite", "portable")
    estimate = gr.Markdown("Pick a teacher to see the memory estimate.", elem_id="sdkd_distil_estimate")
    return Section(w, DISTIL, gr.Button("Distil", variant="primary", elem_id="sdkd_distill"), estimate=estimate)


def lora_section(gr) -> Section:
    """The LoRA widgets."""
    gr.Markdown("Train a LoRA on the chosen checkpoint (students included); it lands in your LoRA folder "
                "with block names that A1111, Forge and ComfyUI apply to the right layers.")
    w = Widgets(gr, "lora")
    row(gr, w, "data", "text_encoder")
    row(gr, w, "rank", "alpha", "steps", "resolution", "vram", "preview_every")
    with gr.Row():
        w.add("out", placeholder="blank: <checkpoint>-lora")
        row_of(w, "resume", "keep_state", "overwrite")
    estimate = gr.Markdown("Pick a checkpoint to see the memory estimate.", elem_id="sdkd_lora_estimate")
    return Section(w, LORA, gr.Button("Train LoRA", variant="primary", elem_id="sdkd_lora"), estimate=estimate)


def compare_section(gr, checkpoints: list[str], loras: list[str]) -> tuple[Section, object]:
    """The Compare widgets, and its grid."""
    gr.Markdown("The same prompts and seeds through the teacher (checkpoint above) and each student: "
                "a grid and how closely each student agrees with the teacher.")
    w = Widgets(gr, "compare")
    w.put("students", gr.Dropdown(label="Students", choices=checkpoints, multiselect=True))
    w.add("prompts", lines=4)
    with gr.Row():
        w.add("seeds")
        w.add("size")
        w.add("out", placeholder="a folder in sdkd-compare beside your checkpoints")
    gr.Markdown("Students are drawn at their own settings, the teacher at its own (the reference): e.g. "
                "students with an LCM LoRA at lcm, 4 steps, guidance 1 against the teacher at 25 steps, 7.5.")
    with gr.Row():
        w.add("sampler", gr.Dropdown)
        row_of(w, "steps", "guidance")
        w.add("lora", gr.Dropdown, choices=[NO_LORA, *loras])
        w.add("lora_weight")
    row(gr, w, "reference_steps", "reference_guidance")
    go = gr.Button("Compare", variant="primary", elem_id="sdkd_compare")
    return Section(w, COMPARE, go), gr.Image(label="Grid", type="pil", interactive=False)


def bench_section(gr, checkpoints: list[str]) -> tuple[Section, object, object]:
    """The Bench widgets, and its table and chart."""
    gr.Markdown("How much faster each student runs than the teacher (checkpoint above) on this machine's "
                "GPU (the CPU without one): one UNet step and a whole image, timed in turn, with memory.")
    w = Widgets(gr, "bench")
    w.put("students", gr.Dropdown(label="Students", choices=checkpoints, multiselect=True))
    with gr.Row():
        w.add("size")
        w.add("sampler", gr.Dropdown)
        row_of(w, "steps", "guidance", "repeats", "t2i_repeats")
        w.add("out", placeholder="a folder in sdkd-bench beside your checkpoints")
    go = gr.Button("Bench", variant="primary", elem_id="sdkd_bench")
    with gr.Column(elem_id="sdkd_bench_result"):
        figures = gr.Markdown("")
        chart = gr.Image(label="Chart", type="pil", interactive=False)
    return Section(w, BENCH, go), figures, chart


def port_section(gr, host: FolderHost) -> Section:
    """The LoRA-port widgets."""
    gr.Markdown("Move a LoRA made for the full SD1.x model onto a student: modules in blocks the student "
                "kept are renamed to their new place, those in removed blocks are dropped.")
    w = Widgets(gr, "port")
    with gr.Row():
        w.put("lora", gr.Dropdown(label="LoRA", choices=list(host.loras())))
        w.add("to", gr.Dropdown, choices=port_targets(host))
    with gr.Row():
        w.add("out", placeholder="blank: <lora>-for-<target>")
        row_of(w, "alpha_equals_rank", "overwrite")
    return Section(w, PORT, gr.Button("Port LoRA", variant="primary", elem_id="sdkd_port"))


def rebase_section(gr, checkpoints: list[str]) -> Section:
    """The Rebase widgets."""
    gr.Markdown("Give a distilled student what the checkpoint above (a community fine-tune or merge) "
                "changed in its base: student + strength x (checkpoint - base), block by block. " + PUBLIC_STUDENTS)
    w = Widgets(gr, "rebase")
    with gr.Row():
        w.add("base", gr.Dropdown, choices=checkpoints)
        w.add("student", gr.Dropdown, choices=checkpoints)
    with gr.Row():
        w.add("strength")
        w.add("dtype")
        w.add("out", placeholder="blank: <checkpoint>-<student>-rebased")
        w.add("overwrite")
    return Section(w, REBASE, gr.Button("Rebase", variant="primary", elem_id="sdkd_rebase"))


def picked(host: FolderHost, path: Path | None) -> tuple:
    """The picker and "what this file is" set to `path` (the host's newly loaded checkpoint), for a host that
    tells the tab when its own checkpoint changes."""
    import gradio as gr

    name = listed_name(host, path)
    return gr.update(choices=list(host.checkpoints()), value=name), file_text(host, name or "")


def build_tab(host: FolderHost):
    """The gradio Blocks of the sdkd tab for `host`: make it fast, prune, distil, LoRA, few-step LoRA, compare, bench,
    LoRA port and rebase."""
    import gradio as gr

    control = JobControl()
    page = before_click(host.page_js)

    def names() -> list[str]:
        return list(host.checkpoints())

    def run(make_job, progress, task, gpu=True):
        return run_in_host(host, control, make_job, progress, gpu, task)

    current = listed_name(host, host.current_checkpoint())
    with gr.Blocks(analytics_enabled=False) as tab:
        task = gr.Textbox(visible=False, elem_id="sdkd_task")  # the page's job id (javascript/sdkd.js), if any
        written = gr.Textbox(visible=False)  # list name of the checkpoint the last job wrote, for "Load it now"
        with gr.Row():
            ckpt = gr.Dropdown(label=CHECKPOINT, choices=names(), value=current,
                               elem_id="sdkd_checkpoint")
            # the picker starts on the host's loaded checkpoint on every launch: A1111 would restore the value it held
            # at an earlier launch from ui-config.json (modules/ui_loadsave.py skips components marked so)
            ckpt.do_not_save_to_config = True
            refresh = gr.Button("Refresh", elem_id="sdkd_refresh")
        info = gr.Markdown(file_text(host, current), elem_id="sdkd_info")
        with gr.Tabs():
            with gr.Tab("Make it fast"):
                fast = make_it_fast_section(gr)
            with gr.Tab("Prune"):
                prune = prune_section(gr)
            with gr.Tab("Distil"):
                distil = distil_section(gr)
            with gr.Tab("LoRA"):
                lora = lora_section(gr)
            with gr.Tab("Few-step LoRA"):
                few = few_step_section(gr, names())
            with gr.Tab("Compare"):
                compare, c_grid = compare_section(gr, names(), list(host.loras()))
            with gr.Tab("Bench"):
                bench, b_table, b_chart = bench_section(gr, names())
            with gr.Tab("LoRA port"):
                port = port_section(gr, host)
            with gr.Tab("Rebase"):
                rebase = rebase_section(gr, names())
        with gr.Row():
            stop = gr.Button("Cancel", elem_id="sdkd_cancel")
            load = gr.Button("Load it now", visible=False, elem_id="sdkd_load")
        status = gr.Textbox(label="Status", interactive=False, elem_id="sdkd_status")
        with gr.Row():
            loss = gr.Image(label="Loss", type="pil", interactive=False, elem_id="sdkd_loss")
            samples = gr.Image(label="Samples: teacher (top) and student; for a LoRA, without it (top) and with it; "
                                     "for a few-step LoRA, the teacher at 25 steps (top) and the LoRA at 4",
                               type="pil", interactive=False, elem_id="sdkd_samples")

        checkpoint_lists = [ckpt, compare.widgets["students"], bench.widgets["students"], rebase.widgets["base"],
                            rebase.widgets["student"]]
        lists = [*checkpoint_lists, port.widgets["lora"], compare.widgets["lora"], port.widgets["to"],
                 few.widgets["teacher"]]

        def refreshed() -> tuple:
            """New choices for every list (gr.update: the one form gradio 3.41, 4.x and later share)."""
            loras = list(host.loras())
            return (*(gr.update(choices=names()) for _ in checkpoint_lists), gr.update(choices=loras),
                    gr.update(choices=[NO_LORA, *loras]), gr.update(choices=port_targets(host)),
                    gr.update(choices=[NO_TEACHER, *names()]))

        def wrote(live: Live) -> tuple:
            """The Load button and its state after a job: shown when the job wrote a listed checkpoint."""
            name = listed_name(host, live.output)
            return gr.update(visible=name is not None), name or ""

        def streamed(job: Callable, live: Live, progress, t: str):
            """A long job's updates: (status, loss, samples) each frame, then the lists and Load button at the end."""
            keep = gr.update()
            for f in stream(host, control, job, live, progress, gpu=True, task=t):
                images = (f.loss if f.loss is not None else keep,
                          f.samples if f.samples is not None else keep)
                tail = (*wrote(live), *refreshed()) if f.done else (keep, keep, *(keep for _ in lists))
                yield (f.status, *images, *tail)

        def on_prune(t, c, *values, progress=gr.Progress()):
            f, live = prune.form(c, values), Live()
            job = prune_job(host, f.checkpoint, f.variant, f.out, f.dtype, f.overwrite, live, f.portable)
            return (run(job, progress, t, gpu=False), *wrote(live), *refreshed())

        def planned(t: str, plan: str, job: Callable, live: Live, progress=None):
            """A long section's updates: its plan or estimate first, then the job's frames (its progress shows in the
            status line and the host's bar; gradio's own overlay is hidden for long jobs)."""
            keep = gr.update()
            yield ("planning...", keep, keep, keep, keep, plan, *(keep for _ in lists))
            for frame in streamed(job, live, progress, t):
                yield (*frame[:5], keep, *frame[5:])

        def on_distill(t, c, *values, progress=gr.Progress()):
            f, live = distil.form(c, values), Live()
            yield from planned(t, distil_estimate(host, f), distill_job(host, f, live), live, progress)

        def on_lora(t, c, *values, progress=gr.Progress()):
            f, live = lora.form(c, values), Live()
            yield from planned(t, lora_estimate(host, f), lora_job(host, f, live), live, progress)

        def on_compare(t, c, *values, progress=gr.Progress()):
            result = run(compare_job(host, compare.form(c, values)), progress, t)
            if not isinstance(result, tuple):
                return result, None
            from PIL import Image

            with Image.open(result[1]) as grid:
                return result[0], grid.convert("RGB")

        def on_bench(t, c, *values, progress=gr.Progress()):
            result = run(bench_job(host, bench.form(c, values)), progress, t)
            return result if isinstance(result, tuple) else (result, gr.update(), gr.update())

        def on_port(t, lo, to, nm, ar, o, progress=gr.Progress()):
            return (run(port_job(host, lo, to, nm, ar, o), progress, t, gpu=False), *refreshed())

        def on_rebase(t, c, *values, progress=gr.Progress()):
            live = Live()
            status_line = run(rebase_job(host, rebase.form(c, values), live), progress, t, gpu=False)
            return (status_line, *wrote(live), *refreshed())

        def on_fast(t, c, *values):
            f, live = fast.form(c, values), Live()
            yield from planned(t, fast_plan(host, f), fast_job(host, f, live), live)

        def on_few(t, c, *values):
            f, live = few.form(c, values), Live()
            yield from planned(t, lcm_estimate(host, f), lcm_job(host, f, live), live)

        def on_checkpoint(c, *values):
            at = len(distil.order)
            return (file_text(host, c), distil_estimate(host, distil.form(c, values[:at])),
                    lora_estimate(host, lora.form(c, values[at:])))

        refresh.click(refreshed, outputs=lists)
        ckpt.change(on_checkpoint, inputs=[ckpt, *distil.inputs(ckpt)[1:], *lora.inputs(ckpt)[1:]],
                    outputs=[info, distil.estimate, lora.estimate])
        distil.widgets["variant"].change(lambda c, *a: distil_estimate(host, distil.form(c, a)),
                                         inputs=distil.inputs(ckpt), outputs=[distil.estimate])
        prune.go.click(on_prune, inputs=[task, *prune.inputs(ckpt)], outputs=[status, load, written, *lists], **page)
        long_outputs = [status, loss, samples, load, written]
        # "full" and "minimal" draw a progress overlay on every output (gradio 3.41: the curve and samples under bars);
        # the status line, the host's own progress bar and the streamed images already show how the run goes
        live_view = {"show_progress": "hidden", **page}
        for section, handler in ((distil, on_distill), (lora, on_lora), (fast, on_fast), (few, on_few)):
            section.go.click(handler, inputs=[task, *section.inputs(ckpt)],
                             outputs=[*long_outputs, section.estimate or section.plan, *lists], **live_view)
        compare.go.click(on_compare, inputs=[task, *compare.inputs(ckpt)], outputs=[status, c_grid], **page)
        bench.go.click(on_bench, inputs=[task, *bench.inputs(ckpt)], outputs=[status, b_table, b_chart], **page)
        port.go.click(on_port, inputs=[task, *port.widgets.inputs(PORT)], outputs=[status, *lists], **page)
        rebase.go.click(on_rebase, inputs=[task, *rebase.inputs(ckpt)], outputs=[status, load, written, *lists], **page)
        fast.show.click(lambda c, *a: fast_plan(host, fast.form(c, a)), inputs=fast.inputs(ckpt), outputs=[fast.plan])
        for changed in (ckpt, *few.widgets.inputs(("teacher", "rank", "resolution"))):
            changed.change(lambda c, *a: lcm_estimate(host, few.form(c, a)), inputs=few.inputs(ckpt),
                           outputs=[few.estimate])
        load.click(lambda n: load_checkpoint(host, n), inputs=[written], outputs=[status])
        stop.click(control.cancel, outputs=[status], queue=False)
    return tab
