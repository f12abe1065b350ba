"""ComfyUI 0.3.64 from its archive: its venv (own requirements, our CPU torch) and sdkd installed as a user does."""

from __future__ import annotations

import re
from pathlib import Path

from .harness import build_venv, unpack

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
    return src, build_venv(ARCHIVE, requirements(src), tuple(USER_INSTALL))
