"""The host checks' own ComfyUI custom node (installed only in the test's ComfyUI): load a checkpoint the way
ComfyUI does and report, from inside the server, how its UNet matches the file and what one UNet call gives.

POST /sdkd_probe {"ckpt": name, "io": path} -> key counts; writes the call's inputs and output to `io`.
"""

from aiohttp import web

import comfy.sd
import comfy.utils
import folder_paths
from server import PromptServer

from .probe_keys import key_report, unet_call


@PromptServer.instance.routes.post("/sdkd_probe")
async def probe(request: web.Request) -> web.Response:
    """Load `ckpt` with comfy.sd, compare its UNet with the file, run one UNet call on the inputs in `io`."""
    body = await request.json()
    path = folder_paths.get_full_path("checkpoints", body["ckpt"])
    model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    unet = model.model.diffusion_model
    report = key_report(unet.state_dict(), comfy.utils.load_torch_file(path))
    report["model_type"] = type(model.model.model_config).__name__
    io = comfy.utils.load_torch_file(body["io"])
    comfy.utils.save_torch_file({**io, "out": unet_call(unet.float(), io)}, body["io"])
    return web.json_response(report)


NODE_CLASS_MAPPINGS = {}
