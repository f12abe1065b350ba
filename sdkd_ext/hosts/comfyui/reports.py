"""Nodes that measure: compare (the same prompts and seeds through teacher and students: a grid and agreement
figures) and bench (speed and memory on this machine's device). Both return an IMAGE and their figures as text."""

from __future__ import annotations

from ...errors import SdkdError
from ...sampling import DEFAULT_SAMPLER
from ...terms import NONE
from .common import (Job, chosen, comfy_progress, core_job, free_device, image_tensor, inputs, model_path, names,
                     optional_models, result)

STUDENT_WIDGETS = ("student_name", "student_2", "student_3")


def model_inputs() -> dict:
    """The teacher, one required student and two optional ones."""
    ckpts = names("checkpoints")
    return {"ckpt_name": (ckpts, {"tooltip": "the teacher"}), STUDENT_WIDGETS[0]: (ckpts,),
            **{w: (optional_models(), {"default": NONE}) for w in STUDENT_WIDGETS[1:]}}


def models(ckpt_name: str, *students: str) -> tuple:
    """The teacher's file and the chosen students' (the model inputs' values, in their order)."""
    return model_path("checkpoints", ckpt_name, "ckpt_name"), chosen("checkpoints", dict(zip(STUDENT_WIDGETS, students)))


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
    """One line per model: how it was drawn, its mean agreement with the teacher (95% interval where defined) and its
    time per image."""
    lines = []
    for m in comparison.models:
        s, iv = m.summary(), m.intervals()["psnr"]
        interval = f" ({iv['low']:.2f} to {iv['high']:.2f})" if iv else ""
        score = ("teacher (reference)" if m is comparison.models[0] else
                 f"PSNR {s['psnr']:.2f}{interval} dB, SSIM {s['ssim']:.3f}, latent MSE {s['latent_mse']:.4g}")
        lora = "".join(f" + {n}" for n in m.loras)
        lines.append(f"{m.label}{lora} ({m.variant or '?'}, {m.unet_params / 1e6:.1f}M UNet params, {m.sampler}): "
                     f"{score}; {m.seconds_per_image:.2f} s/image ({m.cpu_seconds_per_image:.2f} CPU s)")
    c = comparison.settings
    lines.append(f"{len(c['prompts'])} prompt(s) x seeds {c['seeds']}, {c['size']} px, {c['device']} {c['dtype']}")
    return "\n".join(lines)


class SdkdCompare(Job, function="compare", job="compare", returns={"grid": "IMAGE", "figures": "STRING"}):
    """Teacher vs students on the same prompts and seeds: a labelled grid and PSNR/SSIM/latent MSE against the teacher."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, students, prompts, seeds, image size, the students' steps and guidance; optional: the
        students' sampler and LoRA, the teacher's (reference's) steps and guidance."""
        return {"required": {
            **model_inputs(),
            **inputs("compare", "prompts", "seeds", "size", "steps", "guidance"),
        }, "optional": inputs("compare", "sampler", "lora", "lora_weight", "reference_steps", "reference_guidance",
                              lora=optional_models("loras"))}

    @core_job
    def compare(self, ckpt_name: str, student_name: str, student_2: str, student_3: str, prompts: str, seeds: str,
            size: int, steps: int, guidance: float, sampler: str = DEFAULT_SAMPLER, lora_name: str = NONE,
            lora_strength: float = 1.0, reference_steps: int = 25, reference_guidance: float = 7.5) -> dict:
        """The core comparison on ComfyUI's device: the grid as IMAGE, the figures as text."""
        from ...compare import CompareSpec, compare, grid, lacking_few_step
        from ...lora.kind import poor_images_line
        from ...sampling import flags, sampler as checked

        teacher, students = models(ckpt_name, student_name, student_2, student_3)
        loras = chosen("loras", {"lora_name": lora_name})
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        spec = CompareSpec(tuple(lines), tuple(seeds_of(seeds)), int(size),
                           checked(DEFAULT_SAMPLER, int(reference_steps), float(reference_guidance), flags("reference-")),
                           checked(sampler, int(steps), float(guidance)), tuple((p, float(lora_strength)) for p in loras))
        free_device()
        c = compare(teacher, students, spec, device=device(), progress=comfy_progress())
        poor = lacking_few_step(teacher, students, spec)
        note = f"\n{poor_images_line(', '.join(poor), 'pick an LCM LoRA as lora_name')}" if poor else ""
        text = compare_text(c) + note
        return result(text, image_tensor(grid(c)), text)


class SdkdBench(Job, function="bench", job="bench", returns={"chart": "IMAGE", "table": "STRING"}):
    """Time teacher and students on ComfyUI's device: UNet step and text-to-image latency, speed-up, memory, MACs."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, students, image size, steps, repeats; optional: sampler and guidance."""
        return {"required": {
            **model_inputs(),
            **inputs("bench", "size", "steps", "repeats"),
        }, "optional": inputs("bench", "sampler", "guidance")}

    @core_job
    def bench(self, ckpt_name: str, student_name: str, student_2: str, student_3: str, size: int, steps: int,
            repeats: int, sampler: str = DEFAULT_SAMPLER, guidance: float = 7.5) -> dict:
        """The core benchmark (after ComfyUI's own models leave the device): the chart as IMAGE, the table as text."""
        from ...bench import BenchSpec, bench, chart
        from ...sampling import sampler as checked

        teacher, students = models(ckpt_name, student_name, student_2, student_3)
        drawn = checked(sampler, int(steps), float(guidance))
        free_device()
        spec = BenchSpec(device(), size=int(size), sampling=drawn, repeats=int(repeats), t2i_repeats=min(3, int(repeats)))
        r = bench(teacher, students, spec, comfy_progress())
        text = r.table()
        return result(text, image_tensor(chart(r)), text)
