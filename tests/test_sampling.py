"""sdkd's own sampling loop: seeded per sample (LCM's re-noising included), one UNet pass at cfg 1, checked settings."""

import pytest
import torch

from sdkd_ext.data import seeded_randn
from sdkd_ext.errors import SdkdError
from sdkd_ext.pipeline import load_pipeline
from sdkd_ext.sampling import Flags, Sampler, sample_latents, sampler, scheduler_for

PROMPTS = ["a red box", "a tree", "a blue ball"]
SEEDS = [11, 22, 33]


@pytest.fixture(scope="module")
def model(teacher_file):
    """The small teacher's pipeline and the text embeddings of PROMPTS and of the empty prompt."""
    pipe = load_pipeline(teacher_file).pipe
    with torch.no_grad():
        cond, uncond = (pipe.encode_prompt(p, "cpu", 1, False)[0] for p in (PROMPTS, [""]))
    return pipe, cond, uncond


def test_lcm_is_seeded_per_sample_whatever_the_batch(model):
    """4 LCM steps re-noise three times; each sample's noise comes from its seed, not from its batch."""
    pipe, cond, uncond = model
    lcm = Sampler("lcm", 4, 1.0)
    whole = sample_latents(pipe.unet, lcm, cond, uncond, SEEDS, 8)
    assert torch.equal(whole, sample_latents(pipe.unet, lcm, cond, uncond, SEEDS, 8))
    alone = sample_latents(pipe.unet, lcm, cond[1:2], uncond, SEEDS[1:2], 8)
    reordered = sample_latents(pipe.unet, lcm, cond[[2, 0]], uncond, [SEEDS[2], SEEDS[0]], 8)
    for got, want in ((alone[0], whole[1]), (reordered[0], whole[2]), (reordered[1], whole[0])):
        assert ((got - want).norm() / want.norm()).item() < 1e-5  # batched float32 kernels round a little differently
    other = sample_latents(pipe.unet, lcm, cond[1:2], uncond, [SEEDS[1] + 1], 8)
    assert ((other[0] - whole[1]).norm() / whole[1].norm()).item() > 0.1, "another seed draws another image"


def test_lcm_step_noise_is_seeded_too(model):
    """Two samples with the same starting noise but different seeds part at LCM's re-noising, not before."""
    pipe, cond, uncond = model
    one, four = Sampler("lcm", 1, 1.0), Sampler("lcm", 4, 1.0)
    c = cond[:1].expand(2, -1, -1)
    base = sample_latents(pipe.unet, four, c, uncond, [5, 6], 8)
    assert not torch.allclose(base[0], base[1], rtol=1e-3)
    # one step injects no noise: the same seed in two rows gives the same rows
    same = sample_latents(pipe.unet, one, c, uncond, [5, 5], 8)
    assert ((same[0] - same[1]).norm() / same[0].norm()).item() < 1e-5


def _unet_rows(unet):
    """A hook recording the batch size of every UNet call, and its handle."""
    rows: list[int] = []
    return rows, unet.register_forward_pre_hook(lambda m, args, kwargs: rows.append(args[0].shape[0]), with_kwargs=True)


@pytest.mark.parametrize("name", ["lcm", "euler"])
def test_guidance_1_runs_the_unet_once_per_step_on_the_batch(model, name):
    pipe, cond, uncond = model
    rows, handle = _unet_rows(pipe.unet)
    try:
        sample_latents(pipe.unet, Sampler(name, 4, 1.0), cond, uncond, SEEDS, 8)
        plain = list(rows)
        rows.clear()
        sample_latents(pipe.unet, Sampler(name, 4, 7.5), cond, uncond, SEEDS, 8)
    finally:
        handle.remove()
    assert plain == [3] * 4, "cfg 1: the conditional pass alone"
    assert rows == [6] * 4, "cfg 7.5: conditional and unconditional in one doubled batch"


@pytest.mark.parametrize("spec", [Sampler("euler", 4, 5.0), Sampler("ddim", 4, 5.0), Sampler("lcm", 1, 1.0),
                                  Sampler("dpmpp_2m", 4, 5.0)], ids=lambda s: s.name)
def test_the_loop_is_diffusers_text_to_image(model, spec):
    """Same scheduler, same starting noise: the loop gives diffusers' pipeline's latents (LCM at 1 step, where it
    injects no noise; at more steps the pipeline's noise stream is not per sample)."""
    pipe, cond, uncond = model
    ours = sample_latents(pipe.unet, spec, cond, uncond, SEEDS, 8)
    pipe.scheduler = scheduler_for(spec)
    with torch.no_grad():
        ref = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond.expand(3, -1, -1), num_inference_steps=spec.steps,
                   guidance_scale=spec.guidance, height=64, width=64, output_type="latent",
                   latents=seeded_randn(SEEDS, (4, 8, 8))).images  # the pipeline scales them by init_noise_sigma
    assert ((ours - ref).norm() / ref.norm()).item() < 2e-5


def test_schedules_match_the_hosts():
    """LCM: diffusers' LCMScheduler for lcm-lora-sdv1-5, 4 of the 50 original steps (ComfyUI's lcm + simple);
    Euler linearly spaced to 0 (A1111's Euler); DDIM leading with offset 1 (A1111's DDIM)."""
    def timesteps(name: str, steps: int) -> list[int]:
        s = scheduler_for(Sampler(name, steps, 1.0))
        s.set_timesteps(steps)
        return [round(float(t)) for t in s.timesteps]

    assert timesteps("lcm", 4) == [999, 759, 499, 259]
    assert timesteps("lcm", 50) == list(range(999, 0, -20))
    assert timesteps("euler", 4) == [999, 666, 333, 0]
    assert timesteps("ddim", 4) == [751, 501, 251, 1]


@pytest.mark.parametrize("bad, flag", [(dict(name="lcm", steps=0), "--steps 0"), (dict(name="euler", steps=51), "--steps 51"),
                                       (dict(name="dpm", steps=4), "--sampler dpm"),
                                       (dict(name="lcm", steps=4, guidance=0.5), "--guidance 0.5")])
def test_bad_settings_are_refused_naming_the_flag(bad, flag):
    with pytest.raises(SdkdError, match="^" + flag):
        Sampler(**bad)


def test_errors_name_the_front_ends_settings():
    with pytest.raises(SdkdError, match="^--reference-steps 60: choose between 1 and 50"):
        sampler("euler", 60, 7.5, Flags(steps="--reference-steps"))
    assert sampler("lcm", 50, 1.0) == Sampler("lcm", 50, 1.0)
