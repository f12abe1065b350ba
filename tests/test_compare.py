"""`sdkd compare` on tiny models: self-agreement is perfect, damage lowers agreement, the report shows it all."""

import json
import math

import pytest
import torch
from PIL import Image

from sdkd_ext.cli import main
from sdkd_ext.compare import compare, write_report
from sdkd_ext.convert import UNET
from sdkd_ext.errors import SdkdError
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
    return compare(teacher_file, [teacher_file, light, heavy, students["tiny"].checkpoint], PROMPTS, SEEDS,
                   size=64, steps=3)


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
