"""`sdkd lcm`: a few-step (LCM) LoRA for an SD1.x checkpoint or BK-SDM student, on sdkd's one training loop.

The job is one frozen `LcmJob`, built at the edge (CLI, tab, node); names are resolved to opened
models here once. The model to adapt gets peft LoRA adapters on every conv and linear layer of its
UNet (or on the layers of `--init-lora`, whose weights it starts from); the teacher's guided DDIM
step defines the trajectory (the model itself by default, or a community teacher for a student).
The data path (cache, data-free teacher samples, image folders), planner, resume, cancel, progress
and loss log are the distillation engine's. The result is a kohya LoRA in LDM names of the model's
real topology, so every host applies it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..checkpoint import Source, resolve
from ..configs import VaeShape
from ..convert import TEXT, UNET
from ..data import DataSpec, derive_seed
from ..detect import ModelInfo, open_trainable
from ..distill import (CPU, SCALING, Encoder, Grid, fresh_run, frozen_dtype, place, prepare_data, run_cache, teacher_model,
                       to_images)
from ..errors import SdkdError
from ..export import atomic_outputs, parse_dtype
from ..lora.file import Lora, kohya_metadata, read_lora, write_kohya
from ..lora.names import Layout, layout_of_source
from ..lora.peft import ADAPTER, FULL_UNET_TARGETS, adapters_off, lora_from_peft, lora_layers
from ..lora.train import LoraResult, LoraSpec, adapted
from ..pipeline import build_unet, build_vae
from ..plan import Estimate, Settings, cache_phase, check_resolution, fit, frozen_width, training_parts, unet_params
from ..progress import ProgressFn
from ..prune import checkpoint_path, teacher_metadata
from ..sampling import Sampler, sample_latents
from ..train import Run, TrainConfig, TrainResult, autocast_dtype, image_grid, make_accelerator, run_training
from ..variants import full_topology
from .objective import ConsistencyObjective, ConsistencySpec, UNet, frozen_teacher

KIND = "lcm"  # the `sdkd_lora_kind` metadata value hosts and sdkd read to know a LoRA is a few-step one
USE = Sampler("lcm", 4, 1.0)  # how the result is sampled: the hosts' LCM sampler, 4 steps, cfg 1
REFERENCE_STEPS = 25  # the teacher's preview row: its usual sampling


@dataclass(frozen=True)
class LcmJob:
    """One few-step LoRA run, as every front end builds it."""

    model: Path  # the model the LoRA is for (SD1.x or a BK-SDM student)
    out: Path
    data: DataSpec
    teacher: Path | None = None  # whose guided ODE the model learns to jump along (default: the model itself)
    init_lora: Path | None = None  # start from this LoRA (e.g. lcm-lora-sdv1-5 ported onto a student)
    lora: LoraSpec = LoraSpec(rank=64, alpha=64.0)
    consistency: ConsistencySpec = ConsistencySpec()
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    resolution: int = 512
    dtype: str = "fp16"  # the exported LoRA's weights
    overwrite: bool = False
    resume: bool = False
    cache_dir: Path | None = None
    vram: float | str | None = None
    preview_prompts: tuple[str, ...] | None = None  # None: the first captions; (): no grid

    def check(self) -> None:
        """Refuse every setting that cannot work before any model is read."""
        self.train.check()
        self.lora.check()
        self.consistency.check()
        check_resolution(self.resolution)
        parse_dtype(self.dtype)


@dataclass(frozen=True)
class Opened:
    """A model file opened and described once."""

    path: Path
    src: Source
    info: ModelInfo

    @classmethod
    def of(cls, path: Path, flag: str) -> Opened:
        """Open `path`, refusing what cannot take a few-step LoRA (not SD1.x or a BK-SDM student, inpainting)."""
        path = resolve(path)
        return cls(path, *open_trainable(path, f"{flag} {path.name}", "few-step LoRAs need"))


def check_teacher(model: Opened, teacher: Opened) -> None:
    """Refuse a teacher of other widths or with another text encoder than the model's (it would step along the
    wrong trajectory)."""
    if full_topology(teacher.info.topology) != full_topology(model.info.topology):
        raise SdkdError(f"--teacher {teacher.path.name} has other widths than {model.path.name}; pass the checkpoint "
                        f"{model.path.name} was made from")
    if model.info.has_text_encoder and teacher.info.has_text_encoder and not same_component(teacher.src, model.src, TEXT):
        raise SdkdError(f"--teacher {teacher.path.name} has another text encoder than {model.path.name}; pass the "
                        f"checkpoint {model.path.name} was made from")


def same_component(a: Source, b: Source, prefix: str) -> bool:
    """Whether `b` holds `a`'s component under `prefix` (e.g. its text encoder) at `b`'s precision: a student exported
    in fp16 from an fp32 checkpoint has that checkpoint's encoder."""
    keys = sorted(k for k in a.keys() if k.startswith(prefix))
    if keys != sorted(k for k in b.keys() if k.startswith(prefix)):
        return False
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x.shape != y.shape or not torch.equal(x.to(y.dtype) if x.is_floating_point() else x, y):
            return False
    return True


def init_targets(lora: Lora, layout: Layout) -> tuple[tuple[str, ...], int, float]:
    """(peft target names, rank, alpha) for adapters shaped like `lora`, refusing what sdkd cannot polish."""
    if any(not m.startswith(UNET) for m in lora.modules):
        raise SdkdError("--init-lora has text-encoder modules; a few-step LoRA trains the UNet only: pass a UNet LoRA")
    ranks = {m.rank for m in lora.modules.values()}
    if None in ranks or len(ranks) != 1:
        raise SdkdError(f"--init-lora: its modules have ranks {sorted(r for r in ranks if r)} (or are not plain LoRA); "
                        "sdkd polishes LoRAs of one rank")
    rank = ranks.pop()
    return tuple(sorted(layout.diffusers_name(m) for m in lora.modules)), rank, float(rank)


@torch.no_grad()
def load_adapters(unet: torch.nn.Module, lora: Lora, layout: Layout) -> None:
    """Copy `lora`'s weights into the UNet's peft adapters (injected with alpha = rank: the alpha folded into up)."""
    for name, layer in lora_layers(unet).items():
        mod = lora.modules[layout.spellings[name]]
        down, up = mod.tensors["lora_down.weight"], mod.tensors["lora_up.weight"]
        layer.lora_A[ADAPTER].weight.copy_(down.reshape(layer.lora_A[ADAPTER].weight.shape))
        layer.lora_B[ADAPTER].weight.copy_(up.reshape(layer.lora_B[ADAPTER].weight.shape) * (mod.alpha / mod.rank))


def adapter_params(layout: Layout, targets: tuple[str, ...], rank: int) -> int:
    """Number of adapter parameters on the UNet modules `targets` names (peft's suffix match)."""
    total = 0
    for m, shape in layout.shapes.items():
        if m.startswith(UNET) and len(shape) in (2, 4):
            name = layout.diffusers_name(m)
            if any(name == t or name.endswith("." + t) for t in targets):
                fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
                total += rank * (fan_in + shape[0])
    return total


def estimator(layout: Layout, targets: tuple[str, ...], rank: int, resolution: int,
              separate_teacher: bool) -> Callable[[Settings], Estimate]:
    """The planner's estimate of one LCM step: LoRA training of the model, plus a frozen teacher where it is another
    model; the teacher's guided pass and the target pass run without gradients (only their largest activation)."""
    topo = layout.topology

    def estimate(s: Settings) -> Estimate:
        parts = training_parts(topo, resolution, s, trainable=adapter_params(layout, targets, rank))
        if separate_teacher:
            parts["teacher (frozen)"] = unet_params(full_topology(topo)) * frozen_width(s)
        return Estimate(s, parts, cache_phase(resolution, VaeShape(), topo.context_dim, s.precision != "fp32"))

    return estimate


@contextlib.contextmanager
def base_of(unet: torch.nn.Module) -> Iterator[UNet]:
    """The adapted UNet computing without its adapters: the model as its own teacher."""
    def call(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return unet(x, t, encoder_hidden_states=context).sample.float()

    with adapters_off(unet):
        yield call


class WithoutAdapters(torch.nn.Module):
    """An adapted UNet as a plain UNet without its adapters (for sampling the teacher row when it is the model)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        """The UNet's diffusers config (samplers read its channels)."""
        return self.unet.config

    def forward(self, *args, **kwargs):
        with adapters_off(self.unet):
            return self.unet(*args, **kwargs)


def few_step_preview(teacher: torch.nn.Module, vae: torch.nn.Module, grid: Grid,
                     reference: Sampler) -> Callable[[torch.nn.Module, int, Path], None]:
    """Sample grids: the teacher at its own settings (row 1, drawn once) above the model + LoRA at 4 LCM steps, cfg 1."""
    top: list = []
    cond, uncond, seeds, latent, amp = grid.cond, grid.uncond, grid.seeds, grid.latent, grid.amp

    def draw(model: torch.nn.Module, step: int, path: Path) -> None:
        device = next(model.parameters()).device
        if not top:
            top.extend(to_images(vae, sample_latents(teacher, reference, cond, uncond, seeds, latent), SCALING, device))
        was = model.training
        model.eval()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            z = sample_latents(model, USE, cond, uncond, seeds, latent)
        model.train(was)
        image = image_grid([top, to_images(vae, z.float(), SCALING, device)],
                           [f"teacher {reference.steps} steps", f"LCM {USE.steps} steps, {step}"])
        with atomic_outputs(overwrite=True) as outs:
            image.save(outs.temp(path), format="PNG")

    return draw


def few_step_lora(job: LcmJob, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> LoraResult:
    """Distil `job.model` into a few-step LoRA along `job.teacher`'s guided trajectory; export a kohya LoRA.

    A progress callback raising `Cancelled` during training leaves an exported LoRA and a resumable run."""
    job.check()
    acc = make_accelerator(job.train.device)
    device = acc.device
    job.train.check_device(device)  # before any file is read, cache built or model loaded
    say = log or (lambda msg: None)
    model = Opened.of(job.model, "MODEL")
    teacher = Opened.of(job.teacher, "--teacher") if job.teacher is not None else model
    if teacher is not model:
        check_teacher(model, teacher)
    out_path = checkpoint_path(job.out)
    if out_path.resolve() in (model.path.resolve(), teacher.path.resolve()):
        raise SdkdError(f"--out {out_path} is an input model; sdkd never overwrites its input")
    run_dir = fresh_run(out_path, job.resume, job.overwrite)  # fail before the slow part
    layout = layout_of_source(model.src, model.info.topology)
    init = read_lora(job.init_lora, layout) if job.init_lora is not None else None
    targets, rank, alpha = init_targets(init, layout) if init else (FULL_UNET_TARGETS, job.lora.rank, job.lora.alpha)
    cfg = fit(job.train, job.vram, device, estimator(layout, targets, rank, job.resolution, teacher is not model), say,
              f"few-step LoRA training at {job.resolution} px", "lower --resolution or --rank")
    amp = autocast_dtype(cfg.precision, device)
    provenance = teacher_metadata(teacher.path)
    unet = adapted(build_unet(model.src, model.info), LoraSpec(rank, alpha), targets, amp or torch.float32,
                   derive_seed(cfg.seed, "lcm-unet"))
    if init is not None:
        load_adapters(unet, init, layout)
    teacher_unet = teacher_model(teacher.src, teacher.info, device) if teacher is not model else None
    sampler_unet = teacher_unet if teacher_unet is not None else WithoutAdapters(unet.to(device))  # adapters stay fp32
    shown = None if job.preview_prompts is None else list(job.preview_prompts)
    ctx = Encoder(model.src, run_cache(job.cache_dir, run_dir), job.resolution, cfg.seed, device, say,
                  progress if acc.is_main_process else None, provenance)
    with acc.main_process_first():
        dataset, previews, uncond = prepare_data(job.data, sampler_unet, shown, ctx)
    teach = (lambda: frozen_teacher(teacher_unet)) if teacher_unet is not None else (lambda: base_of(unet))
    objective = ConsistencyObjective(teach, uncond, job.consistency)
    sha = teacher_metadata(model.path)()["sdkd_teacher_sha256"]
    t_sha = provenance()["sdkd_teacher_sha256"]
    fingerprint = {"model": f"{model.path.name} (sha256 {sha[:16]})", "teacher": f"{teacher.path.name} (sha256 {t_sha[:16]})",
                   "lora": f"rank {rank}, alpha {alpha:g}, {len(targets)} target names", "lcm": job.consistency.describe(),
                   "data": f"{job.data.describe()}, {len(dataset)} samples at {job.resolution} px [{dataset.fingerprint()[:16]}]",
                   **({"init": job.init_lora.name} if job.init_lora is not None else {})}
    preview = None
    if previews is not None and acc.is_main_process:
        reference = Sampler("euler", REFERENCE_STEPS, sum(job.consistency.guidance) / 2)  # the cfg the LoRA bakes in
        preview = few_step_preview(sampler_unet, place(build_vae(model.src), CPU, frozen_dtype(device)),
                                   Grid.of(previews, uncond, cfg.seed, ctx.latent, amp), reference)

    def on_export(net: torch.nn.Module, result: TrainResult) -> Lora:
        lora = lora_from_peft(layout, net)
        extra = {"sdkd_lora_kind": KIND, "sdkd_base": model.path.name, "sdkd_base_sha256": sha,
                 "sdkd_lcm_teacher": teacher.path.name, "sdkd_lcm_teacher_sha256": t_sha,
                 "sdkd_sampler": USE.name, "sdkd_sampler_steps": str(USE.steps), "sdkd_sampler_cfg": f"{USE.guidance:g}",
                 "sdkd_lcm": job.consistency.describe(), "ss_resolution": f"({job.resolution}, {job.resolution})",
                 "ss_steps": str(result.steps), "ss_learning_rate": f"{cfg.lr:g}",
                 "sdkd_lora_status": "cancelled" if result.cancelled else "complete",
                 "sdkd_lora_data": fingerprint["data"][:300], "ss_num_train_images": str(len(dataset)),
                 "sdkd_lora_final_loss": f"{result.losses.get('loss', float('nan')):.6g}",
                 **({"sdkd_lcm_init": job.init_lora.name} if job.init_lora is not None else {})}
        write_kohya(lora, out_path, kohya_metadata(lora, model.info.variant, extra), overwrite=True,
                    dtype=parse_dtype(job.dtype))
        return lora

    run = Run(run_dir, fingerprint, job.resume, job.overwrite, "lcm", acc)
    result = run_training(objective, unet, dataset, cfg, run, progress, on_export, preview)
    exported = result.exported
    return LoraResult(out_path if exported is not None else None, result, run_dir, len(dataset),
                     len(exported.modules) if exported is not None else 0)
