"""Installer hook for every host: add what sdkd needs and move no package the host has installed.

A1111 and Forge run it with their `launch` module importable: their pins are known, and so are the versions of
sdkd's packages that work beside them. ComfyUI-Manager and `comfy node install` run it with ComfyUI's python from
this folder, after the lines of requirements.txt: there it installs what is still missing at the newest versions pip
finds that fit every installed package, each held at its installed version by a constraint.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Versions that import and work beside A1111 1.10's pins (transformers 4.30.2, accelerate 0.21.0).
A1111 = {"diffusers": "diffusers==0.31.0", "peft": "peft==0.13.2"}
# Elsewhere (ComfyUI): module -> requirement, floors at the oldest versions sdkd is tested with.
FITTING = {"diffusers": "diffusers>=0.31.0", "peft": "peft>=0.13.2", "accelerate": "accelerate>=0.21.0"}


def installed() -> list[str]:
    """`name==version` of every installed distribution (the first found of a name, as imports find it)."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            pins.setdefault(re.sub(r"[-_.]+", "-", name).lower(), f"{name}=={dist.version}")
    return sorted(pins.values())


def missing(requirements: dict[str, str]) -> list[str]:
    """The requirements whose module does not import from this python."""
    return [spec for module, spec in requirements.items() if importlib.util.find_spec(module) is None]


def install_fitting(specs: list[str]) -> int:
    """pip-install `specs` with every installed package held at its version; exit status of pip."""
    with tempfile.TemporaryDirectory() as tmp:
        held = Path(tmp) / "installed.txt"
        held.write_text("\n".join(installed()) + "\n")
        return subprocess.run([sys.executable, "-m", "pip", "install", "-c", str(held), *specs]).returncode


def main() -> int:
    """Install what is missing the host's way; one line says what was done."""
    try:
        import launch  # A1111 / Forge
    except ModuleNotFoundError:
        launch = None
    if launch is not None:
        for module, spec in A1111.items():
            if not launch.is_installed(module):
                launch.run_pip(f"install {spec}", f"sdkd requirement: {spec}")
        return 0
    specs = missing(FITTING)
    if not specs:
        print(f"sdkd: {', '.join(FITTING)} already installed; nothing to do")
        return 0
    if install_fitting(specs):
        print(f"sdkd: pip found no versions of {', '.join(specs)} that fit the packages installed here, so nothing "
              f"was changed; install them by hand in this python ({sys.executable}) at versions that fit",
              file=sys.stderr)
        return 1
    print(f"sdkd: installed {', '.join(specs)} at versions that fit every installed package (none moved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
