"""Prepacked convolutions compute what plain ones do, leave training alone and notice every weight change."""

import copy

import pytest
import torch

from sdkd_ext.speed import PackedConv2d, available, prepack_convs
from sdkd_ext.tiny import make_unet, unet_topology

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")


@pytest.fixture(scope="module")
def pair():
    """A tiny UNet and a prepacked copy of it, with one input."""
    plain = make_unet(unet_topology(32, 32)).eval()
    packed = copy.deepcopy(plain)
    n = prepack_convs(packed)
    assert n == sum(type(m) is torch.nn.Conv2d for m in plain.modules()) > 20
    args = (torch.randn(2, 4, 16, 16), torch.tensor([10, 10]), torch.randn(2, 77, 32))
    return plain, packed, args


def run(model, args):
    with torch.no_grad():
        return model(*args).sample


def test_same_outputs_and_state(pair):
    plain, packed, args = pair
    ref = run(plain, args)
    assert torch.allclose(run(packed, args), ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(run(packed, args), ref, rtol=1e-4, atol=1e-5)  # second call: the cached weights
    assert packed.state_dict().keys() == plain.state_dict().keys()
    assert isinstance(copy.deepcopy(packed).conv_in, PackedConv2d)


def test_training_takes_the_plain_path(pair):
    plain, packed, args = pair
    out = packed(*args).sample  # grad enabled: ordinary convolution, bit for bit
    assert torch.equal(out, plain(*args).sample)
    out.square().mean().backward()
    assert packed.conv_in.weight.grad is not None and packed.conv_in.weight.grad.abs().sum() > 0
    packed.zero_grad(set_to_none=True)


@pytest.mark.parametrize("edit", ["data", "no_grad", "load_state_dict"])
def test_weight_changes_are_noticed(pair, edit):
    plain, packed, args = pair
    run(packed, args)  # fill the cache
    delta = {k: 0.05 * torch.randn_like(v) for k, v in plain.state_dict().items() if "conv" in k and v.ndim == 4}
    for model in (plain, packed):
        for name, d in delta.items():
            w = model.get_parameter(name)
            if edit == "data":
                w.data += d  # bypasses the version counter, as LoRA merges do
            elif edit == "no_grad":
                with torch.no_grad():
                    w.add_(d)
        if edit == "load_state_dict":
            state = model.state_dict()
            model.load_state_dict({k: v + delta[k] if k in delta else v for k, v in state.items()})
    assert torch.allclose(run(packed, args), run(plain, args), rtol=1e-4, atol=1e-5)


def test_load_pipeline_prepacks_the_unet(students):
    from sdkd_ext.pipeline import load_pipeline

    unet = load_pipeline(students["tiny"].checkpoint).pipe.unet
    assert isinstance(unet.conv_in, PackedConv2d) and isinstance(unet.down_blocks[0].resnets[0].conv1, PackedConv2d)
