"""LoRA training on the distillation engine: it learns, exports a file hosts apply, resumes exactly, plans memory."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sdkd_ext.cli import main
from sdkd_ext.export import sha256_file
from sdkd_ext.lora.apply import apply_lora
from sdkd_ext.lora.file import read_lora
from sdkd_ext.lora.names import build_layout, sd15_te_shapes
from sdkd_ext.lora.train import LoraJob, LoraSpec, estimate_lora, plan_lora, train_lora
from sdkd_ext.pipeline import load_pipeline
from sdkd_ext.plan import Settings
from sdkd_ext.progress import Cancelled
from sdkd_ext.train import STATE_FILE, TrainConfig
from sdkd_ext.variants import SD15
from test_lora import check_against_ldm, layout_of, one_thread  # noqa: F401 (autouse fixture)

ARGS = ["--rank", "4", "--alpha", "8", "--lr", "2e-3", "--resolution", "64", "--dtype", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four random 64 px images with captions."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a picture number {i}")
    return folder


def unet_and_text(pipe, x, ids):
    """UNet output and text embedding of a pipeline on fixed inputs."""
    with torch.no_grad():
        ctx = pipe.text_encoder(ids)[0]
        return pipe.unet(x, 500, ctx).sample, ctx


def test_trained_lora_changes_the_output_and_is_a_kohya_file_for_the_base(students, images, tmp_path, capsys):
    base = students["tiny"].checkpoint
    out = tmp_path / "style.safetensors"
    assert main(["lora", str(base), "--data", str(images), "--out", str(out), "--steps", "6", "--text-encoder", *ARGS,
                 "--keep-state"]) == 0
    assert "LoRA (" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        alphas = {f.get_tensor(k).item() for k in f.keys() if k.endswith(".alpha")}
    assert alphas == {8.0}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_base_model_version"]) == ("4", "8", "sd_v1")
    assert meta["sdkd_variant"] == "tiny" and meta["sdkd_base_sha256"] == sha256_file(base)
    layout = layout_of(base)
    lora = read_lora(out, layout)
    te_modules = sum(not m.startswith("model.") for m in lora.modules)
    assert te_modules == 8 and check_against_ldm(out, layout.topology) == len(lora.modules) - te_modules

    state = torch.load(str(tmp_path / "style.run" / STATE_FILE), weights_only=True)
    assert state["model"] and all(".lora_A." in k or ".lora_B." in k for k in state["model"])  # adapters only

    x, ids = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randint(0, 49407, (1, 77))
    plain, with_lora = load_pipeline(base).pipe, load_pipeline(base).pipe
    assert apply_lora(with_lora, out) == len(lora.modules)
    (a, ca), (b, cb) = unet_and_text(plain, x, ids), unet_and_text(with_lora, x, ids)
    assert (ca - cb).abs().max() > 1e-4 and (a - b).abs().max() > 1e-4


def test_cancelled_run_exports_and_resumes_to_the_uninterrupted_result(teacher_file, images, tmp_path):
    cfg = TrainConfig(steps=4, lr=2e-3, device="cpu", checkpoint_every=100)
    spec = LoraSpec(rank=2, alpha=3)
    whole = train_lora(LoraJob(teacher_file, images, tmp_path / "whole", spec, cfg, resolution=64, dtype="fp32"))

    def cancel_at_2(event):
        if event.stage == "lora" and event.step == 2:
            raise Cancelled

    first = train_lora(LoraJob(teacher_file, images, tmp_path / "split", spec, cfg, resolution=64, dtype="fp32"),
                       cancel_at_2)
    assert first.train.cancelled and first.train.steps == 2
    with safe_open(str(first.path), "pt") as f:
        assert f.metadata()["sdkd_lora_status"] == "cancelled"
    resumed = train_lora(LoraJob(teacher_file, images, tmp_path / "split", spec, cfg, resolution=64, dtype="fp32",
                                 resume=True))
    assert resumed.train.steps == 4 and not resumed.train.cancelled
    layout = layout_of(teacher_file)
    a, b = read_lora(whole.path, layout), read_lora(resumed.path, layout)
    assert set(a.modules) == set(b.modules)
    for m in a.modules:
        for part, t in a.modules[m].tensors.items():
            assert torch.equal(b.modules[m].tensors[part], t), (m, part)


def test_bad_training_inputs(teacher_file, images, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    lora_file = tmp_path / "l.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["lora", str(teacher_file), "--data", str(empty), "--out", str(out), "--steps", "1", *ARGS]) == 2
    assert "no images found" in capsys.readouterr().err and not out.exists()
    assert main(["lora", str(teacher_file), "--data", str(images), "--out", str(lora_file), "--steps", "1", *ARGS]) == 0
    assert main(["lora", str(lora_file), "--data", str(images), "--out", str(out), "--steps", "1", *ARGS]) == 2
    assert "this is a LoRA" in capsys.readouterr().err
    assert main(["lora", str(teacher_file), "--data", str(images), "--out", str(lora_file), "--steps", "1", *ARGS]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err  # a finished run keeps no state
    assert main(["lora", str(teacher_file), "--data", str(images), "--out", str(out), "--steps", "1", *ARGS,
                 "--rank", "0"]) == 2
    assert "--rank" in capsys.readouterr().err and not out.exists()


def test_memory_plan_for_sd15_lora():
    layout = build_layout(SD15, sd15_te_shapes())
    spec = LoraSpec(rank=16, alpha=16)
    plain = estimate_lora(layout, spec, 512, Settings(batch=2, precision="fp16"))
    ckpt = estimate_lora(layout, spec, 512, Settings(batch=2, grad_checkpointing=True, precision="fp16"))
    assert plain.parts["trainable (fp32)"] == 4 * 16 * sum(
        s[0] + s[1] for m, s in layout.shapes.items() if m.startswith("model.") and m.endswith(("to_q", "to_k", "to_v", "to_out.0")))
    assert ckpt.training < plain.training
    vram = (ckpt.peak + plain.peak) / 2 / 2**30 + 0.75  # between the two: only checkpointing fits
    said = []
    cfg = plan_lora(TrainConfig(batch=2, precision="fp16", optimizer="adamw"), vram, layout, spec, 512,
                    torch.device("cuda"), said.append)
    assert cfg.grad_checkpointing and cfg.batch * cfg.accum == 2 and "memory plan" in said[0]


def test_sample_grids_show_the_base_without_and_the_model_with_the_lora(students, images, tmp_path, capsys):
    """`--preview-every`: a grid every N steps and at the end; row 1 is exactly what the base model alone samples
    (the adapters switched off, text encoder included), row 2 the model with the LoRA, which differs."""
    from sdkd_ext.data import derive_seed
    from sdkd_ext.distill import to_images
    from sdkd_ext.sampling import Sampler, sample_latents

    base, out = students["tiny"].checkpoint, tmp_path / "seen.safetensors"
    assert main(["lora", str(base), "--data", str(images), "--out", str(out), "--steps", "4", "--text-encoder",
                 "--preview-every", "2", *ARGS, "--lr", "3e-2"]) == 0
    assert "loss log and sample grids in" in capsys.readouterr().out
    grids = sorted((tmp_path / "seen.run" / "previews").iterdir())
    assert [g.name for g in grids] == ["step-000002.png", "step-000004.png"]
    grid = np.asarray(Image.open(grids[-1]).convert("RGB")).astype(int)
    assert grid.shape == (2 * 64, 90 + 2 * 64, 3)  # on a CPU 2 captions of 64 px after the labels, 10 sampler steps
    pipe = load_pipeline(base).pipe
    captions = [f"a picture number {i}" for i in range(2)]  # the folder's first captions, in order
    with torch.no_grad():
        cond, uncond = (pipe.encode_prompt(p, "cpu", 1, False)[0] for p in (captions, [""]))
        z = sample_latents(pipe.unet, Sampler(steps=10), cond, uncond, [derive_seed(0, "preview", i) for i in range(2)], 8)
    own = np.concatenate([np.asarray(im).astype(int) for im in to_images(pipe.vae, z, 0.18215, torch.device("cpu"))], 1)
    without, with_lora = grid[:64, 90:], grid[64:, 90:]
    assert np.abs(without - own).max() <= 2  # uint8 rounding of the same fp32 sampling
    assert np.abs(with_lora - without).mean() > 2  # measured 8 (and 47 max for row 1 with the adapters left on)
