"""The sdkd tab's callbacks on tiny models: what a file is, planner estimates, live Distil/LoRA updates, Cancel,
Load it now (standalone and A1111/Forge), Bench, LoRA port, Rebase, the page script and the quiet console."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import threading
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdkd_ext.errors import SdkdError
from sdkd_ext.hosts import a1111
from sdkd_ext.hosts.base import FolderHost
from sdkd_ext.plan import GIB, Settings, estimate
from sdkd_ext.progress import Event
from sdkd_ext.terms import Form
from sdkd_ext.ui import (JobControl, bench_job, distil_estimate, file_text, load_checkpoint, lora_estimate, port_job,
                         rebase_job, run_in_host)
from sdkd_ext.ui.run import loss_series, progress_line
from sdkd_ext.variants import get_variant
from test_host_items import click_handler

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = "built-in prompts (teacher generates)"


def distil_form(**values) -> Form:
    """The Distil section's values for a 10-step tiny student of the teacher at 64 px (samples at the end only)."""
    base = dict(checkpoint="teacher.safetensors", variant="tiny", kind=BUILTIN, data="", steps=10, resolution=64,
                vram="auto", preview_every=0)
    return Form.given("distil", "tab", **{**base, **values})


def lora_form(**values) -> Form:
    """The LoRA section's values for a 10-step LoRA of the tiny student at 64 px with an 8 GB budget."""
    base = dict(checkpoint="student-tiny.safetensors", rank=4, alpha=4, steps=10, resolution=64, text_encoder=False,
                vram="8")
    return Form.given("lora", "tab", **{**base, **values})


@pytest.fixture(scope="module")
def host(teacher_file, students, tmp_path_factory) -> FolderHost:
    """A plain host whose checkpoint folder holds the tiny teacher and its tiny student, and an empty LoRA folder."""
    root = tmp_path_factory.mktemp("tab")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(teacher_file, folder / "teacher.safetensors")
    for suffix in (".safetensors", ".yaml"):
        shutil.copy(students["tiny"].checkpoint.with_suffix(suffix), folder / f"student-tiny{suffix}")
    (root / "models" / "Lora").mkdir()
    return FolderHost([folder], [root / "models" / "Lora"])


@pytest.fixture(scope="module")
def tab(host):
    pytest.importorskip("gradio")
    from sdkd_ext.ui import build_tab

    return build_tab(host)


def test_what_this_file_is_reads_as_a_sentence_and_a_table(host, students, tmp_path):
    teacher = file_text(host, "teacher.safetensors")
    assert teacher.startswith("**teacher.safetensors** is an SD1.x teacher")
    params = sum(v.numel() for k, v in load_file(str(host.checkpoints()["teacher.safetensors"])).items()
                 if k.startswith("model.diffusion_model."))
    assert f"| SD1.x checkpoint | teacher | {params:,} | float32 | UNet, VAE, text encoder |" in teacher
    student = file_text(host, "student-tiny.safetensors")
    assert "a BK-SDM **tiny** student" in student
    assert f"| BK-SDM student | tiny | {students['tiny'].unet_params:,} |" in student
    assert "{" not in teacher + student  # not JSON
    assert file_text(host, "") == "Pick a checkpoint to see what it is."


def test_the_standalone_app_lists_the_shipped_demo_teacher_and_says_where_to_point_models(tmp_path):
    """21.5: with no checkpoint of one's own every section still has a teacher, and the empty state says what to do."""
    from sdkd_ext.checkpoint import SHORT_NAMES
    from sdkd_ext.hosts.base import DEMO_LISTED
    from sdkd_ext.hosts.standalone import standalone_host
    from sdkd_ext.ui import prune_job

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "notes.txt").write_text("no model here")
    host = standalone_host([folder], [])
    assert host.checkpoints() == {DEMO_LISTED: SHORT_NAMES["demo"]}
    empty = file_text(host, "")
    assert f"No checkpoint found in `{folder}`" in empty and "sdkd ui --models FOLDER" in empty and DEMO_LISTED in empty
    demo = file_text(host, DEMO_LISTED)
    assert "is an SD1.x teacher" in demo and "shipped demo teacher" in demo and "--models" in demo
    status = run_in_host(host, JobControl(), prune_job(host, DEMO_LISTED, "tiny", "", "fp16", False))
    assert status.startswith("Done: tiny student") and (folder / "demo-teacher-bk-tiny.safetensors").is_file(), status
    assert list(host.checkpoints()) == ["demo-teacher-bk-tiny.safetensors", DEMO_LISTED]
    assert "Pick a checkpoint" in file_text(host, "")
    assert DEMO_LISTED not in FolderHost([folder]).checkpoints(), "only the standalone app lists it"


def test_distil_estimate_is_the_planners_figures_and_settings(host):
    text = distil_estimate(host, distil_form(vram="64"))
    from sdkd_ext.detect import describe
    from sdkd_ext.checkpoint import open_model

    topology = describe(open_model(host.checkpoints()["teacher.safetensors"])).topology
    device = "cuda" if torch.cuda.is_available() else "cpu"
    expected = estimate(get_variant("tiny"), 64, Settings(precision="fp32" if device == "cpu" else "fp16", device=device), topology)
    assert f"| **training peak** | **{expected.training / GIB:.2f} GiB** |" in text, text
    assert "Settings it will use: micro-batch 1 x accumulation 1" in text
    assert "| teacher (frozen) |" in text and "| optimiser |" in text
    assert text.endswith("The estimate is the job's own memory; this app holds no other model."), text


def test_the_estimate_says_it_leaves_out_the_model_the_app_holds(host, students):
    """21.10: the estimate names the loaded checkpoint it does not include, with its size."""
    from sdkd_ext.pipeline import load_pipeline

    held = FolderHost(host.checkpoint_dirs, host.lora_dirs)
    loaded = load_pipeline(students["tiny"].checkpoint)
    held.loaded = (students["tiny"].checkpoint, loaded)
    size = sum(p.numel() * p.element_size() for n in ("unet", "vae", "text_encoder")
               for p in [*getattr(loaded.pipe, n).parameters(), *getattr(loaded.pipe, n).buffers()])
    text = distil_estimate(held, distil_form(vram="64"))
    assert (f"it does not include the checkpoint this app has loaded ({size / 2**30:.2f} GiB), which stays in "
            "RAM.") in text, text  # loaded on the CPU


@pytest.mark.parametrize("vram, resolution, needle", [
    ("0.0001", 64, "**Does not fit, the job would refuse to start**"),
    ("lots", 64, "'VRAM budget (GB or auto)' 'lots': give the GPU memory in GB"),
    ("auto", 100, "'Resolution' 100: use a multiple of 64"),
])
def test_distil_estimate_refuses_in_the_tabs_words(host, vram, resolution, needle):
    text = distil_estimate(host, distil_form(resolution=resolution, vram=vram))
    assert needle in text, text
    assert not re.search(r"--[a-z]", text) and str(host.output_dir()) not in text


def test_the_job_refuses_what_the_estimate_refuses(host):
    status = run_in_host(host, JobControl(), __import__("sdkd_ext.ui", fromlist=["x"]).distill_job(
        host, distil_form(self_n=2, steps=2, vram="0.0001", out="nofit")))
    assert status.startswith("Error: the memory planner finds no settings that fit 0.0001 GiB"), status
    assert not (host.output_dir() / "nofit.safetensors").exists()


def test_lora_estimate_takes_students_and_refuses_bad_rank(host):
    text = lora_estimate(host, lora_form(rank=4))
    assert "| trainable (fp32) |" in text and "Settings it will use" in text, text
    assert "'Rank' must be at least 1" in lora_estimate(host, lora_form(rank=0))


def test_progress_line_and_loss_log_reading(tmp_path):
    e = Event("distill", 12, 100, metrics={"loss": 0.12345, "it_s": 2.5, "eta_s": 3725})
    assert progress_line(e) == "distill 12/100 · loss 0.1235 · 2.5 it/s · ETA 1:02:05"
    assert progress_line(Event("cache-latents", 3, 8)) == "cache-latents 3/8"
    log = tmp_path / "loss.csv"
    log.write_text("step,loss,task,lr,seconds\n1,2.0,1.5,1e-4,0.1\n2,1.0,0.5,1e-4,0.1\n3,0.")  # last row half-written
    assert loss_series(log) == {"loss": [(1, 2.0), (2, 1.0)], "task": [(1, 1.5), (2, 0.5)]}


def frames_of(fn, *args) -> list[tuple]:
    """Every update a streaming click handler yields."""
    return list(fn(*args, progress=None))


def test_distil_streams_progress_curve_and_samples_and_cancel_keeps_a_student_that_loads(host, tab):
    from sdkd_ext.checkpoint import open_model
    from sdkd_ext.detect import describe

    fn, outputs = click_handler(tab, "sdkd_distill")
    stop, _ = click_handler(tab, "sdkd_cancel")
    ids = [getattr(o, "elem_id", None) for o in outputs]
    at = {i: ids.index(i) for i in ("sdkd_status", "sdkd_loss", "sdkd_samples", "sdkd_load", "sdkd_distil_estimate",
                                    "sdkd_checkpoint")}
    frames, curves, grids = [], [], []
    for f in fn("", "teacher.safetensors", "tiny", BUILTIN, "", 2, 100000, 64, "auto", 1, 1, 1, 1, "live", False,
                False, False, progress=None):  # a sample grid every step, and far more steps than it will run
        frames.append(f)
        curves += [f[at["sdkd_loss"]]] if not isinstance(f[at["sdkd_loss"]], dict) else []
        grids += [f[at["sdkd_samples"]]] if not isinstance(f[at["sdkd_samples"]], dict) else []
        if len(grids) >= 2 and curves and len(frames) > 2:
            assert stop() == "cancelling at the next step..."
    assert "Settings it will use" in frames[0][at["sdkd_distil_estimate"]]  # the estimate comes before training
    statuses = [f[at["sdkd_status"]] for f in frames[1:-1]]
    # each stage shows its own name, count, rate and ETA; with a grid every step the preview stage is most often seen
    assert any(s.startswith(("distill ", "preview ")) and "it/s" in s and "ETA" in s for s in statuses), statuses
    assert any(s.startswith("teacher-samples ") and "ETA" in s for s in statuses), statuses
    assert grids[0].size == grids[1].size and grids[0].size[1] == 2 * 64  # teacher row above student row
    assert grids[0].tobytes() != grids[1].tobytes()  # the student row changes as it trains
    last = frames[-1]
    assert last[at["sdkd_status"]].startswith("Cancelled at step ") and "live.safetensors" in last[0], last[0]
    assert describe(open_model(host.checkpoints()["live.safetensors"])).variant == "tiny"
    assert last[at["sdkd_load"]]["visible"] is True and "live.safetensors" in last[at["sdkd_checkpoint"]]["choices"]
    written = last[ids.index(None, at["sdkd_load"])]  # the hidden field after the button holds the list name
    assert written == "live.safetensors"
    load, _ = click_handler(tab, "sdkd_load")
    assert load(written) == "Loaded live.safetensors into sdkd's pipeline (CPU) as this app's checkpoint"
    assert host.current_checkpoint() == host.checkpoints()["live.safetensors"] and host.loaded[1].info.variant == "tiny"
    from sdkd_ext.ui import build_tab

    fresh = build_tab(host)  # the picker starts on the loaded model
    picker = next(b for b in fresh.blocks.values() if getattr(b, "elem_id", None) == "sdkd_checkpoint")
    assert picker.value == "live.safetensors"


def test_load_refuses_nothing_to_load(host):
    assert load_checkpoint(host, "") == "Error: nothing to load yet; run Prune, Distil or Rebase first"


def test_lora_streams_its_loss_curve_and_sample_grids(host, tab, tmp_path):
    from PIL import Image

    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"a {colour} square")
    fn, outputs = click_handler(tab, "sdkd_lora")
    ids = [getattr(o, "elem_id", None) for o in outputs]
    frames = frames_of(fn, "", "student-tiny.safetensors", str(tmp_path), 4, 4, 3, 64, "", False, "style", False, False, 1)
    assert "Settings it will use" in frames[0][ids.index("sdkd_lora_estimate")]
    assert frames[-1][0].startswith("Done: style.safetensors in your LoRA folder") and "<lora:style:1>" in frames[-1][0]
    assert any(not isinstance(f[ids.index("sdkd_loss")], dict) for f in frames[1:])
    grids = [f[ids.index("sdkd_samples")] for f in frames[1:] if not isinstance(f[ids.index("sdkd_samples")], dict)]
    assert grids and grids[-1].size == (90 + 2 * 64, 2 * 64)  # without the LoRA above with it, one per caption
    assert "style.safetensors" in host.loras()


# ---- Load it now in A1111 and Forge ---------------------------------------------------------------------------------

class Opts:
    """Stand-in for A1111's `shared.opts` (modules/options.py): `set` runs the option's change callback and returns
    False when the value is unchanged; `save` writes the config."""

    def __init__(self, onchange):
        self.sd_model_checkpoint, self.onchange, self.saved = "teacher.safetensors [abc]", onchange, []

    def set(self, key, value, is_api=False, run_callbacks=True):
        if getattr(self, key) == value:
            return False
        setattr(self, key, value)
        self.onchange()
        return True

    def save(self, filename):
        self.saved.append(filename)


@pytest.fixture
def webui(host, monkeypatch):
    """`modules.*` stand-ins with A1111's checkpoint list of `host`'s files, recording what loads."""
    infos = {f"{n} [abc]": types.SimpleNamespace(filename=str(p), title=f"{n} [abc]", name=n)
             for n, p in host.checkpoints().items()}
    calls = []
    lock = threading.Lock()
    sd_models = types.SimpleNamespace(
        checkpoints_list=infos, list_models=lambda: calls.append("list"),
        get_closet_checkpoint_match=lambda s: next((i for t, i in infos.items() if s and s in t), None),
        reload_model_weights=lambda info=None, forced_reload=False: calls.append(("reload", info.title, forced_reload,
                                                                                    lock.locked())))
    shared = types.SimpleNamespace(config_filename="config.json", cmd_opts=types.SimpleNamespace(ckpt_dir=None))
    shared.opts = Opts(lambda: calls.append(("onchange", shared.opts.sd_model_checkpoint)))
    modules = types.SimpleNamespace(sd_models=sd_models, shared=shared, call_queue=types.SimpleNamespace(queue_lock=lock))
    for name, mod in {"modules": modules, "modules.sd_models": sd_models, "modules.shared": shared,
                      "modules.call_queue": modules.call_queue}.items():
        monkeypatch.setitem(__import__("sys").modules, name, mod)
    web = object.__new__(a1111.A1111Host)
    FolderHost.__init__(web, host.checkpoint_dirs, host.lora_dirs, "a1111")
    return web, modules, calls


def test_a1111_loads_a_student_through_its_checkpoint_setting(webui):
    web, modules, calls = webui
    assert web.current_checkpoint() == Path(modules.sd_models.checkpoints_list["teacher.safetensors [abc]"].filename)
    assert load_checkpoint(web, "student-tiny.safetensors") == "Loaded student-tiny.safetensors [abc] as the web UI's checkpoint"
    assert calls == ["list", ("onchange", "student-tiny.safetensors [abc]")] and modules.shared.opts.saved == ["config.json"]
    calls.clear()
    load_checkpoint(web, "student-tiny.safetensors")  # already selected: read again (a re-distilled file)
    assert calls == ["list", ("reload", "student-tiny.safetensors [abc]", True, True)]


def test_forge_loads_a_student_through_set_config_and_reload(webui, monkeypatch):
    web, modules, calls = webui
    sysinfo = types.SimpleNamespace(set_config=lambda req: calls.append(("set_config", req)))
    monkeypatch.setitem(__import__("sys").modules, "modules.sysinfo", sysinfo)
    modules.sysinfo = sysinfo
    modules.sd_models.forge_model_reload = lambda: calls.append(("forge_reload", modules.call_queue.queue_lock.locked()))
    assert load_checkpoint(web, "student-tiny.safetensors").startswith("Loaded student-tiny.safetensors [abc]")
    assert calls == ["list", ("set_config", {"sd_model_checkpoint": "student-tiny.safetensors [abc]"}),
                     ("forge_reload", True)]


def test_a1111_refuses_a_file_it_does_not_list(webui, tmp_path):
    web, modules, calls = webui
    modules.sd_models.checkpoints_list.clear()
    assert load_checkpoint(web, "student-tiny.safetensors") == (
        "Error: student-tiny.safetensors is not in the web UI's checkpoint list; press Refresh and try again")


# ---- Bench, LoRA port, Rebase ------------------------------------------------------------------------------------------

@pytest.mark.slow  # 40 s alone, up to 105 s on a loaded machine: two pipelines timed, most of it library imports
def test_bench_gives_figures_and_a_chart(host, tab):
    fn, outputs = click_handler(tab, "sdkd_bench")
    status, figures, chart = fn("", "teacher.safetensors", ["student-tiny.safetensors"], 64, "dpmpp_2m", 1, 7.5, 1, 1,
                                "quick", progress=None)
    assert status == "Bench: quick/bench.json in the sdkd-bench folder", status
    rows = [line for line in figures.splitlines() if line.startswith("| teacher") or line.startswith("| student-tiny")]
    assert len(rows) == 2 and "| 1.00x |" in rows[0] and rows[1].split("|")[2].strip() == "tiny", figures
    saved = json.loads((host.bench_dir() / "quick" / "bench.json").read_text())
    assert f"{saved['models'][1]['unet_speedup']:.2f}x" in rows[1]
    assert chart.size[0] == 900
    refused = fn("", "teacher.safetensors", [], 64, "dpmpp_2m", 1, 7.5, 1, 1, "none", progress=None)[0]
    assert refused == "Error: pick at least one student to bench against the teacher"


def test_compare_draws_students_with_their_sampler_and_lora_and_the_teacher_at_its_own(host, tab):
    """The Compare section's widgets reach the core: students at lcm 2 steps cfg 1 with a LoRA from the LoRA list, the
    teacher at its own 3 steps; the lcm warning is on the status line until the LoRA is an LCM one; bad settings
    are refused in the widgets' words."""
    from test_compare import lora_file

    student = host.checkpoints()["student-tiny.safetensors"]
    lora_file(student, host.lora_dir() / "tiny-style.safetensors")
    lora_file(student, host.lora_dir() / "tiny-speed.safetensors", {"sdkd_lora_kind": "lcm"})
    fn, _ = click_handler(tab, "sdkd_compare")
    args = ("", "teacher.safetensors", ["student-tiny.safetensors"], "a red box", "0", "fast", 64, "lcm", 2, 1.0)
    status, grid = fn(*args, "tiny-style.safetensors", 1.0, 3, 7.5, progress=None)
    assert status.startswith("Report: fast/report.html in the sdkd-compare folder; student-tiny.safetensors: the lcm "
                             "sampler without an LCM LoRA draws poor images; pick an LCM LoRA as 'Student LoRA'"), status
    saved = json.loads((host.report_dir() / "fast" / "compare.json").read_text())
    assert saved["settings"]["reference"] == {"sampler": "dpmpp_2m", "steps": 3, "guidance": 7.5}
    assert saved["settings"]["students"] == {"sampler": "lcm", "steps": 2, "guidance": 1.0}
    assert saved["models"][1]["loras"] == ["tiny-style.safetensors:1"] and grid is not None
    status, _ = fn(*args, "tiny-speed.safetensors", 1.0, 3, 7.5, progress=None)
    assert status == "Report: fast/report.html in the sdkd-compare folder", status
    status, _ = fn(*args, "(none)", 1.0, 0, 7.5, progress=None)
    assert status.startswith("Error: 'Teacher steps' 0: choose between 1 and 50"), status


def test_port_writes_what_the_cli_writes(host, tab, teacher_file, tmp_path):
    from sdkd_ext.lora.file import kohya_metadata, write_kohya
    from sdkd_ext.lora.port import port_lora
    from test_lora import layout_of, random_lora

    lora = random_lora(layout_of(teacher_file), rank=4, alpha=4.0, seed=1)
    write_kohya(lora, host.lora_dir() / "teacher-style.safetensors", kohya_metadata(lora, "teacher"), overwrite=True)
    fn, _ = click_handler(tab, "sdkd_port")
    status, *lists = fn("", "teacher-style.safetensors", "student-tiny.safetensors", "", False, False, progress=None)
    assert status.startswith("Done: teacher-style-for-student-tiny.safetensors in your LoRA folder for BK-SDM tiny"), status
    assert "dropped in removed blocks" in status
    assert any("teacher-style-for-student-tiny.safetensors" in u["choices"] for u in lists)
    cli = port_lora(host.lora_dir() / "teacher-style.safetensors", str(host.checkpoints()["student-tiny.safetensors"]),
                    tmp_path / "cli.safetensors")
    ours, theirs = load_file(str(host.lora_dir() / "teacher-style-for-student-tiny.safetensors")), load_file(str(cli.path))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = run_in_host(host, JobControl(), port_job(host, "teacher-style.safetensors", "student-tiny.safetensors", "",
                                                     False, False))
    assert again.endswith("choose another Ported LoRA name or turn on 'Overwrite'"), again


def test_rebase_onto_the_chosen_checkpoint_and_offer_load(host, tab, students):
    fn, outputs = click_handler(tab, "sdkd_rebase")
    ids = [getattr(o, "elem_id", None) for o in outputs]
    result = fn("", "teacher.safetensors", "teacher.safetensors", "student-tiny.safetensors", 0.0, "", "fp32", False,
                progress=None)
    status = result[0]
    assert status.startswith("Done: tiny student teacher-student-tiny-rebased.safetensors in your checkpoint folder"), status
    assert result[ids.index("sdkd_load")]["visible"] is True
    rebased = load_file(str(host.checkpoints()["teacher-student-tiny-rebased.safetensors"]))
    student = load_file(str(students["tiny"].checkpoint))
    assert all(torch.equal(rebased[k], v) for k, v in student.items() if k.startswith("model.diffusion_model."))
    refused = run_in_host(host, JobControl(), rebase_job(host, Form.given(
        "rebase", "tab", checkpoint="teacher.safetensors", base="student-tiny.safetensors",
        student="student-tiny.safetensors", strength=1.0, out="x", dtype="fp16", overwrite=False)))
    assert "'Base (what the checkpoint was made from)'" in refused and not re.search(r"--[a-z]", refused), refused


# ---- the page script and the console ----------------------------------------------------------------------------------

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="needs node to run the page script")
@pytest.mark.parametrize("helpers", [False, True])
def test_page_script_runs_with_and_without_the_web_uis_helpers(helpers):
    script = (ROOT / "javascript" / "sdkd.js").read_text()
    page = """
const vm = require("vm");
const seen = [];
const ctx = {document: {querySelector: s => ({id: s}), addEventListener: (e, f) => seen.push("listen " + e)}, seen: seen};
if (HELPERS) {
  ctx.randomId = () => "task(fromhost)";
  ctx.requestProgress = (id, el) => seen.push("progress " + id + " " + el.id);
  ctx.onUiLoaded = f => seen.push("onUiLoaded");
}
vm.createContext(ctx);
vm.runInContext(SCRIPT, ctx);
const args = vm.runInContext("sdkd_submit('', 'teacher', 3)", ctx);
console.log(JSON.stringify({args: args, seen: seen}));
""".replace("HELPERS", "true" if helpers else "false").replace("SCRIPT", json.dumps(script))
    out = json.loads(subprocess.run([NODE, "-e", page], capture_output=True, text=True, check=True).stdout)
    job_id, *rest = out["args"]
    assert rest == ["teacher", 3]
    if helpers:
        assert job_id == "task(fromhost)" and out["seen"] == ["onUiLoaded", "progress task(fromhost) #sdkd_status"]
    else:
        assert job_id.startswith("task(") and len(job_id) == 21 and out["seen"] == ["listen DOMContentLoaded"]


def test_quiet_drops_only_the_known_harmless_messages():
    from sdkd_ext.quiet import LOG_FILTERS, _Drop, quiet_libraries

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in LOG_FILTERS]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        quiet_libraries()
        quiet_libraries()  # a second call adds nothing
        assert [sum(isinstance(f, _Drop) for f in lg.filters) for lg in loggers] == [1, 1]
        from diffusers import UNet2DConditionModel

        UNet2DConditionModel(block_out_channels=(32, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                             layers_per_block=1, attention_head_dim=2, norm_num_groups=8, sample_size=8).to(torch.float16)
        loggers[0].warning("There are modules in UNet2DConditionModel that should be kept in float32: ['norm']. x")
        loggers[1].warning("`CLIPImageProcessor` requires torchvision (not installed); falling back")
        loggers[1].warning("something else")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert [r.getMessage()[:60] for r in records] == [
        "There are modules in UNet2DConditionModel that should be kep", "something else"]


def test_an_estimate_traced_beside_a_training_job_leaves_its_attention_alone():
    """The tab computes estimates while a job trains: the planner's stand-in attention is for its own thread only."""
    import torch.nn.functional as F

    from sdkd_ext.plan import _fused_attention

    grads = []

    def train_step():
        q = torch.randn(1, 2, 4, 8, requires_grad=True)
        F.scaled_dot_product_attention(q, q, q).sum().backward()  # the stand-in has no backward
        grads.append(q.grad)

    with _fused_attention():
        worker = threading.Thread(target=train_step)
        worker.start()
        worker.join()
        traced = F.scaled_dot_product_attention(*(torch.empty(1, 2, 4, 8, device="meta", requires_grad=True),) * 3)
    assert len(grads) == 1 and grads[0].abs().sum() > 0
    assert traced.device.type == "meta" and traced.grad_fn is not None and "FlashLike" in type(traced.grad_fn).__name__
