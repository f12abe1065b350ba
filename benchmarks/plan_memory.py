"""Measured peak memory of a KD training step beside the memory planner's estimate, per variant and setting.

Each (variant, setting) runs in a fresh process: a teacher in sdkd's frozen precision (fp16 on CUDA, fp32 on
CPU) and its pruned student (fp32 master weights) are built at the asked width (320 = SD1.5), then the real
training loop (`train.run_training` with `distill.KDObjective`: teacher frozen forward, student forward with
feature KD, backward, gradient clipping, optimizer step) runs `--steps` steps under bf16 autocast. The peak is
the allocator's own accounting over the whole run, models included, beside `plan.estimate`'s training peak:

- CPU (default): torch.profiler's memory events (every allocation and free of torch's CPU allocator), summed in
  order. Two stand-ins keep SD1.5 within a few GB and minutes (`--real` drops both, for small widths): the
  optimizer allocates exactly the state the real one keeps (AdamW: two fp32 moments per parameter; bitsandbytes'
  AdamW8bit: two uint8 moments and an fp32 scale per 256 values for tensors of 4096+ values, fp32 moments below)
  and changes nothing (both update in place, allocating nothing per step); convolutions, matmuls and attention
  allocate their outputs (shapes and dtypes from their meta kernels) without computing them (bf16 arithmetic
  runs at about 1 GFLOPS on a CPU without bf16 units). tests/test_plan.py checks on a small model that both
  stand-ins give the real peak. Large tensors come from fresh zero pages, so untouched weights cost no RSS.
- CUDA (`--device cuda`): torch.cuda.max_memory_allocated over the run, everything real (fused AdamW;
  bitsandbytes' AdamW8bit when installed, else the state stand-in). Also printed: the allocator's reserved peak
  and the device memory in use at the end (mem_get_info: the CUDA context and allocator cache on top), what the
  planner keeps as CUDA_RESERVE. The SD1.5 table (3 variants x 4 settings, 1 step each, a fresh process per row)
  takes about 3-5 minutes on one H100.

    python benchmarks/plan_memory.py                                  # SD1.5, 512 px, CPU
    python benchmarks/plan_memory.py --device cuda --steps 3          # the same table on a GPU
    python benchmarks/plan_memory.py --width 32 --resolution 256 --variants tiny --settings plain --real
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_phases.py beside this file, also when a test imports it
from step_phases import PHASES, StepPhases  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (gradient checkpointing, optimizer)
    "plain": (False, "adamw"),
    "ckpt": (True, "adamw"),
    "8bit": (False, "adamw8bit"),
    "ckpt+8bit": (True, "adamw8bit"),
}
MMAP_THRESHOLD = 1 << 20  # CPU: allocations from 1 MiB on are fresh zero pages, and go back to the system when freed
BNB_MIN_8BIT = 4096  # bitsandbytes keeps 32-bit state for smaller tensors
BNB_BLOCK = 256  # values per fp32 scale (absmax) of its blockwise 8-bit state


class StateOnlyOptimizer(torch.optim.Optimizer):
    """Holds the state AdamW (fp32 moments) or bitsandbytes' AdamW8bit keeps, and changes nothing: a measuring
    stand-in with the real one's allocations (both update in place, allocating nothing per step)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, eight_bit: bool):
        super().__init__(params, {"lr": lr})
        for p in (p for g in self.param_groups for p in g["params"]):
            if eight_bit and p.numel() >= BNB_MIN_8BIT:
                blocks = -(-p.numel() // BNB_BLOCK)
                self.state[p] = {"state1": torch.empty_like(p, dtype=torch.uint8), "state2": torch.empty_like(p, dtype=torch.uint8),
                                 "absmax1": p.new_empty(blocks), "absmax2": p.new_empty(blocks)}
            else:
                self.state[p] = {"exp_avg": torch.empty_like(p), "exp_avg_sq": torch.empty_like(p)}

    def step(self, closure=None):
        return None


class OutputsOnly(TorchDispatchMode):
    """Convolutions, matmuls and attention (forward and backward) allocate their outputs as zeros, shapes and dtypes
    from their meta kernels, without computing them: every allocation but those kernels' own scratch, at a tiny
    fraction of the time (bf16 arithmetic on a CPU without bf16 units runs at about 1 GFLOPS)."""

    HEAVY = {torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default, torch.ops.aten.mm.default,
             torch.ops.aten.addmm.default, torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.HEAVY:
            return func(*args, **kwargs)
        to_meta = lambda t: t.to("meta")  # noqa: E731
        out = func(*tree_map_only(torch.Tensor, to_meta, args), **tree_map_only(torch.Tensor, to_meta, kwargs))
        return tree_map_only(torch.Tensor, lambda m: torch.empty_strided(m.shape, m.stride(), dtype=m.dtype).zero_(), out)


class Latents:
    """`n` fixed (latents, text) samples kept on the CPU, as the cache holds them (the loop moves each batch)."""

    def __init__(self, n: int, latent: int, context: int):
        g = torch.Generator().manual_seed(0)
        self.items = [{"latents": torch.randn(4, latent, latent, generator=g), "text": torch.randn(77, context, generator=g)}
                      for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def empty_unet(topology, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A UNet of `topology` with all-zero weights, built without initialising them (fast at SD1.5 size; on the CPU
    the large tensors stay zero pages until written)."""
    from diffusers import UNet2DConditionModel

    from sdkd_ext.configs import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(topology))
    unet = unet.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in unet.parameters():
            if device.type != "cpu" or p.numel() * p.element_size() < MMAP_THRESHOLD:
                p.zero_()
    return unet


class CpuAllocations:
    """torch.profiler's memory events on the CPU over a block: the allocator's peak of live bytes since entry, overall
    and per phase of the steps (`phases`' marks; "setup" before the first)."""

    def __init__(self, phases: StepPhases):
        self.phases = phases

    def __enter__(self) -> "CpuAllocations":
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self.prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.prof.__exit__(*exc)
        events = sorted((e.start_ns(), e.nbytes()) for e in self.prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        marks = [(0, "setup"), *((m[0], m[3]) for m in self.phases.marks)]
        live = self.peak = 0
        self.by_phase = dict.fromkeys(("setup", *PHASES, "end"), 0)
        i = 0
        for t, n in events:
            while i + 1 < len(marks) and marks[i + 1][0] <= t:
                i += 1
            live += n
            self.peak = max(self.peak, live)
            self.by_phase[marks[i][1]] = max(self.by_phase[marks[i][1]], live)


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    variant: str
    setting: str  # a SETTINGS key
    resolution: int = 512
    width: int = 320  # teacher base width (320: SD1.5, with its 768-wide text context)
    batch: int = 1
    device: str = "cpu"
    steps: int = 1
    real: bool = False  # CPU: the real optimizer and kernels, not the stand-ins

    def settings(self):
        """The planner's settings for this case."""
        from sdkd_ext.plan import Settings

        ckpt, opt = SETTINGS[self.setting]
        return Settings(batch=self.batch, grad_checkpointing=ckpt, optimizer=opt, precision="bf16", device=self.device)

    def args(self) -> list[str]:
        return ["--variants", self.variant, "--settings", self.setting, "--resolution", str(self.resolution),
                "--width", str(self.width), "--batch", str(self.batch), "--device", self.device, "--steps", str(self.steps),
                *(["--real"] if self.real else [])]


def run(case: Case) -> dict:
    """Build the teacher (sdkd's frozen precision: fp16 on CUDA, fp32 on CPU) and the student under the allocator's
    accounting and train `case.steps` KD steps: the peak, the planner's estimate and this process's peak RSS."""
    import resource
    from unittest import mock

    from sdkd_ext import train
    from sdkd_ext.distill import KDObjective, LossWeights, frozen_dtype
    from sdkd_ext.plan import estimate
    from sdkd_ext.tiny import unet_topology
    from sdkd_ext.variants import get_variant, hook_pairs

    dev, settings, real = torch.device(case.device), case.settings(), case.real or case.device == "cuda"
    teacher_topo = unet_topology(case.width, 768 if case.width == 320 else case.width)
    v = get_variant(case.variant)
    data = Latents(2 * case.batch, case.resolution // 8, teacher_topo.context_dim)
    cfg = train.TrainConfig(steps=case.steps, batch=case.batch, lr=1e-5, precision="bf16", optimizer="adamw",
                            grad_checkpointing=settings.grad_checkpointing, checkpoint_every=10**9,
                            device="cpu" if dev.type == "cpu" else "auto")
    make_optimizer = train.make_optimizer  # the real one, before it is patched below

    def optimizer(params, cfg_, device_):
        if real and settings.optimizer == "adamw":
            return make_optimizer(params, cfg_, device_)
        if dev.type == "cuda" and train.bitsandbytes() is not None:
            return make_optimizer(params, train.TrainConfig(lr=cfg_.lr, optimizer="adamw8bit"), device_)
        return StateOnlyOptimizer(params, cfg_.lr, settings.optimizer == "adamw8bit")

    phases = StepPhases()
    counter = CpuAllocations(phases) if dev.type == "cpu" else contextlib.nullcontext()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    wall, cpu = time.perf_counter(), time.process_time()
    with counter:
        teacher = empty_unet(teacher_topo, dev, frozen_dtype(dev)).eval().requires_grad_(False)
        student = empty_unet(v.student(teacher_topo), dev, torch.float32)
        objective = KDObjective(teacher, hook_pairs(v, teacher_topo), LossWeights())
        with mock.patch.object(train, "make_optimizer", optimizer), mock.patch.object(train, "save_state", lambda *a: None), \
                phases.patched(), tempfile.TemporaryDirectory() as d, contextlib.nullcontext() if real else OutputsOnly():
            train.run_training(objective, student, data, cfg, train.Run(Path(d), {}, overwrite=True))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if dev.type == "cpu":
        out = {"peak": counter.peak, "by_phase": counter.by_phase}
    else:
        torch.cuda.synchronize(dev)
        free, total = torch.cuda.mem_get_info(dev)
        out = {"peak": torch.cuda.max_memory_allocated(dev), "reserved": torch.cuda.max_memory_reserved(dev),
               "in_use": total - free}
    est = estimate(v, case.resolution, settings, teacher_topo)
    return {**out, "estimate": est.training, "parts": est.parts, "wall_s": wall, "cpu_s": cpu,
            "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child(case: Case, threads: int = 1) -> dict:
    """`run` in a fresh process (its own allocator, threads and malloc settings)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--threads", str(threads), *case.args()],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure each asked (variant, setting) in its own process and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="base,small,tiny")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--width", type=int, default=320, help="teacher base width (320 = SD1.5, context 768)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=1, help="training steps per run (the optimizer state exists from the first)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--real", action="store_true", help="CPU: the real fused AdamW and kernels, not the stand-ins")
    p.add_argument("--json", help="also write every row (with the per-phase peaks and the planner's parts) to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    cases = [Case(v, s, a.resolution, a.width, a.batch, a.device, a.steps, a.real)
             for v in a.variants.split(",") for s in a.settings.split(",")]
    if a.child:
        torch.set_num_threads(a.threads)
        print(json.dumps(run(cases[0])))
        return
    print(f"KD step peak, teacher width {a.width}, {a.resolution} px, batch {a.batch}, bf16 autocast, {a.steps} step(s), "
          f"{a.device}, {a.threads} thread(s); GiB")
    head = f"{'variant':<8}{'setting':<11}{'estimate':>9}{'measured':>9}{'est/meas':>9}{'RSS peak':>9}{'CPU s':>8}{'wall s':>8}"
    print(head + ("   reserved  in use" if a.device == "cuda" else "  peak in (per-phase peaks: teacher/student/backward/optimizer)"))
    rows = []
    for case in cases:
        r = child(case, a.threads)
        rows.append({"variant": case.variant, "setting": case.setting, **r})
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        g = 2**30
        line = (f"{case.variant:<8}{case.setting:<11}{r['estimate'] / g:>9.3f}{r['peak'] / g:>9.3f}"
                f"{r['estimate'] / r['peak']:>9.3f}{r['rss_peak'] / g:>9.2f}{r['cpu_s']:>8.1f}{r['wall_s']:>8.1f}")
        if a.device == "cuda":
            line += f"{r['reserved'] / g:>11.3f}{r['in_use'] / g:>8.3f}"
        else:
            ph = r["by_phase"]
            line += f"  {max(ph, key=ph.get):<16}" + "/".join(f"{ph[k] / g:.2f}" for k in PHASES[1:5])
        print(line, flush=True)


if __name__ == "__main__":
    main()
