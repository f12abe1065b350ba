"""Prune a full-size random SD1.5 file to each variant; print seconds and peak RSS beside a plain copy.

Goal (issue 2): pruning takes <= 2x the copy time and its peak RSS is <= 1.5x the output size.
Each measurement runs in a fresh process, so peak RSS is that job's alone.

    python benchmarks/prune.py [--dir /tmp/sdkd-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, shutil, sys, time
import torch
from sdkd_ext.prune import PruneJob, prune
from sdkd_ext.variants import get_variant
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
what, src, dst = sys.argv[1:4]
t = time.perf_counter()
if what == "copy":
    shutil.copyfile(src, dst)
else:
    prune(PruneJob(src, get_variant(what), dst, overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "import_rss_mb": base / 1024}))
"""


def make_sd15_file(path: Path) -> None:
    """A full-size SD1.5 checkpoint (UNet, VAE, text encoder) of random fp16 weights, streamed to disk."""
    import torch

    from sdkd_ext.configs import VaeShape
    from sdkd_ext.export import write_safetensors
    from sdkd_ext.tiny import make_text_encoder, make_unet, make_vae, to_ldm
    from sdkd_ext.variants import SD15

    with torch.device("meta"):
        state = to_ldm(make_unet(SD15), make_vae(VaeShape()), make_text_encoder(768, 12))
    gen = torch.Generator().manual_seed(0)
    plan = [(k, tuple(v.shape), torch.float16 if v.is_floating_point() else v.dtype,
             (lambda s=tuple(v.shape), d=v.dtype: (torch.randn(s, generator=gen) * 0.02).to(torch.float16)
              if d.is_floating_point else torch.zeros(s, dtype=d)))
            for k, v in state.items()]
    write_safetensors(path, plan, {"note": "random SD1.5-size weights for benchmarking"})


def measure(what: str, src: Path, dst: Path) -> dict:
    """Run one job in a fresh interpreter and return its seconds and peak RSS."""
    out = subprocess.run([sys.executable, "-c", CHILD, what, str(src), str(dst)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Build the file, time a copy and each prune, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    a = ap.parse_args()
    work = a.dir or Path(tempfile.mkdtemp(prefix="sdkd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / "sd15-random.safetensors"
    if not teacher.exists():
        make_sd15_file(teacher)
    size_mb = teacher.stat().st_size / 2**20
    print(f"teacher: {teacher} ({size_mb:,.0f} MiB, fp16)")
    copy = measure("copy", teacher, work / "copy.safetensors")
    print(f"{'job':>6} {'seconds':>8} {'x copy':>7} {'peak RSS MiB':>13} {'output MiB':>11} {'RSS/output':>11}")
    print(f"{'copy':>6} {copy['seconds']:8.1f} {1:7.2f} {copy['peak_rss_mb']:13,.0f} {size_mb:11,.0f} {copy['peak_rss_mb'] / size_mb:11.2f}")
    for variant in ("base", "small", "tiny"):
        out = work / f"sd15-{variant}.safetensors"
        r = measure(variant, teacher, out)
        out_mb = out.stat().st_size / 2**20
        print(f"{variant:>6} {r['seconds']:8.1f} {r['seconds'] / copy['seconds']:7.2f} {r['peak_rss_mb']:13,.0f} "
              f"{out_mb:11,.0f} {r['peak_rss_mb'] / out_mb:11.2f}")
    print(f"(a fresh interpreter with torch and sdkd imported holds {copy['import_rss_mb']:,.0f} MiB before any work)")
    if not a.keep:
        for p in work.glob("*"):
            p.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
