"""Forge (2025-06, gradio 4) with sdkd's extension: install.py, the tab in Chromium, students loaded and rendered.

Forge types the model by its keys and builds CLIP from its own shipped config, so it gets the full-size model; full
size makes LoRA training slow here, so LoRAs are left to A1111 and ComfyUI.
"""

from __future__ import annotations


from . import a1111_setup
from .a1111 import (VARIANTS, WebUI, b64_png, browser_venv, install_extensions, load_check, run_installer,
                    start_and_prune, txt2img)
from .harness import SCRATCH, Report, clear, log

HOST = "forge"
CPU_FLAGS = ("--always-cpu",)


def run(report: Report) -> None:
    """All Forge checks; each prints one PASS/FAIL line."""
    from . import models

    with report.timed(HOST, "setup"):
        src, venv = a1111_setup.venv(a1111_setup.FORGE)
        data = SCRATCH / a1111_setup.FORGE / "run"
        ckpts = data / "models" / "Stable-diffusion"
        for d in (ckpts, data / "extensions"):
            d.mkdir(parents=True, exist_ok=True)
        clear(list(ckpts.glob("teacher-*")))
        teacher = models.full_teacher(ckpts / "teacher.safetensors")
        ext = install_extensions(data)
        bvenv = browser_venv()
    run_installer(report, HOST, venv, src, ext)
    # gradio 4 serves Forge's own script.js/javascript only from allowed paths: with --data-dir elsewhere its
    # folder must be allowed, or every page script is refused (403) and the tab's buttons do nothing.
    flags = (*CPU_FLAGS, "--gradio-allowed-path", str(src))
    ui = WebUI(src, venv, data, teacher, "ext", flags, ready="Startup time:")
    try:
        with report.timed(HOST, "checks"):
            start_and_prune(report, HOST, ui, ckpts, teacher, bvenv)
            for v in VARIANTS:
                name = f"teacher-bk-{v}.safetensors"
                if not (ckpts / name).exists():
                    continue
                with report.check(HOST, f"txt2img-{v}") as r:  # Forge loads the selected model on first use
                    title = next(m["title"] for m in ui.server.get("/sdapi/v1/sd-models") if name in m["title"])
                    ui.server.post("/sdapi/v1/options", {"sd_model_checkpoint": title})
                    img = b64_png(txt2img(ui.server, "a flat red square")["images"][0], data / f"plain-{v}.png")
                    r["figure"] = f"image={img.name}"
                load_check(report, ui.server, ckpts, name, models, f"load-{v}", host=HOST, context=models.FULL["context"])
    finally:
        ui.server.stop()
        log(f"Forge log: {ui.server.log}")
