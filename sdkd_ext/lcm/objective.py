"""Latent consistency distillation (LCM-LoRA) as an objective of sdkd's training loop.

For a clean latent x0, a timestep t_n on a coarse solver grid (default 50 of the 1000 training
steps) and noise, the online model f maps x_{t_n} straight to a clean latent with the consistency
parametrisation f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t), where c_skip(0) = 1 and c_out(0) = 0
(the boundary condition: f is the identity at t = 0). The teacher takes one DDIM step with
classifier-free guidance baked in, x_{t_n} -> x_{t_{n-1}}, and the target is f at that point under
no gradient (for a LoRA the target network is the model itself, as in the LCM-LoRA paper). The
loss is the pseudo-Huber distance sqrt(d^2 + c^2) - c, averaged in fp32.

The teacher may be another model than the one trained: a BK-SDM student then learns to jump along
its community teacher's trajectory (KD and step reduction in one run).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..data import derive_seed, seeded_randn
from ..errors import SdkdError
from ..train import noise_scheduler

SIGMA_DATA = 0.5  # the consistency models' data scale
TIMESTEP_SCALING = 10.0  # as LCM: makes c_skip fall to ~0 within a few training steps of t = 0


@dataclass(frozen=True)
class ConsistencySpec:
    """What the consistency objective computes: the teacher's guidance range (CFG scale, as samplers spell it),
    the skipping-step solver's grid and the pseudo-Huber constant."""

    guidance: tuple[float, float] = (7.5, 7.5)  # CFG scale of the teacher's ODE step: fixed, or a range drawn per sample
    solver_steps: int = 50  # DDIM grid the teacher steps along (1000 / 50 = 20 training timesteps per jump)
    huber_c: float = 0.001

    def check(self) -> None:
        """Refuse a guidance range or solver grid that cannot work, naming the option."""
        lo, hi = self.guidance
        if not 1.0 <= lo <= hi:
            raise SdkdError(f"--guidance {lo:g}:{hi:g}: the teacher's CFG scale must be at least 1, low end first "
                            "(e.g. --guidance 7.5 or --guidance 5:9)")
        if not 2 <= self.solver_steps <= 1000:
            raise SdkdError(f"--solver-steps must be between 2 and 1000 (got {self.solver_steps})")
        if not self.huber_c > 0:
            raise SdkdError(f"--huber-c must be positive (got {self.huber_c:g})")

    def describe(self) -> str:
        """One line for logs and the run fingerprint."""
        lo, hi = self.guidance
        g = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        return f"teacher cfg {g}, {self.solver_steps}-step DDIM solver, pseudo-Huber c {self.huber_c:g}"


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency parametrisation at integer timesteps `t` (c_skip(0) = 1, c_out(0) = 0)."""
    s = t.double() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
    c_out = s / (s ** 2 + SIGMA_DATA ** 2).sqrt()
    return c_skip.float(), c_out.float()


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector shaped to broadcast over a B x C x H x W batch."""
    return v.to(like.device, torch.float32).view(-1, *([1] * (like.dim() - 1)))


class SolverGrid:
    """SD1.5's noise schedule on the coarse DDIM grid the teacher steps along: t_n, t_{n-1} and their alphas."""

    def __init__(self, solver_steps: int):
        sched = noise_scheduler()
        self.alphas = sched.alphas_cumprod.float()  # abar_t for t = 0..999
        n = sched.config.num_train_timesteps
        self.jump = n // solver_steps
        self.timesteps = torch.arange(1, solver_steps + 1) * self.jump - 1  # 19, 39, ..., 999 for 50 steps

    def x0(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latent an epsilon prediction implies at timestep `t`."""
        a = _per_sample(self.alphas[t.cpu()], x)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def consistency(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = c_skip x + c_out x0_hat: the model's jump to a clean latent (the input itself at t = 0)."""
        c_skip, c_out = boundary_scalings(t.cpu())
        return _per_sample(c_skip, x) * x + _per_sample(c_out, x) * self.x0(x, eps, t)

    def ddim_step(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step from `t` to `t_prev` along an epsilon prediction."""
        a_prev = _per_sample(self.alphas[t_prev.cpu()], x)
        return a_prev.sqrt() * self.x0(x, eps, t) + (1 - a_prev).sqrt() * eps


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean of sqrt((a - b)^2 + c^2) - c in fp32: L2-like near zero, L1-like for outliers."""
    d = a.float() - b.float()
    return (torch.sqrt(d * d + c * c) - c).mean()


UNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t, context) -> epsilon


class ConsistencyObjective:
    """The LCM loss for one batch of cached clean latents and caption embeddings: the loop's objective."""

    weights = {"consistency": 1.0}

    def __init__(self, teacher: Callable[[], contextlib.AbstractContextManager[UNet]], uncond: torch.Tensor,
                 spec: ConsistencySpec):
        self.teacher, self.uncond, self.spec = teacher, uncond, spec
        self.grid = SolverGrid(spec.solver_steps)

    def draws(self, seeds: list[int], shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
        """(noise, solver index, CFG scale) per sample, each from the sample's own seed."""
        noise = seeded_randn([derive_seed(s, "noise") for s in seeds], shape, device)
        n = len(self.grid.timesteps)
        index = torch.tensor([derive_seed(s, "solver-index") % n for s in seeds])
        lo, hi = self.spec.guidance
        u = torch.tensor([(derive_seed(s, "guidance") % 2**24) / 2**24 for s in seeds])
        return noise, index, lo + (hi - lo) * u

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, text = batch["latents"].float(), batch["text"]
        device = x0.device
        noise, index, cfg = self.draws(batch["seed"].tolist(), tuple(x0.shape[1:]), device)
        t = self.grid.timesteps[index]
        t_prev = (t - self.grid.jump).clamp(min=0)
        a = _per_sample(self.grid.alphas[t], x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        t_dev, prev_dev = t.to(device), t_prev.to(device)
        online = self.grid.consistency(x_t, model(x_t, t_dev, encoder_hidden_states=text).sample.float(), t)
        with torch.no_grad():
            with self.teacher() as teacher:
                uncond = self.uncond.expand(len(x0), -1, -1).to(text.dtype)
                e_u, e_c = teacher(torch.cat([x_t, x_t]), torch.cat([t_dev, t_dev]), torch.cat([uncond, text])).float().chunk(2)
            eps = e_u + _per_sample(cfg, x0) * (e_c - e_u)
            x_prev = self.grid.ddim_step(x_t, eps, t, t_prev)
            target = self.grid.consistency(x_prev, model(x_prev, prev_dev, encoder_hidden_states=text).sample.float(), t_prev)
        return {"consistency": pseudo_huber(online, target, self.spec.huber_c)}


@contextlib.contextmanager
def frozen_teacher(unet: torch.nn.Module) -> Iterator[UNet]:
    """A separate frozen teacher UNet, called in its own dtype without autocast; epsilon in fp32."""
    dtype = next(unet.parameters()).dtype

    def call(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()

    yield call
