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
    first = run(teacher_file, out, data, cfg(steps=2, checkpoint_every=1, keep_state=True))
    trained = torch.load(first.run_dir / "state.torch", weights_only=True)["model"]
    assert sum(sampled) == 3, "the teacher samples every prompt once"
    stored = sorted((out.with_suffix(".run") / "cache" / "latents").rglob("*.tensors"))
    assert len(stored) == 3
    before = [p.read_bytes() for p in stored]
    resumed = run(teacher_file, out, data, cfg(steps=4, checkpoint_every=1, keep_state=True), resume=True)
    repeated = run(teacher_file, out, data, cfg(steps=2, checkpoint_every=1, keep_state=True), overwrite=True)
    assert sum(sampled) == 3, "a resumed and a repeated run read the generated set from the cache"
    assert resumed.train.steps == 4 and repeated.train.steps == 2 and first.samples == resumed.samples == 3
    assert [p.read_bytes() for p in stored] == before
    again = torch.load(repeated.run_dir / "state.torch", weights_only=True)["model"]
    assert all(torch.equal(trained[k], again[k]) for k in trained), "the repeated run trains on the same latents"
    run(teacher_file, out, PromptData(data.prompts, guidance=4.0, sample_steps=3), cfg(steps=1), overwrite=True)
    assert sum(sampled) == 6, "other sampler settings are another generated set"


def test_a_data_free_distil_writes_its_student_before_its_preview_and_a_cancel_there_keeps_it(tmp_path, teacher_file):
    """21.1: at the default settings (the end-of-run preview on), the student exists when the preview stage starts;
    cancelling the preview keeps it, complete, and the run folder keeps no training state."""
    from safetensors import safe_open

    from sdkd_ext.progress import Cancelled

    out = tmp_path / "free.safetensors"
    stages, seen = [], []

    def watch(e):
        if not stages or stages[-1] != e.stage:
            stages.append(e.stage)
        if e.stage == "preview":
            seen.append(out.is_file())
            raise Cancelled

    data = PromptData(("a red box", "a blue ball"), guidance=4.0, sample_steps=2)
    r = run(teacher_file, out, data, cfg(steps=2), preview_prompts=None, progress=watch)
    assert seen == [True], "the student is on disk when the preview starts"
    assert stages[-3:] == ["distill", "export", "preview"]
    assert not r.train.cancelled and "cancelled" in r.train.preview_note
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["sdkd_distill_status"] == "complete"
    assert not (r.run_dir / "state.torch").exists() and not (r.run_dir / "cache").exists()
    assert not list((r.run_dir / "previews").glob("*.png"))
