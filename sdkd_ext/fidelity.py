"""Fidelity on the shapes task: does each model draw what held-out captions ask for, and how close do students stay.

For N fixed (caption, seed) pairs, with captions from the held-out split (never seen in training),
every model renders every image (`compare.compare`: one model in memory at a time, the teacher
first); the shapes scorer reads the attributes back from each image (accuracy per attribute) and
each student's image is scored against the teacher's of the same pair (PSNR, SSIM, latent MSE).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch

from .cache import Cache
from .checkpoint import Source
from .compare import CompareSpec, Comparison, ModelRun, compare, write_report
from .export import atomic_outputs
from .metrics import latent_mse, psnr
from .progress import ProgressFn
from .sampling import Sampler, sample_latents
from .shapes import ATTRIBUTES, VOCABULARIES, ShapeSpec, accuracy, caption, parse_caption, split_specs

SIZE = 64  # the shapes pictures' side in pixels
STEPS = 20
GUIDANCE = 4.0  # the demo teacher's best classifier-free guidance on held-out captions
CHANCE = {name: 1 / len(VOCABULARIES[name]) for name in ATTRIBUTES}  # accuracy of guessing uniformly


def check_specs(n: int = 24, seed: int = 0) -> list[ShapeSpec]:
    """`n` held-out specs, the same on every run: the first `n` of a seeded shuffle of the held-out split."""
    held = split_specs()[1]
    if not 0 < n <= len(held):
        raise ValueError(f"n must be between 1 and {len(held)} (the held-out captions), got {n}")
    return [held[i] for i in np.random.default_rng(seed).permutation(len(held))[:n]]


def model_accuracy(run: ModelRun) -> dict[str, float]:
    """The scorer's per-attribute accuracy (and 'mean') over one model's images of shapes captions."""
    return accuracy([s.image for s in run.samples], [parse_caption(s.prompt) for s in run.samples])


@dataclass
class Fidelity:
    """Every model's images and agreement with the teacher (`comparison`), and its attribute accuracy (same order)."""

    comparison: Comparison
    accuracy: list[dict[str, float]]

    def rows(self) -> list[dict]:
        """One JSON-ready row per model: label, variant, UNet parameters, accuracy per attribute, mean agreement."""
        out = []
        for i, (m, acc) in enumerate(zip(self.comparison.models, self.accuracy)):
            agreement = {} if i == 0 else {k: round(v, 4) if math.isfinite(v) else str(v) for k, v in m.summary().items()}
            out.append({"model": m.label, "variant": m.variant, "unet_params": m.unet_params,
                        "accuracy": {k: round(v, 4) for k, v in acc.items()}, **agreement})
        return out

    def table(self) -> str:
        """A markdown table: accuracy per attribute, then PSNR / SSIM / latent MSE against the teacher."""
        head = ["model", "UNet params", *ATTRIBUTES, "mean", "PSNR dB", "SSIM", "latent MSE"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                 "| chance | | " + " | ".join(f"{CHANCE[a]:.2f}" for a in ATTRIBUTES)
                 + f" | {sum(CHANCE.values()) / len(CHANCE):.2f} | | | |"]
        for row in self.rows():
            acc = row["accuracy"]
            agree = [f"{float(row['psnr']):.2f}", f"{row['ssim']:.3f}", f"{row['latent_mse']:.4f}"] if "psnr" in row else ["ref."] * 3
            lines.append(f"| {row['model']} ({row['variant']}) | {row['unet_params']:,} | "
                         + " | ".join(f"{acc[a]:.2f}" for a in [*ATTRIBUTES, "mean"]) + " | " + " | ".join(agree) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-ready summary: settings, chance level, one row per model."""
        return {"settings": self.comparison.settings, "chance": CHANCE, "models": self.rows()}


@dataclass(frozen=True)
class FidelitySpec:
    """What the fidelity check draws: `n` held-out captions (the first of a shuffle seeded `spec_seed`) x `seeds`,
    sampled with `steps` and `guidance`, on `device`."""

    n: int = 24
    seeds: tuple[int, ...] = (0,)
    steps: int = STEPS
    guidance: float = GUIDANCE
    device: str = "cpu"
    spec_seed: int = 0


def fidelity(teacher: str | Path, students: Sequence[str | Path], spec: FidelitySpec = FidelitySpec(),
             progress: ProgressFn | None = None) -> Fidelity:
    """Render `spec.n` held-out shapes captions x seeds with the teacher and each student; score accuracy and agreement."""
    prompts = [caption(s) for s in check_specs(spec.n, spec.spec_seed)]
    drawn = Sampler(steps=spec.steps, guidance=spec.guidance)
    result = compare(teacher, list(students), CompareSpec(tuple(prompts), tuple(spec.seeds), SIZE, drawn, drawn),
                     spec.device, progress=progress)
    return Fidelity(result, [model_accuracy(m) for m in result.models])


def write(result: Fidelity, out: Path, overwrite: bool = False) -> dict[str, Path]:
    """compare's grid.png, report.html and compare.json, plus fidelity.json and fidelity.md, into folder `out`."""
    paths = write_report(result.comparison, out, overwrite)
    paths.update(fidelity=out / "fidelity.json", table=out / "fidelity.md")
    with atomic_outputs(overwrite) as outs:
        outs.temp(paths["fidelity"]).write_text(json.dumps(result.as_dict(), indent=2))
        outs.temp(paths["table"]).write_text(result.table() + "\n")
    return paths


class Probe:
    """Scores a UNet held in memory against the teacher on held-out shapes captions, with no export or reload: the
    teacher's latents and images are sampled once, each `score` samples the student at the same captions and seeds."""

    def __init__(self, teacher: torch.nn.Module, vae: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor,
                 specs: list[ShapeSpec], scaling: float, sampling: Sampler = Sampler(steps=STEPS, guidance=GUIDANCE),
                 seed: int = 0):
        self.vae, self.cond, self.uncond, self.specs, self.scaling = vae, cond, uncond, specs, scaling
        self.sampling, self.seeds = sampling, [seed + i for i in range(len(specs))]
        self.teacher_latents, self.teacher_images = self.render(teacher)
        self.teacher_accuracy = accuracy(self.teacher_images, specs)

    def render(self, unet: torch.nn.Module) -> tuple[torch.Tensor, list]:
        """`unet`'s final latents (one batch) and decoded images at the probe's captions and seeds, in eval mode."""
        from .distill import to_images
        was_training = unet.training
        unet.eval()
        z = sample_latents(unet, self.sampling, self.cond, self.uncond, self.seeds, SIZE // 8)
        unet.train(was_training)
        return z.float().cpu(), to_images(self.vae, z.float(), self.scaling, z.device)

    def score(self, unet: torch.nn.Module) -> dict[str, float]:
        """Mean PSNR (dB) and latent MSE against the teacher, and the mean attribute accuracy, of `unet`."""
        z, images = self.render(unet)
        return {"psnr": statistics.fmean(psnr(a, b) for a, b in zip(images, self.teacher_images)),
                "latent_mse": latent_mse(z, self.teacher_latents), "accuracy": accuracy(images, self.specs)["mean"]}


def probe(src: Source, teacher: torch.nn.Module, cache: Cache, n: int = 24, spec_seed: int = 0, seed: int = 0) -> Probe:
    """A `Probe` of `n` held-out captions (`check_specs`) for the teacher UNet of `src`, caption embeddings cached."""
    from .cache import TEXT_KIND, component_hash, encode_texts
    from .configs import sd15
    from .convert import TEXT
    from .distill import CPU, place
    from .pipeline import build_text_encoder, build_vae, tokenizer

    specs = check_specs(n, spec_seed)
    keys = encode_texts([caption(s) for s in specs] + [""], lambda: place(build_text_encoder(src), CPU, torch.float32),
                        tokenizer, cache, component_hash(src, TEXT))
    embed = torch.stack([cache.load(TEXT_KIND, k)["text"].float() for k in keys])
    vae = place(build_vae(src), CPU, torch.float32).eval()
    return Probe(teacher, vae, embed[:-1], embed[-1:], specs, float(sd15("vae").get("scaling_factor", 0.18215)), seed=seed)
