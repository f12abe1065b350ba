"""`sdkd inspect` names what a file is; every bad input gets its own message, exit code 2, and no output file."""

import json
import pickle

import pytest
import torch

from sdkd_ext.cli import main
from sdkd_ext.tiny import save, tiny_checkpoint
from sdkd_ext.convert import UNET


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_teacher_and_students_json(capsys, teacher_file, students):
    code, out, _ = run(capsys, "inspect", teacher_file, "--json")
    info = json.loads(out)
    assert code == 0 and info["kind"] == "sd1" and info["variant"] == "teacher"
    assert info["has_vae"] and info["has_text_encoder"] and info["dtype"] == "float32"
    assert info["unet_params"] == sum(v.numel() for k, v in tiny_checkpoint(width=32).items() if k.startswith(UNET))
    for variant, r in students.items():
        code, out, _ = run(capsys, "inspect", r.checkpoint, "--json")
        info = json.loads(out)
        assert code == 0 and info["kind"] == "student" and info["variant"] == variant
        assert info["metadata"]["sdkd_variant"] == variant


class Pwned:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def _bad_inputs(tmp, teacher_sd, students):
    """(file, expected message fragment) for each kind of input sdkd must refuse."""
    sd2 = tiny_checkpoint(width=32, vae=False, text_encoder=False)
    sd2 = {k: (v.new_zeros(v.shape[0], 1024) if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) else v) for k, v in sd2.items()}
    sdxl = {UNET + "label_emb.0.0.weight": torch.zeros(4, 4), **{k: v for k, v in list(teacher_sd.items())[:5]}}
    vae = {k[len("first_stage_model."):]: v for k, v in teacher_sd.items() if k.startswith("first_stage_model.")}
    te = {k[len("cond_stage_model.transformer."):]: v for k, v in teacher_sd.items() if k.startswith("cond_stage_model.")}
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}
    truncated = tmp / "truncated.safetensors"
    truncated.write_bytes(students["tiny"].checkpoint.read_bytes()[:50_000])
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip")
    evil = tmp / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Pwned()}, evil)
    gaps = {k: v for k, v in teacher_sd.items() if not k.startswith(UNET + "input_blocks.5.")}
    return [
        (save(sd2, tmp / "sd2.safetensors"), "SD2.x checkpoint"),
        (save(sdxl, tmp / "sdxl.safetensors"), "SDXL checkpoint"),
        (save(vae, tmp / "vae.safetensors"), "VAE on its own"),
        (save(te, tmp / "te.safetensors"), "text encoder on its own"),
        (save(lora, tmp / "lora.safetensors"), "LoRA, not a checkpoint"),
        (save({"weight": torch.zeros(3)}, tmp / "random.safetensors"), "not a model"),
        (save(gaps, tmp / "gaps.safetensors"), "not numbered 0..N without gaps"),
        (truncated, "corrupt or truncated"),
        (corrupt, "corrupt or truncated"),
        (evil, "refused: this .ckpt is a pickle that needs the Python object print rebuilt"),
        (students["small"].checkpoint, "already a BK-SDM small student"),
        (tmp / "missing.safetensors", "no such file"),
        (tmp / "notes.txt", "unsupported file type"),
    ]


def test_bad_inputs_refused_with_reason_and_no_output(capsys, tmp_path, teacher_sd, students):
    (tmp_path / "notes.txt").write_text("hello")
    for path, message in _bad_inputs(tmp_path, teacher_sd, students):
        out = tmp_path / "out" / f"{path.stem}-student"
        code, stdout, err = run(capsys, "prune", path, "--variant", "tiny", "--out", out)
        assert code == 2, (path.name, err)
        assert message in err and err.count("\n") == 1, (path.name, err)
        assert "this pickle ran code" not in stdout
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), path.name
        if path.name not in ("missing.safetensors", "notes.txt"):
            code, _, err = run(capsys, "inspect", path)
            assert code == 2 or path == students["small"].checkpoint, (path.name, err)


class Hparams:
    """Training settings as some trainers pickle them beside the weights: a custom class."""

    def __init__(self):
        self.lr = 1e-4


def test_a_pickle_that_needs_code_is_refused_in_sdkds_words_only(capsys, tmp_path, teacher_sd):
    """21.11: torch's own refusal suggests weights_only=False; sdkd's says why and how to convert safely, nothing else."""
    path = tmp_path / "trainer.ckpt"
    torch.save({"state_dict": teacher_sd, "hparams": Hparams()}, path)
    code, _, err = run(capsys, "inspect", path)
    assert code == 2 and err.count("\n") == 1, err
    assert f"the Python object {Hparams.__module__}.Hparams rebuilt" in err and "throwaway sandbox" in err, err
    for torch_words in ("weights_only", "Weights only", "WeightsUnpickler", "safe_globals", "allowlist", "trust",
                        "pytorch.org", "\x1b"):
        assert torch_words not in err, (torch_words, err)
    from sdkd_ext.checkpoint import open_model
    from sdkd_ext.errors import SdkdError

    with pytest.raises(SdkdError) as e:
        open_model(path)
    assert e.value.__cause__ is None and e.value.__suppress_context__, "no chained torch message in a traceback"


def test_existing_output_is_never_overwritten(capsys, teacher_file, tmp_path):
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"user data")
    code, _, err = run(capsys, "prune", teacher_file, "--variant", "base", "--out", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"user data" and not (tmp_path / "mine.yaml").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine.safetensors"]
    code, _, _ = run(capsys, "prune", teacher_file, "--variant", "base", "--out", out, "--overwrite")
    assert code == 0 and out.read_bytes() != b"user data"
    code, _, err = run(capsys, "prune", teacher_file, "--variant", "base", "--out", teacher_file, "--overwrite")
    assert code == 2 and "is the teacher itself" in err


def test_failed_write_leaves_nothing(monkeypatch, teacher_file, tmp_path):
    """A write that dies midway (e.g. disk full) leaves no partial file and names the problem."""
    import sdkd_ext.export as export
    from sdkd_ext.errors import SdkdError
    from sdkd_ext.prune import PruneJob, prune
    from sdkd_ext.variants import get_variant

    real = export.report

    def disk_full(progress, stage, step, total, *a, **k):
        if step == 10:
            raise OSError(28, "No space left on device")
        return real(progress, stage, step, total, *a, **k)

    monkeypatch.setattr(export, "report", disk_full)
    with pytest.raises(SdkdError, match="No space left on device; free some disk space"):
        prune(PruneJob(teacher_file, get_variant("tiny"), tmp_path / "full"))
    assert list(tmp_path.iterdir()) == []
