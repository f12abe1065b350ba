"""`sdkd compare`: the same prompts and seeds through the teacher and each student, and how close the students stay.

Every model renders every (prompt, seed) pair; each student image is scored against the teacher's
(PSNR and SSIM on the decoded images, MSE on the final latents). The result is data (for UI tabs
and ComfyUI nodes); `write_report` turns it into a labelled PNG grid, an HTML report and JSON.
"""

from __future__ import annotations

import argparse
import gc
import html
import json
import math
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .bench import add_model_arguments, default_dtype, labels_for
from .data import read_prompts
from .errors import SdkdError
from .metrics import INTERVAL_METHOD, latent_mse, mean_interval, psnr, ssim
from .progress import Meter, ProgressFn
from .sampling import Sampler, add_sampler_options

HIDDEN_METADATA = ("sdkd_topology",)  # long machine-readable fields the report leaves out
DISTILL_PREFIX = "sdkd_distill"  # metadata written by distillation (steps and settings)
METRICS = ("psnr", "ssim", "latent_mse")


@dataclass(frozen=True)
class CompareSpec:
    """What every model draws (each prompt x seed at one size), how the teacher (the reference) and the students are
    sampled, and the LoRAs (file, weight) applied to every student."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    size: int = 512
    reference: Sampler = Sampler()
    student: Sampler = Sampler()
    loras: tuple[tuple[Path, float], ...] = ()
    negative: str = ""


@dataclass
class Sample:
    """One rendered image, its final latents and its agreement with the teacher's image of the same prompt and seed."""

    prompt: str
    seed: int
    image: object  # PIL image
    latents: torch.Tensor
    psnr: float = math.nan  # filled in by `compare` once the teacher's sample exists
    ssim: float = math.nan
    latent_mse: float = math.nan

    def scores(self) -> dict:
        """The agreement figures, JSON-ready (inf as the string 'inf')."""
        return {"prompt": self.prompt, "seed": self.seed, "psnr": _json_float(self.psnr), "ssim": self.ssim,
                "latent_mse": self.latent_mse}


@dataclass
class ModelRun:
    """One model's images, how they were drawn and what its file says about it."""

    label: str
    path: str
    variant: str | None
    unet_params: int
    metadata: dict[str, str]
    seconds_per_image: float
    samples: list[Sample] = field(default_factory=list)
    sampler: str = ""  # Sampler.describe() of the settings it was drawn with
    loras: list[str] = field(default_factory=list)  # 'file:weight' applied to it
    cpu_seconds_per_image: float = math.nan  # process CPU seconds (all threads), beside the wall seconds

    @property
    def distillation(self) -> dict[str, str]:
        """The file's distillation metadata (empty for a teacher or a student only pruned)."""
        return {k: v for k, v in self.metadata.items() if k.startswith(DISTILL_PREFIX)}

    def summary(self) -> dict[str, float]:
        """Mean agreement with the teacher over all samples."""
        return {k: statistics.fmean(getattr(s, k) for s in self.samples) for k in METRICS}

    def intervals(self) -> dict[str, dict | None]:
        """Each metric's mean with its 95% interval over the samples (metrics.INTERVAL_METHOD), None where undefined."""
        out = {}
        for k in METRICS:
            iv = mean_interval([getattr(s, k) for s in self.samples])
            out[k] = None if iv is None else dict(zip(("mean", "low", "high"), iv))
        return out


@dataclass
class Comparison:
    """Every model's samples, scored against models[0] (the teacher), and the settings used."""

    models: list[ModelRun]
    settings: dict

    def as_dict(self) -> dict:
        """JSON-ready form (no images or latents)."""
        return {"settings": self.settings, "models": [
            {"label": m.label, "path": m.path, "variant": m.variant, "unet_params": m.unet_params,
             "metadata": {k: v for k, v in m.metadata.items() if k not in HIDDEN_METADATA},
             "sampler": m.sampler, "loras": m.loras,
             "seconds_per_image": m.seconds_per_image, "cpu_seconds_per_image": m.cpu_seconds_per_image,
             "summary": {k: _json_float(v) for k, v in m.summary().items()},
             "intervals": m.intervals(),
             "samples": [s.scores() for s in m.samples]} for m in self.models]}


def _json_float(x: float) -> float | str:
    """A float JSON can carry: infinities as strings."""
    return str(x) if math.isinf(x) else x


def _sampler_settings(spec: Sampler) -> dict:
    """A sampler's settings, JSON-ready."""
    return {"sampler": spec.name, "steps": spec.steps, "guidance": spec.guidance}


def check_spec(students: Sequence[str | Path], spec: CompareSpec) -> list[list[tuple[object, float]]]:
    """Refuse what cannot be compared before anything renders; each student's LoRAs resolved onto its own layers
    (a LoRA of another topology is refused here, naming the student)."""
    from .checkpoint import open_model
    from .detect import describe
    from .lora.file import read_lora
    from .lora.names import layout_of_source

    if not students:
        raise SdkdError("give at least one student to compare with the teacher")
    if not spec.prompts:
        raise SdkdError("--prompts: give at least one prompt")
    if not spec.seeds:
        raise SdkdError("--seeds: give at least one seed")
    if spec.size % 8 or spec.size < 64:
        raise SdkdError(f"--size {spec.size}: the image side must be a multiple of 8 and at least 64 pixels")
    resolved = []
    for student in students:
        if not spec.loras:
            resolved.append([])
            continue
        src = open_model(student)
        layout = layout_of_source(src, describe(src).topology)
        try:
            resolved.append([(read_lora(path, layout), weight) for path, weight in spec.loras])
        except SdkdError as e:
            raise SdkdError(f"--lora for {Path(student).name}: {e}") from e
    return resolved


def lacking_few_step(teacher: str | Path, students: Sequence[str | Path], spec: CompareSpec) -> list[str]:
    """Names of the models drawn with the lcm sampler but without an LCM LoRA (their images will be poor)."""
    from .lora.kind import lacks_few_step

    lora_files = [p for p, _ in spec.loras]
    out = [Path(teacher).name] if lacks_few_step(spec.reference.name, [teacher]) else []
    return out + [Path(s).name for s in students if lacks_few_step(spec.student.name, [s, *lora_files])]


def compare(teacher: str | Path, students: Sequence[str | Path], spec: CompareSpec, device: str = "cpu",
            dtype: str | None = None, progress: ProgressFn | None = None) -> Comparison:
    """Render every (prompt, seed) with the teacher at spec.reference and each student (with spec.loras) at
    spec.student, one model in memory at a time, and score the students against the teacher."""
    from .devices import usable_device
    from .export import parse_dtype
    from .lora.apply import apply_lora
    from .pipeline import load_pipeline, render

    loras = check_spec(students, spec)
    dev = usable_device(device)
    dt = parse_dtype(dtype) if dtype else default_dtype(dev)
    paths = [str(teacher), *map(str, students)]
    pairs = [(p, s) for p in spec.prompts for s in spec.seeds]
    lora_names = [f"{Path(p).name}:{w:g}" for p, w in spec.loras]
    steps = spec.reference.steps + len(students) * spec.student.steps
    meter = Meter(progress, "compare", len(pairs) * steps)  # one bar, in sampler steps
    runs: list[ModelRun] = []
    for i, (path, label) in enumerate(zip(paths, labels_for(paths))):
        loaded = load_pipeline(path, device=dev, dtype=dt)
        for lora, weight in loras[i - 1] if i else []:
            apply_lora(loaded.pipe, lora, weight)
        sampler = spec.student if i else spec.reference
        start, cpu = time.perf_counter(), time.process_time()
        samples = []
        for prompt, seed in pairs:
            step = lambda e, note=f"{label}: {prompt[:40]} (seed {seed})": meter.advance(message=note)  # noqa: E731
            image, latents = render(loaded.pipe, prompt, sampler, seed, spec.size, spec.negative, step)
            samples.append(Sample(prompt, seed, image, latents))
        info = loaded.info
        runs.append(ModelRun(label, path, info.variant, info.unet_params, dict(info.metadata or {}),
                             (time.perf_counter() - start) / len(pairs), samples, sampler.describe(),
                             lora_names if i else [], (time.process_time() - cpu) / len(pairs)))
        del loaded
        gc.collect()
    for run in runs:
        for s, ref in zip(run.samples, runs[0].samples):
            s.psnr, s.ssim, s.latent_mse = psnr(s.image, ref.image), ssim(s.image, ref.image), latent_mse(s.latents, ref.latents)
    settings = dict(size=spec.size, negative=spec.negative, seeds=list(spec.seeds), prompts=list(spec.prompts),
                    reference=_sampler_settings(spec.reference), students=_sampler_settings(spec.student),
                    loras=lora_names, interval=INTERVAL_METHOD, device=str(dev), dtype=str(dt).replace("torch.", ""))
    return Comparison(runs, settings)


# ---- grid and report -----------------------------------------------------------------------------

def _fmt(x: float, digits: int = 2) -> str:
    """A figure for people: 'inf' for infinity."""
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def grid(comparison: Comparison, cell: int | None = None):
    """A labelled PIL image: one row per (prompt, seed), one column per model, scores under each student image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    models = comparison.models
    side = cell or min(max(comparison.settings["size"], 128), 512)  # small images are enlarged to stay readable
    head, left, foot, pad = 50, 220, 18, 6
    rows = len(models[0].samples)
    img = Image.new("RGB", (left + len(models) * (side + pad) + pad, head + rows * (side + foot + pad)), "white")
    draw = ImageDraw.Draw(img)
    for c, m in enumerate(models):
        x = left + pad + c * (side + pad)
        draw.text((x, 4), m.label[:side // 6], fill="black", font=font)
        draw.text((x, 18), f"{m.variant or '?'}, {m.unet_params / 1e6:.1f}M params", fill="#555555", font=font)
        draw.text((x, 32), (m.sampler + (" +LoRA" if m.loras else ""))[:side // 6], fill="#555555", font=font)
        for r, s in enumerate(m.samples):
            y = head + r * (side + foot + pad)
            resample = Image.NEAREST if s.image.width < side else Image.LANCZOS
            img.paste(s.image.resize((side, side), resample), (x, y))
            caption = "reference" if c == 0 else f"PSNR {_fmt(s.psnr, 1)} dB  SSIM {_fmt(s.ssim, 3)}"
            draw.text((x, y + side + 3), caption, fill="black", font=font)
    for r, s in enumerate(models[0].samples):
        y = head + r * (side + foot + pad)
        lines = textwrap.wrap(s.prompt, 34)[: max(1, side // 14 - 1)] + [f"seed {s.seed}"]
        draw.multiline_text((pad, y), "\n".join(lines), fill="black", font=font, spacing=3)
    return img


FIGURES = {"psnr": lambda x: _fmt(x, 2), "ssim": lambda x: _fmt(x, 4), "latent_mse": lambda x: f"{x:.4g}"}


def _with_interval(m: ModelRun, key: str) -> str:
    """A model's mean figure and, where defined, its 95% interval: '24.10 (23.52 to 24.68)'."""
    show, iv = FIGURES[key], m.intervals()[key]
    mean = show(m.summary()[key])
    return mean if iv is None else f"{mean} ({show(iv['low'])} to {show(iv['high'])})"


def _sampling_line(settings: dict) -> str:
    """'dpmpp_2m, 25 steps, cfg 7.5' from a compare settings entry."""
    return f"{settings['sampler']}, {settings['steps']} steps, cfg {settings['guidance']:g}"


def report_html(comparison: Comparison, grid_src: str = "grid.png") -> str:
    """A self-describing HTML page: settings, each model's metadata and mean agreement, the grid, per-image figures."""
    e = html.escape
    s = comparison.settings
    models = comparison.models
    head = ("<tr><th>model</th><th>file</th><th>variant</th><th>UNet params</th><th>distillation</th>"
            "<th>other metadata</th><th>sampling</th><th>PSNR (dB)</th><th>SSIM</th><th>latent MSE</th>"
            "<th>s / image (wall)</th><th>CPU s / image</th></tr>")
    rows = []
    for i, m in enumerate(models):
        distill = ", ".join(f"{k[len(DISTILL_PREFIX):].strip('_') or 'yes'}: {v}" for k, v in m.distillation.items())
        other = ", ".join(f"{k}: {v}" for k, v in sorted(m.metadata.items())
                          if k.startswith("sdkd_") and k not in HIDDEN_METADATA and k not in m.distillation)
        rows.append(
            f"<tr><td>{e(m.label)}</td><td>{e(m.path)}</td><td>{e(m.variant or '?')}</td><td>{m.unet_params:,}</td>"
            f"<td>{e(distill or ('-' if i == 0 else 'none (pruned only)'))}</td><td class=meta>{e(other or '-')}</td>"
            f"<td>{e(m.sampler)}{e(''.join(f', LoRA {n}' for n in m.loras))}</td>"
            + ("<td colspan=3>reference</td>" if i == 0 else
               "".join(f"<td>{_with_interval(m, k)}</td>" for k in METRICS))
            + f"<td>{m.seconds_per_image:.2f}</td><td>{m.cpu_seconds_per_image:.2f}</td></tr>")
    per = ["<tr><th>prompt</th><th>seed</th>" + "".join(f"<th>{e(m.label)}<br>PSNR / SSIM / latent MSE</th>"
                                                          for m in models[1:]) + "</tr>"]
    for j, ref in enumerate(models[0].samples):
        cells = "".join(f"<td>{_fmt(m.samples[j].psnr)} / {_fmt(m.samples[j].ssim, 4)} / {m.samples[j].latent_mse:.4g}</td>"
                        for m in models[1:])
        per.append(f"<tr><td>{e(ref.prompt)}</td><td>{ref.seed}</td>{cells}</tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sdkd compare</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} .meta{{font-size:85%}}
img{{max-width:100%}}</style></head><body>
<h1>sdkd compare</h1>
<p>{len(models[0].samples)} images per model: {len(s['prompts'])} prompts x {len(s['seeds'])} seeds; {s['size']} px,
{e(s['device'])} {e(s['dtype'])}; the teacher (reference) drawn with {e(_sampling_line(s['reference']))}, the students
with {e(_sampling_line(s['students']))}{e(''.join(f', LoRA {n}' for n in s['loras']))}. Agreement is with the teacher's
image of the same prompt and seed: PSNR and SSIM on the decoded images (higher is closer), MSE on the final latents
(lower is closer); in brackets the {e(s['interval'])}.</p>
<h2>Models</h2>
<table>{head}{''.join(rows)}</table>
<h2>Images</h2>
<img src="{e(grid_src)}" alt="grid of every model's images">
<h2>Per image</h2>
<table>{''.join(per)}</table>
</body></html>
"""


def report_files(out: Path) -> dict[str, Path]:
    """The files a report writes into folder `out`, by role."""
    return {"grid": out / "grid.png", "report": out / "report.html", "json": out / "compare.json"}


def write_report(comparison: Comparison, out: Path, overwrite: bool = False) -> dict[str, Path]:
    """Write grid.png, report.html and compare.json into folder `out`, atomically."""
    from .export import atomic_outputs

    paths = report_files(out)
    with atomic_outputs(overwrite) as outs:
        grid(comparison).save(outs.temp(paths["grid"]), format="PNG")
        outs.temp(paths["json"]).write_text(json.dumps(comparison.as_dict(), indent=2))
        outs.temp(paths["report"]).write_text(report_html(comparison, paths["grid"].name), encoding="utf-8")
    return paths


# ---- CLI -----------------------------------------------------------------------------------------

def _seeds(text: str) -> list[int]:
    """Seeds from '0,1,2' or a range '0-3'."""
    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-", 1)
            return list(range(int(lo), int(hi) + 1))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as 0,1,2 or a range 0-3") from None


def cmd_compare(a: argparse.Namespace) -> int:
    """Compare students with their teacher and write the report."""
    from .export import Outputs
    from .lora.apply import parse_spec
    from .lora.kind import poor_images_line
    from .progress import tqdm_progress
    from .sampling import from_args

    for path in report_files(Path(a.out)).values():
        Outputs(a.overwrite).check(path)  # before any model is rendered
    spec = CompareSpec(tuple(read_prompts(a.prompts)), tuple(a.seeds), a.size, from_args(a, "reference-"), from_args(a),
                       tuple(parse_spec(x) for x in a.lora), a.negative)
    poor = lacking_few_step(a.teacher, a.students, spec)
    if poor:
        fix = "add one with --lora FILE (students) or pick another --reference-sampler"
        print(f"sdkd: warning: {poor_images_line(', '.join(poor), fix)}", file=sys.stderr)
    result = compare(a.teacher, a.students, spec, a.device, a.dtype, tqdm_progress())
    paths = write_report(result, Path(a.out), a.overwrite)
    for m in result.models[1:]:
        figures = ", ".join(f"{name} {_with_interval(m, k)}" for k, name in zip(METRICS, ("PSNR dB", "SSIM", "latent MSE")))
        print(f"{m.label} ({m.variant}, {m.sampler}): {figures}; {m.seconds_per_image:.2f} s/image "
              f"({m.cpu_seconds_per_image:.2f} CPU s) vs {result.models[0].label}")
    print(f"wrote {paths['report']}, {paths['grid']} and {paths['json']}")
    return 0


def add_commands(sub) -> None:
    """Add `sdkd compare` to the CLI."""
    s = sub.add_parser("compare", help="render the same prompts and seeds with a teacher and its students, score them")
    add_model_arguments(s, "the teacher checkpoint (the reference)")
    s.add_argument("--prompts", required=True, help="text file, one prompt per line (# comments allowed)")
    s.add_argument("--seeds", type=_seeds, default=[0], help="seeds, e.g. 0,1,2 or 0-3 (default 0)")
    s.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    add_sampler_options(s, what="the students")
    add_sampler_options(s, "reference-", "the teacher, the reference")
    s.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="apply a LoRA to every student, e.g. tiny-lcm.safetensors:1 (repeatable; not to the teacher)")
    s.add_argument("--negative", default="", help="negative prompt for every image")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    s.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: fp32 on CPU, fp16 elsewhere")
    s.add_argument("--out", default="sdkd-compare", help="folder for report.html, grid.png, compare.json")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    s.set_defaults(fn=cmd_compare)
