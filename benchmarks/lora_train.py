"""LoRA training step time, samples/s and peak memory on a teacher and its students, beside the planner's estimate.

Runs the real job (`lora.train.train_lora`: cache, loop, export) on random captioned images, per
model, and reads step times and peak memory off its progress events (`max_memory_allocated` on
CUDA, peak RSS on CPU): once for the encoding phase (a 1-step run that fills the latent/text cache),
once for training from the cache, each beside the planner's estimate of that phase. Width 320 is SD1.5's real size (random
weights, built once by `bench_sd15.random_sd15`).

    python benchmarks/lora_train.py --width 32 --resolution 64 --steps 4 --device cpu      # smoke test
    python benchmarks/lora_train.py --resolution 512 --steps 20 --device cuda               # SD1.5 size, on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sd15 import random_sd15  # noqa: E402
from sdkd_ext.checkpoint import open_model  # noqa: E402
from sdkd_ext.detect import describe  # noqa: E402
from sdkd_ext.lora.names import layout_of_source  # noqa: E402
from sdkd_ext.lora.train import LoraJob, LoraSpec, estimate_lora, lora_params, train_lora  # noqa: E402
from sdkd_ext.plan import Settings, default_optimizer, unet_params  # noqa: E402
from sdkd_ext.prune import PruneJob, prune  # noqa: E402
from sdkd_ext.variants import get_variant  # noqa: E402
from sdkd_ext.tiny import save, tiny_checkpoint  # noqa: E402
from sdkd_ext.train import TrainConfig, autocast_dtype  # noqa: E402


def images(folder: Path, n: int, size: int) -> Path:
    """`n` random captioned images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n if not (folder / f"{n - 1}.txt").exists() else 0):  # rewritten images would miss the cache
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a random picture, number {i}")
    return folder


def measure(model: Path, data: Path, out: Path, spec: LoraSpec, cfg: TrainConfig, resolution: int) -> dict[str, float]:
    """A 1-step run fills the latent/text cache (its peak: the encoding phase); the timed run then trains from the
    cache (its peak: training). Median step time excludes the first two steps."""
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    stamps, peak = [], [0.0]

    def watch(e) -> None:
        if e.stage == "lora":
            stamps.append(time.perf_counter())
            peak[0] = e.metrics.get("peak_mem_gb", peak[0])

    def run(steps: int) -> float:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        stamps.clear()
        train_lora(LoraJob(model, data, out, spec, replace(cfg, steps=steps), resolution=resolution,
                           overwrite=True), watch)
        return peak[0]

    cache_peak = run(1)
    train_peak = run(cfg.steps)
    step = float(statistics.median(np.diff(stamps)[2:] if len(stamps) > 4 else np.diff(stamps)))
    return {"step_s": step, "samples_s": cfg.batch / step, "train_gib": train_peak, "cache_gib": cache_peak}


def main() -> None:
    """Build the models, train a LoRA on each, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/sdkd-lora-bench", help="folder for models, images and runs")
    p.add_argument("--width", type=int, default=320, help="base width (320 = SD1.5)")
    p.add_argument("--models", default="teacher,base,tiny", help="teacher and/or variants, comma-separated")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--text-encoder", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / f"teacher-w{a.width}.safetensors"
    if not teacher.exists():
        random_sd15(teacher) if a.width == 320 else save(tiny_checkpoint(width=a.width), teacher)
    data = images(work / f"images-{a.resolution}", max(8, 2 * a.batch), a.resolution)
    spec = LoraSpec(rank=a.rank, alpha=a.rank, text_encoder=a.text_encoder)
    cfg = TrainConfig(steps=a.steps, batch=a.batch, lr=1e-4, checkpoint_every=10**6, grad_checkpointing=a.grad_checkpointing,
                      device="cpu" if a.device == "cpu" else "auto")
    device = torch.device(a.device)
    amp = autocast_dtype(cfg.precision, device)
    precision = "fp32" if amp is None else "bf16" if amp == torch.bfloat16 else "fp16"
    settings = Settings(a.batch, 1, a.grad_checkpointing, default_optimizer(), False, precision, a.device)
    print(f"width {a.width}, {a.resolution} px, batch {a.batch}, rank {a.rank}{' + text encoder' if a.text_encoder else ''}, "
          f"{a.steps} steps, {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'CPU'}), {precision}")
    print(f"{'model':<8}{'UNet params':>14}{'adapters':>11}{'s/step':>9}{'samples/s':>11}"
          f"{'train GiB':>11}{'planned':>9}{'encode GiB':>12}{'planned':>9}")
    for name in a.models.split(","):
        pruned = PruneJob(teacher, get_variant(name), work / f"{name}-w{a.width}", dtype="fp16", overwrite=True)
        model = teacher if name == "teacher" else prune(pruned).checkpoint
        src = open_model(model)
        layout = layout_of_source(src, describe(src).topology)
        m = measure(model, data, work / f"lora-{name}.safetensors", spec, cfg, a.resolution)
        est = estimate_lora(layout, spec, a.resolution, settings)
        print(f"{name:<8}{unet_params(layout.topology):>14,}{lora_params(layout, spec):>11,}{m['step_s']:>9.3f}"
              f"{m['samples_s']:>11.2f}{m['train_gib']:>11.2f}{est.training / 2**30:>9.2f}{m['cache_gib']:>12.2f}"
              f"{est.cache_phase / 2**30:>9.2f}")


if __name__ == "__main__":
    main()
