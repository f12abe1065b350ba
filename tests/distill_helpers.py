"""Shared pieces of the distillation tests: a small captioned image set and a tiny-size distill call."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sdkd_ext.cli import main
from sdkd_ext.convert import UNET
from sdkd_ext.distill import DistillJob, distill
from sdkd_ext.train import TrainConfig
from sdkd_ext.variants import get_variant

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest, and most steadily on a shared machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

def shape_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A coloured rectangle on a coloured background."""
    a = np.empty((h, w, 3), np.uint8)
    a[:] = rng.integers(0, 256, 3)
    x, y = rng.integers(0, w // 2), rng.integers(0, h // 2)
    a[y:y + h // 3, x:x + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(a)

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six captioned images, some not square."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        shape_image(rng, 64 + 16 * (i % 2), 64).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a rectangle, picture {i}")
    return folder

def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 3, "batch": 2, "lr": 1e-3, "device": "cpu", **kw})

def run(teacher, out, data, config=None, progress=None, log=None, **kw):
    kw = {"resolution": 64, "dtype": "fp32", "preview_prompts": (), **kw}
    return distill(DistillJob(teacher, get_variant("tiny"), out, data, config or cfg(), **kw), progress, log)

def unet_of(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(UNET)}

def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()

def main_prune(teacher_file, tmp_path) -> Path:
    assert main(["prune", str(teacher_file), "--variant", "tiny", "--out", str(tmp_path / "pruned"), "--dtype", "fp32"]) == 0
    return tmp_path / "pruned.safetensors"
