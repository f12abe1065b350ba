"""Public students (Nota BK-SDM, Segmind small-sd/tiny-sd) in both published layouts convert to files `ldm` loads."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sdkd_ext.cli import main
from sdkd_ext.configs import VaeShape, sd15
from sdkd_ext.convert import UNET, unet_map
from sdkd_ext.public import convert, open_student
from sdkd_ext.tiny import make_text_encoder, make_vae, save, to_ldm
from sdkd_ext.variants import SD15

CROSS = ["CrossAttnDownBlock2D"] * 3
# The UNet configs as published (nota-ai/bk-sdm-*: BK-SDM's src/unet_config/bk_*/config.json; Segmind's from its
# distill-sd `prepare_unet`, which keeps the middle block for sd_small and drops it and the innermost level for
# sd_tiny; the tiny-sd config as mirrored on the hub), widths divided by 10. `-2m` versions share these configs.
PUBLISHED = {
    "nota-bk-sdm-base": dict(layers_per_block=1, mid_block_type="UNetMidBlock2DCrossAttn"),
    "nota-bk-sdm-small": dict(layers_per_block=1, mid_block_type=None),
    "nota-bk-sdm-tiny": dict(layers_per_block=1, mid_block_type=None, block_out_channels=[320, 640, 1280],
                             down_block_types=CROSS, up_block_types=["CrossAttnUpBlock2D"] * 3),
    "segmind-small-sd": dict(layers_per_block=1, mid_block_type="UNetMidBlock2DCrossAttn"),
    "segmind-tiny-sd": dict(layers_per_block=1, mid_block_type=None, block_out_channels=[320, 640, 1280],
                            down_block_types=CROSS, up_block_types=["CrossAttnUpBlock2D"] * 3),
}
VARIANT_OF = {"nota-bk-sdm-base": "base", "nota-bk-sdm-small": "small", "nota-bk-sdm-tiny": "tiny",
              "segmind-small-sd": "base", "segmind-tiny-sd": "tiny"}


def unet_config(name: str) -> dict:
    cfg = {**sd15("unet"), **PUBLISHED[name], "cross_attention_dim": 32}
    cfg["block_out_channels"] = [w // 10 for w in cfg["block_out_channels"]]
    return cfg


def make_folder(name: str, root: Path, seed: int = 0) -> Path:
    """A diffusers pipeline folder shaped like the published one (tiny widths, random weights)."""
    from diffusers import UNet2DConditionModel

    folder = root / name
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_config(name))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    unet.save_pretrained(folder / "unet")
    make_vae(VaeShape(ch=32), seed + 1).save_pretrained(folder / "vae")
    make_text_encoder(32, 2, seed + 2).save_pretrained(folder / "text_encoder")
    return folder


def script_file(folder: Path, out: Path) -> Path:
    """The folder as diffusers' convert_diffusers_to_original_stable_diffusion.py writes it: every UNet module at
    its SD1.5 slot, the ones SD1.5 has no slot for left under their diffusers names."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").state_dict()
    slots = unet_map(SD15)
    tensors = {UNET + (slots.to_ldm(k) or k): v.contiguous() for k, v in unet.items()}
    tensors.update(to_ldm(vae=AutoencoderKL.from_pretrained(folder / "vae"),
                          text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder")))
    return save(tensors, out)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def ldm_unet_from_yaml(yaml_path: Path, mid_block: bool) -> torch.nn.Module:
    """A1111's UNet class (stable-diffusion-sdkit), built from the yaml written beside the file."""
    from omegaconf import OmegaConf
    from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel

    params = OmegaConf.to_container(OmegaConf.load(yaml_path).model.params.unet_config.params)
    model = UNetModel(**params)
    if not mid_block:  # ldm always builds one; sdkd's host fix empties it for students without
        model.middle_block = TimestepEmbedSequential()
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("public")
    return {name: make_folder(name, root, i) for i, name in enumerate(PUBLISHED)}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_folder_converts_to_a_file_ldm_loads_exactly(name, folders, tmp_path):
    """The recognised variant comes from the keys; every UNet tensor lands where A1111's UNet expects it."""
    r = convert(folders[name], tmp_path / name, dtype="fp32")
    assert r.variant == VARIANT_OF[name]
    tensors, meta = read(r.checkpoint)
    assert meta["sdkd_variant"] == VARIANT_OF[name] and meta["sdkd_source"] == name and len(meta["sdkd_source_sha256"]) == 64
    unet = {k[len(UNET):]: v for k, v in tensors.items() if k.startswith(UNET)}
    model = ldm_unet_from_yaml(r.yaml, mid_block=PUBLISHED[name]["mid_block_type"] is not None)
    result = model.load_state_dict(unet, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # and it computes what the diffusers UNet of the folder computes
    from diffusers import UNet2DConditionModel

    ref = UNet2DConditionModel.from_pretrained(folders[name] / "unet").eval()
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 5, 32)
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample
        got = model.eval()(x, t, context=ctx)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert any(k.startswith("first_stage_model.") for k in tensors) and any(k.startswith("cond_stage_model.") for k in tensors)


@pytest.mark.parametrize("name", ["nota-bk-sdm-small", "segmind-tiny-sd"])
def test_file_from_diffusers_conversion_script_reads_like_the_folder(name, folders, tmp_path):
    """Teacher-slot numbering (with gaps) and leftover diffusers names are read back into the student's own layout."""
    single = script_file(folders[name], tmp_path / f"{name}-script.safetensors")
    _, info = open_student(single)
    assert info.kind == "student" and info.variant == VARIANT_OF[name]
    from_folder, _ = read(convert(folders[name], tmp_path / "a", dtype="fp32").checkpoint)
    from_file, _ = read(convert(single, tmp_path / "b", dtype="fp32").checkpoint)
    assert from_folder.keys() == from_file.keys()
    assert all(torch.equal(from_folder[k], from_file[k]) for k in from_folder)


def test_folder_whose_config_still_says_sd15_is_read_from_its_keys(folders, tmp_path):
    """A folder saved after deleting blocks in place (Segmind's method) without fixing its config still converts."""
    import shutil

    folder = tmp_path / "stale-config"
    shutil.copytree(folders["segmind-small-sd"], folder)
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg.update(layers_per_block=2)
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    assert convert(folder, tmp_path / "out", dtype="fp32").variant == "base"


def test_cli_convert_and_refusals(folders, tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["convert", str(folders["nota-bk-sdm-small"]), "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".yaml").is_file()
    assert main(["convert", str(folders["nota-bk-sdm-small"]), "--out", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "unet-only").mkdir()
    import shutil

    shutil.copytree(folders["nota-bk-sdm-tiny"] / "unet", tmp_path / "unet-only" / "unet")
    assert main(["convert", str(tmp_path / "unet-only"), "--out", str(tmp_path / "x")]) == 2
    assert "no VAE or text encoder" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
