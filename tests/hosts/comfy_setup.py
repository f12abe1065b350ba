"""ComfyUI 0.3.64 from its archive: its venv (own requirements and ComfyUI-Manager's, our CPU torch), and sdkd
installed into it by ComfyUI-Manager's own install routine, as its users install node packs."""

from __future__ import annotations

import re
from pathlib import Path

from .harness import build_venv, run_py, unpack

ARCHIVE = "comfyui-0.3.64"
MANAGER = "comfyui-manager-908a100"
TORCH_LINE = r"\s*torch(vision|audio)?\s*([<>=~!;].*)?$"


def requirements(src: Path, manager: Path) -> str:
    """ComfyUI's requirements.txt without its torch lines (torch is ours), plus `requests` (imported, not listed),
    plus ComfyUI-Manager's requirements.txt (what a user with the Manager has installed beside ComfyUI)."""
    keep = [l for l in (src / "requirements.txt").read_text().splitlines() if not re.match(TORCH_LINE, l)]
    return "\n".join(keep + ["requests"] + (manager / "requirements.txt").read_text().splitlines()) + "\n"


def bare_freeze(venv: Path, src: Path, manager: Path) -> Path:
    """`pip freeze --all` of the venv as a ComfyUI-Manager user has it before installing a node pack, written once per
    build: the baseline an install must only add to, however often the checks run on the venv. The Manager fixes the
    environment at every ComfyUI start and after every install (908a100 turns numpy 2 into numpy<2, whatever the pack
    asks), so its fix runs first, by its own command on an empty node folder."""
    path = venv.parent / "bare-freeze.txt"
    stamp = venv / ".sdkd-built"
    if not path.exists() or path.stat().st_mtime < stamp.stat().st_mtime:
        empty = venv.parent / "empty-node"
        empty.mkdir(exist_ok=True)
        manager_install(venv, src, manager, empty)
        path.write_text(run_py(venv, "-m", "pip", "freeze", "--all"))
    return path


def manager_install(venv: Path, src: Path, manager: Path, node: Path) -> str:
    """Install the node pack in folder `node` as ComfyUI-Manager does, by its own headless command `cm-cli.py
    post-install` (its `execute_install_script`: each requirements.txt line through pip, then install.py run from the
    folder; then its environment fixes); returns what it printed."""
    return run_py(venv, str(manager / "cm-cli.py"), "post-install", str(node), cwd=src,
                  env={"COMFYUI_PATH": str(src), "PYTHONNOUSERSITE": "1"})


def venv() -> tuple[Path, Path, Path]:
    """(ComfyUI's tree, ComfyUI-Manager's tree, venv), built once per scratch folder: ComfyUI's and the Manager's
    requirements with our CPU torch, and none of sdkd's packages (the Manager's install of sdkd adds them)."""
    src, manager = unpack(ARCHIVE), unpack(MANAGER)
    return src, manager, build_venv(ARCHIVE, requirements(src, manager))
