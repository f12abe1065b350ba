"""The sdkd tab: one gradio UI for A1111, Forge and the standalone app, over the same core functions.

Only APIs that gradio 3.41 (A1111), 4.x (Forge) and the latest release share are used:
`gr.update`, `gr.Progress`, `.click(fn, inputs, outputs)`.
"""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path
from typing import Callable, TypeVar

from .errors import SdkdError
from .hosts.base import FolderHost
from .progress import Cancelled, Event, ProgressFn
from .variants import VARIANTS

T = TypeVar("T")


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
                gpu: bool = False) -> T | str:
    """Run `job` as a host job (`gpu`: after freeing the host's VRAM) with progress and cancel wired; errors become
    a status line for the UI."""
    sinks = [host.show_progress]
    if gr_progress is not None:
        sinks.append(lambda e: gr_progress(e.fraction, desc=f"{e.stage} {e.step}/{e.total}"))
    try:
        return host.run_job(lambda: job(control.callback(*sinks)), gpu=gpu)
    except Cancelled as e:
        return f"Stopped: {e}"
    except SdkdError as e:
        return f"Error: {e}"
    except Exception as e:  # a UI must report, not crash the host
        traceback.print_exc()
        return f"Unexpected error ({type(e).__name__}): {e}"


def prune_job(host: FolderHost, checkpoint: str, variant: str, name: str, dtype: str, overwrite: bool) -> Callable[[ProgressFn], str]:
    """The tab's prune action: teacher from the host's list, student into the host's checkpoint folder."""
    from .prune import checkpoint_path, prune

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        stem = (name or "").strip() or f"{Path(checkpoint).stem}-bk-{variant}"
        r = prune(teacher, variant, checkpoint_path(host.output_dir() / stem), dtype, overwrite=overwrite, progress=progress)
        host.refresh()
        return f"Done: {r.variant} student, {r.unet_params:,} UNet parameters -> {r.checkpoint.name} (+ {r.yaml.name}) in {r.seconds:.1f}s"

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
    from .prune import checkpoint_path
    from .train import TrainConfig

    def job(progress: ProgressFn) -> str:
        teacher = _teacher(host, checkpoint)
        stem = (name or "").strip() or f"{Path(checkpoint).stem}-bk-{variant}-kd"
        r = distill(teacher, variant, checkpoint_path(host.output_dir() / stem), _data(kind, path, count),
                    TrainConfig(steps=int(steps)), LossWeights(l_sd, l_out, l_feat), resolution=int(resolution),
                    vram=(vram or "").strip() or None, resume=resume, overwrite=overwrite, progress=progress)
        host.refresh()
        where = r.exported.checkpoint.name if r.exported else "(no student written)"
        state = f"Cancelled at step {r.train.steps}/{r.train.total} (tick Resume to continue)" if r.train.cancelled else "Done"
        return f"{state}: {where}; losses {', '.join(f'{k} {v:.4g}' for k, v in r.train.losses.items())}; run folder {r.run_dir}"

    return job


def lora_job(host: FolderHost, checkpoint: str, folder: str, rank: int, alpha: float, steps: int, resolution: int,
             text_encoder: bool, name: str, resume: bool, overwrite: bool) -> Callable[[ProgressFn], str]:
    """The tab's LoRA action: train on an image folder, write the LoRA into the host's LoRA folder."""
    from .lora_train import LoraSpec, train_lora
    from .train import TrainConfig

    def job(progress: ProgressFn) -> str:
        base = _teacher(host, checkpoint)
        if not folder.strip():
            raise SdkdError("give the folder of training images (with .txt captions or metadata.jsonl)")
        stem = (name or "").strip() or f"{Path(checkpoint).stem}-lora"
        r = train_lora(base, Path(folder.strip()).expanduser(), host.lora_dir() / f"{stem}.safetensors",
                       LoraSpec(int(rank), float(alpha), text_encoder), TrainConfig(steps=int(steps), lr=1e-4),
                       resolution=int(resolution), resume=resume, overwrite=overwrite, progress=progress)
        host.refresh()
        return f"Done: {r.path} ({r.modules} modules)"

    return job


def compare_job(host: FolderHost, teacher: str, students: list[str], prompts: str, seeds: str, size: int,
                steps: int, out: str) -> Callable[[ProgressFn], tuple[str, str | None]]:
    """The tab's compare action: same prompts and seeds through each model, a grid and agreement figures."""
    from .compare import compare, write_report

    def job(progress: ProgressFn) -> tuple[str, str | None]:
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not students:
            raise SdkdError("pick at least one student to compare with the teacher")
        result = compare(_teacher(host, teacher), [_teacher(host, s) for s in students], lines,
                         [int(x) for x in seeds.replace(",", " ").split()] or [0], int(size), int(steps), progress=progress)
        files = write_report(result, Path(out).expanduser(), overwrite=True)
        return f"Report: {files['report']}", str(files["grid"])

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


def build_tab(host: FolderHost):
    """The gradio Blocks of the sdkd tab for `host`: prune, distil, LoRA and compare."""
    import gradio as gr

    control = JobControl()

    def names() -> list[str]:
        return list(host.checkpoints())

    def run(make_job, progress, gpu=True):
        return run_in_host(host, control, make_job, progress, gpu)

    with gr.Blocks(analytics_enabled=False) as tab:
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
                    name = gr.Textbox(label="Output name (blank: <checkpoint>-bk-<variant>)")
                    overwrite = gr.Checkbox(label="Overwrite an existing file", value=False, elem_id="sdkd_overwrite")
                go = gr.Button("Prune", variant="primary", elem_id="sdkd_prune")
            with gr.Tab("Distil"):
                gr.Markdown("Train the student to imitate the teacher (output and per-block feature distillation). "
                            "Cancel keeps a usable student; tick Resume to continue later.")
                with gr.Row():
                    d_variant = gr.Radio(label="Student", choices=list(VARIANTS), value="small")
                    d_kind = gr.Radio(label="Training data", choices=list(DATA_KINDS), value=DATA_KINDS[2])
                with gr.Row():
                    d_path = gr.Textbox(label="Image folder or prompt file")
                    d_count = gr.Number(label="Built-in prompts", value=500, precision=0)
                with gr.Row():
                    d_steps = gr.Number(label="Steps", value=1000, precision=0)
                    d_res = gr.Number(label="Resolution", value=512, precision=0)
                    d_vram = gr.Textbox(label="VRAM budget (GB or auto)", value="auto")
                with gr.Row():
                    l_sd = gr.Number(label="Task loss weight", value=1.0)
                    l_out = gr.Number(label="Output KD weight", value=1.0)
                    l_feat = gr.Number(label="Feature KD weight", value=1.0)
                with gr.Row():
                    d_name = gr.Textbox(label="Output name (blank: <checkpoint>-bk-<variant>-kd)")
                    d_resume = gr.Checkbox(label="Resume", value=False)
                    d_over = gr.Checkbox(label="Overwrite", value=False)
                d_go = gr.Button("Distil", variant="primary", elem_id="sdkd_distill")
            with gr.Tab("LoRA"):
                gr.Markdown("Train a LoRA on the chosen checkpoint (students included); it lands in your LoRA folder "
                            "with block names that A1111, Forge and ComfyUI apply to the right layers.")
                with gr.Row():
                    l_folder = gr.Textbox(label="Image folder (with .txt captions or metadata.jsonl)")
                    l_te = gr.Checkbox(label="Also train the text encoder", value=False)
                with gr.Row():
                    l_rank = gr.Number(label="Rank", value=16, precision=0)
                    l_alpha = gr.Number(label="Alpha", value=16)
                    l_steps = gr.Number(label="Steps", value=1000, precision=0)
                    l_res = gr.Number(label="Resolution", value=512, precision=0)
                with gr.Row():
                    l_name = gr.Textbox(label="LoRA name (blank: <checkpoint>-lora)")
                    l_resume = gr.Checkbox(label="Resume", value=False)
                    l_over = gr.Checkbox(label="Overwrite", value=False)
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
                    c_out = gr.Textbox(label="Report folder", value=str(host.output_dir() / "sdkd-compare"))
                c_go = gr.Button("Compare", variant="primary", elem_id="sdkd_compare")
                c_grid = gr.Image(label="Grid", type="filepath")
        with gr.Row():
            stop = gr.Button("Cancel", elem_id="sdkd_cancel")
        status = gr.Textbox(label="Status", interactive=False, elem_id="sdkd_status")

        def on_prune(c, v, n, d, o, progress=gr.Progress()):
            return run(prune_job(host, c, v, n, d, o), progress, gpu=False)

        def on_distill(c, v, k, p, n, st, r, vr, a, b, f, nm, rs, o, progress=gr.Progress()):
            return run(distill_job(host, c, v, k, p, n, st, r, vr, a, b, f, nm, rs, o), progress)

        def on_lora(c, fo, rk, al, st, r, te, nm, rs, o, progress=gr.Progress()):
            return run(lora_job(host, c, fo, rk, al, st, r, te, nm, rs, o), progress)

        def on_compare(c, ss, pr, se, sz, st, out, progress=gr.Progress()):
            result = run(compare_job(host, c, ss or [], pr, se, sz, st, out), progress)
            return result if isinstance(result, tuple) else (result, None)

        def on_refresh():
            return gr.update(choices=names()), gr.update(choices=names())

        refresh.click(on_refresh, outputs=[ckpt, c_students])
        ckpt.change(lambda c: inspect_text(host, c), inputs=[ckpt], outputs=[info])
        go.click(on_prune, inputs=[ckpt, variant, name, dtype, overwrite], outputs=[status])
        d_go.click(on_distill, inputs=[ckpt, d_variant, d_kind, d_path, d_count, d_steps, d_res, d_vram, l_sd, l_out,
                                       l_feat, d_name, d_resume, d_over], outputs=[status])
        l_go.click(on_lora, inputs=[ckpt, l_folder, l_rank, l_alpha, l_steps, l_res, l_te, l_name, l_resume, l_over],
                   outputs=[status])
        c_go.click(on_compare, inputs=[ckpt, c_students, c_prompts, c_seeds, c_size, c_steps, c_out],
                   outputs=[status, c_grid])
        stop.click(control.cancel, outputs=[status])
    return tab
