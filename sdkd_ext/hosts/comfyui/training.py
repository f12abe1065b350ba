"""Training nodes: distil a student, train a LoRA. ComfyUI's interrupt stops them after the current step with a
usable student or LoRA written, and the node says how far it got (continue later with 'resume')."""

from __future__ import annotations

from pathlib import Path

from ...errors import SdkdError
from ...progress import Cancelled
from .common import (Job, comfy_progress, core_job, free_device, input_path, interrupted, model_path, names, output,
                     portable_input, result, variant_input)

# Where a distillation's data comes from: the widget value -> how the core is told.
DATA = ("built-in prompts", "prompt file", "image folder")
# The CLI flags the core's messages name -> the node widgets that set them.
DISTIL_WIDGETS = {"--variant": "variant", "--data": "data_path", "--prompts": "data_path", "--self": "prompt_count",
                  "--steps": "steps", "--resolution": "resolution", "--vram": "vram", "--l-sd": "l_sd",
                  "--l-out": "l_out", "--l-feat": "l_feat", "--resume": "resume", "--lr": "lr", "--portable": "portable",
                  "--keep-state": "keep_state"}
LORA_WIDGETS = {"--data": "image_folder", "--text-encoder": "text_encoder", "--rank": "rank", "--alpha": "alpha",
                "--steps": "steps", "--resolution": "resolution", "--resume": "resume", "--lr": "lr",
                "--keep-state": "keep_state"}
# An optional input (API prompts written before it existed still run, as False).
KEEP_STATE = ("BOOLEAN", {"default": False, "tooltip": "keep the resumable training state (GBs) in the run folder after "
                                                      "a finished run, to resume it for more steps later"})


def data_spec(kind: str, path: str, count: int):
    """The training data the node's widgets describe."""
    from ...data import FolderData, PromptData, builtin_prompts, read_prompts

    if kind not in DATA:
        raise SdkdError(f"data {kind!r}: choose {', '.join(DATA)}")
    if kind == "built-in prompts":
        return PromptData(tuple(builtin_prompts(int(count))), origin="built-in prompts")
    where = input_path(path, "data_path")
    if kind == "prompt file":
        return PromptData(tuple(read_prompts(where)), origin=f"prompts {where.name}")
    return FolderData(where)


def stopped(train) -> str:
    """How a run ended, in the node's words."""
    return f"interrupted at step {train.steps}/{train.total}" if train.cancelled else f"{train.steps} steps"


def left(train, out) -> str:
    """A missing preview and what the run folder keeps on disk, in the node's words."""
    from ...train import disk_note

    preview = f" The final preview was {train.preview_note}." if train.preview_note else ""
    return f"{preview} {out.reword(disk_note(train))}."


def losses(train) -> str:
    """The run's last losses."""
    return ", ".join(f"{k} {v:.4g}" for k, v in train.losses.items())


def training(job):
    """Run a training job with ComfyUI's progress bar, its interrupt turned into a graceful stop; an interrupt
    before training started (nothing to keep) is ComfyUI's own."""
    free_device()
    try:
        return job(comfy_progress(graceful=True))
    except Cancelled:
        raise interrupted() from None


class SdkdDistil(Job):
    """Distil a checkpoint into a BK-SDM student (knowledge distillation from the teacher), saved in checkpoints."""

    FUNCTION = "distil"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("student",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, variant, data, schedule, loss weights, output name."""
        return {"required": {
            "ckpt_name": (names("checkpoints"),),
            "variant": variant_input(),
            "data": (list(DATA), {"default": DATA[0], "tooltip": "prompts: the teacher draws the training images"}),
            "data_path": ("STRING", {"default": "", "tooltip": "prompt file or image folder: a name in ComfyUI's "
                                                               "input folder or a full path"}),
            "prompt_count": ("INT", {"default": 500, "min": 1, "max": 100000}),
            "steps": ("INT", {"default": 1000, "min": 1, "max": 1000000}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64}),
            "lr": ("FLOAT", {"default": 5e-5, "min": 1e-7, "max": 1.0, "step": 1e-6, "round": False}),
            "vram": ("STRING", {"default": "auto", "tooltip": "GB the run may use, or auto; blank: as set"}),
            "l_sd": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1}),
            "l_out": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1}),
            "l_feat": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1}),
            "filename": ("STRING", {"default": ""}),
            "resume": ("BOOLEAN", {"default": False}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }, "optional": {"portable": portable_input(), "keep_state": KEEP_STATE}}

    @core_job
    def distil(self, ckpt_name: str, variant: str, data: str, data_path: str, prompt_count: int, steps: int,
            resolution: int, lr: float, vram: str, l_sd: float, l_out: float, l_feat: float, filename: str,
            resume: bool, overwrite: bool, portable: bool = False, keep_state: bool = False) -> dict:
        """The core distillation into the first checkpoints folder; the student's name is output."""
        from ...distill import DistillJob, LossWeights, distill
        from ...variants import get_variant
        from ...train import TrainConfig

        out = output("checkpoints", widgets=DISTIL_WIDGETS)
        teacher = model_path("checkpoints", ckpt_name, "ckpt_name")
        with out.worded():
            target = out.path(filename, f"{Path(ckpt_name).stem}-bk-{variant}-kd", ".safetensors", (teacher,))
            spec = data_spec(data, data_path, prompt_count)
            job = DistillJob(teacher, get_variant(variant), target, spec,
                             TrainConfig(steps=int(steps), lr=float(lr), keep_state=bool(keep_state)),
                             LossWeights(l_sd, l_out, l_feat), resolution=int(resolution),
                             vram=(vram or "").strip() or None, resume=resume, overwrite=overwrite, portable=portable)
            r = training(lambda progress: distill(job, progress))
        name = out.listed(r.exported.checkpoint)
        return result(f"{r.exported.variant} student, {stopped(r.train)} on {r.samples} samples "
                      f"({losses(r.train)}): {name} in your checkpoints." + left(r.train, out), name)


class SdkdTrainLora(Job):
    """Train a LoRA for a checkpoint (teacher or BK-SDM student) on a captioned image folder, saved in loras."""

    FUNCTION = "train"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: base model, image folder, adapter shape, schedule, output name."""
        return {"required": {
            "ckpt_name": (names("checkpoints"),),
            "image_folder": ("STRING", {"default": "sdkd-lora", "tooltip": "images with .txt captions (or "
                                        "metadata.jsonl): a folder in ComfyUI's input folder or a full path"}),
            "rank": ("INT", {"default": 16, "min": 1, "max": 256}),
            "alpha": ("FLOAT", {"default": 16.0, "min": 0.01, "max": 256.0, "step": 0.5}),
            "text_encoder": ("BOOLEAN", {"default": False}),
            "steps": ("INT", {"default": 1000, "min": 1, "max": 1000000}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64}),
            "lr": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False}),
            "filename": ("STRING", {"default": ""}),
            "resume": ("BOOLEAN", {"default": False}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }, "optional": {"keep_state": KEEP_STATE}}

    @core_job
    def train(self, ckpt_name: str, image_folder: str, rank: int, alpha: float, text_encoder: bool, steps: int,
            resolution: int, lr: float, filename: str, resume: bool, overwrite: bool, keep_state: bool = False) -> dict:
        """The core LoRA training into the first loras folder; the LoRA's name is output, for a LoraLoader."""
        from ...lora.train import LoraJob, LoraSpec, train_lora
        from ...train import TrainConfig

        out = output("loras", widgets=LORA_WIDGETS)
        base = model_path("checkpoints", ckpt_name, "ckpt_name")
        folder = input_path(image_folder, "image_folder")
        if not folder.is_dir():
            raise SdkdError(f"image_folder {image_folder!r}: no such folder; put captioned images in ComfyUI's input "
                            "folder under that name, or give a full path")
        with out.worded():
            target = out.path(filename, f"{Path(ckpt_name).stem}-lora", ".safetensors", (base,))
            job = LoraJob(base, folder, target, LoraSpec(int(rank), float(alpha), text_encoder),
                          TrainConfig(steps=int(steps), lr=float(lr), keep_state=bool(keep_state)), resolution=int(resolution),
                          resume=resume, overwrite=overwrite)
            r = training(lambda progress: train_lora(job, progress))
        name = out.listed(r.path)
        return result(f"LoRA for {ckpt_name}, {r.modules} modules, {stopped(r.train)} on {r.samples} images "
                      f"({losses(r.train)}): {name} in your loras." + left(r.train, out), name)
