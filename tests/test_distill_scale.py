"""Scale-out: gradient accumulation and 2-process runs train as one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdkd_ext.data import FolderData

from distill_helpers import REPO, cfg, images, main_prune, metadata, one_thread, run, unet_of  # noqa: F401 (fixtures)


def same_training(a: Path, b: Path, init: Path) -> None:
    """Two runs trained the same within float tolerance: their weights differ by < 1% of what training moved them
    (Adam divides by the gradient's magnitude, so summation-order noise in near-zero gradients shows up as ~lr-sized
    steps on a few weights; a different batch would differ by ~100%), and their loss logs agree."""
    wa, wb, w0 = unet_of(a), unet_of(b), unet_of(init)
    gap = sum(((wa[k] - wb[k]) ** 2).sum() for k in wa).sqrt()
    moved = sum(((wa[k] - w0[k]) ** 2).sum() for k in wa).sqrt()
    assert gap < 0.01 * moved, (gap, moved)
    logs = [(p.with_suffix(".run") / "loss.csv").read_text().splitlines()[1:] for p in (a, b)]
    assert len(logs[0]) == len(logs[1])
    for x, y in zip(*logs):
        assert np.allclose([float(v) for v in x.split(",")[:-1]], [float(v) for v in y.split(",")[:-1]], rtol=1e-4)


def test_one_process_with_accumulation_equals_a_bigger_batch(images, tmp_path, teacher_file):
    big = run(teacher_file, tmp_path / "big", FolderData(images), cfg(batch=2, accum=1))
    acc = run(teacher_file, tmp_path / "acc", FolderData(images), cfg(batch=1, accum=2), cache_dir=big.run_dir / "cache")
    same_training(big.exported.checkpoint, acc.exported.checkpoint, main_prune(teacher_file, tmp_path))
    other = run(teacher_file, tmp_path / "other", FolderData(images), cfg(batch=2, seed=1), cache_dir=big.run_dir / "cache")
    with pytest.raises(AssertionError):
        same_training(big.exported.checkpoint, other.exported.checkpoint, main_prune(teacher_file, tmp_path / "o"))


def test_two_processes_equal_one_with_the_same_global_batch(images, tmp_path, teacher_file):
    """`accelerate launch` with 2 CPU processes (batch 1 each) == 1 process with batch 2.

    accelerate's `--cpu` flag starts one process unless MPI is installed; `--multi_gpu` on a machine
    without GPUs starts two torch.distributed processes that accelerate runs as MULTI_CPU (gloo)."""
    common = ["--variant", "tiny", "--data", str(images), "--steps", "3", "--resolution", "64", "--lr", "1e-3",
              "--dtype", "fp32", "--no-preview", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    port = str(29500 + os.getpid() % 1000)
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port, "-m", "sdkd_ext", "distill",
         str(teacher_file), *common, "--batch", "1", "--out", str(tmp_path / "two")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = run(teacher_file, tmp_path / "one", FolderData(images), cfg(batch=2))
    same_training(tmp_path / "two.safetensors", one.exported.checkpoint, main_prune(teacher_file, tmp_path))
    assert metadata(tmp_path / "two.safetensors")["sdkd_distill_batch"] == "2"
