"""Time to quality: the process CPU-seconds a distillation run needs until its student is as good as a target.

On the demo teacher, each run distils a variant with the real training loop (`train.run_training`, the KD
objective) and, every --every steps, scores the student held in memory against the teacher on 24 held-out
shapes captions (`fidelity.Probe`: PSNR and latent MSE against the teacher's images, mean attribute
accuracy by the shapes scorer; EMA weights when EMA is on) until the cap (--cap-cpu training CPU-seconds),
or the target with --stop-at-target. The table gives the steps and CPU-seconds to the target (PSNR at least
--target-psnr, accuracy at most --target-gap below the teacher's); `--report` re-judges every run kept in
OUT/ttq.json against another target. CPU-seconds count the training loop only: model loading, data
preparation (its own column) and the scoring are left out. The runs are rows of a data table (`RUNS`):
today's defaults and one change each.

    python benchmarks/time_to_quality.py --out build/ttq --variants tiny,small --runs defaults,lr-2e-4 --seeds 0,1
    python benchmarks/time_to_quality.py --out build/ttq --variants tiny --data free --prompts 256 --sample-steps 20
    python benchmarks/time_to_quality.py --out build/ttq --report --target-psnr 11 --target-gap 0.4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdkd_ext.cache import Cache, CachedDataset  # noqa: E402
from sdkd_ext.checkpoint import open_model, resolve  # noqa: E402
from sdkd_ext.data import DataSpec, FolderData, PromptData  # noqa: E402
from sdkd_ext.detect import describe  # noqa: E402
from sdkd_ext.distill import CPU, Encoder, KDObjective, LossWeights, prepare_data, student_model, teacher_model  # noqa: E402
from sdkd_ext.fidelity import GUIDANCE, SIZE, STEPS, Probe, probe  # noqa: E402
from sdkd_ext.prune import teacher_metadata  # noqa: E402
from sdkd_ext.progress import Cancelled, Event  # noqa: E402
from sdkd_ext.shapes import caption, sample_specs, split_specs, write_folder  # noqa: E402
from sdkd_ext.train import Run, TrainConfig, run_training  # noqa: E402
from sdkd_ext.variants import get_variant, hook_pairs  # noqa: E402

# name -> changes from today's defaults (TrainConfig() and LossWeights()); LossWeights fields: sd, out, feat
RUNS: dict[str, dict[str, object]] = {
    "defaults": {},
    "lr-2e-4": {"lr": 2e-4},
    "lr-1e-3": {"lr": 1e-3},
    "lr-1e-3-warmup-100": {"lr": 1e-3, "warmup": 100},
    "feat-0.1": {"feat": 0.1},
    "lr-2e-4-feat-0.1": {"lr": 2e-4, "feat": 0.1},
    "no-feat": {"feat": 0.0},
    "ema": {"ema": True},  # the default decay (0.9999, warmed up: (1+n)/(10+n) early on)
    "batch-4": {"batch": 4},
}
WEIGHT_FIELDS = {f.name for f in fields(LossWeights)}


def settings(changes: dict[str, object], seed: int, cap_steps: int) -> tuple[TrainConfig, LossWeights]:
    """Today's defaults with `changes` applied, on the CPU, without periodic checkpoints."""
    cfg = replace(TrainConfig(), steps=cap_steps, seed=seed, device="cpu", checkpoint_every=10**9,
                  **{k: v for k, v in changes.items() if k not in WEIGHT_FIELDS})
    return cfg, replace(LossWeights(), **{k: v for k, v in changes.items() if k in WEIGHT_FIELDS})


class Curve:
    """Scores every `every` steps against training CPU time; asks the loop to stop at the target or the CPU cap."""

    def __init__(self, scorer: Probe, every: int, target_psnr: float, target_accuracy: float, cap_cpu: float):
        self.scorer, self.every, self.cap_cpu = scorer, every, cap_cpu
        self.target_psnr, self.target_accuracy = target_psnr, target_accuracy
        self.points: list[dict[str, float]] = []
        self.reached: dict[str, float] | None = None
        self.began = self.excluded = 0.0

    def start(self) -> None:
        """Start the training clock."""
        self.began, self.excluded = time.process_time(), 0.0

    def train_cpu(self) -> float:
        """Process CPU-seconds spent training so far (scoring excluded)."""
        return time.process_time() - self.began - self.excluded

    def preview(self, model: torch.nn.Module, step: int, path: Path) -> None:
        """The loop's preview hook (EMA weights applied when EMA is on): score the student, write nothing."""
        cpu, t0 = self.train_cpu(), time.process_time()
        point = {"step": step, "cpu_s": round(cpu, 2), **{k: round(v, 4) for k, v in self.scorer.score(model).items()}}
        self.points.append(point)
        print(f"    step {step:5d}  cpu {cpu:7.1f}s  PSNR {point['psnr']:6.2f}  MSE {point['latent_mse']:.4f}  "
              f"acc {point['accuracy']:.2f}", flush=True)
        self.reached = self.reached or reached([point], self.target_psnr, self.target_accuracy)
        self.excluded += time.process_time() - t0

    def progress(self, event: Event) -> None:
        """Stop once the target is reached or the CPU cap is spent."""
        if event.stage == "distill" and (self.reached is not None or self.train_cpu() > self.cap_cpu):
            raise Cancelled


def prepared(data: DataSpec, src, teacher: torch.nn.Module, cache: Cache, seed: int) -> tuple[CachedDataset, float]:
    """The cached dataset for `data` and the process CPU-seconds it took to make (0 when cached before)."""
    t0 = time.process_time()
    dataset, _, _ = prepare_data(data, teacher, [],
                                 Encoder(src, cache, SIZE, seed, CPU, lambda m: None, None, teacher_metadata(resolve("demo"))))
    return dataset, time.process_time() - t0


def one_run(src, info, teacher: torch.nn.Module, dataset: CachedDataset, variant: str, changes: dict[str, object],
            seed: int, curve: Curve, work: Path, cap_steps: int) -> dict:
    """Distil `variant` with `changes` and `seed`, scored along the way by `curve`; returns the curve and the outcome."""
    cfg, weights = settings({**changes, "preview_every": curve.every}, seed, cap_steps)
    v = get_variant(variant)
    student, _ = student_model(src, info, v)
    objective = KDObjective(teacher, hook_pairs(v, info.topology), weights)
    curve.start()
    run_training(objective, student, dataset, cfg, Run(work / "run", {}, overwrite=True, stage="distill"),
                 progress=curve.progress, preview=curve.preview)
    return {"points": curve.points}


def reached(points: list[dict], target_psnr: float, target_accuracy: float) -> dict | None:
    """The first scored point at or past the target, or None."""
    return next((p for p in points if p["psnr"] >= target_psnr and p["accuracy"] >= target_accuracy), None)


def table(rows: list[dict], target_psnr: float, gap: float) -> str:
    """Markdown: per run, steps and CPU-seconds to the target (or the best reached within the cap), the target given
    as PSNR and a gap below the teacher's accuracy (each run's own Probe figure)."""
    lines = ["| variant | run | data | seed | steps to target | CPU-s to target | best PSNR dB | its accuracy | at step "
             "| CPU-s/step | run to |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hit = reached(r["points"], target_psnr, r["teacher_accuracy"] - gap)
        best, last = max(r["points"], key=lambda p: p["psnr"]), r["points"][-1]
        to = [str(hit["step"]), f"{hit['cpu_s']:.0f}"] if hit else [f"> {last['step']}", f"> {last['cpu_s']:.0f}"]
        made = f" (made in {r['data_cpu_s']:.0f} CPU-s)" if r["data_cpu_s"] >= 1 else ""
        lines.append(f"| {r['variant']} | {r['run']} | {r['data']}{made} | {r['seed']} | {to[0]} | {to[1]} | {best['psnr']:.2f} "
                     f"| {best['accuracy']:.2f} | {best['step']} | {last['cpu_s'] / last['step']:.3f} | {r['cap']} |")
    teacher = rows[0]["teacher_accuracy"] if rows else float("nan")
    return (f"Target: PSNR >= {target_psnr:g} dB against the teacher and mean accuracy >= {teacher - gap:.2f} (the teacher's "
            f"{teacher:.2f} - {gap:g}), on 24 held-out captions\n\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (data, cache, results)")
    p.add_argument("--variants", default="tiny,small")
    p.add_argument("--runs", default="defaults", help=f"comma-separated rows of RUNS: {', '.join(RUNS)}")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--data", default="folder", choices=["folder", "free"],
                   help="folder: rendered shapes images; free: the teacher's own samples of shapes captions")
    p.add_argument("--images", type=int, default=512, help="folder: number of training images")
    p.add_argument("--prompts", type=int, default=256, help="free: number of prompts (teacher samples)")
    p.add_argument("--sample-steps", type=int, default=STEPS, help="free: teacher sampler steps per sample")
    p.add_argument("--every", type=int, default=100, help="steps between scores")
    p.add_argument("--target-psnr", type=float, default=18.0)
    p.add_argument("--target-gap", type=float, default=0.1, help="accuracy at most this far below the teacher's")
    p.add_argument("--stop-at-target", action="store_true", help="end a run at the target (default: run to the cap, "
                   "so --report can judge any target later)")
    p.add_argument("--report", action="store_true", help="print the table of every run in OUT/ttq.json and exit")
    p.add_argument("--cap-cpu", type=float, default=90.0, help="training CPU-seconds per run before giving up")
    p.add_argument("--cap-steps", type=int, default=100000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results = a.out / "ttq.json"
    if a.report:
        print(table(json.loads(results.read_text()), a.target_psnr, a.target_gap))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    cache = Cache(a.out / "cache")
    train_specs = split_specs()[0]
    if a.data == "folder":
        folder = a.out / f"shapes-{a.images}"
        if not folder.is_dir():
            write_folder(sample_specs(a.images, 0, train_specs), folder)
        data: DataSpec = FolderData(folder)
        label = f"{a.images} images"
    else:
        data = PromptData(tuple(caption(s) for s in sample_specs(a.prompts, 0, train_specs)), guidance=GUIDANCE,
                          sample_steps=a.sample_steps, origin="shapes captions")
        label = f"free {a.prompts}x{a.sample_steps}"
    src = open_model("demo")
    info = describe(src)
    teacher = teacher_model(src, info, CPU)
    dataset, data_cpu = prepared(data, src, teacher, cache, 0)
    scorer = probe(src, teacher, cache)
    teacher_accuracy = scorer.teacher_accuracy["mean"]
    stop = a.target_psnr if a.stop_at_target else float("inf")
    print(f"teacher accuracy {teacher_accuracy:.2f}; cap {a.cap_cpu:g} training CPU-s\ndata: {data.describe()} "
          f"({len(dataset)} samples, prepared in {data_cpu:.1f} CPU-s); {a.threads} thread(s), torch {torch.__version__}",
          flush=True)
    rows = []
    kept = json.loads(results.read_text()) if results.is_file() else []
    for variant in a.variants.split(","):
        for name in a.runs.split(","):
            for seed in map(int, a.seeds.split(",")):
                print(f"-- {variant} {name} seed {seed} ({label})", flush=True)
                curve = Curve(scorer, a.every, stop, teacher_accuracy - a.target_gap, a.cap_cpu)
                r = one_run(src, info, teacher, dataset, variant, RUNS[name], seed, curve, a.out, a.cap_steps)
                rows.append({"variant": variant, "run": name, "seed": seed, "data": label, "data_cpu_s": round(data_cpu, 1),
                             "cap": f"{a.cap_steps} steps" if a.cap_cpu > 1e8 else f"{a.cap_cpu:g} CPU-s",
                             "teacher_accuracy": round(teacher_accuracy, 4), **r})
                results.write_text(json.dumps(kept + rows, indent=1))
    print(table(rows, a.target_psnr, a.target_gap))


if __name__ == "__main__":
    main()
