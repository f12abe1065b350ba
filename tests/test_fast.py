"""`sdkd fast` on tiny models: the route it picks from the files on disk (a converted public tiny student and the
checkpoint's base: rebase + polish; otherwise prune + KD) and the one job (student and its few-step LoRA written,
one cancel keeping the student)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from sdkd_ext.checkpoint import open_model
from sdkd_ext.detect import describe
from sdkd_ext.fast import SHARED_CACHE, FastJob, Route, choose_route, make_fast
from sdkd_ext.progress import Cancelled, Event
from sdkd_ext.public import convert
from sdkd_ext.tiny import save, tiny_checkpoint
from sdkd_ext.train import TrainConfig
from distill_helpers import one_thread  # noqa: F401 (fixture)
from test_convert_public import make_folder
from test_rebase import fine_tuned


@pytest.fixture(scope="module")
def disk(teacher_sd, teacher_file, students, tmp_path_factory) -> dict[str, Path]:
    """What a user's folder may hold: their community checkpoint (a fine-tune of the tiny teacher, its base), a Nota
    BK-SDM tiny folder converted with `sdkd convert`, sdkd's own pruned tiny, and an unrelated SD1.x checkpoint."""
    root = tmp_path_factory.mktemp("fast")
    public = convert(make_folder("nota-bk-sdm-tiny", root), root / "bk-sdm-tiny.safetensors", dtype="fp32").checkpoint
    return {"community": save(fine_tuned(teacher_sd, 0.05, 1), root / "community.safetensors"), "base": teacher_file,
            "public": public, "pruned": students["tiny"].checkpoint,
            "unrelated": save(tiny_checkpoint(width=32, seed=7), root / "unrelated.safetensors")}


def job_of(disk: dict[str, Path], out: Path, *candidates: str, **changes) -> FastJob:
    """A tiny+lcm job of 2 + 2 steps at 64 px on 2 prompts for the community checkpoint, the named files as candidates."""
    settings = dict(checkpoint=disk["community"], target="tiny+lcm", student_out=out / "student.safetensors",
                    lora_out=out / "student-lcm.safetensors", candidates=tuple(disk[c] for c in candidates),
                    distill=TrainConfig(steps=2), lcm=TrainConfig(steps=2, lr=1e-4), prompts=2, resolution=64)
    return FastJob(**{**settings, **changes})


@pytest.mark.parametrize("candidates, kind", [
    (("public", "base"), "rebase+polish"),
    (("unrelated", "public", "base", "community"), "rebase+polish"),  # the base found among others, itself skipped
    (("base",), "prune+kd"),  # no public student
    (("public",), "prune+kd"),  # no base
    (("public", "unrelated"), "prune+kd"),  # a base the checkpoint is not derived from
    (("pruned", "base"), "prune+kd"),  # sdkd's own pruned student is not a converted public one
])
def test_route_is_rebase_and_polish_only_with_a_public_tiny_student_and_the_base(disk, tmp_path, candidates, kind):
    route = choose_route(job_of(disk, tmp_path, *candidates))
    assert route.kind == kind, route
    if kind == "rebase+polish":
        assert (route.public, route.base) == (disk["public"], disk["base"]) and route.difference < 0.5
        lines = route.steps(job_of(disk, tmp_path, *candidates))
        assert lines[0] == "rebase bk-sdm-tiny.safetensors onto community.safetensors (base tinysd.safetensors)"
        assert lines[1] == "polish it: distil 1 steps" and lines[2].startswith("few-step LoRA: 2 steps")
    else:
        assert route == Route("prune+kd")


def test_make_fast_writes_the_student_and_its_few_step_lora(disk, tmp_path, one_thread):
    stages: list[str] = []
    drawn: dict[str, int] = {}  # per job step, the teacher's sampler steps to draw the training latents

    def seen(e: Event) -> None:
        stages.append(e.stage)
        if e.stage.endswith("teacher-samples"):
            drawn[e.stage] = e.total

    r = make_fast(job_of(disk, tmp_path), seen)
    assert r.route.kind == "prune+kd" and not r.cancelled
    assert r.student == tmp_path / "student.safetensors" and r.lora == tmp_path / "student-lcm.safetensors"
    assert describe(open_model(r.student)).variant == "tiny"
    with safe_open(str(r.lora), "pt") as f:
        meta = f.metadata()
    assert meta["sdkd_lora_kind"] == "lcm" and meta["sdkd_base"] == "student.safetensors"
    assert meta["sdkd_lcm_teacher"] == "community.safetensors" and meta["sdkd_lora_status"] == "complete"
    assert {s.split(":")[0] for s in stages} == {"step 1/2", "step 2/2"}
    assert "step 1/2: distill" in stages and "step 2/2: lcm" in stages
    # the teacher draws the training latents once: the LoRA step reuses the distil step's, and the job then drops them
    assert drawn["step 1/2: teacher-samples"] > 0 and drawn.get("step 2/2: teacher-samples", 0) == 0, drawn
    assert not (tmp_path / "student.run" / SHARED_CACHE).exists()
    assert "LCM, 4 steps, CFG 1" in r.use() and "student-lcm" in r.use()


def test_one_cancel_in_the_lora_step_keeps_the_student(disk, tmp_path, one_thread):
    def cancel_in_lcm(e: Event) -> None:
        if e.stage.endswith(": lcm") and e.step >= 1:
            raise Cancelled("stop")

    r = make_fast(job_of(disk, tmp_path, lcm=TrainConfig(steps=5, lr=1e-4)), cancel_in_lcm)
    assert r.cancelled and r.student is not None
    kept = tmp_path / "student.run" / SHARED_CACHE  # a rerun reuses the teacher's latents; the notes say where they are
    assert kept.is_dir() and any(str(kept) in n and "MiB" in n for n in r.notes), r.notes
    src = open_model(r.student)
    assert describe(src).variant == "tiny" and src.metadata["sdkd_distill_status"] == "complete"
    if r.lora is not None:  # what the LoRA step had is exported and says so
        with safe_open(str(r.lora), "pt") as f:
            assert f.metadata()["sdkd_lora_status"] == "cancelled"


def test_rebase_route_polishes_the_public_student_and_leaves_no_scratch(disk, tmp_path, one_thread):
    job = job_of(disk, tmp_path, "public", "base", target="tiny", lora_out=None, distill=TrainConfig(steps=4))
    r = make_fast(job)
    assert r.route.kind == "rebase+polish" and r.lora is None and not r.cancelled
    src = open_model(r.student)
    assert describe(src).variant == "tiny" and src.metadata["sdkd_distill_steps"] == "1"
    assert not list(tmp_path.rglob("rebased.*"))
    assert "as its teacher" in r.use()
