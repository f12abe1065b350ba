"""Portable students (`--portable`): an identity middle block that hosts without sdkd load whole, and sdkd ignores.

The hosts' own UNet code runs here: ldm's UNetModel as A1111 loads a file (strict=False), Forge's huggingface_guess
detection plus its backend UNet read from the Forge archive, and ComfyUI's model_detection and openaimodel.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from host_code import host_module
from sdkd_ext.checkpoint import open_model
from sdkd_ext.convert import UNET
from sdkd_ext.cli import main
from sdkd_ext.data import PromptData
from sdkd_ext.detect import describe
from sdkd_ext.distill import distill
from sdkd_ext.errors import SdkdError
from sdkd_ext.hosts import a1111
from sdkd_ext.pipeline import build_unet
from sdkd_ext.portable import IDENTITY, MIDDLE, identity_params
from sdkd_ext.prune import prune
from sdkd_ext.variants import SD15, get_variant
from test_comfy_nodes import comfy, loaded_teacher  # noqa: F401 (fixture)
from test_host_items import loaded
from test_hosts import ldm_as_a1111_loads_it


@pytest.fixture(scope="module")
def portable(teacher_file, tmp_path_factory) -> dict:
    """The teacher pruned (fp32) to small and tiny with an identity middle block."""
    out = tmp_path_factory.mktemp("portable")
    return {v: prune(teacher_file, v, out / f"portable-{v}", dtype="fp32", portable=True) for v in ("small", "tiny")}


def call(unet, ldm: bool = True) -> torch.Tensor:
    """One UNet call on a fixed latent, timestep and context (an LDM-style UNet, or diffusers')."""
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, t, ctx) if ldm else unet(x, t, encoder_hidden_states=ctx).sample


def test_identity_block_costs_one_resblock_at_sd15_size():
    assert 31_000_000 < identity_params(get_variant("small").student(SD15)) < 31_200_000


@pytest.mark.parametrize("variant", ["small", "tiny"])
def test_file_holds_the_block_and_sdkd_reads_the_student(portable, students, variant):
    sd = load_file(str(portable[variant].checkpoint))
    middle = [k for k in sd if k.startswith(MIDDLE)]
    assert middle and all(k.startswith(IDENTITY) for k in middle)
    assert not sd[IDENTITY + "out_layers.3.weight"].any()
    info, plain = describe(open_model(portable[variant].checkpoint)), describe(open_model(students[variant].checkpoint))
    assert (info.kind, info.variant, info.portable, plain.portable) == ("student", variant, True, False)
    assert info.topology == plain.topology and info.unet_params == plain.unet_params
    got = build_unet(open_model(portable[variant].checkpoint), info).state_dict()
    want = build_unet(open_model(students[variant].checkpoint), plain).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_nonzero_last_conv_is_not_taken_for_the_identity(portable, tmp_path):
    from safetensors.torch import save_file

    sd = load_file(str(portable["small"].checkpoint))
    sd[IDENTITY + "out_layers.3.bias"][0] = 1.0
    save_file(sd, str(tmp_path / "edited.safetensors"))
    info = describe(open_model(tmp_path / "edited.safetensors"))
    assert not info.portable and info.variant != "small"  # a real middle ResBlock: not a small student any more


def test_inspect_says_portable(portable):
    out = subprocess.run([sys.executable, "-m", "sdkd_ext", "inspect", str(portable["tiny"].checkpoint)],
                         capture_output=True, text=True, check=True).stdout
    assert "student (tiny)" in out and "portable: yes" in out


def test_base_refuses_portable(teacher_file, tmp_path):
    with pytest.raises(SdkdError, match="--portable is for students without a middle block"):
        prune(teacher_file, "base", tmp_path / "b", portable=True)
    with pytest.raises(SdkdError, match="--portable is for students without a middle block"):
        distill(teacher_file, "base", tmp_path / "d", PromptData(("a red box",)), portable=True)
    assert not list(tmp_path.iterdir())


DISTIL = ["--self", "2", "--sample-steps", "2", "--steps", "2", "--resolution", "64", "--device", "cpu",
          "--no-preview", "--dtype", "fp32"]


def test_distill_portable_writes_the_block_and_the_trained_student(teacher_file, tmp_path):
    """`sdkd distill --portable`: the exported file carries the identity block; sdkd reads it as the trained student
    (the same UNet as the plain export of the same run)."""
    for name, extra in (("plain", []), ("port", ["--portable"])):
        assert main(["distill", str(teacher_file), "--variant", "tiny", "--out", str(tmp_path / name), *DISTIL, *extra]) == 0
    sd = load_file(str(tmp_path / "port.safetensors"))
    assert {k for k in sd if k.startswith(MIDDLE)} == {k for k in sd if k.startswith(IDENTITY)} != set()
    info = describe(open_model(tmp_path / "port.safetensors"))
    assert (info.variant, info.portable) == ("tiny", True)
    got, want = (build_unet(open_model(tmp_path / f"{n}.safetensors"), info).state_dict() for n in ("port", "plain"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


@pytest.mark.parametrize("variant", ["small", "tiny"])
def test_ldm_as_a1111_loads_it_without_the_extension_equals_the_student(portable, variant):
    r = portable[variant]
    unet = ldm_as_a1111_loads_it(r)  # the yaml's full middle block, the file's weights with strict=False
    sd = load_file(str(r.checkpoint))
    missing = set(unet.state_dict()) - {k[len(UNET):] for k in sd if k.startswith(UNET)}
    assert missing and all(k.startswith(("middle_block.1.", "middle_block.2.")) for k in missing)
    src = open_model(r.checkpoint)
    want = call(build_unet(src, describe(src)), ldm=False)
    assert (call(unet) - want).abs().max() < 1e-5


@pytest.mark.parametrize("host", ["a1111", "forge"])
def test_hook_removes_the_identity_block(portable, host):
    sd_model, unet = loaded(portable["small"], host)
    a1111.fix_loaded_model(sd_model, sd_model.sd_checkpoint_info.filename)
    assert len(unet.middle_block) == 0


def forge_unet(monkeypatch, state: dict[str, torch.Tensor], num_heads: int) -> torch.nn.Module:
    """Forge's own UNet for `state`: huggingface_guess's detected config, backend/nn/unet.py's model (its attention
    backend, which needs Forge's memory manager, stood in by torch's SDPA)."""
    guess = types.ModuleType("huggingface_guess")
    guess.utils, guess.model_list = types.ModuleType("utils"), types.ModuleType("model_list")
    monkeypatch.setitem(sys.modules, "huggingface_guess", guess)
    detection = host_module("forge", "repositories/huggingface_guess/huggingface_guess/detection.py",
                            "huggingface_guess.detection", monkeypatch)

    def attention_function(q, k, v, heads, mask=None):
        b, _, inner = q.shape
        q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, -1, inner)

    backend = types.ModuleType("backend")
    backend.attention = types.ModuleType("backend.attention")
    backend.attention.attention_function = attention_function
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.attention", backend.attention)
    forge = host_module("forge", "backend/nn/unet.py", "backend.nn.unet", monkeypatch)
    config = detection.detect_unet_config(state, UNET)
    assert config["transformer_depth_middle"] == -1  # a ResBlock-only middle block
    model_type = forge.IntegratedUNet2DConditionModel
    accepted = inspect.signature(model_type.__init__).parameters
    config = {k: v for k, v in config.items() if k in accepted}
    unet = model_type(**config, num_heads=num_heads, num_head_channels=-1).eval()  # SD1.5's unet_extra_config
    result = unet.load_state_dict({k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    return unet


@pytest.mark.parametrize("variant", ["small", "tiny"])
def test_forge_without_the_extension_loads_every_weight_and_equals_the_student(portable, monkeypatch, variant):
    r = portable[variant]
    src = open_model(r.checkpoint)
    info = describe(src)
    unet = forge_unet(monkeypatch, load_file(str(r.checkpoint)), info.topology.num_heads)
    want = call(build_unet(src, info), ldm=False)
    assert (call(unet) - want).abs().max() < 1e-5


@pytest.mark.parametrize("variant", ["small", "tiny"])
def test_comfyui_loads_every_weight_and_equals_the_student(portable, comfy, variant):
    r = portable[variant]
    unet = loaded_teacher(comfy, r.checkpoint).model.diffusion_model  # comfy.model_detection's config, SD15's class
    file = {k[len(UNET):]: w for k, w in load_file(str(r.checkpoint)).items() if k.startswith(UNET)}
    mine = unet.state_dict()
    assert set(mine) == set(file) and all(torch.equal(mine[k], file[k]) for k in file)
    src = open_model(r.checkpoint)
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500.0]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        got = unet(x, t, context=ctx)
    assert (got - call(build_unet(src, describe(src)), ldm=False)).abs().max() < 1e-5


def test_lora_port_targets_a_portable_student_as_the_plain_one(portable, students):
    from sdkd_ext.lora.port import target_layouts

    got, want = target_layouts(str(portable["small"].checkpoint)), target_layouts(str(students["small"].checkpoint))
    assert got[0] == want[0] == "small" and got[2].shapes == want[2].shapes and got[1].shapes == want[1].shapes
