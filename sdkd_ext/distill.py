"""BK-SDM knowledge distillation: a pruned student learns its teacher's noise predictions and block features.

loss = l_sd * mse(student_eps, noise) + l_out * mse(student_eps, teacher_eps)
       + l_feat * sum_i mse(student_feature_i, teacher_feature_i)
with every MSE a plain mean in fp32 and the feature pairs derived from the variant spec
(`variants.hook_pairs`). The student starts as the core's pruned copy of the teacher and ends
exported exactly as `sdkd prune` exports, with the run recorded in the metadata.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .cache import LATENT_KIND, TEXT_KIND, Cache, CachedDataset, Crop, component_hash, encode_images, encode_texts, key_of, text_key
from .checkpoint import ChainSource, DictSource, RenamedSource, Source, open_model, resolve
from .configs import sd15
from .convert import TEXT, UNET, VAE, unet_map
from .data import DataSpec, FolderData, PromptData, builtin_prompts, derive_seed, read_prompts, scan_folder
from .detect import ModelInfo, describe, require_teacher
from .errors import SdkdError
from .export import Outputs, add_output_options, atomic_outputs, parse_dtype
from .pipeline import build_text_encoder, build_unet, build_vae, tokenizer
from .plan import check_resolution, fit, kd_estimator, parse_vram
from .portable import add_portable_option, refuse_middle_block
from .progress import Cancelled, Meter, ProgressFn, tqdm_progress
from .prune import Exported, Target, export_model, fresh_out, student_names, teacher_metadata
from .sampling import DEFAULT_SAMPLER, Flags, Sampler, check as check_sampler, sample_latents
from .train import (RUN_CACHE, Run, TrainConfig, TrainResult, autocast_dtype, check_run, diffusion_inputs, disk_note,
                    image_grid, make_accelerator, noise_scheduler, run_training, unwrap)
from .variants import SD15, Topology, Variant, get_variant, hook_pairs

PREVIEW_PROMPTS = 4
CPU = torch.device("cpu")
TERMS = ("task", "output_kd", "feature_kd")
SCALING = float(sd15("vae").get("scaling_factor", 0.18215))  # SD1.x latents = VAE posterior x this


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three BK-SDM loss terms (BK-SDM: 1/1/1; Segmind used 0.5 for both KD terms)."""

    sd: float = 1.0  # task: student noise prediction vs the true noise
    out: float = 1.0  # output KD: student vs teacher noise prediction
    feat: float = 1.0  # feature KD: sum over the hook pairs

    def active(self) -> dict[str, float]:
        """Term name -> weight, for the non-zero terms only (zero-weight terms are never computed)."""
        for name, w in zip(TERMS, (self.sd, self.out, self.feat)):
            if w < 0:
                raise SdkdError(f"the {name} loss weight must not be negative (got {w})")
        return {name: w for name, w in zip(TERMS, (self.sd, self.out, self.feat)) if w}


@dataclass(frozen=True)
class DistillJob:
    """One distillation, as every front end builds it: the teacher file, the resolved variant, the data, the loop's
    settings and loss weights, and how the student is written (`out` None: beside the teacher)."""

    teacher: Path
    variant: Variant
    out: Path | None
    data: DataSpec
    train: TrainConfig = field(default_factory=TrainConfig)
    weights: LossWeights = LossWeights()
    resolution: int = 512
    dtype: str = "fp16"
    overwrite: bool = False
    resume: bool = False
    cache_dir: Path | None = None
    vram: float | str | None = None  # "auto" or GiB: the memory planner fits the run (see `plan.fit`)
    preview_prompts: tuple[str, ...] | None = None  # None: the first captions/prompts; (): no grid
    diffusers: bool = False
    init: Path | None = None  # start from this student of `variant` instead of the pruned teacher
    portable: bool = False


# Recipes: the settings a `sdkd distill --recipe NAME` run starts from (options given on the command line win), keyed by
# option name (TrainConfig fields, l_sd/l_out/l_feat, resolution, flip). "sdkd" is this tool's defaults (TrainConfig,
# LossWeights); "bk-sdm" pins every value of BK-SDM's published run (Nota's scripts/kd_train.sh and model card: batch
# 64 x accumulation 4 = 256, AdamW lr 5e-5 constant without warm-up, weight decay 1e-2, gradient clipping 1, EMA 0.9999,
# fp16 mixed precision, gradient checkpointing, 512 px with random flips, loss weights 1/1/1, 50K iterations, seed 1234).
RECIPES: dict[str, dict[str, object]] = {
    "sdkd": {},
    "bk-sdm": {"steps": 50000, "batch": 64, "accum": 4, "lr": 5e-5, "warmup": 0, "weight_decay": 1e-2, "max_grad_norm": 1.0,
               "ema": True, "ema_decay": 0.9999, "precision": "fp16", "grad_checkpointing": True, "seed": 1234,
               "l_sd": 1.0, "l_out": 1.0, "l_feat": 1.0, "resolution": 512, "flip": True},
}


def recipe(name: str) -> dict[str, object]:
    """Every setting of recipe `name`: the defaults (TrainConfig, LossWeights, 512 px, no flips) with its row applied."""
    cfg, w = TrainConfig(), LossWeights()
    defaults = {**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}, "l_sd": w.sd, "l_out": w.out, "l_feat": w.feat,
                "resolution": 512, "flip": False}
    return {**defaults, **RECIPES[name]}


def with_recipe(a: argparse.Namespace) -> argparse.Namespace:
    """The arguments with every setting not given (None or absent) taken from recipe `a.recipe`."""
    for name, value in recipe(a.recipe).items():
        if getattr(a, name, None) is None:
            setattr(a, name, value)
    return a


class FeatureTap:
    """Forward hooks that keep the first output of named submodules, only while armed (not in checkpoint recompute)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.features: dict[str, torch.Tensor] = {}  # the current capture's
        self.handles: list = []
        self.model: torch.nn.Module | None = None
        self._given: torch.nn.Module | None = None  # the (maybe wrapped) module last passed to attach
        self._armed = False

    def attach(self, model: torch.nn.Module) -> FeatureTap:
        """Hook the named blocks of `model`, unwrapped first (DDP and compile wrappers hide `.down_blocks`);
        hooks on a previously attached model are removed. Called every step: the same module returns at once."""
        if model is self._given:
            return self
        bare = unwrap(model)
        if bare is not self.model:
            self.remove()
            self.model = bare
            for name in self.names:
                try:
                    module = bare.get_submodule(name)
                except AttributeError:
                    raise SdkdError(f"internal error: the UNet has no block {name!r} to take features from") from None
                self.handles.append(module.register_forward_hook(self._keeper(name)))
        self._given = model
        return self

    def _keeper(self, name: str) -> Callable:
        def keep(module: torch.nn.Module, args: tuple, output: object) -> None:
            if self._armed:
                self.features[name] = output[0] if isinstance(output, (tuple, list)) else output
        return keep

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Collect features during the block into the dict it yields (the tap keeps no reference after it)."""
        self.features = {}
        self._armed = True
        try:
            yield self.features
        finally:
            self._armed = False
            self.features = {}

    def remove(self) -> None:
        """Detach every hook."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.model = self._given = None


class KDObjective:
    """The BK-SDM loss terms for one batch: the generic loop's objective for distillation."""

    def __init__(self, teacher: torch.nn.Module, pairs: list[tuple[str, str]], weights: LossWeights):
        self.weights = weights.active()
        self.teacher = teacher
        self.pairs = pairs
        self.scheduler = noise_scheduler()
        needs_features = "feature_kd" in self.weights
        self.teacher_tap = FeatureTap([t for t, _ in pairs]).attach(teacher) if needs_features else None
        self.student_tap = FeatureTap([s for _, s in pairs]) if needs_features else None

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, noise) of a batch, from its per-sample seeds."""
        return diffusion_inputs(batch["latents"], batch["seed"].tolist(), self.scheduler)

    def teacher_pass(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher noise prediction and features in fp32, computed frozen in its own precision, as plain tensors."""
        dtype = next(self.teacher.parameters()).dtype
        tap = self.teacher_tap.capture() if self.teacher_tap else contextlib.nullcontext({})
        # no_grad, not inference mode: its outputs are ordinary tensors autograd may save for the loss's backward, so an
        # fp32 teacher's are used as they are and a 16-bit one's are upcast once, never copied
        with torch.no_grad(), torch.autocast(noisy.device.type, enabled=False), tap as feats:
            eps = self.teacher(noisy.to(dtype), t, encoder_hidden_states=text.to(dtype)).sample
        return eps.float(), {k: v.float() for k, v in feats.items()}

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named fp32 loss terms (unweighted) of `model` as the student on `batch`."""
        if self.student_tap is not None:
            self.student_tap.attach(model)
        noisy, t, noise = self.inputs(batch)
        text = batch["text"]
        if "output_kd" in self.weights or "feature_kd" in self.weights:
            t_eps, t_feats = self.teacher_pass(noisy, t, text)
        tap = self.student_tap.capture() if self.student_tap else contextlib.nullcontext({})
        with tap as s_feats:
            s_eps = model(noisy, t, encoder_hidden_states=text).sample.float()
        terms = {}
        if "task" in self.weights:
            terms["task"] = F.mse_loss(s_eps, noise.float())
        if "output_kd" in self.weights:
            terms["output_kd"] = F.mse_loss(s_eps, t_eps)
        if "feature_kd" in self.weights:
            losses = []
            for t_name, s_name in self.pairs:
                s, tt = s_feats[s_name].float(), t_feats[t_name]
                if s.shape != tt.shape:
                    raise SdkdError(f"internal error: feature pair {t_name} -> {s_name} has shapes {tuple(tt.shape)} vs {tuple(s.shape)}")
                losses.append(F.mse_loss(s, tt))
            terms["feature_kd"] = torch.stack(losses).sum()
        return terms


@dataclass
class DistillResult:
    """A distillation run's outcome: the exported student and how training ended."""

    exported: Exported | None
    train: TrainResult
    run_dir: Path
    samples: int
    notes: list[str] = field(default_factory=list)


def run_folder(out: Path) -> Path:
    """The run folder beside the output: `<name>.run/` (state, loss log, previews, cache)."""
    return out.with_suffix(".run")


def student_model(src: Source, info: ModelInfo, variant: Variant) -> tuple[torch.nn.Module, Topology]:
    """The student UNet (fp32, its own memory) initialised by the core's prune mapping, and its topology."""
    view = RenamedSource(src, student_names(src, info, variant))
    return trainable(view, describe(view))


def init_model(init: str | Path, teacher: ModelInfo, variant: Variant) -> tuple[torch.nn.Module, Topology]:
    """The student UNet (fp32) read from `--init`: any `variant` student of the teacher's widths (rebased, public, ours)."""
    from .public import check_student_of, open_student

    path = resolve(init)
    src, info = open_student(path)
    if check_student_of(info, teacher.topology, f"--init {path.name}", "the teacher") != variant:
        raise SdkdError(f"--init {path.name} is a {info.variant} student and --variant asks for {variant.name}; "
                        f"pass --variant {info.variant} or a {variant.name} student")
    return trainable(src, info)


def trainable(src: Source, info: ModelInfo) -> tuple[torch.nn.Module, Topology]:
    """A student's UNet in fp32 in its own memory (never sharing storage with a source's tensors), and its topology."""
    unet = build_unet(src, info)
    for p in unet.parameters():
        p.data = p.data.to(torch.float32, copy=True)
    return unet, info.topology


def frozen_dtype(device: torch.device) -> torch.dtype:
    """Precision of the frozen models (teacher, VAE, text encoder): fp16 on CUDA as BK-SDM, fp32 elsewhere (CPUs
    lack fast half-precision kernels, and some ops have none)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def teacher_model(src: Source, info: ModelInfo, device: torch.device) -> torch.nn.Module:
    """The teacher UNet, frozen, in `frozen_dtype`."""
    unet = place(build_unet(src, info), device, frozen_dtype(device)).eval()
    unet.requires_grad_(False)
    return unet


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move and cast a model (plain `nn.Module.to`: diffusers 0.42's override warns on every dtype cast)."""
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def export_student(unet: torch.nn.Module, src: Source, topology: Topology, variant: str, to: Target,
                   extra: Callable[[], dict[str, str]]) -> Exported:
    """Export the trained UNet with the teacher's VAE and text encoder through the core exporter (as `sdkd prune`)."""
    state = unet.state_dict()
    pmap = unet_map(topology)
    names = {}
    for k in state:
        ldm = pmap.to_ldm(k)
        if ldm is None:
            raise SdkdError(f"internal error: student key {k} has no LDM name")
        names[UNET + ldm] = k
    trained = RenamedSource(DictSource(state), names, lambda _, t: t.detach().to("cpu"))
    rest = RenamedSource(src, {k: k for k in src.keys() if not k.startswith(UNET)})
    full = ChainSource([trained, rest])
    return export_model(full, {k: k for k in full.keys()}, topology, variant, to, extra)


def to_images(vae: torch.nn.Module, latents: torch.Tensor, scaling: float, device: torch.device,
              on_image: Callable[[], None] | None = None) -> list:
    """Decode latents (one at a time, VAE moved to `device` for it and back) into PIL images; `on_image` is called
    after each."""
    from PIL import Image

    vae.to(device)
    dtype = next(vae.parameters()).dtype
    images = []
    with torch.no_grad():
        for z in latents:
            x = vae.decode((z[None] / scaling).to(device, dtype)).sample[0].float()
            x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            images.append(Image.fromarray(x))
            if on_image is not None:
                on_image()
    vae.to("cpu")
    return images


@dataclass(frozen=True)
class PreviewBounds:
    """The most a preview grid may draw on a kind of device: prompts (columns), image side in pixels, sampler steps."""

    prompts: int
    side: int
    steps: int


# A GPU draws the asked grid (at most 4 prompts, 25 steps); elsewhere a small one: the grid only shows the trend, and a
# full SD1.5 grid at 512 px costs tens of minutes on a CPU.
PREVIEW_BOUNDS = {"cuda": PreviewBounds(PREVIEW_PROMPTS, 1024, 25), "other": PreviewBounds(2, 256, 10)}


def preview_bounds(device: torch.device) -> PreviewBounds:
    """The preview bounds for `device`."""
    return PREVIEW_BOUNDS.get(device.type, PREVIEW_BOUNDS["other"])


@dataclass(frozen=True)
class Grid:
    """What every preview grid of a run draws: the prompts' embeddings and the unconditional one, a seed per prompt, the
    latent side, and the autocast the trained model samples under."""

    cond: torch.Tensor
    uncond: torch.Tensor
    seeds: list[int]
    latent: int
    amp: torch.dtype | None = None

    @classmethod
    def of(cls, cond: torch.Tensor, uncond: torch.Tensor, seed: int, latent: int, amp: torch.dtype | None) -> Grid:
        """The grid of a run seeded `seed`: each prompt's seed derived from it."""
        return cls(cond, uncond, [derive_seed(seed, "preview", i) for i in range(len(cond))], latent, amp)


def make_preview(teacher: torch.nn.Module, vae: torch.nn.Module, grid: Grid, sampling: Sampler,
                 labels: tuple[str, str] = ("teacher", "student")) -> Callable[..., None]:
    """A preview function: teacher (row 1, sampled once) and student (row 2) images at the same prompts and seeds,
    each row labelled (`labels`; the student's with its step), bounded by `preview_bounds` of the device it runs on;
    it reports its sampler steps and decodes as the "preview" stage (a cancel there stops it)."""
    teacher_row: list = []
    cond, uncond, seeds, amp = grid.cond, grid.uncond, grid.seeds, grid.amp

    def preview(student: torch.nn.Module, step: int, path: Path, progress: ProgressFn | None = None) -> None:
        device = next(teacher.parameters()).device  # read here: a LoRA's base moves to the device once training starts
        b = preview_bounds(device)
        n, side = min(b.prompts, len(seeds)), min(grid.latent, b.side // 8)
        drawn = replace(sampling, steps=min(sampling.steps, b.steps))
        k = drawn.steps
        rows = 1 if teacher_row else 2
        meter = Meter(progress, "preview", rows * (k + n))
        meter.start(f"{n} images per row, {side * 8} px, {k} steps")
        tick = meter.advance
        if not teacher_row:
            z = sample_latents(teacher, drawn, cond[:n], uncond, seeds[:n], side, progress=lambda _: tick())
            teacher_row.extend(to_images(vae, z, SCALING, device, tick))
        was_training = student.training
        student.eval()
        try:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                z = sample_latents(student, drawn, cond[:n], uncond, seeds[:n], side, progress=lambda _: tick())
        finally:
            student.train(was_training)
        image = image_grid([teacher_row, to_images(vae, z.float(), SCALING, device, tick)], [labels[0], f"{labels[1]} {step}"])
        with atomic_outputs(overwrite=True) as outs:
            image.save(outs.temp(path), format="PNG")

    return preview


@dataclass(frozen=True)
class Encoder:
    """What a job's training data is encoded with and into: the opened model (its text encoder and VAE), the cache,
    the image side, the run's seed, the device the frozen encoders run on, and where notes, progress events and the
    teacher's provenance (its hash keys the teacher's samples) come from."""

    src: Source
    cache: Cache
    resolution: int
    seed: int
    device: torch.device
    say: Callable[[str], None]
    progress: ProgressFn | None
    provenance: Callable[[], dict[str, str]]

    @property
    def latent(self) -> int:
        """The latent side of the training images."""
        return self.resolution // 8


@torch.no_grad()
def self_generate(teacher: torch.nn.Module, data: PromptData, text_keys: list[str], uncond_key: str, ctx: Encoder,
                  batch: int = 4) -> list[str]:
    """Let the teacher sample one latent per prompt (cached; latents only, nothing decoded); return their keys."""
    cache, latent, seed, progress = ctx.cache, ctx.latent, ctx.seed, ctx.progress
    teacher_hash = ctx.provenance()["sdkd_teacher_sha256"]
    keys = [key_of("generated", teacher_hash, p, data.negative, data.guidance, data.sample_steps, latent, derive_seed(seed, "gen", i))
            for i, p in enumerate(data.prompts)]
    todo = [i for i, k in enumerate(keys) if not cache.has(LATENT_KIND, k)]
    device = next(teacher.parameters()).device
    uncond = cache.load(TEXT_KIND, uncond_key)["text"][None].to(device)
    spec = Sampler(steps=data.sample_steps, guidance=data.guidance)
    chunks = -(-len(todo) // batch)
    meter = Meter(progress, "teacher-samples", chunks * data.sample_steps)  # counted in sampler steps: a steady ETA
    meter.start(f"the teacher draws {len(todo)} training latents, {batch} at a time, {data.sample_steps} steps each")
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        cond = torch.stack([cache.load(TEXT_KIND, text_keys[i])["text"] for i in chunk]).to(device)
        z = sample_latents(teacher, spec, cond, uncond, [derive_seed(seed, "gen", i) for i in chunk], latent,
                           progress=lambda _: meter.advance())
        for i, zi in zip(chunk, z):
            cache.save(LATENT_KIND, keys[i], {"mean": zi / SCALING})
    return keys


def fresh_run(out_path: Path, resume: bool, overwrite: bool, *also: Path) -> Path:
    """The run folder of a training job writing `out_path` (and `also`), refusing a run folder or outputs there that
    neither `resume` nor `overwrite` allows, before any work."""
    run_dir = run_folder(out_path)
    check_run(run_dir, resume, overwrite)
    if not (resume or overwrite):
        for final in (out_path, *also):
            Outputs(False).check(final)
    return run_dir


def run_cache(cache_dir: Path | None, run_dir: Path) -> Cache:
    """The latent/text cache: `--cache-dir`, else the run folder's own."""
    return Cache(Path(cache_dir).expanduser() if cache_dir else run_dir / RUN_CACHE)


def distill(job: DistillJob, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> DistillResult:
    """Distil `job.teacher` into a BK-SDM `job.variant` on `job.data` and export the student like `sdkd prune` does.

    `job.init` starts from that student's weights (a rebased, public or earlier student) instead of the pruned teacher;
    `job.portable` writes the identity middle block `sdkd prune --portable` writes (refused before any work for base).

    `job.vram` ("auto" or GiB) lets the memory planner pick micro-batch/accumulation, gradient
    checkpointing and EMA to fit. A progress callback raising `Cancelled` during training leaves an
    exported student and a resumable run (`job.resume`); raised earlier, it propagates."""
    cfg, weights, resolution, data, init = job.train, job.weights, job.resolution, job.data, job.init
    cfg.check()
    check_resolution(resolution)
    parse_dtype(job.dtype)
    acc = make_accelerator(cfg.device)
    device = acc.device
    cfg.check_device(device)  # every setting is checked before the teacher is read, the cache built or a model loaded
    v = job.variant
    if job.portable:
        refuse_middle_block(v.student(SD15), v.name)
    notes: list[str] = []
    say = lambda msg: (notes.append(msg), log(msg) if log and acc.is_main_process else None)  # noqa: E731
    path = resolve(job.teacher)
    out_path = fresh_out(job.out, path, f"{v.name}-kd")
    run_dir = fresh_run(out_path, job.resume, job.overwrite, out_path.with_suffix(".yaml"))
    src = open_model(path)
    info = describe(src)
    require_teacher(info, path.name, "distil")
    if info.inpainting:
        raise SdkdError(f"{path.name}: an inpainting teacher can be pruned but not distilled (its UNet needs masks); "
                        "distil the normal checkpoint it was made from")
    cfg = fit(cfg, job.vram, device, kd_estimator(v, resolution, info.topology), say, f"{v.name} at {resolution} px")
    provenance = teacher_metadata(path)
    student, s_topology = student_model(src, info, v) if init is None else init_model(init, info, v)
    teacher_unet = teacher_model(src, info, device)
    ctx = Encoder(src, run_cache(job.cache_dir, run_dir), resolution, cfg.seed, device, say,
                  progress if acc.is_main_process else None, provenance)
    shown = None if job.preview_prompts is None else list(job.preview_prompts)
    with acc.main_process_first():
        dataset, previews, uncond = prepare_data(data, teacher_unet, shown, ctx)
    objective = KDObjective(teacher_unet, hook_pairs(v, info.topology), weights)
    sha = provenance()["sdkd_teacher_sha256"]
    fingerprint = {"variant": v.name, "teacher": f"{path.name} (sha256 {sha[:16]})",
                   "data": f"{data.describe()}, {len(dataset)} samples at {resolution} px [{dataset.fingerprint()[:16]}]",
                   **({"init": resolve(init).name} if init is not None else {})}
    preview = None
    if previews is not None and acc.is_main_process:
        sampling = data if isinstance(data, PromptData) else PromptData(())
        preview = make_preview(teacher_unet, place(build_vae(src), CPU, frozen_dtype(device)),
                               Grid.of(previews, uncond, cfg.seed, ctx.latent, autocast_dtype(cfg.precision, device)),
                               Sampler(steps=sampling.sample_steps, guidance=sampling.guidance))
    world = acc.num_processes

    def extra(result: TrainResult) -> Callable[[], dict[str, str]]:
        return lambda: {
            **provenance(), "sdkd_ema": str(cfg.ema).lower(),
            "sdkd_distill_steps": str(result.steps), "sdkd_distill_status": "cancelled" if result.cancelled else "complete",
            "sdkd_distill_data": fingerprint["data"][:300],
            "sdkd_distill_loss_weights": json.dumps({"sd": weights.sd, "out": weights.out, "feat": weights.feat}),
            "sdkd_distill_lr": f"{cfg.lr:g}", "sdkd_distill_batch": str(cfg.batch * cfg.accum * world),
            "sdkd_distill_resolution": str(resolution), "sdkd_distill_init": fingerprint.get("init", "pruned teacher"),
            "sdkd_distill_final_loss": json.dumps({k: round(x, 6) for k, x in result.losses.items()}),
        }

    to = Target(out_path, job.dtype, True, job.diffusers, job.portable)  # the run replaces its own earlier export

    def on_export(model: torch.nn.Module, result: TrainResult) -> Exported:
        return export_student(model, src, s_topology, v.name, to, extra(result))

    run = Run(run_dir, fingerprint, job.resume, job.overwrite, "distill", acc)
    result = run_training(objective, student, dataset, cfg, run, progress, on_export, preview)
    return DistillResult(result.exported, result, run_dir, len(dataset), notes)


def preview_texts(texts: list[str], given: list[str] | None) -> list[str]:
    """The prompts of the preview grids: those `given`, else the first distinct captions/prompts."""
    return list(given) if given is not None else list(dict.fromkeys(texts))[:PREVIEW_PROMPTS]


def prepare_data(data: DataSpec, teacher: torch.nn.Module | None, preview_prompts: list[str] | None,
                 ctx: Encoder) -> tuple[CachedDataset, torch.Tensor | None, torch.Tensor]:
    """Encode captions and images (or let the teacher generate latents) into the cache, loading the text encoder
    and VAE only for what is missing; return the dataset, the preview prompt embeddings and the unconditional one."""
    src, cache, device, say = ctx.src, ctx.cache, ctx.device, ctx.say
    te_hash = component_hash(src, TEXT)
    if isinstance(data, FolderData):
        scan = scan_folder(data.folder)
        if scan.uncaptioned:
            say(f"{len(scan.uncaptioned)} image(s) have no caption; using their file names (e.g. {scan.uncaptioned[0].name})")
        if scan.missing:
            say(f"metadata.jsonl lists {len(scan.missing)} file(s) that are not there (e.g. {scan.missing[0]}); skipped")
        texts = [ex.caption for ex in scan.examples]
        negative = ""
    else:
        texts, negative = list(data.prompts), data.negative
    shown = preview_texts(texts, preview_prompts)
    half = frozen_dtype(device)
    keys = encode_texts(texts + shown + [negative], lambda: place(build_text_encoder(src), device, half), tokenizer, cache,
                        te_hash, progress=ctx.progress)[:len(texts)]
    _free(device)
    uncond_key = text_key(negative, te_hash)
    if isinstance(data, FolderData):
        min_side = data.min_side or ctx.resolution // 2
        images = encode_images(scan.examples, lambda: place(build_vae(src), device, half), cache, component_hash(src, VAE),
                               Crop(ctx.resolution, data.flip, min_side), progress=ctx.progress)
        _free(device)
        if images.summary():
            say(images.summary())
        items = [(k, t) for k, t in zip(images.keys, keys) if k is not None]
        if not items:
            raise SdkdError(f"--data {data.folder}: no usable images ({images.summary()}); "
                            f"add readable images of at least {min_side} px")
    else:
        latents = self_generate(teacher, data, keys, uncond_key, ctx)
        items = [((k,), t) for k, t in zip(latents, keys)]
    uncond = cache.load(TEXT_KIND, uncond_key)["text"][None].float().to(device)
    previews = torch.stack([cache.load(TEXT_KIND, text_key(t, te_hash))["text"] for t in shown]).float().to(device) if shown else None
    return CachedDataset(cache, items, SCALING), previews, uncond


def _free(device: torch.device) -> None:
    """Return freed accelerator memory to the device (models that have left memory before the UNet loop)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- command line ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def stop_on_ctrl_c(progress: ProgressFn) -> Iterator[ProgressFn]:
    """A progress callback that turns the first Ctrl-C into a graceful `Cancelled` at the next event (the
    second one interrupts at once)."""
    asked: list[bool] = []

    def on_sigint(signum: int, frame: object) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(True)
        print("\nsdkd: stopping after this step (export + checkpoint); press Ctrl-C again to abort", file=sys.stderr)

    def show(event) -> None:
        progress(event)
        if asked:
            raise Cancelled

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield show
    finally:
        signal.signal(signal.SIGINT, previous)


def run_stoppable(call: Callable[[ProgressFn], object]) -> object | None:
    """`call(progress)` with the CLI's bars and Ctrl-C handling; None, said on stderr, when cancelled before training."""
    with stop_on_ctrl_c(tqdm_progress()) as progress:
        try:
            return call(progress)
        except Cancelled:
            print("sdkd: cancelled before training started (the cache written so far is kept)", file=sys.stderr)
            return None


def optional_path(text: str | None) -> Path | None:
    """An optional path option's value as a path (None when not given)."""
    return Path(text) if text else None


def data_spec(a: argparse.Namespace) -> DataSpec:
    """The data source the arguments name."""
    if a.data:
        return FolderData(Path(a.data).expanduser(), flip=a.flip)
    check_sampler(DEFAULT_SAMPLER, a.sample_steps, a.guidance, Flags(steps="--sample-steps"))  # before any work
    prompts = read_prompts(a.prompts) if a.prompts else builtin_prompts(a.self_n, a.seed)
    origin = f"prompts {Path(a.prompts).name}" if a.prompts else "built-in prompts"
    return PromptData(tuple(prompts), a.negative, a.guidance, a.sample_steps, origin)


def cmd_distill(a: argparse.Namespace) -> int:
    """Run `distill` from the command line and say where everything went."""
    a = with_recipe(a)
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)})
    shown = None if a.preview_prompts is None else tuple(read_prompts(a.preview_prompts))
    job = DistillJob(Path(a.teacher), get_variant(a.variant), optional_path(a.out), data_spec(a), cfg,
                     LossWeights(a.l_sd, a.l_out, a.l_feat), a.resolution, a.dtype, a.overwrite, a.resume,
                     optional_path(a.cache_dir), parse_vram(a.vram), () if a.no_preview else shown, a.format == "diffusers",
                     optional_path(a.init), a.portable)
    r = run_stoppable(lambda progress: distill(job, progress, log=lambda m: print(f"sdkd: {m}", file=sys.stderr)))
    if r is None:
        return 130
    t = r.train
    if r.exported is None:  # a non-main process of a multi-process run
        return 0
    loss = ", ".join(f"{k} {v:.4g}" for k, v in t.losses.items())
    status = f"cancelled at step {t.steps}/{t.total}" if t.cancelled else f"{t.steps} steps"
    print(f"{r.exported.variant}: {status} on {r.samples} samples in {t.seconds:.0f}s ({loss}) -> {r.exported.checkpoint} "
          f"(+ {r.exported.yaml.name})")
    print_run_notes(t)
    return 0


def print_run_notes(t: TrainResult) -> None:
    """The CLI's lines after a training run: a missing preview, and what the run folder keeps."""
    if t.preview_note:
        print(f"sdkd: preview {t.preview_note}", file=sys.stderr)
    print(f"sdkd: {disk_note(t)}", file=sys.stderr)


def add_commands(sub) -> None:
    """`sdkd distill`."""
    from .variants import VARIANT_NAMES

    s = sub.add_parser("distill", help="distil a teacher into a BK-SDM student (prune + knowledge distillation)")
    s.add_argument("teacher", help="the SD1.x teacher: .safetensors, .ckpt or diffusers folder")
    s.add_argument("--variant", required=True, choices=VARIANT_NAMES, help="student architecture")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="folder of images with same-name .txt captions (or a metadata.jsonl)")
    src.add_argument("--prompts", help="data-free: a text file of prompts (one per line) the teacher draws from")
    src.add_argument("--self", dest="self_n", type=int, metavar="N", help="data-free: N built-in varied prompts")
    s.add_argument("--init", help="start from this student of --variant (rebased, public or earlier) instead of the pruned teacher")
    s.add_argument("--recipe", default="sdkd", choices=list(RECIPES),
                   help="where the defaults of --steps, --batch, --accum, --lr, --warmup, --resolution, --flip, --l-*, "
                        "--precision, --grad-checkpointing, --ema and --seed come from: sdkd (this tool's, as listed) or "
                        "bk-sdm (the BK-SDM paper's run: batch 64 x accum 4, lr 5e-5, EMA, fp16, checkpointing, flips, "
                        "50K steps, seed 1234); options given explicitly win")
    s.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    s.add_argument("--batch", type=int, help="micro-batch per process (default 1)")
    s.add_argument("--accum", type=int, help="gradient accumulation steps (global batch = batch x accum x processes; default 1)")
    s.add_argument("--lr", type=float, help="learning rate (default 5e-5, as BK-SDM)")
    s.add_argument("--warmup", type=int, help="linear warmup steps (default 0)")
    s.add_argument("--resolution", type=int, help="training image size in pixels (multiple of 64; default 512)")
    s.add_argument("--flip", action="store_true", default=None, help="also train on mirror images")
    s.add_argument("--l-sd", type=float, help="weight of the task loss (default 1)")
    s.add_argument("--l-out", type=float, help="weight of the output KD loss (default 1)")
    s.add_argument("--l-feat", type=float, help="weight of the feature KD loss (default 1)")
    s.add_argument("--negative", default="", help="data-free: negative prompt for the teacher's samples")
    s.add_argument("--guidance", type=float, default=7.5, help="data-free: CFG scale of the teacher's samples")
    s.add_argument("--sample-steps", type=int, default=25, help="data-free: sampler steps per teacher sample")
    s.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints")
    s.add_argument("--preview-every", type=int, default=0,
                   help="steps between preview grids (0: at the end only, drawn after the student is written)")
    s.add_argument("--preview-prompts", help="text file of preview prompts (default: the first 4 captions/prompts; "
                                             "on a CPU the grid is 2 prompts, at most 256 px and 10 steps)")
    s.add_argument("--no-preview", action="store_true", help="no preview grids")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="student autocast (default auto: bf16 where supported, else fp16 on CUDA; fp32 on CPU)")
    s.add_argument("--grad-checkpointing", action="store_true", default=None, help="trade compute for activation memory")
    s.add_argument("--optimizer", default="auto", choices=["auto", "adamw", "adamw8bit"],
                   help="auto: 8-bit AdamW when bitsandbytes is installed (CUDA), else AdamW")
    s.add_argument("--ema", action="store_true", default=None, help="keep an EMA of the student and export it")
    s.add_argument("--vram", help="'auto' or GiB: let the memory planner choose batch split, checkpointing and EMA")
    s.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto: accelerate's choice (GPU if any)")
    s.add_argument("--cache-dir", help="latent/text cache folder (default: inside the run folder <out>.run/, removed "
                                       "after a finished run unless --keep-state; a --cache-dir is never removed)")
    s.add_argument("--seed", type=int, help="default 0")
    add_output_options(s, "output path (default: <teacher>-bk-<variant>-kd.safetensors beside the teacher)", required=False,
                       dtype="exported weights dtype", overwrite="replace existing outputs and start the run over")
    s.add_argument("--format", default="safetensors", choices=["safetensors", "diffusers"],
                   help="diffusers: also write a diffusers folder beside the .safetensors")
    add_portable_option(s)
    add_run_options(s)
    s.set_defaults(fn=cmd_distill)


def add_run_options(s: argparse.ArgumentParser) -> None:
    """--resume and --keep-state: what a training command does with its run folder <out>.run/ (--overwrite, starting
    it over, comes with `add_output_options`)."""
    s.add_argument("--resume", action="store_true", help="continue the run in <out>.run/ from its last checkpoint")
    s.add_argument("--keep-state", action="store_true",
                   help="keep the resumable state (and the latent cache) in <out>.run/ after a finished run, to --resume "
                        "it for more steps later; by default a finished run keeps only the loss log and previews (an "
                        "interrupted one always keeps its state)")
