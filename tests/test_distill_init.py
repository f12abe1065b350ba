"""`sdkd distill --init`: the KD run starts from the given student's weights exactly, not from the pruned teacher."""

from pathlib import Path

import pytest
import torch

import sdkd_ext.distill as distill_module
from sdkd_ext.checkpoint import open_model
from sdkd_ext.cli import main
from sdkd_ext.configs import topology_from_diffusers
from sdkd_ext.convert import UNET, unet_map
from sdkd_ext.data import FolderData
from sdkd_ext.tiny import save

from distill_helpers import images, metadata, one_thread, run, unet_of  # noqa: F401 (fixtures)


class Started(Exception):
    """Raised in place of training, carrying the model the engine was handed."""


@pytest.fixture(scope="module")
def init_file(students, tmp_path_factory) -> Path:
    """A tiny student that is not the pruned teacher (as a rebased or public one would be)."""
    g = torch.Generator().manual_seed(3)
    tensors = unet_of(students["tiny"].checkpoint)
    src = open_model(students["tiny"].checkpoint)
    full = {k: src.get(k) for k in src.keys()}
    full.update({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in tensors.items()})
    return save(full, tmp_path_factory.mktemp("init") / "rebased-tiny.safetensors")


def started_model(monkeypatch, teacher_file, out, data, **kw) -> dict[str, torch.Tensor]:
    """The student state the training loop receives, LDM-named."""
    def capture(objective, model, *a, **k):
        raise Started(model)

    monkeypatch.setattr(distill_module, "run_training", capture)
    with pytest.raises(Started) as caught:
        run(teacher_file, out, data, **kw)
    model = caught.value.args[0]
    pmap = unet_map(topology_from_diffusers(dict(model.config)))
    return {UNET + pmap.to_ldm(k): v for k, v in model.state_dict().items()}


def test_init_starts_from_the_given_weights_exactly(monkeypatch, teacher_file, students, init_file, images, tmp_path):
    data = FolderData(images)
    want = unet_of(init_file)
    got = started_model(monkeypatch, teacher_file, tmp_path / "a", data, init=init_file)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].float()) for k in want)
    pruned = started_model(monkeypatch, teacher_file, tmp_path / "b", data)  # without --init: the pruned teacher
    assert not all(torch.equal(pruned[k], want[k]) for k in want)
    assert all(torch.equal(pruned[k], v) for k, v in unet_of(students["tiny"].checkpoint).items())


def test_cli_init_runs_and_records_it(teacher_file, students, init_file, images, tmp_path, capsys):
    out = tmp_path / "polished"
    args = ["distill", str(teacher_file), "--variant", "tiny", "--data", str(images), "--steps", "2", "--batch", "2",
            "--resolution", "64", "--dtype", "fp32", "--device", "cpu", "--no-preview", "--lr", "1e-6", "--out", str(out)]
    assert main([*args, "--init", str(init_file)]) == 0
    meta = metadata(out.with_suffix(".safetensors"))
    assert meta["sdkd_distill_init"] == init_file.name
    got, start, pruned = unet_of(out.with_suffix(".safetensors")), unet_of(init_file), unet_of(students["tiny"].checkpoint)
    dist = lambda a: sum(float((got[k] - a[k]).square().sum()) for k in got)  # noqa: E731
    assert dist(start) < dist(pruned) / 100
    # refusals: a student of another variant, a full model
    assert main([*args, "--overwrite", "--init", str(students["small"].checkpoint)]) == 2
    assert "--variant small" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--init", str(teacher_file)]) == 2
    assert "full SD1.x checkpoint" in capsys.readouterr().err
