"""What a web UI host provides to sdkd: where models live, how to refresh its lists, how to run a GPU job.

`FolderHost` is the plain version (standalone app, CLI, tests); the A1111/Forge and ComfyUI adapters
override only what their host does differently. The plain host "loads" a checkpoint into sdkd's own pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

from ..progress import Event

T = TypeVar("T")
MODEL_SUFFIXES = (".safetensors", ".ckpt")
DEMO_LISTED = "demo-teacher (shipped with sdkd: draws coloured shapes)"  # the shipped demo teacher's name in the list


@dataclass
class FolderHost:
    """A host whose checkpoints and LoRAs are plain folders."""

    checkpoint_dirs: list[Path]
    lora_dirs: list[Path] = field(default_factory=list)
    name: str = "standalone"
    demo: bool = False  # also list sdkd's shipped demo teacher (the standalone app: every section works out of the box)
    page_js: ClassVar[str | None] = None  # page function that gives each job an id for the host's progress bar
    # what to do when the host's folders hold no checkpoint, in the host's own terms
    models_hint: ClassVar[str] = ("start `sdkd ui --models FOLDER` with the folder that holds your SD1.x checkpoints "
                                  "(.safetensors or .ckpt; e.g. A1111's models/Stable-diffusion or ComfyUI's "
                                  "models/checkpoints)")
    loaded: tuple[Path, object] | None = field(default=None, repr=False, compare=False)  # (file, sdkd's pipeline.Loaded)

    def checkpoints(self) -> dict[str, Path]:
        """Display name (path relative to its folder) -> file, for every checkpoint and diffusers folder (and the
        shipped demo teacher, under its marked name, when `demo`)."""
        found = self.own_checkpoints()
        if self.demo:
            from ..checkpoint import SHORT_NAMES

            found.setdefault(DEMO_LISTED, SHORT_NAMES["demo"])
        return found

    def own_checkpoints(self) -> dict[str, Path]:
        """The checkpoints in the host's own folders (no shipped model)."""
        return _listed(self.checkpoint_dirs, lambda p: (p.suffix in MODEL_SUFFIXES and p.is_file())
                       or (p / "model_index.json").is_file())

    def loras(self) -> dict[str, Path]:
        """Display name -> file, for every LoRA file in the LoRA folders."""
        return _listed(self.lora_dirs or [self.lora_dir()], lambda p: p.suffix == ".safetensors" and p.is_file())

    def current_checkpoint(self) -> Path | None:
        """The checkpoint the host has loaded now, if any (plain: the one `load_checkpoint` loaded)."""
        return self.loaded[0] if self.loaded is not None else None

    def load_checkpoint(self, path: Path) -> str:
        """Make `path` the host's loaded checkpoint and say so (plain: sdkd's own pipeline, on the GPU if any)."""
        import torch

        from ..pipeline import load_pipeline

        cuda = torch.cuda.is_available()
        self.loaded = None  # the old pipeline's memory goes first
        self.loaded = (path, load_pipeline(path, "cuda" if cuda else "cpu", torch.float16 if cuda else torch.float32))
        return f"Loaded {path.name} into sdkd's pipeline ({'GPU' if cuda else 'CPU'}) as this app's checkpoint"

    def output_dir(self) -> Path:
        """Where new checkpoints go: the first checkpoint folder, so the host lists them."""
        return self.checkpoint_dirs[0]

    def lora_dir(self) -> Path:
        """Where new LoRAs go."""
        return (self.lora_dirs or [self.output_dir() / "Lora"])[0]

    def report_dir(self) -> Path:
        """Where compare reports go (one folder per report name)."""
        return self.output_dir() / "sdkd-compare"

    def bench_dir(self) -> Path:
        """Where bench results go (one folder per bench name)."""
        return self.output_dir() / "sdkd-bench"

    def refresh(self) -> None:
        """Make the host rescan its model lists (folders need nothing)."""

    def run_job(self, job: Callable[[], T], gpu: bool = False, task: str | None = None) -> T:
        """Run a job under the host's lock; a `gpu` job first moves the host's own model out of VRAM; `task` is the
        page's id for the host's own progress display (plain: just run)."""
        return job()

    def show_progress(self, event: Event) -> None:
        """Mirror an event in the host's own progress display (plain: nothing)."""

    def memory_note(self, gpu: bool) -> str:
        """What the memory estimate leaves out: the model the host holds while a job runs (plain: sdkd's own
        pipeline of "Load it now", which stays where it is)."""
        pipe = self.loaded[1].pipe if self.loaded is not None else None
        if pipe is None:
            return "The estimate is the job's own memory; this app holds no other model."
        size = sum(module_bytes(getattr(pipe, n)) for n in ("unet", "vae", "text_encoder"))
        return (f"The estimate is the job's own memory: it does not include the checkpoint this app has loaded "
                f"({size / 2**30:.2f} GiB), which stays in {'GPU memory' if gpu and pipe.device.type == 'cuda' else 'RAM'}.")


def module_bytes(module: object) -> int:
    """Bytes of a torch module's parameters and buffers (0 for anything else)."""
    tensors = [*module.parameters(), *module.buffers()] if hasattr(module, "parameters") else []
    return sum(t.numel() * t.element_size() for t in tensors)


def _listed(roots: list[Path], wanted: Callable[[Path], bool]) -> dict[str, Path]:
    """Display name (path relative to its folder) -> path, for everything `wanted` under `roots` (first root wins)."""
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if wanted(p):
                    found.setdefault(str(p.relative_to(root)), p)
    return found
