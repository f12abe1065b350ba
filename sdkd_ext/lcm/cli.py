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
    from ..distill import data_spec
    from ..lora.train import LoraSpec
    from ..plan import parse_vram
    from ..train import TrainConfig
    from .job import LcmJob
    from .objective import ConsistencySpec

    cfg = TrainConfig(steps=a.steps, batch=a.batch, accum=a.accum, lr=a.lr, precision=a.precision,
                      grad_checkpointing=a.grad_checkpointing, optimizer=a.optimizer, checkpoint_every=a.checkpoint_every,
                      preview_every=a.preview_every, seed=a.seed, device=a.device, keep_state=a.keep_state)
    shown = () if a.no_preview else None if a.preview_prompts is None else tuple(read_prompts(a.preview_prompts))
    data = data_spec(argparse.Namespace(**{**vars(a), "guidance": a.sample_guidance}))  # --guidance is the baked-in cfg
    return LcmJob(Path(a.model), Path(a.out), data, Path(a.teacher) if a.teacher else None,
                  Path(a.init_lora) if a.init_lora else None, LoraSpec(a.rank, float(a.alpha or a.rank)),
                  ConsistencySpec(a.guidance, a.solver_steps), cfg, a.resolution, a.dtype, a.overwrite, a.resume,
                  Path(a.cache_dir) if a.cache_dir else None,
                  parse_vram(a.vram), shown)


def cmd_lcm(a: argparse.Namespace) -> int:
    """Train a few-step LoRA and say where it went and how to sample with it."""
    from ..distill import print_run_notes, run_stoppable
    from .job import USE, few_step_lora

    r = run_stoppable(lambda progress: few_step_lora(job_of(a), progress, log=lambda m: print(f"sdkd: {m}", file=sys.stderr)))
    if r is None:
        return 130
    if r.path is None:  # a non-main process of a multi-process run
        return 0
    t = r.train
    status = f"cancelled at step {t.steps}/{t.total} (continue with --resume)" if t.cancelled else f"{t.steps} steps"
    print(f"few-step LoRA ({r.modules} modules): {status} on {r.samples} samples in {t.seconds:.0f}s, "
          f"loss {t.losses.get('loss', float('nan')):.4g} -> {r.path}; loss log and sample grids in {r.run_dir}/")
    print(f"sample with it: sampler LCM, {USE.steps} steps, CFG {USE.guidance:g} (A1111/Forge: sampler 'LCM'; "
          f"ComfyUI: KSampler 'lcm' after ModelSamplingDiscrete 'lcm'; sdkd: --sampler lcm --steps {USE.steps} "
          f"--guidance {USE.guidance:g} --lora {r.path.name})")
    print_run_notes(t)
    return 0


def add_commands(sub) -> None:
    """Register `sdkd lcm`."""
    from ..distill import add_run_options
    from ..lora.cli import add_loop_options

    s = sub.add_parser("lcm", help="train a few-step (LCM) LoRA for an SD1.x checkpoint or BK-SDM student: "
                                   "4 sampler steps at CFG 1 instead of 25 at 7.5")
    s.add_argument("model", help="the model the LoRA is for: SD1.x checkpoint or BK-SDM student (.safetensors, .ckpt, folder)")
    s.add_argument("--teacher", help="whose guided sampling the model learns to shortcut (default: the model itself; "
                                     "for a student, the checkpoint it was made from: KD and step reduction in one)")
    data = s.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="folder of images with same-name .txt captions (or a metadata.jsonl)")
    data.add_argument("--prompts", help="data-free: a text file of prompts (one per line) the teacher draws from")
    data.add_argument("--self", dest="self_n", type=int, metavar="N", help="data-free: N built-in varied prompts")
    s.add_argument("--out", required=True, help="output LoRA (.safetensors); the run folder <out>.run/ goes beside it")
    s.add_argument("--init-lora", help="start from this LoRA for MODEL (e.g. lcm-lora-sdv1-5 moved onto a student with "
                                       "`sdkd lora-port`) and polish it; its layers and rank are kept")
    s.add_argument("--rank", type=int, default=64, help="adapter rank (default 64, as the public LCM-LoRAs)")
    s.add_argument("--alpha", type=float, help="adapter alpha (default: the rank)")
    s.add_argument("--guidance", type=parse_guidance, default=(7.5, 7.5), metavar="CFG[:CFG]",
                   help="the teacher's CFG scale baked into the LoRA: one value, or a range drawn per sample (default 7.5)")
    s.add_argument("--solver-steps", type=int, default=50, help="the DDIM grid the teacher steps along (default 50)")
    s.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    s.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    s.add_argument("--resolution", type=int, default=512, help="training image size in pixels (multiple of 64)")
    s.add_argument("--batch", type=int, default=1, help="micro-batch per process (default 1)")
    s.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
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
    s.add_argument("--cache-dir", help="latent/text cache folder (default: inside the run folder, removed after a "
                                       "finished run unless --keep-state; a --cache-dir is never removed)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="exported LoRA weights dtype")
    add_run_options(s, "replace an existing LoRA and start the run over")
    s.set_defaults(fn=cmd_lcm)
