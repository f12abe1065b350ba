"""The public SD1.5 LCM-LoRA's layout (every conv and linear layer, 3x3 conv LoRAs, fp16) reads onto the teacher,
`sdkd lora-port` lands it on every kept layer of each student with the teacher's delta, and it applies in sdkd."""

import pytest
import torch
from safetensors import safe_open

from lcm_public import SD15_KEYS, SD15_MODULES, TARGETS, targeted_modules, write_public_lcm
from sdkd_ext.cli import main
from sdkd_ext.convert import UNET
from sdkd_ext.lora.apply import apply_lora, pipeline_module
from sdkd_ext.lora.file import DOWN, read_lora
from sdkd_ext.lora.names import Layout, build_layout, sd15_te_shapes
from sdkd_ext.pipeline import load_pipeline
from sdkd_ext.variants import SD15, VARIANTS
from test_lora import layout_of, one_thread  # noqa: F401
from test_lora_port import spec_student_name


def lcm_targets(layout: Layout) -> set[str]:
    """The layout's UNet modules the public LCM-LoRA's rule picks (by diffusers name, as peft matched them)."""
    return {m for m in layout.shapes if m.startswith(UNET)
            and any(n == t or n.endswith("." + t) for n in [layout.diffusers_name(m)] for t in TARGETS)}


@pytest.fixture(scope="module")
def public_lcm(teacher_file, tmp_path_factory):
    """The public layout at the test teacher's widths (rank 8: the rank is the only thing scaled down)."""
    top = layout_of(teacher_file).topology
    path = tmp_path_factory.mktemp("lcm") / "pytorch_lora_weights.safetensors"
    return write_public_lcm(path, top.model_channels, top.context_dim, rank=8, scale=0.05)


def test_public_layout_at_sd15_width_reads_onto_every_conv_and_linear_but_the_stem_and_time_embedding(tmp_path):
    path = write_public_lcm(tmp_path / "lcm.safetensors", rank=1)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        conv = f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
        assert conv.shape == (1, 320, 3, 3) and conv.dtype == torch.float16
        assert f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight").shape == (320, 1, 1, 1)
        assert f.get_tensor("lora_unet_up_blocks_2_attentions_0_proj_in.alpha").dtype == torch.float16
    assert len(keys) == SD15_KEYS and len(targeted_modules()) == SD15_MODULES
    teacher = build_layout(SD15, sd15_te_shapes())
    lora = read_lora(path, teacher)
    unet_layers = {m for m, s in teacher.shapes.items() if m.startswith(UNET) and len(s) >= 2}
    assert unet_layers - set(lora.modules) == {UNET + n for n in ("input_blocks.0.0", "out.2", "time_embed.0", "time_embed.2")}
    assert set(lora.modules) == lcm_targets(teacher)
    assert {m.alpha for m in lora.modules.values()} == {64.0}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ported_public_lcm_lands_on_every_kept_layer_with_the_teachers_delta(variant, public_lcm, teacher_file, students,
                                                                             tmp_path, capsys):
    student_file = students[variant].checkpoint
    out = tmp_path / "lcm-ported.safetensors"
    assert main(["lora-port", str(public_lcm), "--to", str(student_file), "--out", str(out)]) == 0
    teacher, student = layout_of(teacher_file), layout_of(student_file)
    source = read_lora(public_lcm, teacher)
    kept = {s: t for t in source.modules if (s := spec_student_name(t, variant)) is not None}
    assert len(kept) < len(source.modules)  # every student drops blocks
    assert f"kept {len(kept)} modules, dropped {len(source.modules) - len(kept)}" in capsys.readouterr().out

    ported = read_lora(out, student)
    assert set(ported.modules) == set(kept) == lcm_targets(student)  # every conv and linear layer the rule picks
    for s, t in kept.items():
        shape = student.shapes[s]
        torch.testing.assert_close(ported.modules[s].delta(shape), source.modules[t].delta(shape), rtol=0, atol=0)
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor(f"lora_unet_{next(iter(sorted(kept)))[len(UNET):].replace('.', '_')}.{DOWN}").dtype == torch.float16

    # in sdkd's own pipeline the ported file moves each student layer exactly as the original moves its teacher layer
    t_pipe, s_pipe = load_pipeline(teacher_file).pipe, load_pipeline(student_file).pipe
    t_before = {t: pipeline_module(t_pipe, teacher, t).weight.detach().clone() for t in kept.values()}
    s_before = {s: pipeline_module(s_pipe, student, s).weight.detach().clone() for s in kept}
    assert apply_lora(t_pipe, public_lcm) == len(source.modules)
    assert apply_lora(s_pipe, out) == len(kept)
    for s, t in kept.items():
        t_delta = pipeline_module(t_pipe, teacher, t).weight.detach() - t_before[t]
        s_delta = pipeline_module(s_pipe, student, s).weight.detach() - s_before[s]
        assert t_delta.abs().max() > 0
        torch.testing.assert_close(s_delta, t_delta, rtol=0, atol=1e-6)


def test_ported_public_lcm_changes_the_tiny_students_image(public_lcm, students, tmp_path):
    import numpy as np
    from PIL import Image

    student = students["tiny"].checkpoint
    ported = tmp_path / "lcm-tiny.safetensors"
    assert main(["lora-port", str(public_lcm), "--to", str(student), "--out", str(ported)]) == 0
    args = ["generate", str(student), "--prompt", "a red circle", "--steps", "2", "--size", "64"]
    assert main(args + ["--out", str(tmp_path / "plain.png")]) == 0
    assert main(args + ["--lora", str(ported), "--out", str(tmp_path / "lcm.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=float) for n in ("plain.png", "lcm.png"))
    assert np.abs(a - b).mean() > 0.5
