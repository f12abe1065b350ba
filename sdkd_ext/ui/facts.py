"""What the tab tells before a job: what the chosen file is, and the memory planner's estimate for the chosen settings.

Both are Markdown (a sentence and a small table), read off the core: `detect.describe` for the file, and for the
estimate the same `plan.fit` the job itself runs, so the settings shown are the ones the run will use.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ..detect import ModelInfo
from ..errors import SdkdError
from ..names import Output
from ..plan import CUDA_RESERVE, GIB, Estimate, Settings, cuda_vram_gb
from ..train import TrainConfig, autocast_dtype

KINDS = {"sd1": "SD1.x checkpoint", "student": "BK-SDM student", "sdxl": "SDXL checkpoint", "sd2": "SD2.x checkpoint",
         "lora": "LoRA", "vae": "VAE", "text_encoder": "text encoder", "unknown": "unknown"}
# What each kind of file is good for in this tab: the sentence of "What this file is".
USES = {"sd1": "Prune, Distil, LoRA, Compare and Bench take it as the teacher, Rebase as the community checkpoint",
        "student": "LoRA, Compare and Bench take it, and Rebase gives a student what a community checkpoint changed"}


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def describe_file(name: str, info: ModelInfo) -> str:
    """`info` as a sentence and a one-row table (kind, variant, UNet parameters, precision, parts present)."""
    parts = [p for p, there in (("UNet", info.unet_params > 0), ("VAE", info.has_vae),
                                ("text encoder", info.has_text_encoder), ("EMA weights", info.has_ema)) if there]
    kind = KINDS.get(info.kind, info.kind)
    if info.kind in USES:
        what = "an SD1.x teacher" if info.kind == "sd1" else f"a BK-SDM **{info.variant}** student"
        sentence = f"**{name}** is {what}{' (inpainting)' if info.inpainting else ''}: {USES[info.kind]}."
    else:
        sentence = f"**{name}** is not a checkpoint sdkd works on: {info.reason}."
    row = (kind, info.variant or "-", f"{info.unet_params:,}" if info.unet_params else "-", info.dtype or "-",
           ", ".join(parts) or "-")
    return sentence + "\n\n" + table(("kind", "variant", "UNet parameters", "precision", "parts present"), [row])


def train_device() -> torch.device:
    """Where a tab job trains: the GPU when there is one (accelerate's choice), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_line(device: torch.device) -> str:
    """The detected accelerator, in words."""
    if device.type != "cuda":
        return "No CUDA GPU found: the job trains on the CPU with the settings below (memory is then RAM)."
    name = torch.cuda.get_device_name(device)
    return (f"GPU: {name}, {cuda_vram_gb():.1f} GiB ({CUDA_RESERVE / GIB:.2f} GiB of it kept for the CUDA context).")


def settings_of(cfg: TrainConfig, device: torch.device) -> Settings:
    """The planner's settings for a training config on `device`."""
    from ..plan import default_optimizer

    amp = autocast_dtype(cfg.precision, device)
    precision = "fp32" if amp is None else "bf16" if amp == torch.bfloat16 else "fp16"
    optimizer = cfg.optimizer if cfg.optimizer != "auto" else default_optimizer()
    return Settings(cfg.batch, cfg.accum, cfg.grad_checkpointing, optimizer, cfg.ema, precision, device.type)


def estimate_text(plan: Callable[[TrainConfig, float | str | None, torch.device, Callable[[str], None]], TrainConfig],
                  estimator: Callable[[Settings], Estimate], cfg: TrainConfig, vram: float | str | None,
                  out: Output, held: Callable[[bool], str] | None = None) -> str:
    """The planner's verdict as the job will meet it: the GPU, the settings it will use (or the refusal), the
    estimated peak memory per part, and (`held`, the host's `memory_note`) what the host holds besides."""
    device = train_device()
    note = f"\n\n{held(device.type == 'cuda')}" if held is not None else ""
    said: list[str] = []
    try:
        with out.worded():
            planned = plan(cfg, vram, device, said.append)
    except SdkdError as e:
        asked = settings_of(cfg, device)
        least = estimator(replace(asked, batch=1, accum=asked.batch * asked.accum, grad_checkpointing=True, ema=False))
        return (f"{gpu_line(device)}\n\n**Does not fit, the job would refuse to start**: {e}. The least it can use "
                f"({least.settings.describe()}) needs {least.peak / GIB:.2f} GiB plus {CUDA_RESERVE / GIB:.2f} GiB for "
                "the CUDA context:\n\n" + parts_table(least) + note)
    est = estimator(settings_of(planned, device))
    said = [out.reword(s) for s in said] or ["no 'VRAM budget' given: the settings as they are"]
    return (f"{gpu_line(device)} {' '.join(s[0].upper() + s[1:] for s in said)}.\n\n"
            f"Settings it will use: {est.settings.describe()}.\n\n" + parts_table(est) + note)


def parts_table(est: Estimate) -> str:
    """An estimate's peak memory per part, the training peak and the encoding phase before it, as a table."""
    rows = [(part, f"{v / GIB:.2f} GiB") for part, v in est.parts.items()]
    rows += [("**training peak**", f"**{est.training / GIB:.2f} GiB**"),
             ("encoding before training (VAE, text encoder)", f"{est.cache_phase / GIB:.2f} GiB")]
    return table(("part", "estimated peak"), rows)
