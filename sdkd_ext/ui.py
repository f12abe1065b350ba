"""The sdkd tab: one gradio UI for A1111, Forge and the standalone app, over the same core functions.

Only APIs that gradio 3.41 (A1111), 4.x (Forge) and the latest release share are used:
`gr.update`, `gr.Progress`, `.click(fn, inputs, outputs)`; the one keyword they spell differently (the page
function run before a click) is chosen in `before_click`. Output names go through `names.path_in_folder`, and
messages name the tab's widgets and show paths relative to the folder.
"""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path
from typing import Callable, TypeVar

from .errors import SdkdError
from .hosts.base import FolderHost
from .names import Output
from .progress import Cancelled, Event, ProgressFn
from .variants import VARIANTS

T = TypeVar("T")

# Labels of the widgets that name outputs: the tab shows them and its messages name them.
PRUNE_NAME, PRUNE_OVERWRITE = "Output name", "Overwrite an existing file"
DISTIL_NAME, DISTIL_OVERWRITE = "Student name", "Overwrite"
LORA_NAME, LORA_OVERWRITE = "LoRA name", "Overwrite"
REPORT_NAME = "Report name"
# The CLI flag each tab widget stands for, so a core message naming the flag names the widget instead.
DISTIL_WIDGETS = {"--variant": "Student", "--data": "Image folder or prompt file", "--prompts": "Image folder or prompt file",
                  "--self": "Built-in prompts", "--steps": "Steps", "--resolution": "Resolution",
                  "--vram": "VRAM budget (GB or auto)", "--l-sd": "Task loss weight", "--l-out": "Output KD weight",
                  "--l-feat": "Feature KD weight", "--resume": "Resume"}
LORA_WIDGETS = {"--data": "Image folder (with .txt captions or metadata.jsonl)", "--text-encoder": "Also train the text encoder",
                "--rank": "Rank", "--alpha": "Alpha", "--steps": "Steps", "--resolution": "Resolution", "--resume": "Resume"}


class JobControl:
    """The tab's cancel flag, turned into a progress callback that raises `Cancelled` when set."""

    def __init__(self) -> None:
        self._cancel = threading.Event()

    def cancel(self) -> str:
        """Ask the running job to stop at its next progress report."""
        self._cancel.set()
        return "cancelling at the next step..."

    def callback(self, *sinks: Callable[[Event], None]) -> ProgressFn:
        """A progress function that feeds every sink and honours the cancel flag."""
        self._cancel.clear()

        def progress(e: Event) -> None:
            for sink in sinks:
                sink(e)
            if self._cancel.is_set():
                raise Cancelled(f"cancelled at {e.stage} step {e.step}/{e.total}")

        return progress


def run_in_host(host: FolderHost, control: JobControl, job: Callable[[ProgressFn], T], gr_progress=None,
                gpu: bool = False, task: str | None = None) -> T | str:
    """Run `job` as host job `task` (`gpu`: after freeing the host's VRAM) with progress and cancel wired; errors
    become a status line for the UI."""
    sinks = [host.show_progress]
    if gr_progress is not None:
        sinks.append(lambda e: gr_progress(e.fraction, desc=f"{e.stage} {e.step}/{e.total}"))
    try:
        return host.run_job(lambda: job(control.callback(*sinks)), gpu=gpu, task=task or None)
    except Cancelled as e:
        return f"Stopped: {e}"
    except SdkdError as e:
        return f"Error: {e}"
    except Exception as e:  # a UI must report, not crash the host
        traceback.print_exc()
        return f"Unexpected error ({type(e).__name__}): {e}"


def prune_job(host: FolderHost, checkpoint: str, variant: str, name: str, dtype: str, overwrite: bool) -> Callable[[ProgressFn], str]:
    """The tab's prune action: teacher from the host's list, student into the host's checkpoint folder."""
    from .prune import prune

    out = Output(host.output_dir(), "your checkpoint folder", PRUNE_NAME, PRUNE_OVERWRITE)

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        target = out.path(name, f"{Path(checkpoint).stem}-bk-{variant}", ".safetensors", (teacher,))
        with out.worded():
            r = prune(teacher, variant, target, dtype, overwrite=overwrite, progress=progress)
        host.refresh()
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
    from .data import FolderData, PromptData, builtin_prompts, read_prompts

    if kind == DATA_KINDS[0]:
        if not path.strip():
            raise SdkdError("give the folder of training images (with .txt captions or metadata.jsonl)")
        return FolderData(Path(path.strip()).expanduser())
    if kind == DATA_KINDS[1]:
        return PromptData(tuple(read_prompts(path.strip())), origin=f"prompts {Path(path.strip()).name}")
    return PromptData(tuple(builtin_prompts(int(count))), origin="built-in prompts")


DATA_KINDS = ("image folder", "prompt file (teacher generates)", "built-in prompts (teacher generates)")


def distill_job(host: FolderHost, checkpoint: str, variant: str, kind: str, path: str, count: int, steps: int,
                resolution: int, vram: str, l_sd: float, l_out: float, l_feat: float, name: str, resume: bool,
                overwrite: bool) -> Callable[[ProgressFn], str]:
    """The tab's distil action: a student distilled on the GPU, exported into the host's checkpoint folder."""
    from .distill import LossWeights, distill
    from .train import TrainConfig

    out = Output(host.output_dir(), "your checkpoint folder", DISTIL_NAME, DISTIL_OVERWRITE, DISTIL_WIDGETS)

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        target = out.path(name, f"{Path(checkpoint).stem}-bk-{variant}-kd", ".safetensors", (teacher,))
        with out.worded():
            r = distill(teacher, variant, target, _data(kind, path, count),
                        TrainConfig(steps=int(steps)), LossWeights(l_sd, l_out, l_feat), resolution=int(resolution),
                        vram=(vram or "").strip() or None, resume=resume, overwrite=overwrite, progress=progress)
        host.refresh()
        where = out.shown(r.exported.checkpoint) if r.exported else "(no student written)"
        state = f"Cancelled at step {r.train.steps}/{r.train.total} (tick Resume to continue)" if r.train.cancelled else "Done"
        return (f"{state}: {where}; losses {', '.join(f'{k} {v:.4g}' for k, v in r.train.losses.items())}; "
                f"run folder {out.shown(r.run_dir)}")

    return job


def lora_job(host: FolderHost, checkpoint: str, folder: str, rank: int, alpha: float, steps: int, resolution: int,
             text_encoder: bool, name: str, resume: bool, overwrite: bool) -> Callable[[ProgressFn], str]:
    """The tab's LoRA action: train on an image folder, write the LoRA into the host's LoRA folder."""
    from .lora.train import LoraSpec, train_lora
    from .train import TrainConfig

    out = Output(host.lora_dir(), "your LoRA folder", LORA_NAME, LORA_OVERWRITE, LORA_WIDGETS)

    def job(progress: ProgressFn) -> str:
        base = _teacher(host, checkpoint)
        if not folder.strip():
            raise SdkdError("give the folder of training images (with .txt captions or metadata.jsonl)")
        target = out.path(name, f"{Path(checkpoint).stem}-lora", ".safetensors", (base,))
        with out.worded():
            r = train_lora(base, Path(folder.strip()).expanduser(), target,
                           LoraSpec(int(rank), float(alpha), text_encoder), TrainConfig(steps=int(steps), lr=1e-4),
                           resolution=int(resolution), resume=resume, overwrite=overwrite, progress=progress)
        host.refresh()
        return f"Done: {out.shown(r.path)} ({r.modules} modules)"

    return job


def compare_job(host: FolderHost, teacher: str, students: list[str], prompts: str, seeds: str, size: int,
                steps: int, name: str) -> Callable[[ProgressFn], tuple[str, str | None]]:
    """The tab's compare action: same prompts and seeds through each model, a grid and agreement figures."""
    from .compare import compare, write_report

    out = Output(host.report_dir(), "the sdkd-compare folder", REPORT_NAME)  # a same-named report is replaced

    def job(progress: ProgressFn) -> tuple[str, str | None]:
        folder = out.path(name, "report")
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not students:
            raise SdkdError("pick at least one student to compare with the teacher")
        result = compare(_teacher(host, teacher), [_teacher(host, s) for s in students], lines,
                         [int(x) for x in seeds.replace(",", " ").split()] or [0], int(size), int(steps), progress=progress)
        files = write_report(result, folder, overwrite=True)
        return f"Report: {out.shown(files['report'])}", str(files["grid"])

    return job


def inspect_text(host: FolderHost, checkpoint: str) -> str:
    """What the chosen checkpoint is, for the tab's info box."""
    from .checkpoint import open_model
    from .detect import describe

    path = host.checkpoints().get(checkpoint)
    if path is None:
        return ""
    try:
        info = describe(open_model(path))
    except SdkdError as e:
        return f"Cannot read: {e}"
    d = {k: v for k, v in info.as_dict().items() if k in ("kind", "variant", "unet_params", "dtype", "has_vae", "has_text_encoder", "reason") and v}
    return json.dumps(d, indent=1)


def before_click(js: str | None) -> dict:
    """gradio's keyword for a page function run before the call: `_js` up to 3.x (A1111), `js` from 4.0 (Forge's
    4.40 takes both, the latest only `js`)."""
    if not js:
        return {}
    import gradio as gr

    return {"_js" if int(gr.__version__.split(".")[0]) < 4 else "js": js}


def build_tab(host: FolderHost):
    """The gradio Blocks of the sdkd tab for `host`: prune, distil, LoRA and compare."""
    import gradio as gr

    control = JobControl()
    page = before_click(host.page_js)

    def names() -> list[str]:
        return list(host.checkpoints())

    def lists() -> tuple:
        """New choices for both checkpoint lists (gr.update: the one form gradio 3.41, 4.x and later share)."""
        return gr.update(choices=names()), gr.update(choices=names())

    def run(make_job, progress, task, gpu=True):
        return run_in_host(host, control, make_job, progress, gpu, task)

    with gr.Blocks(analytics_enabled=False) as tab:
        task = gr.Textbox(visible=False, elem_id="sdkd_task")  # the page's job id (javascript/sdkd.js), if any
        with gr.Row():
            ckpt = gr.Dropdown(label="Checkpoint (teacher or student)", choices=names(), elem_id="sdkd_checkpoint")
            refresh = gr.Button("Refresh", elem_id="sdkd_refresh")
        info = gr.Code(label="What this file is", language="json", interactive=False)
        with gr.Tabs():
            with gr.Tab("Prune"):
                gr.Markdown("Cut the UNet down to a BK-SDM student, initialised from the teacher's own blocks. "
                            "The student appears in your checkpoint list.")
                with gr.Row():
                    variant = gr.Radio(label="Student", choices=list(VARIANTS), value="small")
                    dtype = gr.Radio(label="Weights", choices=["fp16", "bf16", "fp32"], value="fp16")
                with gr.Row():
                    name = gr.Textbox(label=PRUNE_NAME, placeholder="blank: <checkpoint>-bk-<variant>")
                    overwrite = gr.Checkbox(label=PRUNE_OVERWRITE, value=False, elem_id="sdkd_overwrite")
                go = gr.Button("Prune", variant="primary", elem_id="sdkd_prune")
            with gr.Tab("Distil"):
                gr.Markdown("Train the student to imitate the teacher (output and per-block feature distillation). "
                            "Cancel keeps a usable student; tick Resume to continue later.")
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
                with gr.Row():
                    l_sd = gr.Number(label=DISTIL_WIDGETS["--l-sd"], value=1.0)
                    l_out = gr.Number(label=DISTIL_WIDGETS["--l-out"], value=1.0)
                    l_feat = gr.Number(label=DISTIL_WIDGETS["--l-feat"], value=1.0)
                with gr.Row():
                    d_name = gr.Textbox(label=DISTIL_NAME, placeholder="blank: <checkpoint>-bk-<variant>-kd")
                    d_resume = gr.Checkbox(label=DISTIL_WIDGETS["--resume"], value=False)
                    d_over = gr.Checkbox(label=DISTIL_OVERWRITE, value=False)
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
                with gr.Row():
                    l_name = gr.Textbox(label=LORA_NAME, placeholder="blank: <checkpoint>-lora")
                    l_resume = gr.Checkbox(label=LORA_WIDGETS["--resume"], value=False)
                    l_over = gr.Checkbox(label=LORA_OVERWRITE, value=False)
                l_go = gr.Button("Train LoRA", variant="primary", elem_id="sdkd_lora")
            with gr.Tab("Compare"):
                gr.Markdown("The same prompts and seeds through the teacher (checkpoint above) and each student: "
                            "a grid and how closely each student agrees with the teacher.")
                c_students = gr.Dropdown(label="Students", choices=names(), multiselect=True)
                c_prompts = gr.Textbox(label="Prompts, one per line", lines=4)
                with gr.Row():
                    c_seeds = gr.Textbox(label="Seeds", value="0 1")
                    c_size = gr.Number(label="Size", value=512, precision=0)
                    c_steps = gr.Number(label="Steps", value=25, precision=0)
                    c_name = gr.Textbox(label=REPORT_NAME, value="report",
                                        placeholder="a folder in sdkd-compare beside your checkpoints")
                c_go = gr.Button("Compare", variant="primary", elem_id="sdkd_compare")
                c_grid = gr.Image(label="Grid", type="filepath")
        with gr.Row():
            stop = gr.Button("Cancel", elem_id="sdkd_cancel")
        status = gr.Textbox(label="Status", interactive=False, elem_id="sdkd_status")

        def on_prune(t, c, v, n, d, o, progress=gr.Progress()):
            return (run(prune_job(host, c, v, n, d, o), progress, t, gpu=False), *lists())

        def on_distill(t, c, v, k, p, n, st, r, vr, a, b, f, nm, rs, o, progress=gr.Progress()):
            job = distill_job(host, c, v, k, p, n, st, r, vr, a, b, f, nm, rs, o)
            return (run(job, progress, t), *lists())

        def on_lora(t, c, fo, rk, al, st, r, te, nm, rs, o, progress=gr.Progress()):
            return run(lora_job(host, c, fo, rk, al, st, r, te, nm, rs, o), progress, t)

        def on_compare(t, c, ss, pr, se, sz, st, nm, progress=gr.Progress()):
            result = run(compare_job(host, c, ss or [], pr, se, sz, st, nm), progress, t)
            return result if isinstance(result, tuple) else (result, None)

        refresh.click(lists, outputs=[ckpt, c_students])
        ckpt.change(lambda c: inspect_text(host, c), inputs=[ckpt], outputs=[info])
        go.click(on_prune, inputs=[task, ckpt, variant, name, dtype, overwrite], outputs=[status, ckpt, c_students], **page)
        d_go.click(on_distill, inputs=[task, ckpt, d_variant, d_kind, d_path, d_count, d_steps, d_res, d_vram, l_sd,
                                       l_out, l_feat, d_name, d_resume, d_over], outputs=[status, ckpt, c_students], **page)
        l_go.click(on_lora, inputs=[task, ckpt, l_folder, l_rank, l_alpha, l_steps, l_res, l_te, l_name, l_resume,
                                    l_over], outputs=[status], **page)
        c_go.click(on_compare, inputs=[task, ckpt, c_students, c_prompts, c_seeds, c_size, c_steps, c_name],
                   outputs=[status, c_grid], **page)
        stop.click(control.cancel, outputs=[status])
    return tab
