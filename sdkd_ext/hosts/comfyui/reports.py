"""Nodes that measure: compare (the same prompts and seeds through teacher and students: a grid and agreement
figures) and bench (speed and memory on this machine's device). Both return an IMAGE and their figures as text."""

from __future__ import annotations

from ...errors import SdkdError
from .common import (Job, chosen, comfy_progress, core_job, free_device, image_tensor, model_path, names, optional_models,
                     result, wording)

STUDENT_WIDGETS = ("student_name", "student_2", "student_3")


def student_inputs() -> dict:
    """One required student and two optional ones."""
    ckpts = names("checkpoints")
    return {STUDENT_WIDGETS[0]: (ckpts,), **{w: (optional_models(), {"default": "(none)"}) for w in STUDENT_WIDGETS[1:]}}


def seeds_of(text: str) -> list[int]:
    """Seeds typed as numbers separated by spaces or commas."""
    try:
        seeds = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise SdkdError(f"seeds {text!r}: give whole numbers separated by spaces or commas") from None
    if not seeds:
        raise SdkdError("seeds: give at least one seed")
    return seeds


def device() -> str:
    """ComfyUI's compute device, for the core's jobs."""
    import comfy.model_management

    return str(comfy.model_management.get_torch_device())


def compare_text(comparison) -> str:
    """One line per model: its mean agreement with the teacher and its time per image."""
    lines = []
    for m in comparison.models:
        s = m.summary()
        score = ("teacher" if m is comparison.models[0] else
                 f"PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}, latent MSE {s['latent_mse']:.4g}")
        lines.append(f"{m.label} ({m.variant or '?'}, {m.unet_params / 1e6:.1f}M UNet params): {score}; "
                     f"{m.seconds_per_image:.2f} s/image")
    c = comparison.settings
    lines.append(f"{len(c['prompts'])} prompt(s) x seeds {c['seeds']}, {c['size']} px, {c['steps']} steps, "
                 f"guidance {c['guidance']}, {c['device']} {c['dtype']}")
    return "\n".join(lines)


class SdkdCompare(Job):
    """Teacher vs students on the same prompts and seeds: a labelled grid and PSNR/SSIM/latent MSE against the teacher."""

    FUNCTION = "compare"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("grid", "figures")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, students, prompts, seeds, image size, sampling steps, guidance."""
        return {"required": {
            "ckpt_name": (names("checkpoints"), {"tooltip": "the teacher"}),
            **student_inputs(),
            "prompts": ("STRING", {"default": "a photograph of an astronaut riding a horse\na red apple on a table",
                                   "multiline": True}),
            "seeds": ("STRING", {"default": "0 1"}),
            "size": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 8}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 200}),
            "guidance": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.5}),
        }}

    @core_job
    def compare(self, ckpt_name: str, student_name: str, student_2: str, student_3: str, prompts: str, seeds: str,
            size: int, steps: int, guidance: float) -> dict:
        """The core comparison on ComfyUI's device: the grid as IMAGE, the figures as text."""
        from ...compare import compare, grid

        words = wording({"--size": "size", "--steps": "steps"})
        teacher = model_path("checkpoints", ckpt_name, "ckpt_name")
        students = chosen("checkpoints", dict(zip(STUDENT_WIDGETS, (student_name, student_2, student_3))))
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        free_device()
        with words.worded():
            c = compare(teacher, students, lines, seeds_of(seeds), int(size), int(steps), float(guidance),
                        device=device(), progress=comfy_progress())
        text = compare_text(c)
        return result(text, image_tensor(grid(c)), text)


class SdkdBench(Job):
    """Time teacher and students on ComfyUI's device: UNet step and text-to-image latency, speed-up, memory, MACs."""

    FUNCTION = "bench"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("chart", "table")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, students, image size, steps, repeats."""
        return {"required": {
            "ckpt_name": (names("checkpoints"), {"tooltip": "the teacher"}),
            **student_inputs(),
            "size": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 8}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 200}),
            "repeats": ("INT", {"default": 5, "min": 1, "max": 100}),
        }}

    @core_job
    def bench(self, ckpt_name: str, student_name: str, student_2: str, student_3: str, size: int, steps: int,
            repeats: int) -> dict:
        """The core benchmark (after ComfyUI's own models leave the device): the chart as IMAGE, the table as text."""
        from ...bench import bench, chart

        teacher = model_path("checkpoints", ckpt_name, "ckpt_name")
        words = wording({"--size": "size", "--steps": "steps", "--repeats": "repeats"})
        students = chosen("checkpoints", dict(zip(STUDENT_WIDGETS, (student_name, student_2, student_3))))
        free_device()
        with words.worded():
            r = bench(teacher, students, device(), size=int(size), steps=int(steps), repeats=int(repeats),
                      t2i_repeats=min(3, int(repeats)), progress=comfy_progress())
        text = r.table()
        return result(text, image_tensor(chart(r)), text)
