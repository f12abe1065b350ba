"""Does the teacher forward cost more inside a KD step than alone? Interleaved rounds, one process, process CPU s.

Each round times the same `KDObjective.teacher_pass` on the same batch five ways: first in an sdkd-order step
(teacher, then the student's forward, backward, clipping, fused AdamW), after the student's forward in a
distill-sd-order step, alone twice in a row (the second timed), alone right after an optimizer step, and the bare
UNet call under no_grad (no feature tap, no autocast context, no casts). Rounds interleave the five, so the
machine's load drifts alike for all; medians after 2 warm-up rounds, as multiples of "alone".

    python benchmarks/teacher_order.py [--variant tiny] [--rounds 40] [--resolution 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="tiny")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from sdkd_ext.checkpoint import open_model, resolve
    from sdkd_ext.detect import describe
    from sdkd_ext.distill import KDObjective, LossWeights, student_model, teacher_model
    from sdkd_ext.train import diffusion_inputs
    from sdkd_ext.variants import get_variant, hook_pairs

    src = open_model(resolve("demo"))
    info = describe(src)
    teacher = teacher_model(src, info, torch.device("cpu"))
    v = get_variant(a.variant)
    student, _ = student_model(src, info, v)
    obj = KDObjective(teacher, hook_pairs(v, info.topology), LossWeights())
    obj.student_tap.attach(student)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(a.batch, 4, a.resolution // 8, a.resolution // 8, generator=g)
    text = torch.randn(a.batch, 77, info.topology.context_dim, generator=g)
    noisy, t, noise = diffusion_inputs(latents, list(range(a.batch)), obj.scheduler)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)
    student.train()
    times: dict[str, list[float]] = {k: [] for k in ("sdkd order", "student first", "alone", "after optimizer", "bare UNet")}

    def timed(key: str, fn: Callable):
        c = time.process_time()
        out = fn()
        times[key].append(time.process_time() - c)
        return out

    def student_forward():
        with obj.student_tap.capture() as feats:
            return student(noisy, t, encoder_hidden_states=text).sample.float(), dict(feats)

    def finish(s_eps, s_feats, t_eps, t_feats) -> None:
        loss = F.mse_loss(s_eps, noise) + F.mse_loss(s_eps, t_eps) + sum(
            F.mse_loss(s_feats[sn].float(), t_feats[tn]) for tn, sn in obj.pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    teacher_pass = lambda: obj.teacher_pass(noisy, t, text)  # noqa: E731
    for _ in range(a.rounds):
        t_out = timed("sdkd order", teacher_pass)
        finish(*student_forward(), *t_out)
        s_out = student_forward()
        finish(*s_out, *timed("student first", teacher_pass))
        teacher_pass()
        timed("alone", teacher_pass)
        with torch.no_grad():
            timed("bare UNet", lambda: teacher(noisy, t, encoder_hidden_states=text))
        finish(*student_forward(), *t_out)
        timed("after optimizer", teacher_pass)
    base = statistics.median(times["alone"][2:])
    print(f"teacher forward, demo teacher, {a.variant} student, {a.resolution} px, batch {a.batch}, {a.rounds} rounds, "
          f"{a.threads} thread(s); process CPU s, median")
    for k, v in times.items():
        m = statistics.median(v[2:])
        print(f"{k:<18}{m:.5f}  x{m / base:.3f}")


if __name__ == "__main__":
    main()
