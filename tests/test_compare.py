"""`sdkd compare` on tiny models: self-agreement is perfect, damage lowers agreement, the report shows it all."""

import json
import math
import statistics

import pytest
import torch
from PIL import Image

from sdkd_ext.cli import main
from sdkd_ext.compare import CompareSpec, compare, write_report
from sdkd_ext.convert import UNET
from sdkd_ext.errors import SdkdError
from sdkd_ext.sampling import Sampler
from sdkd_ext.tiny import save

PROMPTS = ["a small red circle at the top left on a blue background", "a big green square"]
SEEDS = [0, 1]


def perturbed(teacher_sd: dict, scale: float, path, metadata: dict | None = None):
    """The teacher with Gaussian noise of `scale` (relative to each tensor's spread) on its UNet weights."""
    gen = torch.Generator().manual_seed(7)
    out = {k: v + scale * v.std() * torch.randn(v.shape, generator=gen) if k.startswith(UNET) and v.numel() > 1 else v
           for k, v in teacher_sd.items()}
    return save(out, path, metadata)


@pytest.fixture(scope="module")
def result(teacher_sd, teacher_file, students, tmp_path_factory):
    """Teacher vs itself, two perturbed copies of itself and the pruned tiny student."""
    d = tmp_path_factory.mktemp("cmp")
    light = perturbed(teacher_sd, 0.01, d / "light.safetensors", {"sdkd_distill_steps": "123"})
    heavy = perturbed(teacher_sd, 0.1, d / "heavy.safetensors")
    drawn = Sampler(steps=3, guidance=7.5)
    return compare(teacher_file, [teacher_file, light, heavy, students["tiny"].checkpoint],
                   CompareSpec(tuple(PROMPTS), tuple(SEEDS), 64, drawn, drawn))


def test_a_model_compared_with_itself_agrees_perfectly(result):
    teacher, same = result.models[:2]
    assert len(same.samples) == len(PROMPTS) * len(SEEDS)
    for s, ref in zip(same.samples, teacher.samples):
        assert (s.prompt, s.seed) == (ref.prompt, ref.seed)
        assert s.psnr == math.inf and s.ssim == pytest.approx(1.0, abs=1e-12) and s.latent_mse == 0.0
    # different seeds really give different images (so the agreement above is not trivial)
    assert teacher.samples[0].latents.ne(teacher.samples[1].latents).any()


def test_more_perturbation_means_less_agreement(result):
    light, heavy, tiny = (m.summary() for m in result.models[2:])
    for m in result.models[2:]:
        for s in m.samples:
            assert math.isfinite(s.psnr) and s.ssim < 1 and s.latent_mse > 0
    assert light["psnr"] > heavy["psnr"] and light["ssim"] > heavy["ssim"] and light["latent_mse"] < heavy["latent_mse"]
    assert light["psnr"] > tiny["psnr"]  # a pruned (undistilled) student is far from its teacher


def test_metadata_and_report(result, tmp_path):
    assert [m.variant for m in result.models] == ["teacher", "teacher", "teacher", "teacher", "tiny"]
    assert result.models[2].distillation == {"sdkd_distill_steps": "123"}
    assert result.models[4].metadata["sdkd_variant"] == "tiny"
    paths = write_report(result, tmp_path / "r")
    data = json.loads(paths["json"].read_text())
    assert data["models"][1]["summary"]["psnr"] == "inf"
    assert data["models"][4]["samples"][3]["ssim"] == result.models[4].samples[3].ssim
    assert "sdkd_topology" not in data["models"][4]["metadata"]
    page = paths["report"].read_text()
    assert "grid.png" in page and "steps: 123" in page and "none (pruned only)" in page and PROMPTS[0] in page
    assert f"{result.models[3].summary()['psnr']:.2f}" in page
    with Image.open(paths["grid"]) as g:
        side = 128  # 64 px images are enlarged to 128 px cells
        assert g.width > 5 * side and g.height > len(PROMPTS) * len(SEEDS) * side
    with pytest.raises(SdkdError, match="already exists"):
        write_report(result, tmp_path / "r")


def test_cli_compare(teacher_file, students, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[1] + "\n")
    args = ["compare", str(teacher_file), str(students["base"].checkpoint), "--prompts", str(prompts),
            "--seeds", "0-1", "--size", "64", "--steps", "2", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["settings"]["seeds"] == [0, 1] and len(data["models"][1]["samples"]) == 2
    assert "PSNR" in capsys.readouterr().out
    assert main(args) == 2  # the report exists: no overwrite without --overwrite


# ---- students at their own sampler settings, with a LoRA; intervals; times -------------------------------------------

def lora_file(model, path, metadata: dict | None = None, seed: int = 1):
    """A random LoRA on every layer of `model`'s own topology, written as a kohya file."""
    from sdkd_ext.lora.file import kohya_metadata, write_kohya
    from test_lora import layout_of, random_lora

    lora = random_lora(layout_of(model), rank=4, alpha=4.0, seed=seed, unet_only=True)
    return write_kohya(lora, path, {**kohya_metadata(lora, None), **(metadata or {})})


@pytest.fixture(scope="module")
def few_step(teacher_file, students, tmp_path_factory):
    """The teacher against itself and the tiny student with and without a LoRA, the students at lcm 2 steps cfg 1,
    the teacher at its own 3 steps cfg 7.5."""
    tiny = students["tiny"].checkpoint
    lora = lora_file(tiny, tmp_path_factory.mktemp("lora") / "tiny-lcm.safetensors")
    reference, fast = Sampler("dpmpp_2m", 3, 7.5), Sampler("lcm", 2, 1.0)
    plain = CompareSpec(tuple(PROMPTS), tuple(SEEDS), 64, reference, fast)
    return (compare(teacher_file, [teacher_file, tiny], plain),
            compare(teacher_file, [tiny], CompareSpec(tuple(PROMPTS), tuple(SEEDS), 64, reference, fast, ((lora, 1.0),))),
            lora)


def test_students_are_drawn_at_their_own_settings_the_teacher_at_its_own(few_step, result):
    plain, with_lora, _ = few_step
    teacher, itself, _ = plain.models
    assert plain.settings["reference"] == {"sampler": "dpmpp_2m", "steps": 3, "guidance": 7.5}
    assert plain.settings["students"] == {"sampler": "lcm", "steps": 2, "guidance": 1.0}
    assert teacher.sampler == "dpmpp_2m, 3 steps, cfg 7.5" and itself.sampler == "lcm, 2 steps, cfg 1"
    # the teacher as a student, drawn at other settings, no longer matches its reference images
    assert all(math.isfinite(s.psnr) and s.latent_mse > 0 for s in itself.samples)
    # the reference is the teacher at its settings: what `result` drew with the same settings (steps 3, cfg 7.5)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(teacher.samples, result.models[0].samples))


def test_the_lora_is_applied_to_the_students_only(few_step):
    plain, with_lora, lora = few_step
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(plain.models[0].samples, with_lora.models[0].samples))
    assert with_lora.models[1].loras == [f"{lora.name}:1"] and with_lora.models[0].loras == []
    assert with_lora.settings["loras"] == [f"{lora.name}:1"]
    assert all(not torch.allclose(a.latents, b.latents) for a, b in zip(plain.models[2].samples, with_lora.models[1].samples))


def test_each_figure_has_a_95_percent_interval_over_prompts_and_seeds(few_step, tmp_path):
    plain = few_step[0]
    tiny = plain.models[2]
    for key, iv in tiny.intervals().items():
        values = [getattr(s, key) for s in tiny.samples]
        assert len(values) == len(PROMPTS) * len(SEEDS) == 4
        half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
        assert iv["mean"] == pytest.approx(statistics.fmean(values))
        assert (iv["low"], iv["high"]) == pytest.approx((iv["mean"] - half, iv["mean"] + half))
        assert iv["low"] < iv["mean"] < iv["high"]
    assert plain.models[0].intervals()["psnr"] is None  # the teacher against itself: PSNR inf, no interval
    data = json.loads(write_report(plain, tmp_path / "r")["json"].read_text())
    assert data["settings"]["interval"].startswith("95% interval of the mean over the n = prompts x seeds images")
    row = data["models"][2]
    assert row["intervals"]["ssim"]["low"] == tiny.intervals()["ssim"]["low"]
    assert row["seconds_per_image"] > 0 and row["cpu_seconds_per_image"] > 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"({tiny.intervals()['psnr']['low']:.2f} to {tiny.intervals()['psnr']['high']:.2f})" in page


def test_cli_compare_reference_settings_lora_and_the_lcm_warning(teacher_file, students, few_step, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[1] + "\n")
    tiny = students["tiny"].checkpoint
    args = ["compare", str(teacher_file), str(tiny), "--prompts", str(prompts), "--size", "64", "--sampler", "lcm",
            "--steps", "2", "--guidance", "1", "--reference-steps", "3"]
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    out = capsys.readouterr()
    warned = [line for line in out.err.splitlines() if line.startswith("sdkd: warning")]
    assert len(warned) == 1 and "tiny.safetensors: the lcm sampler without an LCM LoRA draws poor images" in warned[0]
    assert "PSNR dB" in out.out and "CPU s)" in out.out
    data = json.loads((tmp_path / "plain" / "compare.json").read_text())
    assert data["settings"]["reference"]["steps"] == 3 and data["settings"]["students"]["sampler"] == "lcm"
    assert main(args + ["--lora", f"{few_step[2]}:1", "--out", str(tmp_path / "lora")]) == 0
    assert "poor images" not in capsys.readouterr().err  # the LoRA's name says lcm
    assert main(args[:-1] + ["0", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.startswith("sdkd: error: --reference-steps 0: choose between 1 and 50")
    assert not (tmp_path / "bad").exists()


def test_a_lora_of_another_topology_is_refused_before_anything_is_drawn(teacher_file, students, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red box\n")
    teachers = lora_file(teacher_file, tmp_path / "teacher-style.safetensors")
    args = ["compare", str(teacher_file), str(students["tiny"].checkpoint), "--prompts", str(prompts), "--size", "64",
            "--lora", str(teachers), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdkd: error: --lora for ") and "teacher-style.safetensors" in err, err
    assert not (tmp_path / "out").exists()
