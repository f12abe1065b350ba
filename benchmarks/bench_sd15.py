"""Benchmark at real SD1.5 size with random weights: `sdkd bench` on a 860M-parameter teacher and its pruned students.

Builds (once, cached in --work) an SD1.5-shaped single file with random weights (UNet, VAE, text
encoder; fp16 on disk, run in fp32), prunes it to the requested variants, runs the benchmark and
prints its table, plus the counted GMACs next to BK-SDM's published figures.

    python benchmarks/bench_sd15.py --threads 1 --sequential --t2i-repeats 1

On a shared machine compare the UNet CPU-time column (one thread); wall-clock figures there
measure the neighbours. The run above took 29 minutes on 2 busy cores and peaks at ~8 GB of RAM
(--sequential; without it every model stays loaded: ~19 GB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdkd_ext.bench import BenchSpec, bench, write_outputs  # noqa: E402
from sdkd_ext.configs import VaeShape  # noqa: E402
from sdkd_ext.progress import tqdm_progress  # noqa: E402
from sdkd_ext.prune import PruneJob, prune  # noqa: E402
from sdkd_ext.sampling import Sampler  # noqa: E402
from sdkd_ext.tiny import make_text_encoder, make_unet, make_vae, save, to_ldm  # noqa: E402
from sdkd_ext.variants import SD15, VARIANTS  # noqa: E402

PUBLISHED_GMACS = {"teacher": 338.6, "base": 223.7, "small": 217.6, "tiny": 205.0}  # BK-SDM, 512 px, batch 1


def random_sd15(path: Path) -> Path:
    """An SD1.5-shaped checkpoint with random weights (fp16 on disk), built one component at a time."""
    tensors: dict[str, torch.Tensor] = {}
    for build in (lambda: to_ldm(unet=make_unet(SD15)), lambda: to_ldm(vae=make_vae(VaeShape())),
                  lambda: to_ldm(text_encoder=make_text_encoder(768, 12))):
        tensors.update({k: v.half() if v.is_floating_point() else v for k, v in build().items()})
    return save(tensors, path, {"sdkd_note": "random weights, SD1.5 shapes, for benchmarks"})


def main() -> None:
    """Build or reuse the models, run the benchmark, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/sdkd-sd15-bench", help="folder for the random models and the outputs")
    p.add_argument("--students", default="base,small,tiny", help="variants to benchmark against the teacher")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=2, help="text-to-image steps (few: the UNet step is timed alone)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--t2i-repeats", type=int, default=2)
    p.add_argument("--guidance", type=float, default=7.5, help="above 1 the UNet runs on a doubled batch")
    p.add_argument("--threads", type=int, help="1: CPU times barely disturbed by other programs (no threads spinning in wait)")
    p.add_argument("--sequential", action="store_true", help="one model in memory at a time")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / "sd15-random.safetensors"
    if not teacher.exists():
        t0 = time.perf_counter()
        random_sd15(teacher)
        print(f"built {teacher} in {time.perf_counter() - t0:.0f}s")
    names = [VARIANTS[v.strip()].name for v in a.students.split(",")]
    students = []
    for v in names:
        out = work / f"sd15-random-bk-{v}.safetensors"
        students.append(out if out.exists() else prune(PruneJob(teacher, VARIANTS[v], out)).checkpoint)
    spec = BenchSpec(size=a.size, sampling=Sampler(steps=a.steps, guidance=a.guidance), repeats=a.repeats,
                     t2i_repeats=a.t2i_repeats, interleave=not a.sequential, threads=a.threads)
    result = bench(teacher, students, spec, tqdm_progress())
    js, png = write_outputs(result, work / f"out-{'-'.join(names)}-t{a.threads or torch.get_num_threads()}", overwrite=True)
    print(result.table())
    print("GMACs (convs + linears) counted vs BK-SDM's published figures: "
          + ", ".join(f"{m.variant} {m.macs.layers / 1e9:.1f} vs {PUBLISHED_GMACS[m.variant]}" for m in result.models))
    print(f"wrote {js} and {png}")


if __name__ == "__main__":
    main()
