"""Session-wide small models with the real SD1.5 topology, built in code (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdkd_ext.prune import PruneJob, prune
from sdkd_ext.tiny import save, tiny_checkpoint
from sdkd_ext.variants import VARIANTS, get_variant

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def teacher_sd() -> dict[str, torch.Tensor]:
    """An fp32 LDM-named SD1.5-topology checkpoint, 32 base channels, random weights."""
    return tiny_checkpoint(width=32, seed=0)


@pytest.fixture(scope="session")
def teacher_file(teacher_sd, tmp_path_factory) -> Path:
    """The tiny teacher as a community-style single .safetensors file."""
    return save(teacher_sd, tmp_path_factory.mktemp("teacher") / "tinysd.safetensors")


@pytest.fixture(scope="session")
def students(teacher_file, tmp_path_factory) -> dict:
    """The teacher pruned (fp32, exact) to every variant."""
    out = tmp_path_factory.mktemp("students")
    return {v: prune(PruneJob(teacher_file, get_variant(v), out / f"student-{v}", dtype="fp32")) for v in VARIANTS}


@pytest.fixture(scope="session")
def community(teacher_sd, tmp_path_factory) -> dict[str, Path]:
    """The tiny teacher in every community file layout (tests/community.py), by layout name."""
    from community import LAYOUTS, write

    folder = tmp_path_factory.mktemp("community")
    return {layout.name: write(layout, teacher_sd, folder) for layout in LAYOUTS}


@pytest.fixture(scope="session")
def community_students(community, tmp_path_factory) -> dict[str, Path]:
    """Students of community files: "tiny" as prune makes it now (fp16, from a drifted-position-ids merge), "tiny-old"
    the same with what an earlier prune copied over (the merge's position ids cast to fp16)."""
    from community import POSITION_IDS, position_ids, with_extra

    out = tmp_path_factory.mktemp("community-students")
    tiny = prune(PruneJob(community["merge-fp16"], get_variant("tiny"), out / "merge-fp16-bk-tiny")).checkpoint
    old = with_extra(tiny, {POSITION_IDS: position_ids("drifted").half()}, out / "merge-fp16-bk-tiny-old.safetensors")
    return {"tiny": tiny, "tiny-old": old}
