"""The tab's Make-it-fast and Few-step LoRA sections on tiny models: their estimates and plans, the jobs streamed as
the page runs them (loss curve, sample grid, Load it now, the lists), and their refusals in the tab's words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sdkd_ext.checkpoint import open_model
from sdkd_ext.detect import describe
from sdkd_ext.lcm.job import USE, estimator
from sdkd_ext.lora.names import layout_of_source
from sdkd_ext.lora.peft import FULL_UNET_TARGETS
from sdkd_ext.plan import GIB, Settings
from sdkd_ext.progress import Event
from sdkd_ext.train import STATE_FILE
from sdkd_ext.ui import JobControl, run_in_host
from sdkd_ext.terms import Form
from sdkd_ext.ui.fewstep import NO_TEACHER, fast_job, fast_plan, fast_spec, following, lcm_estimate, lcm_job
from test_host_items import click_handler
from test_tab import BUILTIN, host, tab  # noqa: F401 (fixtures)

FLAG = re.compile(r"--[a-z]")


def few(**changes) -> Form:
    """Few-step LoRA fields for a 2-step run of the tiny student along its teacher, at 64 px."""
    base = dict(checkpoint="student-tiny.safetensors", teacher="teacher.safetensors", kind=BUILTIN, data="", self_n=2,
                steps=2, rank=4, resolution=64, guidance=7.5, vram="", preview_every=1, out="fewstep", resume=False,
                overwrite=False)
    return Form.given("lcm", "tab", **{**base, **changes})


def fast(**changes) -> Form:
    """Make-it-fast fields for a 2 + 2 step run on the tiny teacher, at 64 px, 2 built-in prompts."""
    base = dict(checkpoint="teacher.safetensors", target="Tiny + 4-step LoRA", out="fast", lora_out="",
                distill_steps=2, lcm_steps=2, prompts=2, resolution=64, vram="", overwrite=False)
    return Form.given("fast", "tab", **{**base, **changes})


def test_few_step_estimate_is_the_planners_figures_with_a_separate_teacher(host):
    text = lcm_estimate(host, few(vram="8"))
    src = open_model(host.checkpoints()["student-tiny.safetensors"])
    layout = layout_of_source(src, describe(src).topology)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    expected = estimator(layout, FULL_UNET_TARGETS, 4, 64, True)(
        Settings(precision="fp32" if device == "cpu" else "fp16", device=device))
    assert f"| **training peak** | **{expected.training / GIB:.2f} GiB** |" in text, text
    assert "| teacher (frozen) |" in text and "Settings it will use" in text
    alone = lcm_estimate(host, few(teacher=NO_TEACHER, vram="8"))
    assert "| teacher (frozen) |" not in alone and "Settings it will use" in alone, alone


@pytest.mark.parametrize("changes, needle", [
    (dict(rank=0), "'Rank' must be at least 1"),
    (dict(resolution=100), "'Resolution' 100: use a multiple of 64"),
    (dict(vram="lots"), "'VRAM budget (GB or auto)' 'lots'"),
    (dict(checkpoint=""), "pick a checkpoint first"),
])
def test_few_step_estimate_refuses_in_the_tabs_words(host, changes, needle):
    text = lcm_estimate(host, few(**changes))
    assert text.startswith("No estimate yet:") and needle in text and not FLAG.search(text), text


def test_few_step_job_refuses_before_writing(host):
    cases = {"'Guidance (CFG baked in)' 0.5": few(guidance=0.5, out="g"),
             "Few-step LoRA name '../x'": few(out="../x"),
             "'Steps' must be at least 1": few(steps=0, out="s")}
    before = sorted(host.lora_dir().rglob("*"))
    for needle, fields in cases.items():
        status = run_in_host(host, JobControl(), lcm_job(host, fields))
        assert status.startswith("Error:") and needle in status and not FLAG.search(status), status
    assert sorted(host.lora_dir().rglob("*")) == before


def frames_of(fn, *args) -> list[tuple]:
    """Every update a streaming click handler yields."""
    return list(fn(*args))


def images(frames: list[tuple], at: int) -> list:
    """The new images one output of a streamed job showed, in order (gr.update() dicts are 'unchanged')."""
    return [f[at] for f in frames if not isinstance(f[at], dict)]


def test_few_step_lora_streams_and_lands_in_the_lora_folder_with_the_sampler_line(host, tab):
    from safetensors import safe_open

    fn, outputs = click_handler(tab, "sdkd_fewstep")
    ids = [getattr(o, "elem_id", None) for o in outputs]
    f = few()
    frames = frames_of(fn, "", f.checkpoint, f.teacher, f.kind, f.data, f.self_n, f.steps, f.rank, f.resolution,
                       f.guidance, f.vram, f.preview_every, f.out, f.resume, f.overwrite, f.keep_state)
    assert "Settings it will use" in frames[0][ids.index("sdkd_fewstep_estimate")]
    status = frames[-1][0]
    assert status.startswith("Done: fewstep.safetensors in your LoRA folder"), status
    assert "<lora:fewstep:1>" in status and f"{USE.steps} steps" in status and "LCM" in status, status
    assert f"CFG {USE.guidance:g}" in status and "student-tiny" in status
    grids = images(frames[1:], ids.index("sdkd_samples"))
    assert grids and grids[-1].size == (90 + 2 * 64, 2 * 64)  # teacher at 25 steps above the LoRA at 4, per prompt
    assert images(frames[1:], ids.index("sdkd_loss"))
    assert "fewstep.safetensors" in host.loras()
    with safe_open(str(host.loras()["fewstep.safetensors"]), "pt") as lora:
        meta = lora.metadata()
    assert meta["sdkd_lora_kind"] == "lcm" and meta["sdkd_lcm_teacher"] == "teacher.safetensors"
    teachers = frames[-1][-1]["choices"]  # the Teacher list, last of the refreshed lists
    assert teachers[0] == NO_TEACHER and "teacher.safetensors" in teachers
    assert not (host.lora_dir() / "fewstep.run" / STATE_FILE).exists()  # a finished run keeps no state unless asked
    again = run_in_host(host, JobControl(), lcm_job(host, few()))
    assert again == ("Error: fewstep.safetensors in your LoRA folder already exists; choose another Few-step LoRA name "
                     "or turn on 'Overwrite'"), again


def test_following_points_the_live_view_at_the_phase_now_training(tmp_path):
    from sdkd_ext.ui import Live

    live, seen = Live(), []
    folders = {"distill": tmp_path / "student.run", "lcm": tmp_path / "lora.run"}
    relay = following(live, seen.append, folders)
    for stage, want in (("step 1/2: self-generate", None), ("step 1/2: distill", "distill"),
                        ("step 2/2: self-generate", "distill"), ("step 2/2: lcm", "lcm")):
        relay(Event(stage, 1, 2))
        assert live.run_dir == (folders[want] if want else None), stage
    assert [e.stage for e in seen][-1] == "step 2/2: lcm"


def test_fast_plan_says_route_steps_time_and_both_estimates(host):
    from sdkd_ext.fast import choose_route, expected_seconds
    from sdkd_ext.ui.run import clock

    text = fast_plan(host, fast())
    assert "Route: **prune+kd**" in text, text  # no converted public student in this folder
    assert "1. prune teacher.safetensors to tiny and distil 2 steps" in text
    assert "2. few-step LoRA: 2 steps along teacher.safetensors's guided sampling" in text
    job = fast_spec(host, fast())
    seconds = expected_seconds(job, choose_route(job), "cuda" if torch.cuda.is_available() else "cpu")  # cached timing
    assert f"| **in all** | **{clock(sum(seconds.values()))}** |" in text
    assert all(f"| {phase} |" in text for phase in seconds)
    assert "**Distil**" in text and "**Few-step LoRA**" in text and text.count("| **training peak** |") == 2
    tiny_only = fast_plan(host, fast(target="Tiny"))
    assert "**Few-step LoRA**" not in tiny_only and "few-step LoRA" not in tiny_only, tiny_only


@pytest.mark.parametrize("changes, needle", [
    (dict(checkpoint="student-tiny.safetensors"), "pick its SD1.x teacher"),
    (dict(distill_steps=0), "'Distil steps' must be at least 1"),
    (dict(lcm_steps=0), "'LoRA steps' must be at least 1"),
    (dict(prompts=0), "'Built-in prompts' 0"),
    (dict(lora_out="a/b"), "4-step LoRA name 'a/b'"),
    (dict(target="Huge"), "'Target' 'Huge'"),
])
def test_fast_plan_refuses_in_the_tabs_words(host, changes, needle):
    text = fast_plan(host, fast(**changes))
    assert text.startswith("No plan yet:") and needle in text and not FLAG.search(text), text


def test_make_it_fast_streams_one_job_and_offers_the_student_and_its_lora(host, tab):
    fn, outputs = click_handler(tab, "sdkd_fast")
    ids = [getattr(o, "elem_id", None) for o in outputs]
    f = fast()
    frames = frames_of(fn, "", f.checkpoint, f.target, f.out, f.lora_out, f.distill_steps, f.lcm_steps, f.prompts,
                       f.resolution, f.vram, f.overwrite)
    assert "Route: **prune+kd**" in frames[0][ids.index("sdkd_fast_plan")]
    statuses = [fr[0] for fr in frames[1:-1]]
    assert any(s.startswith("step 1/2: ") for s in statuses) and any(s.startswith("step 2/2: ") for s in statuses), statuses
    last = frames[-1]
    status = last[0]
    assert status.startswith("Done (prune+kd): fast.safetensors in your checkpoint folder, fast-lcm.safetensors in "
                             "your LoRA folder"), status
    assert "<lora:fast-lcm:1>" in status and "LCM" in status and f"{USE.steps} steps" in status
    assert describe(open_model(host.checkpoints()["fast.safetensors"])).variant == "tiny"
    assert "fast-lcm.safetensors" in host.loras()
    assert last[ids.index("sdkd_load")]["visible"] is True
    assert last[ids.index(None, ids.index("sdkd_load"))] == "fast.safetensors"  # what Load it now loads
    assert "fast.safetensors" in last[ids.index("sdkd_checkpoint")]["choices"]
    again = run_in_host(host, JobControl(), fast_job(host, fast()))
    assert again.endswith("choose another Student name or turn on 'Overwrite'"), again
    lora_taken = run_in_host(host, JobControl(), fast_job(host, fast(out="other", lora_out="fast-lcm")))
    assert lora_taken.endswith("choose another 4-step LoRA name or turn on 'Overwrite'"), lora_taken
    assert not (Path(host.output_dir()) / "other.safetensors").exists()
