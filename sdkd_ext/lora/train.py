"""LoRA training on any SD1.x teacher or sdkd student, on the distillation engine, exported as a kohya LoRA.

Only what is LoRA-specific lives here: peft adapters on the UNet attention projections (and
optionally the text encoder's), the denoising objective, a memory estimate, and the export. The
data scan, latent/text cache, the loop (mixed precision, checkpoints, resume, cancel, progress,
loss log) and the planner's building blocks are the distillation engine's. Checkpoints hold the
adapter weights only: the loop saves the trainable parameters, and only the adapters train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..cache import CachedDataset, component_hash, text_key
from ..checkpoint import Source
from ..configs import VaeShape
from ..convert import TEXT, UNET
from ..data import FolderData, PromptData, derive_seed, scan_folder
from ..detect import open_trainable
from ..distill import (CPU, Encoder, Grid, fresh_run, frozen_dtype, make_preview, place, prepare_data, preview_texts,
                       run_cache)
from ..errors import SdkdError
from ..export import parse_dtype
from .file import Lora, kohya_metadata, write_kohya
from .names import Layout, layout_of_source
from .peft import TE_TARGETS, UNET_TARGETS, adapters_off, add_lora, lora_from_peft
from ..pipeline import build_text_encoder, build_unet, build_vae, tokenizer
from ..plan import Estimate, Settings, cache_phase, check_resolution, fit, training_parts
from ..progress import ProgressFn
from ..prune import checkpoint_path, teacher_metadata
from ..sampling import Sampler
from ..train import Run, TrainConfig, TrainResult, autocast_dtype, diffusion_inputs, make_accelerator, noise_scheduler, run_training


@dataclass(frozen=True)
class LoraSpec:
    """What to train: rank and alpha of every adapter, and whether the text encoder gets adapters too."""

    rank: int = 16
    alpha: float = 16.0
    text_encoder: bool = False

    def check(self) -> None:
        """Refuse a rank or alpha that cannot work, naming the option."""
        if self.rank < 1 or not self.alpha > 0:
            raise SdkdError(f"--rank must be at least 1 and --alpha positive (got rank {self.rank}, alpha {self.alpha:g})")

    def describe(self) -> str:
        """One line for logs and the run fingerprint."""
        return f"rank {self.rank}, alpha {self.alpha:g}, UNet attention" + (" + text encoder" if self.text_encoder else "")


class LoraNet(torch.nn.Module):
    """The adapted UNet (and text encoder) as one module, so the loop and DDP see one forward pass."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                ids: torch.Tensor | None = None):
        """UNet output; with token `ids` the (adapted) text encoder makes the conditioning first."""
        if ids is not None:
            encoder_hidden_states = self.text_encoder(ids)[0]
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the UNet's blocks (the text encoder's 77 tokens are cheap to keep)."""
        self.unet.enable_gradient_checkpointing()


class DenoisingObjective:
    """The standard LoRA loss: MSE between the predicted and the true noise, in fp32."""

    weights = {"task": 1.0}

    def __init__(self):
        self.scheduler = noise_scheduler()

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        noisy, t, noise = diffusion_inputs(batch["latents"], batch["seed"].tolist(), self.scheduler)
        cond = {"ids": batch["ids"]} if "ids" in batch else {"encoder_hidden_states": batch["text"]}
        return {"task": F.mse_loss(model(noisy, t, **cond).sample.float(), noise.float())}


class TokenDataset:
    """A cached dataset whose captions come as token ids (for text-encoder training) instead of frozen embeddings."""

    def __init__(self, data: CachedDataset, ids: dict[str, torch.Tensor]):
        self.data, self.ids = data, ids  # text cache key -> token ids

    def __len__(self) -> int:
        return len(self.data)

    def get(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        return {"latents": self.data.get(index, seed)["latents"], "ids": self.ids[self.data.items[index][1]]}


def token_ids(texts: list[str]) -> torch.Tensor:
    """CLIP token ids of `texts`, padded to the 77-token context."""
    tok = tokenizer()
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


def caption_ids(folder: Path, te_hash: str) -> dict[str, torch.Tensor]:
    """Token ids of every caption in `folder`, by the caption's text-cache key."""
    captions = list(dict.fromkeys(ex.caption for ex in scan_folder(folder).examples))
    return {text_key(c, te_hash): i for c, i in zip(captions, token_ids(captions))}


class Sampled(torch.nn.Module):
    """The LoRA model as the preview sampler calls a UNet, for one grid: with its adapters or without them (the base
    model), and with a trained text encoder the context made by it from the prompts' token `ids` (the sampler's
    batch is uncond rows, then as many prompts), once for all the sampler's steps."""

    def __init__(self, net: LoraNet, adapters: bool, ids: torch.Tensor | None = None):
        super().__init__()
        self.net, self.adapters, self.ids = net, adapters, ids
        self.context: torch.Tensor | None = None

    @property
    def config(self):
        """The UNet's diffusers config (the sampler reads its channels)."""
        return self.net.unet.config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        if not self.adapters:
            with adapters_off(self.net):
                return self.net.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
        if self.ids is not None and self.net.text_encoder is not None:
            if self.context is None:
                n = sample.shape[0] // 2
                ids = torch.cat([token_ids([""]).expand(n, -1), self.ids[:n]]).to(sample.device)
                self.context = self.net.text_encoder(ids)[0].to(encoder_hidden_states.dtype)
            encoder_hidden_states = self.context
        return self.net.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


def lora_preview(net: LoraNet, src: Source, shown: list[str], grid: Grid, device: torch.device) -> Callable[..., None]:
    """A preview function for a LoRA run: the base model without the LoRA (row 1, sampled once) above the model with
    it (row 2) at the same prompts (`shown`, embedded as the grid's) and seeds, as distillation's previews are drawn."""
    sampling = PromptData(())
    ids = token_ids(shown) if net.text_encoder is not None else None
    vae = place(build_vae(src), CPU, frozen_dtype(device))
    draw = make_preview(Sampled(net, False), vae, grid, Sampler(steps=sampling.sample_steps, guidance=sampling.guidance),
                        ("without LoRA", "LoRA"))

    def preview(model: torch.nn.Module, step: int, path: Path, progress: ProgressFn | None = None) -> None:
        draw(Sampled(model, True, ids), step, path, progress)

    return preview


def adapted(module: torch.nn.Module, spec: LoraSpec, targets: tuple[str, ...], dtype: torch.dtype,
            seed: int) -> torch.nn.Module:
    """`module` frozen in `dtype` with trainable fp32 LoRA adapters on `targets`, initialised from `seed`."""
    module.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # peft draws the initial A from the global generator
        torch.manual_seed(seed)
        add_lora(module, spec.rank, spec.alpha, targets)
    for p in module.parameters():
        p.data = p.data.to(torch.float32 if p.requires_grad else dtype)
    return module


# ---- memory --------------------------------------------------------------------------------------------

def lora_params(layout: Layout, spec: LoraSpec) -> int:
    """Number of adapter parameters: rank x (in + out) per targeted layer."""
    unet = tuple("." + t for t in UNET_TARGETS)
    te = tuple("." + t for t in TE_TARGETS) if spec.text_encoder else ()
    return sum(spec.rank * (s[0] + s[1]) for m, s in layout.shapes.items()
               if (m.startswith(UNET) and m.endswith(unet)) or (m.startswith(TEXT) and te and m.endswith(te)))


def estimate_lora(layout: Layout, spec: LoraSpec, resolution: int, settings: Settings) -> Estimate:
    """Estimated peak memory, per part, of LoRA training with `settings`: the planner's parts for a UNet with
    only the adapters trainable, plus the frozen text encoder when its adapters train too."""
    topo, half = layout.topology, settings.precision != "fp32"
    parts = training_parts(topo, resolution, settings, trainable=lora_params(layout, spec))
    if spec.text_encoder:
        te_params = sum(s[0] * (s[1] if len(s) > 1 else 1) for m, s in layout.shapes.items() if m.startswith(TEXT))
        parts["text encoder (frozen)"] = te_params * (2.0 if half else 4.0)
    return Estimate(settings, parts, cache_phase(resolution, VaeShape(), topo.context_dim, half))


def plan_lora(cfg: TrainConfig, vram: float | str | None, layout: Layout, spec: LoraSpec, resolution: int,
              device: torch.device, say: Callable[[str], None]) -> TrainConfig:
    """`cfg` with micro-batch/accumulation, checkpointing and EMA chosen to fit `vram` ("auto" or GiB); as is without."""
    return fit(cfg, vram, device, lambda s: estimate_lora(layout, spec, resolution, s), say,
               f"LoRA training at {resolution} px", "lower --resolution or --rank, or install bitsandbytes for 8-bit AdamW")


# ---- the job ---------------------------------------------------------------------------------------------

@dataclass
class LoraResult:
    """A LoRA run's outcome."""

    path: Path | None  # None in the non-main processes of a multi-process run
    train: TrainResult
    run_dir: Path
    samples: int
    modules: int


@dataclass(frozen=True)
class LoraJob:
    """One LoRA run, as every front end builds it: the model it is for, the captioned image folder, the adapters, the
    loop's settings, and how the LoRA is written."""

    base: Path  # the model the LoRA is for (SD1.x teacher or BK-SDM student)
    data: Path
    out: Path
    lora: LoraSpec = LoraSpec()
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    resolution: int = 512
    flip: bool = False
    dtype: str = "fp16"  # the exported LoRA's weights
    overwrite: bool = False
    resume: bool = False
    cache_dir: Path | None = None
    vram: float | str | None = None
    preview_prompts: tuple[str, ...] | None = None  # None: the first captions


def train_lora(job: LoraJob, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> LoraResult:
    """Train a LoRA for `job.base` (teacher or student) on a captioned image folder; export a kohya LoRA for its topology.

    With `preview_every` set, a sample grid (without / with the LoRA, `job.preview_prompts` or the first captions) is
    drawn every that many steps and at the end, into the run folder's previews, as distillation draws its own.

    A progress callback raising `Cancelled` stops after the current step with an exported LoRA and a
    resumable run (`job.resume`)."""
    cfg, spec, resolution, dtype = job.train, job.lora, job.resolution, job.dtype
    cfg.check()
    spec.check()
    check_resolution(resolution)
    parse_dtype(dtype)
    acc = make_accelerator(cfg.device)
    device = acc.device
    cfg.check_device(device)  # every setting is checked before the base is read, the cache built or a model loaded
    say = log or (lambda msg: None)
    path = Path(job.base).expanduser()
    out_path = checkpoint_path(job.out)
    if out_path.resolve() == path.resolve():
        raise SdkdError(f"--out {out_path} is the base model itself; sdkd never overwrites its input")
    run_dir = fresh_run(out_path, job.resume, job.overwrite)
    src, info = open_trainable(path, path.name, "LoRA training needs")
    layout = layout_of_source(src, info.topology)
    cfg = plan_lora(cfg, job.vram, layout, spec, resolution, device, say)
    base_dtype = autocast_dtype(cfg.precision, device) or torch.float32
    provenance = teacher_metadata(path)
    folder = FolderData(Path(job.data).expanduser(), flip=job.flip)
    wanted = cfg.preview_every and acc.is_main_process
    given = None if job.preview_prompts is None else list(job.preview_prompts)
    shown = preview_texts([ex.caption for ex in scan_folder(folder.folder).examples], given) if wanted else []
    ctx = Encoder(src, run_cache(job.cache_dir, run_dir), resolution, cfg.seed, device, say,
                  progress if acc.is_main_process else None, provenance)
    with acc.main_process_first():
        dataset, previews, uncond = prepare_data(folder, None, shown, ctx)
    unet = adapted(build_unet(src, info), spec, UNET_TARGETS, base_dtype, derive_seed(cfg.seed, "lora-unet"))
    text_encoder = (adapted(build_text_encoder(src), spec, TE_TARGETS, base_dtype, derive_seed(cfg.seed, "lora-te"))
                    if spec.text_encoder else None)
    train_data = TokenDataset(dataset, caption_ids(folder.folder, component_hash(src, TEXT))) if text_encoder else dataset
    sha = provenance()["sdkd_teacher_sha256"]
    fingerprint = {"base": f"{path.name} (sha256 {sha[:16]})", "lora": spec.describe(),
                   "data": f"{folder.describe()}, {len(dataset)} samples at {resolution} px [{dataset.fingerprint()[:16]}]"}

    def on_export(model: LoraNet, result: TrainResult) -> Lora:
        lora = lora_from_peft(layout, model.unet, model.text_encoder)
        extra = {"sdkd_base": path.name, "sdkd_base_sha256": sha, "ss_resolution": f"({resolution}, {resolution})",
                 "ss_steps": str(result.steps), "ss_learning_rate": f"{cfg.lr:g}", "sdkd_lora_status":
                 "cancelled" if result.cancelled else "complete", "sdkd_lora_data": fingerprint["data"][:300],
                 "ss_num_train_images": str(len(dataset)), "sdkd_lora_final_loss": f"{result.losses.get('loss', float('nan')):.6g}"}
        write_kohya(lora, out_path, kohya_metadata(lora, info.variant, extra), overwrite=True, dtype=parse_dtype(dtype))
        return lora

    net = LoraNet(unet, text_encoder)
    preview = (lora_preview(net, src, shown, Grid.of(previews, uncond, cfg.seed, ctx.latent,
                                                     autocast_dtype(cfg.precision, device)), device)
               if previews is not None else None)
    run = Run(run_dir, fingerprint, job.resume, job.overwrite, "lora", acc)
    result = run_training(DenoisingObjective(), net, train_data, cfg, run, progress, on_export, preview)
    exported = result.exported
    return LoraResult(out_path if exported is not None else None, result, run_dir, len(dataset),
                      len(exported.modules) if exported is not None else 0)
