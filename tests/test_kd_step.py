"""The optimised KD step (no_grad teacher taps, hooks attached once, fused AdamW, train mode set once, cached
entries kept in memory) against a straightforward reference: same losses, gradients and weights to fp32 tolerance."""

import copy

import pytest
import torch

from sdkd_ext.cache import LATENT_KIND, TEXT_KIND, Cache, CachedDataset
from sdkd_ext.checkpoint import open_model
from sdkd_ext.data import derive_seed, seeded_randn
from sdkd_ext.detect import describe
from sdkd_ext.distill import KDObjective, LossWeights, student_model, teacher_model
from sdkd_ext.train import LOSS_CSV, Run, TrainConfig, collate, make_optimizer, micro_batch, run_training
from sdkd_ext.variants import get_variant, hook_pairs

from distill_helpers import CPU, one_thread  # noqa: F401 (autouse fixture)

STEPS = 3


@pytest.fixture(scope="module")
def models(teacher_file):
    src = open_model(teacher_file)
    info = describe(src)
    return src, info, teacher_model(src, info, CPU)


class Noise:
    """Seeded random latents (4x8x8) and text embeddings (77x32)."""

    def __len__(self):
        return 4

    def get(self, index, seed):
        g = torch.Generator().manual_seed(derive_seed(index, seed))
        return {"latents": torch.randn(4, 8, 8, generator=g), "text": torch.randn(77, 32, generator=g)}


def reference_terms(teacher, student, pairs, batch):
    """The three terms by hand, with autograd: DDPM noising from the betas, hooks that clone, plain squared means."""
    seeds = batch["seed"].tolist()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)[torch.tensor([derive_seed(s, "timestep") % 1000 for s in seeds])].float()
    t = torch.tensor([derive_seed(s, "timestep") % 1000 for s in seeds])
    noise = seeded_randn([derive_seed(s, "noise") for s in seeds], (4, 8, 8))
    noisy = a.sqrt()[:, None, None, None] * batch["latents"] + (1 - a).sqrt()[:, None, None, None] * noise
    feats = {}
    hooks = [m.get_submodule(n).register_forward_hook(
        lambda mod, i, o, key=(side, n): feats.__setitem__(key, (o[0] if isinstance(o, tuple) else o).clone()))
        for side, m in (("t", teacher), ("s", student)) for n in {p[0 if side == "t" else 1] for p in pairs}]
    try:
        with torch.no_grad():
            t_eps = teacher(noisy, t, encoder_hidden_states=batch["text"]).sample.clone()
        s_eps = student(noisy, t, encoder_hidden_states=batch["text"]).sample
    finally:
        for h in hooks:
            h.remove()
    mse = lambda x, y: ((x - y) ** 2).mean()  # noqa: E731
    return {"task": mse(s_eps, noise), "output_kd": mse(s_eps, t_eps),
            "feature_kd": sum(mse(feats[("s", sn)], feats[("t", tn)]) for tn, sn in pairs)}


def reference_run(teacher, student, pairs, cfg):
    """`STEPS` steps of the plainest loop: per-tensor AdamW, clipping, train mode every step; the losses per step."""
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, fused=False)
    losses = []
    for step in range(1, STEPS + 1):
        student.train()
        batch = collate(Noise(), micro_batch(len(Noise()), cfg, step, 0, 1, 0), CPU)
        terms = reference_terms(teacher, student, pairs, batch)
        total = sum(terms.values())
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total.detach()))
    return losses


@pytest.mark.parametrize("variant", ["tiny", "base"])
def test_training_steps_match_the_plain_reference_loop(models, variant, tmp_path):
    src, info, teacher = models
    pairs = hook_pairs(get_variant(variant), info.topology)
    student, _ = student_model(src, info, get_variant(variant))
    with torch.no_grad():  # a student unlike its teacher, so every term and gradient is non-zero
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    twin, start = copy.deepcopy(student), torch.cat([p.detach().flatten() for p in student.parameters()])
    cfg = TrainConfig(steps=STEPS, batch=2, lr=1e-4, max_grad_norm=0.05, device="cpu", checkpoint_every=100)
    run_training(KDObjective(teacher, pairs, LossWeights()), student, Noise(), cfg, Run(tmp_path, {}))
    want = reference_run(teacher, twin, pairs, cfg)
    rows = (tmp_path / LOSS_CSV).read_text().splitlines()[1:]
    got = [float(r.split(",")[1]) for r in rows]
    assert got == pytest.approx(want, rel=1e-5)
    assert got[-1] != pytest.approx(got[0], rel=1e-4), "the steps moved the student"
    # Adam's updates are near lr in size whatever the gradient, so compare the updates: fp32 rounding only
    moved = torch.cat([p.detach().flatten() for p in student.parameters()]) - start
    want_moved = torch.cat([q.detach().flatten() for q in twin.parameters()]) - start
    assert (moved - want_moved).norm() <= 1e-3 * want_moved.norm()
    assert want_moved.norm() > 0.05 * cfg.lr * want_moved.numel() ** 0.5, "the steps moved the weights"


def test_one_step_gradients_equal_the_reference_and_hooks_follow_a_new_model(models):
    src, info, teacher = models
    pairs = hook_pairs(get_variant("tiny"), info.topology)
    first, _ = student_model(src, info, get_variant("tiny"))
    objective = KDObjective(teacher, pairs, LossWeights())
    batch = collate(Noise(), [(0, 11), (1, 12)], CPU)
    objective(first, batch)
    second, _ = student_model(src, info, get_variant("tiny"))
    with torch.no_grad():
        for p in second.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    mirror = copy.deepcopy(second)
    got = objective(second, batch)  # the tap must leave `first` and hook `second`, once
    assert not any(first.get_submodule(s)._forward_hooks for _, s in pairs), "hooks left on the old model"
    assert all(len(second.get_submodule(s)._forward_hooks) == 1 for _, s in pairs)
    sum(got.values()).backward()
    want = reference_terms(teacher, mirror, pairs, batch)
    sum(want.values()).backward()
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5), k
    scale = torch.cat([q.grad.flatten() for q in mirror.parameters()]).norm()
    for (name, p), q in zip(second.named_parameters(), mirror.parameters()):  # (biases before a norm get ~0: the floor)
        assert p.grad is not None and (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm() + 1e-6 * scale, name
    assert all(p.grad is None for p in teacher.parameters())


def test_cpu_optimizer_is_fused_and_steps_like_per_tensor_adamw():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(n)) for n in (3, 50, 7)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fast = make_optimizer(a, TrainConfig(optimizer="adamw", lr=1e-2), CPU)
    plain = torch.optim.AdamW(b, lr=1e-2, weight_decay=TrainConfig().weight_decay, foreach=False)
    assert fast.defaults["fused"] is True
    start = [p.detach().clone() for p in a]
    for step in range(5):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape) * (step + 1)
            q.grad = p.grad.clone()
        fast.step(), plain.step()
    for p, q, p0 in zip(a, b, start):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
        assert (p - p0).abs().min() > 1e-4, "every weight moved"


def test_training_mode_holds_every_step_even_after_a_preview_that_leaves_eval(models, tmp_path):
    class Probe:
        weights = {"fit": 1.0}
        modes: list[bool] = []

        def __call__(self, model, batch):
            self.modes.append(model.training and all(m.training for m in model.modules()))
            return {"fit": model(batch["x"]).square().mean()}

    class Xs:
        def __len__(self):
            return 3

        def get(self, index, seed):
            return {"x": torch.full((4,), float(index))}

    probe = Probe()
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.0), torch.nn.Linear(4, 1))
    cfg = TrainConfig(steps=4, batch=1, device="cpu", preview_every=1, checkpoint_every=100)
    run_training(probe, net, Xs(), cfg, Run(tmp_path, {}), preview=lambda m, step, path: m.eval())
    assert probe.modes == [True] * 4


def test_cached_dataset_keeps_read_entries_in_memory_within_its_budget(tmp_path):
    cache = Cache(tmp_path)
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        cache.save(LATENT_KIND, f"l{i}", {"mean": torch.randn(4, 8, 8, generator=g), "std": torch.rand(4, 8, 8, generator=g)})
        cache.save(TEXT_KIND, f"t{i}", {"text": torch.randn(77, 32, generator=g)})
    items = [((f"l{i}",), f"t{i}") for i in range(3)]
    memo, plain = CachedDataset(cache, items, 0.5), CachedDataset(cache, items, 0.5, memo_bytes=0)
    first = [memo.get(i, 100 + i) for i in range(3)]
    for i, sample in enumerate(first):
        want = plain.get(i, 100 + i)
        assert all(torch.equal(sample[k], want[k]) for k in ("latents", "text"))
    for f in tmp_path.rglob("*.tensors"):
        f.unlink()
    again = memo.get(2, 102)  # from memory: the files are gone
    assert torch.equal(again["latents"], first[2]["latents"]) and torch.equal(again["text"], first[2]["text"])
    assert not torch.equal(memo.get(2, 7)["latents"], again["latents"]), "a new seed draws a new posterior sample"
    with pytest.raises(Exception):
        plain.get(0, 100)  # no memory budget: it reads the file every time
