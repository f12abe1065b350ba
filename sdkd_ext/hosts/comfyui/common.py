"""What every sdkd node shares: ComfyUI's model folders and lists, its progress bar and interrupt, the node result.

ComfyUI modules (`folder_paths`, `comfy.*`) are imported inside the functions ComfyUI calls, so these
modules import (and are testable) without ComfyUI.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Callable, TypeVar

from ...errors import SdkdError
from ...names import Output
from ...progress import Cancelled, Event, ProgressFn
from ...terms import NONE, node_input
from ...variants import VARIANTS

F = TypeVar("F", bound=Callable)
# ComfyUI's folder kind -> how the node's messages name it.
WHERE = {"checkpoints": "your checkpoints", "loras": "your loras"}


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


def input_path(text: str, widget: str, folder: bool) -> Path:
    """An existing file (or `folder`) to read: a name inside ComfyUI's input folder, or a full path."""
    import folder_paths

    text = (text or "").strip()
    if not text:
        raise SdkdError(f"{widget}: give a folder or file name inside ComfyUI's input folder, or a full path")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path
    if not (path.is_dir() if folder else path.is_file()):
        what = "folder" if folder else "file"
        raise SdkdError(f"{widget} {text!r}: no such {what}; put the {what} in ComfyUI's input folder under that name, "
                        "or give a full path")
    return path


def output(kind: str, job: str, name: str = "--out") -> Output:
    """Where a node of `job` writes (the first folder of `kind`) the file its input for `name` names, its messages
    naming its inputs (sdkd_ext.terms)."""
    return Output.of(job, "node", folder(kind), WHERE[kind], name)


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


def inputs(job: str, *names: str, **choices: list) -> dict[str, tuple]:
    """Fields of `job` as ComfyUI inputs, by input name, from sdkd_ext.terms (default, limits, tooltip); `choices`
    (by field name) makes a field a list of those (a model list, the variants)."""
    from ...terms import JOBS

    made = {}
    for name in names:
        kind, opts = node_input(job, name)
        made[JOBS[job][name].node] = (choices.get(name, kind), opts)
    return made


def variants() -> list[str]:
    """The BK-SDM variant list."""
    return list(VARIANTS)


# ComfyUI's number widget types -> how a message asks for one.
NUMBERS = {"INT": "a whole number", "FLOAT": "a number"}


def bad_value(name: str, spec: tuple, value: object) -> str | None:
    """Why `value` does not fit the widget `name` as the node declares it (its type, min and max), in the node's
    terms; None when it fits. ComfyUI checks the same before it runs a prompt; an API prompt or a script need not."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if not isinstance(kind, str):  # a list of choices: ComfyUI offers only those, and the node names a missing model
        return None
    if kind in NUMBERS:
        lo, hi = opts.get("min", -math.inf), opts.get("max", math.inf)
        fits = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (kind == "FLOAT" or float(value).is_integer()) and lo <= value <= hi)
        return None if fits else f"{name} {value!r}: give {NUMBERS[kind]} from {lo:g} to {hi:g}"
    if kind == "STRING" and not isinstance(value, str):
        return f"{name} {value!r}: give text"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{name} {value!r}: turn it on or off"
    return None


def core_job(method: F) -> F:
    """The one way a node runs a core job as the CLI runs it: every widget value checked against what the node
    declares, then the job with ComfyUI's inference mode off, and the core's errors in the node's terms (its JOB's
    column of sdkd_ext.terms; paths in its FOLDER shown relative). ComfyUI executes every prompt under
    `torch.inference_mode()`, where training records no gradients and the tensors made cannot be used by autograd
    or updated in place later; the job runs with it off (and gradients on, the core's own no_grad applies inside)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        import torch

        spec = self.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, value in signature.bind(self, *args, **kwargs).arguments.items():
            why = bad_value(name, declared[name], value) if name in declared else None
            if why:
                raise SdkdError(why)
        with self.output().worded(), torch.inference_mode(False), torch.enable_grad():
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]


class Node:
    """What every sdkd node declares the same way: its menu category; and in its class line the method ComfyUI calls
    (`function`), its outputs (`returns`: name -> type), for a job its row in sdkd_ext.terms (`job`) and the model
    folder it writes into (`folder`)."""

    CATEGORY = "sdkd"

    def __init_subclass__(cls, function: str = "", returns: dict | None = None, job: str = "", folder: str = "",
                          **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if function:
            cls.FUNCTION = function
        if returns:
            cls.RETURN_NAMES, cls.RETURN_TYPES = tuple(returns), tuple(returns.values())
        if job:
            cls.JOB = job
        if folder:
            cls.FOLDER = folder


class Job(Node):
    """A node that writes files or measures: a graph output, run every time it is queued (ComfyUI would otherwise
    reuse its last result for the same inputs, even after its file was deleted)."""

    OUTPUT_NODE = True
    JOB = ""  # its row in sdkd_ext.terms: what its messages call its inputs
    FOLDER = "checkpoints"  # the ComfyUI model folder it writes into (its messages show paths there relative)

    def output(self) -> Output:
        """Where the node writes, and its words for the core's messages."""
        return output(self.FOLDER, self.JOB)

    @classmethod
    def IS_CHANGED(cls, **inputs) -> float:
        """Never equal to the last run's value (NaN != NaN), so ComfyUI always runs the job."""
        return float("nan")
