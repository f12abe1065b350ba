"""What kind of LoRA a file is, as far as sampling cares: a few-step (LCM) LoRA or not."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .file import PEFT_FILES

KIND_KEY = "sdkd_lora_kind"  # metadata `sdkd lcm` writes into its LoRAs
FEW_STEP_KINDS = ("lcm",)
FEW_STEP_SAMPLERS = ("lcm",)  # samplers that need a few-step LoRA (or model) to draw good images


def _metadata(path: Path) -> dict[str, str]:
    """A .safetensors file's header metadata, read without loading tensors (other files: none)."""
    from safetensors import safe_open

    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def is_few_step(path: str | Path) -> bool:
    """Whether a LoRA (or model) is made for few-step sampling: its metadata says `sdkd_lora_kind` lcm (what `sdkd lcm`
    writes), or its file or folder name says lcm, as the public LCM-LoRAs (lcm-lora-sdv1-5) are named."""
    p = Path(path).expanduser()
    if "lcm" in p.name.lower():
        return True
    weights = next((p / n for n in PEFT_FILES if (p / n).is_file()), p) if p.is_dir() else p
    return _metadata(weights).get(KIND_KEY, "").lower() in FEW_STEP_KINDS


def lacks_few_step(sampler: str, files: Iterable[str | Path]) -> bool:
    """Whether `sampler` needs a few-step LoRA and none of `files` (the model and its LoRAs) is one: allowed, but the
    images will be poor, so front ends say so in one line."""
    return sampler in FEW_STEP_SAMPLERS and not any(is_few_step(f) for f in files)


def poor_images_line(what: str, fix: str) -> str:
    """The one-line warning for `lacks_few_step`, `what` naming the model(s), `fix` how to add a LoRA in this front end."""
    return f"{what}: the lcm sampler without an LCM LoRA draws poor images; {fix} (a LoRA from sdkd lcm, or lcm-lora-sdv1-5)"
