"""Host adapters: the real-model middle-block fix, and the thin glue (hosts mocked, core real)."""

import re
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from host_code import ROOT, custom_node_package, module_from_file
from sdkd_ext.checkpoint import open_model
from sdkd_ext.convert import UNET
from sdkd_ext.detect import describe
from sdkd_ext.hosts import a1111
from sdkd_ext.hosts.base import FolderHost
from sdkd_ext.pipeline import build_unet
from sdkd_ext.progress import Cancelled, Event
from sdkd_ext.ui import JobControl, prune_job, run_in_host



def ldm_as_a1111_loads_it(r):
    """A1111's path: the ldm UNet built from our yaml (full middle block), weights loaded with strict=False."""
    from omegaconf import OmegaConf
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import load_file

    cfg = OmegaConf.to_container(OmegaConf.load(r.yaml).model.params.unet_config.params)
    torch.manual_seed(0)
    unet = UNetModel(**cfg).eval()
    sd = load_file(str(r.checkpoint))
    unet.load_state_dict({k[len(UNET):]: v for k, v in sd.items() if k.startswith(UNET)}, strict=False)
    if not any(k.startswith(UNET + "middle_block.") for k in sd):
        with torch.no_grad():  # Forge leaves the block it built without weights: model that as noise
            for p in unet.middle_block.parameters():
                p.normal_(0, 0.1)
    return unet


@pytest.mark.parametrize("forge", [False, True])
def test_model_loaded_fix_makes_a1111_unet_match_the_student(students, forge, capsys):
    from safetensors import safe_open

    r = students["small"]
    unet = ldm_as_a1111_loads_it(r)
    with safe_open(str(r.checkpoint), "pt") as f:
        meta = f.metadata()
    inner = types.SimpleNamespace(diffusion_model=unet)
    sd_model = types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(filename=str(r.checkpoint), metadata=meta))
    if forge:
        sd_model.forge_objects = types.SimpleNamespace(unet=types.SimpleNamespace(model=inner))
    else:
        sd_model.model = inner
    src = open_model(r.checkpoint)
    want_model = build_unet(src, describe(src))
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        want = want_model(x, t, encoder_hidden_states=ctx).sample
        before = unet(x, t, ctx)
        a1111.fix_loaded_model(sd_model, sd_model.sd_checkpoint_info.filename)
        after = unet(x, t, ctx)
    assert (before - want).abs().max() > 1e-3  # the random middle block A1111 would have kept
    assert (after - want).abs().max() < 1e-5
    assert len(unet.middle_block) == 0
    said = capsys.readouterr().out  # one line in the web UI's log says the fix applied, to which file
    assert said.count("\n") == 1 and said.startswith(f"sdkd: {r.checkpoint.name}") and "middle block" in said, said
    assert all(w in said for w in (("Forge", "Missing") if forge else ("A1111", "zeros"))), said


def test_model_loaded_leaves_teachers_and_base_alone(students, capsys):
    unet = ldm_as_a1111_loads_it(students["base"])
    from safetensors import safe_open

    with safe_open(str(students["base"].checkpoint), "pt") as f:
        meta = f.metadata()
    sd_model = types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(filename=str(students["base"].checkpoint), metadata=meta),
                                     model=types.SimpleNamespace(diffusion_model=unet))
    a1111.fix_loaded_model(sd_model, sd_model.sd_checkpoint_info.filename)
    assert len(unet.middle_block) == 3 and "sdkd" not in capsys.readouterr().out


def test_folder_host_ui_job_prunes_and_cancels(teacher_file, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "teacher.safetensors").write_bytes(teacher_file.read_bytes())
    host = FolderHost([models])
    control = JobControl()
    status = run_in_host(host, control, prune_job(host, "teacher.safetensors", "tiny", "", "fp16", False))
    assert status.startswith("Done: tiny student"), status
    assert "teacher-bk-tiny.safetensors" in host.checkpoints()
    again = run_in_host(host, control, prune_job(host, "teacher.safetensors", "tiny", "", "fp16", False))
    assert again.startswith("Error:") and "already exists" in again
    missing = run_in_host(host, control, prune_job(host, "nope.safetensors", "tiny", "", "fp16", False))
    assert missing.startswith("Error: pick a checkpoint")

    cancelling = JobControl()
    original = cancelling.callback

    def cancel_after_first(*sinks):
        fn = original(*sinks)
        cancelling.cancel()
        return fn

    cancelling.callback = cancel_after_first
    stopped = run_in_host(host, cancelling, prune_job(host, "teacher.safetensors", "small", "s", "fp16", False))
    assert stopped.startswith("Stopped:"), stopped
    assert sorted(p.name for p in models.iterdir()) == ["teacher-bk-tiny.safetensors", "teacher-bk-tiny.yaml", "teacher.safetensors"]


def test_tab_builds_with_installed_gradio(tmp_path):
    pytest.importorskip("gradio")
    from sdkd_ext.ui import build_tab

    tab = build_tab(FolderHost([tmp_path]))
    assert tab is not None


@pytest.fixture
def fake_a1111(monkeypatch, tmp_path):
    """A minimal stand-in for A1111's `modules` package (host glue only)."""
    state = types.SimpleNamespace(interrupted=False, begun=[], ended=0)
    state.begin = lambda job: state.begun.append(job)
    state.end = lambda: setattr(state, "ended", state.ended + 1)
    shared = types.SimpleNamespace(state=state, cmd_opts=types.SimpleNamespace(ckpt_dir=None, lora_dir=str(tmp_path / "Lora")))
    sd_models = types.SimpleNamespace(model_path=str(tmp_path / "Stable-diffusion"), listed=[], moves=[],
                                      model_data=types.SimpleNamespace(sd_model="the loaded model"))
    sd_models.list_models = lambda: sd_models.listed.append(1)
    sd_models.unload_model_weights = lambda m: sd_models.moves.append(("cpu", m))
    sd_models.send_model_to_device = lambda m: sd_models.moves.append(("gpu", m))
    progress = types.SimpleNamespace(events=[])
    for step in ("add_task_to_queue", "start_task", "finish_task"):
        setattr(progress, step, lambda task, step=step: progress.events.append((step, task)))
    modules = types.ModuleType("modules")
    modules.shared, modules.sd_models, modules.progress = shared, sd_models, progress
    call_queue = types.ModuleType("modules.call_queue")
    call_queue.queue_lock = threading.Lock()
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.call_queue", call_queue)
    return modules, call_queue


def test_a1111_host_glue(fake_a1111, tmp_path):
    modules, call_queue = fake_a1111
    host = a1111.A1111Host()
    assert host.output_dir() == tmp_path / "Stable-diffusion" and host.lora_dir() == tmp_path / "Lora"
    assert host.run_job(lambda: call_queue.queue_lock.locked()) is True
    assert modules.shared.state.begun == ["sdkd"] and modules.shared.state.ended == 1
    assert modules.progress.events == [("start_task", None), ("finish_task", None)]
    assert modules.sd_models.moves == []
    with pytest.raises(RuntimeError):
        host.run_job(lambda: (_ for _ in ()).throw(RuntimeError("job failed")), gpu=True)
    assert modules.sd_models.moves == [("cpu", "the loaded model"), ("gpu", "the loaded model")]
    assert not call_queue.queue_lock.locked() and modules.shared.state.ended == 2
    host.refresh()
    assert modules.sd_models.listed == [1]
    host.show_progress(Event("distill", 3, 10))
    assert modules.shared.state.sampling_step == 3 and "distill" in modules.shared.state.textinfo
    modules.shared.state.interrupted = True
    with pytest.raises(Cancelled):
        host.show_progress(Event("distill", 4, 10))


def test_comfyui_nodes(monkeypatch, teacher_file, tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "t.safetensors").write_bytes(teacher_file.read_bytes())
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: sorted(p.name for p in ckpts.iterdir())
    folder_paths.get_full_path = lambda kind, name: str(ckpts / name)
    folder_paths.get_folder_paths = lambda kind: [str(ckpts)]
    updates, interrupted = [], {"now": False}

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None):
            updates.append(value)

    class Interrupted(Exception):
        pass

    def check():
        if interrupted["now"]:
            raise Interrupted()

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=check,
                                              InterruptProcessingException=Interrupted)
    for name, mod in {"folder_paths": folder_paths, "comfy": comfy, "comfy.utils": comfy.utils,
                      "comfy.model_management": comfy.model_management}.items():
        monkeypatch.setitem(sys.modules, name, mod)

    package = custom_node_package(monkeypatch)
    node = package.NODE_CLASS_MAPPINGS["SdkdPrune"]
    assert node.INPUT_TYPES()["required"]["ckpt_name"][0] == ["t.safetensors"]
    (name,) = node().prune("t.safetensors", "tiny", "fp16", "", False)["result"]
    assert name == "t-bk-tiny.safetensors" and (ckpts / name).exists() and updates
    info = package.NODE_CLASS_MAPPINGS["SdkdInspect"]().inspect("t-bk-tiny.safetensors")["result"][0]
    assert '"variant": "tiny"' in info
    interrupted["now"] = True
    with pytest.raises(Interrupted):
        node().prune("t.safetensors", "small", "fp16", "", False)
    assert not (ckpts / "t-bk-small.safetensors").exists() and not any(p.name.endswith(".tmp.safetensors") for p in ckpts.iterdir())


def test_install_hook_adds_only_missing(monkeypatch):
    calls = []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda name: name == "diffusers"
    launch.run_pip = lambda args, desc: calls.append(args)
    monkeypatch.setitem(sys.modules, "launch", launch)
    assert module_from_file("sdkd_install", ROOT / "install.py").main() == 0
    assert calls == ["install peft==0.13.2"]


def test_install_hook_runs_without_launch_from_the_node_folder():
    """As ComfyUI-Manager runs it: ComfyUI's python, cwd = the node folder, no A1111 `launch` module."""
    r = subprocess.run([sys.executable, "install.py"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "nothing to do" in r.stdout and "launch" not in r.stderr, r.stderr


def test_install_hook_holds_every_installed_package(monkeypatch):
    """Without `launch`, what is missing is installed by pip with each installed distribution held at its version."""
    import importlib.metadata

    hook = module_from_file("sdkd_install", ROOT / "install.py")
    seen = {}

    def pip(cmd, **kw):
        seen["cmd"] = cmd
        seen["held"] = Path(cmd[cmd.index("-c") + 1]).read_text().splitlines()
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(hook, "missing", lambda reqs: ["peft>=0.13.2"])
    monkeypatch.setattr(hook.subprocess, "run", pip)
    assert hook.main() == 0
    assert seen["cmd"][:4] == [sys.executable, "-m", "pip", "install"] and seen["cmd"][-1] == "peft>=0.13.2"
    assert f"torch=={importlib.metadata.version('torch')}" in seen["held"]
    assert len(seen["held"]) == len({d.metadata["Name"].lower() for d in importlib.metadata.distributions()})


def test_requirements_txt_moves_nothing_when_pip_installs_it_line_by_line():
    """ComfyUI-Manager pip-installs each line alone, unconstrained: no torch line, no inline comment (the line goes
    to pip whole), no package whose newest release may need newer versions of the host's packages."""
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [l for l in lines if l and not l.startswith("#")]
    assert reqs and not any("#" in l for l in reqs)
    names = {re.split(r"[<>=!~;\[ ]", l, maxsplit=1)[0].lower() for l in reqs}
    assert not names & {"torch", "torchvision", "torchaudio", "diffusers", "peft", "accelerate", "transformers",
                        "huggingface-hub", "huggingface_hub"}, names
