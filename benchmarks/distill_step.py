"""Distillation step time, samples/s and peak memory per variant, with and without the latent/text cache,
beside the memory planner's estimate; each run's phase split; then the planner's SD1.5-size table.

Each measurement runs the real training loop (`train.run_training` with the KD objective) in a fresh
process. Peak memory is taken during the training steps only (not while models load): allocated CUDA
memory, or RSS sampled on CPU, above the post-import baseline. Time is wall-clock and the process's CPU
time (all threads) over the training call, per step; CPU/wall shows how many cores were busy. "live"
feeds the loop a dataset that runs the VAE and text encoder on every sample (what training without
the cache costs); "cache" reads the precomputed latents and embeddings.

    python benchmarks/distill_step.py [--width 32] [--resolution 256] [--batch 2] [--steps 6] [--device cpu]
    python benchmarks/distill_step.py --width 320 --resolution 512 --batch 1 --device cuda   # SD1.5 size, on a GPU
    python benchmarks/distill_step.py --teacher demo --resolution 64 --batch 4 --steps 20 --modes cache --profile 15

The phase split is each steady-state step's process CPU seconds (steps after the first 2) in data, teacher forward,
student forward, backward, optimizer (clipping and the step) and other (loss log, progress), from marks the
benchmark patches into the loop (benchmarks/step_phases.py), beside the same `teacher_pass` timed alone (on a fixed
batch, twice after every step from the progress callback, the second one timed: interleaved with the steps, left
out of the step and whole-call times) and the teacher forward of steps in distill-sd's order (student forward
first; written here, run after training).

`--profile N` runs the training call under torch.profiler (CPU activities) and prints its N top
operators by self CPU time, to see where a step's time goes besides the models' own math (a profiled
run's times include the profiler's own cost: time without it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import contextlib, json, statistics, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
sys.path.insert(0, "benchmarks")
from step_phases import PHASES, StepPhases
torch.set_num_threads(int(sys.argv[8]))
top = int(sys.argv[10])
from sdkd_ext.bench import PeakMemory, _rss
from sdkd_ext.cache import Cache
from sdkd_ext.checkpoint import open_model, resolve
from sdkd_ext.data import FolderData, load_image, scan_folder
from sdkd_ext.detect import describe
from sdkd_ext.distill import Encoder, KDObjective, LossWeights, frozen_dtype, place, prepare_data, student_model, teacher_model
from sdkd_ext.pipeline import build_text_encoder, build_vae, tokenizer
from sdkd_ext.plan import Settings, estimate
from sdkd_ext.train import Run, TrainConfig, make_accelerator, run_training
from sdkd_ext.variants import hook_pairs, get_variant

teacher, images, variant, mode, res, batch, steps, _, device = sys.argv[1:10]
res, batch, steps = int(res), int(batch), int(steps)
acc = make_accelerator(device)
dev = acc.device
base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _rss()
src = open_model(resolve(teacher)); info = describe(src)
t_unet = teacher_model(src, info, dev)
half = frozen_dtype(dev)
if mode in ("prepare", "cache"):  # "prepare" fills the cache first, so the "cache" run never loads the VAE/TE
    data, _, _ = prepare_data(FolderData(Path(images)), t_unet, [],
                              Encoder(src, Cache(Path(images).parent / "cache"), res, 0, dev, print, None, lambda: {}))
    if mode == "prepare":
        sys.exit(0)

class Live:
    # encodes every sample on the fly: the cost of training without the latent/text cache
    def __init__(self):
        self.examples = scan_folder(images).examples
        self.vae = place(build_vae(src), dev, half)
        self.te = place(build_text_encoder(src), dev, half)
        self.tok = tokenizer()
    def __len__(self):
        return len(self.examples)
    @torch.no_grad()
    def get(self, i, seed):
        ex = self.examples[i]
        x = load_image(ex.path, res, res // 2)[None].to(dev, half)
        d = self.vae.encode(x).latent_dist
        z = d.mean + d.std * torch.randn(d.mean.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(dev, half)
        ids = self.tok([ex.caption], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(dev)
        return {"latents": (z[0] * 0.18215).float(), "text": self.te(ids)[0][0].float()}

if mode == "live":
    data = Live()
student, _ = student_model(src, info, get_variant(variant))
objective = KDObjective(t_unet, hook_pairs(get_variant(variant), info.topology), LossWeights())
cfg = TrainConfig(steps=steps, batch=batch, lr=1e-5, device=device, checkpoint_every=10**9,
                  precision="auto", grad_checkpointing=False, optimizer="adamw")
run_dir = Path(images).parent / f"run-{variant}-{mode}"
batch_ = {k: torch.stack([data.get(i, i)[k] for i in range(batch)]).to(dev) for k in ("latents", "text")}
batch_["seed"] = torch.arange(batch)
noisy, t, noise = objective.inputs(batch_)
phases, alone, aside = StepPhases(), [], [0.0, 0.0]
lone = KDObjective.teacher_pass  # unmarked: the phase patches below must not count the lone passes as the step's

def beside(event):
    # after every step, the same teacher_pass on a fixed batch, twice, the second (warm) one timed: interleaved with the
    # steps, so the machine's load drifts alike for both; marked apart, so no step phase counts it
    phases.mark("alone")
    w0, c0 = time.perf_counter(), time.process_time()
    lone(objective, noisy, t, batch_["text"])
    c = time.process_time()
    lone(objective, noisy, t, batch_["text"])
    alone.append(time.process_time() - c)
    aside[0] += time.perf_counter() - w0
    aside[1] += time.process_time() - c0
    phases.mark("other")

profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if top else contextlib.nullcontext()
wall, cpu = time.perf_counter(), time.process_time()
with PeakMemory(dev) as memory, profiler, phases.patched():  # the training steps only: loading and setup peaks are behind us
    run_training(objective, student, data, cfg, Run(run_dir, {}, overwrite=True, accelerator=acc),
                 progress=beside if not top else None)
wall, cpu = time.perf_counter() - wall - aside[0], time.process_time() - cpu - aside[1]  # without the alone passes
steady = phases.steps()[2:]  # the first steps warm up
split = {k: statistics.median(s[k] for s in steady) for k in PHASES}
alone = statistics.median(alone[2:]) if alone else float("nan")

# a Segmind-style step (distill-sd's order): student forward, then the teacher under no_grad, plain hooks into dicts
feats = {"t": {}, "s": {}}
def keep(side, name):
    def hook(module, args, output):
        feats[side][name] = output[0] if isinstance(output, (tuple, list)) else output
    return hook
for tn, sn in objective.pairs:
    t_unet.get_submodule(tn).register_forward_hook(keep("t", tn))
    student.get_submodule(sn).register_forward_hook(keep("s", sn))
opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5, fused=dev.type in ("cpu", "cuda"))
seg = []
for i in range(max(steps, 5) + 2):
    c = [time.process_time()]
    s_eps = student(noisy, t, encoder_hidden_states=batch_["text"]).sample
    c.append(time.process_time())
    with torch.no_grad():
        t_eps = t_unet(noisy.to(half), t, encoder_hidden_states=batch_["text"].to(half)).sample
    c.append(time.process_time())
    loss = F.mse_loss(s_eps.float(), noise) + F.mse_loss(s_eps.float(), t_eps.float()) + sum(
        F.mse_loss(feats["s"][sn].float(), feats["t"][tn].float()) for tn, sn in objective.pairs)
    loss.backward()
    c.append(time.process_time())
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    c.append(time.process_time())
    seg.append([b - a for a, b in zip(c, c[1:])])
segmind = {k: statistics.median(x[j] for x in seg[2:]) for j, k in enumerate(("student forward", "teacher forward", "backward", "optimizer"))}
if top:
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))
rows = (run_dir / "loss.csv").read_text().splitlines()[1:]
times = [float(r.split(",")[-1]) for r in rows][2:]  # the first steps warm up
precision = "fp32" if dev.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
est = estimate(get_variant(variant), res, Settings(batch=batch, precision=precision, device=dev.type if dev.type == "cuda" else "cpu"),
               info.topology)
print(json.dumps({"phases": split, "teacher_alone": alone, "segmind": segmind,
                  "step_s": statistics.median(times), "samples_s": batch / statistics.median(times),
                  "wall_step_s": wall / steps, "cpu_step_s": cpu / steps,
                  "peak_gib": (memory.peak - base) / 2**30, "estimate_gib": est.training / 2**30}))
"""


def make_inputs(folder: Path, width: int, n: int, res: int, teacher: str | None = None) -> Path | str:
    """`n` captioned images and a random SD1.5-topology teacher of `width` (or the given one); returns the teacher."""
    import numpy as np
    from PIL import Image

    from sdkd_ext.tiny import save, tiny_checkpoint

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a random picture number {i}")
    return teacher or save(tiny_checkpoint(width=width, seed=0), folder / "teacher.safetensors")


def measure(teacher: Path | str, images: Path, variant: str, mode: str, resolution: int, batch: int, steps: int,
            threads: int, device: str, profile: int = 0) -> dict:
    """One training run in a fresh process ("prepare" only fills the cache): its timings and peak memory; with
    `profile`, its top operators are printed first."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(teacher), str(images), variant, mode, str(resolution),
                          str(batch), str(steps), str(threads), device, str(profile)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    if profile and mode != "prepare":
        print(f"-- {variant} {mode}: top {profile} operators by self CPU time\n" + "\n".join(out.stdout.strip().splitlines()[:-1]))
    return {} if mode == "prepare" else json.loads(out.stdout.strip().splitlines()[-1])


def sd15_table() -> None:
    """The planner's estimates at SD1.5 size (CUDA, fp16 autocast, teacher fp16)."""
    from sdkd_ext.plan import GIB, Settings, choose, estimate, kd_estimator
    from sdkd_ext.variants import get_variant

    print("\nplanner, SD1.5 teacher, 512 px, CUDA fp16 (GiB; + 0.75 reserved for the CUDA context):")
    print(f"{'variant':<8}{'batch':>6}{'plain':>8}{'ckpt':>8}{'ckpt+8bit':>11}   fits 8 GiB with        / 12 GiB with")
    for variant in ("base", "small", "tiny"):
        for batch in (1, 4):
            plain = estimate(get_variant(variant), 512, Settings(batch=batch)).peak / GIB
            ckpt = estimate(get_variant(variant), 512, Settings(batch=batch, grad_checkpointing=True)).peak / GIB
            lean = estimate(get_variant(variant), 512, Settings(batch=batch, grad_checkpointing=True, optimizer="adamw8bit")).peak / GIB
            fits = []
            for vram in (8, 12):
                kd = kd_estimator(get_variant(variant), 512)
                best = choose(kd, batch, vram) or choose(kd, batch, vram, optimizer="adamw8bit")
                fits.append(compact(best.settings) if best else "no")
            print(f"{variant:<8}{batch:>6}{plain:>8.2f}{ckpt:>8.2f}{lean:>11.2f}   {fits[0]:<22} / {fits[1]}")


def compact(s) -> str:
    """Settings in a few characters: micro-batch x accumulation, checkpointing, optimizer."""
    return f"{s.batch}x{s.accum}" + (" ckpt" if s.grad_checkpointing else "") + f" {s.optimizer}"


def main() -> None:
    """Measure each variant with and without the cache, print each run's phase split, then the SD1.5 planner table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_phases import PHASES
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32, help="teacher base width (320 = SD1.5)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--device", default="cpu", choices=["cpu", "auto"], help="auto: the GPU if there is one")
    p.add_argument("--dir", help="work folder (default: a temporary one)")
    p.add_argument("--teacher", help="a teacher file, or 'demo' (default: a random one of --width)")
    p.add_argument("--variants", default="base,small,tiny", help="comma-separated variants to measure")
    p.add_argument("--modes", default="cache,live", help="comma-separated data modes: cache, live")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print each run's N top operators (torch.profiler)")
    p.add_argument("--no-sd15", action="store_true", help="skip the planner's SD1.5 table")
    a = p.parse_args()
    folder = Path(a.dir or tempfile.mkdtemp(prefix="sdkd-distill-bench-"))
    teacher = make_inputs(folder, a.width, max(8, 2 * a.batch), a.resolution, a.teacher)
    print(f"teacher {a.teacher or f'width {a.width}'}, {a.resolution} px, batch {a.batch}, {a.steps} steps, device {a.device}, "
          f"{a.threads} threads (step s: median after 2 warm-up steps; wall and CPU s per step over the whole "
          "training call; peak: during the training steps, allocated on CUDA, RSS growth on CPU, which the planner's allocation "
          "count does not model: benchmarks/plan_memory.py compares the planner with the CPU allocator's own accounting)")
    print(f"{'variant':<8}{'data':<7}{'step s':>8}{'wall s':>8}{'CPU s':>8}{'CPU/wall':>9}{'samples/s':>11}"
          f"{'peak GiB':>10}{'planner GiB':>13}")
    phase_rows = []
    for variant in a.variants.split(","):
        for mode in ("prepare", *a.modes.split(",")):
            r = measure(teacher, folder / "images", variant, mode, a.resolution, a.batch, a.steps, a.threads, a.device,
                        a.profile)
            if mode == "prepare":
                continue
            print(f"{variant:<8}{mode:<7}{r['step_s']:>8.3f}{r['wall_step_s']:>8.3f}{r['cpu_step_s']:>8.3f}"
                  f"{r['cpu_step_s'] / r['wall_step_s']:>9.2f}{r['samples_s']:>11.2f}{r['peak_gib']:>10.3f}"
                  f"{r['estimate_gib']:>13.3f}")
            phase_rows.append((variant, mode, r))
    print("\nphase split, process CPU s per step (median of the steady-state steps, after 2 warm-up steps); 'teacher alone': "
          "the same teacher_pass on a fixed batch, run twice after every step and the second timed (interleaved, so load drift "
          "hits both alike); 'segmind-style': distill-sd's order (student forward, then the teacher under no_grad), timed "
          "after training in the same process")
    print(f"{'variant':<8}{'data':<7}" + "".join(f"{k:>17}" for k in PHASES[:5]) + f"{'other':>8}" + f"{'teacher alone':>15}{'t. / alone':>11}"
          f"{'segmind-style teacher':>23}")
    for variant, mode, r in phase_rows:
        ph = r["phases"]
        print(f"{variant:<8}{mode:<7}" + "".join(f"{ph[k]:>17.4f}" for k in PHASES[:5]) + f"{ph['other']:>8.4f}"
              f"{r['teacher_alone']:>15.4f}"
              f"{ph['teacher forward'] / r['teacher_alone']:>11.3f}{r['segmind']['teacher forward']:>23.4f}")
    if not a.no_sd15:
        sd15_table()


if __name__ == "__main__":
    main()
