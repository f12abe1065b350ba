"""Issue 10's host-adapter items, fed what the real hosts deliver (their own functions, read from the archives).

2: the A1111/Forge load hook with metadata as the hosts decode it, and with none at all;
3: the fix inside the host's weight-loading step, so Lora's module names (any callback) see the fixed model; 4: the yaml says what a host does with
a file without a middle block; 5: UI names stay inside their folder; 8: messages in the widgets'
terms; 9: the tab refreshes its lists and feeds A1111's progress API, ComfyUI nodes return a UI result.
"""

from __future__ import annotations

import json
import sys
import time
import threading
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from host_code import custom_node_package, host_function, host_module
from sdkd_ext.hosts import a1111
from sdkd_ext.hosts.base import FolderHost
from sdkd_ext.names import UnsafeName, path_in_folder
from sdkd_ext.progress import Event
from sdkd_ext.ui import JobControl, compare_job, lora_job, prune_job, run_in_host
from sdkd_ext.terms import Form
from test_hosts import ldm_as_a1111_loads_it

ROOT = Path(__file__).resolve().parents[1]


# ---- 2 and 3: the model-loaded hook -------------------------------------------------------------------------------

def host_metadata(host: str, path: Path) -> dict:
    """`CheckpointInfo.metadata` as A1111 (modules/sd_models.py) or Forge builds it: values starting with `{` decoded."""
    errors = types.SimpleNamespace(report=lambda *a, **k: None)
    return host_function(host, "modules/sd_models.py", "read_metadata_from_safetensors", errors=errors)(str(path))


def loaded(student, host: str, checkpoint: Path | None = None):
    """An A1111-style model object for `student`, its checkpoint info carrying the host's own metadata."""
    unet = ldm_as_a1111_loads_it(student)
    path = checkpoint or student.checkpoint
    meta = host_metadata(host, path) if path.suffix == ".safetensors" else {}
    inner = torch.nn.Module()
    inner.diffusion_model = unet
    info = types.SimpleNamespace(filename=str(path), metadata=meta)
    return types.SimpleNamespace(sd_checkpoint_info=info, model=inner, is_sdxl=False,
                                 cond_stage_model=torch.nn.Linear(2, 2)), unet


@pytest.mark.parametrize("host", ["a1111", "forge"])
def test_hook_fixes_students_with_metadata_as_the_host_decodes_it(students, host):
    sd_model, unet = loaded(students["small"], host)
    assert isinstance(sd_model.sd_checkpoint_info.metadata["sdkd_topology"], dict)  # what the hook is handed
    kept = list(sd_model.model.modules())  # as A1111's model_hijack.layers keeps every module (sd_hijack.py:261)
    old = unet.middle_block
    a1111.fix_loaded_model(sd_model, sd_model.sd_checkpoint_info.filename)
    assert len(unet.middle_block) == 0
    assert old in kept and all(p.is_meta for p in old.parameters())  # the idle block's memory is freed all the same
    base_model, base_unet = loaded(students["base"], host)
    a1111.fix_loaded_model(base_model, base_model.sd_checkpoint_info.filename)
    assert len(base_unet.middle_block) == 3


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_hook_reads_the_files_keys_not_its_metadata(students, tmp_path, suffix):
    tensors = load_file(str(students["tiny"].checkpoint))
    bare = tmp_path / f"someone-elses-tiny{suffix}"
    save_file(tensors, str(bare)) if suffix == ".safetensors" else torch.save(tensors, bare)
    sd_model, unet = loaded(students["tiny"], "a1111", bare)
    assert not sd_model.sd_checkpoint_info.metadata
    a1111.fix_loaded_model(sd_model, sd_model.sd_checkpoint_info.filename)
    assert len(unet.middle_block) == 0


def test_hook_never_reads_a_legacy_pickle_whole(students, tmp_path, monkeypatch):
    from sdkd_ext.hosts import ldm_fix

    legacy = tmp_path / "legacy.ckpt"
    torch.save(load_file(str(students["tiny"].checkpoint)), legacy, _use_new_zipfile_serialization=False)
    monkeypatch.setattr(ldm_fix, "open_file", lambda p: pytest.fail("read a non-zip pickle at model load"))
    assert ldm_fix.file_lacks_middle_block(legacy) is False


@pytest.mark.parametrize("host", ["a1111", "forge"])
def test_the_fix_runs_inside_the_hosts_weight_loading_step_before_any_callback(students, monkeypatch, host):
    """register() wraps the step that loads a file's weights (A1111: load_model_weights, called by load_model and
    reload_model_weights before their callbacks; Forge: forge_loader), so A1111's own Lora naming, run as the first
    model-loaded callback, names the fixed model. The host stage proves it with a probe that sorts before sdkd."""
    sd_model, unet = loaded(students["small"], host)
    info = sd_model.sd_checkpoint_info
    if host == "a1111":  # the host functions' signatures (modules/sd_models.py); their bodies load the weights
        sd_models = types.SimpleNamespace(load_model_weights=lambda model, checkpoint_info, state_dict, timer: None)
    else:
        sd_models = types.SimpleNamespace(forge_loader=lambda sd, additional_state_dicts=None: sd_model,
                                          load_model_weights=lambda *a: pytest.fail("Forge's is a stub"))
    assert a1111.hook_weight_loading(sd_models) == ("load_model_weights" if host == "a1111" else "forge_loader")
    assert a1111.hook_weight_loading(sd_models) is None  # once only: a second register() does not wrap it again
    shared = types.SimpleNamespace(sd_model=sd_model)
    name_modules = host_function("a1111", "extensions-builtin/Lora/networks.py",
                                 "assign_network_names_to_compvis_modules", shared=shared)
    if host == "a1111":
        sd_models.load_model_weights(sd_model, info, None, None)
    else:
        assert sd_models.forge_loader(info.filename, additional_state_dicts=[]) is sd_model
    name_modules(sd_model)  # the first on_model_loaded callback, whatever it is
    assert len(unet.middle_block) == 0
    names = sd_model.network_layer_mapping
    assert not any(n.startswith("diffusion_model_middle_block_") for n in names)  # only the empty block is left
    assert names["diffusion_model_output_blocks_0_0_in_layers_2"] is unet.output_blocks[0][0].in_layers[2]


# ---- 4: what the file says to a user without sdkd -------------------------------------------------------------------

def test_yaml_and_metadata_of_a_student_without_middle_block_say_what_each_host_does(students):
    from omegaconf import OmegaConf
    from safetensors import safe_open

    for variant, has_note in (("base", False), ("small", True), ("tiny", True)):
        text = students[variant].yaml.read_text()
        assert ("no middle block" in text) is has_note, variant
        assert ("sdkd extension" in text) is has_note
        with safe_open(str(students[variant].checkpoint), "pt") as f:
            note = f.metadata().get("sdkd_note", "")
        assert ("no middle block" in note and "A1111" in note and "Forge" in note) is has_note, (variant, note)
        assert "\n" not in note and "#" not in note  # one plain line, as metadata viewers show it
        assert OmegaConf.load(students[variant].yaml).model.params.unet_config.params.num_res_blocks == 1


def test_the_note_tells_a_forge_user_without_sdkd_what_fails_and_the_two_fixes(students):
    """Forge without sdkd fails with a bare TypeError on a small/tiny student: the file's note (what a metadata viewer
    shows) names that error and both ways out, installing sdkd or using a portable student."""
    from safetensors import safe_open

    with safe_open(str(students["small"].checkpoint), "pt") as f:
        note = f.metadata()["sdkd_note"]
    forge = note[note.index("Forge"):]
    assert "TypeError: linear()" in forge and "install the sdkd extension" in forge and "--portable" in forge, note


# ---- 5 and 8: names from a UI ---------------------------------------------------------------------------------------

BAD_NAMES = ["../x", "../../../x", "a/b", "a\\b", "/etc/passwd", "C:x", "c:\\x", "..", ".", ".hidden", "", "   ",
             "con", "NUL.safetensors", "x\x00y", "x.", "a" * 300, "what?"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_ui_names_outside_a_plain_file_name_are_refused_naming_the_widget(tmp_path, name):
    with pytest.raises(UnsafeName) as e:
        path_in_folder(name, tmp_path, "Output name", ".safetensors")
    assert str(e.value).startswith("Output name") and e.value.widget == "Output name"


def test_ui_names_that_are_plain_stay_in_their_folder(tmp_path):
    assert path_in_folder(" my student ", tmp_path, "w", ".safetensors") == tmp_path / "my student.safetensors"
    assert path_in_folder("x.safetensors", tmp_path, "w", ".safetensors") == tmp_path / "x.safetensors"
    (tmp_path / "link.safetensors").symlink_to(tmp_path.parent / "elsewhere.safetensors")
    with pytest.raises(UnsafeName, match="link"):
        path_in_folder("link", tmp_path, "w", ".safetensors")


@pytest.fixture
def models(teacher_file, tmp_path) -> FolderHost:
    """A host with one teacher in its checkpoint folder (and a sibling folder a bad name would reach)."""
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    (folder / "teacher.safetensors").write_bytes(teacher_file.read_bytes())
    return FolderHost([folder], [tmp_path / "models" / "Lora"])


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_tab_refuses_names_leading_out_of_its_folders(models, tmp_path):
    before = files_under(tmp_path)
    control = JobControl()
    status = run_in_host(models, control, prune_job(models, "teacher.safetensors", "tiny", "../../x", "fp16", True))
    assert status.startswith("Error: Output name '../../x'"), status
    status = run_in_host(models, control, lora_job(models, Form.given(
        "lora", "tab", checkpoint="teacher.safetensors", data=str(tmp_path), rank=4, alpha=4, steps=1, resolution=64,
        out="../escape", overwrite=True, preview_every=0)))
    assert status.startswith("Error: LoRA name '../escape'"), status
    status = run_in_host(models, control, compare_job(models, Form.given(
        "compare", "tab", checkpoint="teacher.safetensors", students=["teacher.safetensors"], prompts="a", seeds="0",
        size=64, steps=1, out="/tmp")))
    assert status.startswith("Error: Report name '/tmp'"), status
    status = run_in_host(models, control, prune_job(models, "teacher.safetensors", "tiny", "teacher", "fp16", True))
    assert status.startswith("Error: Output name 'teacher'") and "never overwrites its input" in status
    assert "--out" not in status
    assert files_under(tmp_path) == before


def test_tab_speaks_in_its_widgets_terms(models):
    control = JobControl()
    done = run_in_host(models, control, prune_job(models, "teacher.safetensors", "tiny", "", "fp16", False))
    assert done.startswith("Done:") and "teacher-bk-tiny.safetensors in your checkpoint folder" in done
    again = run_in_host(models, control, prune_job(models, "teacher.safetensors", "tiny", "", "fp16", False))
    assert again == ("Error: teacher-bk-tiny.safetensors in your checkpoint folder already exists; "
                     "choose another Output name or turn on 'Overwrite an existing file'"), again
    for message in (done, again):
        assert "--" not in message and str(models.output_dir()) not in message


def test_tab_portable_checkbox(models):
    """Prune's Portable box writes the identity middle block; for base it is refused naming the box, not the flag."""
    from sdkd_ext.checkpoint import open_model
    from sdkd_ext.detect import describe
    from sdkd_ext.terms import PORTABLE

    control = JobControl()
    base = run_in_host(models, control, prune_job(models, "teacher.safetensors", "base", "pb", "fp16", False, None, True))
    assert base.startswith(f"Error: {PORTABLE!r} is for students without a middle block"), base
    assert not (models.output_dir() / "pb.safetensors").exists()
    done = run_in_host(models, control, prune_job(models, "teacher.safetensors", "tiny", "pt", "fp16", False, None, True))
    assert done.startswith("Done:"), done
    assert describe(open_model(models.output_dir() / "pt.safetensors")).portable



def test_tab_words_core_messages_with_its_widgets(models, tmp_path):
    """Messages the core words for the CLI (flags, absolute paths) reach the tab naming its widgets instead."""
    from sdkd_ext.train import STATE_FILE
    from sdkd_ext.ui import DISTIL_WIDGETS, distill_job

    def distil(kind: str, path: str, name: str, resume: bool) -> str:
        job = distill_job(models, Form.given("distil", "tab", checkpoint="teacher.safetensors", variant="tiny", kind=kind,
                                             data=path, self_n=2, steps=1, resolution=64, out=name, resume=resume,
                                             preview_every=0))
        return run_in_host(models, JobControl(), job)

    run = models.output_dir() / "kd.run"
    run.mkdir()
    (run / STATE_FILE).write_bytes(b"")  # a run folder from an earlier distil of the same name
    statuses = {
        "use 'Resume' to continue it or 'Overwrite' to start over": distil("built-in", "", "kd", False),
        "no checkpoint in fresh.run (a finished run keeps none unless 'Keep training state'); run again without "
        "'Resume'": distil("built-in", "", "fresh", True),
        f"Error: {DISTIL_WIDGETS['--data']!r}": distil("image folder", str(tmp_path / "nowhere"), "x", False),
        "'Rank' must be at least 1 and 'Alpha' positive": run_in_host(models, JobControl(), lora_job(models, Form.given(
            "lora", "tab", checkpoint="teacher.safetensors", data=str(tmp_path), rank=0, alpha=4, steps=1,
            resolution=64, out="l", preview_every=0))),
    }
    for expected, status in statuses.items():
        assert expected in status, status
        assert "--" not in status and str(models.output_dir()) not in status, status


# ---- ComfyUI nodes (5, 8, 9) -----------------------------------------------------------------------------------------

@pytest.fixture
def comfy(monkeypatch, teacher_file, tmp_path):
    """sdkd's ComfyUI package over stand-ins for `folder_paths` and `comfy` (ComfyUI's own modules)."""
    ckpts = tmp_path / "ComfyUI" / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "t.safetensors").write_bytes(teacher_file.read_bytes())
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: sorted(p.name for p in ckpts.iterdir())
    folder_paths.get_full_path = lambda kind, name: str(ckpts / name)
    folder_paths.get_folder_paths = lambda kind: [str(ckpts)]
    bar = type("ProgressBar", (), {"__init__": lambda self, total: None, "update_absolute": lambda self, v, t=None: None})
    comfy_mod = types.ModuleType("comfy")
    comfy_mod.utils = types.SimpleNamespace(ProgressBar=bar)
    comfy_mod.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=lambda: None)
    for name, mod in {"folder_paths": folder_paths, "comfy": comfy_mod, "comfy.utils": comfy_mod.utils,
                      "comfy.model_management": comfy_mod.model_management}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    package = custom_node_package(monkeypatch)
    return package, ckpts


def comfy_outputs(node, returned):
    """What ComfyUI 0.3.64's execution.py makes of a node's return value: (outputs, ui)."""
    blocker = type("ExecutionBlocker", (), {})
    internal = type("_NodeOutputInternal", (), {})
    merge = host_function("comfyui", "execution.py", "merge_result_data", ExecutionBlocker=blocker)
    get = host_function("comfyui", "execution.py", "get_output_from_returns", ExecutionBlocker=blocker,
                        _NodeOutputInternal=internal, merge_result_data=merge)
    outputs, ui, _ = get([returned], node)
    return outputs, ui


def node_error(package) -> type:
    """SdkdError as the node package (imported under ComfyUI's name for it) raises it."""
    return sys.modules[f"{package.__name__}.sdkd_ext.errors"].SdkdError


def test_comfyui_prune_stays_in_the_checkpoints_folder(comfy, tmp_path):
    package, ckpts = comfy
    SdkdError = node_error(package)
    before = files_under(tmp_path)
    node = package.NODE_CLASS_MAPPINGS["SdkdPrune"]()
    for name in ("../../../x", "/tmp/x", "sub/x", "..", "t"):
        with pytest.raises(SdkdError, match="filename"):
            node.prune("t.safetensors", "tiny", "fp16", name, True)
    assert files_under(tmp_path) == before


def test_comfyui_nodes_return_a_ui_result_in_their_own_terms(comfy):
    package, ckpts = comfy
    SdkdError = node_error(package)
    prune_node = package.NODE_CLASS_MAPPINGS["SdkdPrune"]
    outputs, ui = comfy_outputs(prune_node, prune_node().prune("t.safetensors", "tiny", "fp16", "", False))
    assert outputs == [["t-bk-tiny.safetensors"]] and (ckpts / "t-bk-tiny.safetensors").is_file()
    assert "t-bk-tiny.safetensors in your checkpoints" in ui["text"][0] and str(ckpts) not in ui["text"][0]
    with pytest.raises(SdkdError) as e:
        prune_node().prune("t.safetensors", "tiny", "fp16", "", False)
    assert "choose another filename or turn on 'overwrite'" in str(e.value) and "--" not in str(e.value)
    inspect_node = package.NODE_CLASS_MAPPINGS["SdkdInspect"]
    outputs, ui = comfy_outputs(inspect_node, inspect_node().inspect("t-bk-tiny.safetensors"))
    assert '"variant": "tiny"' in ui["text"][0] and outputs == [[ui["text"][0]]]
    assert package.WEB_DIRECTORY and (ROOT / package.WEB_DIRECTORY / "sdkd.js").is_file()


# ---- 9: the tab's lists and A1111's progress API --------------------------------------------------------------------

def click_handler(tab, elem_id: str, with_js: bool = False):
    """The function and output components gradio runs for a click on button `elem_id` (gradio 3.x and 4+), and
    with `with_js` the page function run before it."""
    import gradio as gr

    if int(gr.__version__.split(".")[0]) < 4:
        for dep, fn in zip(tab.dependencies, tab.fns):
            if any(getattr(tab.blocks[t], "elem_id", None) == elem_id for t in dep["targets"]):
                found = fn.fn, [tab.blocks[i] for i in dep["outputs"]], dep.get("js")
                return found if with_js else found[:2]
    else:
        for fn in tab.fns.values():
            if any(getattr(tab.blocks.get(t[0]), "elem_id", None) == elem_id for t in fn.targets):
                found = fn.fn, list(fn.outputs), fn.js
                return found if with_js else found[:2]
    raise AssertionError(f"no click handler for {elem_id}")


def test_prune_in_the_tab_refreshes_both_checkpoint_lists(models):
    pytest.importorskip("gradio")
    from sdkd_ext.ui import build_tab

    tab = build_tab(models)
    fn, outputs = click_handler(tab, "sdkd_prune")
    ids = [getattr(o, "elem_id", None) for o in outputs]
    assert ids[:2] == ["sdkd_status", "sdkd_load"] and ids[3] == "sdkd_checkpoint"
    status, load, written, *lists = fn("", "teacher.safetensors", "tiny", "", "fp16", False, False, progress=None)
    assert status.startswith("Done:"), status
    assert load["visible"] is True and written == "teacher-bk-tiny.safetensors"  # "Load it now" offers the student
    checkpoint_lists = [u for u, o in zip(lists, outputs[3:]) if "LoRA" not in o.label]  # all but the LoRA lists
    assert len(checkpoint_lists) == len(lists) - 2 >= 5 and all("teacher-bk-tiny.safetensors" in u["choices"] for u in checkpoint_lists)


class State:
    """Stand-in for A1111's `shared.state` (modules/shared_state.py): the fields progress.py reads."""

    def __init__(self):
        self.interrupted, self.job, self.textinfo, self.time_start = False, "", None, 0.0
        self.job_count = self.job_no = self.sampling_step = self.sampling_steps = 0

    def begin(self, job: str = "(unknown)"):
        import time

        self.job, self.job_count, self.job_no, self.sampling_step, self.time_start = job, -1, 0, 0, time.time()

    def end(self):
        self.job = ""


@pytest.fixture
def a1111_progress(monkeypatch, tmp_path):
    """A1111's real modules/progress.py over a stand-in `modules.shared`, plus stand-ins for sd_models and call_queue."""
    class Model:  # pydantic 1's BaseModel as A1111 1.10 uses it (fastapi 0.94 pins pydantic<2): fields with defaults
        def __init__(self, **fields):
            defaults = {k: v for k, v in vars(type(self)).items() if not k.startswith("_")}
            self.__dict__.update({**defaults, **fields})

    pydantic = types.SimpleNamespace(BaseModel=Model, Field=lambda default=None, **info: default)
    monkeypatch.setitem(sys.modules, "pydantic", pydantic)
    modules = types.ModuleType("modules")
    shared = types.ModuleType("modules.shared")
    shared.state = State()
    shared.opts = types.SimpleNamespace(live_previews_enable=False)
    shared.cmd_opts = types.SimpleNamespace(ckpt_dir=None, lora_dir=None)
    sd_models = types.SimpleNamespace(model_path=str(tmp_path), model_data=types.SimpleNamespace(sd_model=None))
    call_queue = types.SimpleNamespace(queue_lock=threading.Lock())
    modules.shared, modules.sd_models, modules.call_queue = shared, sd_models, call_queue
    for name, mod in {"modules": modules, "modules.shared": shared, "modules.sd_models": sd_models,
                      "modules.call_queue": call_queue}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    modules.progress = host_module("a1111", "modules/progress.py", "modules.progress", monkeypatch)
    return modules.progress


def test_a1111_progress_api_follows_an_sdkd_job(a1111_progress):
    progress = a1111_progress
    host = a1111.A1111Host()
    task = "task(sdkdtest)"
    seen = []

    def job():
        host.show_progress(Event("write", 3, 4))
        seen.append(progress.progressapi(progress.ProgressRequest(id_task=task)))
        return "done"

    assert host.run_job(job, task=task) == "done"
    (during,) = seen
    assert during.active and during.progress == pytest.approx(0.75) and "write 3/4" in during.textinfo
    after = progress.progressapi(progress.ProgressRequest(id_task=task))
    assert after.completed and not after.active


def test_a1111_progress_bar_gives_each_stage_its_own_eta(a1111_progress):
    """21.10: A1111's progress API derives its ETA from the job's start and the bar's fraction; each sdkd stage
    (encode, teacher samples, train, preview, export) shows its own name, count and ETA there, not one that grows."""
    progress = a1111_progress
    host = a1111.A1111Host()
    task = "task(sdkdeta)"
    seen = []

    def api():
        seen.append(progress.progressapi(progress.ProgressRequest(id_task=task)))

    def job():
        host.show_progress(Event("encode-text", 5, 5))
        time.sleep(0.3)  # the first stage took a while: a later stage's ETA must not include it
        host.show_progress(Event("teacher-samples", 0, 100))
        host.show_progress(Event("teacher-samples", 25, 100, metrics={"eta_s": 300.0}))
        api()
        host.show_progress(Event("teacher-samples", 50, 100))  # no ETA of its own: the stage's start is kept
        api()
        host.show_progress(Event("preview", 10, 40, metrics={"eta_s": 60.0}))
        api()

    host.run_job(job, task=task)
    assert [round(s.eta) for s in seen] == [300, pytest.approx(100, abs=2), 60], [s.eta for s in seen]
    assert "teacher-samples 25/100" in seen[0].textinfo and "ETA 5:00" in seen[0].textinfo
    assert seen[2].progress == pytest.approx(0.25) and "preview 10/40" in seen[2].textinfo


def test_tab_sends_a1111_a_task_id(models, monkeypatch):
    pytest.importorskip("gradio")
    import gradio as gr

    from sdkd_ext.ui import before_click, build_tab

    assert before_click(None) == {}
    assert before_click("sdkd_submit") == {("_js" if int(gr.__version__.split(".")[0]) < 4 else "js"): "sdkd_submit"}
    assert "function sdkd_submit" in (ROOT / "javascript" / "sdkd.js").read_text()
    seen = []
    monkeypatch.setattr(models, "run_job", lambda job, gpu=False, task=None: seen.append(task) or "ok")
    monkeypatch.setattr(type(models), "page_js", "sdkd_submit")
    fn, _, js = click_handler(build_tab(models), "sdkd_prune", with_js=True)
    assert "sdkd_submit" in js
    fn("task(abc)", "teacher.safetensors", "tiny", "", "fp16", False, False, progress=None)
    assert seen == ["task(abc)"]


def gradio3():
    """gradio 3.x (A1111 1.10's), or skip: A1111's UI code is written for it."""
    gr = pytest.importorskip("gradio")
    if int(gr.__version__.split(".")[0]) != 3:
        pytest.skip(f"A1111 1.10's UI code runs on gradio 3.41, not {gr.__version__}")
    return gr


def test_a1111_ui_config_does_not_bring_back_an_old_checkpoint_choice(models, students, monkeypatch, tmp_path):
    """21.9: A1111 restores saved component values from ui-config.json (its real modules/ui_loadsave.py here); the
    picker must start on the loaded checkpoint anyway, and say what it describes."""
    gradio3()
    from sdkd_ext.ui import build_tab

    (models.output_dir() / "st-small.safetensors").write_bytes(students["small"].checkpoint.read_bytes())
    teacher = models.checkpoints()["teacher.safetensors"]
    models.loaded = (teacher, None)  # the web UI's loaded checkpoint
    modules = types.ModuleType("modules")
    modules.errors = types.SimpleNamespace(display=lambda e, what: None)
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.errors", modules.errors)
    modules.ui_components = host_module("a1111", "modules/ui_components.py", "modules.ui_components", monkeypatch)
    loadsave = host_module("a1111", "modules/ui_loadsave.py", "modules.ui_loadsave", monkeypatch)
    config = tmp_path / "ui-config.json"
    config.write_text(json.dumps({"sdkd/Checkpoint (teacher or student)/value": "st-small.safetensors"}))
    tab = build_tab(models)
    loadsave.UiLoadsave(str(config)).add_block(tab, "sdkd")  # what A1111's create_ui does with each extension tab
    blocks = {getattr(b, "elem_id", None): b for b in tab.blocks.values()}
    assert blocks["sdkd_checkpoint"].value == "teacher.safetensors"
    assert blocks["sdkd_info"].value.startswith("**teacher.safetensors** is an SD1.x teacher")


def test_a1111_picker_follows_the_web_uis_checkpoint_setting(models, students, monkeypatch):
    """21.9: when the web UI's own checkpoint setting changes (the user, or A1111 on page load), the picker and its
    description follow; A1111 creates that setting after the extensions' tabs (modules/ui.py)."""
    gr = gradio3()
    from sdkd_ext.ui import build_tab

    student = models.output_dir() / "st-small.safetensors"
    student.write_bytes(students["small"].checkpoint.read_bytes())
    titles = {"st-small.safetensors [0123456789]": student}
    sd_models = types.SimpleNamespace(get_closet_checkpoint_match=lambda t: types.SimpleNamespace(filename=str(titles[t]))
                                      if t in titles else None)
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(sd_models=sd_models))
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)
    built = [(build_tab(models), models)]
    with gr.Blocks() as demo:
        setting = gr.Dropdown(choices=list(titles), elem_id=a1111.CHECKPOINT_SETTING)
        a1111.follow_checkpoint_setting(built)(setting)
    (dep, fn), = [(d, f) for d, f in zip(demo.dependencies, demo.fns) if setting._id in d["targets"]]
    picker, info = fn.fn("st-small.safetensors [0123456789]")
    assert picker["value"] == "st-small.safetensors" and "st-small.safetensors" in picker["choices"]
    assert info.startswith("**st-small.safetensors** is a BK-SDM **small** student")
    tab_blocks = built[0][0].blocks
    assert [tab_blocks[i].elem_id for i in dep["outputs"]] == ["sdkd_checkpoint", "sdkd_info"]
