"""`sdkd demo`: the whole product on a built-in small model, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .export import atomic_outputs
from .pipeline import generate, load_pipeline
from .progress import ProgressFn
from .prune import prune
from .tiny import save, tiny_checkpoint
from .variants import VARIANTS

DEMO_PROMPT = "a small red circle at the top left on a blue background"


def run_demo(out: Path, overwrite: bool = False, progress: ProgressFn | None = None,
             log: Callable[[str], None] = print, size: int = 64, steps: int = 10) -> dict[str, dict]:
    """Build a small SD1.5-topology teacher, prune it to each variant, generate one image from each."""
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "demo-teacher.safetensors"
    with atomic_outputs(overwrite) as outs:
        save(tiny_checkpoint(width=32, seed=0), outs.temp(teacher), {"sdkd_note": "sdkd demo model, random weights"})
    log(f"built a small SD1.5-topology model: {teacher}")
    results: dict[str, dict] = {}
    for name in ["teacher", *VARIANTS]:
        path = teacher if name == "teacher" else prune(teacher, name, out / f"demo-bk-{name}", overwrite=overwrite,
                                                        progress=progress).checkpoint
        loaded = load_pipeline(path)
        image = generate(loaded.pipe, DEMO_PROMPT, steps=steps, size=size, progress=progress)
        png = out / f"{path.stem}.png"
        with atomic_outputs(overwrite) as outs:
            image.save(outs.temp(png), format="PNG")
        params = sum(p.numel() for p in loaded.pipe.unet.parameters())
        results[name] = {"checkpoint": str(path), "image": str(png), "unet_params": params}
        log(f"{name:>8}: {params:>10,} UNet params  {path}  -> {png}")
    return results
