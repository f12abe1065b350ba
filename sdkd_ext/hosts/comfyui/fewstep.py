"""Few-step nodes: train a few-step (LCM) LoRA for a checkpoint or student, and "make it fast" (the tiny student of a
checkpoint and its 4-step LoRA as one job). ComfyUI's interrupt stops them after the current step with what was
written kept; their outputs are model names that link straight into Load Checkpoint and Load LoRA."""

from __future__ import annotations

from pathlib import Path

from ...errors import SdkdError
from ...terms import LR
from .common import Job, chosen, core_job, inputs, model_path, names, optional_models, output, result
from .training import DATA, Trainer, data_spec, losses, stopped, training


class ListedName(str):
    """The type of a model-name output: it links into ComfyUI's model-list inputs (Load Checkpoint's ckpt_name, Load
    LoRA's lora_name, whose type is the list of names) and STRING inputs. ComfyUI's execution.py checks a link with
    `received_type != input_type` (comfy_execution/validation.py lets the type's own `__ne__` decide); the page sees
    '*', which it links to any input."""

    def __ne__(self, other: object) -> bool:
        return not (isinstance(other, list) or other in ("*", "STRING"))


NAME = ListedName("*")


def use_line() -> str:
    """How to sample with a few-step LoRA in ComfyUI."""
    from ...lcm.job import USE

    return (f"sample with ModelSamplingDiscrete 'lcm', then KSampler '{USE.name}', {USE.steps} steps, cfg "
            f"{USE.guidance:g}")


def few_step_model(name: str, widget: str) -> Path:
    """A listed checkpoint that can take a few-step LoRA (SD1.x or a BK-SDM student), refused naming the widget."""
    from ...checkpoint import open_model
    from ...detect import describe

    path = model_path("checkpoints", name, widget)
    info = describe(open_model(path))
    if info.kind not in ("sd1", "student"):
        raise SdkdError(f"{widget} {name!r}: {info.reason}")
    return path


class SdkdFewStepLora(Trainer, function="train", job="lcm", folder="loras", returns={"lora": NAME}):
    """Train a few-step (LCM) LoRA for a checkpoint or BK-SDM student, saved in loras: 4 steps at cfg 1."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the model, its teacher, data, adapter rank, schedule, baked-in guidance, output name."""
        return {"required": {"ckpt_name": (names("checkpoints"),),
                             **inputs("lcm", "teacher", "kind", "data", "self_n", "steps", "rank", "resolution",
                                      "guidance", "lr", "vram", "out", "resume", "overwrite", teacher=optional_models(),
                                      kind=list(DATA))},
                "optional": inputs("lcm", "keep_state")}

    @core_job
    def train(self, ckpt_name: str, teacher_name: str, data: str, data_path: str, prompt_count: int, steps: int,
              rank: int, resolution: int, guidance: float, lr: float, vram: str, filename: str, resume: bool,
              overwrite: bool, keep_state: bool = False) -> dict:
        """The core few-step LoRA training into the first loras folder; the LoRA's name is output, for Load LoRA."""
        from ...lcm.job import LcmJob, few_step_lora
        from ...lcm.objective import ConsistencySpec
        from ...lora.train import LoraSpec
        from ...plan import parse_vram
        from ...train import TrainConfig

        model = few_step_model(ckpt_name, "ckpt_name")
        teachers = chosen("checkpoints", {"teacher_name": teacher_name})
        g, data_of = float(guidance), data_spec(data, data_path, prompt_count)
        cfg, budget = TrainConfig(steps=int(steps), lr=float(lr), keep_state=bool(keep_state)), parse_vram(vram)
        return self.trained(filename, f"{Path(ckpt_name).stem}-lcm", (model, *teachers), lambda target, progress:
            few_step_lora(LcmJob(model, target, data_of, teachers[0] if teachers else None,
                                 lora=LoraSpec(int(rank), float(rank)), consistency=ConsistencySpec((g, g)), train=cfg,
                                 resolution=int(resolution), overwrite=overwrite, resume=resume, vram=budget), progress),
            lambda r, name: f"few-step LoRA for {ckpt_name}, {r.modules} modules, {stopped(r.train)} on {r.samples} "
                            f"samples ({losses(r.train)}): {name} in your loras; load it at strength 1 and {use_line()}.")


class SdkdMakeItFast(Job, function="make_fast", job="fast", returns={"student": NAME, "lora": NAME}):
    """Make a checkpoint fast in one job: its BK-SDM tiny student (rebased and polished where a converted public tiny
    student and the checkpoint's base are in checkpoints, else pruned and distilled) and a 4-step LoRA for it."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the checkpoint, the target, the two output names, the schedule."""
        from ...fast import TARGETS

        return {"required": {"ckpt_name": (names("checkpoints"),),
                             **inputs("fast", "target", "out", "lora_out", "distill_steps", "lcm_steps", "prompts",
                                      "resolution", "vram", "overwrite", target=list(TARGETS))}}

    @core_job
    def make_fast(self, ckpt_name: str, target: str, student_filename: str, lora_filename: str, distill_steps: int,
                  lcm_steps: int, prompt_count: int, resolution: int, vram: str, overwrite: bool) -> dict:
        """The core `make_fast` into the first checkpoints and loras folders; outputs the student's and the LoRA's
        names (the LoRA's is '' for target tiny). Without overwrite, files already made are output as they are, so
        queueing the graph again samples instead of training again."""
        from ...fast import FastJob, make_fast
        from ...plan import parse_vram
        from ...train import TrainConfig

        students, loras = output("checkpoints", "fast"), output("loras", "fast", "--lora-out")
        checkpoint = model_path("checkpoints", ckpt_name, "ckpt_name")
        student = students.path(student_filename, f"{Path(ckpt_name).stem}-bk-tiny-fast", ".safetensors", (checkpoint,))
        lora = (loras.path(lora_filename, f"{student.stem}-lcm", ".safetensors", (checkpoint,))
                if target == "tiny+lcm" else None)
        made = [p for p in (student, lora) if p is not None]
        if not overwrite and all(p.is_file() for p in made):
            return self.made(students, loras, student, lora, "already made (turn on 'overwrite' to make them again)")
        candidates = tuple(p for p in (model_path("checkpoints", n, "ckpt_name") for n in names("checkpoints"))
                           if p.resolve() != checkpoint.resolve())
        job = FastJob(checkpoint, target, student, lora, candidates, TrainConfig(steps=int(distill_steps)),
                      TrainConfig(steps=int(lcm_steps), lr=LR["lcm"]), int(prompt_count), int(resolution), parse_vram(vram),
                      overwrite)
        r = training(lambda progress: make_fast(job, progress))
        state = "interrupted; what was written is kept" if r.cancelled else f"{r.route.kind}: {r.use()}"
        return self.made(students, loras, r.student, r.lora, state)

    @staticmethod
    def made(students, loras, student: Path | None, lora: Path | None, state: str) -> dict:
        """The node's text and outputs for the files made."""
        s = students.listed(student) if student else ""
        lo = loras.listed(lora) if lora else ""
        where = ", ".join(w for w in (s and f"{s} in your checkpoints", lo and f"{lo} in your loras") if w)
        extra = f"; load {s} and the LoRA at strength 1, then {use_line()}" if lo and "interrupted" not in state else ""
        return result(f"{where or 'nothing written'} ({state}){extra}", s, lo)
