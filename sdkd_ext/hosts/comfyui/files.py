"""Nodes that turn model files into new model files: prune, rebase, LoRA port; and inspect, which says what a file is."""

from __future__ import annotations

import json
from pathlib import Path

from .common import Job, comfy_progress, core_job, inputs, model_path, names, result, variants


class SdkdPrune(Job, function="prune", job="prune", returns={"student": "STRING"}):
    """Prune a checkpoint into a BK-SDM student saved in ComfyUI's checkpoints folder."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: teacher, variant, dtype, output name."""
        return {"required": {"ckpt_name": (names("checkpoints"),),
                             **inputs("prune", "variant", "dtype", "out", "overwrite", variant=variants())},
                "optional": inputs("prune", "portable")}  # optional: API prompts from before it still run

    @core_job
    def prune(self, ckpt_name: str, variant: str, dtype: str, filename: str, overwrite: bool,
              portable: bool = False) -> dict:
        """The core prune into the first checkpoints folder (the list refreshes on its own); the student's name is
        shown on the node and output, for a Load Checkpoint node."""
        from ...prune import PruneJob, prune
        from ...variants import get_variant

        out = self.output()
        teacher = model_path("checkpoints", ckpt_name, "ckpt_name")
        target = out.path(filename, f"{Path(ckpt_name).stem}-bk-{variant}", ".safetensors", (teacher,))
        r = prune(PruneJob(teacher, get_variant(variant), target, dtype=dtype, overwrite=overwrite, portable=portable),
                  comfy_progress())
        name = out.listed(r.checkpoint)
        return result(f"{r.variant} student, {r.unet_params:,} UNet parameters: {name} in your checkpoints "
                      f"(+ {r.yaml.name}) in {r.seconds:.1f}s", name)


class SdkdInspect(Job, function="inspect", job="inspect", returns={"info": "STRING"}):
    """Say what a checkpoint is (SD1.x teacher, BK-SDM student, or why it can't be pruned)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the checkpoint."""
        return {"required": {"ckpt_name": (names("checkpoints"),)}}

    @core_job
    def inspect(self, ckpt_name: str) -> dict:
        """The core's description as JSON, shown on the node and output as a string."""
        from ...checkpoint import open_model
        from ...detect import describe

        info = describe(open_model(model_path("checkpoints", ckpt_name, "ckpt_name"))).as_dict()
        text = json.dumps({k: v for k, v in info.items() if k != "metadata"}, indent=1)
        return result(text, text)


class SdkdRebase(Job, function="rebase", job="rebase", returns={"student": "STRING"}):
    """Add a community checkpoint's difference from its base (SD1.5) to a distilled student: a student of the
    community model without distilling it."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: community model, its base, the student, strength, dtype, output name."""
        ckpts = names("checkpoints")
        return {"required": inputs("rebase", "community", "base", "student", "strength", "dtype", "out", "overwrite",
                                   community=ckpts, base=ckpts, student=ckpts)}

    @core_job
    def rebase(self, ckpt_name: str, base_name: str, student_name: str, strength: float, dtype: str, filename: str,
            overwrite: bool) -> dict:
        """The core rebase into the first checkpoints folder; refusals (not derived, wrong student) name the widgets."""
        from ...rebase import RebaseJob, rebase

        out = self.output()
        paths = {w: model_path("checkpoints", n, w)
                 for w, n in {"ckpt_name": ckpt_name, "base_name": base_name, "student_name": student_name}.items()}
        target = out.path(filename, f"{Path(ckpt_name).stem}-rebased-{Path(student_name).stem}", ".safetensors",
                          tuple(paths.values()))
        r, d = rebase(RebaseJob(paths["ckpt_name"], paths["base_name"], paths["student_name"], target, strength, dtype,
                                overwrite), comfy_progress())
        name = out.listed(r.checkpoint)
        return result(f"{r.variant} student of {ckpt_name}: difference from {base_name} {d.summary()}; strength "
                      f"{strength:g} -> {name} in your checkpoints (+ {r.yaml.name})", name)


class SdkdPortLora(Job, function="port", job="port", folder="loras", returns={"lora": "STRING"}):
    """Move a LoRA made for the teacher onto a BK-SDM student's blocks, saved in ComfyUI's loras folder."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the teacher LoRA, the student it is for, output name."""
        return {"required": {"lora_name": (names("loras"),),
                             **inputs("port", "to", "out", "overwrite", to=names("checkpoints"))}}

    @core_job
    def port(self, lora_name: str, student_name: str, filename: str, overwrite: bool) -> dict:
        """The core port into the first loras folder; a LoRA that needs no port, or a teacher as target, is refused."""
        from ...lora.port import port_lora

        out = self.output()
        lora = model_path("loras", lora_name, "lora_name")
        student = model_path("checkpoints", student_name, "student_name")
        target = out.path(filename, f"{Path(lora_name).stem}-{Path(student_name).stem}", ".safetensors", (lora,))
        r = port_lora(lora, str(student), target, overwrite)
        name = out.listed(r.path)
        dropped = f"; {len(r.dropped)} modules in blocks the student removed were left out" if r.dropped else ""
        return result(f"{lora_name} for the BK-SDM {r.variant} student: {r.kept} modules -> {name} in your loras"
                      f"{dropped}", name)
