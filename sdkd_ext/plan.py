"""Memory planner: estimate the peak accelerator memory of a distillation run per part, and choose settings that fit.

Parameters are counted on models built on the `meta` device (no memory, no weights needed). The
student's activations are traced on fake tensors (shapes and dtypes, no memory) under the device's
16-bit autocast policy: every tensor autograd saves in one training forward pass, in order (parameters
excluded, autocast's weight copies included), each checkpointable unit's input and each module's
gradients. The step's peak walks backward in reverse: saved tensors are freed as gradients are made,
and with gradient checkpointing a unit's tensors come back while backward is inside it. Checked
against torch's allocator accounting by benchmarks/plan_memory.py (README: Memory planner).
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterator

import torch

from .configs import VaeShape, sd15, unet_config
from .errors import SdkdError
from .train import TrainConfig, autocast_dtype, bitsandbytes
from .variants import SD15, Topology, Variant, get_variant

GIB = 2**30
CUDA_RESERVE = 0.75 * GIB  # CUDA context and allocator slack, outside max_memory_allocated
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2 + 8 / 256}  # per trainable parameter: two moments, fp32 or 8-bit with
# an fp32 scale per 256 values (bitsandbytes' blockwise state)


@dataclass(frozen=True)
class Settings:
    """The memory-relevant training settings."""

    batch: int = 1  # micro-batch per process
    accum: int = 1
    grad_checkpointing: bool = False
    optimizer: str = "adamw"  # adamw | adamw8bit
    ema: bool = False
    precision: str = "fp16"  # fp16 | bf16 (16-bit autocast) | fp32
    device: str = "cuda"  # cuda: teacher in fp16; cpu: teacher in fp32

    def describe(self) -> str:
        """One line for the CLI."""
        return (f"micro-batch {self.batch} x accumulation {self.accum}, gradient checkpointing "
                f"{'on' if self.grad_checkpointing else 'off'}, {self.optimizer}, EMA {'on' if self.ema else 'off'}, "
                f"{self.precision}")


@dataclass
class Estimate:
    """Estimated peak memory of one setting, per part, in bytes."""

    settings: Settings
    parts: dict[str, float]
    cache_phase: float  # peak of the encoding phase (VAE/text encoder), which runs before training

    @property
    def training(self) -> float:
        """Peak of the training phase: every part at once."""
        return sum(self.parts.values())

    @property
    def peak(self) -> float:
        """Overall peak (the two phases never overlap)."""
        return max(self.training, self.cache_phase)

    def fits(self, vram_bytes: float) -> bool:
        """Whether the peak plus the CUDA reserve fits in `vram_bytes`."""
        return self.peak + CUDA_RESERVE <= vram_bytes

    def table(self) -> str:
        """The estimate as aligned text lines."""
        lines = [f"  {name:<22}{v / GIB:8.2f} GiB" for name, v in self.parts.items()]
        lines.append(f"  {'= training peak':<22}{self.training / GIB:8.2f} GiB")
        lines.append(f"  {'cache phase (before)':<22}{self.cache_phase / GIB:8.2f} GiB  (VAE/text encoder encoding, batch 4)")
        return "\n".join(lines)


def _unet(topology: Topology) -> torch.nn.Module:
    """A diffusers UNet of `topology` on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(unet_config(topology))


@lru_cache(maxsize=16)
def unet_params(topology: Topology) -> int:
    """Parameter count of a UNet of `topology`."""
    return sum(p.numel() for p in _unet(topology).parameters())


@dataclass(frozen=True)
class Trace:
    """What one training forward pass at batch 1 leaves for backward, in forward order: each tensor autograd saves
    (parameters excluded; "save" scales with the batch, "copy", autocast's 16-bit copy of a weight, does not), each
    checkpointable unit's input (what checkpointing keeps instead), each module's fp32 gradients."""

    events: tuple[tuple[str, int, int], ...]  # (kind: "save" | "copy" | "input" | "grad", bytes, unit index or -1)
    largest: int  # the largest saved tensor (backward needs a few such buffers at once)
    features: int  # elements of the feature-KD hook outputs (one side)

    @staticmethod
    def _size(kind: str, n: int, batch: int) -> int:
        return n * batch if kind in ("save", "input") else n

    def saved(self, batch: int = 1) -> int:
        """Everything saved for backward at `batch`, without checkpointing."""
        return sum(self._size(k, n, batch) for k, n, _ in self.events if k in ("save", "copy"))

    def checkpointed(self, batch: int = 1) -> int:
        """Saved bytes with every unit checkpointed: what is saved outside units plus the units' inputs."""
        return sum(self._size(k, n, batch) for k, n, u in self.events if u < 0 and k in ("save", "copy") or k == "input")

    def peak(self, batch: int, checkpointing: bool, grads: bool = True, held: float = 0.0) -> float:
        """The most bytes live at once from the end of the forward pass through backward, which walks the events in
        reverse: each saved tensor is freed once its op's backward ran, each module's gradients are made there, and a
        checkpointed unit's saved tensors come back (recomputed) while backward is inside it; plus two of the largest
        saved tensors as the gradient buffers in flight. `held` bytes (the loss's inputs) go in backward's first op."""
        units: dict[int, int] = {}
        for kind, n, u in self.events:
            if kind in ("save", "copy") and u >= 0:
                units[u] = units.get(u, 0) + self._size(kind, n, batch)
        live = self.checkpointed(batch) if checkpointing else self.saved(batch)
        top, inside = live + held, -1
        for kind, n, u in reversed(self.events):
            if checkpointing and u >= 0 and u != inside and kind != "input":
                inside, live = u, live + units.get(u, 0)  # the unit's recompute
            if kind in ("save", "copy"):
                live -= self._size(kind, n, batch)
            elif kind == "grad" and grads:
                live += n
            elif kind == "input" and checkpointing:
                live, inside = live - n * batch, -1
            top = max(top, live)
        return top + 2 * self.largest * batch


class _FlashLikeAttention(torch.autograd.Function):
    """Attention as fused SDPA kernels (flash / memory-efficient, CUDA and CPU) store it for backward: q, k, v,
    the output and a log-sum-exp per query, never the L x L probabilities the meta device's math path keeps."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # never run: the trace only goes forward
        raise NotImplementedError


_TRACING = threading.local()  # set in the thread that traces: other threads (a job training beside the tab) keep SDPA
_TRACE_LOCK = threading.Lock()  # one trace at a time, so the patch is undone in the order it was made


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    """Within the block and in this thread only, `F.scaled_dot_product_attention` (what diffusers calls) saves what
    fused kernels save; every other thread still gets the real function."""
    import torch.nn.functional as F

    with _TRACE_LOCK:
        original = F.scaled_dot_product_attention

        def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if getattr(_TRACING, "on", False):
                return _FlashLikeAttention.apply(q, k, v)
            return original(q, k, v, *args, **kwargs)

        F.scaled_dot_product_attention, _TRACING.on = sdpa, True
        try:
            yield
        finally:
            F.scaled_dot_product_attention, _TRACING.on = original, False


class _Fp32Norms(torch.overrides.TorchFunctionMode):
    """CUDA autocast's policy beside the CPU's: group and layer norms run in fp32 (the CPU's runs them in 16 bits)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        import torch.nn.functional as F

        if func in (F.group_norm, F.layer_norm) and args[0].dtype != torch.float32:
            args = (args[0].float(), *args[1:])
        return func(*args, **(kwargs or {}))


@lru_cache(maxsize=32)
def trace(topology: Topology, latent: int, hooked: tuple[str, ...] = (), autocast: str = "", frozen_half: bool = False) -> Trace:
    """Trace one training forward pass of a UNet of `topology` at `latent` x `latent`, batch 1, on fake tensors (shapes
    and dtypes, no memory): fp32 weights, under `autocast`'s 16-bit policy ("cuda", "cpu"; "": fp32 throughout), or
    with `frozen_half` 16-bit frozen weights (LoRA), whose autocast makes no copies."""
    from diffusers import UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        unet = UNet2DConditionModel.from_config(unet_config(topology)).train()
        for p in unet.parameters() if frozen_half else ():
            p.data = p.data.to(torch.bfloat16)
        param_ids = {id(p) for p in unet.parameters()}
        param_shapes = {tuple(p.shape) for p in unet.parameters()}
        events: list[tuple[str, int, int]] = []
        seen: set[int] = set()
        unit = [-1]
        largest = [0]
        features = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            base = t._base if t._base is not None else t
            if id(t) not in param_ids and id(base) not in param_ids and id(t) not in seen:
                seen.add(id(t))
                n = t.numel() * t.element_size()
                copy = t.dtype != torch.float32 and base.dtype == t.dtype and tuple(base.shape) in param_shapes
                events.append(("copy" if copy else "save", n, unit[0]))
                largest[0] = max(largest[0], n)
            return t

        def enter(index: int) -> Callable:
            def hook(module, args):
                unit[0] = index
                events.append(("input", sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)), index))
            return hook

        def leave(module, args, output):
            unit[0] = -1

        def made(module, args, output):
            n = sum(p.numel() * 4 for p in module.parameters(recurse=False))
            if n:
                events.append(("grad", n, unit[0]))

        def grab(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            features[0] += out.numel()

        handles = []
        for name, m in unet.named_modules():
            parts = name.split(".")
            if len(parts) >= 2 and parts[-2] in ("resnets", "attentions"):
                handles += [m.register_forward_pre_hook(enter(len(handles))), m.register_forward_hook(leave)]
            handles.append(m.register_forward_hook(made))
            if name in hooked:
                handles.append(m.register_forward_hook(grab))
        x = torch.empty(1, topology.in_channels, latent, latent)
        ctx = torch.empty(1, 77, topology.context_dim)
        policy = _Fp32Norms() if autocast == "cuda" else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _fused_attention(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(autocast) or frozen_half), policy:
            unet(x, torch.tensor([500]), encoder_hidden_states=ctx)
        for h in handles:
            h.remove()
    return Trace(tuple(events), largest[0], features[0])


@lru_cache(maxsize=8)
def cache_phase(resolution: int, vae: VaeShape, text_hidden: int, half: bool) -> float:
    """Peak bytes of the encoding phase: the larger of the VAE (encoding 4 images) and the text encoder."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL.from_config(vae.config())
    largest = [0]

    def grab(module, args, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel())

    handles = [m.register_forward_hook(grab) for m in model.encoder.modules()]
    with torch.no_grad():
        model.encoder(torch.empty(4, 3, resolution, resolution, device="meta"))
    for h in handles:
        h.remove()
    width = 2 if half else 4
    vae_bytes = sum(p.numel() for p in model.parameters()) * width + 4 * largest[0] * width
    te_layers = sd15("text_encoder")["num_hidden_layers"]
    te_params = 49408 * text_hidden + 77 * text_hidden + te_layers * 12 * text_hidden**2
    return float(max(vae_bytes, te_params * width))


def frozen_width(settings: Settings) -> int:
    """Bytes per parameter of a frozen model: fp16 on CUDA, fp32 on CPU."""
    return 2 if settings.device == "cuda" else 4


def autocast_policy(settings: Settings) -> str:
    """Whose 16-bit autocast policy the student trains under ("" for fp32)."""
    return "" if settings.precision == "fp32" else settings.device


def training_parts(model: Topology, resolution: int, settings: Settings, trainable: int | None = None,
                   held: float = 0.0) -> dict[str, float]:
    """Memory of training a UNet of topology `model` (every part but a teacher), in bytes.

    `trainable=None` trains every weight (fp32 master copies); a count (e.g. LoRA parameters) trains only that many
    fp32 parameters beside a frozen model, stored in the autocast dtype as LoRA training does. "activations" is the
    step's peak beyond every gradient: backward frees saved activations (and autocast's 16-bit weight copies) as it
    makes gradients, so the two never peak together; `held` bytes (a teacher's outputs) live until backward starts."""
    latent, b = resolution // 8, settings.batch
    p = unet_params(model)
    n = p if trainable is None else trainable
    half = settings.precision != "fp32"
    t = trace(model, latent, (), autocast_policy(settings), frozen_half=trainable is not None and half)
    peak = t.peak(b, settings.grad_checkpointing, grads=trainable is None, held=held)
    grads = n * 4.0
    if trainable is not None:
        peak += grads  # a few adapters: all of their gradients at once
    return {
        "model (fp32)" if trainable is None else "model (frozen)": p * (4.0 if trainable is None else 2.0 if half else 4.0),
        **({} if trainable is None else {"trainable (fp32)": n * 4.0}),
        "gradients": grads,
        "optimiser": n * float(OPTIMIZER_BYTES[settings.optimizer]),
        "activations": peak - grads,
        "cache (batch data)": b * (4 * latent * latent + 77 * model.context_dim) * 4.0,
        **({"EMA": n * 4.0} if settings.ema else {}),
    }


def estimate(variant: Variant, resolution: int, settings: Settings, teacher: Topology = SD15,
             vae: VaeShape | None = None) -> Estimate:
    """Estimated peak memory, per part, of distilling `teacher` into `variant` at `resolution` with `settings`: the
    teacher's forward (no gradients) runs first, its fp32 outputs and features live through the student's forward."""
    from .variants import hook_pairs

    v = variant
    pairs = hook_pairs(v, teacher)
    latent, b, width = resolution // 8, settings.batch, frozen_width(settings)
    t_trace = trace(teacher, latent, tuple(t for t, _ in pairs))
    s_trace = trace(v.student(teacher), latent, tuple(s for _, s in pairs), autocast_policy(settings))
    out = b * 4 * latent * latent * 4.0
    held = (t_trace.features * 4.0 + out) * b + s_trace.features * 4.0 * b  # teacher's fp32 outputs; student's fp32 copies
    parts = {"teacher (frozen)": unet_params(teacher) * width,
             **{("student (fp32)" if k == "model (fp32)" else k): x
                for k, x in training_parts(v.student(teacher), resolution, settings, held=held).items()}}
    teacher_forward = t_trace.largest * b * 3 * width / 4  # a few of its largest activations at once, nothing saved
    parts["activations"] = max(parts["activations"], teacher_forward - parts["gradients"])
    return Estimate(settings, parts, cache_phase(resolution, vae or VaeShape(), teacher.context_dim, settings.precision != "fp32"))


def candidates(batch: int, optimizer: str, ema: bool, precision: str, device: str) -> list[Settings]:
    """Settings to try, most preferred first: EMA kept if asked, the largest micro-batch, no checkpointing."""
    micros = [m for m in range(batch, 0, -1) if batch % m == 0]
    out = []
    for keep_ema in ((True, False) if ema else (False,)):
        for m in micros:
            for ckpt in (False, True):
                out.append(Settings(m, batch // m, ckpt, optimizer, keep_ema, precision, device))
    return out


def kd_estimator(variant: Variant, resolution: int, teacher: Topology = SD15) -> Callable[[Settings], Estimate]:
    """The estimate of distilling `teacher` into `variant` at `resolution`, as a function of the settings."""
    return lambda s: estimate(variant, resolution, s, teacher)


def choose(estimator: Callable[[Settings], Estimate], batch: int, vram_gb: float, ema: bool = False,
           optimizer: str = "adamw", precision: str = "fp16", device: str = "cuda") -> Estimate | None:
    """The most preferred settings whose estimate fits in `vram_gb` (global batch kept via accumulation), or None."""
    for s in candidates(batch, optimizer, ema, precision, device):
        e = estimator(s)
        if e.fits(vram_gb * GIB):
            return e
    return None


def parse_vram(text: str | None, flag: str = "--vram") -> float | str | None:
    """A VRAM budget as typed (CLI flag, tab field, node input): None (blank), "auto", or GiB; anything else refused
    naming `flag` (each front end words it as its own widget)."""
    value = (text or "").strip().lower()
    if value in ("", "auto"):
        return value or None
    try:
        gib = float(value.removesuffix("gb").removesuffix("gib").strip())
    except ValueError:
        gib = float("nan")
    if not gib > 0:
        raise SdkdError(f"{flag} {text!r}: give the GPU memory in GB (e.g. 8) or 'auto'")
    return gib


def fit(cfg: TrainConfig, vram: float | str | None, device: torch.device, estimator: Callable[[Settings], Estimate],
        say: Callable[[str], None], what: str,
        fixes: str = "see `sdkd plan`, lower --resolution, or install bitsandbytes for 8-bit AdamW") -> TrainConfig:
    """`cfg` with micro-batch/accumulation, gradient checkpointing, optimizer and EMA chosen to fit `vram` ("auto":
    this GPU's memory; a number: GiB), the global batch kept; `cfg` itself without `vram`, or for "auto" on no GPU."""
    if vram is None:
        return cfg
    if vram == "auto":
        if device.type != "cuda":
            say("--vram auto: no CUDA GPU in use, so nothing to plan; training with the given settings")
            return cfg
        vram = cuda_vram_gb()
    optimizer = cfg.optimizer if cfg.optimizer != "auto" else default_optimizer()
    amp = autocast_dtype(cfg.precision, device)
    precision = "fp32" if amp is None else "bf16" if amp == torch.bfloat16 else "fp16"
    best = choose(estimator, cfg.batch * cfg.accum, float(vram), cfg.ema, optimizer, precision,
                  "cuda" if device.type == "cuda" else "cpu")
    if best is None:
        raise SdkdError(f"the memory planner finds no settings that fit {float(vram):g} GiB for {what}; {fixes}")
    s = best.settings
    say(f"memory plan for {float(vram):g} GiB: {s.describe()} (estimated peak {best.peak / GIB:.2f} GiB)")
    return replace(cfg, batch=s.batch, accum=s.accum, grad_checkpointing=s.grad_checkpointing, optimizer=s.optimizer,
                   ema=s.ema)


def default_optimizer() -> str:
    """adamw8bit when bitsandbytes is importable (the training loop uses it then), else adamw."""
    return "adamw8bit" if bitsandbytes() is not None else "adamw"


def cuda_vram_gb() -> float | None:
    """Total memory of the current CUDA device in GiB, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB


def check_resolution(resolution: int) -> None:
    """Refuse sizes the UNet cannot take (the latent must halve cleanly three times)."""
    if resolution < 64 or resolution % 64:
        raise SdkdError(f"--resolution {resolution}: use a multiple of 64 (e.g. 512)")


def cmd_plan(a: argparse.Namespace) -> int:
    """Print the estimate for the asked settings and, with --vram, the settings that fit."""
    check_resolution(a.resolution)
    teacher = SD15
    if a.teacher:
        from .checkpoint import open_model
        from .detect import describe, require_teacher

        info = describe(open_model(a.teacher))
        require_teacher(info, a.teacher, "plan a distillation of")
        teacher = info.topology
    v = get_variant(a.variant)
    opt = a.optimizer if a.optimizer != "auto" else default_optimizer()
    asked = Settings(a.batch, 1, a.grad_checkpointing, opt, a.ema, a.precision, a.device)
    est = estimate(v, a.resolution, asked, teacher)
    print(f"{v.name} student of a {teacher.model_channels}-wide SD1.x teacher, {a.resolution} px, {asked.describe()}:")
    print(f"  UNet parameters: teacher {unet_params(teacher):,}, student {unet_params(v.student(teacher)):,}")
    print(est.table())
    vram = a.vram if a.vram is not None else cuda_vram_gb()
    if vram is None:
        print("no --vram given and no CUDA GPU found: pass --vram GB to see the settings that fit")
        return 0
    budget = f"{vram:g} GiB (with {CUDA_RESERVE / GIB:.2f} GiB kept for the CUDA context)"
    if est.fits(vram * GIB):
        print(f"fits in {budget} as asked")
        return 0
    best = choose(kd_estimator(v, a.resolution, teacher), a.batch, vram, a.ema, opt, a.precision, a.device)
    if best is None:
        least = estimate(v, a.resolution, replace(asked, batch=1, accum=a.batch, grad_checkpointing=True, ema=False), teacher)
        hint = "" if opt == "adamw8bit" else "; installing bitsandbytes (8-bit AdamW) saves 6 bytes per parameter"
        print(f"does not fit in {budget}: even micro-batch 1 with gradient checkpointing needs "
              f"{least.peak / GIB:.2f} GiB{hint}")
        return 2
    print(f"fits in {budget} with: {best.settings.describe()} (estimated peak {best.peak / GIB:.2f} GiB)")
    print(best.table())
    return 0


def add_commands(sub) -> None:
    """`sdkd plan`."""
    from .variants import VARIANT_NAMES

    s = sub.add_parser("plan", help="estimate the memory a distillation run needs and the settings that fit")
    s.add_argument("--variant", required=True, choices=VARIANT_NAMES)
    s.add_argument("--resolution", type=int, default=512)
    s.add_argument("--batch", type=int, default=1, help="global batch per optimizer step (default 1)")
    s.add_argument("--vram", type=float, help="GPU memory in GiB (default: this machine's GPU)")
    s.add_argument("--teacher", help="a teacher file to plan for (default: SD1.5's shape)")
    s.add_argument("--optimizer", default="auto", choices=["auto", "adamw", "adamw8bit"])
    s.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    s.add_argument("--grad-checkpointing", action="store_true", help="estimate with gradient checkpointing")
    s.add_argument("--ema", action="store_true", help="keep an EMA of the student where memory allows")
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: teacher kept in fp32")
    s.set_defaults(fn=cmd_plan)
