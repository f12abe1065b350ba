"""benchmarks/time_to_quality.py: scores along a real run, training CPU time without the scoring, stop at the target."""

import time
from pathlib import Path

import pytest

from sdkd_ext.cache import Cache
from sdkd_ext.checkpoint import open_model
from sdkd_ext.data import FolderData
from sdkd_ext.detect import describe
from sdkd_ext.distill import CPU, teacher_model
from sdkd_ext.fidelity import probe
from sdkd_ext.shapes import sample_specs, write_folder

from distill_helpers import one_thread  # noqa: F401 (fixture)
from host_code import module_from_file

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_quality.py"


@pytest.mark.slow
def test_curve_scores_every_n_steps_leaves_scoring_out_of_cpu_and_stops_at_target(tmp_path):
    ttq = module_from_file("time_to_quality", BENCH)
    src = open_model("demo")
    info = describe(src)
    teacher = teacher_model(src, info, CPU)
    cache = Cache(tmp_path / "cache")
    write_folder(sample_specs(8, 0), tmp_path / "shapes")
    dataset, made = ttq.prepared(FolderData(tmp_path / "shapes"), src, teacher, cache, 0)
    assert len(dataset) == 8 and made > 0 and ttq.prepared(FolderData(tmp_path / "shapes"), src, teacher, cache, 0)[1] < made
    scorer = probe(src, teacher, cache, n=2)

    curve = ttq.Curve(scorer, 2, float("inf"), 0.0, 1e9)
    began = time.process_time()
    r = ttq.one_run(src, info, teacher, dataset, "tiny", {"lr": 1e-3}, 0, curve, tmp_path, cap_steps=4)
    spent = time.process_time() - began
    assert [p["step"] for p in r["points"]] == [2, 4]
    assert 0 < r["points"][0]["cpu_s"] < r["points"][1]["cpu_s"] < spent - curve.excluded + 0.5
    assert curve.excluded > 0.3 * spent, "the two scorings (40 student UNet passes each) are counted apart"

    early = ttq.Curve(scorer, 2, -1.0, 0.0, 1e9)  # any score meets this target: the run stops right after step 2
    r = ttq.one_run(src, info, teacher, dataset, "tiny", {}, 0, early, tmp_path, cap_steps=10)
    assert [p["step"] for p in r["points"]] == [2] and early.reached == r["points"][0]
    rows = [{"variant": "tiny", "run": "x", "data": "8 images", "data_cpu_s": made, "seed": 0, "cap": "10 steps",
             "teacher_accuracy": 0.5, **r}]
    assert "| 0 | 2 | " in ttq.table(rows, -1.0, 0.5) and "| 0 | > 2 | > " in ttq.table(rows, 99.0, 0.0)
