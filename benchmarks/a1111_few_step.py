"""Seconds per image in the real AUTOMATIC1111 1.10.1 on this machine's CPU, 512 px: the teacher at 25 steps (DPM++ 2M,
cfg 7.5) against its tiny student with a few-step LoRA at 4 steps (LCM sampler, cfg 1).

The models have SD1.5's full sizes and random weights (no hub here; speed depends on the shapes only); the
LoRA is an LCM-layout one (every conv and linear layer `sdkd lcm` adapts, tests/hosts/lcm.py) that A1111's
Lora extension merges before sampling. A1111 runs with sdkd's extension (it removes tiny's middle block on
load) from the host stage's venv and sources (tests/hosts, ../shared/hosts). Each image is timed after a
warm-up image of the same model; the figures are wall seconds and the server's process CPU seconds.

    python benchmarks/a1111_few_step.py            # ~10 min on 2 CPU cores (the first run also builds the venv)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hosts import a1111_setup, models  # noqa: E402
from tests.hosts.a1111 import A1111, WebUI, hf_cache, install_extensions, run_installer, select  # noqa: E402
from tests.hosts.harness import SCRATCH, Report, discard, sdkd  # noqa: E402
from tests.hosts.lcm import sdkd_lcm_lora  # noqa: E402


def image(server, prompt: str, size: int, sampler: str, steps: int, cfg: float) -> tuple[float, float]:
    """(wall, server CPU) seconds of one txt2img through the API."""
    wall, cpu = time.perf_counter(), server.cpu()
    server.post("/sdapi/v1/txt2img", {"prompt": prompt, "negative_prompt": "", "steps": steps, "width": size,
                                      "height": size, "seed": 0, "sampler_name": sampler, "cfg_scale": cfg,
                                      "batch_size": 1, "n_iter": 1}, timeout=3600)
    return time.perf_counter() - wall, server.cpu() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=25, help="the teacher's steps (default 25)")
    p.add_argument("--keep", action="store_true", help="keep the full-size models in the scratch folder")
    a = p.parse_args()
    src, venv = a1111_setup.venv(A1111.archive)
    data = SCRATCH / "a1111-few-step"
    ckpts, loras = data / "models" / "Stable-diffusion", data / "models" / "Lora"
    for d in (ckpts, loras, data / "extensions"):
        d.mkdir(parents=True, exist_ok=True)
    teacher = models.full_teacher(ckpts / "teacher.safetensors")
    models.write_yaml(teacher)
    hf_cache(data / "hf", models.text_config(teacher))
    tiny = ckpts / "teacher-bk-tiny.safetensors"
    if not tiny.exists():
        sdkd("prune", str(teacher), "--variant", "tiny", "--out", str(tiny))
    lora = sdkd_lcm_lora(tiny, loras / "tiny-lcm.safetensors")
    run_installer(Report(), "a1111", venv, src, install_extensions(data))
    ui = WebUI(A1111, src, venv, data, teacher, "few-step")
    rows = []
    try:
        ui.start()
        server = ui.server
        for label, model, prompt, sampler, steps, cfg in (
                (f"teacher, {a.steps} steps DPM++ 2M cfg 7.5", teacher, "a red square", "DPM++ 2M", a.steps, 7.5),
                ("tiny + LCM LoRA, 4 steps LCM cfg 1", tiny, f"a red square <lora:{lora.stem}:1>", "LCM", 4, 1.0)):
            select(server, model.name)
            server.post("/sdapi/v1/refresh-loras", {})
            image(server, prompt, 64, sampler, 1, cfg)  # warm-up: model moved in, LoRA merged
            rows.append((label, *image(server, prompt, a.size, sampler, steps, cfg)))
            print(f"{label}: {rows[-1][1]:.1f} s wall, {rows[-1][2]:.1f} CPU-s", file=sys.stderr, flush=True)
    finally:
        ui.server.stop()
        if not a.keep:
            discard(data / "models")
    print(f"A1111 1.10.1 on CPU ({a.size} px, one image, random-weight SD1.5-size models)\n")
    print("| model | s / image (wall) | server CPU-s / image |\n|---|---|---|")
    for label, wall, cpu in rows:
        print(f"| {label} | {wall:.1f} | {cpu:.1f} |")
    print(f"\nspeed-up: {rows[0][1] / rows[1][1]:.1f}x wall, {rows[0][2] / rows[1][2]:.1f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
