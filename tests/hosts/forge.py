"""Forge (2025-06, gradio 4) with sdkd's extension: the same checks as A1111's (a1111.run_webui), on a full-size model.

Forge types the model by its keys and builds CLIP from its own shipped config, so it gets the full-size model.
"""

from __future__ import annotations

from pathlib import Path

from . import a1111_setup
from .a1111 import LoraLog, Spec, cancel_distil, run_webui
from .harness import Report


def full_teacher(ckpts: Path, data: Path) -> Path:
    """The full-size random teacher (shared with ComfyUI's checks); Forge needs no yaml or HF cache for it."""
    from . import models

    return models.full_teacher(ckpts / "teacher.safetensors")


# Forge's Lora logs what it applied ("[LORA] Loaded F for ...-UNet with N keys ... (skipped K keys)") and what missed
# ("... with unmatched keys [...]", "[LORA] Mismatch ...", "LoRA version mismatch"); it rescans its folder for a
# name it does not know yet. Without sdkd, Forge builds a middle ResBlock for small/tiny and leaves its weights None:
# the first UNet call raises (TypeError in linear()), so the extension is required there.
FORGE = Spec("forge", a1111_setup.FORGE, full_teacher, 768, ("--always-cpu",), "Startup time:",
             LoraLog(bad=r"\[LORA\].*(unmatched keys|[Mm]ismatch)|lora key not loaded|skipped [1-9]",
                     applied=r"\[LORA\] Loaded .*{stem}\.safetensors for \w+-UNet with [1-9]"), noext_refuses=True,
             portable_idle="", tab_jobs=cancel_distil, need_gib=9.0)


def run(report: Report) -> None:
    """All Forge checks; each prints one PASS/FAIL line."""
    run_webui(report, FORGE)
