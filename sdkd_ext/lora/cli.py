"""`sdkd lora` and `sdkd lora-port`: the LoRA commands, thin argument parsing over the other modules of this package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..progress import ProgressFn

if TYPE_CHECKING:
    from ..train import TrainConfig


def loop_config(a: argparse.Namespace) -> TrainConfig:
    """The loop settings of a LoRA command's arguments (sdkd lora, sdkd lcm)."""
    from ..train import TrainConfig

    return TrainConfig(steps=a.steps, batch=a.batch, accum=a.accum, lr=a.lr, precision=a.precision,
                       grad_checkpointing=a.grad_checkpointing, optimizer=a.optimizer, checkpoint_every=a.checkpoint_every,
                       preview_every=a.preview_every, seed=a.seed, device=a.device, keep_state=a.keep_state)


def run_lora_command(call: Callable[[ProgressFn], object], what: str, items: str, kept: str, resume: str = "",
                     then: Callable[[object], None] | None = None) -> int:
    """Run a LoRA job with the CLI's bars and Ctrl-C, and say how it ended: `what` (N modules), steps on N `items`,
    loss, the file, `kept` in the run folder (`resume`: the hint after a cancel; `then(result)`: more lines)."""
    from ..distill import print_run_notes, run_stoppable

    r = run_stoppable(call)
    if r is None:
        return 130
    if r.path is None:  # a non-main process of a multi-process run
        return 0
    t = r.train
    status = f"cancelled at step {t.steps}/{t.total}{resume}" if t.cancelled else f"{t.steps} steps"
    print(f"{what} ({r.modules} modules): {status} on {r.samples} {items} in {t.seconds:.0f}s, "
          f"loss {t.losses.get('loss', float('nan')):.4g} -> {r.path}; {kept} in {r.run_dir}/")
    if then is not None:
        then(r)
    print_run_notes(t)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    """Train a LoRA and say where it went."""
    from ..data import read_prompts
    from ..distill import optional_path
    from ..plan import parse_vram
    from .train import LoraJob, LoraSpec, train_lora

    shown = tuple(read_prompts(a.preview_prompts)) if a.preview_prompts else None
    job = LoraJob(Path(a.base), Path(a.data), Path(a.out), LoraSpec(a.rank, a.alpha, a.text_encoder), loop_config(a),
                  a.resolution, a.flip, a.dtype, a.overwrite, a.resume, optional_path(a.cache_dir), parse_vram(a.vram), shown)
    return run_lora_command(lambda progress: train_lora(job, progress, log=lambda m: print(f"sdkd: {m}", file=sys.stderr)),
                            "LoRA", "images", f"loss log{' and sample grids' if a.preview_every else ''}")


def cmd_port(a: argparse.Namespace) -> int:
    """Port a teacher LoRA onto a BK-SDM student."""
    from .port import port_lora

    r = port_lora(a.lora, a.to, a.out, a.overwrite, a.alpha_equals_rank)
    blocks = ", ".join(r.dropped_blocks())
    print(f"BK-SDM {r.variant}: kept {r.kept} modules, dropped {len(r.dropped)}"
          + (f" (in removed teacher blocks {blocks})" if blocks else "") + f" -> {r.path}")
    return 0


def add_schedule_options(s: argparse.ArgumentParser) -> None:
    """A LoRA run's schedule (sdkd lora, sdkd lcm): steps, learning rate, resolution, micro-batch, accumulation."""
    s.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    s.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    s.add_argument("--resolution", type=int, default=512, help="training image size in pixels (multiple of 64)")
    s.add_argument("--batch", type=int, default=1, help="micro-batch per process (default 1)")
    s.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")


def add_lora_output_options(s: argparse.ArgumentParser) -> None:
    """Where a LoRA run keeps things (sdkd lora, sdkd lcm): cache, seed, the LoRA file and its run folder."""
    from ..distill import add_run_options
    from ..export import add_output_options

    s.add_argument("--cache-dir", help="latent/text cache folder (default: inside the run folder, removed after a "
                                       "finished run unless --keep-state; a --cache-dir is never removed)")
    s.add_argument("--seed", type=int, default=0)
    add_output_options(s, "output LoRA (.safetensors); the run folder <out>.run/ goes beside it",
                       dtype="exported LoRA weights dtype", overwrite="replace an existing LoRA and start the run over")
    add_run_options(s)


def add_loop_options(s: argparse.ArgumentParser) -> None:
    """The training loop's options a LoRA run takes as they are (sdkd lora, sdkd lcm): precision, checkpointing,
    optimizer, memory plan, device and checkpoint interval."""
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast (auto: bf16 where supported, else fp16 on CUDA; fp32 on CPU)")
    s.add_argument("--grad-checkpointing", action="store_true", help="trade compute for activation memory")
    s.add_argument("--optimizer", default="auto", choices=["auto", "adamw", "adamw8bit"])
    s.add_argument("--vram", help="'auto' or GiB: let the memory planner choose batch split and checkpointing")
    s.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto: accelerate's choice (GPU if any)")
    s.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints")


def add_commands(sub) -> None:
    """Register the LoRA subcommands."""
    s = sub.add_parser("lora", help="train a LoRA on an SD1.x checkpoint or BK-SDM student (kohya file for its layers)")
    s.add_argument("base", help="the model: SD1.x teacher or sdkd student (.safetensors, .ckpt or diffusers folder)")
    s.add_argument("--data", required=True, help="folder of images with same-name .txt captions (or a metadata.jsonl)")
    s.add_argument("--rank", type=int, default=16, help="adapter rank (default 16)")
    s.add_argument("--alpha", type=float, default=16.0, help="adapter alpha; the update is scaled by alpha/rank (default 16)")
    s.add_argument("--text-encoder", action="store_true", help="also train adapters on the text encoder's attention")
    add_schedule_options(s)
    s.add_argument("--flip", action="store_true", help="also train on mirror images")
    add_loop_options(s)
    s.add_argument("--preview-every", type=int, default=0,
                   help="steps between sample grids (the model without, then with the LoRA; also at the end) in "
                        "<out>.run/previews/ (default 0: none)")
    s.add_argument("--preview-prompts", help="text file of sample-grid prompts (default: the first 4 captions; on a "
                                             "CPU the grid is 2 prompts, at most 256 px and 10 steps)")
    add_lora_output_options(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("lora-port", help="port a LoRA made for the full SD1.x model onto a BK-SDM student")
    s.add_argument("lora", help="the LoRA: kohya .safetensors (LDM or diffusers names), peft/diffusers file or folder")
    s.add_argument("--to", required=True, help="base, small, tiny, or a student .safetensors (its widths and hash are used)")
    s.add_argument("--out", help="output path (default: <lora>-bk-<variant>.safetensors beside the LoRA)")
    s.add_argument("--alpha-equals-rank", action="store_true",
                   help="for a LoRA that states no alpha: take alpha = rank (the diffusers/peft default)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.set_defaults(fn=cmd_port)
