"""The memory planner against the allocator: a small KD run's measured peak (torch.profiler's memory events of the
real training loop, in a fresh process) is within 15% of the estimate, and the SD1.5 measurement's stand-ins
(benchmarks/plan_memory.py) measure what the real optimizer and kernels allocate."""

import importlib.util
import sys
from pathlib import Path

import pytest


def _bench():
    """benchmarks/plan_memory.py as a module (registered first: its dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location("plan_memory", Path(__file__).resolve().parents[1] / "benchmarks" / "plan_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("plan_memory", module)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
# small enough to run in seconds, large enough that activations are about half the peak (width 32, 32x32 latent, batch 2)
SMALL = dict(resolution=256, width=32, batch=2, steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("variant,setting", [("tiny", "plain"), ("base", "ckpt")])
def test_estimate_within_15_percent_of_the_measured_peak(variant, setting):
    real = BENCH.child(BENCH.Case(variant, setting, real=True, **SMALL))
    assert 0.85 <= real["estimate"] / real["peak"] <= 1.15, real
    stand_in = BENCH.child(BENCH.Case(variant, setting, **SMALL))
    assert stand_in["peak"] == pytest.approx(real["peak"], rel=0.02), "the stand-ins allocate what the real step does"
    assert real["by_phase"]["backward"] > real["by_phase"]["setup"], "the step's own allocations are measured"
