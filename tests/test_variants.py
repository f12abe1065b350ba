"""The variant spec reproduces the published BK-SDM maps, counts and feature-loss pairs."""

import pytest
import torch

from sdkd_ext.configs import unet_config
from sdkd_ext.errors import SdkdError
from sdkd_ext.variants import SD15, VARIANTS, block_map, get_variant, hook_pairs, identify

# The published LDM maps (host-facts section 1), student <- teacher.
BASE_IN = {0: 0, 1: 1, 2: 3, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10}
BASE_OUT = {0: 0, 1: 2, 2: 3, 3: 5, 4: 6, 5: 8, 6: 9, 7: 11}
TINY_IN = {0: 0, 1: 1, 2: 3, 3: 4, 4: 6, 5: 7}
TINY_OUT = {0: 3, 1: 5, 2: 6, 3: 8, 4: 9, 5: 11}


def _expected(ins, outs, mid):
    m = {f"input_blocks.{s}": f"input_blocks.{t}" for s, t in ins.items()}
    m.update({f"output_blocks.{s}": f"output_blocks.{t}" for s, t in outs.items()})
    if mid:
        m["middle_block"] = "middle_block"
    return m


@pytest.mark.parametrize("name,ins,outs,mid", [
    ("base", BASE_IN, BASE_OUT, True), ("small", BASE_IN, BASE_OUT, False), ("tiny", TINY_IN, TINY_OUT, False)])
def test_block_map_matches_published_tables(name, ins, outs, mid):
    assert block_map(VARIANTS[name]) == _expected(ins, outs, mid)


def test_hook_pairs_match_bk_sdm():
    same = [(n, n) for n in [f"down_blocks.{i}" for i in range(4)] + [f"up_blocks.{i}" for i in range(4)]]
    assert hook_pairs(VARIANTS["base"]) == same
    assert hook_pairs(VARIANTS["small"]) == same
    assert hook_pairs(VARIANTS["tiny"]) == [
        ("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
        ("down_blocks.2.attentions.1.proj_out", "down_blocks.2.attentions.0.proj_out"),
        ("up_blocks.1", "up_blocks.0"), ("up_blocks.2", "up_blocks.1"), ("up_blocks.3", "up_blocks.2")]


@pytest.mark.parametrize("name,count", [("teacher", 859_520_964), ("base", 579_384_964),
                                        ("small", 482_346_884), ("tiny", 323_384_964)])
def test_sd15_parameter_counts_on_meta(name, count):
    from diffusers import UNet2DConditionModel

    topo = SD15 if name == "teacher" else VARIANTS[name].student(SD15)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config(topo))
    assert sum(p.numel() for p in unet.parameters()) == count
    assert identify(topo) == name


def test_aliases_and_unknown_variant():
    assert get_variant("segmind-small").name == "base"
    assert get_variant("Segmind-Tiny").name == "tiny"
    with pytest.raises(SdkdError, match="unknown variant 'huge'"):
        get_variant("huge")
