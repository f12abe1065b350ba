"""Distillation refuses bad teachers, settings and resumes, skips bad images, and stops on a non-finite loss."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sdkd_ext.convert import UNET
from sdkd_ext.data import FolderData
from sdkd_ext.distill import DistillJob, LossWeights, distill
from sdkd_ext.variants import get_variant
from sdkd_ext.errors import SdkdError
from sdkd_ext.tiny import save

from distill_helpers import cfg, images, one_thread, run, shape_image  # noqa: F401 (fixtures)


def test_resume_refused_when_variant_teacher_or_data_changed(images, tmp_path, teacher_file, teacher_sd):
    out = tmp_path / "kd"
    run(teacher_file, out, FolderData(images), cfg(steps=1, keep_state=True))
    with pytest.raises(SdkdError, match="--resume to continue it or --overwrite"):
        run(teacher_file, out, FolderData(images), cfg(steps=2))
    with pytest.raises(SdkdError, match="the variant changed"):
        distill(DistillJob(teacher_file, get_variant("small"), out, FolderData(images), cfg(steps=2), resolution=64,
                           resume=True, preview_prompts=[]))
    other = save({k: v + 0.01 if k.startswith(UNET) else v for k, v in teacher_sd.items()}, tmp_path / "other.safetensors")
    with pytest.raises(SdkdError, match="the teacher changed"):
        run(other, out, FolderData(images), cfg(steps=2), resume=True)
    more = tmp_path / "more"
    shutil.copytree(images, more)
    shape_image(np.random.default_rng(9), 64, 64).save(more / "extra.png")
    with pytest.raises(SdkdError, match="the data changed"):
        run(teacher_file, out, FolderData(more), cfg(steps=2), resume=True)
    with pytest.raises(SdkdError, match="nothing to resume"):
        run(teacher_file, tmp_path / "fresh", FolderData(images), cfg(steps=2), resume=True)
    assert run(teacher_file, out, FolderData(images), cfg(steps=2), resume=True).train.steps == 2


def test_bad_images_are_skipped_counted_and_reported(tmp_path, images, teacher_file):
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    (folder / "img0.txt").unlink()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("RGB", (20, 90), "red").save(folder / "small.png")
    notes = []
    r = run(teacher_file, tmp_path / "kd", FolderData(folder), cfg(steps=1), log=notes.append)
    assert r.samples == 6, "the 5 captioned + 1 uncaptioned good images"
    assert any("3 image(s) have no caption; using their file names" in n for n in notes)
    assert any("skipped 1 unreadable (broken.png), 1 too small (small.png)" in n for n in notes)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"nope")
    with pytest.raises(SdkdError, match="no usable images"):
        run(teacher_file, tmp_path / "kd2", FolderData(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SdkdError, match="no images found"):
        run(teacher_file, tmp_path / "kd3", FolderData(tmp_path / "empty"))


def test_bad_teachers_and_settings_are_refused(tmp_path, images, teacher_file, teacher_sd, students):
    with pytest.raises(SdkdError, match="already a BK-SDM tiny student; distil its teacher"):  # Distil's verb (21.9)
        run(students["tiny"].checkpoint, tmp_path / "x", FolderData(images))
    lora = save({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, tmp_path / "l.safetensors")
    with pytest.raises(SdkdError, match="this is a LoRA"):
        run(lora, tmp_path / "x", FolderData(images))
    for kw, msg in [({"resolution": 96}, "multiple of 64"), ({"config": cfg(steps=0)}, "--steps must be at least 1")]:
        config = kw.pop("config", None)
        with pytest.raises(SdkdError, match=msg):
            run(teacher_file, tmp_path / "x", FolderData(images), config, **kw)
    with pytest.raises(SdkdError, match="every loss weight is 0"):
        run(teacher_file, tmp_path / "y", FolderData(images), weights=LossWeights(0, 0, 0))
    with pytest.raises(SdkdError, match="must not be negative"):
        run(teacher_file, tmp_path / "z", FolderData(images), weights=LossWeights(1, -1, 1))
    (tmp_path / "taken.safetensors").write_bytes(b"mine")
    with pytest.raises(SdkdError, match="already exists"):
        run(teacher_file, tmp_path / "taken", FolderData(images))
    assert (tmp_path / "taken.safetensors").read_bytes() == b"mine"


def test_non_finite_teacher_output_names_the_kd_terms(tmp_path, images, teacher_sd):
    """A teacher whose middle block (which tiny drops) is NaN: the KD terms blow up, the task term does not."""
    broken = {k: v.clone() if k.startswith(UNET + "middle_block.0.in_layers") else v for k, v in teacher_sd.items()}
    broken[UNET + "middle_block.0.in_layers.2.weight"].fill_(float("nan"))
    teacher = save(broken, tmp_path / "nan.safetensors")
    with pytest.raises(SdkdError) as e:
        run(teacher, tmp_path / "kd", FolderData(images))
    msg = str(e.value)
    assert "stopped at step 1: the output_kd, feature_kd loss terms became non-finite" in msg and "task" not in msg
    assert "no checkpoint had been written yet" in msg


def test_cli_data_sources(tmp_path, teacher_file, images, capsys):
    from sdkd_ext.cli import main

    empty = tmp_path / "prompts.txt"
    empty.write_text("# none yet\n")
    args = ["distill", str(teacher_file), "--variant", "tiny", "--resolution", "64", "--out", str(tmp_path / "x")]
    assert main(args + ["--prompts", str(empty)]) == 2
    assert "has no prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--data", str(images), "--self", "4"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(args + ["--self", "0"]) == 2
    assert "--self 0: choose between 1 and" in capsys.readouterr().err
