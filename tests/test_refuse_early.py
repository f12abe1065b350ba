"""Refusals before slow work (21.6): every setting a job can refuse is refused before it reads a model, builds a
cache or renders anything. Each test makes the slow step fail loudly, so a refusal that comes after it fails."""

import pytest
import torch

from sdkd_ext.cli import main
from sdkd_ext.errors import SdkdError


class SlowWorkStarted(AssertionError):
    """Raised by a slow step that a refusal should have prevented."""


def forbid(monkeypatch, target: str) -> None:
    """Make `module.attr` raise `SlowWorkStarted` when called."""
    def slow(*args, **kwargs):
        raise SlowWorkStarted(f"{target} ran before the refusal")

    monkeypatch.setattr(target, slow)


def refused(capsys, argv: list, words: str) -> None:
    """The CLI exits 2 with one line that contains `words`."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err


def test_distill_refuses_fp16_on_cpu_before_reading_the_teacher(monkeypatch, capsys, teacher_file, tmp_path):
    forbid(monkeypatch, "sdkd_ext.distill.open_model")
    out = tmp_path / "kd"
    refused(capsys, ["distill", teacher_file, "--variant", "tiny", "--recipe", "bk-sdm", "--self", "2", "--steps", "1",
                     "--resolution", "64", "--device", "cpu", "--out", out], "--precision fp16 needs a CUDA GPU")
    refused(capsys, ["distill", teacher_file, "--variant", "tiny", "--self", "2", "--optimizer", "adamw8bit",
                     "--device", "cpu", "--out", out], "--optimizer adamw8bit needs a CUDA GPU")
    refused(capsys, ["distill", teacher_file, "--variant", "base", "--self", "2", "--portable", "--out", out],
            "--portable is for students without a middle block")
    assert not (tmp_path / "kd.run").exists()


def test_distill_refuses_an_export_dtype_before_training(monkeypatch, teacher_file, tmp_path):
    from sdkd_ext.data import PromptData
    from sdkd_ext.distill import DistillJob, distill
    from sdkd_ext.variants import get_variant

    forbid(monkeypatch, "sdkd_ext.distill.open_model")
    with pytest.raises(SdkdError, match="fp8"):
        distill(DistillJob(teacher_file, get_variant("tiny"), tmp_path / "kd", PromptData(("a box",)), dtype="fp8"))


def test_lora_refuses_fp16_on_cpu_before_reading_the_base(monkeypatch, capsys, teacher_file, tmp_path):
    forbid(monkeypatch, "sdkd_ext.detect.open_model")
    refused(capsys, ["lora", teacher_file, "--data", tmp_path, "--out", tmp_path / "style", "--precision", "fp16",
                     "--device", "cpu"], "--precision fp16 needs a CUDA GPU")
    assert not (tmp_path / "style.run").exists()


def test_prune_refuses_before_reading_the_teacher(monkeypatch, capsys, teacher_file, tmp_path):
    from sdkd_ext.prune import PruneJob, prune
    from sdkd_ext.variants import get_variant

    forbid(monkeypatch, "sdkd_ext.prune.open_model")
    refused(capsys, ["prune", teacher_file, "--variant", "base", "--portable", "--out", tmp_path / "p"],
            "--portable is for students without a middle block")
    with pytest.raises(SdkdError, match="fp8"):
        prune(PruneJob(teacher_file, get_variant("tiny"), tmp_path / "p", dtype="fp8"))
    (tmp_path / "p.safetensors").write_bytes(b"mine")
    refused(capsys, ["prune", teacher_file, "--variant", "tiny", "--out", tmp_path / "p"], "already exists")


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_compare_and_bench_refuse_an_existing_report_and_an_absent_gpu_before_loading_a_model(
        command, monkeypatch, capsys, teacher_file, students, tmp_path):
    forbid(monkeypatch, "sdkd_ext.pipeline.load_pipeline")
    forbid(monkeypatch, "sdkd_ext.checkpoint.open_model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red box\n")
    args = [command, teacher_file, students["tiny"].checkpoint, *(["--prompts", prompts] if command == "compare" else [])]
    report = tmp_path / "report"
    report.mkdir()
    (report / ("grid.png" if command == "compare" else "bench.png")).write_bytes(b"an earlier report")
    refused(capsys, [*args, "--out", report], "already exists")
    if not torch.cuda.is_available():
        refused(capsys, [*args, "--out", tmp_path / "new", "--device", "cuda"], "this machine has no CUDA GPU")
    refused(capsys, [*args, "--out", tmp_path / "new", "--device", "gpu0"], "not a device name")
    assert not (tmp_path / "new").exists()


def test_rebase_refuses_a_dtype_before_reading_a_checkpoint(monkeypatch, teacher_file, students, tmp_path):
    from sdkd_ext.rebase import RebaseJob, rebase

    forbid(monkeypatch, "sdkd_ext.rebase.open_model")
    forbid(monkeypatch, "sdkd_ext.rebase.measure")
    with pytest.raises(SdkdError, match="fp8"):
        rebase(RebaseJob(teacher_file, teacher_file, students["tiny"].checkpoint, tmp_path / "r", dtype="fp8"))
