"""The generic training loop on a toy objective: batch layout, cancel, resume refusal, non-finite and full-disk stops."""

import resource
import signal

import pytest
import torch

from sdkd_ext.errors import SdkdError
from sdkd_ext.progress import Cancelled, report
from sdkd_ext.train import STATE_FILE, Run, TrainConfig, micro_batch, run_training
from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)



class Points:
    """A toy dataset: fixed inputs, targets from a fixed linear map, a little seeded noise per draw."""

    def __init__(self, n=10):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 3, generator=g)

    def __len__(self):
        return len(self.x)

    def get(self, index, seed):
        noise = torch.randn(3, generator=torch.Generator().manual_seed(seed)) * 0.01
        return {"x": self.x[index], "y": self.y[index] + noise}


class Fit:
    """A toy objective with two terms; from call `bad_from` on, the 'smooth' term is NaN."""

    weights = {"fit": 1.0, "smooth": 0.1}

    def __init__(self, bad_from=None):
        self.calls, self.bad_from = 0, bad_from

    def __call__(self, model, batch):
        self.calls += 1
        out = model(batch["x"])
        smooth = out.square().mean()
        if self.bad_from is not None and self.calls >= self.bad_from:
            smooth = smooth * float("nan")
        return {"fit": torch.nn.functional.mse_loss(out, batch["y"]), "smooth": smooth}


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 3)


CFG = dict(batch=2, lr=0.05, device="cpu", checkpoint_every=3)


def test_global_batch_layout_is_the_same_for_any_process_count():
    cfg = lambda b, a: TrainConfig(batch=b, accum=a, seed=3)  # noqa: E731
    for step in (1, 2, 7):
        one = micro_batch(5, cfg(4, 1), step, 0, 1, 0)
        accumulated = [p for m in range(2) for p in micro_batch(5, cfg(2, 2), step, m, 1, 0)]
        two_procs = [p for m in range(2) for r in range(2) for p in micro_batch(5, cfg(1, 2), step, m, 2, r)]
        assert one == accumulated == two_procs
    epoch = [i for s in (1, 2) for i, _ in micro_batch(6, cfg(3, 1), s, 0, 1, 0)]
    assert sorted(epoch) == list(range(6)), "one epoch visits every sample once"


def test_cancel_exports_and_leaves_a_resumable_state(tmp_path):
    exported = []

    def stop_at_4(e):
        if e.step == 4:
            raise Cancelled

    r = run_training(Fit(), model(), Points(), TrainConfig(steps=10, **CFG), Run(tmp_path, {"data": "a"}),
                     progress=stop_at_4, on_export=lambda m, res: exported.append((res.steps, m.weight.clone())) or "ok")
    assert r.cancelled and r.steps == 4 and r.exported == "ok"
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 4
    resumed = run_training(Fit(), model(), Points(), TrainConfig(steps=6, keep_state=True, **CFG),
                           Run(tmp_path, {"data": "a"}, resume=True))
    assert resumed.steps == 6 and not resumed.cancelled
    straight = model()
    run_training(Fit(), straight, Points(), TrainConfig(steps=6, **CFG), Run(tmp_path / "b", {"data": "a"}))
    assert torch.equal(straight.weight, torch.load(tmp_path / STATE_FILE, weights_only=True)["model"]["weight"])


def test_cancel_renders_no_preview_and_keeps_the_periodic_ones(tmp_path):
    """A cancel must return fast: the export happens, the periodic previews so far stay, none is rendered for the cancel."""
    shown, exported = [], []

    def preview(m, step, path):
        shown.append(step)
        path.write_bytes(b"png")

    def stop_at_5(e):
        if e.step == 5:
            raise Cancelled

    r = run_training(Fit(), model(), Points(), TrainConfig(steps=10, preview_every=2, **CFG), Run(tmp_path, {}),
                     progress=stop_at_5, preview=preview, on_export=lambda m, res: exported.append(res.steps))
    assert r.cancelled and exported == [5]
    assert shown == [2, 4], "a cancelled run renders no end-of-run preview"
    assert r.kept[STATE_FILE] > 0 and not r.preview_note
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step-000002.png", "step-000004.png"]
    shown.clear()
    done = run_training(Fit(), model(), Points(), TrainConfig(steps=3, **CFG), Run(tmp_path / "b", {}), preview=preview)
    assert not done.cancelled and shown == [3], "a run that ends normally renders its end-of-run preview"


def test_the_export_comes_before_the_final_preview_which_is_its_own_cancellable_stage(tmp_path):
    """21.1: the student is written before anything optional; a cancel during the final preview keeps it."""
    order = []

    def preview(m, step, path, progress):
        order.append(("preview", step))
        for i in range(3):
            report(progress, "preview", i + 1, 3)
        path.write_bytes(b"png")

    def watch(e):
        if e.stage == "preview" and ("stage", "preview") not in order:
            order.append(("stage", "preview"))
            assert (tmp_path / "student").is_file(), "the student is written when the preview starts"
            raise Cancelled

    def export(m, res):
        order.append(("export", res.steps))
        (tmp_path / "student").write_bytes(b"weights")
        return "ok"

    r = run_training(Fit(), model(), Points(), TrainConfig(steps=4, **CFG), Run(tmp_path / "run", {}), progress=watch,
                     preview=preview, on_export=export)
    assert order == [("export", 4), ("preview", 4), ("stage", "preview")]
    assert not r.cancelled and r.exported == "ok" and r.steps == 4 and "cancelled" in r.preview_note
    assert (tmp_path / "student").read_bytes() == b"weights"
    assert not (tmp_path / "run" / "previews" / "step-000004.png").exists()


def test_a_preview_that_runs_out_of_memory_leaves_the_export(tmp_path):
    """21.1: on a GPU a preview can run out of memory after hours of training; the student is already written."""
    def preview(m, step, path):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    r = run_training(Fit(), model(), Points(), TrainConfig(steps=2, **CFG), Run(tmp_path, {}), preview=preview,
                     on_export=lambda m, res: "written")
    assert r.exported == "written" and not r.cancelled
    assert r.preview_note == "not drawn (CUDA out of memory. Tried to allocate 2.00 GiB); the export is written"


def test_a_finished_run_keeps_no_state_unless_asked_and_an_interrupted_one_says_what_it_keeps(tmp_path):
    """22.5: a finished run's folder holds the loss log and previews only; --keep-state and a cancel keep the state."""
    from sdkd_ext.train import RUN_CACHE, disk_note

    def run(folder, **kw):
        (folder / RUN_CACHE).mkdir(parents=True)
        (folder / RUN_CACHE / "latent").write_bytes(b"x" * 5000)
        return run_training(Fit(), model(), Points(), TrainConfig(steps=4, **{**CFG, "checkpoint_every": 1}, **kw),
                            Run(folder, {}))

    def stop_at_3(e):
        if e.step == 3:
            raise Cancelled
    done = run(tmp_path / "done")
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["loss.csv", "loss.png", "run.json"]
    assert done.kept == {} and "--keep-state keeps it" in disk_note(done)
    kept = run(tmp_path / "kept", keep_state=True)
    assert (tmp_path / "kept" / STATE_FILE).is_file() and (tmp_path / "kept" / RUN_CACHE).is_dir()
    assert kept.kept[STATE_FILE] == (tmp_path / "kept" / STATE_FILE).stat().st_size and kept.kept["cache/"] == 5000
    stopped = run_training(Fit(), model(), Points(), TrainConfig(steps=10, **CFG), Run(tmp_path / "stopped", {}),
                           progress=stop_at_3)
    assert stopped.cancelled and (tmp_path / "stopped" / STATE_FILE).is_file()
    note = disk_note(stopped)
    size = (tmp_path / "stopped" / STATE_FILE).stat().st_size
    assert f"state.torch ({size / 1e3:.1f} kB)" in note and "with --resume the run continues" in note and "delete state.torch" in note


def test_previews_show_the_ema_weights_an_export_would_hold(tmp_path):
    seen, exported = [], []
    net = model()
    run_training(Fit(), net, Points(), TrainConfig(steps=3, ema=True, ema_decay=0.5, **CFG), Run(tmp_path, {}),
                 preview=lambda m, step, path: seen.append(m.weight.detach().clone()),
                 on_export=lambda m, res: exported.append(m.weight.detach().clone()))
    assert len(seen) == 1 and torch.equal(seen[0], exported[0])
    assert not torch.equal(seen[0], net.weight), "the trained (non-averaged) weights are back after the preview"


def test_resume_refused_when_the_fingerprint_differs_or_nothing_to_resume(tmp_path):
    with pytest.raises(SdkdError, match="nothing to resume"):
        run_training(Fit(), model(), Points(), TrainConfig(steps=2, **CFG), Run(tmp_path, {"data": "a"}, resume=True))
    with pytest.raises(SdkdError, match="a finished run keeps none unless --keep-state"):
        run_training(Fit(), model(), Points(), TrainConfig(steps=2, **CFG), Run(tmp_path, {"data": "a"}))
        run_training(Fit(), model(), Points(), TrainConfig(steps=3, **CFG), Run(tmp_path, {"data": "a"}, resume=True))
    run_training(Fit(), model(), Points(), TrainConfig(steps=2, keep_state=True, **CFG),
                 Run(tmp_path, {"data": "a", "teacher": "t"}, overwrite=True))
    with pytest.raises(SdkdError, match="the data changed"):
        run_training(Fit(), model(), Points(), TrainConfig(steps=4, **CFG),
                     Run(tmp_path, {"data": "b", "teacher": "t"}, resume=True))
    with pytest.raises(SdkdError, match="--resume to continue it or --overwrite"):
        run_training(Fit(), model(), Points(), TrainConfig(steps=4, **CFG),
                     Run(tmp_path, {"data": "a", "teacher": "t"}))
    r = run_training(Fit(), model(), Points(), TrainConfig(steps=1, **CFG),
                     Run(tmp_path, {"data": "b"}, overwrite=True))
    assert r.steps == 1


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(SdkdError) as e:
        run_training(Fit(bad_from=5), model(), Points(), TrainConfig(steps=10, **CFG), Run(tmp_path, {}))
    msg = str(e.value)
    assert "step 5" in msg and "smooth loss term became non-finite" in msg and "fit" not in msg.split("non-finite")[0]
    assert "last good checkpoint (step 3)" in msg
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 3


def test_full_disk_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path):
    """Make the disk 'full' for real: a file-size limit (EFBIG) set after the first checkpoint is written."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def fill_disk(e):
        if e.step == 4:
            resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # the state file needs ~2 kB, the loss log < 1 kB

    big = torch.nn.Sequential(torch.nn.Linear(8, 3))
    try:
        with pytest.raises(SdkdError, match="could not write the training checkpoint.*previous checkpoint is intact"):
            run_training(Fit(), big, Points(), TrainConfig(steps=10, **CFG), Run(tmp_path, {}), progress=fill_disk)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_loss_log_and_plot(tmp_path):
    full_batch = {**CFG, "batch": 10}  # every step sees every sample: losses comparable across steps
    run_training(Fit(), model(), Points(), TrainConfig(steps=20, **full_batch), Run(tmp_path, {}))
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,fit,smooth,lr,seconds" and len(rows) == 21
    first, last = (float(r.split(",")[2]) for r in (rows[1], rows[-1]))
    assert last < first
    from PIL import Image

    assert Image.open(tmp_path / "loss.png").size == (720, 400)


def test_first_ctrl_c_cancels_gracefully_at_the_next_event(tmp_path):
    import os

    from sdkd_ext.distill import stop_on_ctrl_c

    def press_ctrl_c_at_2(e):
        if e.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with stop_on_ctrl_c(press_ctrl_c_at_2) as progress:
        r = run_training(Fit(), model(), Points(), TrainConfig(steps=10, **CFG), Run(tmp_path, {}), progress=progress,
                         on_export=lambda m, res: "exported")
    assert r.cancelled and r.steps == 2 and r.exported == "exported"
    assert signal.getsignal(signal.SIGINT) is before
