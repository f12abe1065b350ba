"""AUTOMATIC1111 / Forge adapter: the sdkd tab, model-list refresh, the GPU queue lock, loading a checkpoint the
host's own way, and the pruned-UNet fix.

Imported only inside A1111 or Forge (by `scripts/sdkd.py`); everything it calls is sdkd core.
"""

from __future__ import annotations

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
        """Mirror progress in A1111's state (its progress API) and honour its Interrupt button."""
        from modules import shared

        shared.state.job_count, shared.state.job_no = 1, 0
        shared.state.sampling_step, shared.state.sampling_steps = event.step, event.total
        shared.state.textinfo = f"sdkd {progress_line(event)}"
        if shared.state.interrupted:
            raise Cancelled("interrupted from the web UI")


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


def on_model_loaded(sd_model) -> None:
    """Drop the middle block the host built for a checkpoint that has none, then rebuild the Lora module names.

    Order-independent: A1111 runs `on_model_loaded` callbacks in extension-folder order (its built-in Lora first)
    and a `metadata.ini` `[callbacks/...]` section must name the folder the user cloned into, so instead the names
    Lora built from the unfixed model are rebuilt here; if Lora runs later it names the fixed model itself.
    Forge's Lora maps keys when it applies a LoRA and has no such names."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    if not file_lacks_middle_block(getattr(info, "filename", None)):
        return
    if remove_middle_block(loaded_unet(sd_model)):
        print(fixed_line(Path(info.filename).name, "Forge" if hasattr(sd_model, "forge_objects") else "A1111"),
              flush=True)
        try:
            import networks  # A1111's built-in Lora extension (Forge's has a module of that name too)
        except ImportError:
            return
        rename = getattr(networks, "assign_network_names_to_compvis_modules", None)
        if rename is not None:
            rename(sd_model)


def register() -> None:
    """Hook sdkd into A1111/Forge: the tab and the model-loaded fix."""
    from modules import script_callbacks

    from ..quiet import quiet_libraries
    from ..ui import build_tab

    quiet_libraries()
    script_callbacks.on_ui_tabs(lambda: [(build_tab(A1111Host()), "sdkd", "sdkd")])
    script_callbacks.on_model_loaded(on_model_loaded)
