"""AUTOMATIC1111 v1.10.1 (and Forge, its fork) from the archive: a venv from requirements_versions.txt, our CPU torch."""

from __future__ import annotations

import re
from pathlib import Path

from .harness import build_venv, unpack

ARCHIVE = "a1111-v1.10.1"
FORGE = "forge-dfdcbab"
# setuptools 69.5.1 fails to build on this Python; 80.9.0 works (shared/hosts/README.md).
REPLACE = {"setuptools": "setuptools==80.9.0"}


def requirements(src: Path) -> str:
    """requirements_versions.txt with torch left to our constraint and the README's replacements."""
    out = []
    for line in (src / "requirements_versions.txt").read_text().splitlines():
        name = re.split(r"[=<>~! #]", line.strip(), maxsplit=1)[0].lower()
        if not name or name == "torch":
            continue
        out.append(REPLACE.get(name, line.split("#")[0].strip()))
    return "\n".join(out) + "\n"


def venv(archive: str = ARCHIVE) -> tuple[Path, Path]:
    """(webui tree, venv), built once per scratch folder; k-diffusion imports `clip`, which no requirement lists."""
    src = unpack(archive)
    return src, build_venv(archive, requirements(src), ("--no-deps", "clip-anytorch"))
