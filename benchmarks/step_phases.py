"""Phase marks inside `train.run_training`'s KD steps (data, teacher forward, student forward, backward, optimizer),
for the benchmarks: patches that note when each phase begins, on three clocks (the profiler's, process CPU, wall)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator
from unittest import mock

import torch

PHASES = ("data", "teacher forward", "student forward", "backward", "optimizer", "other")


class StepPhases:
    """When each phase of each step began: (profiler ns, process CPU s, wall s, phase); "other" is the loop's own
    bookkeeping after the optimizer step (loss log, progress, zero_grad)."""

    def __init__(self):
        self.marks: list[tuple[int, float, float, str]] = []

    def mark(self, phase: str) -> None:
        self.marks.append((time.time_ns(), time.process_time(), time.perf_counter(), phase))

    @contextlib.contextmanager
    def patched(self) -> Iterator["StepPhases"]:
        """Within the block, `run_training` with a `KDObjective` marks its phases here."""
        from sdkd_ext import train
        from sdkd_ext.distill import KDObjective

        collate, teacher_pass, call = train.collate, KDObjective.teacher_pass, KDObjective.__call__
        backward, make_optimizer = torch.Tensor.backward, train.make_optimizer

        def marked_collate(*args):
            self.mark("data")
            return collate(*args)

        def marked_teacher(obj, *args):
            self.mark("teacher forward")
            out = teacher_pass(obj, *args)
            self.mark("student forward")
            return out

        def marked_call(obj, *args):
            self.mark("student forward")
            return call(obj, *args)

        def marked_backward(t, *args, **kwargs):
            self.mark("backward")
            backward(t, *args, **kwargs)
            self.mark("optimizer")

        def marked_optimizer(*args):
            opt = make_optimizer(*args)
            opt.register_step_post_hook(lambda *_: self.mark("other"))
            return opt

        with mock.patch.object(train, "collate", marked_collate), \
                mock.patch.object(KDObjective, "teacher_pass", marked_teacher), \
                mock.patch.object(KDObjective, "__call__", marked_call), \
                mock.patch.object(torch.Tensor, "backward", marked_backward), \
                mock.patch.object(train, "make_optimizer", marked_optimizer):
            yield self
        self.mark("end")

    def steps(self, clock: int = 1) -> list[dict[str, float]]:
        """Seconds per phase of each step (a step begins at its data phase); clock 1: process CPU, 2: wall."""
        out: list[dict[str, float]] = []
        for here, after in zip(self.marks, self.marks[1:]):
            if here[3] == "data":
                out.append(dict.fromkeys(PHASES, 0.0))
            if out and here[3] in PHASES:
                out[-1][here[3]] += after[clock] - here[clock]
        return out
