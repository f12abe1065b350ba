"""Data-free distillation: the teacher's generated set is cached, so a resumed or repeated run never regenerates it."""

import torch

from sdkd_ext import distill as distill_module
from sdkd_ext.data import PromptData

from distill_helpers import cfg, one_thread, run  # noqa: F401 (fixture)


def test_generated_set_is_made_once_and_reused_by_resume_and_repeat(monkeypatch, tmp_path, teacher_file):
    sampled = []
    real = distill_module.sample_latents

    def counting(unet, spec, cond, *args, **kw):
        sampled.append(len(cond))
        return real(unet, spec, cond, *args, **kw)

    monkeypatch.setattr(distill_module, "sample_latents", counting)
    data = PromptData(("a red box", "a blue ball", "a green tree"), guidance=4.0, sample_steps=2)
    out = tmp_path / "free"
    first = run(teacher_file, out, data, cfg(steps=2, checkpoint_every=1))
    trained = torch.load(first.run_dir / "state.torch", weights_only=True)["model"]
    assert sum(sampled) == 3, "the teacher samples every prompt once"
    stored = sorted((out.with_suffix(".run") / "cache" / "latents").rglob("*.tensors"))
    assert len(stored) == 3
    before = [p.read_bytes() for p in stored]
    resumed = run(teacher_file, out, data, cfg(steps=4, checkpoint_every=1), resume=True)
    repeated = run(teacher_file, out, data, cfg(steps=2, checkpoint_every=1), overwrite=True)
    assert sum(sampled) == 3, "a resumed and a repeated run read the generated set from the cache"
    assert resumed.train.steps == 4 and repeated.train.steps == 2 and first.samples == resumed.samples == 3
    assert [p.read_bytes() for p in stored] == before
    again = torch.load(repeated.run_dir / "state.torch", weights_only=True)["model"]
    assert all(torch.equal(trained[k], again[k]) for k in trained), "the repeated run trains on the same latents"
    run(teacher_file, out, PromptData(data.prompts, guidance=4.0, sample_steps=3), cfg(steps=1), overwrite=True)
    assert sum(sampled) == 6, "other sampler settings are another generated set"
