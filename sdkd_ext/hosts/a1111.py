"""AUTOMATIC1111 / Forge adapter: the sdkd tab, model-list refresh, the GPU queue lock, loading a checkpoint the
host's own way, and the pruned-UNet fix.

Imported only inside A1111 or Forge (by `scripts/sdkd.py`); everything it calls is sdkd core.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import SdkdError
from ..progress import Cancelled, Event
from ..ui.run import progress_line
from .base import FolderHost
from .ldm_fix import file_lacks_middle_block, remove_middle_block

T = TypeVar("T")


class A1111Host(FolderHost):
    """Checkpoints from `models/Stable-diffusion` (+ --ckpt-dir), LoRAs in --lora-dir, jobs under A1111's queue lock."""

    page_js = "sdkd_submit"  # javascript/sdkd.js: a task id and A1111's own progress bar for each job
    models_hint = "put SD1.x checkpoints in models/Stable-diffusion (or --ckpt-dir) and press Refresh"

    def __init__(self) -> None:
        from modules import sd_models, shared

        dirs = [Path(sd_models.model_path)]
        if getattr(shared.cmd_opts, "ckpt_dir", None):
            dirs.append(Path(shared.cmd_opts.ckpt_dir))
        lora = getattr(shared.cmd_opts, "lora_dir", None)
        super().__init__(dirs, [Path(lora)] if lora else [Path(sd_models.model_path).parent / "Lora"], "a1111")

    def refresh(self) -> None:
        """Rescan checkpoints so the new file shows in the model dropdown."""
        from modules import sd_models

        sd_models.list_models()

    def current_checkpoint(self) -> Path | None:
        """The checkpoint the web UI has selected (and loads or has loaded): its `sd_model_checkpoint` setting."""
        from modules import sd_models, shared

        info = sd_models.get_closet_checkpoint_match(getattr(shared.opts, "sd_model_checkpoint", None) or "")
        return Path(info.filename) if info is not None else None

    def load_checkpoint(self, path: Path) -> str:
        """Load `path` as the web UI's checkpoint the way its own checkpoint dropdown does: A1111 sets
        `sd_model_checkpoint` (its change callback reloads under the queue lock) and saves the setting; Forge's
        `sysinfo.set_config` selects it (as its API does) and `forge_model_reload` loads it now."""
        from modules import sd_models, shared
        from modules.call_queue import queue_lock

        self.refresh()
        info = next((i for i in sd_models.checkpoints_list.values() if Path(i.filename).resolve() == path.resolve()), None)
        if info is None:
            raise SdkdError(f"{path.name} is not in the web UI's checkpoint list; press Refresh and try again")
        reload = getattr(sd_models, "forge_model_reload", None)
        if reload is not None:
            from modules import sysinfo

            sysinfo.set_config({"sd_model_checkpoint": info.title})
            with queue_lock:
                reload()
            return f"Loaded {info.title} as the web UI's checkpoint"
        if shared.opts.sd_model_checkpoint == info.title:  # already selected: read the file again (it may be new)
            with queue_lock:
                sd_models.reload_model_weights(info=info, forced_reload=True)
        elif not shared.opts.set("sd_model_checkpoint", info.title):
            raise SdkdError(f"the web UI could not load {info.title}; its console says why")
        shared.opts.save(shared.config_filename)
        return f"Loaded {info.title} as the web UI's checkpoint"

    def run_job(self, job: Callable[[], T], gpu: bool = False, task: str | None = None) -> T:
        """Run under the queue lock shared with txt2img and the API, as A1111's own GPU calls do: `task` (the page's
        id, from `javascript/sdkd.js`) is queued, started and finished in `modules.progress`, so `/internal/progress`
        and the page's progress bar follow the job. A `gpu` job moves the loaded model to the CPU and back."""
        from modules import progress, sd_models, shared
        from modules.call_queue import queue_lock

        if task:
            progress.add_task_to_queue(task)
        with queue_lock:
            shared.state.begin(job=task or "sdkd")
            progress.start_task(task)
            loaded = sd_models.model_data.sd_model if gpu else None  # never shared.sd_model: it would load one
            if loaded is not None:
                sd_models.unload_model_weights(loaded)
            try:
                return job()
            finally:
                if loaded is not None:
                    sd_models.send_model_to_device(loaded)
                progress.finish_task(task)
                shared.state.end()

    def show_progress(self, event: Event) -> None:
        """Mirror progress in A1111's state (its progress API: the bar, its ETA and text) and honour its Interrupt
        button; each stage of a job is a bar of its own, with the stage's own ETA."""
        import time

        from modules import shared

        now = time.time()
        stage = getattr(self, "_stage", None)
        start = shared.state.time_start if stage == event.stage and shared.state.time_start else now
        self._stage = event.stage
        shared.state.time_start = bar_start(event, start, now)
        shared.state.job_count, shared.state.job_no = 1, 0
        shared.state.sampling_step, shared.state.sampling_steps = event.step, event.total
        shared.state.textinfo = f"sdkd {progress_line(event)}"
        if shared.state.interrupted:
            raise Cancelled("interrupted from the web UI")

    def memory_note(self, gpu: bool) -> str:
        """The web UI's loaded model is not in the estimate: a GPU job moves it to RAM (see `run_job`), a CPU one
        runs beside it in RAM."""
        from modules import sd_models

        from .base import module_bytes

        model = sd_models.model_data.sd_model
        if model is None:
            return "The estimate is the job's own memory; the web UI has no model loaded."
        where = "moved from the GPU to RAM while the job runs, and back after" if gpu else "kept in RAM beside the job"
        return (f"The estimate is the job's own memory: it does not include the web UI's loaded model "
                f"({module_bytes(model) / 2**30:.2f} GiB), which is {where}.")


def bar_start(event: Event, start: float, now: float) -> float:
    """The start time to give A1111's progress state for `event` so that the ETA its progress API derives
    (elapsed / fraction - elapsed) is the stage's own: from the event's ETA when it has one, else `start` (the
    stage's first event, or the time kept from the stage's earlier events)."""
    eta, done = event.metrics.get("eta_s"), event.fraction
    if eta is None or not 0 < done < 1:
        return start
    return now - eta * done / (1 - done)


def loaded_unet(sd_model) -> object:
    """The LDM UNet inside a loaded A1111 or Forge model."""
    forge = getattr(sd_model, "forge_objects", None)
    return forge.unet.model.diffusion_model if forge is not None else sd_model.model.diffusion_model


# What the web UI made of the middle block of a file without one, before sdkd removed it.
BUILT = {"Forge": "Forge built for it (the 'Missing: [...middle_block...]' it logged; without sdkd its first image "
                  "fails)", "A1111": "A1111 built for it and filled with zeros (idle weight every step without sdkd)"}


def fixed_line(name: str, host: str) -> str:
    """The log line saying sdkd's load fix applied to checkpoint `name` in `host`."""
    return (f"sdkd: {name} has no middle block (BK-SDM small/tiny): removed the middle block {BUILT[host]}; the UNet "
            "now runs as the file defines it")


def fix_loaded_model(sd_model, filename: str | None) -> None:
    """Drop the middle block the host built for checkpoint `filename` when the file has none (BK-SDM small/tiny, a
    portable student's identity block), and say so in the web UI's log."""
    if file_lacks_middle_block(filename) and remove_middle_block(loaded_unet(sd_model)):
        host = "Forge" if hasattr(sd_model, "forge_objects") else "A1111"
        print(fixed_line(Path(filename).name, host), flush=True)


# The host's step that puts a file's weights into the model, and how to read (model, file) off its call:
# A1111 1.10.1: load_model_weights(model, checkpoint_info, state_dict, timer), called by both load_model and
# reload_model_weights (its restore path too) before hijack and every on_model_loaded callback;
# Forge: forge_loader(path, additional_state_dicts=...), called by forge_model_reload before its callbacks.
WEIGHT_LOADERS: dict[str, Callable[[tuple, object], tuple[object, str | None]]] = {
    "forge_loader": lambda args, result: (result, args[0] if isinstance(args[0], str) else None),
    "load_model_weights": lambda args, result: (args[0], getattr(args[1], "filename", None)),
}


def hook_weight_loading(sd_models) -> str | None:
    """Wrap the host's weight-loading step (Forge's when present, else A1111's) in `sd_models` so the model is fixed
    before any extension's `on_model_loaded` callback sees it, whatever the extensions' folder order; once only.
    Returns the wrapped function's name (None: already wrapped, or not a host this knows)."""
    name = next((n for n in WEIGHT_LOADERS if callable(getattr(sd_models, n, None))), None)
    load = getattr(sd_models, name, None) if name else None
    if load is None or getattr(load, "sdkd_fix", False):
        return None
    pick = WEIGHT_LOADERS[name]

    @functools.wraps(load)
    def loading(*args, **kwargs):
        result = load(*args, **kwargs)
        fix_loaded_model(*pick(args, result))
        return result

    loading.sdkd_fix = True
    setattr(sd_models, name, loading)
    return name


# A1111's checkpoint setting in its quicksettings bar (modules/ui_settings.py creates it after the extensions' tabs)
CHECKPOINT_SETTING = "setting_sd_model_checkpoint"


def follow_checkpoint_setting(built: list) -> Callable:
    """An `on_after_component` callback: when A1111 creates its checkpoint setting, the picker and "what this file
    is" of the tab in `built` ([(tab, host)] once made) follow that setting's changes (the user's, and the value
    A1111 sets on every page load)."""
    def after(component, **_) -> None:
        if getattr(component, "elem_id", None) != CHECKPOINT_SETTING or not built:
            return
        from modules import sd_models

        from ..ui.tab import picked

        tab, host = built[0]
        blocks = {getattr(b, "elem_id", None): b for b in tab.blocks.values()}

        def follow(title: str) -> tuple:
            info = sd_models.get_closet_checkpoint_match(title or "")
            return picked(host, Path(info.filename) if info is not None else None)

        component.change(follow, inputs=[component], outputs=[blocks["sdkd_checkpoint"], blocks["sdkd_info"]])

    return after


def register() -> None:
    """Hook sdkd into A1111/Forge: the tab (its picker following the web UI's checkpoint) and the load fix inside the
    host's weight-loading step."""
    from modules import script_callbacks, sd_models

    from ..quiet import quiet_libraries
    from ..ui import build_tab

    quiet_libraries()
    built: list = []  # [(tab, host)] once A1111 asks for the tab

    def tabs() -> list:
        host = A1111Host()
        built[:] = [(build_tab(host), host)]
        return [(built[0][0], "sdkd", "sdkd")]

    script_callbacks.on_ui_tabs(tabs)
    script_callbacks.on_after_component(follow_checkpoint_setting(built))
    hook_weight_loading(sd_models)
