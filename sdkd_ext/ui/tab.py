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
from ..sampling import DEFAULT_SAMPLER, SAMPLER_NAMES
from ..variants import VARIANTS
from .fewstep import (FAST_LORA, FAST_OVERWRITE, FAST_STEPS, FAST_STUDENT, FAST_WIDGETS, LCM_NAME, LCM_OVERWRITE, LCM_WIDGETS,
                      NO_TEACHER, VRAM, FastFields, FewStepFields, fast_job, fast_plan, lcm_estimate, lcm_job)
from .jobs import (DATA_KINDS, DISTIL_NAME, DISTIL_OVERWRITE, DISTIL_WIDGETS, LORA_NAME, LORA_OVERWRITE,
                   LORA_WIDGETS, PORT_NAME, PORT_OVERWRITE, PORT_WIDGETS, PORTABLE, PRUNE_NAME, PRUNE_OVERWRITE,
                   PUBLIC_STUDENTS, REBASE_NAME, REBASE_OVERWRITE, REBASE_WIDGETS, REPORT_NAME, BENCH_NAME, BENCH_WIDGETS,
                   BenchForm, COMPARE_LORA_WEIGHT, COMPARE_WIDGETS, NO_LORA, CompareForm, bench_job, compare_job,
                   distil_estimate, distill_job, file_text, lora_estimate, lora_job, port_job, port_targets, prune_job,
                   rebase_job)
from .run import JobControl, Live, run_in_host, stream


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
    """A tab section's widgets the handlers need: its fields in the job's order, its action buttons and its Markdown."""

    fields: list
    go: object
    estimate: object = None
    teacher: object = None
    rank: object = None
    resolution: object = None
    plan: object = None
    show: object = None


def make_it_fast_section(gr) -> Section:
    """The Make-it-fast widgets (FastFields' order after the checkpoint)."""
    from ..fast import TARGETS

    gr.Markdown("Make the checkpoint above fast in one job: its BK-SDM **tiny** student (about 2x faster per step), "
                "and a **4-step LoRA** for it (4 sampler steps at CFG 1 instead of 25). Where a converted public tiny "
                "student and the checkpoint's base (e.g. SD1.5) are in your checkpoint list, the student is rebased and "
                "polished; otherwise the checkpoint is pruned and distilled. No training images needed: the checkpoint "
                "draws its own. Each step is also its own section (Distil, Rebase, Few-step LoRA).")
    with gr.Row():
        target = gr.Radio(label=FAST_WIDGETS["--target"], choices=list(TARGETS.values()),
                          value=TARGETS["tiny+lcm"])
        student = gr.Textbox(label=FAST_STUDENT, placeholder="blank: <checkpoint>-bk-tiny-fast")
        lora = gr.Textbox(label=FAST_LORA, placeholder="blank: <student>-lcm")
    with gr.Row():
        distil_steps = gr.Number(label=FAST_STEPS["distil"], value=1000, precision=0)
        lcm_steps = gr.Number(label=FAST_STEPS["lcm"], value=1000, precision=0)
        prompts = gr.Number(label=FAST_WIDGETS["--self"], value=256, precision=0)
        resolution = gr.Number(label=FAST_WIDGETS["--resolution"], value=512, precision=0)
        vram = gr.Textbox(label=VRAM, value="auto")
        overwrite = gr.Checkbox(label=FAST_OVERWRITE, value=False)
    plan = gr.Markdown("Press *Show route and time* to see what will run, the memory estimate and the time it expects.",
                       elem_id="sdkd_fast_plan")
    with gr.Row():
        show = gr.Button("Show route and time", elem_id="sdkd_fast_show")
        go = gr.Button("Make it fast", variant="primary", elem_id="sdkd_fast")
    return Section([target, student, lora, distil_steps, lcm_steps, prompts, resolution, vram, overwrite], go,
                   plan=plan, show=show)


def few_step_section(gr, checkpoints: list[str]) -> Section:
    """The Few-step LoRA widgets (FewStepFields' order after the checkpoint)."""
    w = LCM_WIDGETS
    gr.Markdown("Train a few-step (LCM) LoRA for the checkpoint above (a teacher or a BK-SDM student): with it the "
                "model draws in 4 sampler steps at CFG 1. It learns to jump along the teacher's guided sampling (the "
                "model itself, or for a student the checkpoint it was made from). It lands in your LoRA folder.")
    with gr.Row():
        teacher = gr.Dropdown(label=w["--teacher"], choices=[NO_TEACHER, *checkpoints], value=NO_TEACHER)
        kind = gr.Radio(label="Training data", choices=list(DATA_KINDS), value=DATA_KINDS[2])
    with gr.Row():
        path = gr.Textbox(label=w["--data"])
        count = gr.Number(label=w["--self"], value=500, precision=0)
    with gr.Row():
        steps = gr.Number(label=w["--steps"], value=1000, precision=0)
        rank = gr.Number(label=w["--rank"], value=64, precision=0)
        resolution = gr.Number(label=w["--resolution"], value=512, precision=0)
        guidance = gr.Number(label=w["--guidance"], value=7.5)
        vram = gr.Textbox(label=w["--vram"], value="auto")
        every = gr.Number(label=w["--preview-every"], value=100, precision=0)
    with gr.Row():
        name = gr.Textbox(label=LCM_NAME, placeholder="blank: <checkpoint>-lcm")
        resume = gr.Checkbox(label=w["--resume"], value=False)
        keep = gr.Checkbox(label=w["--keep-state"], value=False)
        overwrite = gr.Checkbox(label=LCM_OVERWRITE, value=False)
    estimate = gr.Markdown("Pick a checkpoint to see the memory estimate.", elem_id="sdkd_fewstep_estimate")
    go = gr.Button("Train few-step LoRA", variant="primary", elem_id="sdkd_fewstep")
    return Section([teacher, kind, path, count, steps, rank, resolution, guidance, vram, every, name, resume, overwrite,
                    keep], go, estimate=estimate, teacher=teacher, rank=rank, resolution=resolution)


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
            ckpt = gr.Dropdown(label="Checkpoint (teacher or student)", choices=names(), value=current,
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
                gr.Markdown("Cut the UNet down to a BK-SDM student, initialised from the teacher's own blocks. "
                            "The student appears in your checkpoint list.")
                with gr.Row():
                    variant = gr.Radio(label="Student", choices=list(VARIANTS), value="small")
                    dtype = gr.Radio(label="Weights", choices=["fp16", "bf16", "fp32"], value="fp16")
                with gr.Row():
                    name = gr.Textbox(label=PRUNE_NAME, placeholder="blank: <checkpoint>-bk-<variant>")
                    overwrite = gr.Checkbox(label=PRUNE_OVERWRITE, value=False, elem_id="sdkd_overwrite")
                    portable = gr.Checkbox(label=PORTABLE, value=False)
                go = gr.Button("Prune", variant="primary", elem_id="sdkd_prune")
            with gr.Tab("Distil"):
                gr.Markdown("Train the student to imitate the teacher (output and per-block feature distillation). "
                            "The loss curve and sample grids (teacher row above student row, fixed prompts and seeds) "
                            "show below while it trains. Cancel keeps a usable student and the run's state; tick "
                            "Resume to continue later. A finished run keeps only its loss log and samples unless Keep "
                            "training state is ticked.")
                with gr.Row():
                    d_variant = gr.Radio(label=DISTIL_WIDGETS["--variant"], choices=list(VARIANTS), value="small")
                    d_kind = gr.Radio(label="Training data", choices=list(DATA_KINDS), value=DATA_KINDS[2])
                with gr.Row():
                    d_path = gr.Textbox(label=DISTIL_WIDGETS["--data"])
                    d_count = gr.Number(label=DISTIL_WIDGETS["--self"], value=500, precision=0)
                with gr.Row():
                    d_steps = gr.Number(label=DISTIL_WIDGETS["--steps"], value=1000, precision=0)
                    d_res = gr.Number(label=DISTIL_WIDGETS["--resolution"], value=512, precision=0)
                    d_vram = gr.Textbox(label=DISTIL_WIDGETS["--vram"], value="auto")
                    d_every = gr.Number(label=DISTIL_WIDGETS["--preview-every"], value=100, precision=0)
                with gr.Row():
                    l_sd = gr.Number(label=DISTIL_WIDGETS["--l-sd"], value=1.0)
                    l_out = gr.Number(label=DISTIL_WIDGETS["--l-out"], value=1.0)
                    l_feat = gr.Number(label=DISTIL_WIDGETS["--l-feat"], value=1.0)
                with gr.Row():
                    d_name = gr.Textbox(label=DISTIL_NAME, placeholder="blank: <checkpoint>-bk-<variant>-kd")
                    d_resume = gr.Checkbox(label=DISTIL_WIDGETS["--resume"], value=False)
                    d_keep = gr.Checkbox(label=DISTIL_WIDGETS["--keep-state"], value=False)
                    d_over = gr.Checkbox(label=DISTIL_OVERWRITE, value=False)
                    d_portable = gr.Checkbox(label=PORTABLE, value=False)
                d_estimate = gr.Markdown("Pick a teacher to see the memory estimate.", elem_id="sdkd_distil_estimate")
                d_go = gr.Button("Distil", variant="primary", elem_id="sdkd_distill")
            with gr.Tab("LoRA"):
                gr.Markdown("Train a LoRA on the chosen checkpoint (students included); it lands in your LoRA folder "
                            "with block names that A1111, Forge and ComfyUI apply to the right layers.")
                with gr.Row():
                    l_folder = gr.Textbox(label=LORA_WIDGETS["--data"])
                    l_te = gr.Checkbox(label=LORA_WIDGETS["--text-encoder"], value=False)
                with gr.Row():
                    l_rank = gr.Number(label=LORA_WIDGETS["--rank"], value=16, precision=0)
                    l_alpha = gr.Number(label=LORA_WIDGETS["--alpha"], value=16)
                    l_steps = gr.Number(label=LORA_WIDGETS["--steps"], value=1000, precision=0)
                    l_res = gr.Number(label=LORA_WIDGETS["--resolution"], value=512, precision=0)
                    l_vram = gr.Textbox(label=LORA_WIDGETS["--vram"], value="auto")
                    l_every = gr.Number(label=LORA_WIDGETS["--preview-every"], value=100, precision=0)
                with gr.Row():
                    l_name = gr.Textbox(label=LORA_NAME, placeholder="blank: <checkpoint>-lora")
                    l_resume = gr.Checkbox(label=LORA_WIDGETS["--resume"], value=False)
                    l_keep = gr.Checkbox(label=LORA_WIDGETS["--keep-state"], value=False)
                    l_over = gr.Checkbox(label=LORA_OVERWRITE, value=False)
                l_estimate = gr.Markdown("Pick a checkpoint to see the memory estimate.", elem_id="sdkd_lora_estimate")
                l_go = gr.Button("Train LoRA", variant="primary", elem_id="sdkd_lora")
            with gr.Tab("Few-step LoRA"):
                few = few_step_section(gr, names())
            with gr.Tab("Compare"):
                gr.Markdown("The same prompts and seeds through the teacher (checkpoint above) and each student: "
                            "a grid and how closely each student agrees with the teacher.")
                c_students = gr.Dropdown(label="Students", choices=names(), multiselect=True)
                c_prompts = gr.Textbox(label="Prompts, one per line", lines=4)
                with gr.Row():
                    c_seeds = gr.Textbox(label="Seeds", value="0 1")
                    c_size = gr.Number(label=COMPARE_WIDGETS["--size"], value=512, precision=0)
                    c_name = gr.Textbox(label=REPORT_NAME, value="report",
                                        placeholder="a folder in sdkd-compare beside your checkpoints")
                gr.Markdown("Students are drawn at their own settings, the teacher at its own (the reference): e.g. "
                            "students with an LCM LoRA at lcm, 4 steps, guidance 1 against the teacher at 25 steps, 7.5.")
                with gr.Row():
                    c_sampler = gr.Dropdown(label=COMPARE_WIDGETS["--sampler"], choices=list(SAMPLER_NAMES),
                                            value=DEFAULT_SAMPLER)
                    c_steps = gr.Number(label=COMPARE_WIDGETS["--steps"], value=25, precision=0)
                    c_guidance = gr.Number(label=COMPARE_WIDGETS["--guidance"], value=7.5)
                    c_lora = gr.Dropdown(label=COMPARE_WIDGETS["--lora"], choices=[NO_LORA, *host.loras()], value=NO_LORA)
                    c_weight = gr.Number(label=COMPARE_LORA_WEIGHT, value=1.0)
                with gr.Row():
                    c_ref_steps = gr.Number(label=COMPARE_WIDGETS["--reference-steps"], value=25, precision=0)
                    c_ref_guidance = gr.Number(label=COMPARE_WIDGETS["--reference-guidance"], value=7.5)
                c_go = gr.Button("Compare", variant="primary", elem_id="sdkd_compare")
                c_grid = gr.Image(label="Grid", type="pil", interactive=False)
            with gr.Tab("Bench"):
                gr.Markdown("How much faster each student runs than the teacher (checkpoint above) on this machine's "
                            "GPU (the CPU without one): one UNet step and a whole image, timed in turn, with memory.")
                b_students = gr.Dropdown(label="Students", choices=names(), multiselect=True)
                with gr.Row():
                    b_size = gr.Number(label=BENCH_WIDGETS["--size"], value=512, precision=0)
                    b_sampler = gr.Dropdown(label=BENCH_WIDGETS["--sampler"], choices=list(SAMPLER_NAMES),
                                            value=DEFAULT_SAMPLER)
                    b_steps = gr.Number(label=BENCH_WIDGETS["--steps"], value=25, precision=0)
                    b_guidance = gr.Number(label=BENCH_WIDGETS["--guidance"], value=7.5)
                    b_repeats = gr.Number(label=BENCH_WIDGETS["--repeats"], value=5, precision=0)
                    b_t2i = gr.Number(label=BENCH_WIDGETS["--t2i-repeats"], value=3, precision=0)
                    b_name = gr.Textbox(label=BENCH_NAME, value="bench",
                                        placeholder="a folder in sdkd-bench beside your checkpoints")
                b_go = gr.Button("Bench", variant="primary", elem_id="sdkd_bench")
                with gr.Column(elem_id="sdkd_bench_result"):
                    b_table = gr.Markdown("")
                    b_chart = gr.Image(label="Chart", type="pil", interactive=False)
            with gr.Tab("LoRA port"):
                gr.Markdown("Move a LoRA made for the full SD1.x model onto a student: modules in blocks the student "
                            "kept are renamed to their new place, those in removed blocks are dropped.")
                with gr.Row():
                    p_lora = gr.Dropdown(label="LoRA", choices=list(host.loras()))
                    p_to = gr.Dropdown(label=PORT_WIDGETS["--to"], choices=port_targets(host), value="small")
                with gr.Row():
                    p_name = gr.Textbox(label=PORT_NAME, placeholder="blank: <lora>-for-<target>")
                    p_alpha = gr.Checkbox(label=PORT_WIDGETS["--alpha-equals-rank"], value=False)
                    p_over = gr.Checkbox(label=PORT_OVERWRITE, value=False)
                p_go = gr.Button("Port LoRA", variant="primary", elem_id="sdkd_port")
            with gr.Tab("Rebase"):
                gr.Markdown("Give a distilled student what the checkpoint above (a community fine-tune or merge) "
                            "changed in its base: student + strength x (checkpoint - base), block by block. "
                            + PUBLIC_STUDENTS)
                with gr.Row():
                    r_base = gr.Dropdown(label=REBASE_WIDGETS["--base"], choices=names())
                    r_student = gr.Dropdown(label=REBASE_WIDGETS["--student"], choices=names())
                with gr.Row():
                    r_strength = gr.Number(label=REBASE_WIDGETS["--strength"], value=1.0)
                    r_dtype = gr.Radio(label=REBASE_WIDGETS["--dtype"], choices=["fp16", "bf16", "fp32"], value="fp16")
                    r_name = gr.Textbox(label=REBASE_NAME, placeholder="blank: <checkpoint>-<student>-rebased")
                    r_over = gr.Checkbox(label=REBASE_OVERWRITE, value=False)
                r_go = gr.Button("Rebase", variant="primary", elem_id="sdkd_rebase")
        with gr.Row():
            stop = gr.Button("Cancel", elem_id="sdkd_cancel")
            load = gr.Button("Load it now", visible=False, elem_id="sdkd_load")
        status = gr.Textbox(label="Status", interactive=False, elem_id="sdkd_status")
        with gr.Row():
            loss = gr.Image(label="Loss", type="pil", interactive=False, elem_id="sdkd_loss")
            samples = gr.Image(label="Samples: teacher (top) and student; for a LoRA, without it (top) and with it; "
                                     "for a few-step LoRA, the teacher at 25 steps (top) and the LoRA at 4",
                               type="pil", interactive=False, elem_id="sdkd_samples")

        checkpoint_lists = [ckpt, c_students, b_students, r_base, r_student]
        lists = [*checkpoint_lists, p_lora, c_lora, p_to, few.teacher]

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

        def on_prune(t, c, v, n, d, o, pt, progress=gr.Progress()):
            live = Live()
            return (run(prune_job(host, c, v, n, d, o, live, pt), progress, t, gpu=False), *wrote(live),
                    *refreshed())

        def on_distill(t, c, v, k, p, n, st, r, vr, ev, a, b, f, nm, rs, o, pt, ks=False, progress=gr.Progress()):
            keep = gr.update()
            yield ("planning...", keep, keep, keep, keep, distil_estimate(host, c, v, st, r, vr, ev),
                   *(keep for _ in lists))
            live = Live()
            job = distill_job(host, c, v, k, p, n, st, r, vr, a, b, f, nm, rs, o, ev, live, pt, ks)
            for frame in streamed(job, live, progress, t):
                yield (*frame[:5], keep, *frame[5:])

        def on_lora(t, c, fo, rk, al, st, r, vr, te, nm, rs, o, ev, ks=False, progress=gr.Progress()):
            keep = gr.update()
            yield ("planning...", keep, keep, keep, keep, lora_estimate(host, c, rk, al, st, r, te, vr),
                   *(keep for _ in lists))
            live = Live()
            job = lora_job(host, c, fo, rk, al, st, r, te, nm, rs, o, vr, ev, live, ks)
            for frame in streamed(job, live, progress, t):
                yield (*frame[:5], keep, *frame[5:])

        def on_compare(t, c, ss, pr, se, nm, sz, sa, st, g, lo, w, rst, rg, progress=gr.Progress()):
            form = CompareForm(sz, sa, st, g, lo, w, rst, rg)
            result = run(compare_job(host, c, ss or [], pr, se, form, nm), progress, t)
            if not isinstance(result, tuple):
                return result, None
            from PIL import Image

            with Image.open(result[1]) as grid:
                return result[0], grid.convert("RGB")

        def on_bench(t, c, ss, sz, sa, st, g, rp, t2i, nm, progress=gr.Progress()):
            result = run(bench_job(host, c, ss or [], BenchForm(sz, sa, st, g, rp, t2i), nm), progress, t)
            return result if isinstance(result, tuple) else (result, gr.update(), gr.update())

        def on_port(t, lo, to, nm, ar, o, progress=gr.Progress()):
            return (run(port_job(host, lo, to, nm, ar, o), progress, t, gpu=False), *refreshed())

        def on_rebase(t, c, ba, stu, sg, nm, d, o, progress=gr.Progress()):
            live = Live()
            status_line = run(rebase_job(host, c, ba, stu, sg, nm, d, o, live), progress, t, gpu=False)
            return (status_line, *wrote(live), *refreshed())

        def planned(t: str, plan: str, job: Callable, live: Live):
            """A few-step section's updates: its plan or estimate first, then the job's frames (its progress shows in
            the status line and the host's bar; gradio's own overlay is hidden for long jobs)."""
            keep = gr.update()
            yield ("planning...", keep, keep, keep, keep, plan, *(keep for _ in lists))
            for frame in streamed(job, live, None, t):
                yield (*frame[:5], keep, *frame[5:])

        def on_fast(t, *values):
            fields, live = FastFields(*values), Live()
            yield from planned(t, fast_plan(host, fields), fast_job(host, fields, live), live)

        def on_few(t, *values):
            fields, live = FewStepFields(*values), Live()
            yield from planned(t, lcm_estimate(host, fields), lcm_job(host, fields, live), live)

        def on_checkpoint(c, v, st, r, vr, ev, rk, al, lst, lr, te, lvr):
            return (file_text(host, c), distil_estimate(host, c, v, st, r, vr, ev),
                    lora_estimate(host, c, rk, al, lst, lr, te, lvr))

        distil_fields = [d_variant, d_steps, d_res, d_vram, d_every]
        lora_fields = [l_rank, l_alpha, l_steps, l_res, l_te, l_vram]
        refresh.click(refreshed, outputs=lists)
        ckpt.change(on_checkpoint, inputs=[ckpt, *distil_fields, *lora_fields], outputs=[info, d_estimate, l_estimate])
        d_variant.change(lambda c, *a: distil_estimate(host, c, *a), inputs=[ckpt, *distil_fields],
                         outputs=[d_estimate])
        go.click(on_prune, inputs=[task, ckpt, variant, name, dtype, overwrite, portable],
                 outputs=[status, load, written, *lists], **page)
        long_outputs = [status, loss, samples, load, written]
        # "full" and "minimal" draw a progress overlay on every output (gradio 3.41: the curve and samples under bars);
        # the status line, the host's own progress bar and the streamed images already show how the run goes
        live_view = {"show_progress": "hidden", **page}
        d_go.click(on_distill, inputs=[task, ckpt, d_variant, d_kind, d_path, d_count, d_steps, d_res, d_vram, d_every,
                                       l_sd, l_out, l_feat, d_name, d_resume, d_over, d_portable, d_keep],
                   outputs=[*long_outputs, d_estimate, *lists], **live_view)
        l_go.click(on_lora, inputs=[task, ckpt, l_folder, l_rank, l_alpha, l_steps, l_res, l_vram, l_te, l_name,
                                    l_resume, l_over, l_every, l_keep], outputs=[*long_outputs, l_estimate, *lists], **live_view)
        c_form = [c_size, c_sampler, c_steps, c_guidance, c_lora, c_weight, c_ref_steps, c_ref_guidance]  # CompareForm's order
        c_go.click(on_compare, inputs=[task, ckpt, c_students, c_prompts, c_seeds, c_name, *c_form],
                   outputs=[status, c_grid], **page)
        b_go.click(on_bench, inputs=[task, ckpt, b_students, b_size, b_sampler, b_steps, b_guidance, b_repeats, b_t2i,
                                     b_name],
                   outputs=[status, b_table, b_chart], **page)
        p_go.click(on_port, inputs=[task, p_lora, p_to, p_name, p_alpha, p_over], outputs=[status, *lists], **page)
        r_go.click(on_rebase, inputs=[task, ckpt, r_base, r_student, r_strength, r_name, r_dtype, r_over],
                   outputs=[status, load, written, *lists], **page)
        fast_fields = [ckpt, *fast.fields]
        fast.show.click(lambda *a: fast_plan(host, FastFields(*a)), inputs=fast_fields,
                        outputs=[fast.plan])
        fast.go.click(on_fast, inputs=[task, *fast_fields], outputs=[*long_outputs, fast.plan, *lists], **live_view)
        few_inputs = [ckpt, *few.fields]
        for changed in (ckpt, few.teacher, few.rank, few.resolution):
            changed.change(lambda *a: lcm_estimate(host, FewStepFields(*a)), inputs=few_inputs,
                           outputs=[few.estimate])
        few.go.click(on_few, inputs=[task, *few_inputs], outputs=[*long_outputs, few.estimate, *lists], **live_view)
        load.click(lambda n: load_checkpoint(host, n), inputs=[written], outputs=[status])
        stop.click(control.cancel, outputs=[status], queue=False)
    return tab
