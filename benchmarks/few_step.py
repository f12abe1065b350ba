"""Few-step LoRAs on the demo teacher: does tiny + its LCM LoRA at 4 steps draw the teacher's 25-step images?

Builds (kept in OUT, reused on a rerun): the tiny student distilled as `sdkd demo` distils it; an LCM
LoRA for the teacher (`sdkd lcm demo`); one for the tiny student along the teacher's trajectory
(`sdkd lcm TINY --teacher demo`); the teacher's LoRA ported onto tiny (`sdkd lora-port`), before and after
a polish (`sdkd lcm TINY --init-lora PORTED --teacher demo`). Then every row draws the same held-out
shapes captions x seeds and is scored against the teacher at 25 steps (the reference): PSNR of the
images, and the shapes scorer's attribute accuracy, each a mean with a 95% interval over the
caption x seed pairs (mean +- 1.96 sd / sqrt(n)); UNet MACs per image (one call's MACs x calls: steps,
twice with classifier-free guidance); process CPU seconds and wall seconds per image (sampling and
VAE decode, one thread). Non-LCM rows use sdkd's default sampler (DPM++ 2M) at the teacher's CFG;
LCM rows the LCM sampler at CFG 1, as the hosts sample LCM LoRAs.

    python benchmarks/few_step.py --out build/few-step                  # 32 captions x 4 seeds
    python benchmarks/few_step.py --out build/few-step --captions 8 --seeds 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdkd_ext.bench import count_macs  # noqa: E402
from sdkd_ext.data import FolderData, PromptData  # noqa: E402
from sdkd_ext.distill import DistillJob, distill, to_images  # noqa: E402
from sdkd_ext.variants import get_variant  # noqa: E402
from sdkd_ext.fidelity import GUIDANCE, SIZE, check_specs  # noqa: E402
from sdkd_ext.lcm.job import LcmJob, few_step_lora  # noqa: E402
from sdkd_ext.lcm.objective import ConsistencySpec  # noqa: E402
from sdkd_ext.lora.apply import apply_lora  # noqa: E402
from sdkd_ext.lora.port import port_lora  # noqa: E402
from sdkd_ext.lora.train import LoraSpec  # noqa: E402
from sdkd_ext.metrics import mean_interval, psnr  # noqa: E402
from sdkd_ext.pipeline import load_pipeline  # noqa: E402
from sdkd_ext.sampling import Sampler, sample_latents  # noqa: E402
from sdkd_ext.shapes import accuracy, caption, sample_specs, split_specs, write_folder  # noqa: E402
from sdkd_ext.train import TrainConfig  # noqa: E402

TEACHER = "demo"


@dataclass(frozen=True)
class Row:
    """One line of the table: a model, maybe a LoRA, and how it is sampled."""

    label: str
    model: str  # "teacher" | "tiny"
    lora: str | None  # a built LoRA's name, or None
    sampler: Sampler


def rows(steps_ref: int) -> list[Row]:
    """The table's rows, the reference first."""
    lcm = lambda n: Sampler("lcm", n, 1.0)  # noqa: E731
    plain = lambda n: Sampler("dpmpp_2m", n, GUIDANCE)  # noqa: E731
    return [Row(f"teacher {steps_ref} steps (reference)", "teacher", None, plain(steps_ref)),
            Row("teacher + LCM 4", "teacher", "teacher-lcm", lcm(4)),
            Row(f"tiny {steps_ref}", "tiny", None, plain(steps_ref)),
            Row("tiny 8, no LoRA", "tiny", None, plain(8)),
            Row("tiny 4, no LoRA", "tiny", None, plain(4)),
            Row("tiny + LCM 4", "tiny", "tiny-lcm", lcm(4)),
            Row("tiny + ported LCM 4", "tiny", "tiny-ported", lcm(4)),
            Row("tiny + ported LCM 4, polished", "tiny", "tiny-polished", lcm(4))]


def build(out: Path, a: argparse.Namespace) -> dict[str, Path]:
    """The tiny student and the four LoRAs (each built once; delete a file to rebuild it), with their CPU seconds."""
    made, seconds = {}, {}
    train = [caption(s) for s in sample_specs(a.train_prompts, 0, split_specs()[0])]
    data = PromptData(tuple(train), "", GUIDANCE, 20, "shapes training captions")

    def timed(name: str, path: Path, make) -> Path:
        if not path.is_file():
            start = time.process_time()
            make()
            seconds[name] = time.process_time() - start
            print(f"built {name} in {seconds[name]:.0f} CPU-s", file=sys.stderr)
        made[name] = path
        return path

    images = out / "shapes-data"
    if not images.is_dir():
        write_folder(sample_specs(512, 0, split_specs()[0]), images)
    kd = TrainConfig(steps=a.kd_steps, batch=32, lr=1e-3, device="cpu", checkpoint_every=a.kd_steps)
    tiny = timed("tiny", out / "demo-bk-tiny-kd.safetensors",
                 lambda: distill(DistillJob(TEACHER, get_variant("tiny"), out / "demo-bk-tiny-kd", FolderData(images),
                                            kd, resolution=SIZE, preview_prompts=[])))

    def lcm(name: str, model: Path | str, steps: int, teacher: str | None = None, init: Path | None = None) -> Path:
        path = out / f"{name}.safetensors"
        cfg = TrainConfig(steps=steps, batch=a.batch, lr=a.lr, device="cpu", checkpoint_every=steps)
        job = LcmJob(Path(model), path, data, Path(teacher) if teacher else None, init, LoraSpec(a.rank, float(a.rank)),
                     ConsistencySpec((GUIDANCE, GUIDANCE), a.solver_steps), cfg, SIZE, "fp32", cache_dir=out / "cache",
                     preview_prompts=())  # one cache: the teacher draws its training latents once for every run
        return timed(name, path, lambda: few_step_lora(job))

    teacher_lora = lcm("teacher-lcm", TEACHER, a.lcm_steps)
    lcm("tiny-lcm", tiny, a.lcm_steps, TEACHER)
    ported = timed("tiny-ported", out / "tiny-ported.safetensors",
                   lambda: port_lora(teacher_lora, str(tiny), out / "tiny-ported.safetensors"))
    lcm("tiny-polished", tiny, a.polish_steps, TEACHER, ported)
    record = out / "build-seconds.json"
    earlier = json.loads(record.read_text()) if record.is_file() else {}
    record.write_text(json.dumps({**earlier, **seconds}))
    return made


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (metrics.mean_interval; nan where that is undefined)."""
    iv = mean_interval(values)
    return (iv[0], (iv[2] - iv[1]) / 2) if iv else (statistics.fmean(values), float("nan"))


def render(pipe, sampler: Sampler, prompts: list[str], seeds: list[int]) -> tuple[list, float, float]:
    """Images of every (prompt, seed) pair, and the CPU and wall seconds they took."""
    ids = pipe.tokenizer(prompts + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0]
    cond = emb[:-1].repeat(len(seeds), 1, 1)
    pair_seeds = [s * 100003 + i for s in seeds for i in range(len(prompts))]
    cpu, wall = time.process_time(), time.perf_counter()
    z = sample_latents(pipe.unet, sampler, cond, emb[-1:], pair_seeds, SIZE // 8)
    images = to_images(pipe.vae, z, pipe.vae.config.scaling_factor, torch.device("cpu"))
    return images, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the built models, LoRAs and the table")
    p.add_argument("--captions", type=int, default=32, help="held-out captions (default 32)")
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds per caption (default 0,1,2,3)")
    p.add_argument("--reference-steps", type=int, default=25)
    p.add_argument("--kd-steps", type=int, default=300, help="tiny's distillation steps (as sdkd demo)")
    p.add_argument("--lcm-steps", type=int, default=500, help="steps of each LCM LoRA run")
    p.add_argument("--polish-steps", type=int, default=150, help="steps of the ported LoRA's polish")
    p.add_argument("--train-prompts", type=int, default=512, help="training captions the teacher draws from")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--solver-steps", type=int, default=10,
                   help="the teacher's DDIM grid (default 10 here: in runs of a few hundred steps a coarse grid carries "
                        "consistency from t=0 up faster; sdkd lcm's default is the public recipe's 50)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    made = build(out, a)
    specs = check_specs(a.captions)
    prompts, seeds = [caption(s) for s in specs], [int(s) for s in a.seeds.split(",")]
    pair_specs = specs * len(seeds)
    models = {"teacher": TEACHER, "tiny": str(made["tiny"])}
    results, reference = [], None
    for row in rows(a.reference_steps):
        pipe = load_pipeline(models[row.model]).pipe
        if row.lora:
            apply_lora(pipe, made[row.lora])
        images, cpu, wall = render(pipe, row.sampler, prompts, seeds)
        macs = count_macs(pipe.unet, SIZE).layers * row.sampler.steps * (2 if row.sampler.guided else 1)
        reference = reference or images
        scores = [accuracy([im], [s])["mean"] for im, s in zip(images, pair_specs)]
        psnrs = [psnr(x, r) for x, r in zip(images, reference)]
        results.append({"row": row.label, "sampler": row.sampler.describe(), "unet_macs": macs,
                        "cpu_s_per_image": cpu / len(images), "wall_s_per_image": wall / len(images),
                        "psnr": None if images is reference else interval(psnrs),
                        "accuracy": interval(scores)})
        print(f"{row.label}: done", file=sys.stderr)
    ref_macs = results[0]["unet_macs"]
    ratio = lambda r: "reference" if r is results[0] else f"{ref_macs / r['unet_macs']:.1f}x fewer"  # noqa: E731
    lines = [f"Demo teacher, {a.captions} held-out captions x {len(seeds)} seeds ({len(prompts) * len(seeds)} images per "
             f"row), {SIZE} px; {platform.machine()}, torch {torch.__version__}, {a.threads} thread(s)",
             "", "| row | sampler | UNet GMACs / image | vs teacher 25 | CPU s / image | wall s / image | PSNR dB (95%) | "
             "attribute accuracy (95%) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ps = "reference" if r["psnr"] is None else f"{r['psnr'][0]:.2f} ± {r['psnr'][1]:.2f}"
        lines.append(f"| {r['row']} | {r['sampler']} | {r['unet_macs'] / 1e9:.2f} | {ratio(r)} | "
                     f"{r['cpu_s_per_image']:.3f} | {r['wall_s_per_image']:.3f} | {ps} | "
                     f"{r['accuracy'][0]:.3f} ± {r['accuracy'][1]:.3f} |")
    table = "\n".join(lines)
    print(table)
    (out / "few_step.md").write_text(table + "\n")
    (out / "few_step.json").write_text(json.dumps({"rows": results, "build_cpu_s": json.loads(
        (out / "build-seconds.json").read_text())}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
