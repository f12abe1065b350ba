"""ComfyUI adapter: sdkd as custom nodes, writing into ComfyUI's model folders with its progress bar.

ComfyUI modules (`folder_paths`, `comfy.*`) are imported inside the functions ComfyUI calls, so this
module imports (and is testable) without ComfyUI.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..names import Output
from ..progress import Event, ProgressFn
from ..variants import VARIANTS


def comfy_progress() -> ProgressFn:
    """A progress callback drawing ComfyUI's progress bar; ComfyUI's cancel raises its own interrupt here."""
    import comfy.model_management
    import comfy.utils

    bars: dict[str, object] = {}

    def show(e: Event) -> None:
        bar = bars.get(e.stage)
        if bar is None:
            bar = bars[e.stage] = comfy.utils.ProgressBar(e.total)
        bar.update_absolute(e.step, e.total)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return show


def checkpoint_path(name: str) -> Path:
    """Full path of a name from ComfyUI's checkpoint list."""
    import folder_paths

    return Path(folder_paths.get_full_path("checkpoints", name))


def checkpoint_names() -> list[str]:
    """ComfyUI's checkpoint list."""
    import folder_paths

    return folder_paths.get_filename_list("checkpoints")


def shown(path: Path, folder: Path) -> str:
    """A written file as ComfyUI's checkpoint list names it (relative to the folder)."""
    return path.relative_to(folder).as_posix()


class SdkdPrune:
    """Prune a checkpoint into a BK-SDM student saved in ComfyUI's checkpoints folder."""

    CATEGORY = "sdkd"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("student",)
    FUNCTION = "prune"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, variant, dtype, output name."""
        return {"required": {
            "ckpt_name": (checkpoint_names(),),
            "variant": (list(VARIANTS), {"default": "small"}),
            "dtype": (["fp16", "bf16", "fp32"], {"default": "fp16"}),
            "filename": ("STRING", {"default": ""}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }}

    def prune(self, ckpt_name: str, variant: str, dtype: str, filename: str, overwrite: bool) -> dict:
        """Run the core prune into the first checkpoints folder (the list refreshes on its own); the node shows the
        student's name in the checkpoint list and outputs it, for a Load Checkpoint node."""
        import folder_paths

        from ..prune import prune

        out = Output(Path(folder_paths.get_folder_paths("checkpoints")[0]), "your checkpoints", "filename", "overwrite")
        teacher = checkpoint_path(ckpt_name)
        with out.worded():
            r = prune(teacher, variant, out.path(filename, f"{Path(ckpt_name).stem}-bk-{variant}", ".safetensors", (teacher,)),
                      dtype, overwrite=overwrite, progress=comfy_progress())
        name = shown(r.checkpoint, out.folder)
        text = f"{r.variant} student, {r.unet_params:,} UNet parameters: {name} in your checkpoints (+ {r.yaml.name})"
        return {"ui": {"text": [text]}, "result": (name,)}


class SdkdInspect:
    """Say what a checkpoint is (SD1.x teacher, BK-SDM student, or why it can't be pruned)."""

    CATEGORY = "sdkd"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("info",)
    FUNCTION = "inspect"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the checkpoint."""
        return {"required": {"ckpt_name": (checkpoint_names(),)}}

    def inspect(self, ckpt_name: str) -> dict:
        """The core's description as JSON, shown on the node and output as a string."""
        from ..checkpoint import open_model
        from ..detect import describe

        info = describe(open_model(checkpoint_path(ckpt_name))).as_dict()
        text = json.dumps({k: v for k, v in info.items() if k != "metadata"}, indent=1)
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"SdkdPrune": SdkdPrune, "SdkdInspect": SdkdInspect}
NODE_DISPLAY_NAME_MAPPINGS = {"SdkdPrune": "sdkd: prune to BK-SDM student", "SdkdInspect": "sdkd: inspect checkpoint"}
