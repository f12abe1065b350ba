"""Every command on SD1.5 files as people have them (tests/community.py), and the first-contact bugs of issue 10."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)
from community import EMA_SCALE, LAYOUTS, POSITION_IDS, ema_name, schedule_buffers
from sdkd_ext.checkpoint import open_model
from sdkd_ext.cli import main
from sdkd_ext.convert import EMA, TEXT, UNET, VAE
from sdkd_ext.pipeline import build_text_encoder, load_pipeline, tokenizer
from sdkd_ext.tiny import save, tiny_checkpoint
from sdkd_ext.variants import Topology


def run(capsys, *argv):
    """Run the CLI; (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tensors(path):
    """All tensors of a .safetensors file."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
def test_inspect_names_every_layout_and_its_ema_by_one_rule(layout, community, capsys, tmp_path):
    """inspect calls each a teacher; "EMA weights" and `prune --ema` agree (LitEma's two counters are no EMA)."""
    code, out, err = run(capsys, "inspect", community[layout.name], "--json")
    info = json.loads(out)
    assert code == 0, err
    assert info["kind"] == "sd1" and info["has_text_encoder"] and info["has_vae"] == layout.vae
    assert info["dtype"] == str(layout.dtype).removeprefix("torch.")
    assert info["has_ema"] == (layout.ema == "full")
    code, _, err = run(capsys, "prune", community[layout.name], "--variant", "tiny", "--ema", "--out", tmp_path / "s")
    assert code == (0 if info["has_ema"] else 2), err
    if layout.ema == "counters":
        assert "no EMA weights (only the EMA counters" in err and "drop --ema" in err
        assert not any(tmp_path.iterdir())


def test_prune_ema_takes_the_ema_copy_and_student_carries_weights_only(community, teacher_sd, tmp_path):
    """--ema reads LitEma's copy (keys named as ldm's LitEma names them); the student keeps the schedule buffers
    ldm saves, and no EMA part or CLIP position ids (every host builds those itself)."""
    from sdkd_ext.prune import PruneJob, prune
    from sdkd_ext.variants import get_variant

    got = tensors(prune(PruneJob(community["v1-5-pruned"], get_variant("small"), tmp_path / "ema", dtype="fp32", ema=True)).checkpoint)
    plain = tensors(prune(PruneJob(community["v1-5-pruned"], get_variant("small"), tmp_path / "plain", dtype="fp32")).checkpoint)
    k = UNET + "input_blocks.1.0.in_layers.0.weight"
    assert torch.equal(plain[k], teacher_sd[k]) and torch.equal(got[k], teacher_sd[k] * EMA_SCALE)
    for student in (got, plain):
        assert not any(k.startswith(EMA) for k in student) and POSITION_IDS not in student
        assert {k for k in student if k.startswith((TEXT, VAE))} == {k for k in teacher_sd if k.startswith((TEXT, VAE))}
        for name, value in schedule_buffers().items():
            assert torch.equal(student[name], value), name


def test_prune_ema_refuses_an_incomplete_ema_copy_and_writes_nothing(community, tmp_path, capsys):
    """A UNet weight without its EMA twin makes --ema refuse (exit 2, the count and a key named) instead of mixing
    regular and EMA weights; without --ema the same file prunes."""
    from safetensors.torch import save_file

    sd = torch.load(community["v1-5-pruned"], weights_only=True)["state_dict"]  # the .ckpt layout: a state_dict wrapper
    dropped = next(k for k in sd if k.startswith(EMA + "diffusion_model"))
    damaged = tmp_path / "half-ema.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if k != dropped}, str(damaged))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, "prune", damaged, "--variant", "tiny", "--ema", "--out", out / "s")
    assert code == 2 and "EMA copy is incomplete: 1 UNet weights have none" in err and "drop --ema" in err, err
    assert not any(out.iterdir())
    code, _, err = run(capsys, "prune", damaged, "--variant", "tiny", "--out", out / "s")
    assert code == 0, err


def test_litema_names_the_ema_copy_as_sdkd_reads_it():
    """The EMA key names the fixtures use (and `--ema` reads) are those ldm's own LitEma gives a LatentDiffusion's UNet."""
    from ldm.modules.ema import LitEma

    from sdkd_ext.convert import ema_twin

    class Wrapper(torch.nn.Module):  # ldm's DiffusionWrapper holds the UNet as `diffusion_model`
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8))

    wrapper = Wrapper()
    ema = LitEma(wrapper)
    names = {"model_ema." + n for n, _ in ema.named_buffers()}
    unet_keys = [n.removeprefix("diffusion_model.") for n, _ in wrapper.named_parameters()]
    assert names == {ema_twin(k) for k in unet_keys} | {EMA + "decay", EMA + "num_updates"}
    assert names == {ema_name(UNET + k) for k in unet_keys} | {EMA + "decay", EMA + "num_updates"}


def encode(text_encoder, prompt="a red circle on a blue background"):
    """The text encoder's last hidden state for one prompt."""
    ids = tokenizer()([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()


@pytest.mark.parametrize("name", ["v1-5-pruned", "merge-fp32-ema", "merge-fp16", "tiny-old"])
def test_text_encoder_of_files_with_position_ids(name, community, community_students, teacher_file):
    """Files carrying CLIP's position ids (int64, or float and drifted) build the text encoder on every transformers,
    with the positions the model was trained with: the output equals that of the same weights without them."""
    text_encoder = build_text_encoder(open_model({**community, **community_students}[name]))
    same_weights = build_text_encoder(open_model(teacher_file)).to(next(text_encoder.parameters()).dtype)
    assert torch.equal(encode(text_encoder), encode(same_weights))


def test_a1111s_text_encoder_needs_no_position_ids_in_the_file(community_students):
    """A1111 and ldm load the text encoder with strict=False into a CLIPTextModel they built: where transformers keeps
    the position ids as a saved buffer (4.30), a student without them still gets 0..76."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdkd_ext.compat import clip_prefix
    from sdkd_ext.configs import text_encoder_config

    sd = {k[len(TEXT):]: v for k, v in tensors(community_students["tiny"]).items() if k.startswith(TEXT)}
    model = CLIPTextModel(CLIPTextConfig(**text_encoder_config({k: tuple(v.shape) for k, v in sd.items()})))
    prefix = clip_prefix(model)
    result = model.load_state_dict({prefix + k[len("text_model."):]: v for k, v in sd.items()}, strict=False)
    assert not result.unexpected_keys and all(k.endswith("position_ids") for k in result.missing_keys)
    ids = dict(model.named_buffers()).get(prefix + "embeddings.position_ids")
    assert ids is not None and torch.equal(ids, torch.arange(77)[None])


def _partial_files(teacher_sd, tmp):
    """(file, what the one-line reason names) for files whose keys are partial in every part detect reads."""
    def without(*prefixes, sd=teacher_sd):
        return {k: v for k, v in sd.items() if not k.startswith(prefixes)}

    sd2 = {k: (v.new_zeros(v.shape[0], 1024) if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) else v)
           for k, v in teacher_sd.items()}
    cases = {
        "no-out": (without(UNET + "out."), "'model.diffusion_model.out.2.weight'"),
        "no-resnet-conv": (without(UNET + "input_blocks.4.0.out_layers.3."), "input_blocks.4.0.out_layers.3.weight"),
        "sd2-partial": (without(UNET + "output_blocks.", sd=sd2), "SD2.x checkpoint"),
        "sd2-no-unet-tail": (without(UNET + "out.", UNET + "middle_block.", sd=sd2), "SD2.x checkpoint"),
        "vae-partial": (without(VAE + "encoder.down.1.block.0.conv2."), "the VAE lacks"),
        "te-partial": (without(TEXT + "text_model.encoder.layers.0.mlp.fc1."), "the text encoder lacks"),
    }
    return [(save(sd, tmp / f"{name}.safetensors"), reason) for name, (sd, reason) in cases.items()]


def test_partial_files_get_one_line_and_exit_2(teacher_sd, tmp_path, capsys):
    """inspect, prune and generate on partial files: one line on stderr naming the problem, exit 2, nothing written."""
    for path, reason in _partial_files(teacher_sd, tmp_path):
        out = tmp_path / "out"
        for argv in (["inspect", path], ["prune", path, "--variant", "tiny", "--out", out / "s"],
                     ["generate", path, "--prompt", "x", "--steps", "1", "--size", "64", "--out", out / "x.png"]):
            code, _, err = run(capsys, *argv)
            assert code == 2 and reason in err and err.count("\n") == 1, (path.name, argv[0], err)
            assert not out.exists(), path.name


def test_other_width_ratios_are_named_not_dumped(tmp_path, capsys):
    """SD1.5's blocks with other channel multipliers: the message says what was found and what sdkd supports."""
    odd = Topology(model_channels=32, context_dim=32, channel_mult=(1, 2, 2, 4))
    path = save(tiny_checkpoint(topology=odd, vae=False, text_encoder=False), tmp_path / "odd.safetensors")
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and "Topology(" not in err and err.count("\n") == 1, err
    assert "channel multipliers 1, 2, 2, 4 (SD1.x has 1, 2, 4, 4)" in err
    assert "sdkd prunes SD1.x UNets" in err and "base, small and tiny students" in err


# ---- every command on community files ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """Two captioned 64 px images."""
    folder = tmp_path_factory.mktemp("captioned")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a random picture number {i}")
    return folder


def test_generate_on_community_files_and_students(community, community_students, tmp_path, capsys):
    """generate on fp16/fp32, .ckpt with and without wrapper, and an old student; a file without VAE says so."""
    args = ["--prompt", "a red circle", "--steps", "2", "--size", "64"]
    for name, path in [("merge-fp16", community["merge-fp16"]), ("bare-emaonly", community["bare-emaonly"]),
                       ("v1-5-pruned", community["v1-5-pruned"]), ("tiny-old", community_students["tiny-old"])]:
        png = tmp_path / f"{name}.png"
        code, _, err = run(capsys, "generate", path, *args, "--out", png)
        assert code == 0, (name, err)
        image = np.asarray(Image.open(png))
        assert image.shape == (64, 64, 3) and image.std() > 0, name  # a NaN image saves as one flat colour
    code, _, err = run(capsys, "generate", community["v1-5-pruned"], *args, "--ema", "--out", tmp_path / "ema.png")
    assert code == 0, err
    code, _, err = run(capsys, "generate", community["pruned-novae-fp16"], *args, "--out", tmp_path / "novae.png")
    assert code == 2 and "no VAE weights" in err and not (tmp_path / "novae.png").exists()


def test_old_and_new_students_draw_the_same(community_students):
    """The position ids an earlier prune copied change nothing: old and new students give the same image."""
    images = [np.asarray(load_pipeline(community_students[n]).pipe("a red circle", num_inference_steps=2, height=64,
                                                                    width=64, generator=torch.Generator().manual_seed(0),
                                                                    output_type="np").images[0])
              for n in ("tiny", "tiny-old")]
    assert np.array_equal(images[0], images[1])


def test_distill_plan_bench_compare_on_community_files(community, community_students, tmp_path, capsys):
    teacher, student = community["v1-5-pruned-emaonly-fp16"], community_students["tiny-old"]
    code, out, err = run(capsys, "distill", community["merge-fp32-ema"], "--variant", "tiny", "--self", "1",
                         "--sample-steps", "2", "--steps", "1", "--resolution", "64", "--device", "cpu",
                         "--no-preview", "--out", tmp_path / "kd")
    assert code == 0 and (tmp_path / "kd.safetensors").exists(), err
    code, out, err = run(capsys, "plan", "--teacher", community["v1-5-pruned"], "--variant", "small",
                         "--resolution", "64", "--vram", "8")
    assert code == 0 and "GiB" in out, err
    code, _, err = run(capsys, "bench", teacher, student, "--size", "64", "--steps", "1", "--repeats", "1",
                       "--warmup", "0", "--t2i-repeats", "1", "--sequential", "--out", tmp_path / "bench")
    assert code == 0 and (tmp_path / "bench" / "bench.json").exists(), err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    code, _, err = run(capsys, "compare", teacher, student, "--prompts", prompts, "--size", "64", "--steps", "1",
                       "--out", tmp_path / "compare")
    assert code == 0 and json.loads((tmp_path / "compare" / "compare.json").read_text()), err


def test_lora_and_lora_port_on_community_files(community, community_students, captioned, tmp_path, capsys):
    """A LoRA trained on a community .ckpt (text encoder too), ported onto an old student, applied there."""
    lora = tmp_path / "style.safetensors"
    code, _, err = run(capsys, "lora", community["bare-emaonly"], "--data", captioned, "--out", lora, "--steps", "1",
                       "--text-encoder", "--rank", "4", "--resolution", "64", "--dtype", "fp32", "--device", "cpu")
    assert code == 0 and lora.exists(), err
    ported = tmp_path / "style-tiny.safetensors"
    code, _, err = run(capsys, "lora-port", lora, "--to", community_students["tiny-old"], "--out", ported)
    assert code == 0 and ported.exists(), err
    code, _, err = run(capsys, "generate", community_students["tiny-old"], "--prompt", "a red circle", "--steps", "1",
                       "--size", "64", "--lora", f"{ported}:0.8", "--out", tmp_path / "lora.png")
    assert code == 0, err
