"""`sdkd generate` builds the pipeline offline from a single file and writes a reproducible PNG."""

import numpy as np
from PIL import Image

from sdkd_ext.cli import main


def test_generate_cli_is_seeded_and_refuses_to_overwrite(students, tmp_path, capsys):
    student = students["tiny"].checkpoint
    args = ["generate", str(student), "--prompt", "a red circle", "--steps", "2", "--size", "64"]
    paths = [tmp_path / n for n in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, ("1", "1", "2")):
        assert main(args + ["--seed", seed, "--out", str(path)]) == 0
    a, b, c = (np.asarray(Image.open(p)) for p in paths)
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    capsys.readouterr()
    assert main(args + ["--out", str(paths[0])]) == 2
    assert "already exists" in capsys.readouterr().err


def test_generate_samplers_and_the_lcm_warning(students, tmp_path, capsys):
    """--sampler picks the scheduler (another sampler, another image); lcm without an LCM LoRA warns in one line and
    still draws; a LoRA whose metadata says sdkd_lora_kind lcm silences it; steps outside 1-50 are refused."""
    from test_compare import lora_file

    student = students["tiny"].checkpoint
    args = ["generate", str(student), "--prompt", "a red circle", "--size", "64", "--steps", "2"]
    images = {}
    for sampler in ("dpmpp_2m", "euler", "lcm"):
        out = tmp_path / f"{sampler}.png"
        assert main(args + ["--sampler", sampler, "--guidance", "1", "--out", str(out)]) == 0
        images[sampler] = np.asarray(Image.open(out))
        warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdkd: warning")]
        if sampler == "lcm":
            assert len(warned) == 1 and "the lcm sampler without an LCM LoRA draws poor images" in warned[0], warned
        else:
            assert warned == []
    assert not np.array_equal(images["euler"], images["lcm"]) and not np.array_equal(images["dpmpp_2m"], images["euler"])
    few = lora_file(student, tmp_path / "speedup.safetensors", {"sdkd_lora_kind": "lcm"})
    assert main(args + ["--sampler", "lcm", "--lora", str(few), "--out", str(tmp_path / "with.png")]) == 0
    assert "poor images" not in capsys.readouterr().err
    assert main(args[:-1] + ["51", "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("sdkd: error: --steps 51: choose between 1 and 50 sampler steps")
    assert not (tmp_path / "x.png").exists()


def test_few_step_loras_are_known_by_metadata_or_name(students, tmp_path):
    from sdkd_ext.lora.kind import is_few_step, lacks_few_step
    from test_compare import lora_file

    student = students["tiny"].checkpoint
    plain = lora_file(student, tmp_path / "style.safetensors")
    tagged = lora_file(student, tmp_path / "speedup.safetensors", {"sdkd_lora_kind": "lcm"})
    named = lora_file(student, tmp_path / "pytorch_LCM_lora_weights.safetensors")
    assert not is_few_step(plain) and is_few_step(tagged) and is_few_step(named)
    assert lacks_few_step("lcm", [student, plain]) and not lacks_few_step("lcm", [student, plain, tagged])
    assert not lacks_few_step("euler", [student])
