"""The host checks' own A1111/Forge extension (installed only in the test's web UI): from inside the server, compare the
loaded model's UNet with its file and run one UNet call. POST /sdkd_probe/check {"io": path} -> key counts
(and the call's error, if it raised); GET /sdkd_probe/networks -> the LoRAs A1111's last generation applied;
GET /sdkd_probe/seen_at_load -> per checkpoint file, the middle-block parameters its UNet had when this extension's
model-loaded callback ran (the harness installs it in a folder that sorts before sdkd's, so it runs first)."""

import os
import sys
from pathlib import Path

import safetensors.torch

from modules import script_callbacks, sd_models, shared

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe_keys import key_report, starts, unet_call  # noqa: E402  (copied beside this extension by the harness)


SEEN_AT_LOAD: dict[str, int] = {}


def unet_of(model):
    """The LDM UNet of a loaded A1111 or Forge model (Forge keeps it in its own patcher)."""
    forge = getattr(model, "forge_objects", None)
    return forge.unet.model.diffusion_model if forge is not None else model.model.diffusion_model


def seen_at_load(model) -> None:
    """What every model-loaded callback of an extension sorted before sdkd sees of the middle block."""
    name = os.path.basename(model.sd_checkpoint_info.filename)
    SEEN_AT_LOAD[name] = sum(p.numel() for p in unet_of(model).middle_block.parameters())


def add_routes(demo, app) -> None:
    """Register the probe route on A1111's FastAPI app."""

    @app.post("/sdkd_probe/check")
    def check(body: dict) -> dict:
        reload = getattr(sd_models, "forge_model_reload", None)  # Forge loads the chosen model only when first used
        if reload is not None:
            reload()
        model = shared.sd_model
        unet = unet_of(model)
        path = model.sd_checkpoint_info.filename
        prefix = body.get("prefix", "")
        report = key_report(unet.state_dict(), safetensors.torch.load_file(path), prefix)
        if prefix:  # layers whose weight is None (Forge's layers keep it as a plain attribute until loaded)
            report[f"n_weightless:{prefix}"] = sum(f"{name}.".startswith(starts(prefix)) and "weight" in {**vars(m), **m._parameters}
                                                   and m.weight is None for name, m in unet.named_modules())
        io = safetensors.torch.load_file(body["io"])
        try:
            safetensors.torch.save_file({**io, "out": unet_call(unet, io)}, body["io"])
        except Exception as e:  # the host's UNet cannot run this file (Forge without sdkd: weightless middle block)
            return {**report, "checkpoint": os.path.basename(path), "call_error": f"{type(e).__name__}: {e}"}
        return {**report, "checkpoint": os.path.basename(path), "call_error": ""}

    @app.get("/sdkd_probe/networks")
    def loaded_networks() -> list:
        """Name and layer count of each LoRA A1111's Lora extension applied in the last generation."""
        networks = sys.modules.get("networks")  # the built-in Lora extension's module, imported by its script
        return [{"name": n.name, "modules": len(n.modules)} for n in getattr(networks, "loaded_networks", [])]


    @app.get("/sdkd_probe/seen_at_load")
    def loaded_middle_blocks() -> dict:
        return SEEN_AT_LOAD


script_callbacks.on_app_started(add_routes)
script_callbacks.on_model_loaded(seen_at_load)
