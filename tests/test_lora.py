"""LoRA files: every format reads to the same layers, exports land where A1111 looks, and applying matches peft."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdkd_ext.checkpoint import open_model
from sdkd_ext.convert import UNET
from sdkd_ext.detect import describe
from sdkd_ext.lora.apply import apply_lora, parse_spec, pipeline_module
from sdkd_ext.lora.file import ALPHA, DOWN, MID, UP, Lora, LoraModule, kohya_metadata, read_lora, write_kohya
from sdkd_ext.lora.names import Layout, flat, layout_of_source
from sdkd_ext.lora.peft import TE_TARGETS, UNET_TARGETS, add_lora, lora_from_peft
from sdkd_ext.pipeline import load_pipeline
from test_convert import ldm_unet
from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)



def layout_of(path) -> Layout:
    """The LoRA layout of a model file."""
    src = open_model(path)
    return layout_of_source(src, describe(src).topology)


def random_lora(layout: Layout, rank: int = 4, alpha: float = 8.0, seed: int = 0, unet_only: bool = False,
                select=lambda module_id, shape: len(shape) >= 2 and "embedding" not in module_id) -> Lora:
    """A LoRA with random down/up on every selected layer (LoCon shapes on convolutions)."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for module_id, shape in layout.shapes.items():
        if not select(module_id, shape) or (unet_only and not module_id.startswith(UNET)):
            continue
        kernel = shape[2:]
        down = torch.randn(rank, shape[1], *kernel, generator=g) * 0.1
        up = torch.randn(shape[0], rank, *(1,) * len(kernel), generator=g) * 0.1
        modules[module_id] = LoraModule({DOWN: down, UP: up}, alpha)
    return Lora(modules)


def attention_projections(module_id, shape) -> bool:
    """The layers sdkd trains: UNet attention projections and text-encoder self-attention projections."""
    return module_id.endswith(tuple("." + t for t in UNET_TARGETS + TE_TARGETS))


def a1111_lookup(ldm: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """What A1111's Lora extension finds for `lora_unet_<LDM path>`: module names with dots as underscores."""
    return {("diffusion_model." + n).replace(".", "_"): m for n, m in ldm.named_modules()}


def check_against_ldm(path, topology) -> int:
    """Assert every UNet key of a kohya file names an ldm module with the update's shape; returns how many."""
    lookup = a1111_lookup(ldm_unet(topology))
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        stems = sorted({k.split(".")[0] for k in keys if k.startswith("lora_unet_")})
        for stem in stems:
            module = lookup.get(stem.replace("lora_unet", "diffusion_model"))
            assert module is not None, stem
            down, up = f.get_tensor(f"{stem}.{DOWN}"), f.get_tensor(f"{stem}.{UP}")
            w = module.weight
            assert (up.shape[0], down.flatten(1).shape[1]) == (w.shape[0], w[0].numel()), stem
            assert tuple(down.shape[2:]) in ((), tuple(w.shape[2:])), stem
    return len(stems)


@pytest.fixture(scope="module")
def teacher_layout(teacher_file) -> Layout:
    return layout_of(teacher_file)


@pytest.mark.parametrize("variant", ["teacher", "base", "small", "tiny"])
def test_exported_unet_keys_are_ldm_modules_a1111_finds(variant, teacher_file, students, tmp_path):
    model = teacher_file if variant == "teacher" else students[variant].checkpoint
    layout = layout_of(model)
    lora = random_lora(layout)
    out = write_kohya(lora, tmp_path / "l.safetensors", kohya_metadata(lora, variant))
    n_unet = sum(m.startswith(UNET) for m in lora.modules)
    assert check_against_ldm(out, layout.topology) == n_unet > 100
    te = load_pipeline(model).pipe.text_encoder  # A1111 holds it as FrozenCLIPEmbedder.transformer (transformers 4.x)
    root = "" if hasattr(te, "text_model") else "text_model."
    a1111_te = {flat(f"transformer.{root}{n}"): m for n, m in te.named_modules()}
    with safe_open(str(out), "pt") as f:
        te_stems = {k.split(".")[0] for k in f.keys() if k.startswith("lora_te_")}
        for stem in te_stems:  # A1111: lora_te_text_model_encoder_layers_N_* -> transformer_text_model_encoder_layers_N_*
            module = a1111_te["transformer_" + stem[len("lora_te_"):]]
            assert tuple(module.weight.shape) == (f.get_tensor(f"{stem}.{UP}").shape[0], f.get_tensor(f"{stem}.{DOWN}").shape[1])
    assert len(te_stems) == len(lora.modules) - n_unet > 0


def test_alpha_is_the_real_alpha_and_round_trips(teacher_layout, tmp_path):
    lora = random_lora(teacher_layout, rank=4, alpha=12.0, select=attention_projections)
    out = write_kohya(lora, tmp_path / "l.safetensors", kohya_metadata(lora, "teacher"), dtype=torch.float32)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        alphas = {f.get_tensor(k).item() for k in f.keys() if k.endswith("." + ALPHA)}
    assert alphas == {12.0}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_base_model_version"]) == ("4", "12", "sd_v1")
    back = read_lora(out, teacher_layout)
    assert set(back.modules) == set(lora.modules)
    m_id = next(iter(lora.modules))
    mod, got = lora.modules[m_id], back.modules[m_id]
    assert got.alpha == 12.0 and got.rank == 4
    shape = teacher_layout.shapes[m_id]
    want = (mod.tensors[UP] @ mod.tensors[DOWN]).reshape(shape) * 3.0
    torch.testing.assert_close(got.delta(shape), want)


def write_formats(lora: Lora, layout: Layout, folder) -> dict:
    """The same LoRA as kohya (LDM and diffusers names), peft (with adapter_config.json) and diffusers files."""
    rank, alpha = lora.network_dim()
    files = {}
    files["kohya_ldm"] = write_kohya(lora, folder / "kohya_ldm.safetensors", {})
    kohya_dif, peft, dif = {}, {}, {}
    for m, mod in lora.modules.items():
        name = layout.diffusers_name(m)
        comp = "unet" if m.startswith(UNET) else "text_encoder"
        stem = ("lora_unet_" if comp == "unet" else "lora_te_") + flat(name)
        kohya_dif.update({f"{stem}.{DOWN}": mod.tensors[DOWN], f"{stem}.{UP}": mod.tensors[UP],
                          f"{stem}.alpha": torch.tensor(mod.alpha)})
        peft.update({f"{comp}.{name}.lora_A.weight": mod.tensors[DOWN], f"{comp}.{name}.lora_B.weight": mod.tensors[UP]})
        dif.update({f"{comp}.{name}.lora.down.weight": mod.tensors[DOWN], f"{comp}.{name}.lora.up.weight": mod.tensors[UP]})
    save_file(kohya_dif, str(folder / "kohya_diffusers.safetensors"))
    files["kohya_diffusers"] = folder / "kohya_diffusers.safetensors"
    (folder / "peft").mkdir()
    save_file(peft, str(folder / "peft" / "adapter_model.safetensors"))
    (folder / "peft" / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha, "peft_type": "LORA"}))
    files["peft_folder"] = folder / "peft"
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": rank, "unet.lora_alpha": alpha,
                                                 "text_encoder.r": rank, "text_encoder.lora_alpha": alpha})}
    save_file(dif, str(folder / "diffusers.safetensors"), metadata=meta)
    files["diffusers"] = folder / "diffusers.safetensors"
    return files


def test_every_format_reads_to_the_same_layers(teacher_layout, tmp_path):
    lora = random_lora(teacher_layout, rank=4, alpha=2.0)  # LoCon convolutions included
    for fmt, path in write_formats(lora, teacher_layout, tmp_path).items():
        got = read_lora(path, teacher_layout)
        assert set(got.modules) == set(lora.modules), fmt
        for m, mod in lora.modules.items():
            assert got.modules[m].alpha == 2.0, (fmt, m)
            for part in (DOWN, UP):
                assert torch.equal(got.modules[m].tensors[part], mod.tensors[part]), (fmt, m)


def test_legacy_attention_processor_keys_and_alpha_pattern(teacher_layout, tmp_path):
    lora = random_lora(teacher_layout, rank=2, alpha=2.0, unet_only=True, select=attention_projections)
    tensors = {}
    for m, mod in lora.modules.items():
        head, _, proj = teacher_layout.diffusers_name(m).rpartition(".")
        if proj == "0":
            head, _, proj = head.rpartition(".")
        for part, side in ((DOWN, "down"), (UP, "up")):
            tensors[f"unet.{head}.processor.{proj}_lora.{side}.weight"] = mod.tensors[part]
    save_file(tensors, str(tmp_path / "legacy.safetensors"))
    got = read_lora(tmp_path / "legacy.safetensors", teacher_layout, alpha_equals_rank=True)
    assert set(got.modules) == set(lora.modules) and {m.alpha for m in got.modules.values()} == {2.0}

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "alpha_pattern": {"attn2.to_k": 6}}))
    got = read_lora(tmp_path / "legacy.safetensors", teacher_layout)
    alphas = {m.rsplit(".", 2)[-2] + "." + m.rsplit(".", 1)[-1]: mod.alpha for m, mod in got.modules.items()}
    assert alphas["attn2.to_k"] == 6 and alphas["attn1.to_k"] == 4 and alphas["attn2.to_q"] == 4


def test_locon_with_tucker_core_applies_its_product(teacher_layout, teacher_file, tmp_path):
    conv = next(m for m, s in teacher_layout.shapes.items() if m.endswith("in_layers.2") and len(s) == 4)
    out_ch, in_ch, kh, kw = teacher_layout.shapes[conv]
    g = torch.Generator().manual_seed(1)
    parts = {DOWN: torch.randn(3, in_ch, 1, 1, generator=g), MID: torch.randn(3, 3, kh, kw, generator=g),
             UP: torch.randn(out_ch, 3, 1, 1, generator=g)}
    pipe = load_pipeline(teacher_file).pipe
    layout = teacher_layout
    before = pipeline_module(pipe, layout, conv).weight.detach().clone()
    assert apply_lora(pipe, Lora({conv: LoraModule(parts, 1.5)}), weight=0.5) == 1
    # the full kernel is up . mid . down, composed as convolutions
    want = torch.einsum("oa,abhw,bi->oihw", parts[UP][:, :, 0, 0], parts[MID], parts[DOWN][:, :, 0, 0]) * 0.5 * 1.5 / 3
    torch.testing.assert_close(pipeline_module(pipe, layout, conv).weight.detach() - before, want)


@pytest.mark.parametrize("variant", ["teacher", "small"])
def test_exported_file_applied_by_our_loader_reproduces_peft(variant, teacher_file, students, tmp_path):
    model = teacher_file if variant == "teacher" else students[variant].checkpoint
    layout = layout_of(model)
    pipe = load_pipeline(model).pipe
    torch.manual_seed(0)
    add_lora(pipe.unet, rank=4, alpha=8, targets=UNET_TARGETS)
    add_lora(pipe.text_encoder, rank=2, alpha=3, targets=TE_TARGETS)
    with torch.no_grad():
        for n, p in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
            if "lora_B" in n:
                p.normal_(0, 0.2)  # peft starts B at zero; make the adapter do something
    x, ids = torch.randn(2, 4, 8, 8), torch.randint(0, 49407, (2, 77))
    with torch.no_grad():
        plain = load_pipeline(model).pipe
        base_out = plain.unet(x, 10, plain.text_encoder(ids)[0]).sample
        want_ctx = pipe.text_encoder(ids)[0]
        want = pipe.unet(x, 10, want_ctx).sample
    lora = lora_from_peft(layout, pipe.unet, pipe.text_encoder)
    out = write_kohya(lora, tmp_path / "l.safetensors", kohya_metadata(lora, variant), dtype=torch.float32)
    assert apply_lora(plain, out, 1.0) == len(lora.modules) == 2 * 4 * sum(
        m.endswith("attn1.to_q") for m in layout.shapes) + 2 * 4
    with torch.no_grad():
        got_ctx = plain.text_encoder(ids)[0]
        got = plain.unet(x, 10, got_ctx).sample
    assert (want - base_out).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(got_ctx, want_ctx, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_lora_spec_parsing():
    assert parse_spec("a/b.safetensors:0.8") == (parse_spec("a/b.safetensors")[0], 0.8)
    assert parse_spec("a/b.safetensors")[1] == 1.0
    assert str(parse_spec(r"C:\loras\x.safetensors")[0]) == r"C:\loras\x.safetensors"
    assert parse_spec(r"C:\loras\x.safetensors:-0.5")[1] == -0.5
