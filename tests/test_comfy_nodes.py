"""sdkd's ComfyUI nodes on tiny models, over ComfyUI 0.3.64's own modules (folder_paths, comfy.sd, comfy.model_patcher,
comfy.utils' progress bar, comfy.model_management's interrupt) imported from its unmodified archive on CPU.

Only libraries ComfyUI imports for model families sdkd never touches (torchvision, torchaudio, scipy,
sentencepiece, tokenizer classes newer than the installed transformers) become empty modules, only while
ComfyUI's modules import and only where they are not installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import re
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from host_code import ARCHIVES, HOSTS, ROOT, custom_node_package, host_function
from sdkd_ext.checkpoint import open_model
from sdkd_ext.convert import UNET
from sdkd_ext.detect import describe
from sdkd_ext.lora.file import kohya_metadata, write_kohya
from sdkd_ext.pipeline import build_unet
from sdkd_ext.variants import VARIANTS
from distill_helpers import one_thread  # noqa: F401 (fixture)
from test_lora import layout_of, random_lora

STUBBED = ("torchvision", "torchaudio", "scipy", "sentencepiece")
WORKFLOWS = ROOT / "example_workflows"


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for STUBBED libraries (and `transformers.<Class>` an older transformers lacks) when not installed."""

    def find_spec(self, name, path, target=None):
        top, _, rest = name.partition(".")
        wanted = top in STUBBED or (top == "transformers" and rest[:1].isupper() and "." not in rest)
        if not wanted or any(f.find_spec(name, path, target) for f in sys.meta_path
                             if f is not self and hasattr(f, "find_spec")):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        """Nothing to run: the module stays empty."""


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI's real modules from its archive (as `main.py --cpu`); out of sys.path and sys.modules afterwards."""
    archive = ARCHIVES / f"{HOSTS['comfyui']}.tar.gz"
    if not archive.is_file():
        pytest.skip(f"host archive {archive.name} not in {ARCHIVES} (set SDKD_HOST_ARCHIVES)")
    dest = tmp_path_factory.mktemp("comfyui")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    root = dest / HOSTS["comfyui"]
    import diffusers.utils.import_utils  # noqa: F401  (both read which libraries exist before the stand-ins do)
    import transformers.utils.import_utils  # noqa: F401

    before, finder = set(sys.modules), _Absent()
    sys.path.insert(0, str(root))
    sys.meta_path.append(finder)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.model_detection
        import comfy.model_management
        import comfy.model_patcher
        import comfy.supported_models
        import comfy.utils
        import folder_paths  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
    for name in [n for n, m in sys.modules.items() if isinstance(getattr(m, "__loader__", None), _Absent)]:
        del sys.modules[name]
    yield comfy
    sys.path.remove(str(root))
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(root)) or name.startswith("sdkd_node"):
            del sys.modules[name]


@pytest.fixture
def host(comfy, monkeypatch, tmp_path, teacher_file, students):
    """A ComfyUI layout (checkpoints with the tiny teacher and its tiny student, loras, input) registered in the real
    folder_paths, ComfyUI's progress hook recording every update, and sdkd's nodes imported as ComfyUI imports them."""
    import folder_paths

    dirs = {kind: tmp_path / kind for kind in ("checkpoints", "loras", "input")}
    for kind, d in dirs.items():
        d.mkdir()
        if kind != "input":
            monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(d)], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "input_directory", str(dirs["input"]))
    (dirs["checkpoints"] / "teacher.safetensors").write_bytes(teacher_file.read_bytes())
    (dirs["checkpoints"] / "teacher-tiny.safetensors").write_bytes(students["tiny"].checkpoint.read_bytes())
    updates: list[tuple[int, int]] = []

    def page_hook(value, total, preview, node_id=None):
        """What ComfyUI's main.py hooks into every progress bar: raise its interrupt if set, else report the step."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        updates.append((value, total))

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", page_hook)
    comfy.model_management.interrupt_current_processing(False)
    package = custom_node_package(monkeypatch)
    yield types.SimpleNamespace(nodes=package.NODE_CLASS_MAPPINGS, dirs=dirs, updates=updates, package=package)
    comfy.model_management.interrupt_current_processing(False)


def run(host, node_id: str, **inputs) -> tuple[list, dict]:
    """A node called as ComfyUI 0.3.64's execution.py calls it (under torch.inference_mode(), as it runs every prompt),
    with its declared defaults for inputs not given; returns (outputs, ui) as execution.py makes them of the result."""
    cls = host.nodes[node_id]
    declared = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
    args = {k: spec[1]["default"] for k, spec in declared.items() if len(spec) > 1 and "default" in spec[1]}
    args.update(inputs)
    assert set(args) == set(declared), f"{node_id}: inputs {sorted(set(declared) - set(args))} not given"
    blocker = type("ExecutionBlocker", (), {})
    merge = host_function("comfyui", "execution.py", "merge_result_data", ExecutionBlocker=blocker)
    outputs_of = host_function("comfyui", "execution.py", "get_output_from_returns", ExecutionBlocker=blocker,
                               _NodeOutputInternal=type("_NodeOutputInternal", (), {}), merge_result_data=merge)
    with torch.inference_mode():
        returned = getattr(cls(), cls.FUNCTION)(**args)
    outputs, ui, _ = outputs_of([returned], cls)
    return outputs, ui


def error_of(host) -> type:
    """SdkdError as the node package raises it (imported under ComfyUI's name for the folder)."""
    return sys.modules[f"{host.package.__name__}.sdkd_ext.errors"].SdkdError


def loaded_teacher(comfy, path: Path):
    """A ModelPatcher of a tiny teacher, built as comfy.sd builds SD1.5 (its SD15 class; the tiny widths do not match
    SD15's detection, which asks for 320 channels)."""
    sd = {k[len(UNET):]: v for k, v in load_file(str(path)).items() if k.startswith(UNET)}
    config = comfy.supported_models.SD15(comfy.model_detection.detect_unet_config(sd, ""))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model(sd, "")
    model.load_model_weights(sd, "")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def test_prune_model_gives_comfy_unet_equal_to_the_pruned_file(host, comfy, teacher_file, students):
    teacher = loaded_teacher(comfy, teacher_file)
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400.0]), torch.randn(1, 77, 32, generator=g)
    for v in VARIANTS:
        (student, text), ui = run(host, "SdkdPruneModel", model=teacher, variant=v)
        student, text = student[0], text[0]
        assert type(student.model.model_config) is comfy.supported_models.SD15
        assert type(student.model.diffusion_model).__module__ == "comfy.ldm.modules.diffusionmodules.openaimodel"
        file = {k[len(UNET):]: w for k, w in load_file(str(students[v].checkpoint)).items() if k.startswith(UNET)}
        mine = student.model.diffusion_model.state_dict()
        assert set(mine) == set(file), (set(mine) ^ set(file))
        assert all(torch.equal(mine[k], file[k]) for k in file)
        src = open_model(students[v].checkpoint)
        with torch.no_grad():
            ours = student.model.diffusion_model(x, t, context=ctx)
            ref = build_unet(src, describe(src)).float()(x, t, encoder_hidden_states=ctx).sample
        assert (ours - ref).abs().max() < 1e-4
        assert f"{v} student in memory: {students[v].unet_params:,} UNet parameters" in text and ui["text"] == [text]
    student = run(host, "SdkdPruneModel", model=teacher, variant="tiny")[0][0][0]
    with pytest.raises(error_of(host), match="already a BK-SDM tiny student"):
        run(host, "SdkdPruneModel", model=student, variant="tiny")


def test_file_nodes_write_into_their_folders_and_say_so(host, teacher_file):
    ckpts, loras = host.dirs["checkpoints"], host.dirs["loras"]
    (name,), ui = run(host, "SdkdPrune", ckpt_name="teacher.safetensors", variant="small")
    assert name == ["teacher-bk-small.safetensors"] and describe(open_model(ckpts / name[0])).variant == "small"
    assert "teacher-bk-small.safetensors in your checkpoints" in ui["text"][0] and str(ckpts) not in ui["text"][0]
    assert host.updates and host.updates[-1][0] == host.updates[-1][1]  # ComfyUI's bar reached its end
    (info,), ui = run(host, "SdkdInspect", ckpt_name=name[0])
    assert json.loads(info[0])["variant"] == "small" and ui["text"] == info
    (name,), _ = run(host, "SdkdPrune", ckpt_name="teacher.safetensors", variant="tiny", filename="tp", portable=True)
    assert describe(open_model(ckpts / name[0])).portable

    # Rebase with the teacher as community and base: a zero difference, so the student comes back unchanged.
    (rebased,), ui = run(host, "SdkdRebase", ckpt_name="teacher.safetensors", base_name="teacher.safetensors",
                         student_name="teacher-tiny.safetensors", dtype="fp32")
    assert rebased == ["teacher-rebased-teacher-tiny.safetensors"] and "in your checkpoints" in ui["text"][0]
    got, want = load_file(str(ckpts / rebased[0])), load_file(str(ckpts / "teacher-tiny.safetensors"))
    assert all(torch.equal(got[k], want[k].float()) for k in want if k.startswith(UNET))

    lora = random_lora(layout_of(teacher_file), rank=4, alpha=4.0, seed=1, unet_only=True)
    write_kohya(lora, loras / "style.safetensors", kohya_metadata(lora, None))
    (ported,), ui = run(host, "SdkdPortLora", lora_name="style.safetensors", student_name="teacher-tiny.safetensors")
    assert ported == ["style-teacher-tiny.safetensors"] and (loras / ported[0]).is_file()
    assert "for the BK-SDM tiny student" in ui["text"][0] and "left out" in ui["text"][0]


def test_nodes_refuse_bad_input_in_their_own_terms_and_write_nothing(host):
    SdkdError = error_of(host)
    before = sorted(p for p in host.dirs["checkpoints"].parent.rglob("*"))
    cases = {
        "choose another filename or turn on 'overwrite'": ("SdkdPrune", dict(ckpt_name="teacher.safetensors",
                                                                            filename="teacher-tiny")),
        "filename '../x'": ("SdkdPrune", dict(ckpt_name="teacher.safetensors", filename="../x")),
        "'portable' is for students without a middle block": ("SdkdDistil", dict(ckpt_name="teacher.safetensors",
                                                                                   variant="base", portable=True)),
        "ckpt_name 'gone.safetensors' is not in your checkpoints": ("SdkdDistil", dict(ckpt_name="gone.safetensors")),
        "'resolution'": ("SdkdDistil", dict(ckpt_name="teacher.safetensors", resolution=100)),
        "data_path: give a folder": ("SdkdDistil", dict(ckpt_name="teacher.safetensors", data="prompt file")),
        "image_folder 'sdkd-lora': no such folder": ("SdkdTrainLora", dict(ckpt_name="teacher.safetensors")),
        "'student_name'": ("SdkdRebase", dict(ckpt_name="teacher.safetensors", base_name="teacher.safetensors",
                                              student_name="teacher.safetensors")),
        "seeds 'a b'": ("SdkdCompare", dict(ckpt_name="teacher.safetensors", student_name="teacher-tiny.safetensors",
                                            seeds="a b")),
        "reference_steps 0: give a whole number from 1 to 50": ("SdkdCompare", dict(
            ckpt_name="teacher.safetensors", student_name="teacher-tiny.safetensors", reference_steps=0)),
    }
    for needle, (node, inputs) in cases.items():
        with pytest.raises(SdkdError) as e:
            run(host, node, **inputs)
        assert needle in str(e.value) and "--" not in str(e.value) and str(host.dirs["checkpoints"]) not in str(e.value), e.value
    assert sorted(p for p in host.dirs["checkpoints"].parent.rglob("*")) == before


def interrupt_at(comfy, host, step: int) -> None:
    """Press ComfyUI's interrupt (what POST /interrupt does) as the progress bar reaches `step` of training."""
    page_hook = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        if total == host.steps and value == step:
            comfy.model_management.interrupt_current_processing(True)
        page_hook(value, total, preview)

    comfy.utils.PROGRESS_BAR_HOOK = hook


@pytest.mark.slow
def test_distil_interrupted_by_comfy_keeps_a_student_and_says_so(host, comfy, one_thread):
    host.steps = 6
    interrupt_at(comfy, host, 2)
    (name,), ui = run(host, "SdkdDistil", ckpt_name="teacher.safetensors", variant="tiny", prompt_count=2,
                      steps=host.steps, resolution=64, vram="")
    assert name == ["teacher-bk-tiny-kd.safetensors"]
    text = ui["text"][0]
    assert "interrupted at step 2/6" in text and "with 'resume' the run continues" in text, text
    assert re.search(r"teacher-bk-tiny-kd\.run keeps the resumable training state, state\.torch \([\d.]+ [kMG]B\)", text), text
    assert str(host.dirs["checkpoints"]) not in text and "--" not in text
    src = open_model(host.dirs["checkpoints"] / name[0])
    assert describe(src).variant == "tiny" and src.metadata["sdkd_distill_status"] == "cancelled"
    assert comfy.model_management.processing_interrupted()  # still set: the rest of the graph stops too
    comfy.model_management.interrupt_current_processing(False)
    (name,), ui = run(host, "SdkdDistil", ckpt_name="teacher.safetensors", variant="tiny", prompt_count=2,
                      steps=host.steps, resolution=64, vram="", resume=True)
    assert "tiny student, 6 steps on 2 samples" in ui["text"][0], ui["text"]
    assert "the training state was removed" in ui["text"][0] and "'keep_state' keeps it" in ui["text"][0], ui["text"]
    assert not (host.dirs["checkpoints"] / "teacher-bk-tiny-kd.run" / "state.torch").exists()


@pytest.mark.slow
def test_lora_node_trains_from_comfys_input_folder(host, comfy, one_thread):
    data = host.dirs["input"] / "sdkd-lora"
    data.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a flat {colour} square")
    (name,), ui = run(host, "SdkdTrainLora", ckpt_name="teacher-tiny.safetensors", rank=4, alpha=4.0, steps=2,
                      resolution=64)
    assert name == ["teacher-tiny-lora.safetensors"] and (host.dirs["loras"] / name[0]).is_file()
    assert "2 steps on 2 images" in ui["text"][0] and "in your loras" in ui["text"][0]
    comfy.model_management.interrupt_current_processing(True)  # before its first step: nothing to keep, so ComfyUI's own
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(host, "SdkdTrainLora", ckpt_name="teacher-tiny.safetensors", rank=4, alpha=4.0, steps=2, resolution=64,
            filename="again")


@pytest.mark.slow
def test_compare_and_bench_return_an_image_and_their_figures(host, one_thread):
    (grid, text), ui = run(host, "SdkdCompare", ckpt_name="teacher.safetensors", student_name="teacher-tiny.safetensors",
                           prompts="a red square", seeds="0", size=64, steps=2)
    image = grid[0]
    assert image.dtype == torch.float32 and image.shape[0] == 1 and image.shape[-1] == 3 and 0 <= image.min() <= image.max() <= 1
    assert "teacher-tiny (tiny" in text[0] and "PSNR" in text[0] and ui["text"] == text
    (chart, table), ui = run(host, "SdkdBench", ckpt_name="teacher.safetensors", student_name="teacher-tiny.safetensors",
                             size=64, steps=1, repeats=1)
    assert chart[0].shape[0] == 1 and chart[0].shape[-1] == 3 and "speed-up" in table[0] and ui["text"] == table


@pytest.mark.slow
def test_compare_node_draws_students_with_their_sampler_and_lora(host, one_thread):
    ckpts, loras = host.dirs["checkpoints"], host.dirs["loras"]
    for model, name in (("teacher-tiny", "tiny-style"), ("teacher", "teacher-style")):
        lora = random_lora(layout_of(ckpts / f"{model}.safetensors"), rank=4, alpha=4.0, seed=2, unet_only=True)
        write_kohya(lora, loras / f"{name}.safetensors", kohya_metadata(lora, None), overwrite=True)
    inputs = dict(ckpt_name="teacher.safetensors", student_name="teacher-tiny.safetensors", prompts="a red square",
                  seeds="0 1", size=64, steps=2, guidance=1.0, sampler="lcm", reference_steps=3)
    (grid, text), _ = run(host, "SdkdCompare", lora_name="tiny-style.safetensors", **inputs)
    assert "teacher (teacher, " in text[0] and "dpmpp_2m, 3 steps, cfg 7.5): teacher (reference)" in text[0], text
    assert "teacher-tiny + tiny-style.safetensors:1 (tiny, " in text[0] and "lcm, 2 steps, cfg 1): PSNR" in text[0], text
    assert text[0].endswith("the lcm sampler without an LCM LoRA draws poor images; pick an LCM LoRA as lora_name "
                            "(a LoRA from sdkd lcm, or lcm-lora-sdv1-5)"), text
    with pytest.raises(error_of(host)) as e:
        run(host, "SdkdCompare", lora_name="teacher-style.safetensors", **inputs)
    assert str(e.value).startswith("'lora_name' for teacher-tiny.safetensors: teacher-style.safetensors: this LoRA "
                                   "was made for the full SD1.x model"), e.value


def test_example_workflows_use_declared_nodes_and_widgets(host):
    """Every example workflow (UI format, what the template browser loads) runs sdkd's nodes or samples a model with
    ComfyUI's own (the host checks queue each in ComfyUI); the sdkd nodes it names exist, with one value per widget, and
    the API prompt the host checks derive from it has every input each sdkd node declares."""
    from hosts.comfyui import api_prompt

    files = sorted(WORKFLOWS.glob("*.json"))
    assert len(files) >= 7
    info = {k: {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES)} for k, cls in host.nodes.items()}
    used = set()
    for f in files:
        flow = json.loads(f.read_text())
        sdkd = [n for n in flow["nodes"] if n["type"].startswith("Sdkd")]
        assert sdkd or any(n["type"] == "KSampler" for n in flow["nodes"]), f.name
        prompt = api_prompt({**flow, "nodes": sdkd}, info)
        for n in sdkd:
            used.add(n["type"])
            declared = info[n["type"]]["input"]
            required = {**declared["required"], **declared.get("optional", {})}
            inputs = prompt[str(n["id"])]["inputs"]
            assert set(inputs) == set(required), (f.name, n["type"])
            for name, (kind, *_) in required.items():
                if isinstance(kind, list) and not str(inputs[name]).endswith(".safetensors"):
                    assert inputs[name] in kind, (f.name, name, inputs[name])
    assert used == set(host.nodes)


# A bad value for every text widget of the nodes (number widgets get theirs from what each node declares), and what a
# widget needs beside it to be read at all (the prompt file is read only when `data` says so).
BAD_TEXT = {"filename": "../x", "vram": "abc", "data_path": "no-such-prompts.txt", "seeds": "a b", "prompts": " \n ",
            "image_folder": "no-such-folder", "student_filename": "../x", "lora_filename": "a/../../x"}
WITH = {("SdkdDistil", "data_path"): {"data": "prompt file"}, ("SdkdFewStepLora", "data_path"): {"data": "prompt file"}}
MODELS = {"ckpt_name": "teacher.safetensors", "base_name": "teacher.safetensors",
          "student_name": "teacher-tiny.safetensors", "lora_name": "style.safetensors"}


def bad_numbers(kind: str, opts: dict) -> list:
    """Values a number widget must refuse: text, not a number, a fraction for a whole number, below min, above max."""
    return ["abc", float("nan"), *([1.5] if kind == "INT" else []), opts["min"] - 1, opts["max"] + 1]


def test_every_widget_refuses_a_bad_value_in_one_line_naming_it(host, teacher_file):
    """Every node's every text and number widget, given a bad value: one line naming the widget (as the node calls
    it: no CLI flag, no raw Python error or object, no folder path) and nothing written."""
    SdkdError = error_of(host)
    lora = random_lora(layout_of(teacher_file), rank=4, alpha=4.0, seed=1, unet_only=True)
    write_kohya(lora, host.dirs["loras"] / "style.safetensors", kohya_metadata(lora, None))
    (host.dirs["input"] / "sdkd-lora").mkdir()
    before = sorted(host.dirs["checkpoints"].parent.rglob("*"))
    walked = []
    for node_id, cls in host.nodes.items():
        declared = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        models = {k: v for k, v in MODELS.items() if k in declared}
        for widget, spec in declared.items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if kind == "STRING":
                assert widget in BAD_TEXT, f"{node_id}.{widget}: add a bad value for it to BAD_TEXT"
                values = [BAD_TEXT[widget]]
            elif kind in ("INT", "FLOAT"):
                values = bad_numbers(kind, opts)
            else:
                continue
            for value in values:
                with pytest.raises(SdkdError) as e:
                    run(host, node_id, **models, **WITH.get((node_id, widget), {}), **{widget: value})
                said = str(e.value)
                assert (said.startswith((f"{widget} ", f"{widget}:", f"'{widget}'")) and "\n" not in said
                        and "--" not in said and "Error" not in said and "(" not in said.split(":")[0]
                        and str(host.dirs["checkpoints"].parent) not in said), (node_id, widget, value, said)
                walked.append((node_id, widget))
    assert {n for n, _ in walked} == set(host.nodes) - {"SdkdPruneModel", "SdkdInspect"}  # those have no such widget
    assert sorted(host.dirs["checkpoints"].parent.rglob("*")) == before


def test_rebase_refusals_name_the_node_inputs(host, tmp_path):
    """Rebase's refusals in the node's terms: its inputs by name (not the CLI's COMMUNITY), shapes in words."""
    from sdkd_ext.tiny import save, tiny_checkpoint

    SdkdError = error_of(host)
    save(tiny_checkpoint(width=64, seed=3), host.dirs["checkpoints"] / "wide.safetensors")
    cases = {"teacher-tiny.safetensors": "'ckpt_name' teacher-tiny.safetensors is a BK-SDM tiny student",
             "wide.safetensors": "'ckpt_name' and 'base_name' differ in topology (base width 64 vs 32"}
    for community, needle in cases.items():
        with pytest.raises(SdkdError) as e:
            run(host, "SdkdRebase", ckpt_name=community, base_name="teacher.safetensors",
                student_name="teacher-tiny.safetensors")
        said = str(e.value)
        assert needle in said and "COMMUNITY" not in said and "Topology(" not in said and "--" not in said, said


def test_every_node_input_is_the_tables(host):
    """Each node's inputs against its job's fields in sdkd_ext.terms: default, limits and tooltip as the table has
    them, and every field the table gives a node input declared on the node (a default changed in one place fails)."""
    from sdkd_ext.terms import JOBS

    jobs = {"SdkdPruneModel": "prune"}
    for node_id, cls in host.nodes.items():
        job = jobs.get(node_id, getattr(cls, "JOB", ""))
        declared = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        fields = {f.node: f for f in JOBS[job].values() if f.node is not None and f.node in declared}
        for name, f in fields.items():
            kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
            want = f.default_for("node")
            assert opts.get("default") == want, (node_id, name, opts.get("default"), want)
            assert (opts.get("min"), opts.get("max"), opts.get("step")) == (f.lo, f.hi, f.step), (node_id, name)
            assert opts.get("tooltip", "") == f.help, (node_id, name)
            if isinstance(kind, list) and want is not None:
                assert want in kind, (node_id, name, want)
        if node_id != "SdkdPruneModel":
            missing = {f.node for f in JOBS[job].values() if f.node and " " not in f.node} - set(declared)
            assert not missing, (node_id, missing)
