"""Running a tab job: the cancel flag, the host's lock and progress, and the live view of a long run.

A long job (Distil, LoRA) runs in a worker thread while the click handler, a generator, yields a `Frame` about once
a second: the progress line (step, it/s, ETA), and the loss curve and newest sample grid from the run folder when
they change. The curve is drawn here from the run's loss.csv, which the engine appends every step (it redraws its
own loss.png only at checkpoints). Generator handlers stream in gradio 3.41 (A1111), 4.40 (Forge) and the latest release alike.
"""

from __future__ import annotations

import csv
import math
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ..errors import SdkdError
from ..hosts.base import FolderHost
from ..progress import Cancelled, Event, ProgressFn
from ..train import LOSS_CSV, PREVIEWS, plot_series

T = TypeVar("T")


class JobControl:
    """The tab's cancel flag, turned into a progress callback that raises `Cancelled` when set."""

    def __init__(self) -> None:
        self._cancel = threading.Event()

    def cancel(self) -> str:
        """Ask the running job to stop at its next progress report."""
        self._cancel.set()
        return "cancelling at the next step..."

    def callback(self, *sinks: Callable[[Event], None]) -> ProgressFn:
        """A progress function that feeds every sink and honours the cancel flag."""
        self._cancel.clear()

        def progress(e: Event) -> None:
            for sink in sinks:
                sink(e)
            if self._cancel.is_set():
                raise Cancelled(f"cancelled at {e.stage} step {e.step}/{e.total}")

        return progress


def clock(seconds: float) -> str:
    """A duration as h:mm:ss or m:ss."""
    s = max(0, int(round(seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def progress_line(e: Event) -> str:
    """One event as the status and the host's progress bar show it: stage, step, loss, it/s and ETA when measured."""
    parts = [f"{e.stage} {e.step}/{e.total}"]
    m = e.metrics
    if "loss" in m:
        parts.append(f"loss {m['loss']:.4g}")
    if m.get("it_s"):
        parts.append(f"{m['it_s']:.3g} it/s")
    if "eta_s" in m:
        parts.append(f"ETA {clock(m['eta_s'])}")
    return " · ".join(parts)


def run_in_host(host: FolderHost, control: JobControl, job: Callable[[ProgressFn], T], gr_progress=None,
                gpu: bool = False, task: str | None = None, sinks: tuple[Callable[[Event], None], ...] = ()) -> T | str:
    """Run `job` as host job `task` (`gpu`: after freeing the host's VRAM) with progress, extra `sinks` and cancel
    wired; errors become a status line for the UI."""
    feed = [host.show_progress, *sinks]
    if gr_progress is not None:
        feed.append(lambda e: gr_progress(e.fraction, desc=progress_line(e)))
    try:
        return host.run_job(lambda: job(control.callback(*feed)), gpu=gpu, task=task or None)
    except Cancelled as e:
        return f"Stopped: {e}"
    except SdkdError as e:
        return f"Error: {e}"
    except Exception as e:  # a UI must report, not crash the host
        traceback.print_exc()
        return f"Unexpected error ({type(e).__name__}): {e}"


@dataclass
class Live:
    """What the page shows of a running job: its latest event, the run folder its loss curve and sample grids go
    to (set by the job once it knows it), and the checkpoint it wrote (set when done)."""

    event: Event | None = None
    run_dir: Path | None = None
    output: Path | None = None

    def __call__(self, e: Event) -> None:
        self.event = e

    def status(self) -> str:
        """The progress line of the latest event."""
        return progress_line(self.event) if self.event else "starting..."

    def loss(self) -> Path | None:
        """The run's loss log, once written."""
        p = self.run_dir / LOSS_CSV if self.run_dir else None
        return p if p is not None and p.is_file() else None

    def samples(self) -> Path | None:
        """The newest sample grid (teacher row beside student row), once written."""
        grids = sorted((self.run_dir / PREVIEWS).glob("step-*.png")) if self.run_dir else []
        return grids[-1] if grids else None


@dataclass
class Frame:
    """One update of the page during a job: the status line, and a new loss curve / sample grid (PIL image) or None
    when unchanged; `done` on the last one."""

    status: str
    loss: object = None
    samples: object = None
    done: bool = False


def loss_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The total loss and each term by step from a loss.csv (columns step, loss, terms..., lr, seconds); a row the
    engine is still writing is skipped."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    terms = columns[1:columns.index("lr")] if "lr" in columns else columns[1:]
    series: dict[str, list[tuple[int, float]]] = {t: [] for t in terms}
    for r in rows:
        try:
            values = [(t, float(r[t])) for t in terms]
            step = int(r["step"])
        except (TypeError, ValueError):
            continue
        for t, v in values:
            if math.isfinite(v):
                series[t].append((step, v))
    return series


def _open(path: Path):
    """An image file as an RGB PIL image, read whole."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class _Changes:
    """Per-frame images: a file's image only when the file is new or changed since the last frame."""

    def __init__(self, scratch: Path):
        self.seen: dict[str, tuple[str, int]] = {}
        self.chart = scratch / "loss.png"

    def _new(self, key: str, path: Path | None) -> bool:
        if path is None:
            return False
        try:
            stamp = (str(path), path.stat().st_mtime_ns)
        except OSError:
            return False
        if self.seen.get(key) == stamp:
            return False
        self.seen[key] = stamp
        return True

    def loss(self, csv_path: Path | None):
        """The loss curve drawn from the log, when the log grew."""
        if not self._new("loss", csv_path):
            return None
        series = loss_series(csv_path)
        if not any(len(s) > 1 for s in series.values()):
            self.seen.pop("loss")  # nothing to draw yet: look again next frame
            return None
        plot_series(series, self.chart, "loss by step (log scale)")
        return _open(self.chart)

    def samples(self, grid: Path | None):
        """The newest sample grid, when a new one is written."""
        if not self._new("samples", grid):
            return None
        try:
            return _open(grid)
        except OSError:  # replaced while read: the next frame reads it
            self.seen.pop("samples")
            return None


def stream(host: FolderHost, control: JobControl, job: Callable[[ProgressFn], str], live: Live, gr_progress=None,
           gpu: bool = False, task: str | None = None, every: float = 1.0) -> Iterator[Frame]:
    """Run `job` in a worker thread and yield a frame every `every` seconds until it ends, then the final one.

    The host's progress bar is fed from this (the handler's) thread: gradio's progress object belongs to it."""
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(run_in_host(host, control, job, None, gpu, task, (live,))),
                              name="sdkd-job", daemon=True)
    worker.start()
    with tempfile.TemporaryDirectory(prefix="sdkd-live-") as scratch:
        changes = _Changes(Path(scratch))
        while worker.is_alive():
            worker.join(every)
            if gr_progress is not None and live.event is not None:
                gr_progress(live.event.fraction, desc=progress_line(live.event))
            if worker.is_alive():
                yield Frame(live.status(), changes.loss(live.loss()), changes.samples(live.samples()))
        yield Frame(result[0] if result else "Unexpected error: the job ended without a result",
                    changes.loss(live.loss()), changes.samples(live.samples()), done=True)
