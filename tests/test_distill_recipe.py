"""`sdkd distill --recipe`: each recipe's settings reach distill(), options given on the command line win."""

from dataclasses import asdict

import pytest

from sdkd_ext import distill as distill_module
from sdkd_ext.cli import main
from sdkd_ext.distill import LossWeights
from sdkd_ext.train import TrainConfig


@pytest.fixture
def calls(monkeypatch):
    """distill() replaced by a recorder that refuses to train (the call's arguments are what is checked)."""
    seen = []

    def record(job, progress=None, log=None):
        seen.append({"cfg": job.train, "weights": job.weights, "data": job.data, "resolution": job.resolution})
        raise distill_module.Cancelled

    monkeypatch.setattr(distill_module, "distill", record)
    return seen


ARGS = ["distill", "demo", "--variant", "tiny", "--self", "2", "--out", "never-written"]


def test_default_recipe_is_the_tools_defaults_and_bk_sdm_the_papers_run(calls, tmp_path):
    assert main(ARGS) == 130
    assert main(ARGS + ["--recipe", "bk-sdm"]) == 130
    ours, paper = calls
    assert asdict(ours["cfg"]) == asdict(TrainConfig()) and ours["weights"] == LossWeights() and ours["resolution"] == 512
    cfg = paper["cfg"]
    assert (cfg.steps, cfg.batch * cfg.accum, cfg.lr, cfg.warmup, cfg.weight_decay, cfg.max_grad_norm) == (50000, 256, 5e-5, 0, 1e-2, 1.0)
    assert (cfg.ema, cfg.ema_decay, cfg.precision, cfg.grad_checkpointing, cfg.seed) == (True, 0.9999, "fp16", True, 1234)
    assert paper["weights"] == LossWeights(1.0, 1.0, 1.0) and paper["resolution"] == 512


def test_options_given_win_over_the_recipe(calls, tmp_path):
    assert main(ARGS + ["--recipe", "bk-sdm", "--batch", "2", "--lr", "1e-4", "--l-feat", "0.5", "--resolution", "256"]) == 130
    assert main(["distill", "demo", "--variant", "tiny", "--data", str(tmp_path), "--recipe", "bk-sdm"]) == 130
    given, flips = calls
    cfg = given["cfg"]
    assert (cfg.batch, cfg.accum, cfg.lr, cfg.ema) == (2, 4, 1e-4, True)
    assert given["weights"] == LossWeights(1.0, 1.0, 0.5) and given["resolution"] == 256
    assert flips["data"].flip, "the recipe's random flips apply to an image folder"
