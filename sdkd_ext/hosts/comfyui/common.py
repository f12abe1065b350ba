"""What every sdkd node shares: ComfyUI's model folders and lists, its progress bar and interrupt, the node result.

ComfyUI modules (`folder_paths`, `comfy.*`) are imported inside the functions ComfyUI calls, so these
modules import (and are testable) without ComfyUI.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, TypeVar

from ...errors import SdkdError
from ...names import Output
from ...progress import Cancelled, Event, ProgressFn
from ...variants import VARIANTS

F = TypeVar("F", bound=Callable)
DTYPES = ["fp16", "bf16", "fp32"]
# ComfyUI's folder kind -> how the node's messages name it.
WHERE = {"checkpoints": "your checkpoints", "loras": "your loras"}
NONE = "(none)"  # the first choice of an optional model list


def comfy_progress(graceful: bool = False) -> ProgressFn:
    """A progress callback drawing ComfyUI's progress bar, whose page hook raises ComfyUI's interrupt. With `graceful`
    the interrupt becomes sdkd's `Cancelled` (a training job then exports what it has; the interrupt is set again, so
    the rest of the graph stops too) and later events draw nothing while the job winds down."""
    import comfy.model_management
    import comfy.utils

    bars: dict[str, object] = {}
    stopping: list[Event] = []

    def show(e: Event) -> None:
        if stopping:
            return
        bar = bars.get(e.stage)
        if bar is None:
            bar = bars[e.stage] = comfy.utils.ProgressBar(e.total)
        try:
            bar.update_absolute(e.step, e.total)
            comfy.model_management.throw_exception_if_processing_interrupted()
        except comfy.model_management.InterruptProcessingException:
            if not graceful:
                raise
            stopping.append(e)
            comfy.model_management.interrupt_current_processing(True)
            raise Cancelled(f"interrupted at {e.stage} step {e.step}/{e.total}") from None

    return show


def interrupted() -> Exception:
    """ComfyUI's own interrupt, for a job cancelled before it had anything to keep."""
    import comfy.model_management

    return comfy.model_management.InterruptProcessingException()


def free_device() -> None:
    """Unload ComfyUI's models from the GPU before a job that loads its own."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def folder(kind: str) -> Path:
    """The first folder of a ComfyUI model kind: where new files go, so ComfyUI lists them."""
    import folder_paths

    return Path(folder_paths.get_folder_paths(kind)[0])


def names(kind: str) -> list[str]:
    """ComfyUI's list of a model kind (names relative to their folder)."""
    import folder_paths

    return folder_paths.get_filename_list(kind)


def model_path(kind: str, name: str, widget: str) -> Path:
    """The file behind a name from ComfyUI's list of `kind`; a name that is not there names the widget."""
    import folder_paths

    path = folder_paths.get_full_path(kind, name) if name and name != NONE else None
    if path is None:
        raise SdkdError(f"{widget} {name!r} is not in {WHERE[kind]}; pick one from the list (press R to refresh it)")
    return Path(path)


def input_path(text: str, widget: str) -> Path:
    """A file or folder to read: a name inside ComfyUI's input folder, or a full path."""
    import folder_paths

    text = (text or "").strip()
    if not text:
        raise SdkdError(f"{widget}: give a folder or file name inside ComfyUI's input folder, or a full path")
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path


def output(kind: str, name_widget: str = "filename", widgets: dict[str, str] | None = None) -> Output:
    """Where a node writes (the first folder of `kind`) and the widgets its messages name."""
    return Output(folder(kind), WHERE[kind], name_widget, "overwrite", widgets or {})


def wording(widgets: dict[str, str]) -> Output:
    """The core's messages in the terms of a node that writes no file (the CLI flags it names -> its widgets)."""
    return Output(folder("checkpoints"), WHERE["checkpoints"], "ckpt_name", None, widgets)


def result(text: str, *outputs: object) -> dict:
    """A node's return value: the text shown on the node (web/comfyui/sdkd.js) and its outputs."""
    return {"ui": {"text": [text]}, "result": outputs}


def image_tensor(image) -> "torch.Tensor":
    """A PIL image as ComfyUI's IMAGE: float [1, H, W, 3] in 0..1."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def optional_models(kind: str = "checkpoints") -> list[str]:
    """An optional model list: '(none)' first."""
    return [NONE, *names(kind)]


def chosen(kind: str, picks: dict[str, str]) -> list[Path]:
    """The files of the optional model widgets that are not '(none)' (widget -> name), in order."""
    return [model_path(kind, name, widget) for widget, name in picks.items() if name and name != NONE]


def variant_input(default: str = "small") -> tuple:
    """The BK-SDM variant widget."""
    return (list(VARIANTS), {"default": default})


def portable_input() -> tuple:
    """The widget for `--portable` (prune, distil): the student also loads whole in web UIs without sdkd. An optional
    input, so API prompts written before it existed still run (as False)."""
    return ("BOOLEAN", {"default": False, "tooltip": "small/tiny: add an identity middle block so Forge and A1111 "
                                                     "without sdkd load every weight (+31M parameters at SD1.5 size)"})


def core_job(method: F) -> F:
    """A node method that runs a core job as the CLI runs it. ComfyUI executes every prompt under
    `torch.inference_mode()`, where training records no gradients and the tensors made cannot be used by autograd
    or updated in place later; the job runs with it off (and gradients on, the core's own no_grad applies inside)."""
    @functools.wraps(method)
    def run(*args, **kwargs):
        import torch

        with torch.inference_mode(False), torch.enable_grad():
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


class Node:
    """What every sdkd node declares the same way: its menu category."""

    CATEGORY = "sdkd"


class Job(Node):
    """A node that writes files or measures: a graph output, run every time it is queued (ComfyUI would otherwise
    reuse its last result for the same inputs, even after its file was deleted)."""

    OUTPUT_NODE = True

    @classmethod
    def IS_CHANGED(cls, **inputs) -> float:
        """Never equal to the last run's value (NaN != NaN), so ComfyUI always runs the job."""
        return float("nan")
