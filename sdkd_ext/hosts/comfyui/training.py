"""Training nodes: distil a student, train a LoRA. ComfyUI's interrupt stops them after the current step with a
usable student or LoRA written, and the node says how far it got (continue later with 'resume')."""

from __future__ import annotations

from pathlib import Path

from ...errors import SdkdError
from ...progress import Cancelled
from .common import (Job, comfy_progress, free_device, core_job, input_path, inputs, interrupted, model_path, names,
                     result, variants)

# Where a distillation's data comes from: the widget value -> how the core is told.
DATA = ("built-in prompts", "prompt file", "image folder")


def data_spec(kind: str, path: str, count: int):
    """The training data the node's widgets describe."""
    from ...data import FolderData, PromptData, builtin_prompts, read_prompts

    if kind not in DATA:
        raise SdkdError(f"data {kind!r}: choose {', '.join(DATA)}")
    if kind == "built-in prompts":
        return PromptData(tuple(builtin_prompts(int(count))), origin="built-in prompts")
    where = input_path(path, "data_path", folder=kind == "image folder")
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


class Trainer(Job):
    """A training node: its run into the first folder of its kind, with ComfyUI's bar and graceful interrupt."""

    def trained(self, filename: str, default: str, inputs: tuple[Path, ...], run, said) -> dict:
        """`run(target, progress)` into the file `filename` names (blank: `default`); the node's text is `said(result,
        listed name)` and what the run folder keeps, its output the written file's listed name."""
        out = self.output()
        target = out.path(filename, default, ".safetensors", inputs)
        r = training(lambda progress: run(target, progress))
        name = out.listed(r.exported.checkpoint if hasattr(r, "exported") else r.path)
        return result(said(r, name) + left(r.train, out), name)


class SdkdDistil(Trainer, function="distil", job="distil", returns={"student": "STRING"}):
    """Distil a checkpoint into a BK-SDM student (knowledge distillation from the teacher), saved in checkpoints."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, variant, data, schedule, loss weights, output name; optional (API prompts from before
        them still run): portable, keep_state."""
        return {"required": {"ckpt_name": (names("checkpoints"),),
                             **inputs("distil", "variant", "kind", "data", "self_n", "steps", "resolution", "lr", "vram",
                                      "l_sd", "l_out", "l_feat", "out", "resume", "overwrite", variant=variants(),
                                      kind=list(DATA))},
                "optional": inputs("distil", "portable", "keep_state")}

    @core_job
    def distil(self, ckpt_name: str, variant: str, data: str, data_path: str, prompt_count: int, steps: int,
            resolution: int, lr: float, vram: str, l_sd: float, l_out: float, l_feat: float, filename: str,
            resume: bool, overwrite: bool, portable: bool = False, keep_state: bool = False) -> dict:
        """The core distillation into the first checkpoints folder; the student's name is output."""
        from ...distill import DistillJob, LossWeights, distill
        from ...plan import parse_vram
        from ...variants import get_variant
        from ...train import TrainConfig

        teacher = model_path("checkpoints", ckpt_name, "ckpt_name")
        spec = data_spec(data, data_path, prompt_count)
        budget = parse_vram(vram)
        cfg = TrainConfig(steps=int(steps), lr=float(lr), keep_state=bool(keep_state))
        return self.trained(filename, f"{Path(ckpt_name).stem}-bk-{variant}-kd", (teacher,), lambda target, progress:
            distill(DistillJob(teacher, get_variant(variant), target, spec, cfg, LossWeights(l_sd, l_out, l_feat),
                               resolution=int(resolution), vram=budget, resume=resume, overwrite=overwrite,
                               portable=portable), progress),
            lambda r, name: f"{r.exported.variant} student, {stopped(r.train)} on {r.samples} samples "
                            f"({losses(r.train)}): {name} in your checkpoints.")


class SdkdTrainLora(Trainer, function="train", job="lora", folder="loras", returns={"lora": "STRING"}):
    """Train a LoRA for a checkpoint (teacher or BK-SDM student) on a captioned image folder, saved in loras."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: base model, image folder, adapter shape, schedule, output name; optional: keep_state."""
        return {"required": {"ckpt_name": (names("checkpoints"),),
                             **inputs("lora", "data", "rank", "alpha", "text_encoder", "steps", "resolution", "lr",
                                      "out", "resume", "overwrite")},
                "optional": inputs("lora", "keep_state")}

    @core_job
    def train(self, ckpt_name: str, image_folder: str, rank: int, alpha: float, text_encoder: bool, steps: int,
            resolution: int, lr: float, filename: str, resume: bool, overwrite: bool, keep_state: bool = False) -> dict:
        """The core LoRA training into the first loras folder; the LoRA's name is output, for a LoraLoader."""
        from ...lora.train import LoraJob, LoraSpec, train_lora
        from ...train import TrainConfig

        base = model_path("checkpoints", ckpt_name, "ckpt_name")
        folder = input_path(image_folder, "image_folder", folder=True)
        cfg = TrainConfig(steps=int(steps), lr=float(lr), keep_state=bool(keep_state))
        return self.trained(filename, f"{Path(ckpt_name).stem}-lora", (base,), lambda target, progress: train_lora(
            LoraJob(base, folder, target, LoraSpec(int(rank), float(alpha), text_encoder), cfg, resolution=int(resolution),
                    resume=resume, overwrite=overwrite), progress),
            lambda r, name: f"LoRA for {ckpt_name}, {r.modules} modules, {stopped(r.train)} on {r.samples} images "
                            f"({losses(r.train)}): {name} in your loras.")
