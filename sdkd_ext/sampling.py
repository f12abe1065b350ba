"""sdkd's own text-to-image sampling: a typed sampler spec, its diffusers scheduler, and one seeded sampling loop.

The schedulers are built from SD1.5's own scheduler config with the settings the hosts use:
Euler with linearly spaced timesteps (A1111's and ComfyUI's `euler` on the normal schedule), DDIM
with SD1.5's leading spacing and offset 1 (A1111's DDIM), LCM as diffusers' `LCMScheduler` for
lcm-lora-sdv1-5 (50 original steps t = 19, 39, ..., 999, boundary scalings with timestep scale 10;
its schedule is ComfyUI's `lcm` sampler on the `simple` schedule, e.g. 999, 759, 499, 259 at 4 steps),
and DPM++ 2M, which sdkd used before there was a choice and still the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import derive_seed, seeded_randn
from .errors import SdkdError
from .progress import ProgressFn, report

# sampler name -> (diffusers scheduler class, settings over SD1.5's scheduler config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "ddim": ("DDIMScheduler", {"timestep_spacing": "leading"}),
    "lcm": ("LCMScheduler", {"original_inference_steps": 50}),
}
SAMPLER_NAMES = tuple(SCHEDULERS)
DEFAULT_SAMPLER = "dpmpp_2m"
MAX_STEPS = 50  # LCM's schedule is a subset of its 50 original steps; the others gain nothing beyond


@dataclass(frozen=True)
class Flags:
    """The names a front end gives the three settings, for error messages."""

    sampler: str = "--sampler"
    steps: str = "--steps"
    guidance: str = "--guidance"


CLI_FLAGS = Flags()


@dataclass(frozen=True)
class Sampler:
    """How to sample: which sampler, how many steps, which classifier-free guidance scale (1: no guidance)."""

    name: str = DEFAULT_SAMPLER
    steps: int = 25
    guidance: float = 7.5

    def __post_init__(self) -> None:
        check(self.name, self.steps, self.guidance, CLI_FLAGS)

    @property
    def guided(self) -> bool:
        """Whether the UNet also runs unconditionally (guidance 1 is the conditional prediction alone)."""
        return self.guidance > 1

    def describe(self) -> str:
        """One line for logs, reports and metadata."""
        return f"{self.name}, {self.steps} steps, cfg {self.guidance:g}"


def check(name: str, steps: int, guidance: float, flags: Flags = CLI_FLAGS) -> None:
    """Refuse an unknown sampler, steps outside 1-50 or a guidance scale below 1, naming the setting as `flags` do."""
    if name not in SCHEDULERS:
        raise SdkdError(f"{flags.sampler} {name}: unknown sampler; choose one of {', '.join(SAMPLER_NAMES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise SdkdError(f"{flags.steps} {steps}: choose between 1 and {MAX_STEPS} sampler steps")
    if not math.isfinite(guidance) or guidance < 1:
        raise SdkdError(f"{flags.guidance} {guidance:g}: the guidance scale must be 1 or more (1: no guidance, "
                        "as for LCM LoRAs; 7.5: SD1.5's usual)")


def sampler(name: str, steps: int, guidance: float, flags: Flags = CLI_FLAGS) -> Sampler:
    """A checked `Sampler`, its errors naming the settings as `flags` do (e.g. --reference-steps)."""
    check(name, steps, guidance, flags)
    return Sampler(name, steps, guidance)


def add_sampler_options(parser, prefix: str = "", what: str = "") -> None:
    """--sampler, --steps and --guidance (or --PREFIX-sampler ...) on a command, `what` naming whose settings they are."""
    for_ = f" for {what}" if what else ""
    parser.add_argument(f"--{prefix}sampler", choices=SAMPLER_NAMES, default=DEFAULT_SAMPLER,
                        help=f"sampler{for_} (default {DEFAULT_SAMPLER}; lcm: 4-8 steps at guidance 1 with an LCM LoRA)")
    parser.add_argument(f"--{prefix}steps", type=int, default=25, help=f"sampler steps{for_}, 1-{MAX_STEPS} (default 25)")
    parser.add_argument(f"--{prefix}guidance", type=float, default=7.5,
                        help=f"classifier-free guidance scale{for_} (default 7.5; 1: none, one UNet pass per step)")


def flags(prefix: str = "") -> Flags:
    """The flags `add_sampler_options(parser, prefix)` adds: --sampler ... or --reference-sampler ..."""
    return Flags(f"--{prefix}sampler", f"--{prefix}steps", f"--{prefix}guidance")


def from_args(a, prefix: str = "") -> Sampler:
    """The checked `Sampler` of parsed `add_sampler_options(parser, prefix)` arguments, errors naming those flags."""
    key = prefix.replace("-", "_")
    return sampler(getattr(a, f"{key}sampler"), getattr(a, f"{key}steps"), getattr(a, f"{key}guidance"), flags(prefix))


def scheduler_for(spec: Sampler):
    """A fresh diffusers scheduler for `spec`, on SD1.5's noise schedule."""
    import inspect

    import diffusers

    from .configs import sd15

    name, settings = SCHEDULERS[spec.name]
    cls = getattr(diffusers, name)
    takes = inspect.signature(cls.__init__).parameters  # SD1.5's file is PNDM's: leave out what this class lacks
    config = {k: v for k, v in sd15("scheduler").items() if k in takes}
    return cls.from_config({**config, **settings})


def _step_noise(seeds: list[int], step: int) -> dict:
    """Per-sample generators for a scheduler step that injects noise (LCM re-noises between steps): each sample's
    noise comes from its own seed and the step, so it does not depend on the batch it is drawn in."""
    return {"generator": [torch.Generator("cpu").manual_seed(derive_seed(s, "step noise", step)) for s in seeds]}


@torch.no_grad()
def sample_latents(unet: torch.nn.Module, spec: Sampler, cond: torch.Tensor, uncond: torch.Tensor, seeds: list[int],
                   latent_size: int, channels: int = 4, progress: ProgressFn | None = None) -> torch.Tensor:
    """Text-to-image latents (UNet space, unscaled by the VAE factor) for B prompts, each sample seeded by its own seed.

    `cond` is B x 77 x C; `uncond` one embedding (1 x 77 x C) or B of them, unused at guidance 1 (one UNet pass
    per step instead of a doubled batch); `progress` hears of each step."""
    p = next(unet.parameters())
    device, dtype = p.device, p.dtype
    sched = scheduler_for(spec)
    sched.set_timesteps(spec.steps, device=device)
    shape = (channels, latent_size, latent_size)
    latents = seeded_randn(seeds, shape, device, torch.float32) * sched.init_noise_sigma
    n = len(seeds)
    context = (torch.cat([uncond.expand(n, -1, -1), cond]) if spec.guided else cond).to(device, dtype)
    for i, t in enumerate(sched.timesteps):
        x = sched.scale_model_input(torch.cat([latents, latents]) if spec.guided else latents, t)
        eps = unet(x.to(dtype), t, encoder_hidden_states=context).sample.float()
        if spec.guided:
            e_u, e_c = eps.chunk(2)
            eps = e_u + spec.guidance * (e_c - e_u)
        latents = sched.step(eps, t, latents, **_step_noise(seeds, i)).prev_sample
        report(progress, "generate", i + 1, spec.steps)
    return latents
