"""One table of every job's fields for every front end: per job (prune, distil, LoRA, few-step LoRA, make it fast,
rebase, compare, bench, LoRA port), each field's name (the core's keyword / the CLI's dest), its CLI flag (as the
core's messages name it), the tab's label, the node's input, its default, limits and help.

The tab's widgets and the nodes' INPUT_TYPES are built from it (`node_input`), the CLI's argparse defaults and the
core's own defaults are checked against it (tests/test_terms.py), and `labels` gives each front end's words for the
core's messages (`names.Output` rewords by it). Plain data: ComfyUI imports this with the nodes at its start, so no
torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from types import MappingProxyType
from typing import Iterator, Mapping

FRONTS = ("cli", "tab", "node")
MAX_STEPS = 50  # sampling.MAX_STEPS (LCM's schedule is a subset of 50 steps); tests/test_terms.py checks they agree
SAMPLERS = ("dpmpp_2m", "euler", "ddim", "lcm")  # sampling.SAMPLER_NAMES, default first (checked likewise)
DTYPES = ("fp16", "bf16", "fp32")
NONE = "(none)"  # an optional model list's first choice (the tab's and the nodes')


@dataclass(frozen=True)
class Field:
    """One setting of a job as every front end shows it (None: that front end has no widget or flag for it)."""

    name: str  # the core's keyword for it (the CLI's argparse dest)
    flag: str | None  # how the CLI spells it, and the core's messages name it ("--steps", "COMMUNITY")
    tab: str | None  # the tab widget's label
    node: str | None  # the ComfyUI node's input
    default: object = None  # None: each front end has its own (a host's model list, its own words for choices)
    lo: float | None = None  # limits of a number (the nodes declare them; ComfyUI and core_job enforce them)
    hi: float | None = None
    step: float | None = None
    choices: tuple | None = None
    help: str = ""  # the node's tooltip
    fronts: Mapping[str, object] = dc_field(default_factory=dict)  # a front end's own default where it differs
    also: tuple[str, ...] = ()  # other names the core's messages use for the same widget
    node_opts: Mapping[str, object] = dc_field(default_factory=dict)  # extra ComfyUI options (multiline, round)

    def default_for(self, front: str) -> object:
        """The default `front` shows."""
        return self.fronts.get(front, self.default)

    def kind(self) -> str:
        """ComfyUI's widget type for it."""
        value = self.default_for("node")
        if isinstance(value, bool):
            return "BOOLEAN"
        return {int: "INT", float: "FLOAT"}.get(type(value), "STRING")


F = Field
OUT, OVERWRITE = "out", "overwrite"
CHECKPOINT = "Checkpoint (teacher or student)"  # the tab's model list, above every job
PORTABLE = "Portable (loads whole in web UIs without sdkd; small and tiny)"
VRAM_HELP = "GB the run may use, or auto; blank: as set"
KEEP_HELP = ("keep the resumable training state (GBs) in the run folder after a finished run, to resume it for more "
             "steps later")
DATA_HELP = "prompt file or image folder: a name in ComfyUI's input folder or a full path"


def _steps(default: int = 1000, tab: str = "Steps", **kw) -> Field:
    return F("steps", "--steps", tab, "steps", default, 1, 1_000_000, **kw)


def _resolution() -> Field:
    return F("resolution", "--resolution", "Resolution", "resolution", 512, 64, 1024, 64)


def _vram(node: str | None = "vram") -> Field:
    return F("vram", "--vram", "VRAM budget (GB or auto)", node, "auto", help=VRAM_HELP, fronts={"cli": None})


def _previews() -> Field:
    return F("preview_every", "--preview-every", "Samples every N steps", None, 100, fronts={"cli": 0})


def _flag(name: str, tab: str | None, node: str | None, help: str = "", **kw) -> Field:
    return F(name, f"--{name.replace('_', '-')}", tab, node, False, help=help, **kw)


def _out(tab: str | None, node: str | None = "filename", **kw) -> Field:
    return F(OUT, "--out", tab, node, "", fronts={"cli": None, **kw.pop("fronts", {})}, **kw)


def _data(node: str = "data_path") -> Field:
    return F("data", "--data", "Image folder or prompt file", node, "", help=DATA_HELP, also=("--prompts",),
             fronts={"cli": None})


def _sampler(tab: str = "Sampler") -> Field:
    return F("sampler", "--sampler", tab, "sampler", SAMPLERS[0], choices=SAMPLERS,
             help="lcm: 4-8 steps at guidance 1, with an LCM LoRA")


def _guidance(tab: str, help: str, name: str = "guidance", **kw) -> Field:
    return F(name, f"--{name.replace('_', '-')}", tab, name, 7.5, 1.0, 30.0, 0.5, help=help, **kw)


def _size() -> Field:
    return F("size", "--size", "Size", "size", 512, 64, 1024, 8)


LR = {"distil": 5e-5, "lora": 1e-4, "lcm": 1e-4}  # each training job's learning rate (TrainConfig's is distil's)


def _lr(job: str, step: float) -> Field:
    return F("lr", "--lr", None, "lr", LR[job], 1e-7, 1.0, step, node_opts={"round": False})


def _jobs() -> dict[str, tuple[Field, ...]]:
    """Every job's fields, in the order the tab and the nodes show them."""
    dtype = F("dtype", "--dtype", "Weights", "dtype", "fp16", choices=DTYPES)
    variant = F("variant", "--variant", "Student", "variant", "small", fronts={"cli": None})
    keep = _flag("keep_state", "Keep training state", "keep_state", KEEP_HELP)
    resume = _flag("resume", "Resume", "resume")
    kind = F("kind", None, "Training data", "data", help="prompts: the teacher draws the training images",
             fronts={"tab": "built-in prompts (teacher generates)", "node": "built-in prompts"})
    prompt_count = F("self_n", "--self", "Built-in prompts", "prompt_count", 500, 1, 100_000, fronts={"cli": None})
    portable = _flag("portable", PORTABLE, "portable", "small/tiny: add an identity middle block so Forge and A1111 "
                     "without sdkd load every weight (+31M parameters at SD1.5 size)")
    weights = [F(f"l_{k}", f"--l-{k}", label, f"l_{k}", 1.0, 0.0, 10.0, 0.1)
               for k, label in (("sd", "Task loss weight"), ("out", "Output KD weight"), ("feat", "Feature KD weight"))]
    return {
        "prune": (variant, dtype, _out("Output name"), _flag(OVERWRITE, "Overwrite an existing file", "overwrite"),
                  portable),
        "distil": (variant, kind, _data(), prompt_count, _steps(), _resolution(), _lr("distil", 1e-6),
                   _vram(), _previews(), *weights, _out("Student name"), resume, keep,
                   _flag(OVERWRITE, "Overwrite", "overwrite"), portable),
        "lora": (F("data", "--data", "Image folder (with .txt captions or metadata.jsonl)", "image_folder", "",
                   help="images with .txt captions (or metadata.jsonl): a folder in ComfyUI's input folder or a full "
                        "path", fronts={"cli": None, "node": "sdkd-lora"}),
                 _flag("text_encoder", "Also train the text encoder", "text_encoder"),
                 F("rank", "--rank", "Rank", "rank", 16, 1, 256), F("alpha", "--alpha", "Alpha", "alpha", 16.0, 0.01, 256.0, 0.5),
                 _steps(), _resolution(), _lr("lora", 1e-5), _vram(None), _previews(), _out("LoRA name"), resume,
                 keep, _flag(OVERWRITE, "Overwrite", "overwrite")),
        "lcm": (F("teacher", "--teacher", "Teacher (blank: the model itself)", "teacher_name", NONE,
                  help="whose guided sampling the model learns to shortcut; (none): the model itself; for a student, "
                       "its teacher", fronts={"cli": None, "tab": "(the model itself)"}),
                kind, _data(), prompt_count, _steps(), F("rank", "--rank", "Rank", "rank", 64, 1, 256, also=("--alpha",)),
                _resolution(), _guidance("Guidance (CFG baked in)", "the teacher's cfg baked into the LoRA",
                          fronts={"cli": (7.5, 7.5)}),  # the CLI takes a range to sample from
                _lr("lcm", 1e-5), _vram(), _previews(), _out("Few-step LoRA name"), resume, keep,
                _flag(OVERWRITE, "Overwrite", "overwrite")),
        "fast": (F("target", "--target", "Target", "target", "tiny+lcm", choices=("tiny", "tiny+lcm"),
                   help="tiny: the student; tiny+lcm: and its 4-step LoRA",
                   fronts={"tab": "Tiny + 4-step LoRA"}),  # the tab shows fast.TARGETS' words
                 _out("Student name", "student_filename", help="blank: <checkpoint>-bk-tiny-fast"),
                 F("lora_out", "--lora-out", "4-step LoRA name", "lora_filename", "", help="blank: <student>-lcm",
                   fronts={"cli": None}),
                 F("distill_steps", "--distill-steps", "Distil steps", "distill_steps", 1000, 1, 1_000_000,
                   help="distillation steps (the rebase route polishes for a quarter)"),
                 F("lcm_steps", "--lcm-steps", "LoRA steps", "lcm_steps", 1000, 1, 1_000_000),
                 F("prompts", "--prompts", "Built-in prompts", "prompt_count", 256, 1, 100_000, also=("--self",),
                   help="built-in prompts the checkpoint draws its training images from"),
                 _resolution(), _vram(),
                 _flag(OVERWRITE, "Overwrite", "overwrite", "off: files already made are output as they are"),
                 F("resume", "--resume", "Resume in the Distil or Few-step LoRA section", "the Distil node's 'resume'")),
        "rebase": (F("community", "COMMUNITY", CHECKPOINT, "ckpt_name", help="the community checkpoint"),
                   F("base", "--base", "Base (what the checkpoint was made from)", "base_name",
                     help="the checkpoint it was fine-tuned or merged from (SD1.5 for most)"),
                   F("student", "--student", "Student to rebase", "student_name",
                     help="a BK-SDM student of the base: a public one (Nota bk-sdm, Segmind small-sd/tiny-sd converted "
                          "with `sdkd convert`) or one of yours"),
                   F("strength", "--strength", "Strength", "strength", 1.0, -2.0, 2.0, 0.05), dtype,
                   _out("Rebased student name"), _flag(OVERWRITE, "Overwrite", "overwrite")),
        "compare": (F("prompts", "--prompts", "Prompts, one per line", "prompts", "",
                      fronts={"cli": None, "node": "a photograph of an astronaut riding a horse\na red apple on a table"},
                      node_opts={"multiline": True}),
                    F("seeds", "--seeds", "Seeds", "seeds", "0 1", fronts={"cli": [0]}),
                    _size(),
                    _sampler("Student sampler"),
                    F("steps", "--steps", "Student steps", "steps", 25, 1, MAX_STEPS, help="the students' sampler steps"),
                    _guidance("Student guidance", "the students' guidance (1: none, as for LCM LoRAs)"),
                    F("lora", "--lora", "Student LoRA", "lora_name", NONE, help="a LoRA applied to every student",
                      fronts={"cli": []}),
                    F("lora_weight", None, "LoRA weight", "lora_strength", 1.0, -4.0, 4.0, 0.05),
                    F("reference_steps", "--reference-steps", "Teacher steps", "reference_steps", 25, 1, MAX_STEPS,
                      help="the teacher's steps"),
                    _guidance("Teacher guidance", "the teacher's guidance", "reference_guidance"),
                    _out("Report name", None, fronts={"tab": "report", "cli": "sdkd-compare"})),
        "bench": (_size(), _sampler(), F("steps", "--steps", "Steps", "steps", 25, 1, MAX_STEPS),
                  _guidance("Guidance", "above 1 doubles the UNet batch; LCM LoRAs draw at 1"),
                  F("repeats", "--repeats", "Timed UNet calls", "repeats", 5, 1, 100),
                  F("t2i_repeats", "--t2i-repeats", "Timed images", None, 3),
                  _out("Bench name", None, fronts={"tab": "bench", "cli": "sdkd-bench"})),
        "port": (F("to", "--to", "Port to", "student_name", "small", fronts={"cli": None, "node": None},
                   help="the BK-SDM student the LoRA should work on"),
                 _out("Ported LoRA name"), _flag("alpha_equals_rank", "Alpha = rank (for a LoRA that states no alpha)", None),
                 _flag(OVERWRITE, "Overwrite", "overwrite")),
        "inspect": (),
    }


JOBS: Mapping[str, Mapping[str, Field]] = MappingProxyType(
    {job: MappingProxyType({f.name: f for f in fs}) for job, fs in _jobs().items()})


def field(job: str, name: str) -> Field:
    """One field of `job`."""
    return JOBS[job][name]


def fields(job: str, front: str) -> Iterator[Field]:
    """`job`'s fields that `front` shows, in the table's order."""
    return (f for f in JOBS[job].values() if _name(f, front) is not None)


def _name(f: Field, front: str) -> str | None:
    return {"cli": f.flag, "tab": f.tab, "node": f.node}[front]


def labels(job: str, front: str) -> dict[str, str]:
    """What `front` ("cli", "tab" or "node") calls each thing `job`'s core messages name (each flag, and the other
    names it goes by): the CLI the names as they are; names the front end has no widget for are left out, so a
    message keeps them as the core wrote them."""
    if front not in FRONTS:
        raise ValueError(f"front end {front!r}: one of {FRONTS}")
    words = {}
    for f in JOBS[job].values():
        said = _name(f, front)
        if f.flag is not None and said is not None:
            words.update({name: f.flag if front == "cli" else said for name in (f.flag, *f.also)})
    return words


def node_input(job: str, name: str) -> tuple:
    """The ComfyUI input for one field: (type or choices, options) with its default, limits and tooltip."""
    f = JOBS[job][name]
    default = f.default_for("node")
    opts = {} if default is None else {"default": default}
    opts.update({k: v for k, v in (("min", f.lo), ("max", f.hi), ("step", f.step)) if v is not None})
    opts.update(f.node_opts)
    if f.help:
        opts["tooltip"] = f.help
    return (list(f.choices) if f.choices else f.kind(), opts)


@dataclass(frozen=True)
class Form:
    """One job's values as a front end gave them, by field name (frozen): built once at the edge from the widgets'
    values in their order, read by the job (`form.steps`); a field not given is the front end's default."""

    job: str
    front: str
    values: Mapping[str, object]

    @classmethod
    def of(cls, job: str, front: str, names: tuple[str, ...], values: tuple) -> "Form":
        """The form of `values`, given in the order of `names` (a section's widgets); trailing fields not given (a
        caller from before they existed) are at the front end's defaults."""
        if len(values) > len(names):
            raise ValueError(f"{job}: {len(values)} values for {len(names)} fields {names}")
        return cls(job, front, MappingProxyType(dict(zip(names, values))))

    @classmethod
    def given(cls, job: str, front: str, **values: object) -> "Form":
        """The form of `values` by field name (the rest at the front end's defaults)."""
        return cls(job, front, MappingProxyType(values))

    def __getattr__(self, name: str) -> object:
        if name in ("job", "front", "values"):  # not set yet (copy, pickle)
            raise AttributeError(name)
        if name in self.values:
            return self.values[name]
        if name in JOBS[self.job]:
            return JOBS[self.job][name].default_for(self.front)
        raise AttributeError(f"{self.job} has no field {name!r}")

    def replace(self, **changes: object) -> "Form":
        """The form with some values changed."""
        return Form(self.job, self.front, MappingProxyType({**self.values, **changes}))
