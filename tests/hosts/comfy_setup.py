"""ComfyUI 0.3.64 from its archive: its venv (own requirements, our CPU torch) and sdkd installed as a user does."""

from __future__ import annotations

import re
from pathlib import Path

from .harness import TORCH, TORCHVISION, build_venv, pip, unpack

ARCHIVE = "comfyui-0.3.64"
# What README.md tells ComfyUI users to install beside the cloned custom node.
USER_INSTALL = ["diffusers", "peft"]


def requirements(src: Path) -> str:
    """ComfyUI's requirements.txt without its torch lines (torch is ours), plus `requests` (imported, not listed)."""
    keep = [l for l in (src / "requirements.txt").read_text().splitlines()
            if not re.match(r"\s*torch(vision|audio)?\s*([<>=~!;].*)?$", l)]
    return "\n".join(keep + ["requests"]) + "\n"


def venv() -> tuple[Path, Path]:
    """(source tree, venv), built once per scratch folder."""
    src = unpack(ARCHIVE)
    reqs = requirements(src)

    def steps(v: Path, cons: Path, log: Path) -> None:
        req_file = cons.parent / "requirements.txt"
        req_file.write_text(reqs)
        pip(v, "install", "-q", "-c", str(cons), TORCH, TORCHVISION, log_to=log)
        pip(v, "install", "-q", "-c", str(cons), "-r", str(req_file), log_to=log)
        pip(v, "install", "-q", "-c", str(cons), *USER_INSTALL, log_to=log)

    return src, build_venv(ARCHIVE, steps, reqs + " ".join(USER_INSTALL))
