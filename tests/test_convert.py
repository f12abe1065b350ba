"""LDM <-> diffusers key maps: exact both ways, and equal to the real models' own names."""

import pytest
import torch

from sdkd_ext.configs import VaeShape, ldm_yaml, unet_config
from sdkd_ext.convert import unet_map, vae_map
from sdkd_ext.variants import SD15, VARIANTS

TOPOLOGIES = {"teacher": SD15, **{n: v.student(SD15) for n, v in VARIANTS.items()}}


def ldm_unet(topology):
    """A1111's UNet class (from stable-diffusion-sdkit) built from the yaml we export, on meta."""
    from omegaconf import OmegaConf
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    params = OmegaConf.to_container(OmegaConf.create(ldm_yaml(topology)).model.params.unet_config.params)
    with torch.device("meta"):
        return UNetModel(**params)


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_unet_maps_are_exact_and_match_both_codebases(name):
    from diffusers import UNet2DConditionModel

    topo = TOPOLOGIES[name]
    with torch.device("meta"):
        dif = UNet2DConditionModel.from_config(unet_config(topo)).state_dict()
    ldm = ldm_unet(topo).state_dict()
    if not topo.mid_block:  # ldm always builds a middle block; students without one drop its keys
        ldm = {k: v for k, v in ldm.items() if not k.startswith("middle_block.")}
    pmap = unet_map(topo)
    as_ldm = {pmap.to_ldm(k): k for k in dif}
    assert set(as_ldm) == set(ldm)
    for lk, dk in as_ldm.items():
        assert pmap.to_diffusers(lk) == dk
        assert ldm[lk].shape == dif[dk].shape, lk


def test_vae_map_matches_ldm_autoencoder():
    from diffusers import AutoencoderKL
    from ldm.modules.diffusionmodules.model import Decoder, Encoder

    shape = VaeShape()
    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
              ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    with torch.device("meta"):
        dif = AutoencoderKL.from_config(shape.config()).state_dict()
        ldm = {f"encoder.{k}": v for k, v in Encoder(**dd).state_dict().items()}
        ldm.update({f"decoder.{k}": v for k, v in Decoder(**dd).state_dict().items()})
    pmap = vae_map()
    mapped = {pmap.to_ldm(k): k for k in dif}
    ldm_keys = set(ldm) | {"quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias"}
    assert set(mapped) == ldm_keys
    for lk, dk in mapped.items():
        if lk in ldm:
            want = ldm[lk].shape
            got = dif[dk].shape
            assert (got == want) or (pmap.needs_reshape(lk) and tuple(got) == tuple(want[:2])), lk
        assert pmap.to_diffusers(lk) == dk
