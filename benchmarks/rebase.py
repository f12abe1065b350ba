"""Rebase benchmark: is a head start from a distilled student worth more than distilling a community model from scratch?

Built on the demo teacher, in code: a "community" model is the demo teacher fine-tuned so that the
colour words red and blue swap (a red shape or background is drawn blue, and the reverse), once by merging a LoRA
trained with sdkd's LoRA trainer into the weights and once by a short full fine-tune. The "public
student" is the demo teacher distilled to BK-SDM tiny for several times the polish budget (never the community
model). Against each community model, after 0/50/150/300 steps of data-free KD from it (same
prompts, batch and lr for all; each polish run repeated with every training seed), the tables report agreement
(PSNR, latent MSE) and the swapped attribute over held-out captions x sampling seeds, each a mean with its 95%
interval, and the paired PSNR differences between the routes (same caption, same seed) that the README's advice rests on:
  (a) prune the community model + KD (today's path), (b) rebase the public student + KD,
  (c) the public student + KD without the difference, (d) the public student as it is.

    python benchmarks/rebase.py --out build/rebase                   # the README table (~2 h on one CPU core)
    python benchmarks/rebase.py --out build/rebase-smoke --quick     # smoke test (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdkd_ext.cache import Cache  # noqa: E402
from sdkd_ext.checkpoint import DictSource, open_model, resolve  # noqa: E402
from sdkd_ext.compare import CompareSpec, compare  # noqa: E402
from sdkd_ext.configs import sd15  # noqa: E402
from sdkd_ext.data import FolderData, PromptData  # noqa: E402
from sdkd_ext.detect import describe  # noqa: E402
from sdkd_ext.distill import distill, export_student, prepare_data, trainable  # noqa: E402
from sdkd_ext.fidelity import GUIDANCE, SIZE, STEPS  # noqa: E402
from sdkd_ext.lora.apply import apply_lora  # noqa: E402
from sdkd_ext.lora.train import DenoisingObjective, LoraSpec, train_lora  # noqa: E402
from sdkd_ext.metrics import mean_interval  # noqa: E402
from sdkd_ext.pipeline import load_pipeline  # noqa: E402
from sdkd_ext.prune import prune, teacher_metadata  # noqa: E402
from sdkd_ext.rebase import measure, rebase  # noqa: E402
from sdkd_ext.sampling import Sampler  # noqa: E402
from sdkd_ext.shapes import ShapeSpec, accuracy, caption, read_attributes, render, sample_specs, split_specs  # noqa: E402
from sdkd_ext.tiny import make_unet, to_ldm  # noqa: E402
from sdkd_ext.train import TrainConfig, run_training  # noqa: E402

SWAP = {"red": "blue", "blue": "red"}  # what the community models learned: these colour words trade places
SWAPPED = ("color", "background")  # the attributes the swap applies to
VARIANT = "tiny"
CPU = torch.device("cpu")


def shifted(spec: ShapeSpec) -> ShapeSpec:
    """What a community model should draw for `spec`'s caption."""
    return replace(spec, **{a: SWAP.get(getattr(spec, a), getattr(spec, a)) for a in SWAPPED})


def write_task(specs: list[ShapeSpec], folder: Path, draw=lambda spec: spec) -> Path:
    """Captioned images: each spec's caption, with the picture of `draw(spec)` (the shifted task: `shifted`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(specs):
        render(draw(spec)).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(caption(spec) + "\n")
    return folder


def export_teacher(unet: torch.nn.Module, out: Path) -> Path:
    """The demo teacher with `unet` in place of its own, as a full single file (its VAE and text encoder)."""
    src = open_model("demo")
    return export_student(unet, src, describe(src).topology, out, "teacher", "fp32", dict, False).checkpoint


def community_lora(data: Path, work: Path, steps: int) -> Path:
    """A LoRA trained on the shifted task with sdkd's trainer, merged into the demo teacher's weights."""
    cfg = TrainConfig(steps=steps, batch=32, lr=1e-3, device="cpu", checkpoint_every=steps)
    lora = train_lora("demo", data, work / "swap-lora", LoraSpec(rank=8, alpha=8), cfg, resolution=SIZE, dtype="fp32",
                      overwrite=True, cache_dir=work / "cache")
    loaded = load_pipeline("demo")
    apply_lora(loaded.pipe, lora.path)
    return export_teacher(loaded.pipe.unet, work / "community-lora")


def community_full(data: Path, work: Path, steps: int) -> Path:
    """The demo teacher's UNet fine-tuned on the shifted task (every weight trained)."""
    src = open_model("demo")
    info = describe(src)
    unet, _ = trainable(src, info)
    scaling = float(sd15("vae").get("scaling_factor", 0.18215))
    dataset, _, _ = prepare_data(FolderData(data), src, Cache(work / "cache"), None, SIZE, SIZE // 8, scaling, 0, [], CPU,
                                 lambda m: None, None, teacher_metadata(resolve("demo")))
    cfg = TrainConfig(steps=steps, batch=32, lr=3e-4, device="cpu", checkpoint_every=steps)
    out = work / "community-full"
    run_training(DenoisingObjective(), unet, dataset, cfg, work / "community-full.run", fingerprint={"job": "full fine-tune"},
                 overwrite=True, on_export=lambda m, r: export_teacher(m, out))
    return out.with_suffix(".safetensors")


def polish(community: Path, init: Path | None, data: PromptData, budgets: list[int], out: Path, cache: Path,
           seed: int) -> dict[int, Path]:
    """KD from `community` starting at `init` (None: its own pruned copy) with training seed `seed`, exported after
    each budget (one resumed run)."""
    files = {}
    for i, steps in enumerate(budgets):
        cfg = TrainConfig(steps=steps, batch=16, lr=1e-3, device="cpu", checkpoint_every=steps, seed=seed,
                          keep_state=i < len(budgets) - 1)  # the next budget resumes this run
        r = distill(community, VARIANT, out, data, cfg, resolution=SIZE, dtype="fp32", overwrite=i == 0, resume=i > 0,
                    cache_dir=cache, preview_prompts=[], init=init)
        files[steps] = out.with_name(f"{out.name}-{steps}.safetensors")
        shutil.copyfile(r.exported.checkpoint, files[steps])
    return files


def evaluation_specs(n: int) -> list[ShapeSpec]:
    """`n` held-out captions, half of them naming a swapped colour (fixed order)."""
    held = split_specs()[1]
    order = np.random.default_rng(0).permutation(len(held))
    swapped = [held[i] for i in order if held[i] != shifted(held[i])][: n // 2]
    others = [held[i] for i in order if held[i] == shifted(held[i])][: n - len(swapped)]
    return swapped + others


def swap_words(image, spec: ShapeSpec) -> list[tuple[bool, bool]]:
    """For each swapped colour word of `spec`'s caption: (drawn as the community model would, drawn as the demo teacher)."""
    read = read_attributes(image)
    return [(read[a] == getattr(shifted(spec), a), read[a] == getattr(spec, a)) for a in SWAPPED if getattr(spec, a) in SWAP]


def interval(values: list[float]) -> dict:
    """Mean and 95% interval (metrics.mean_interval) of `values`, as a JSON-ready dict."""
    iv = mean_interval(values)
    return {"mean": iv[0], "low": iv[1], "high": iv[2]} if iv else {"mean": float(np.mean(values)), "low": None, "high": None}


def score(community: Path, models: dict[str, Path], specs: list[ShapeSpec], seeds: tuple[int, ...]) -> list[dict]:
    """Per model, against `community` over `specs` x sampling `seeds`: per-image PSNR (kept for paired differences),
    latent MSE, the swapped words' readings and the shapes scorer's mean accuracy, each with its 95% interval."""
    prompts = [caption(s) for s in specs]
    drawn = Sampler(steps=STEPS, guidance=GUIDANCE)
    result = compare(community, list(models.values()), CompareSpec(tuple(prompts), seeds, SIZE, drawn, drawn))
    wanted = {caption(s): shifted(s) for s in specs}
    by_caption = {caption(s): s for s in specs}
    rows = []
    for label, run in zip(["community", *models], result.models):
        words = [w for smp in run.samples for w in swap_words(smp.image, by_caption[smp.prompt])]
        scores = [accuracy([smp.image], [wanted[smp.prompt]])["mean"] for smp in run.samples]
        rows.append({"model": label, "psnr_per_image": [smp.psnr for smp in run.samples],
                     "psnr": None if label == "community" else interval([smp.psnr for smp in run.samples]),
                     "latent_mse": run.summary()["latent_mse"],
                     "swap_follows_community": interval([float(c) for c, _ in words]),
                     "swap_follows_demo": interval([float(d) for _, d in words]),
                     "mean_accuracy": interval(scores)})
    return rows


def shown(iv: dict | None, digits: int = 2) -> str:
    """'12.34 ± 0.56' (half the 95% interval), 'ref.' for the reference."""
    if iv is None:
        return "ref."
    if iv["low"] is None:
        return f"{iv['mean']:.{digits}f}"
    return f"{iv['mean']:.{digits}f} ± {(iv['high'] - iv['low']) / 2:.{digits}f}"


def table(rows: list[dict]) -> str:
    """Markdown table of `score` rows (± is half the 95% interval over the images, or over the swapped words)."""
    lines = ["| model | PSNR dB vs community | latent MSE | red/blue words drawn as community (swapped) | as demo teacher "
             "| mean accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        mse = "ref." if r["psnr"] is None else f"{r['latent_mse']:.4f}"
        lines.append(f"| {r['model']} | {shown(r['psnr'])} | {mse} | {shown(r['swap_follows_community'])} "
                     f"| {shown(r['swap_follows_demo'])} | {shown(r['mean_accuracy'])} |")
    return "\n".join(lines)


def paired(rows: list[dict], first: str, second: str) -> dict:
    """PSNR of row `first` minus row `second`, image by image (same caption and sampling seed), with its 95% interval."""
    by = {r["model"]: r["psnr_per_image"] for r in rows}
    return interval([x - y for x, y in zip(by[first], by[second])])


def differences(rows: list[dict], budgets: list[int], train_seeds: list[int]) -> tuple[list[dict], str]:
    """The route comparisons the README's advice rests on, per budget and training seed, as records and a table."""
    asks = [("(b) rebase + KD", "(a) prune + KD"), ("(b) rebase + KD", "(c) public + KD"), ("(c) public + KD", "(a) prune + KD")]
    records, lines = [], ["| steps | training seed | (b) - (a) dB | (b) - (c) dB | (c) - (a) dB |", "|---|---|---|---|---|"]
    zero = {"steps": 0, "seed": None}
    zero.update({"(b) - (a)": paired(rows, "(b) rebased, 0 steps", "(a) pruned community, 0 steps"),
                 "(b) - (c)": paired(rows, "(b) rebased, 0 steps", "(d) public student as is"),
                 "(c) - (a)": paired(rows, "(d) public student as is", "(a) pruned community, 0 steps")})
    records.append(zero)
    for steps in budgets:
        for seed in train_seeds:
            rec = {"steps": steps, "seed": seed}
            for b, a in asks:
                rec[f"{b[:3]} - {a[:3]}"] = paired(rows, f"{b}, {steps} steps, seed {seed}", f"{a}, {steps} steps, seed {seed}")
            records.append(rec)
    for rec in records:
        seed = "-" if rec["seed"] is None else rec["seed"]
        lines.append(f"| {rec['steps']} | {seed} | {shown(rec['(b) - (a)'])} | {shown(rec['(b) - (c)'])} "
                     f"| {shown(rec['(c) - (a)'])} |")
    return records, "\n".join(lines)


def random_init_difference() -> str:
    """The difference figure for a model of the demo's shape that was never trained from it (random init)."""
    demo = open_model("demo")
    other = DictSource(to_ldm(make_unet(describe(demo).topology, seed=5)))
    return measure(other, demo).summary()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the script runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--train-seeds", type=int, default=2, help="training seeds each polish run is repeated with")
    p.add_argument("--sample-seeds", type=int, default=4, help="sampling seeds per held-out caption")
    p.add_argument("--captions", type=int, default=32, help="held-out captions (half of them name a swapped colour)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    quick = a.quick
    budgets = [2, 4] if quick else [50, 150, 300]
    community_steps, public_steps = (4, 8) if quick else (300, 1200)
    n_images, n_prompts, n_eval = (64, 16, 4) if quick else (512, 256, a.captions)
    train_seeds, sample_seeds = list(range(a.train_seeds)), tuple(range(a.sample_seeds))
    work = a.out
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - began:7.0f}s] {m}", flush=True)  # noqa: E731
    train = split_specs()[0]
    shifted_data = write_task(sample_specs(n_images, 1, train), work / "shifted-data", shifted)
    plain_data = write_task(sample_specs(n_images, 0, train), work / "plain-data")
    polish_data = PromptData(tuple(caption(s) for s in sample_specs(n_prompts, 2, train)), guidance=GUIDANCE,
                             sample_steps=STEPS, origin="shapes captions")
    cache = work / "cache"
    log(f"public student: the demo teacher distilled to tiny for {public_steps} steps")
    cfg = TrainConfig(steps=public_steps, batch=32, lr=1e-3, device="cpu", checkpoint_every=public_steps)
    public = distill("demo", VARIANT, work / "public-tiny", FolderData(plain_data), cfg, resolution=SIZE, dtype="fp32",
                     overwrite=True, preview_prompts=[], cache_dir=cache).exported.checkpoint
    report: dict = {"settings": {"budgets": budgets, "community_steps": community_steps, "public_steps": public_steps,
                                 "public": "KD on 512 shapes images, batch 32, lr 1e-3", "images": n_images,
                                 "polish_prompts": n_prompts, "eval_captions": n_eval, "sample_seeds": list(sample_seeds),
                                 "train_seeds": train_seeds, "polish": "data-free KD, batch 16, lr 1e-3",
                                 "interval": "mean +- 1.96 sd / sqrt(n) over images (paired: over image pairs)",
                                 "threads": a.threads},
                    "random_init_difference": random_init_difference(), "communities": {}}
    md = [f"Random-init model of the demo's shape vs the demo teacher: {report['random_init_difference']}"]
    for kind, make in (("LoRA merge", community_lora), ("full fine-tune", community_full)):
        log(f"community model: {kind}")
        community = make(shifted_data, work, community_steps)
        tag = kind.split()[0].lower()
        rebased, diff = rebase(community, "demo", public, work / f"rebased-{tag}", dtype="fp32", overwrite=True)
        log(f"difference {diff.summary()}")
        pruned = prune(community, VARIANT, work / f"pruned-{tag}", dtype="fp32", overwrite=True).checkpoint
        models = {"demo teacher": resolve("demo"), "(d) public student as is": public,
                  "(a) pruned community, 0 steps": pruned, "(b) rebased, 0 steps": rebased.checkpoint}
        for seed in train_seeds:
            for label, init in (("(a) prune + KD", None), ("(b) rebase + KD", rebased.checkpoint), ("(c) public + KD", public)):
                log(f"{kind}: {label}, training seed {seed}")
                files = polish(community, init, polish_data, budgets, work / f"{tag}-{label[1]}-s{seed}", cache, seed)
                models.update({f"{label}, {s} steps, seed {seed}": f for s, f in files.items()})
        log(f"{kind}: scoring {len(models)} models on {n_eval} captions x {len(sample_seeds)} seeds")
        rows = score(community, models, evaluation_specs(n_eval), sample_seeds)
        records, diff_table = differences(rows, budgets, train_seeds)
        report["communities"][kind] = {"difference": diff.summary(), "rows": rows, "paired": records}
        md += [f"\n### Community model: {kind} (difference from the demo teacher: {diff.summary()})\n", table(rows),
               "\nPaired PSNR differences (same caption and sampling seed; ± half the 95% interval):\n", diff_table]
        print("\n".join(md[-3:]), flush=True)
        (work / "rebase.json").write_text(json.dumps(report, indent=2))
    report["seconds"] = time.perf_counter() - began
    report["cpu_seconds"] = time.process_time()
    (work / "rebase.json").write_text(json.dumps(report, indent=2))
    (work / "rebase.md").write_text("\n".join(md) + "\n")
    log(f"done: {work / 'rebase.md'} ({report['cpu_seconds']:.0f} process CPU s)")


if __name__ == "__main__":
    main()
