"""Shared by the host probes (copied into the test's own host extension/custom node): a host's UNet against its file."""

import torch

PREFIX = "model.diffusion_model."


def key_report(model_sd: dict, file_sd: dict, prefix: str = "") -> dict:
    """Keys the host's UNet has that the file lacks (zero-filled by a non-strict load), the reverse, and shared
    keys whose values differ from the file's; with `prefix` (alternatives joined by "|"), also how many missing keys
    start with it."""
    file_unet = {k[len(PREFIX):]: v for k, v in file_sd.items() if k.startswith(PREFIX)}
    missing = sorted(model_sd.keys() - file_unet.keys())
    unexpected = sorted(file_unet.keys() - model_sd.keys())
    differ = sorted(k for k in model_sd.keys() & file_unet.keys()
                    if not torch.equal(model_sd[k].float().cpu(), file_unet[k].float()))
    zero = [k for k in missing if not model_sd[k].float().abs().sum()]
    return {"model_keys": len(model_sd), "file_keys": len(file_unet), "n_missing": len(missing),
            "n_unexpected": len(unexpected), "n_differ": len(differ), "n_zero_filled": len(zero),
            "examples": (missing + unexpected + differ)[:3],
            **({f"n_missing:{prefix}": sum(k.startswith(starts(prefix)) for k in missing)} if prefix else {})}


def starts(prefix: str) -> tuple[str, ...]:
    """The key prefixes a probe's `prefix` names ("a.|b." is either)."""
    return tuple(prefix.split("|"))


def unet_call(unet: torch.nn.Module, io: dict) -> torch.Tensor:
    """One fp32 call of an ldm-style UNet on the saved latent, timestep and context."""
    with torch.no_grad():
        return unet(io["x"], timesteps=io["t"], context=io["context"]).float().contiguous()
