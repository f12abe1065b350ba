"""The memory planner: its counts match real models, its choices fit and keep the global batch, the CLI reports."""

import pytest
import torch

from sdkd_ext.cli import main
from sdkd_ext.plan import GIB, Settings, choose, estimate, fit, kd_estimator, trace, unet_params
from sdkd_ext.tiny import make_unet, unet_topology
from sdkd_ext.variants import SD15, VARIANTS, get_variant
from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)

TINY_TEACHER = unet_topology(32, 32)



@pytest.mark.parametrize("variant", list(VARIANTS))
def test_counts_match_a_real_forward_pass(variant):
    topo = get_variant(variant).student(TINY_TEACHER)
    unet = make_unet(topo).train()
    assert unet_params(topo) == sum(p.numel() for p in unet.parameters())
    params = {id(p) for p in unet.parameters()}
    saved = {}

    def pack(t):
        base = t._base if t._base is not None else t
        if id(t) not in params and id(base) not in params:
            saved[id(t)] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, 32))
    real = sum(t.numel() * t.element_size() for t in saved.values())
    traced = trace(topo, 16)
    assert traced.saved() == real, "the fake-tensor trace saves what a real CPU forward saves"
    assert 0 < traced.checkpointed() < traced.saved() / 2
    assert trace(topo, 32).saved() > 3.5 * traced.saved(), "activations grow with the latent area"
    assert sum(n for kind, n, _ in traced.events if kind == "grad") == 4 * unet_params(topo)

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, 32))
    half = sum(t.numel() * t.element_size() for t in saved.values())
    assert trace(topo, 16, (), "cpu").saved() == pytest.approx(half, rel=0.01), "under CPU autocast: 16-bit activations, weight copies"
    assert trace(topo, 16, (), "cuda").saved() > half, "CUDA's autocast keeps norms in fp32"
    assert trace(topo, 16, (), "cpu", frozen_half=True).saved() < half - unet_params(topo), "16-bit weights: no copies"
    autocast = trace(topo, 16, (), "cpu")
    copies = sum(n for kind, n, _ in autocast.events if kind == "copy")
    assert copies == pytest.approx(2 * unet_params(topo), rel=0.05), "each weight's 16-bit copy is found as one"
    assert autocast.saved(2) == pytest.approx(2 * autocast.saved() - copies), "weight copies do not grow with the batch"


def test_estimate_parts_follow_the_settings():
    plain = estimate(get_variant("base"), 512, Settings())
    p = unet_params(get_variant("base").student(SD15))
    assert plain.parts["student (fp32)"] == plain.parts["gradients"] == 4 * p
    assert plain.parts["optimiser"] == 8 * p and plain.parts["teacher (frozen)"] == 2 * unet_params(SD15)
    lean = estimate(get_variant("base"), 512, Settings(grad_checkpointing=True, optimizer="adamw8bit"))
    assert lean.parts["optimiser"] == pytest.approx(2.03 * p, rel=1e-3) and lean.parts["activations"] < plain.parts["activations"]
    big = estimate(get_variant("base"), 512, Settings(batch=4)).parts["activations"]
    assert big > 3.5 * plain.parts["activations"], "at batch 4 the saved activations outgrow the gradients"
    assert estimate(get_variant("base"), 512, Settings(batch=4, grad_checkpointing=True)).parts["activations"] < big / 3
    assert estimate(get_variant("base"), 512, Settings(device="cpu", precision="fp32")).parts["teacher (frozen)"] == 4 * unet_params(SD15)
    assert estimate(get_variant("base"), 512, Settings(ema=True)).training == pytest.approx(plain.training + 4 * p)


@pytest.mark.parametrize("variant,vram", [("tiny", 8), ("small", 12), ("base", 12)])
def test_issue_targets_fit_at_sd15_size(variant, vram):
    best = choose(kd_estimator(get_variant(variant), 512), 1, vram)
    assert best is not None and best.fits(vram * GIB)
    print(f"{variant} 512px batch 1 in {vram} GiB: {best.settings.describe()}, est. {best.peak / GIB:.2f} GiB")


def test_choice_keeps_the_global_batch_and_prefers_no_checkpointing():
    roomy = choose(kd_estimator(get_variant("tiny"), 512), 4, 80)
    assert roomy.settings == Settings(batch=4, accum=1)
    tight = choose(kd_estimator(get_variant("base"), 512), 8, 12)
    assert tight.settings.batch * tight.settings.accum == 8 and tight.settings.grad_checkpointing
    assert tight.fits(12 * GIB) and not estimate(get_variant("base"), 512, Settings(batch=8)).fits(12 * GIB)
    with_ema = choose(kd_estimator(get_variant("base"), 512), 1, 12, ema=True)
    assert choose(kd_estimator(get_variant("small"), 512), 1, 12, ema=True).settings.ema, "EMA is kept where it fits"
    assert with_ema is not None and not with_ema.settings.ema, "EMA is dropped when it does not fit"
    assert choose(kd_estimator(get_variant("base"), 512), 1, 4) is None


def test_plan_cli(capsys):
    assert main(["plan", "--variant", "tiny", "--resolution", "512", "--vram", "8"]) == 0
    out = capsys.readouterr().out
    assert "teacher 859,520,964, student 323,384,964" in out and "fits in 8 GiB" in out and "optimiser" in out
    assert main(["plan", "--variant", "base", "--vram", "4", "--optimizer", "adamw"]) == 2
    assert "does not fit in 4 GiB" in capsys.readouterr().out
    assert main(["plan", "--variant", "tiny", "--resolution", "500"]) == 2
    assert "multiple of 64" in capsys.readouterr().err


def test_vram_setting_applies_the_plan():
    from sdkd_ext.errors import SdkdError
    from sdkd_ext.train import TrainConfig

    notes = []
    cfg = TrainConfig(batch=8, precision="fp16", optimizer="adamw")
    base = kd_estimator(get_variant("base"), 512)
    planned = fit(cfg, 12, torch.device("cuda"), base, notes.append, "base")
    assert planned.batch * planned.accum == 8 and planned.grad_checkpointing and "memory plan for 12 GiB" in notes[0]
    assert planned.lr == cfg.lr and planned.steps == cfg.steps
    assert fit(cfg, "auto", torch.device("cpu"), base, notes.append, "base") is cfg and "no CUDA GPU" in notes[-1]
    assert fit(cfg, None, torch.device("cuda"), base, notes.append, "base") is cfg
    with pytest.raises(SdkdError, match="no settings that fit 3 GiB for base"):
        fit(cfg, 3, torch.device("cuda"), base, notes.append, "base")


def test_training_parts_for_a_partly_trainable_model():
    """What LoRA training shares: a frozen 16-bit model with a few trainable fp32 parameters."""
    from sdkd_ext.plan import training_parts

    full = training_parts(SD15, 512, Settings())
    lora = training_parts(SD15, 512, Settings(), trainable=10**6)
    p = unet_params(SD15)
    assert full["model (fp32)"] == 4 * p and lora["model (frozen)"] == 2 * p and lora["trainable (fp32)"] == 4e6
    assert lora["gradients"] == 4e6 and lora["optimiser"] == 8e6
    saved = trace(SD15, 64, (), "cuda", frozen_half=True).saved()
    assert saved < lora["activations"] < full["activations"] + full["gradients"], \
        "gradients flow through the whole UNet, but its 16-bit weights need no autocast copies"
