"""sdkd's few-step ComfyUI nodes (few-step LoRA, make it fast) on tiny models, over ComfyUI 0.3.64's own modules
(folder_paths, its progress bar and interrupt, its link-type check), as tests/test_comfy_nodes.py runs the others."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from sdkd_ext.checkpoint import open_model
from sdkd_ext.detect import describe
from distill_helpers import one_thread  # noqa: F401 (fixture)
from test_comfy_nodes import WORKFLOWS, comfy, error_of, host, interrupt_at, run  # noqa: F401 (fixtures)

FAST = dict(ckpt_name="teacher.safetensors", distill_steps=2, lcm_steps=5, prompt_count=2, resolution=64, vram="")


def metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_name_outputs_link_into_comfys_model_lists_and_nothing_else(host, comfy):
    """ComfyUI's own link check (execution.py's validate_inputs calls it for every link) takes a name output into
    Load Checkpoint's ckpt_name and Load LoRA's lora_name (typed as the folder's list) and refuses it elsewhere."""
    import folder_paths
    from comfy_execution.validation import validate_node_input

    for node in ("SdkdMakeItFast", "SdkdFewStepLora"):
        for kind in host.nodes[node].RETURN_TYPES:
            assert validate_node_input(kind, folder_paths.get_filename_list("checkpoints"))
            assert validate_node_input(kind, folder_paths.get_filename_list("loras"))
            assert validate_node_input(kind, "STRING")
            assert not validate_node_input(kind, "MODEL") and not validate_node_input(kind, "INT")
            assert json.loads(json.dumps(kind)) == "*"  # what /object_info tells the page


def test_make_it_fast_workflow_feeds_the_names_to_the_loaders_and_samples_lcm_4_steps(host):
    flow = json.loads((WORKFLOWS / "sdkd_make_it_fast.json").read_text())
    by_id = {n["id"]: n for n in flow["nodes"]}
    links = {row[0]: row for row in flow["links"]}

    def source(node_type: str, input_name: str) -> tuple[str, int]:
        node = next(n for n in flow["nodes"] if n["type"] == node_type)
        slot = next(i for i in node["inputs"] if i["name"] == input_name)
        _, src, src_slot, dst, _, _ = links[slot["link"]]
        assert dst == node["id"]
        return by_id[src]["type"], src_slot

    names = host.nodes["SdkdMakeItFast"].RETURN_NAMES
    assert source("CheckpointLoaderSimple", "ckpt_name") == ("SdkdMakeItFast", names.index("student"))
    assert source("LoraLoader", "lora_name") == ("SdkdMakeItFast", names.index("lora"))
    assert source("LoraLoader", "model") == ("CheckpointLoaderSimple", 0)
    assert source("ModelSamplingDiscrete", "model") == ("LoraLoader", 0)
    assert source("KSampler", "model") == ("ModelSamplingDiscrete", 0)
    assert source("SaveImage", "images")[0] == "VAEDecode"
    sampling = next(n for n in flow["nodes"] if n["type"] == "ModelSamplingDiscrete")["widgets_values"]
    seed, _, steps, cfg, sampler, *_ = next(n for n in flow["nodes"] if n["type"] == "KSampler")["widgets_values"]
    assert sampling[0] == "lcm" and (steps, cfg, sampler) == (4, 1.0, "lcm")


def test_nodes_refuse_bad_input_in_their_own_terms(host):
    SdkdError = error_of(host)
    cases = {
        "guidance 0.5: give a number from 1 to 30": ("SdkdFewStepLora", dict(ckpt_name="teacher-tiny.safetensors", guidance=0.5)),
        "'vram' 'lots': give the GPU memory in GB": ("SdkdFewStepLora", dict(ckpt_name="teacher-tiny.safetensors", vram="lots")),
        "teacher_name 'gone.safetensors' is not in your checkpoints": (
            "SdkdFewStepLora", dict(ckpt_name="teacher-tiny.safetensors", teacher_name="gone.safetensors")),
        "filename '../x'": ("SdkdFewStepLora", dict(ckpt_name="teacher-tiny.safetensors", filename="../x")),
        "already a BK-SDM tiny student": ("SdkdMakeItFast", dict(FAST, ckpt_name="teacher-tiny.safetensors")),
        "student_filename '../x'": ("SdkdMakeItFast", dict(FAST, student_filename="../x")),
        "prompt_count 0: give a whole number from 1": ("SdkdMakeItFast", dict(FAST, prompt_count=0)),
    }
    before = sorted(host.dirs["checkpoints"].parent.rglob("*"))
    for needle, (node, inputs) in cases.items():
        with pytest.raises(SdkdError) as e:
            run(host, node, **inputs)
        assert needle in str(e.value) and "--" not in str(e.value), e.value
    assert sorted(host.dirs["checkpoints"].parent.rglob("*")) == before


@pytest.mark.slow
def test_few_step_node_trains_into_loras_and_says_how_to_sample(host, comfy, one_thread):
    (name,), ui = run(host, "SdkdFewStepLora", ckpt_name="teacher-tiny.safetensors", teacher_name="teacher.safetensors",
                      prompt_count=2, steps=2, rank=4, resolution=64, vram="")
    assert name == ["teacher-tiny-lcm.safetensors"], ui
    meta = metadata(host.dirs["loras"] / name[0])
    assert meta["sdkd_lora_kind"] == "lcm" and meta["sdkd_lcm_teacher"] == "teacher.safetensors"
    text = ui["text"][0]
    assert "2 steps on 2 samples" in text and "in your loras" in text and str(host.dirs["loras"]) not in text
    assert "ModelSamplingDiscrete 'lcm', then KSampler 'lcm', 4 steps, cfg 1" in text, text
    assert host.updates and host.updates[-1][0] == host.updates[-1][1]
    comfy.model_management.interrupt_current_processing(True)  # before its first step: nothing to keep, so ComfyUI's own
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(host, "SdkdFewStepLora", ckpt_name="teacher-tiny.safetensors", prompt_count=2, steps=2, rank=4,
            resolution=64, vram="", filename="again")


@pytest.mark.slow
def test_make_it_fast_node_outputs_both_names_keeps_the_student_on_interrupt_and_reuses_what_it_made(
        host, comfy, one_thread):
    host.steps = FAST["lcm_steps"]  # only the LoRA step has 5 steps: the interrupt lands there
    page_hook = comfy.utils.PROGRESS_BAR_HOOK
    interrupt_at(comfy, host, 2)
    (student, lora), ui = run(host, "SdkdMakeItFast", **FAST, student_filename="cut")
    assert student == ["cut.safetensors"] and "interrupted; what was written is kept" in ui["text"][0], ui
    src = open_model(host.dirs["checkpoints"] / "cut.safetensors")
    assert describe(src).variant == "tiny" and src.metadata["sdkd_distill_status"] == "complete"
    assert comfy.model_management.processing_interrupted()  # still set: the loaders after it do not run
    comfy.model_management.interrupt_current_processing(False)
    comfy.utils.PROGRESS_BAR_HOOK = page_hook

    (student, lora), ui = run(host, "SdkdMakeItFast", **FAST)
    assert student == ["teacher-bk-tiny-fast.safetensors"] and lora == ["teacher-bk-tiny-fast-lcm.safetensors"], ui
    text = ui["text"][0]
    assert "prune+kd" in text and "in your checkpoints" in text and "in your loras" in text, text
    assert "KSampler 'lcm', 4 steps, cfg 1" in text
    assert describe(open_model(host.dirs["checkpoints"] / student[0])).variant == "tiny"
    assert metadata(host.dirs["loras"] / lora[0])["sdkd_base"] == student[0]
    stamp = (host.dirs["loras"] / lora[0]).stat().st_mtime_ns
    again, ui = run(host, "SdkdMakeItFast", **FAST)  # queued again: the files made are the outputs, nothing retrained
    assert again == [student, lora] and "already made" in ui["text"][0]
    assert (host.dirs["loras"] / lora[0]).stat().st_mtime_ns == stamp
