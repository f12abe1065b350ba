"""Prune a loaded MODEL in memory: the student is ComfyUI's own UNet, built from the teacher's blocks, so a graph can
sample and compare teacher and student without writing a file."""

from __future__ import annotations

from ...checkpoint import DictSource
from ...convert import UNET
from ...detect import describe, require_teacher
from ...errors import SdkdError
from ...prune import student_names
from ...variants import get_variant
from .common import Node, inputs, result, variants

PREFIX = "diffusion_model."  # where ComfyUI's BaseModel keeps the UNet (LDM names below it)


def student_state_dict(teacher: dict, variant: str) -> dict:
    """The student UNet's LDM state dict (no prefix) from the teacher UNet's, by the variant's block map (the
    tensors are the teacher's own: the model built from them copies them)."""
    src = DictSource({UNET + k: v for k, v in teacher.items()})
    info = describe(src)
    if info.kind == "student":
        raise SdkdError(f"model: this is already a BK-SDM {info.variant} student; connect the teacher's MODEL instead")
    require_teacher(info, "model")
    names = student_names(src, info, get_variant(variant))
    return {s[len(UNET):]: teacher[t[len(UNET):]] for s, t in names.items()}


def student_patcher(model, variant: str):
    """A ModelPatcher of the student: the teacher's own model class (latent format, sampling, dtype settings) with the
    UNet config ComfyUI reads off the student's weights, as when it loads a pruned file. The teacher's patches
    (LoRAs) are not carried over."""
    import comfy.model_detection
    import comfy.model_patcher

    teacher = model.model_state_dict(filter_prefix=PREFIX)
    sd = student_state_dict({k[len(PREFIX):]: v for k, v in teacher.items()}, variant)
    known = model.model.model_config
    unet_config = comfy.model_detection.detect_unet_config(sd, "")
    if unet_config is None:
        raise SdkdError(f"ComfyUI could not read a UNet config off the BK-SDM {variant} student's weights")
    config = type(known)(unet_config)
    config.set_inference_dtype(known.unet_config.get("dtype"), known.manual_cast_dtype)
    config.custom_operations = known.custom_operations
    student = config.get_model(sd, "", device=model.offload_device)
    student.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(student, load_device=model.load_device, offload_device=model.offload_device)


class SdkdPruneModel(Node, function="prune_model", returns={"student": "MODEL", "info": "STRING"}):
    """Prune a loaded MODEL into a BK-SDM student MODEL, in memory (the teacher's CLIP and VAE serve the student)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the teacher MODEL and the variant."""
        return {"required": {"model": ("MODEL",), **inputs("prune", "variant", variant=variants())}}

    def prune_model(self, model, variant: str) -> dict:
        """The student MODEL and one line on what it is."""
        import comfy.utils

        student = student_patcher(model, variant)
        params = comfy.utils.calculate_parameters(student.model.diffusion_model.state_dict())
        before = comfy.utils.calculate_parameters(model.model.diffusion_model.state_dict())
        text = (f"{variant} student in memory: {params:,} UNet parameters ({params / before:.0%} of the teacher's); "
                "LoRAs applied to the teacher are not carried over: apply ported LoRAs after this node")
        return result(text, student, text)
