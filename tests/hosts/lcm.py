"""Few-step (LCM) LoRAs in the hosts: on the teacher and on a tiny student, sdkd's own LCM LoRA (every conv and linear
layer of the UNet, kohya LDM names, as `sdkd lcm` writes it) and the public SD1.5 LCM-LoRA's layout (tests/lcm_public.py;
on the teacher as published, on the student after `sdkd lora-port`) each apply with no key missed, and the host's
4-step LCM image with the LoRA differs from the one without. Each host gives the one function that draws an image."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .harness import Report, sdkd

SCALE = 0.1  # the random updates' size relative to a layer's own weights: small, and enough to change a 64 px image
RANK = 4  # sdkd's LoRA (the public layout keeps its rank 64)
# (checkpoint, LoRA or None, image tag) -> (the image, what went wrong: key warnings, errors; [] if nothing)
Sampler = Callable[[Path, "Path | None", str], tuple[Path, list[str]]]


def sdkd_lcm_lora(model: Path, out: Path, seed: int = 0) -> Path:
    """An LCM LoRA the way sdkd writes one: a module on every conv and linear layer `sdkd lcm` adapts (FULL_UNET_TARGETS),
    kohya LDM names, fp16, metadata `sdkd_lora_kind` = lcm; random weights (see tests/lcm_public.random_pair)."""
    import torch

    from sdkd_ext.checkpoint import open_model
    from sdkd_ext.convert import UNET
    from sdkd_ext.detect import describe
    from sdkd_ext.lora.file import DOWN, UP, Lora, LoraModule, kohya_metadata, write_kohya
    from sdkd_ext.lora.names import layout_of_source
    from sdkd_ext.lora.peft import FULL_UNET_TARGETS
    from tests.lcm_public import random_pair

    src = open_model(model)
    layout = layout_of_source(src, describe(src).topology)
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for module_id, shape in layout.shapes.items():
        name = layout.diffusers_name(module_id) if module_id.startswith(UNET) else ""
        if len(shape) >= 2 and any(name == t or name.endswith("." + t) for t in FULL_UNET_TARGETS):
            down, up = random_pair(shape, RANK, SCALE, g)
            modules[module_id] = LoraModule({DOWN: down, UP: up}, float(RANK))
    lora = Lora(modules)
    return write_kohya(lora, out, kohya_metadata(lora, layout.variant, {"sdkd_lora_kind": "lcm"}), overwrite=True,
                       dtype=torch.float16)


def lcm_loras(teacher: Path, tiny: Path, folder: Path) -> dict[str, tuple[Path, dict[str, Path]]]:
    """tag -> (checkpoint, kind -> LoRA) for the teacher and the tiny student, the LoRAs written into the host's folder:
    `sdkd` (sdkd's LCM LoRA of that model) and `public` (the public layout at the teacher's widths; ported for tiny)."""
    from sdkd_ext.checkpoint import open_model
    from sdkd_ext.detect import describe
    from tests.lcm_public import write_public_lcm

    top = describe(open_model(teacher)).topology
    public = write_public_lcm(folder / f"{teacher.stem}-lcm-public.safetensors", top.model_channels, top.context_dim,
                              scale=SCALE)
    ported = folder / f"{tiny.stem}-lcm-public.safetensors"
    ported.unlink(missing_ok=True)
    sdkd("lora-port", str(public), "--to", str(tiny), "--out", str(ported))
    return {"teacher": (teacher, {"sdkd": sdkd_lcm_lora(teacher, folder / f"{teacher.stem}-lcm.safetensors"),
                                  "public": public}),
            "tiny": (tiny, {"sdkd": sdkd_lcm_lora(tiny, folder / f"{tiny.stem}-lcm.safetensors"), "public": ported})}


def modules_in(path: Path) -> int:
    """How many modules a kohya LoRA file holds (its distinct key stems)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return len({k.split(".")[0] for k in f.keys()})


def lcm_checks(report: Report, host: str, teacher: Path, tiny: Path, folder: Path, sample: Sampler,
               image_diff: Callable[[Path, Path], float]) -> list[Path]:
    """`lcm-loras` (written into the host's LoRA `folder`), then per model `lcm-plain-TAG` (the 4-step LCM image without
    a LoRA) and `lcm-KIND-TAG` for each LoRA: nothing went wrong and the image differs from the plain one. The added
    time prints as `TIME host lcm`; returns the LoRA files."""
    cases: dict[str, tuple[Path, dict[str, Path]]] = {}
    with report.timed(host, "lcm"):
        with report.check(host, "lcm-loras") as r:
            cases = lcm_loras(teacher, tiny, folder)
            r["figure"] = " ".join(f"{tag}-{kind}={modules_in(p)}_modules" for tag, (_, loras) in cases.items()
                                   for kind, p in loras.items())
        for tag, (model, loras) in cases.items():
            plain = None
            with report.check(host, f"lcm-plain-{tag}") as r:
                image, problems = sample(model, None, f"lcm-{tag}-plain")
                r["figure"] = f"image={image.name} problems={len(problems)}" + (f" first={problems[0][:200]!r}"
                                                                                  if problems else "")
                r["ok"] = not problems
                plain = image if not problems else None
            for kind, lora in loras.items():
                with report.check(host, f"lcm-{kind}-{tag}") as r:
                    image, problems = sample(model, lora, f"lcm-{tag}-{kind}")
                    diff = image_diff(plain, image) if plain and not problems else math.nan
                    r["figure"] = f"lora={lora.name} problems={len(problems)} mean|img-plain|={diff:.3f}"
                    r["ok"] = not problems and diff > 0
                    if problems:
                        r["figure"] += f" first={problems[0][:200]!r}"
    return [p for _, loras in cases.values() for p in loras.values()]
