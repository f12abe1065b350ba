"""The fidelity check: fixed held-out pairs, per-attribute accuracy, agreement with the teacher, written reports."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)

from sdkd_ext.compare import ModelRun, Sample
from sdkd_ext.fidelity import CHANCE, FidelitySpec, check_specs, fidelity, model_accuracy, write
from sdkd_ext.shapes import ATTRIBUTES, COLORS, caption, render, split_specs


def test_check_specs_are_fixed_held_out_captions():
    train, held = split_specs()
    specs = check_specs(12)
    assert specs == check_specs(12) and specs[:5] == check_specs(5)
    assert set(specs) <= set(held) and not set(specs) & set(train)
    assert len(set(specs)) == 12
    assert check_specs(12, seed=1) != specs
    with pytest.raises(ValueError, match="between 1 and"):
        check_specs(len(held) + 1)


def test_model_accuracy_reads_each_attribute():
    specs = check_specs(6)
    right = [Sample(caption(s), 0, render(s), None) for s in specs]
    assert model_accuracy(ModelRun("truth", "-", None, 0, {}, 0.0, right)) == {**dict.fromkeys(ATTRIBUTES, 1.0), "mean": 1.0}
    # every picture drawn on another background colour than its caption asks for: only that attribute drops
    other = [next(c for c in COLORS if c not in (s.color, s.background)) for s in specs]
    wrong = [Sample(caption(s), 0, render(replace(s, background=b)), None) for s, b in zip(specs, other)]
    acc = model_accuracy(ModelRun("wrong", "-", None, 0, {}, 0.0, wrong))
    assert acc["background"] == 0.0 and acc["shape"] == acc["position"] == acc["size"] == 1.0


@pytest.fixture(scope="module")
def checked(teacher_file, students):
    """The random tiny teacher against itself and its pruned tiny student, two captions, two steps."""
    return fidelity(teacher_file, [teacher_file, students["tiny"].checkpoint], FidelitySpec(n=2, steps=2))


def test_fidelity_scores_accuracy_and_agreement(checked):
    models = checked.comparison.models
    assert len(models) == len(checked.accuracy) == 3
    assert [s.prompt for s in models[0].samples] == [caption(s) for s in check_specs(2)]
    for acc in checked.accuracy:
        assert set(acc) == {*ATTRIBUTES, "mean"} and all(0.0 <= v <= 1.0 for v in acc.values())
    assert checked.accuracy[1] == checked.accuracy[0]  # the teacher again draws the same pictures
    rows = checked.rows()
    assert "psnr" not in rows[0]
    assert rows[1]["psnr"] == "inf" and rows[1]["ssim"] == 1.0 and rows[1]["latent_mse"] == 0.0
    assert math.isfinite(rows[2]["psnr"]) and rows[2]["latent_mse"] > 0.0
    assert rows[2]["variant"] == "tiny" and rows[2]["unet_params"] < rows[0]["unet_params"]


def test_write_reports(checked, tmp_path):
    paths = write(checked, tmp_path / "report")
    for key in ("grid", "report", "json", "fidelity", "table"):
        assert paths[key].is_file()
    saved = json.loads(paths["fidelity"].read_text())
    assert saved["chance"] == CHANCE and len(saved["models"]) == 3
    table = paths["table"].read_text()
    assert table.startswith("| model") and "| chance |" in table and "(tiny)" in table
    with pytest.raises(Exception, match="already exists"):
        write(checked, tmp_path / "report")
    write(checked, tmp_path / "report", overwrite=True)
