"""One progress/cancellation protocol for every long job: the CLI, the gradio tab and ComfyUI all consume it.

A job calls `report(progress, ...)` at each step. The host's callback shows the event and may
raise `Cancelled` (or its own interrupt exception) to stop the job at that point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Event:
    """One progress report: which stage, how far, and any figures worth showing."""

    stage: str
    step: int
    total: int
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Completed share of the stage, 0..1."""
        return self.step / self.total if self.total else 0.0


ProgressFn = Callable[[Event], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop the job; jobs leave usable output where they can."""


def report(progress: ProgressFn | None, stage: str, step: int, total: int, message: str = "", **metrics: float) -> None:
    """Send one event to `progress`, if there is a listener."""
    if progress is not None:
        progress(Event(stage, step, total, message, metrics))


class Meter:
    """One stage of a job: each `advance` reports the stage's name, count so far, rate and ETA (at the rate so far)."""

    def __init__(self, progress: ProgressFn | None, stage: str, total: int, done: int = 0):
        self.progress, self.stage, self.total, self.done, self.first = progress, stage, total, done, done
        self.began = time.perf_counter()

    def start(self, message: str = "") -> None:
        """Announce the stage (count 0 of its total) before its first unit of work."""
        report(self.progress, self.stage, self.done, self.total, message)

    def advance(self, n: int = 1, message: str = "", **metrics: float) -> None:
        """Count `n` more units done and report."""
        self.done = min(self.total, self.done + n)
        elapsed = time.perf_counter() - self.began
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        timing = {"it_s": rate, "eta_s": (self.total - self.done) / rate} if rate > 0 else {}
        report(self.progress, self.stage, self.done, self.total, message, **metrics, **timing)


TQDM_OWN = ("it_s", "eta_s")  # figures a tqdm bar shows by itself


def tqdm_progress() -> ProgressFn:
    """A callback that draws one tqdm bar per stage on stderr (the CLI's view); tqdm throttles redraws."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def show(e: Event) -> None:
        bar = bars.get(e.stage)
        if bar is None:
            bar = bars[e.stage] = tqdm(total=e.total, desc=e.stage, leave=False, dynamic_ncols=True, mininterval=0.5)
        shown = {k: f"{v:.4g}" for k, v in e.metrics.items() if k not in TQDM_OWN}
        if shown:
            bar.set_postfix(shown, refresh=False)
        bar.update(e.step - bar.n)
        if e.step >= e.total:
            bar.close()
            del bars[e.stage]

    return show
