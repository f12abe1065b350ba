"""`sdkd lcm`: thin argument parsing over `few_step_lora`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_guidance(text: str) -> tuple[float, float]:
    """`7.5` or `5:9` as a (low, high) CFG-scale range."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a CFG scale (7.5) or a range (5:9)") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: give a CFG scale (7.5) or a range (5:9)")
    return parts[0], parts[-1]


def job_of(a: argparse.Namespace):
    """The `LcmJob` the arguments describe (names stay paths here; the job opens them once)."""
    from ..data import read_prompts
    from ..distill import data_spec, optional_path
    from ..plan import parse_vram
    from ..lora.cli import loop_config
    from ..lora.train import LoraSpec
    from .job import LcmJob
    from .objective import ConsistencySpec

    shown = () if a.no_preview else None if a.preview_prompts is None else tuple(read_prompts(a.preview_prompts))
    data = data_spec(argparse.Namespace(**{**vars(a), "guidance": a.sample_guidance}))  # --guidance is the baked-in cfg
    return LcmJob(Path(a.model), Path(a.out), data, optional_path(a.teacher), optional_path(a.init_lora),
                  LoraSpec(a.rank, float(a.alpha or a.rank)), ConsistencySpec(a.guidance, a.solver_steps), loop_config(a),
                  a.resolution, a.dtype, a.overwrite, a.resume, optional_path(a.cache_dir), parse_vram(a.vram), shown)


def cmd_lcm(a: argparse.Namespace) -> int:
    """Train a few-step LoRA and say where it went and how to sample with it."""
    from ..lora.cli import run_lora_command
    from .job import USE, few_step_lora

    def how(r) -> None:
        print(f"sample with it: sampler LCM, {USE.steps} steps, CFG {USE.guidance:g} (A1111/Forge: sampler 'LCM'; "
              f"ComfyUI: KSampler 'lcm' after ModelSamplingDiscrete 'lcm'; sdkd: --sampler lcm --steps {USE.steps} "
              f"--guidance {USE.guidance:g} --lora {r.path.name})")

    job = job_of(a)
    return run_lora_command(lambda progress: few_step_lora(job, progress, log=lambda m: print(f"sdkd: {m}", file=sys.stderr)),
                            "few-step LoRA", "samples", "loss log and sample grids", " (continue with --resume)", how)


def add_commands(sub) -> None:
    """Register `sdkd lcm`."""
    from ..lora.cli import add_lora_output_options, add_loop_options, add_schedule_options

    s = sub.add_parser("lcm", help="train a few-step (LCM) LoRA for an SD1.x checkpoint or BK-SDM student: "
                                   "4 sampler steps at CFG 1 instead of 25 at 7.5")
    s.add_argument("model", help="the model the LoRA is for: SD1.x checkpoint or BK-SDM student (.safetensors, .ckpt, folder)")
    s.add_argument("--teacher", help="whose guided sampling the model learns to shortcut (default: the model itself; "
                                     "for a student, the checkpoint it was made from: KD and step reduction in one)")
    data = s.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="folder of images with same-name .txt captions (or a metadata.jsonl)")
    data.add_argument("--prompts", help="data-free: a text file of prompts (one per line) the teacher draws from")
    data.add_argument("--self", dest="self_n", type=int, metavar="N", help="data-free: N built-in varied prompts")
    s.add_argument("--init-lora", help="start from this LoRA for MODEL (e.g. lcm-lora-sdv1-5 moved onto a student with "
                                       "`sdkd lora-port`) and polish it; its layers and rank are kept")
    s.add_argument("--rank", type=int, default=64, help="adapter rank (default 64, as the public LCM-LoRAs)")
    s.add_argument("--alpha", type=float, help="adapter alpha (default: the rank)")
    s.add_argument("--guidance", type=parse_guidance, default=(7.5, 7.5), metavar="CFG[:CFG]",
                   help="the teacher's CFG scale baked into the LoRA: one value, or a range drawn per sample (default 7.5)")
    s.add_argument("--solver-steps", type=int, default=50, help="the DDIM grid the teacher steps along (default 50)")
    add_schedule_options(s)
    s.add_argument("--flip", action="store_true", help="with --data: also train on mirror images")
    s.add_argument("--negative", default="", help="data-free: negative prompt of the teacher's samples")
    s.add_argument("--sample-guidance", dest="sample_guidance", type=float, default=7.5,
                   help="data-free: CFG scale of the teacher's training samples (default 7.5)")
    s.add_argument("--sample-steps", type=int, default=25, help="data-free: sampler steps per teacher sample")
    add_loop_options(s)
    s.add_argument("--preview-every", type=int, default=0,
                   help="steps between sample grids (the teacher at 25 steps above the model + LoRA at 4 LCM steps; "
                        "also at the end) in <out>.run/previews/ (default 0: at the end only)")
    s.add_argument("--preview-prompts", help="text file of sample-grid prompts (default: the first 4 captions/prompts)")
    s.add_argument("--no-preview", action="store_true", help="no sample grids")
    add_lora_output_options(s)
    s.set_defaults(fn=cmd_lcm)
