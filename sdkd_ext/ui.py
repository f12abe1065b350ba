"""The sdkd tab: one gradio UI for A1111, Forge and the standalone app, over the same core functions.

Only APIs that gradio 3.41 (A1111), 4.x (Forge) and the latest release share are used:
`gr.update`, `gr.Progress`, `.click(fn, inputs, outputs)`.
"""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path
from typing import Callable

from .errors import SdkdError
from .hosts.base import FolderHost
from .progress import Cancelled, Event, ProgressFn
from .variants import VARIANTS


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


def run_in_host(host: FolderHost, control: JobControl, job: Callable[[ProgressFn], str], gr_progress=None) -> str:
    """Run `job` as the host's GPU job with progress and cancel wired; return a status line for the UI."""
    sinks = [host.show_progress]
    if gr_progress is not None:
        sinks.append(lambda e: gr_progress(e.fraction, desc=f"{e.stage} {e.step}/{e.total}"))
    try:
        return host.run_job(lambda: job(control.callback(*sinks)))
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
        teacher = host.checkpoints().get(checkpoint)
        if teacher is None:
            raise SdkdError(f"pick a checkpoint first (got {checkpoint!r}); press refresh if you just added it")
        stem = (name or "").strip() or f"{Path(checkpoint).stem}-bk-{variant}"
        r = prune(teacher, variant, checkpoint_path(host.output_dir() / stem), dtype, overwrite=overwrite, progress=progress)
        host.refresh()
        return f"Done: {r.variant} student, {r.unet_params:,} UNet parameters -> {r.checkpoint.name} (+ {r.yaml.name}) in {r.seconds:.1f}s"

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
    """The gradio Blocks of the sdkd tab for `host`."""
    import gradio as gr

    control = JobControl()
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Prune an SD1.x checkpoint into a BK-SDM student. The new checkpoint appears in your model list.")
        with gr.Row():
            ckpt = gr.Dropdown(label="Checkpoint (teacher)", choices=list(host.checkpoints()), elem_id="sdkd_checkpoint")
            refresh = gr.Button("Refresh", elem_id="sdkd_refresh")
        info = gr.Code(label="What this file is", language="json", interactive=False)
        with gr.Row():
            variant = gr.Radio(label="Student", choices=list(VARIANTS), value="small")
            dtype = gr.Radio(label="Weights", choices=["fp16", "bf16", "fp32"], value="fp16")
        with gr.Row():
            name = gr.Textbox(label="Output name (blank: <checkpoint>-bk-<variant>)")
            overwrite = gr.Checkbox(label="Overwrite an existing file", value=False, elem_id="sdkd_overwrite")
        with gr.Row():
            go = gr.Button("Prune", variant="primary", elem_id="sdkd_prune")
            stop = gr.Button("Cancel", elem_id="sdkd_cancel")
        status = gr.Textbox(label="Status", interactive=False, elem_id="sdkd_status")

        def on_prune(c, v, n, d, o, progress=gr.Progress()):
            return run_in_host(host, control, prune_job(host, c, v, n, d, o), progress)

        refresh.click(lambda: gr.update(choices=list(host.checkpoints())), outputs=[ckpt])
        ckpt.change(lambda c: inspect_text(host, c), inputs=[ckpt], outputs=[info])
        go.click(on_prune, inputs=[ckpt, variant, name, dtype, overwrite], outputs=[status])
        stop.click(control.cancel, outputs=[status])
    return tab
