"""Train sdkd's built-in demo teacher: a small SD1.5-topology model that really draws the shapes dataset.

    python tools/train_demo_teacher.py --out sdkd_ext/models/demo-teacher.safetensors --overwrite

Two stages through the generic training loop (`sdkd_ext.train.run_training`), all seeded:
1. the VAE (64x64 RGB <-> 4x8x8 latents, SD's 8x downsampling over 4 levels) learns to reconstruct the
   rendered training images; its latents are then shifted and scaled (folded into `quant_conv` and
   `post_quant_conv`) so that SD's scaling factor gives them unit variance;
2. the UNet (SD1.5's blocks at small widths) and the CLIP text encoder (SD1.5's vocabulary and context
   length, 2 small layers) learn to denoise those latents from the captions, tokenized by the CLIP
   tokenizer sdkd ships, with classifier-free-guidance dropout.
The result goes through the core exporter (LDM names, fp16, topology metadata) with a model card beside
it (`<out>.md`) that records the command, seed, time and the fidelity scores on held-out captions.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdkd_ext.checkpoint import DictSource, open_model  # noqa: E402
from sdkd_ext.configs import VaeShape, sd15  # noqa: E402
from sdkd_ext.convert import TEXT, UNET, VAE  # noqa: E402
from sdkd_ext.data import derive_seed, seeded_randn  # noqa: E402
from sdkd_ext.export import atomic_outputs  # noqa: E402
from sdkd_ext.fidelity import CHANCE, GUIDANCE, Fidelity, FidelitySpec, fidelity, write  # noqa: E402
from sdkd_ext.pipeline import tokenizer  # noqa: E402
from sdkd_ext.progress import tqdm_progress  # noqa: E402
from sdkd_ext.prune import PruneJob, Target, export_model, prune  # noqa: E402
from sdkd_ext.shapes import ATTRIBUTES, caption, render, split_specs  # noqa: E402
from sdkd_ext.tiny import make_text_encoder, make_unet, make_vae, to_ldm, unet_topology  # noqa: E402
from sdkd_ext.train import STATE_FILE, Run, TrainConfig, diffusion_inputs, noise_scheduler, run_training, unwrap  # noqa: E402
from sdkd_ext.variants import VARIANTS, Topology  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (with the seed)."""

    width: int = 24  # UNet base channels (SD1.5: 320); channel_mult, attention, blocks as SD1.5
    norm_groups: int = 8
    heads: int = 3  # attention heads (head width 8/16/32 over the three attention levels)
    text_hidden: int = 32  # CLIP text width = the UNet's cross-attention width
    text_layers: int = 2
    vae: VaeShape = VaeShape(ch=32, ch_mult=(1, 1, 2, 2), layers=2, norm_groups=8)
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_crop: int = 32  # the VAE trains on seeded 32x32 windows (it is convolutional): a quarter of the cost
    vae_lr: float = 3e-4  # 1e-3 and above collapse the latents to a few colours
    vae_kl: float = 1e-6  # weight of the per-element KL term: as in SD, only keeps the posterior variance in check
    vae_shape_weight: float = 10.0  # L1 weight of shape pixels (a tenth of the picture, otherwise learnt last)
    unet_steps: int = 2000
    unet_batch: int = 128
    unet_lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.995
    cfg_dropout: float = 0.1  # share of captions replaced by the empty prompt (classifier-free guidance)

    def topology(self) -> Topology:
        """The UNet topology: SD1.5's, at this recipe's widths."""
        return replace(unet_topology(self.width, self.text_hidden), norm_groups=self.norm_groups, num_heads=self.heads)


class Columns:
    """Equal-length tensors as a training dataset (`train.Dataset`): sample i is row i of each."""

    def __init__(self, **columns: torch.Tensor):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def get(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.columns.items()}


def crops(x: torch.Tensor, seeds: list[int], size: int) -> torch.Tensor:
    """One `size`-pixel window per image, at an offset on the 8-pixel latent grid drawn from the image's seed."""
    cells = (x.shape[-1] - size) // 8 + 1
    out = []
    for image, seed in zip(x, seeds):
        row, col = divmod(derive_seed(seed, "crop") % cells ** 2, cells)
        out.append(image[:, 8 * row:8 * row + size, 8 * col:8 * col + size])
    return torch.stack(out)


def shape_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights: `weight` where a pixel differs from its image's corner (always background), else 1."""
    return 1.0 + (weight - 1.0) * ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1)


class VaeObjective:
    """Reconstruction (shape-weighted L1 on a posterior sample's decoding, on seeded crops) plus a small KL term."""

    def __init__(self, kl: float, crop: int, shape_weight: float):
        self.weights = {"recon": 1.0, "kl": kl}
        self.crop, self.shape_weight = crop, shape_weight

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vae = unwrap(model)
        seeds = batch["seed"].tolist()
        image = batch["image"]
        x = crops(image, seeds, self.crop)
        w = crops(shape_weights(image, self.shape_weight), seeds, self.crop)
        posterior = vae.encode(x).latent_dist
        eps = seeded_randn([derive_seed(s, "posterior") for s in seeds], tuple(posterior.mean.shape[1:]), x.device)
        y = vae.decode(posterior.mean + posterior.std * eps).sample
        return {"recon": (w * (y - x).abs()).mean(), "kl": posterior.kl().mean() / posterior.mean[0].numel()}


class TextToImage(torch.nn.Module):
    """The UNet and text encoder trained together (one module for the training loop)."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder


class DenoiseObjective:
    """SD's epsilon loss on text-conditioned latents, with per-sample seeded caption dropout for CFG."""

    def __init__(self, uncond_ids: torch.Tensor, dropout: float):
        self.weights = {"eps": 1.0}
        self.uncond, self.dropout = uncond_ids, dropout
        self.scheduler = noise_scheduler()

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = unwrap(model)
        seeds = batch["seed"].tolist()
        drop = torch.tensor([derive_seed(s, "cfg") % 10_000 < self.dropout * 10_000 for s in seeds], device=batch["ids"].device)
        ids = torch.where(drop[:, None], self.uncond.to(batch["ids"].device), batch["ids"])
        text = m.text_encoder(ids)[0]
        noisy, t, noise = diffusion_inputs(batch["latents"], seeds, self.scheduler)
        return {"eps": F.mse_loss(m.unet(noisy, t, encoder_hidden_states=text).sample, noise)}


def images(specs: list) -> torch.Tensor:
    """The rendered pictures of `specs` as an N x 3 x 64 x 64 tensor in [-1, 1] (the VAE's range)."""
    arr = np.stack([np.asarray(render(s), dtype=np.float32) for s in specs])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def token_ids(texts: list[str]) -> torch.Tensor:
    """CLIP token ids, padded to 77 exactly as the diffusers pipeline pads prompts."""
    tok = tokenizer()
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode(vae: torch.nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior means of `x` (the VAE's raw latent space)."""
    return torch.cat([vae.encode(x[i:i + batch]).latent_dist.mean for i in range(0, len(x), batch)])


@torch.no_grad()
def normalise_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Fold a per-channel shift and one global scale into the VAE so `scaling_factor * z` is zero-mean, unit-variance.

    The encoder's `quant_conv` (1x1) then emits (z - m) * k and the decoder's `post_quant_conv` takes it back:
    an exact reparametrisation. Returns the latents as the UNet sees them (scaled)."""
    scaling = float(sd15("vae")["scaling_factor"])
    m = latents.mean(dim=(0, 2, 3))
    k = 1.0 / (scaling * float((latents - m[None, :, None, None]).std()))
    c = len(m)
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] *= k
    q.bias[:c] = (q.bias[:c] - m) * k
    q.bias[c:] += 2 * math.log(k)  # log-variance of the scaled posterior
    p.bias += p.weight[:, :, 0, 0] @ m
    p.weight /= k
    return (latents - m[None, :, None, None]) * k * scaling


def train_vae(recipe: Recipe, x: torch.Tensor, seed: int, work: Path, overwrite: bool) -> torch.nn.Module:
    """Stage 1: the VAE, trained on the rendered training images."""
    vae = make_vae(recipe.vae, seed)
    cfg = TrainConfig(steps=recipe.vae_steps, batch=recipe.vae_batch, lr=recipe.vae_lr, warmup=recipe.warmup, seed=seed,
                      device="cpu", checkpoint_every=max(1, recipe.vae_steps // 4))
    run = Run(work / "vae", _fingerprint(recipe, seed, "vae"), _resumable(work / "vae", overwrite), overwrite, "vae")
    run_training(VaeObjective(recipe.vae_kl, recipe.vae_crop, recipe.vae_shape_weight), vae, Columns(image=x), cfg, run,
                 progress=tqdm_progress())
    return vae.eval()


def train_denoiser(recipe: Recipe, latents: torch.Tensor, ids: torch.Tensor, seed: int, work: Path,
                   overwrite: bool) -> TextToImage:
    """Stage 2: the UNet and text encoder, on the normalised latents of the training images and their captions."""
    model = TextToImage(make_unet(recipe.topology(), seed + 1),
                        make_text_encoder(recipe.text_hidden, recipe.text_layers, seed + 2))
    cfg = TrainConfig(steps=recipe.unet_steps, batch=recipe.unet_batch, lr=recipe.unet_lr, warmup=recipe.warmup, seed=seed,
                      ema=True, ema_decay=recipe.ema_decay, device="cpu", checkpoint_every=max(1, recipe.unet_steps // 8))
    averaged: dict[str, torch.Tensor] = {}
    run = Run(work / "unet", _fingerprint(recipe, seed, ""), _resumable(work / "unet", overwrite), overwrite, "unet")
    run_training(DenoiseObjective(token_ids([""])[0], recipe.cfg_dropout), model, Columns(latents=latents, ids=ids), cfg,
                 run, progress=tqdm_progress(),
                 on_export=lambda m, r: averaged.update({k: v.clone() for k, v in m.state_dict().items()}))
    model.load_state_dict(averaged)  # the EMA weights (the loop applies them only while exporting)
    return model.eval()


def _fingerprint(recipe: Recipe, seed: int, prefix: str) -> dict[str, str]:
    """What a resumed stage must share with the run it continues: the seed and the recipe fields named `prefix*`."""
    return {"recipe": repr({k: v for k, v in asdict(recipe).items() if k.startswith(prefix)}), "seed": str(seed)}


def _resumable(run_dir: Path, overwrite: bool) -> bool:
    """Continue an interrupted stage unless starting over was asked for."""
    return not overwrite and (run_dir / STATE_FILE).is_file()


def evaluate(teacher: Path, work: Path, n: int) -> Fidelity:
    """The fidelity check on `n` held-out captions: the teacher and its students pruned to every variant."""
    students = [prune(PruneJob(teacher, v, work / f"demo-bk-{v.name}", overwrite=True)).checkpoint
                for v in VARIANTS.values()]
    result = fidelity(teacher, students, FidelitySpec(n), tqdm_progress())
    write(result, work / "report", overwrite=True)
    return result


def weak_attributes(result: Fidelity) -> str:
    """A line naming the attributes the teacher draws at no more than 1.5x chance (the demo cannot show those)."""
    weak = [f"{a} ({result.accuracy[0][a]:.2f}, chance {CHANCE[a]:.2f})" for a in ATTRIBUTES
            if result.accuracy[0][a] <= 1.5 * CHANCE[a]]
    return ("Not learned (at most 1.5x chance): " + ", ".join(weak) + ". The demo's pictures follow the other words of "
            "the caption; for these the teacher draws what its starting noise suggests.") if weak else \
        "Every attribute is drawn well above chance."


def card(recipe: Recipe, command: str, seed: int, threads: int, times: dict[str, tuple[float, float]], path: Path,
         result: Fidelity) -> str:
    """The model card: what the file is, how it was trained (command, seed, time) and its scores."""
    src = open_model(path)
    params = {name: sum(math.prod(src.shape(k)) for k in src.keys() if k.startswith(prefix))
              for name, prefix in (("UNet", UNET), ("VAE", VAE), ("text encoder", TEXT))}
    t, settings = recipe.topology(), result.comparison.settings
    total_wall, total_cpu = (sum(v[i] for v in times.values()) for i in (0, 1))
    train, held = split_specs()
    return f"""# sdkd demo teacher

A small text-to-image model with Stable Diffusion 1.5's exact block topology, trained by sdkd from
scratch to draw the procedural shapes dataset (`sdkd_ext/shapes.py`) at 64x64: "{caption(held[0])}".
It exists so `sdkd demo`, the tests and newcomers can watch pruning and distillation work on a
laptop CPU without downloading SD1.5. Every sdkd command accepts it by the short name `demo`
(e.g. `sdkd prune demo --variant tiny`, `sdkd generate demo --size 64 --guidance {GUIDANCE:g} --prompt "..." --out shapes.png`).

## The file

- `{path.name}`: {path.stat().st_size / 1e6:.2f} MB, fp16, one community-format single file (LDM key names), written by
  sdkd's exporter with its `sdkd_topology` and `sdkd_vae` metadata.
- Parameters: {", ".join(f"{k} {v:,}" for k, v in params.items())}; {sum(params.values()):,} in all.
- UNet: SD1.5's blocks ({t.levels} levels, channel_mult {t.channel_mult}, {t.layers_per_block} resnets per down level,
  attention on {sum(t.attention)} levels, middle block) at base width {t.model_channels} (SD1.5: 320),
  {t.norm_groups} GroupNorm groups, {t.num_heads} attention heads, cross-attention width {t.context_dim}.
- VAE: SD's AutoencoderKL blocks, widths {recipe.vae.ch} x {recipe.vae.ch_mult}, {recipe.vae.layers} resnets per level,
  {recipe.vae.norm_groups} GroupNorm groups; 64x64 RGB <-> 4x8x8 latents (SD's 8x downsampling), latents shifted and scaled
  so SD's scaling factor 0.18215 gives them unit variance.
- Text encoder: CLIP text model with SD1.5's vocabulary (49,408 tokens) and 77-token context, width {recipe.text_hidden},
  {recipe.text_layers} layers, used with the CLIP tokenizer sdkd ships.
- Not for A1111's own loader: its ldm code fixes 32 GroupNorm groups. diffusers and sdkd load it.

## Training

    {command}

Seed {seed}, {threads} CPU thread(s), torch {torch.__version__}, {platform.processor() or platform.machine()}.
Data: every spec of `shapes.split_specs()` except the held-out ones ({len(train)} captions; the
{len(held)} held-out captions are never seen).
1. VAE: {recipe.vae_steps} AdamW steps, batch {recipe.vae_batch} seeded {recipe.vae_crop}x{recipe.vae_crop} crops,
   lr {recipe.vae_lr:g}, L1 reconstruction + {recipe.vae_kl:g} x KL.
2. UNet + text encoder together: {recipe.unet_steps} AdamW steps, batch {recipe.unet_batch}, lr {recipe.unet_lr:g}
   ({recipe.warmup} warmup steps), EMA {recipe.ema_decay}, SD's noise schedule and epsilon loss, captions dropped to ""
   {recipe.cfg_dropout:.0%} of the time (classifier-free guidance).

Time (wall / CPU seconds): {", ".join(f"{k} {w:.0f} / {c:.0f}" for k, (w, c) in times.items())};
total {total_wall / 60:.1f} min wall, {total_cpu / 60:.1f} min CPU.

## Scores

sdkd's fidelity check (`sdkd_ext.fidelity`): {len(settings["prompts"])} held-out captions x seeds {settings["seeds"]},
{settings["steps"]} DPM-Solver++ steps, guidance {settings["guidance"]:g}, 64 px. Accuracy is the shapes scorer's
per-attribute reading of each image; the students are the teacher pruned (not distilled) to each BK-SDM
variant, scored also by their agreement with the teacher's images.

{result.table()}

{weak_attributes(result)}
"""


def main(argv: list[str] | None = None) -> int:
    """Train, export, evaluate and describe the demo teacher."""
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--out", default=str(ROOT / "sdkd_ext" / "models" / "demo-teacher.safetensors"))
    a.add_argument("--work", default="build/demo-teacher", help="run folders (resumable state, loss logs, evaluation)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=2, help="CPU threads")
    a.add_argument("--vae-steps", type=int, default=Recipe.vae_steps)
    a.add_argument("--unet-steps", type=int, default=Recipe.unet_steps)
    a.add_argument("--eval-captions", type=int, default=48, help="held-out captions of the fidelity check")
    a.add_argument("--overwrite", action="store_true", help="replace the output and start both stages over")
    args = a.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    recipe = Recipe(vae_steps=args.vae_steps, unet_steps=args.unet_steps)
    work, out = Path(args.work), Path(args.out)
    times: dict[str, tuple[float, float]] = {}
    clock = (time.perf_counter(), time.process_time())

    def lap(name: str) -> None:
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        times[name] = (now[0] - clock[0], now[1] - clock[1])
        clock = now

    train_specs = split_specs()[0]
    x = images(train_specs)
    vae = train_vae(recipe, x, args.seed, work, args.overwrite)
    latents = normalise_latents(vae, encode(vae, x))
    lap("VAE")
    model = train_denoiser(recipe, latents, token_ids([caption(s) for s in train_specs]), args.seed, work, args.overwrite)
    lap("UNet + text encoder")
    tensors = to_ldm(model.unet, vae, model.text_encoder)
    extra = {"sdkd_note": "sdkd demo teacher: coloured shapes at 64x64 (see demo-teacher.md)",
             "sdkd_recipe": repr(asdict(recipe)), "sdkd_seed": str(args.seed)}
    exported = export_model(DictSource(tensors, recipe.vae.metadata()), {k: k for k in tensors}, recipe.topology(),
                            "teacher", Target(out, "fp16", args.overwrite), extra)
    result = evaluate(exported.checkpoint, work / "eval", args.eval_captions)
    lap("evaluation")
    command = "python tools/train_demo_teacher.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with atomic_outputs(args.overwrite) as outs:
        outs.temp(out.with_suffix(".md")).write_text(card(recipe, command, args.seed, args.threads, times,
                                                          exported.checkpoint, result))
    print(f"{exported.checkpoint} ({exported.checkpoint.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.md')}; "
          f"{sum(w for w, _ in times.values()) / 60:.1f} min\n{result.table()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
