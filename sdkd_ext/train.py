"""The generic training loop: any objective, any trainable module, any cached dataset.

It owns what every sdkd training job shares: accelerate device placement and multi-process
runs, mixed precision over fp32 master weights, gradient accumulation and checkpointing,
(fused / 8-bit) AdamW, optional EMA, progress events, atomic resumable checkpoints, graceful
cancellation, non-finite-loss and full-disk stops, a loss CSV with its plot, and preview grids.
What is learnt is the objective's business: it maps (model, batch) to named loss terms.

Randomness is a pure function of (seed, step, position in the global batch), so a resumed run
reproduces an uninterrupted one exactly, and N processes reproduce one with the same global batch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from .compat import grad_scaler
from .data import derive_seed, seeded_randn
from .errors import SdkdError
from .export import atomic_outputs
from .progress import Cancelled, Meter, ProgressFn, report

STATE_FILE = "state.torch"  # not .pt/.ckpt/.bin: UIs that list model files must not offer it
RUN_FILE = "run.json"
LOSS_CSV, LOSS_PNG, PREVIEWS = "loss.csv", "loss.png", "previews"
RUN_CACHE = "cache"  # the latent/text cache's default place in the run folder
ADAMW8BIT_NEEDS = "--optimizer adamw8bit needs a CUDA GPU and bitsandbytes (pip install bitsandbytes); or use --optimizer adamw"


@dataclass
class TrainConfig:
    """Settings of one training run (per-process micro-batch; global batch = batch * accum * processes)."""

    steps: int = 1000
    batch: int = 1
    accum: int = 1
    lr: float = 5e-5
    warmup: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # 0: no clipping
    precision: str = "auto"  # auto (bf16 where supported, else fp16 on CUDA; fp32 on CPU) | fp32 | bf16 | fp16
    grad_checkpointing: bool = False
    optimizer: str = "auto"  # auto (8-bit AdamW with bitsandbytes on CUDA, else AdamW) | adamw | adamw8bit
    ema: bool = False
    ema_decay: float = 0.9999
    checkpoint_every: int = 500
    preview_every: int = 0  # 0: a preview at the end only (when a preview function is given)
    seed: int = 0
    device: str = "auto"  # auto (accelerate decides) | cpu
    keep_state: bool = False  # keep the resumable state (and the run folder's latent cache) after a finished run

    def check(self) -> None:
        """Refuse settings that cannot work, naming the option."""
        for name in ("steps", "batch", "accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SdkdError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise SdkdError(f"--lr must be positive (got {self.lr})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise SdkdError(f"--precision {self.precision!r}: choose auto, fp32, bf16 or fp16")
        if self.optimizer not in ("auto", "adamw", "adamw8bit"):
            raise SdkdError(f"--optimizer {self.optimizer!r}: choose auto, adamw or adamw8bit")
        if self.device not in ("auto", "cpu"):
            raise SdkdError(f"--device {self.device!r}: choose auto or cpu (pick GPUs with CUDA_VISIBLE_DEVICES)")

    def check_device(self, device: torch.device) -> None:
        """Refuse what `device` cannot run (fp16, 8-bit AdamW off CUDA), before a job's slow part; the loop would
        refuse it only when training starts."""
        autocast_dtype(self.precision, device)
        if self.optimizer == "adamw8bit" and (device.type != "cuda" or bitsandbytes() is None):
            raise SdkdError(ADAMW8BIT_NEEDS)


class Objective(Protocol):
    """What to learn: named fp32 loss terms for one batch, and the weight of each in the total."""

    weights: dict[str, float]

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class Dataset(Protocol):
    """Indexable training samples whose randomness (flip, posterior sample) comes from a given seed."""

    def __len__(self) -> int: ...
    def get(self, index: int, seed: int) -> dict[str, torch.Tensor]: ...


@dataclass
class TrainResult:
    """How a run ended."""

    steps: int  # optimizer steps completed
    total: int
    cancelled: bool
    losses: dict[str, float]
    run_dir: Path
    seconds: float
    exported: object = None  # whatever on_export returned
    kept: dict[str, int] = field(default_factory=dict)  # resumable state left in run_dir: name -> bytes
    preview_note: str = ""  # why the end-of-run preview is missing, when it is


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP/DataParallel/torch.compile wrappers: block names are only valid on it."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def make_accelerator(device: str = "auto"):
    """An `accelerate.Accelerator` that only places and synchronises: precision is handled by this loop."""
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu", mixed_precision="no")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name on a device (None: full fp32)."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise SdkdError("--precision fp16 needs a CUDA GPU; on this device use --precision bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW: 8-bit (bitsandbytes) where asked or available on CUDA, else torch's fused kernel (CUDA; CPU from torch
    2.4, about 4x faster there than the per-tensor loop) or, where torch has no fused one, the foreach kernel."""
    if cfg.optimizer in ("auto", "adamw8bit"):
        bnb = bitsandbytes()
        if bnb is not None and device.type == "cuda":
            return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw8bit":
            raise SdkdError(ADAMW8BIT_NEEDS)
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a torch without a fused kernel for this device says so when built
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def bitsandbytes():
    """The bitsandbytes module, or None when it is not installed (or fails to load)."""
    try:
        import bitsandbytes as bnb
    except Exception:  # a broken install raises more than ImportError
        return None
    return bnb


class EMA:
    """An exponential moving average of the trainable parameters (warmed up: decay (1+n)/(10+n) early on)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter], step: int) -> None:
        """Move the average towards the current parameters."""
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, params):
            s.lerp_(p.detach(), weight)

    @contextlib.contextmanager
    def applied(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        """Within the block the parameters hold the averaged weights; the trained ones come back after."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow):
                p.copy_(s)
            try:
                yield
            finally:
                for p, s in zip(params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        for s, t in zip(self.shadow, state["shadow"]):
            s.copy_(t)


# ---- the denoising task, shared by distillation and LoRA -------------------------------------------

def noise_scheduler():
    """SD1.5's training noise schedule (DDPM, scaled-linear betas, 1000 steps)."""
    from diffusers import DDPMScheduler

    from .configs import sd15

    return DDPMScheduler.from_config(sd15("scheduler"))


def diffusion_inputs(latents: torch.Tensor, seeds: list[int], scheduler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, noise) for a batch, each sample's noise and timestep drawn from its own seed."""
    noise = seeded_randn([derive_seed(s, "noise") for s in seeds], tuple(latents.shape[1:]), latents.device)
    n = scheduler.config.num_train_timesteps
    t = torch.tensor([derive_seed(s, "timestep") % n for s in seeds], device=latents.device, dtype=torch.long)
    return scheduler.add_noise(latents, noise, t), t, noise


# ---- which samples each process sees ------------------------------------------------------------------

@lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch."""
    return torch.randperm(n, generator=torch.Generator("cpu").manual_seed(derive_seed(seed, "epoch", epoch))).tolist()


def micro_batch(n: int, cfg: TrainConfig, step: int, micro: int, world: int, rank: int) -> list[tuple[int, int]]:
    """(sample index, sample seed) of this process's part of micro-step `micro` of optimizer step `step` (1-based).

    Positions in the global batch are laid out micro-step by micro-step, rank by rank, so a run
    with N processes sees exactly the samples and seeds one process with N times the batch sees."""
    global_batch = cfg.batch * cfg.accum * world
    out = []
    for i in range(cfg.batch):
        pos = micro * cfg.batch * world + rank * cfg.batch + i
        epoch, offset = divmod((step - 1) * global_batch + pos, n)
        out.append((_epoch_order(n, cfg.seed, epoch)[offset], derive_seed(cfg.seed, "sample", step, pos)))
    return out


def collate(data: Dataset, picks: list[tuple[int, int]], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack the picked samples into a batch on `device`, with each sample's seed under 'seed'."""
    samples = [data.get(i, s) for i, s in picks]
    batch = {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}
    batch["seed"] = torch.tensor([s for _, s in picks], dtype=torch.long)
    return batch


# ---- run folder: fingerprint, state, loss log --------------------------------------------------------

def check_run(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse early: resuming where there is no checkpoint, or starting over one without overwriting."""
    exists = (run_dir / STATE_FILE).is_file()
    if resume and not exists:
        raise SdkdError(f"nothing to resume: no checkpoint in {run_dir} (a finished run keeps none unless --keep-state); "
                        "run again without --resume")
    if exists and not (resume or overwrite):
        raise SdkdError(f"a training run already exists in {run_dir}; use --resume to continue it or --overwrite to start over")


def open_run(run_dir: Path, fingerprint: dict[str, str], resume: bool, overwrite: bool) -> dict | None:
    """Check the run folder against this job: the saved state to resume from, or None for a fresh start.

    Refuses to resume a run whose fingerprint (e.g. variant, teacher, data) differs, and refuses to
    start over an existing run unless overwriting was asked for."""
    check_run(run_dir, resume, overwrite)
    state_path = run_dir / STATE_FILE
    if resume:
        state = torch.load(str(state_path), map_location="cpu", weights_only=True)
        old = state["fingerprint"]
        for key in sorted(set(old) | set(fingerprint)):
            if old.get(key) != fingerprint.get(key):
                raise SdkdError(f"cannot resume {run_dir}: the {key} changed since its checkpoint ({old.get(key)} -> "
                                f"{fingerprint.get(key)}); resume with the original {key}, or start a new run with another "
                                "--out (or --overwrite to discard this one)")
        return state
    for name in (STATE_FILE, LOSS_CSV, LOSS_PNG, RUN_FILE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PREVIEWS, ignore_errors=True)
    return None


def _tensor_bytes(obj: object) -> int:
    """Bytes of every tensor inside nested dicts/lists (the size a checkpoint will take)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_state(path: Path, payload: dict) -> None:
    """Write a training checkpoint atomically; with too little disk, say so and leave the previous one intact."""
    need = _tensor_bytes(payload)
    free = shutil.disk_usage(path.parent).free
    if free < need * 1.05:
        raise SdkdError(f"out of disk space: a training checkpoint needs {need / 2**30:.2f} GiB in {path.parent}, "
                        f"{free / 2**30:.2f} GiB are free; the previous checkpoint is intact. Free some space and --resume")
    try:
        with atomic_outputs(overwrite=True) as outs, open(outs.temp(path), "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        raise SdkdError(f"could not write the training checkpoint in {path.parent} ({getattr(e, 'strerror', None) or e}); "
                        "the previous checkpoint is intact. Free some disk space and --resume") from e


class LossLog:
    """The per-step loss terms as CSV (kept in step with the checkpoint on resume) and a PNG plot of it."""

    def __init__(self, run_dir: Path, terms: list[str], resume_step: int):
        self.path, self.png, self.terms = run_dir / LOSS_CSV, run_dir / LOSS_PNG, terms
        self.columns = ["step", "loss", *terms, "lr", "seconds"]
        kept = [r for r in self.rows() if int(r["step"]) <= resume_step] if resume_step else []
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(kept)

    def rows(self) -> list[dict[str, str]]:
        """The log so far."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def add(self, row: dict[str, float]) -> None:
        """Append one step."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({k: f"{row[k]:.6g}" if k != "step" else int(row[k]) for k in self.columns})

    def plot(self) -> None:
        """Redraw loss.png from the CSV."""
        rows = self.rows()
        series = {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k)] for k in ["loss", *self.terms]}
        plot_series(series, self.png, "loss by step (log scale)")


_COLOURS = ((20, 20, 20), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def plot_series(series: dict[str, list[tuple[int, float]]], path: Path, title: str, size: tuple[int, int] = (720, 400)) -> None:
    """A line chart (log-scale y) drawn with Pillow, written atomically to `path`."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 150, 30, 40
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    d.text((left, 8), title, fill="black")
    pts = [(x, y) for s in series.values() for x, y in s if y > 0 and math.isfinite(y)]
    d.rectangle((left, top, w - right, h - bottom), outline="black")
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = math.log10(min(p[1] for p in pts)), math.log10(max(p[1] for p in pts))
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def xy(x: float, y: float) -> tuple[float, float]:
            return (left + (x - x0) / (x1 - x0) * (w - left - right),
                    h - bottom - (math.log10(y) - y0) / (y1 - y0) * (h - top - bottom))

        for i, (name, s) in enumerate(series.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            line = [xy(x, y) for x, y in s if y > 0 and math.isfinite(y)]
            if len(line) > 1:
                d.line(line, fill=colour, width=2 if i == 0 else 1)
            d.line((w - right + 10, top + 10 + 16 * i, w - right + 30, top + 10 + 16 * i), fill=colour, width=2)
            d.text((w - right + 36, top + 4 + 16 * i), name, fill="black")
        for y in (10 ** y0, 10 ** y1):
            d.text((4, xy(x0, y)[1] - 6), f"{y:.3g}", fill="black")
        for x in (x0, x1):
            d.text((xy(x, 10 ** y0)[0] - 10, h - bottom + 6), str(int(x)), fill="black")
    with atomic_outputs(overwrite=True) as outs:
        im.save(outs.temp(path), format="PNG")


def image_grid(rows: list[list], labels: list[str]) -> object:
    """Images (PIL, all one size) in rows, each row labelled on its left: a preview grid."""
    from PIL import Image, ImageDraw

    cw, ch = rows[0][0].size
    pad = 90
    grid = Image.new("RGB", (pad + cw * max(len(r) for r in rows), ch * len(rows)), "white")
    d = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        d.text((4, r * ch + ch // 2 - 6), label, fill="black")
        for c, img in enumerate(row):
            grid.paste(img, (pad + c * cw, r * ch))
    return grid


def peak_memory(device: torch.device) -> float:
    """Peak memory so far in GiB: allocated CUDA memory on a GPU, the process's peak RSS (working set) otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:  # Windows
        import psutil  # an accelerate dependency

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class NonFinite(Exception):
    """A loss term (or the gradient) came out NaN or infinite."""


# ---- the loop ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Where a training run lives and what it is: its folder (state, loss log, previews), the fingerprint a resume must
    match, what an existing run folder may be used for, the progress stage it reports, and its accelerator (None:
    one made for `cfg.device`)."""

    folder: Path
    fingerprint: dict[str, str]
    resume: bool = False
    overwrite: bool = False
    stage: str = "train"
    accelerator: object = None


def run_training(objective: Objective, model: torch.nn.Module, data: Dataset, cfg: TrainConfig, run: Run,
                 progress: ProgressFn | None = None,
                 on_export: Callable[[torch.nn.Module, TrainResult], object] | None = None,
                 preview: Callable[[torch.nn.Module, int, Path], None] | None = None) -> TrainResult:
    """Train `model`'s trainable parameters on `objective` over `data` for `cfg.steps` optimizer steps.

    `run.folder` holds the resumable state, the loss log and previews. At the end the student is exported first
    ("export" stage), then a finished run drops its state (unless `cfg.keep_state`) and draws its preview, so
    nothing optional delays or endangers the export. A progress callback that raises `Cancelled` stops the run
    after the current step with a checkpoint and an export, and no preview; raised during the final preview, it
    stops only the preview. `on_export` and `preview` receive the unwrapped model, with EMA weights applied when
    EMA is on; a preview that takes a `progress` keyword gets the callback, to report its own stage. Returns how
    it ended."""
    run_dir, fingerprint, resume, overwrite, stage = run.folder, run.fingerprint, run.resume, run.overwrite, run.stage
    cfg.check()
    if len(data) == 0:
        raise SdkdError("no training samples: every input was skipped")
    if not objective.weights:
        raise SdkdError("every loss weight is 0: nothing to train; give at least one term a positive weight")
    acc = run.accelerator or make_accelerator(cfg.device)
    main, world, rank, device = acc.is_main_process, acc.num_processes, acc.process_index, acc.device
    progress = progress if main else None
    run_dir.mkdir(parents=True, exist_ok=True)
    state = open_run(run_dir, fingerprint, resume, overwrite)  # every process checks: none may wait for a failed one
    acc.wait_for_everyone()
    if main:
        with atomic_outputs(overwrite=True) as outs:
            outs.temp(run_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint, "config": asdict(cfg)}, indent=2))

    bare = unwrap(model)
    if cfg.grad_checkpointing:
        bare.enable_gradient_checkpointing()
    bare.to(device)
    named = [(n, p) for n, p in bare.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = make_optimizer(params, cfg, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0)
    amp = autocast_dtype(cfg.precision, device)
    scaler = grad_scaler() if amp == torch.float16 else None
    ema = EMA(params, cfg.ema_decay) if cfg.ema else None
    start = 0
    if state is not None:
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["model"][n])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        start = state["step"]
    wrapped = acc.prepare_model(model)
    terms = list(objective.weights)
    log = LossLog(run_dir, terms, start) if main else None
    last_checkpoint = start

    def save(step: int) -> None:
        """Write the resumable state (main process only)."""
        save_state(run_dir / STATE_FILE, {
            "step": step, "fingerprint": fingerprint, "model": {n: p.detach().cpu() for n, p in named},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "ema": ema.state_dict() if ema else None,
        })
        log.plot()

    def checkpoint(step: int) -> None:
        nonlocal last_checkpoint
        if main:
            save(step)
        last_checkpoint = step
        acc.wait_for_everyone()

    def train_step(step: int) -> dict[str, float]:
        sums = dict.fromkeys(terms, 0.0)
        for micro in range(cfg.accum):
            batch = collate(data, micro_batch(len(data), cfg, step, micro, world, rank), device)
            sync = micro == cfg.accum - 1
            with contextlib.nullcontext() if sync else acc.no_sync(wrapped):
                # no autocast weight cache with checkpointing: the 16-bit weight copies would outlive the forward
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None, cache_enabled=not cfg.grad_checkpointing):
                    parts = objective(wrapped, batch)
                total = sum(objective.weights[k] * parts[k].float() for k in terms) / cfg.accum
                (scaler.scale(total) if scaler else total).backward()
            for k in terms:
                sums[k] = sums[k] + parts[k].detach().float() / cfg.accum
        vec = torch.stack([torch.as_tensor(sums[k], device=device) for k in terms])
        if world > 1:
            vec = acc.reduce(vec, "mean")
        values = dict(zip(terms, vec.tolist()))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise NonFinite(f"the {', '.join(bad)} loss term{'s' if len(bad) > 1 else ''} became non-finite "
                            f"({', '.join(f'{k}={values[k]}' for k in bad)})")
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        if scaler:
            scaler.step(optimizer)  # skips the step itself on inf gradients, as fp16 training expects
            scaler.update()
        elif not math.isfinite(float(norm)):
            raise NonFinite("the gradient became non-finite while every loss term was finite")
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if ema is not None:
            ema.update(params, step)
        values["loss"] = sum(objective.weights[k] * values[k] for k in terms)
        return values

    def draw(step: int) -> None:
        """A preview grid of the weights an export would hold (EMA applied), as its own progress stage."""
        (run_dir / PREVIEWS).mkdir(exist_ok=True)
        with ema.applied(params) if ema is not None else contextlib.nullcontext():
            preview(bare, step, run_dir / PREVIEWS / f"step-{step:06d}.png", **preview_extra)
        wrapped.train()

    preview_extra = {"progress": progress} if preview is not None and takes_progress(preview) else {}
    began, step, cancelled, values = time.perf_counter(), start, False, {}
    wrapped.train()  # here and after each preview, not every step: it walks every submodule
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0, lr = time.perf_counter(), schedule.get_last_lr()[0]  # the rate this step uses
            values = train_step(step)
            rate = (step - start) / (time.perf_counter() - began)
            if main:
                log.add({"step": step, **values, "lr": lr, "seconds": time.perf_counter() - t0})
            try:
                report(progress, stage, step, cfg.steps, f"loss {values['loss']:.4g}", **values, lr=lr, it_s=rate,
                       eta_s=(cfg.steps - step) / rate, peak_mem_gb=peak_memory(device))
            except Cancelled:
                cancelled = True
            # periodic previews only: the end-of-run one comes after the export (a preview costs many sampled steps)
            if preview is not None and not cancelled and step < cfg.steps and cfg.preview_every \
                    and step % cfg.preview_every == 0:
                if main:
                    try:
                        draw(step)
                    except Cancelled:
                        cancelled = True
                acc.wait_for_everyone()
            if world > 1:
                cancelled = bool(acc.reduce(torch.tensor([float(cancelled)], device=device), "sum").item())
            # the last step's state only when it is kept: a finished run needs none (export failures save it below)
            if cancelled or (step < cfg.steps and step % cfg.checkpoint_every == 0) or (step == cfg.steps and cfg.keep_state):
                checkpoint(step)
            if cancelled:
                break
    except NonFinite as e:
        kept = f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}" if last_checkpoint else \
            "no checkpoint had been written yet"
        raise SdkdError(f"training stopped at step {step}: {e}; {kept}. Lower --lr or use --precision fp32/bf16"
                        + (", then --resume" if last_checkpoint else "")) from None
    result = TrainResult(step, cfg.steps, cancelled, values, run_dir, time.perf_counter() - began)
    if main:
        log.plot()
        if on_export is not None:
            meter = Meter(progress, "export", 1)
            with contextlib.suppress(Cancelled):  # the export is what a cancel keeps: a cancel asked now stops the preview
                meter.start()
            try:
                with ema.applied(params) if ema is not None else contextlib.nullcontext():
                    result.exported = on_export(bare, result)
            except BaseException:
                if last_checkpoint != step:  # keep the trained weights resumable, then say what failed
                    with contextlib.suppress(SdkdError):
                        save(step)
                raise
            with contextlib.suppress(Cancelled):
                meter.advance()
        if not cancelled and not cfg.keep_state:
            discard_state(run_dir)
        result.kept = kept_state(run_dir)
        if preview is not None and not cancelled:
            try:
                draw(step)
            except Cancelled:
                result.preview_note = "cancelled after the export"
            except RuntimeError as e:  # e.g. out of memory: the student is written already
                result.preview_note = f"not drawn ({str(e).splitlines()[0][:200]}); the export is written"
    acc.wait_for_everyone()
    return result


def takes_progress(fn: Callable) -> bool:
    """Whether a preview callback takes a `progress` keyword (it then reports its own stage and can be cancelled)."""
    import inspect

    try:
        return "progress" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable
        return False


def discard_state(run_dir: Path) -> None:
    """Remove what only a resumed run needs (the training state, the latent cache in the run folder) from a finished run."""
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / RUN_CACHE, ignore_errors=True)


def _bytes(path: Path) -> int:
    """Bytes on disk of a file or a folder's files (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def kept_state(run_dir: Path) -> dict[str, int]:
    """What of a run's resumable state is on disk: name in the run folder -> bytes (empty when nothing is)."""
    sizes = {STATE_FILE: _bytes(run_dir / STATE_FILE), RUN_CACHE + "/": _bytes(run_dir / RUN_CACHE)}
    return {k: v for k, v in sizes.items() if v} if sizes[STATE_FILE] else {}


def size_text(n: int) -> str:
    """A byte count as people read it (GB/MB/kB, decimal as file managers show them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_note(result: TrainResult) -> str:
    """What the run leaves on disk, in the CLI's words (a UI rewords the flags as its widgets)."""
    where = result.run_dir
    if result.kept:
        parts = " and ".join(f"{name} ({size_text(n)})" for name, n in result.kept.items())
        return (f"{where} keeps the resumable training state, {parts}: with --resume the run continues; delete "
                f"{' and '.join(result.kept)} there to free the space")
    return (f"{where} keeps the loss log and previews; the training state was removed (it is only needed to continue "
            "the run: --keep-state keeps it)")
