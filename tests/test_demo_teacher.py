"""The shipped demo teacher: what the file is, its short name, that it really draws held-out captions, that
pruning breaks the tiny student and distillation brings it back towards the teacher."""

from __future__ import annotations

import math

import pytest
import torch
from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)

from sdkd_ext.checkpoint import SHORT_NAMES, open_model, resolve
from sdkd_ext.cli import main
from sdkd_ext.configs import VaeShape
from sdkd_ext.data import FolderData
from sdkd_ext.demo import DemoSettings, run_demo
from sdkd_ext.detect import describe, vae_shape
from sdkd_ext.distill import DistillJob, LossWeights, distill
from sdkd_ext.errors import SdkdError
from sdkd_ext.fidelity import CHANCE, FidelitySpec, fidelity, write
from sdkd_ext.pipeline import load_pipeline
from sdkd_ext.prune import PruneJob, prune
from sdkd_ext.shapes import ATTRIBUTES, sample_specs, split_specs, write_folder
from sdkd_ext.train import TrainConfig
from sdkd_ext.variants import VARIANTS, get_variant

DEMO = SHORT_NAMES["demo"]
KD_STEPS = 300


def test_shipped_file_is_a_small_fp16_sd15_teacher():
    assert DEMO.is_file() and DEMO.stat().st_size <= 16_000_000
    assert DEMO.with_suffix(".md").is_file()
    src = open_model(DEMO)
    floats = {src.dtype(k) for k in src.keys() if src.dtype(k).is_floating_point}
    assert floats == {torch.float16}
    assert sum(math.prod(src.shape(k)) for k in src.keys()) <= 8_000_000
    info = describe(src)
    assert (info.kind, info.variant) == ("sd1", "teacher") and info.has_vae and info.has_text_encoder
    assert info.topology.norm_groups == 8 and info.topology.model_channels % info.topology.norm_groups == 0
    assert vae_shape(src).norm_groups == 8 != VaeShape().norm_groups  # read back from the `sdkd_vae` metadata


def test_short_name_resolves_only_when_no_such_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("demo") == DEMO
    assert open_model("demo").keys() == open_model(DEMO).keys()
    (tmp_path / "demo").mkdir()
    assert resolve("demo") == tmp_path / "demo" or resolve("demo").resolve() == (tmp_path / "demo").resolve()


def test_cli_prunes_demo_into_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "demo", "--variant", "tiny"]) == 0
    out = tmp_path / "demo-teacher-bk-tiny.safetensors"
    assert out.is_file() and out.with_suffix(".yaml").is_file()
    assert str(out.name) in capsys.readouterr().out
    loaded = load_pipeline(out)
    assert (loaded.info.kind, loaded.info.variant) == ("student", "tiny")
    assert vae_shape(open_model(out)).norm_groups == 8  # the VAE's recorded shape survives pruning


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The teacher and its freshly pruned tiny student drawing 24 held-out captions; the grid is kept."""
    out = tmp_path_factory.mktemp("demo-teacher")
    tiny = prune(PruneJob(DEMO, get_variant("tiny"), out / "demo-bk-tiny")).checkpoint
    result = fidelity(DEMO, [tiny], FidelitySpec(n=24))
    paths = write(result, out / "report")
    print(f"\n{result.table()}\ngrid: {paths['grid']}")
    return result


LEARNED = {"color": 0.8, "size": 0.7, "background": 0.8, "shape": 0.5}  # accuracy the teacher reaches, at least
NOT_LEARNED = ("position",)  # drawn at chance: see demo-teacher.md


def test_teacher_draws_held_out_captions_far_above_chance(drawn):
    teacher = drawn.accuracy[0]
    assert set(LEARNED) | set(NOT_LEARNED) == set(ATTRIBUTES)
    for name, floor in LEARNED.items():
        assert teacher[name] >= floor >= 1.4 * CHANCE[name], (name, teacher)
    assert teacher["mean"] >= 2.5 * sum(CHANCE.values()) / len(CHANCE)


def test_pruned_tiny_student_is_clearly_worse(drawn):
    teacher, tiny = drawn.accuracy
    assert tiny["mean"] <= teacher["mean"] - 0.2
    assert drawn.rows()[1]["psnr"] < 20


def test_run_demo_end_to_end_with_tiny_settings(tmp_path):
    lines: list[str] = []
    settings = DemoSettings(captions=2, steps=2, images=6, distill_steps=2, batch=2)
    result = run_demo(tmp_path / "demo", log=lines.append, settings=settings)
    assert set(result.students) == {*VARIANTS, "tiny-kd"} and all(p.is_file() for p in result.students.values())
    assert [m.variant for m in result.pruned.comparison.models] == ["teacher", *VARIANTS]
    assert [m.variant for m in result.distilled.comparison.models] == ["teacher", "tiny", "tiny"]
    for folder in result.reports.values():
        assert (folder / "grid.png").is_file() and (folder / "fidelity.md").is_file()
    text = "\n".join(lines)
    assert "| chance |" in text and str(result.reports["pruned"] / "grid.png") in text
    with pytest.raises(SdkdError, match="already exists"):
        run_demo(tmp_path / "demo", log=lines.append, settings=settings)


@pytest.mark.slow
def test_distillation_brings_the_tiny_student_back_towards_the_teacher(tmp_path):
    """Full BK-SDM KD against the task loss alone (output and feature KD off), same data, steps and seed."""
    data = tmp_path / "data"
    write_folder(sample_specs(512, 0, split_specs()[0]), data)
    pruned = prune(PruneJob(DEMO, get_variant("tiny"), tmp_path / "tiny")).checkpoint
    cfg = TrainConfig(steps=KD_STEPS, batch=32, lr=1e-3, seed=0, device="cpu", checkpoint_every=KD_STEPS)
    students = [distill(DistillJob(DEMO, get_variant("tiny"), tmp_path / name, FolderData(data), cfg, weights,
                                   resolution=64, preview_prompts=[])).exported.checkpoint
                for name, weights in (("kd", LossWeights()), ("task-only", LossWeights(out=0, feat=0)))]
    result = fidelity(DEMO, [pruned, *students], FidelitySpec(n=16))
    paths = write(result, tmp_path / "report")
    print(f"\npruned, distilled with KD, distilled with the task loss only ({KD_STEPS} steps):\n{result.table()}\n"
          f"grid: {paths['grid']}")
    before, kd, task = result.rows()[1:]
    assert kd["latent_mse"] < 0.7 * before["latent_mse"] and kd["psnr"] > before["psnr"] + 1
    assert result.accuracy[2]["mean"] > result.accuracy[1]["mean"] + 0.1
    assert kd["latent_mse"] < task["latent_mse"]  # the KD terms bring the student closer than the task loss alone
