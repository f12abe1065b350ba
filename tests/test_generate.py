"""`sdkd generate` builds the pipeline offline from a single file and writes a reproducible PNG."""

import numpy as np
from PIL import Image

from sdkd_ext.cli import main


def test_generate_cli_is_seeded_and_refuses_to_overwrite(students, tmp_path, capsys):
    student = students["tiny"].checkpoint
    args = ["generate", str(student), "--prompt", "a red circle", "--steps", "2", "--size", "64"]
    paths = [tmp_path / n for n in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, ("1", "1", "2")):
        assert main(args + ["--seed", seed, "--out", str(path)]) == 0
    a, b, c = (np.asarray(Image.open(p)) for p in paths)
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    capsys.readouterr()
    assert main(args + ["--out", str(paths[0])]) == 2
    assert "already exists" in capsys.readouterr().err
