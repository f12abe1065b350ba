"""A quiet console (21.4): the CLI's stderr holds sdkd's own lines and one tqdm bar per stage, nothing a library
prints on a model load. Run in a subprocess with this interpreter, so each dependency set is checked by its own run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# sdkd's own lines: its messages, and the bars of its stages ("distill:  50%|...", drawn by progress.tqdm_progress)
OWN = re.compile(r"^(sdkd: |[a-z][a-z-]*: +\d+%\|)")


def foreign_lines(stderr: str) -> list[str]:
    """The stderr lines (tqdm redraws split on carriage returns) that are not sdkd's."""
    return [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not OWN.match(line.strip("\x1b[A "))]


def test_foreign_lines_are_found():
    """The check itself: a library's notice and an unnamed bar are caught, sdkd's lines and bars are not."""
    err = ("sdkd: pruned\rdistill:  50%|#####     | 1/2 [00:01<00:01]\r\n"
           "There are modules in AutoencoderKL that should be kept in float32: [].\n"
           "100%|##########| 25/25 [00:02<00:00]\n")
    assert foreign_lines(err) == ["There are modules in AutoencoderKL that should be kept in float32: [].",
                                  "100%|##########| 25/25 [00:02<00:00]"]


@pytest.mark.slow
def test_sdkd_demo_prints_only_sdkds_own_lines(tmp_path):
    """`sdkd demo --distill-steps 2` (one held-out caption, to keep it short) on this dependency set."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "sdkd_ext", "demo", "--distill-steps", "2", "--captions", "1",
                          "--out", str(tmp_path / "demo")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert foreign_lines(run.stderr) == [], run.stderr[-3000:]
    assert "distilled:" in run.stdout
