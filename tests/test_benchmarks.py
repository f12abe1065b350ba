"""The benchmarks measure what they say: distill_step.py CPU time beside wall time and the training peak; few_step.py
its rows."""

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


FEW_STEP = Path(__file__).resolve().parents[1] / "benchmarks" / "few_step.py"


@pytest.mark.slow
def test_few_step_benchmark_builds_its_loras_and_prints_every_row(tmp_path, monkeypatch, capsys):
    bench = module_from_file("few_step", FEW_STEP)
    out = tmp_path / "few"
    monkeypatch.setattr("sys.argv", ["few_step.py", "--out", str(out), "--captions", "3", "--seeds", "0,1",
                                     "--kd-steps", "2", "--lcm-steps", "2", "--polish-steps", "1", "--train-prompts", "4",
                                     "--batch", "2", "--rank", "4"])
    assert bench.main() == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(bench.rows(25)) and "reference" in rows[0]
    assert all(name in {p.stem for p in out.glob("*.safetensors")}
               for name in ("teacher-lcm", "tiny-lcm", "tiny-ported", "tiny-polished"))
    lcm_row = next(r for r in rows if r.startswith("| teacher + LCM 4"))
    assert "12.5x fewer" in lcm_row  # 4 unguided UNet calls against 25 guided ones (50)
