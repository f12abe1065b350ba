"""benchmarks/distill_step.py measures what it says: CPU time beside wall time, peak memory of the training steps."""

from pathlib import Path

import pytest

from host_code import module_from_file

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_step.py"


@pytest.mark.slow
def test_distill_step_reports_cpu_time_and_a_training_peak(tmp_path):
    bench = module_from_file("distill_step", BENCH)
    teacher = bench.make_inputs(tmp_path, width=32, n=2, res=64)
    runs = {mode: bench.measure(teacher, tmp_path / "images", "tiny", mode, 64, 1, 3, 1, "cpu")
            for mode in ("prepare", "cache", "live")}
    for mode in ("cache", "live"):
        r = runs[mode]
        assert 0 < r["cpu_step_s"] and 0 < r["wall_step_s"] and 0 < r["step_s"] <= r["wall_step_s"] * 3, r
        assert 0 < r["peak_gib"] < 2, r  # above the post-import baseline, sampled during the training steps
