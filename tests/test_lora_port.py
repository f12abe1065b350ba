"""Porting teacher LoRAs onto students by the variant spec, `generate --lora`, and every bad input refused cleanly."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdkd_ext.cli import main
from sdkd_ext.convert import UNET
from sdkd_ext.lora.apply import apply_lora, pipeline_module
from sdkd_ext.lora.file import DOWN, UP, kohya_metadata, read_lora, write_kohya
from sdkd_ext.lora.names import flat, kohya_name
from sdkd_ext.pipeline import load_pipeline
from sdkd_ext.variants import VARIANTS, block_map
from test_lora import attention_projections, check_against_ldm, layout_of, one_thread, random_lora  # noqa: F401


def spec_student_name(teacher_module: str, variant: str) -> str | None:
    """Where the spec's block map puts a teacher UNet module in the student (None: its block is removed)."""
    path = teacher_module[len(UNET):]
    inverse = {t: s for s, t in block_map(VARIANTS[variant]).items()}
    for t, s in inverse.items():
        if path.startswith(t + "."):
            return UNET + s + path[len(t):]
    return None if path.startswith(("input_blocks.", "middle_block.", "output_blocks.")) else teacher_module


@pytest.fixture(scope="module")
def teacher_lora(teacher_file, tmp_path_factory):
    """A teacher LoRA on every UNet conv/linear (LoCon included) and the text encoder, kohya with diffusers names."""
    layout = layout_of(teacher_file)
    lora = random_lora(layout, rank=4, alpha=6.0, seed=3)
    tensors = {}
    for m, mod in lora.modules.items():  # UNet in the spelling kohya's scripts use on a diffusers UNet
        stem = "lora_unet_" + flat(layout.diffusers_name(m)) if m.startswith(UNET) else kohya_name(m)
        tensors.update({f"{stem}.{DOWN}": mod.tensors[DOWN], f"{stem}.{UP}": mod.tensors[UP],
                        f"{stem}.alpha": torch.tensor(mod.alpha)})
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_dim": "4", "ss_network_alpha": "6", "ss_output_name": "style",
                                             "sshs_model_hash": "0" * 64})
    return path, lora


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_port_keeps_every_kept_modules_delta_and_drops_exactly_the_removed(variant, teacher_file, teacher_lora,
                                                                           students, tmp_path, capsys):
    path, lora = teacher_lora
    student_file = students[variant].checkpoint
    out = tmp_path / "ported.safetensors"
    assert main(["lora-port", str(path), "--to", str(student_file), "--out", str(out)]) == 0
    expected = {m: spec_student_name(m, variant) for m in lora.modules}
    kept = {s: t for t, s in expected.items() if s is not None}
    dropped = [t for t, s in expected.items() if s is None]
    assert dropped and kept
    assert f"kept {len(kept)} modules, dropped {len(dropped)}" in capsys.readouterr().out

    student = layout_of(student_file)
    ported = read_lora(out, student)
    assert set(ported.modules) == set(kept)
    assert check_against_ldm(out, student.topology) == sum(m.startswith(UNET) for m in kept)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["sdkd_variant"] == variant and meta["sdkd_ported_from"] == "style.safetensors"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == "style"
    assert len(meta["sdkd_base_sha256"]) == 64 and "sshs_model_hash" not in meta  # the source file's hash no longer holds

    # applied to the models, the ported LoRA changes each student layer exactly as the teacher LoRA its teacher layer
    t_pipe, s_pipe = load_pipeline(teacher_file).pipe, load_pipeline(student_file).pipe
    teacher = layout_of(teacher_file)
    t_before = {t: pipeline_module(t_pipe, teacher, t).weight.detach().clone() for t in lora.modules}
    s_before = {s: pipeline_module(s_pipe, student, s).weight.detach().clone() for s in kept}
    assert apply_lora(t_pipe, path, 0.7) == len(lora.modules)
    assert apply_lora(s_pipe, out, 0.7) == len(kept)
    for s, t in kept.items():
        t_delta = pipeline_module(t_pipe, teacher, t).weight.detach() - t_before[t]
        s_delta = pipeline_module(s_pipe, student, s).weight.detach() - s_before[s]
        assert t_delta.abs().max() > 0
        torch.testing.assert_close(s_delta, t_delta, rtol=0, atol=1e-6)


def test_port_to_a_variant_name_uses_sd15_widths(tmp_path):
    from sdkd_ext.lora.names import build_layout, sd15_te_shapes
    from sdkd_ext.variants import SD15

    layout = build_layout(SD15, sd15_te_shapes())
    lora = random_lora(layout, rank=2, alpha=1.0, select=attention_projections)
    src = write_kohya(lora, tmp_path / "sd15.safetensors", {})
    assert main(["lora-port", str(src), "--to", "bk-sdm-small"]) == 0  # an alias; default output beside the input
    out = tmp_path / "sd15-bk-small.safetensors"
    student = build_layout(VARIANTS["small"].student(SD15), sd15_te_shapes())
    assert set(read_lora(out, student).modules) == {spec_student_name(m, "small") for m in lora.modules} - {None}


def test_generate_with_lora(students, teacher_lora, tmp_path, capsys):
    from PIL import Image
    import numpy as np

    path, _ = teacher_lora
    student = students["small"].checkpoint
    args = ["generate", str(student), "--prompt", "a red circle", "--steps", "1", "--size", "64"]
    assert main(args + ["--lora", f"{path}:0.8", "--out", str(tmp_path / "x.png")]) == 2
    assert "Port it first: sdkd lora-port" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    ported = tmp_path / "p.safetensors"
    assert main(["lora-port", str(path), "--to", "small", "--out", str(ported)]) == 2  # SD1.5 widths, not tiny ones
    assert main(["lora-port", str(path), "--to", str(student), "--out", str(ported)]) == 0
    assert main(args + ["--out", str(tmp_path / "plain.png")]) == 0
    assert main(args + ["--lora", f"{ported}:0.8", "--out", str(tmp_path / "lora.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=float) for n in ("plain.png", "lora.png"))
    assert np.abs(a - b).mean() > 0.5


def bad(tmp_path, tensors, metadata=None, name="bad.safetensors"):
    """Write a LoRA file for a bad-input test."""
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def lora_pair(stem, out_ch, in_ch, rank=4, alpha=True):
    """kohya tensors of one module."""
    t = {f"{stem}.{DOWN}": torch.randn(rank, in_ch), f"{stem}.{UP}": torch.randn(out_ch, rank)}
    return {**t, f"{stem}.alpha": torch.tensor(float(rank))} if alpha else t


def run_refused(args, capsys, out) -> str:
    """Run the CLI, assert exit 2 and no output; return the message."""
    assert main(args) == 2
    assert not out.exists()
    return capsys.readouterr().err


@pytest.mark.parametrize("case,needle", [
    ("sdxl_keys", "SDXL"), ("sdxl_width", "SDXL"), ("sd2_width", "SD2"), ("nothing", "none of the LoRA's"),
    ("rank_missing", "rank/alpha missing"), ("alpha_missing", "rank/alpha missing"),
])
def test_bad_loras_are_refused_with_no_output(case, needle, tmp_path, capsys):
    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    ldm_attn = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    files = {
        "sdxl_keys": {**lora_pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
                      **lora_pair(ldm_attn, 640, 2048)},
        "sdxl_width": lora_pair(ldm_attn, 640, 2048),
        "sd2_width": {**lora_pair(attn, 320, 1024), **lora_pair(attn.replace("to_k", "to_q"), 320, 320)},
        "nothing": {"foo.weight": torch.zeros(2, 2), "lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 2)},
        "rank_missing": {f"{attn}.{DOWN}": torch.randn(4, 768), f"{attn}.alpha": torch.tensor(4.0)},
        "alpha_missing": {**lora_pair(attn, 320, 768, alpha=False),
                          **lora_pair(attn.replace("attentions_0", "attentions_1"), 320, 768, alpha=False)},
    }
    path = bad(tmp_path, files[case])
    out = tmp_path / "out.safetensors"
    assert needle in run_refused(["lora-port", str(path), "--to", "base", "--out", str(out)], capsys, out)
    if case == "alpha_missing":
        assert main(["lora-port", str(path), "--to", "base", "--out", str(out), "--alpha-equals-rank"]) == 0


def test_already_ported_student_made_existing_output_and_teacher_target_refused(teacher_lora, teacher_file, students,
                                                                                   tmp_path, capsys):
    path, _ = teacher_lora
    student_file = students["base"].checkpoint
    first = tmp_path / "p.safetensors"
    assert main(["lora-port", str(path), "--to", str(student_file), "--out", str(first)]) == 0
    capsys.readouterr()
    out = tmp_path / "again.safetensors"
    assert "already ported" in run_refused(["lora-port", str(first), "--to", str(student_file), "--out", str(out)], capsys, out)

    # the same LoRA without sdkd's metadata: recognised by its layers as made for a student
    with safe_open(str(first), "pt") as f:
        stripped = bad(tmp_path, {k: f.get_tensor(k) for k in f.keys()}, {}, "stripped.safetensors")
    msg = run_refused(["lora-port", str(stripped), "--to", str(student_file), "--out", str(out)], capsys, out)
    assert "made for a BK-SDM base student" in msg and "needs no port" in msg

    before = first.read_bytes()
    assert "already exists" in run_refused(["lora-port", str(path), "--to", str(student_file), "--out", str(first)],
                                           capsys, tmp_path / "none")
    assert first.read_bytes() == before
    assert main(["lora-port", str(path), "--to", str(student_file), "--out", str(first), "--overwrite"]) == 0
    assert "SD1.x teacher" in run_refused(["lora-port", str(path), "--to", str(teacher_file), "--out", str(out)], capsys, out)
    assert "not a LoRA" in run_refused(["lora-port", str(teacher_file), "--to", "base", "--out", str(out)], capsys, out)


def test_text_encoder_only_lora_needs_no_port(teacher_file, students, tmp_path, capsys):
    layout = layout_of(teacher_file)
    lora = random_lora(layout, select=lambda m, s: m.endswith("q_proj") and not m.startswith(UNET))
    path = write_kohya(lora, tmp_path / "te.safetensors", kohya_metadata(lora, None))
    out = tmp_path / "out.safetensors"
    msg = run_refused(["lora-port", str(path), "--to", str(students["tiny"].checkpoint), "--out", str(out)], capsys, out)
    assert "already fits the BK-SDM tiny student" in msg
    s_pipe = load_pipeline(students["tiny"].checkpoint).pipe
    assert apply_lora(s_pipe, path) == len(lora.modules)
