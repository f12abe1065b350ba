"""`sdkd bench`: how much faster each student is than its teacher on this machine, and what it costs in memory.

UNet latency per step and full text-to-image latency are timed after a warm-up, in rounds that
visit every model in turn (so background load hits all of them alike), and reported as median and
spread; speed-ups are against the teacher timed in the same run. UNet parameters and MACs are
counted with torch's flop counter on a weightless copy of each UNet.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import SdkdError
from .progress import ProgressFn, report
from .sampling import Sampler, add_sampler_options, from_args, scheduler_for

PROMPT = "a photograph of an astronaut riding a horse"
# aten ops that multiply activations by activations (attention scores and values); the rest multiply by weights
ATTENTION_OPS = ("bmm", "baddbmm")


@dataclass
class Stat:
    """Repeated timings (seconds): median and spread (median absolute deviation)."""

    median: float
    spread: float
    runs: list[float]

    @classmethod
    def of(cls, runs: list[float]) -> "Stat":
        """Summarise a list of timings."""
        med = statistics.median(runs)
        return cls(med, statistics.median(abs(r - med) for r in runs), list(runs))


@dataclass
class Macs:
    """Multiply-accumulates of one UNet call on one image: in layers (convs, linears) and in attention products."""

    layers: int
    attention: int

    @property
    def total(self) -> int:
        """All counted MACs."""
        return self.layers + self.attention


@dataclass
class ModelBench:
    """One model's figures; ratios are the teacher's figure over this model's (teacher: 1)."""

    label: str
    path: str
    variant: str | None
    unet_params: int
    macs: Macs
    unet_step: Stat  # one UNet call as the pipeline makes it per step (batch doubled by guidance above 1)
    unet_cpu: Stat  # process CPU seconds of that call: with one thread, barely inflated by other programs' load
    text_to_image: Stat  # prompt -> decoded images with the run's sampler and steps
    memory: int  # bytes the model adds while loading and generating (weights + working memory)
    mac_ratio: float = 1.0
    unet_speedup: float = 1.0
    unet_cpu_speedup: float = 1.0
    t2i_speedup: float = 1.0

    @property
    def realises_mac_ratio(self) -> bool:
        """Whether the UNet runs at least as much faster as its MAC count promises."""
        return self.unet_speedup >= self.mac_ratio


@dataclass
class BenchResult:
    """Every model's figures and the settings they were measured under (models[0] is the teacher)."""

    models: list[ModelBench]
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready form (MAC totals and the MAC-ratio verdict included)."""
        out = []
        for m in self.models:
            d = asdict(m)
            d["macs"]["total"] = m.macs.total
            d["realises_mac_ratio"] = m.realises_mac_ratio
            out.append(d)
        return {"settings": self.settings, "models": out}

    def table(self) -> str:
        """A plain-text table for the terminal."""
        head = ("model", "variant", "params", "GMACs", "UNet step", "speed-up", "MAC ratio", "UNet CPU time",
                "speed-up", "text-to-image", "speed-up", "memory")
        rows = [head]
        for m in self.models:
            rows.append((
                m.label, m.variant or "?", f"{m.unet_params / 1e6:.1f}M", f"{m.macs.layers / 1e9:.1f}",
                f"{m.unet_step.median * 1e3:.0f} ms ±{m.unet_step.spread * 1e3:.0f}", f"{m.unet_speedup:.2f}x",
                f"{m.mac_ratio:.2f}x" + ("" if m is self.models[0] else (" met" if m.realises_mac_ratio else " MISSED")),
                f"{m.unet_cpu.median:.2f} s ±{m.unet_cpu.spread:.2f}", f"{m.unet_cpu_speedup:.2f}x",
                f"{m.text_to_image.median:.2f} s ±{m.text_to_image.spread:.2f}", f"{m.t2i_speedup:.2f}x",
                f"{m.memory / 2**20:,.0f} MiB",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        s = self.settings
        lines.append(f"{s['device']} {s['dtype']}, {s['size']} px, batch {s['batch']}, {s['sampler']} "
                     f"{s['steps']} steps, guidance {s['guidance']}; GMACs: convs+linears per image (attention products add "
                     + ", ".join(f"{m.macs.attention / 1e9:.1f}" for m in self.models) + ")")
        return "\n".join(lines)


def count_macs(unet: torch.nn.Module, size: int, context_len: int = 77) -> Macs:
    """MACs of one call of `unet` on one `size`-px image, counted on a weightless (`meta`) copy built from its config."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = unet.config
    with torch.device("meta"):
        twin = type(unet).from_config(cfg).eval()
        latents = torch.zeros(1, cfg.in_channels, size // 8, size // 8)
        context = torch.zeros(1, context_len, cfg.cross_attention_dim)
        t = torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        twin(latents, t, context)
    by_op = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = sum(n for op, n in by_op.items() if op in ATTENTION_OPS or "attention" in op) // 2  # 2 FLOPs a MAC
    return Macs(sum(by_op.values()) // 2 - attention, attention)


def _rss() -> int:
    """Resident memory of this process in bytes."""
    import psutil  # a dependency of accelerate, so present wherever diffusers runs

    return psutil.Process().memory_info().rss


def _release_memory(device: torch.device) -> None:
    """Return freed memory to the system, so the next measurement starts from what is really in use."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap pages until asked
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


class PeakMemory:
    """Context measuring the peak memory in use above the level at entry: CUDA allocations, else process RSS."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        """Poll RSS until stopped (torch releases the GIL in its kernels, so this sees their peaks)."""
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> "PeakMemory":
        _release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def used(self) -> int:
        """Bytes in use at the peak beyond those in use at entry."""
        return self.peak - self.base


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call, waiting for the device to finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


@dataclass
class _Model:
    """A loaded model and the closures that run it."""

    label: str
    path: str
    loaded: object
    unet_call: Callable[[], object]
    t2i_call: Callable[[int], object]
    memory: int
    runs: dict[str, list[float]] = field(default_factory=lambda: {"unet": [], "unet_cpu": [], "t2i": []})


def _load(path: str, label: str, device: torch.device, dtype: torch.dtype, size: int, batch: int, sampling: Sampler,
          prompt: str) -> _Model:
    """Load one model, build its UNet-step and text-to-image calls, and measure its memory over a first run of each."""
    from .pipeline import load_pipeline

    with PeakMemory(device) as mem:
        loaded = load_pipeline(path, device=device, dtype=dtype)
        pipe = loaded.pipe
        pipe.scheduler = scheduler_for(sampling)
        unet = pipe.unet
        n = batch * (2 if sampling.guided else 1)  # classifier-free guidance runs the UNet on a doubled batch
        gen = torch.Generator("cpu").manual_seed(0)
        latents = torch.randn(n, unet.config.in_channels, size // 8, size // 8, generator=gen).to(device, dtype)
        context = torch.randn(n, 77, unet.config.cross_attention_dim, generator=gen).to(device, dtype)
        t = torch.tensor([500] * n, device=device)

        def unet_call() -> object:
            with torch.inference_mode():
                return unet(latents, t, context)

        def t2i_call(n_steps: int) -> object:
            return pipe([prompt] * batch, num_inference_steps=n_steps, guidance_scale=sampling.guidance, height=size,
                        width=size, generator=torch.Generator("cpu").manual_seed(0)).images

        unet_call()
        t2i_call(1)
    return _Model(label, path, loaded, unet_call, t2i_call, mem.used)


def labels_for(paths: list[str]) -> list[str]:
    """Short unique labels for model paths: file stems, numbered where two are the same."""
    stems = [Path(p).stem or str(p) for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{i}" for i, s in enumerate(stems)]


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (half precision is slow there), fp16 on accelerators."""
    return torch.float32 if device.type == "cpu" else torch.float16


@dataclass(frozen=True)
class BenchSpec:
    """How a bench times its models, as every front end builds it.

    Text-to-image runs use `sampling` (sampler, steps, guidance: above 1 doubles the UNet batch); the UNet step is
    timed on the batch that guidance gives. interleave=True keeps every model loaded and times them in turn each
    round (robust to background load); False loads, times and frees one model at a time (needs memory for one model
    only). `threads` sets torch's CPU threads for the run (None: as configured)."""

    device: str = "cpu"
    dtype: str | None = None  # None: `default_dtype` of the device
    size: int = 512
    sampling: Sampler = Sampler()
    batch: int = 1
    repeats: int = 5
    warmup: int = 1
    t2i_repeats: int = 3
    prompt: str = PROMPT
    interleave: bool = True
    threads: int | None = None


def bench(teacher: str | Path, students: list[str | Path], spec: BenchSpec = BenchSpec(),
          progress: ProgressFn | None = None) -> BenchResult:
    """Time the teacher and each student on this machine as `spec` says and count their MACs; models[0] of the result
    is the teacher."""
    before = torch.get_num_threads()
    try:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        return _bench(teacher, students, spec, progress)
    finally:
        torch.set_num_threads(before)


def _warm_up_libraries() -> None:
    """Load what every pipeline shares (library modules, the tokenizer) first, so the first model is not charged for it."""
    from diffusers import StableDiffusionPipeline  # noqa: F401

    from .pipeline import tokenizer

    tokenizer(), scheduler_for(Sampler())


def _bench(teacher: str | Path, students: list[str | Path], spec: BenchSpec, progress: ProgressFn | None) -> BenchResult:
    """`bench` with torch's thread count already set."""
    from .devices import usable_device
    from .export import parse_dtype

    size, sampling, batch, prompt, interleave = spec.size, spec.sampling, spec.batch, spec.prompt, spec.interleave
    repeats, warmup, t2i_repeats = spec.repeats, spec.warmup, spec.t2i_repeats

    if size % 8 or size < 64:
        raise SdkdError(f"--size {size}: the image side must be a multiple of 8 and at least 64 pixels")
    if min(batch, repeats, t2i_repeats) < 1 or warmup < 0:
        raise SdkdError("batch and repeats must be at least 1, warm-up at least 0")
    if not students:
        raise SdkdError("give at least one student to compare with the teacher")
    dev = usable_device(spec.device)
    dt = parse_dtype(spec.dtype) if spec.dtype else default_dtype(dev)
    paths = [str(teacher), *map(str, students)]
    labels = labels_for(paths)
    groups = [list(range(len(paths)))] if interleave else [[i] for i in range(len(paths))]
    total = len(paths) * (2 + warmup + repeats + t2i_repeats)
    _warm_up_libraries()
    done = 0
    results: dict[int, ModelBench] = {}
    for group in groups:
        models: dict[int, _Model] = {}
        for i in group:
            models[i] = _load(paths[i], labels[i], dev, dt, size, batch, sampling, prompt)
            done += 1
            report(progress, "bench", done, total, f"loaded {labels[i]}")
        phases = (("warm-up", warmup, None), ("UNet step", repeats, "unet"), ("text-to-image", t2i_repeats, "t2i"))
        for phase, count, kind in phases:
            for _ in range(count):
                for m in models.values():  # one call of each model per round
                    secs, cpu = _timed(lambda: m.t2i_call(sampling.steps) if kind == "t2i" else m.unet_call(), dev)
                    if kind:
                        m.runs[kind].append(secs)
                    if kind == "unet":
                        m.runs["unet_cpu"].append(cpu)
                    done += 1
                    report(progress, "bench", done, total, f"{phase}: {m.label}", seconds=secs)
        for i, m in models.items():
            unet = m.loaded.pipe.unet
            results[i] = ModelBench(m.label, m.path, m.loaded.info.variant, sum(p.numel() for p in unet.parameters()),
                                    count_macs(unet, size), Stat.of(m.runs["unet"]), Stat.of(m.runs["unet_cpu"]),
                                    Stat.of(m.runs["t2i"]), m.memory)
            done += 1
            report(progress, "bench", done, total, f"counted {m.label}")
        models.clear()
        _release_memory(dev)
    ordered = [results[i] for i in range(len(paths))]
    base = ordered[0]
    for m in ordered:
        m.mac_ratio = base.macs.layers / m.macs.layers
        m.unet_speedup = base.unet_step.median / m.unet_step.median
        m.unet_cpu_speedup = base.unet_cpu.median / m.unet_cpu.median
        m.t2i_speedup = base.text_to_image.median / m.text_to_image.median
    import diffusers

    settings = dict(device=str(dev), dtype=str(dt).replace("torch.", ""), size=size, sampler=sampling.name,
                    steps=sampling.steps, batch=batch, guidance=sampling.guidance, repeats=repeats, warmup=warmup,
                    t2i_repeats=t2i_repeats, prompt=prompt, interleave=interleave, threads=torch.get_num_threads(), torch=torch.__version__,
                    diffusers=diffusers.__version__,
                    gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None)
    return BenchResult(ordered, settings)


# ---- chart -------------------------------------------------------------------------------------

def chart(result: BenchResult, width: int = 900):
    """A PNG-ready bar chart (PIL image): UNet step latency and CPU time, text-to-image latency, GMACs per model."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    models = result.models
    base = models[0]
    panels = [
        ("UNet latency per step (ms); | = speed-up the MAC ratio promises",
         [m.unet_step.median * 1e3 for m in models], [f"{m.unet_speedup:.2f}x" for m in models],
         [base.unet_step.median * 1e3 / m.mac_ratio for m in models]),
        ("UNet CPU time per step (s): with --threads 1, far less disturbed than latency by other programs",
         [m.unet_cpu.median for m in models], [f"{m.unet_cpu_speedup:.2f}x" for m in models],
         [base.unet_cpu.median / m.mac_ratio for m in models]),
        ("text-to-image latency (s)", [m.text_to_image.median for m in models],
         [f"{m.t2i_speedup:.2f}x" for m in models], None),
        ("UNet GMACs per image (convs + linears)", [m.macs.layers / 1e9 for m in models],
         [f"{m.unet_params / 1e6:.0f}M params" for m in models], None),
    ]
    row, pad, label_w = 22, 10, 180
    panel_h = 24 + row * len(models) + pad
    img = Image.new("RGB", (width, pad + panel_h * len(panels) + 16), "white")
    draw = ImageDraw.Draw(img)
    bar_w = width - label_w - 2 * pad - 170
    y = pad
    for title, values, notes, targets in panels:
        draw.text((pad, y), title, fill="black", font=font)
        y += 20
        top = max(values) or 1.0
        for i, (m, v, note) in enumerate(zip(models, values, notes)):
            draw.text((pad, y + 4), f"{m.label} ({m.variant or '?'})"[:30], fill="black", font=font)
            x0 = label_w
            x1 = x0 + max(1, int(bar_w * v / top))
            draw.rectangle((x0, y + 2, x1, y + row - 4), fill="#888888" if i == 0 else "#3b7dd8")
            tx = x1
            if targets and i > 0:
                tx = x0 + int(bar_w * targets[i] / top)
                draw.line((tx, y - 1, tx, y + row - 1), fill="#d83b3b", width=2)
            value = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            draw.text((max(x1, tx) + 6, y + 4), f"{value}  {note}", fill="black", font=font)
            y += row
        y += pad
    s = result.settings
    draw.text((pad, y), f"{s['device']} {s['dtype']}, {s['size']} px, batch {s['batch']}, {s['sampler']} "
              f"{s['steps']} steps, guidance {s['guidance']}",
              fill="#555555", font=font)
    return img


def bench_files(out: Path) -> tuple[Path, Path]:
    """The files a bench writes into folder `out`: figures (JSON) and chart (PNG)."""
    return out / "bench.json", out / "bench.png"


def write_outputs(result: BenchResult, out: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write bench.json and bench.png into folder `out`, atomically."""
    from .export import atomic_outputs

    js, png = bench_files(out)
    with atomic_outputs(overwrite) as outs:
        outs.temp(js).write_text(json.dumps(result.as_dict(), indent=2))
        chart(result).save(outs.temp(png), format="PNG")
    return js, png


# ---- CLI -----------------------------------------------------------------------------------------

def cmd_bench(a: argparse.Namespace) -> int:
    """Benchmark a teacher against its students and print/write the figures."""
    from .export import Outputs
    from .progress import tqdm_progress

    for path in bench_files(Path(a.out)):
        Outputs(a.overwrite).check(path)  # before any model is timed
    # no few-step-LoRA warning here: bench keeps no images, and a merged LoRA does not change the time per step
    spec = BenchSpec(a.device, a.dtype, a.size, from_args(a), a.batch, a.repeats, a.warmup, a.t2i_repeats, a.prompt,
                     not a.sequential, a.threads)
    result = bench(a.teacher, a.students, spec, tqdm_progress())
    js, png = write_outputs(result, Path(a.out), a.overwrite)
    print(result.table())
    print(f"wrote {js} and {png}")
    return 0


def add_model_arguments(s: argparse.ArgumentParser, teacher: str) -> None:
    """TEACHER STUDENT...: the models a bench or compare measures (`teacher` its help)."""
    s.add_argument("teacher", help=teacher)
    s.add_argument("students", nargs="+", help="student checkpoints")


def add_commands(sub) -> None:
    """Add `sdkd bench` to the CLI."""
    s = sub.add_parser("bench", help="time a teacher and its students: UNet step, text-to-image, MACs, memory")
    add_model_arguments(s, "the teacher checkpoint (speed-ups are relative to it)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    s.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: fp32 on CPU, fp16 elsewhere")
    s.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    add_sampler_options(s, what="the text-to-image runs")
    s.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    s.add_argument("--repeats", type=int, default=5, help="timed UNet calls per model (default 5)")
    s.add_argument("--warmup", type=int, default=1, help="untimed UNet calls per model first (default 1)")
    s.add_argument("--t2i-repeats", type=int, default=3, help="timed text-to-image runs per model (default 3)")
    s.add_argument("--prompt", default=PROMPT)
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    s.add_argument("--sequential", action="store_true",
                   help="load one model at a time (less memory; timings less robust to background load)")
    s.add_argument("--out", default="sdkd-bench", help="folder for bench.json and bench.png (default ./sdkd-bench)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier bench.json/bench.png")
    s.set_defaults(fn=cmd_bench)
