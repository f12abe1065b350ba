"""Few-step nodes: train a few-step (LCM) LoRA for a checkpoint or student, and "make it fast" (the tiny student of a
checkpoint and its 4-step LoRA as one job). ComfyUI's interrupt stops them after the current step with what was
written kept; their outputs are model names that link straight into Load Checkpoint and Load LoRA."""

from __future__ import annotations

from pathlib import Path

from ...errors import SdkdError
from .common import NONE, Job, chosen, core_job, model_path, names, optional_models, output, result
from .training import DATA, KEEP_STATE, data_spec, losses, stopped, training


class ListedName(str):
    """The type of a model-name output: it links into ComfyUI's model-list inputs (Load Checkpoint's ckpt_name, Load
    LoRA's lora_name, whose type is the list of names) and STRING inputs. ComfyUI's execution.py checks a link with
    `received_type != input_type` (comfy_execution/validation.py lets the type's own `__ne__` decide); the page sees
    '*', which it links to any input."""

    def __ne__(self, other: object) -> bool:
        return not (isinstance(other, list) or other in ("*", "STRING"))


NAME = ListedName("*")
# The CLI flags the core's messages name -> the node widgets that set them.
LCM_WIDGETS = {"--teacher": "teacher_name", "--data": "data_path", "--prompts": "data_path", "--self": "prompt_count",
               "--steps": "steps", "--rank": "rank", "--alpha": "rank", "--resolution": "resolution",
               "--guidance": "guidance", "--vram": "vram", "--resume": "resume", "--lr": "lr",
               "--keep-state": "keep_state"}
FAST_WIDGETS = {"--target": "target", "--lora-out": "lora_filename", "--self": "prompt_count",
                "--resolution": "resolution", "--vram": "vram",
                "--resume": "the Distil node's 'resume'"}


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


def budget(vram: str) -> float | str | None:
    """The vram widget as the core takes it: blank (as set), 'auto', or GB."""
    text = (vram or "").strip().lower()
    if text in ("", "auto"):
        return text or None
    try:
        return float(text)
    except ValueError:
        raise SdkdError(f"vram {vram!r}: give GB (e.g. 8), auto, or leave it blank") from None


class SdkdFewStepLora(Job):
    """Train a few-step (LCM) LoRA for a checkpoint or BK-SDM student, saved in loras: 4 steps at cfg 1."""

    FUNCTION = "train"
    RETURN_TYPES = (NAME,)
    RETURN_NAMES = ("lora",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the model, its teacher, data, adapter rank, schedule, baked-in guidance, output name."""
        return {"required": {
            "ckpt_name": (names("checkpoints"),),
            "teacher_name": (optional_models(), {"default": NONE, "tooltip": "whose guided sampling the model "
                                                 "learns to shortcut; (none): the model itself; for a student, its "
                                                 "teacher"}),
            "data": (list(DATA), {"default": DATA[0], "tooltip": "prompts: the teacher draws the training images"}),
            "data_path": ("STRING", {"default": "", "tooltip": "prompt file or image folder: a name in ComfyUI's "
                                                               "input folder or a full path"}),
            "prompt_count": ("INT", {"default": 500, "min": 1, "max": 100000}),
            "steps": ("INT", {"default": 1000, "min": 1, "max": 1000000}),
            "rank": ("INT", {"default": 64, "min": 1, "max": 256}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64}),
            "guidance": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.5,
                                   "tooltip": "the teacher's cfg baked into the LoRA"}),
            "lr": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False}),
            "vram": ("STRING", {"default": "auto", "tooltip": "GB the run may use, or auto; blank: as set"}),
            "filename": ("STRING", {"default": ""}),
            "resume": ("BOOLEAN", {"default": False}),
            "overwrite": ("BOOLEAN", {"default": False}),
        }, "optional": {"keep_state": KEEP_STATE}}

    @core_job
    def train(self, ckpt_name: str, teacher_name: str, data: str, data_path: str, prompt_count: int, steps: int,
              rank: int, resolution: int, guidance: float, lr: float, vram: str, filename: str, resume: bool,
              overwrite: bool, keep_state: bool = False) -> dict:
        """The core few-step LoRA training into the first loras folder; the LoRA's name is output, for Load LoRA."""
        from ...lcm.job import LcmJob, few_step_lora
        from ...lcm.objective import ConsistencySpec
        from ...lora.train import LoraSpec
        from ...train import TrainConfig

        out = output("loras", widgets=LCM_WIDGETS)
        model = few_step_model(ckpt_name, "ckpt_name")
        teachers = chosen("checkpoints", {"teacher_name": teacher_name})
        with out.worded():
            target = out.path(filename, f"{Path(ckpt_name).stem}-lcm", ".safetensors", (model, *teachers))
            g = float(guidance)
            job = LcmJob(model, target, data_spec(data, data_path, prompt_count), teachers[0] if teachers else None,
                         lora=LoraSpec(int(rank), float(rank)), consistency=ConsistencySpec((g, g)),
                         train=TrainConfig(steps=int(steps), lr=float(lr), keep_state=bool(keep_state)),
                         resolution=int(resolution), overwrite=overwrite, resume=resume, vram=budget(vram))
            r = training(lambda progress: few_step_lora(job, progress))
        name = out.listed(r.path)
        return result(f"few-step LoRA for {ckpt_name}, {r.modules} modules, {stopped(r.train)} on {r.samples} samples "
                      f"({losses(r.train)}): {name} in your loras; load it at strength 1 and {use_line()}", name)


class SdkdMakeItFast(Job):
    """Make a checkpoint fast in one job: its BK-SDM tiny student (rebased and polished where a converted public tiny
    student and the checkpoint's base are in checkpoints, else pruned and distilled) and a 4-step LoRA for it."""

    FUNCTION = "make_fast"
    RETURN_TYPES = (NAME, NAME)
    RETURN_NAMES = ("student", "lora")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Node inputs: the checkpoint, the target, the two output names, the schedule."""
        from ...fast import TARGETS

        return {"required": {
            "ckpt_name": (names("checkpoints"),),
            "target": (list(TARGETS), {"default": "tiny+lcm", "tooltip": "tiny: the student; tiny+lcm: and its "
                                                                         "4-step LoRA"}),
            "student_filename": ("STRING", {"default": "", "tooltip": "blank: <checkpoint>-bk-tiny-fast"}),
            "lora_filename": ("STRING", {"default": "", "tooltip": "blank: <student>-lcm"}),
            "distill_steps": ("INT", {"default": 1000, "min": 1, "max": 1000000,
                                      "tooltip": "distillation steps (the rebase route polishes for a quarter)"}),
            "lcm_steps": ("INT", {"default": 1000, "min": 1, "max": 1000000}),
            "prompt_count": ("INT", {"default": 256, "min": 1, "max": 100000,
                                     "tooltip": "built-in prompts the checkpoint draws its training images from"}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64}),
            "vram": ("STRING", {"default": "auto", "tooltip": "GB the run may use, or auto; blank: as set"}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "off: files already made are output as they are"}),
        }}

    @core_job
    def make_fast(self, ckpt_name: str, target: str, student_filename: str, lora_filename: str, distill_steps: int,
                  lcm_steps: int, prompt_count: int, resolution: int, vram: str, overwrite: bool) -> dict:
        """The core `make_fast` into the first checkpoints and loras folders; outputs the student's and the LoRA's
        names (the LoRA's is '' for target tiny). Without overwrite, files already made are output as they are, so
        queueing the graph again samples instead of training again."""
        from ...fast import FastJob, make_fast
        from ...train import TrainConfig

        students, loras = output("checkpoints", "student_filename", FAST_WIDGETS), output("loras", "lora_filename",
                                                                                          FAST_WIDGETS)
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
                      TrainConfig(steps=int(lcm_steps), lr=1e-4), int(prompt_count), int(resolution), budget(vram),
                      overwrite)
        with students.worded():
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
