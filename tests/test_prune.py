"""Pruning copies exactly the spec's teacher blocks, exports what A1111's model code builds, and computes the same."""

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from sdkd_ext.checkpoint import open_model
from sdkd_ext.convert import UNET
from sdkd_ext.detect import describe
from sdkd_ext.pipeline import build_unet
from sdkd_ext.prune import PruneJob, prune
from sdkd_ext.tiny import save
from sdkd_ext.variants import VARIANTS, block_map, get_variant


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def teacher_name(student_key: str, variant: str) -> str | None:
    """The teacher key a student key must come from, by the spec's block map (None: not a block key)."""
    bmap = block_map(VARIANTS[variant])
    rest = student_key[len(UNET):]
    for s, t in bmap.items():
        if rest.startswith(s + "."):
            return UNET + t + rest[len(s):]
    return None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_student_tensor_equals_its_teacher_tensor(variant, students, teacher_sd):
    tensors, meta = read(students[variant].checkpoint)
    block_keys = 0
    for k, v in tensors.items():
        src = teacher_name(k, variant) or k
        block_keys += src != k
        assert torch.equal(v, teacher_sd[src]), k
    assert block_keys > 100
    dropped = {k for k in teacher_sd if k.startswith(UNET)} - {teacher_name(k, variant) or k for k in tensors}
    assert dropped, "a student must drop teacher blocks"
    assert meta["sdkd_variant"] == variant and meta["sdkd_teacher"] == "tinysd.safetensors"
    assert int(meta["sdkd_unet_params"]) == sum(v.numel() for k, v in tensors.items() if k.startswith(UNET))
    assert json.loads(meta["sdkd_topology"])["mid_block"] == (variant == "base")


def test_teacher_untouched_and_hash_recorded(students, teacher_file):
    digest = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    for r in students.values():
        assert read(r.checkpoint)[1]["sdkd_teacher_sha256"] == digest


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_student_matches_a1111_model_code(variant, students):
    """diffusers student vs the `ldm` UNet (A1111's code) built from our yaml with an empty middle block."""
    from omegaconf import OmegaConf
    from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel

    r = students[variant]
    cfg = OmegaConf.load(r.yaml).model.params.unet_config.params
    ldm = UNetModel(**OmegaConf.to_container(cfg)).eval()
    if variant != "base":
        ldm.middle_block = TimestepEmbedSequential()
    tensors, _ = read(r.checkpoint)
    missing, unexpected = ldm.load_state_dict({k[len(UNET):]: v for k, v in tensors.items() if k.startswith(UNET)}, strict=False)
    assert not unexpected and all(k.startswith("middle_block.") for k in missing) and (variant != "base" or not missing)
    src = open_model(r.checkpoint)
    unet = build_unet(src, describe(src))
    torch.manual_seed(1)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        want = ldm(x, t, ctx)
        got = unet(x, t, encoder_hidden_states=ctx).sample
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5


def test_default_dtype_fp16_and_yaml(teacher_file, tmp_path):
    r = prune(PruneJob(teacher_file, get_variant("tiny"), tmp_path / "s"))
    tensors, _ = read(r.checkpoint)
    assert {v.dtype for k, v in tensors.items() if k.startswith(UNET)} == {torch.float16}
    text = r.yaml.read_text()
    assert "num_res_blocks: 1" in text and "channel_mult: [ 1, 2, 4 ]" in text
    bf = prune(PruneJob(teacher_file, get_variant("base"), tmp_path / "b", dtype="bf16"))
    assert read(bf.checkpoint)[0][UNET + "out.2.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("wrap,dtype", [(True, torch.float32), (False, torch.float16), (True, torch.bfloat16)])
def test_ckpt_inputs_with_and_without_state_dict_wrapper(wrap, dtype, teacher_sd, students, tmp_path):
    sd = {k: v.to(dtype) for k, v in teacher_sd.items()}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 5} if wrap else sd, path)
    r = prune(PruneJob(path, get_variant("small"), tmp_path / "out", dtype="fp32"))
    got, _ = read(r.checkpoint)
    want, _ = read(students["small"].checkpoint)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k].to(dtype).to(got[k].dtype)), k


def test_ema_weights_used_only_when_asked(teacher_sd, tmp_path):
    sd = dict(teacher_sd)
    ema = {"model_ema.diffusion_model" + k[len(UNET):].replace(".", ""): v + 1 for k, v in teacher_sd.items() if k.startswith(UNET)}
    path = save({**sd, **ema, "model_ema.num_updates": torch.tensor(3)}, tmp_path / "ema.safetensors")
    regular, _ = read(prune(PruneJob(path, get_variant("tiny"), tmp_path / "reg", dtype="fp32")).checkpoint)
    with_ema, meta = read(prune(PruneJob(path, get_variant("tiny"), tmp_path / "ema-out", dtype="fp32", ema=True)).checkpoint)
    k = UNET + "input_blocks.3.0.in_layers.0.weight"
    assert torch.equal(regular[k], teacher_sd[UNET + "input_blocks.4.0.in_layers.0.weight"])
    assert torch.equal(with_ema[k], teacher_sd[UNET + "input_blocks.4.0.in_layers.0.weight"] + 1)
    assert not any(k.startswith("model_ema.") for k in with_ema) and meta["sdkd_ema"] == "true"


def test_unet_only_checkpoint_and_inpainting(tmp_path):
    from sdkd_ext.tiny import tiny_checkpoint

    bare = save(tiny_checkpoint(width=32, vae=False, text_encoder=False), tmp_path / "bare.safetensors")
    info = describe(open_model(bare))
    assert info.kind == "sd1" and not info.has_vae and not info.has_text_encoder
    assert prune(PruneJob(bare, get_variant("tiny"), tmp_path / "bare-tiny")).checkpoint.exists()
    inpaint = save(tiny_checkpoint(width=32, in_channels=9, vae=False, text_encoder=False), tmp_path / "inp.safetensors")
    info = describe(open_model(inpaint))
    assert info.kind == "sd1" and info.inpainting
    r = prune(PruneJob(inpaint, get_variant("small"), tmp_path / "inp-small"))
    assert describe(open_model(r.checkpoint)).inpainting
    assert "LatentInpaintDiffusion" in r.yaml.read_text() and "in_channels: 9" in r.yaml.read_text()


def test_diffusers_folder_round_trip(students, teacher_file, tmp_path):
    """LDM -> diffusers -> LDM is exact: a diffusers export of the teacher prunes to the same student."""
    r = prune(PruneJob(teacher_file, get_variant("base"), tmp_path / "t-base", dtype="fp32", diffusers=True))
    assert (r.diffusers / "unet" / "config.json").exists()
    assert json.loads((r.diffusers / "unet" / "config.json").read_text())["layers_per_block"] == 1
    folder_src = open_model(r.diffusers)
    single = open_model(r.checkpoint)
    assert set(folder_src.keys()) == set(single.keys())
    for k in single.keys():
        assert torch.equal(folder_src.get(k).to(torch.float32), single.get(k).to(torch.float32)), k
