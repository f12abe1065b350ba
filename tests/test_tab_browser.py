"""The standalone app (`sdkd ui`, latest gradio) in a real headless Chromium: the new sections work in a browser.

What tests/tab_browser.py does there: pick the teacher (its facts table shows), Make it fast's plan (route, expected
time, both estimates) and the Few-step LoRA estimate, Distil with a sample grid every step
(the estimate, the status with it/s and ETA, the loss curve and two sample grids appear while it runs), Cancel (a
student is kept), Load it now, Rebase (with the note on public students), Bench (figures and chart). Screenshots
before, during and after go to ci-artifacts/. A1111 (gradio 3.41) and Forge (4.40) are driven by the host checks.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow  # about 3 minutes on 2 shared cores (1 of them the server's), plus Playwright's install once
def test_standalone_tab_in_chromium(teacher_file, tmp_path):
    gradio = pytest.importorskip("gradio")
    if int(gradio.__version__.split(".")[0]) < 4:
        pytest.skip("the standalone app's browser check runs with the latest gradio; the host checks drive A1111's 3.41")
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium")
    from hosts.a1111 import browser_venv
    from hosts.harness import ARTIFACTS, Server, free_port, run_py

    models, loras = tmp_path / "models", tmp_path / "loras"
    models.mkdir()
    loras.mkdir()
    shutil.copy(teacher_file, models / "teacher.safetensors")
    port = free_port()
    server = Server([sys.executable, "-m", "sdkd_ext", "ui", "--models", str(models), "--loras", str(loras),
                     "--port", str(port)], tmp_path, tmp_path / "ui.log", port, {"OMP_NUM_THREADS": "1"})
    venv = browser_venv()
    ARTIFACTS.mkdir(exist_ok=True)
    server.start()
    try:
        server.wait(lambda s: urllib.request.urlopen(s.url, timeout=5).status == 200, 240)
        seen = json.loads(run_py(venv, str(Path(__file__).parent / "tab_browser.py"), server.url, str(ARTIFACTS)))
    finally:
        server.stop()
    assert "teacher.safetensors is an SD1.x teacher" in seen["info"] and "UNet parameters" in seen["info"], seen
    assert "Settings it will use" in seen["estimate"]
    assert "Route: prune+kd" in seen["fast_plan"] and "Expected time" in seen["fast_plan"], seen["fast_plan"]
    assert seen["fast_plan"].count("training peak") == 2  # the distil's and the few-step LoRA's estimates
    assert "Settings it will use" in seen["fewstep_estimate"] and "trainable" in seen["fewstep_estimate"]
    # a grid every step: on a CPU the preview stage outlasts the training step, so the page may sample either stage
    assert any(re.match(r"(distill \d+/100000 · loss \S+|preview \d+/\d+)( · .*)? · \S+ it/s · ETA \d+:\d\d", s)
               for s in seen["statuses"]), seen["statuses"]
    assert seen["grids"] >= 2 and seen["curves"] >= 1, seen  # the sample grid and the curve updated in the page
    assert seen["distil"].startswith("Cancelled at step ") and "browser-kd.safetensors" in seen["distil"]
    assert seen["load"] == "Loaded browser-kd.safetensors into sdkd's pipeline (CPU) as this app's checkpoint"
    assert (models / "browser-kd.safetensors").is_file()
    assert seen["rebase_note"] and seen["rebase"].startswith("Done: tiny student teacher-browser-kd-rebased"), seen
    assert seen["bench"].startswith("Bench: bench/bench.json") and "browser-kd\ttiny" in seen["bench_result"]
    assert seen["bench_chart"]
    assert "Traceback" not in server.text()
