"""Rebase: student + strength x (community - base) through the block map, refusals that write nothing."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sdkd_ext.cli import main
from sdkd_ext.convert import UNET
from sdkd_ext.export import sha256_file
from sdkd_ext.prune import PruneJob, prune
from sdkd_ext.rebase import DERIVED_LIMIT, RebaseJob, rebase
from sdkd_ext.variants import get_variant
from sdkd_ext.tiny import save, tiny_checkpoint


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def fine_tuned(sd: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """A 'community' model: every tensor moved by `scale` of its own spread (what a fine-tune does)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.std().nan_to_num(0) * torch.randn(v.shape, generator=g) if v.numel() > 1 else v
            for k, v in sd.items()}


@pytest.fixture(scope="module")
def community_file(teacher_sd, tmp_path_factory) -> Path:
    return save(fine_tuned(teacher_sd, 0.05, 1), tmp_path_factory.mktemp("community") / "community.safetensors")


def test_strength_zero_and_zero_difference_give_the_student_bit_for_bit(students, teacher_file, community_file, tmp_path):
    student = students["small"].checkpoint
    want, _ = read(student)
    community, _ = read(community_file)
    for name, comm, strength in (("zero-strength", community_file, 0.0), ("zero-difference", teacher_file, 1.0)):
        r, _ = rebase(RebaseJob(comm, teacher_file, student, tmp_path / name, strength=strength, dtype="fp32"))
        got, _ = read(r.checkpoint)
        unet = {k for k in got if k.startswith(UNET)}
        assert unet == {k for k in want if k.startswith(UNET)}
        assert all(torch.equal(got[k], want[k]) for k in unet), name
        source = community if comm == community_file else read(teacher_file)[0]
        assert all(torch.equal(got[k], source[k]) for k in got if not k.startswith(UNET)), "VAE/text encoder from COMMUNITY"


@pytest.mark.parametrize("variant", ["base", "tiny"])
def test_rebasing_the_pruned_base_gives_the_pruned_community(variant, students, teacher_file, community_file, tmp_path):
    """pruned(B) + (C - B) = pruned(C) tensor by tensor: the difference goes exactly where the block map says."""
    r, diff = rebase(RebaseJob(community_file, teacher_file, students[variant].checkpoint, tmp_path / "rebased", dtype="fp32"))
    pruned_c = prune(PruneJob(community_file, get_variant(variant), tmp_path / "pruned-c", dtype="fp32")).checkpoint
    got, meta = read(r.checkpoint)
    want, _ = read(pruned_c)
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in got)
    assert worst < 1e-6
    assert 0.01 < diff.median < DERIVED_LIMIT
    assert meta["sdkd_rebase_community_sha256"] == sha256_file(community_file)
    assert meta["sdkd_rebase_base_sha256"] == sha256_file(teacher_file)
    assert meta["sdkd_rebase_student_sha256"] == sha256_file(students[variant].checkpoint)
    assert meta["sdkd_rebase_strength"] == "1" and meta["sdkd_variant"] == variant


def test_strength_scales_the_difference(students, teacher_file, community_file, tmp_path):
    tiny = students["tiny"].checkpoint
    half, _ = read(rebase(RebaseJob(community_file, teacher_file, tiny, tmp_path / "h", 0.5, "fp32"))[0].checkpoint)
    full, _ = read(rebase(RebaseJob(community_file, teacher_file, tiny, tmp_path / "f", 1.0, "fp32"))[0].checkpoint)
    s, _ = read(students["tiny"].checkpoint)
    k = next(k for k in s if k.startswith(UNET) and s[k].numel() > 100)
    assert torch.allclose(half[k] - s[k], (full[k] - s[k]) / 2, atol=1e-6) and not torch.equal(half[k], s[k])


def cli(community, base, student, out) -> int:
    return main(["rebase", str(community), "--base", str(base), "--student", str(student), "--out", str(out)])


def refusal_inputs(tmp: Path, teacher_file: Path, community_file: Path, students: dict) -> dict[str, tuple]:
    """(community, base, student, words the message must contain) per refusal."""
    wider = save(tiny_checkpoint(width=64, seed=0), tmp / "wider.safetensors")
    unrelated = save(tiny_checkpoint(width=32, seed=7), tmp / "unrelated.safetensors")
    return {
        "topology": (community_file, wider, students["small"].checkpoint, "differ in topology"),
        "student-is-a-teacher": (community_file, teacher_file, teacher_file, "full SD1.x checkpoint"),
        "student-of-other-widths": (wider, wider, students["small"].checkpoint, "other widths"),
        "not-derived": (unrelated, teacher_file, students["small"].checkpoint, "does not look derived"),
        "student-missing": (community_file, teacher_file, tmp / "nothing.safetensors", "no such file"),
    }


def test_each_refusal_exits_2_and_writes_nothing(students, teacher_file, community_file, tmp_path, capsys):
    cases = refusal_inputs(tmp_path, teacher_file, community_file, students)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (comm, base, student, words) in cases.items():
        assert cli(comm, base, student, out_dir / name) == 2, name
        err = capsys.readouterr().err
        assert words in err, (name, err)
        assert list(out_dir.iterdir()) == [], name
    # the not-derived message names the measured figure
    comm, base, student, _ = cases["not-derived"]
    cli(comm, base, student, out_dir / "x")
    assert "median" in capsys.readouterr().err


def test_cli_writes_the_rebased_student(students, teacher_file, community_file, tmp_path, capsys):
    out = tmp_path / "rebased.safetensors"
    assert cli(community_file, teacher_file, students["base"].checkpoint, out) == 0
    assert out.is_file() and out.with_suffix(".yaml").is_file()
    assert "difference median" in capsys.readouterr().out
    assert cli(community_file, teacher_file, students["base"].checkpoint, out) == 2  # never overwrites
