"""What a web UI host provides to sdkd: where models live, how to refresh its lists, how to run a GPU job.

`FolderHost` is the plain version (standalone app, CLI, tests); the A1111/Forge and ComfyUI adapters
override only what their host does differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

from ..progress import Event

T = TypeVar("T")
MODEL_SUFFIXES = (".safetensors", ".ckpt")


@dataclass
class FolderHost:
    """A host whose checkpoints and LoRAs are plain folders."""

    checkpoint_dirs: list[Path]
    lora_dirs: list[Path] = field(default_factory=list)
    name: str = "standalone"
    page_js: ClassVar[str | None] = None  # page function that gives each job an id for the host's progress bar

    def checkpoints(self) -> dict[str, Path]:
        """Display name (path relative to its folder) -> file, for every checkpoint and diffusers folder."""
        found: dict[str, Path] = {}
        for root in self.checkpoint_dirs:
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*")):
                if (p.suffix in MODEL_SUFFIXES and p.is_file()) or (p / "model_index.json").is_file():
                    found.setdefault(str(p.relative_to(root)), p)
        return found

    def output_dir(self) -> Path:
        """Where new checkpoints go: the first checkpoint folder, so the host lists them."""
        return self.checkpoint_dirs[0]

    def lora_dir(self) -> Path:
        """Where new LoRAs go."""
        return (self.lora_dirs or [self.output_dir() / "Lora"])[0]

    def report_dir(self) -> Path:
        """Where compare reports go (one folder per report name)."""
        return self.output_dir() / "sdkd-compare"

    def refresh(self) -> None:
        """Make the host rescan its model lists (folders need nothing)."""

    def run_job(self, job: Callable[[], T], gpu: bool = False, task: str | None = None) -> T:
        """Run a job under the host's lock; a `gpu` job first moves the host's own model out of VRAM; `task` is the
        page's id for the host's own progress display (plain: just run)."""
        return job()

    def show_progress(self, event: Event) -> None:
        """Mirror an event in the host's own progress display (plain: nothing)."""
