"""The one table of fields (sdkd_ext.terms) against what each front end and the core really default to: the CLI's
argparse defaults (distil's through its recipe), the tab's widgets as gradio builds them, and the core's own defaults
(TrainConfig, LossWeights, recipe(), the job specs). The nodes' INPUT_TYPES are checked in tests/test_comfy_nodes.py,
where a real ComfyUI provides their model lists. A default changed in one place only fails here."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from sdkd_ext.terms import JOBS, LR, MAX_STEPS, SAMPLERS, Form, field, labels, node_input

# job -> the CLI subcommand and the arguments it needs to parse (a data source outside the table: --prompts).
CLI = {"prune": ["prune", "t"], "distil": ["distill", "t", "--prompts", "p"], "lora": ["lora", "b"],
       "lcm": ["lcm", "m", "--prompts", "p"],
       "fast": ["fast", "c"], "rebase": ["rebase", "c"], "compare": ["compare", "t", "s"], "bench": ["bench", "t", "s"],
       "port": ["lora-port", "l"]}
WORDS_ONLY = {("fast", "resume")}  # a name the core's messages use for another section's widget, no flag of its own


def parsed(job: str) -> tuple[argparse.Namespace, dict[str, argparse.Action]]:
    """The CLI's parse of `job` with nothing but its positional and required arguments (distil's settings through its
    recipe), and its arguments by flag (positional ones by their name in upper case)."""
    from sdkd_ext.cli import parser
    from sdkd_ext.distill import with_recipe

    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[CLI[job][0]]
    actions = {flag: a for a in sub._actions for flag in a.option_strings}
    actions.update({a.dest.upper(): a for a in sub._actions if not a.option_strings})
    required = [x for a in sub._actions if a.required and a.option_strings
                for x in (a.option_strings[-1], a.choices[0] if a.choices else "x")]
    a = p.parse_args([*CLI[job], *required])
    return (with_recipe(a) if job == "distil" else a), actions


def test_the_table_knows_every_job_and_nothing_of_it_imports_torch():
    assert set(JOBS) == {*CLI, "inspect"}
    code = "import sys, sdkd_ext.terms; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("job", sorted(CLI))
def test_cli_defaults_are_the_tables(job):
    a, actions = parsed(job)
    checked = 0
    for f in JOBS[job].values():
        if f.flag is None or (job, f.name) in WORDS_ONLY:
            continue
        assert f.flag in actions, f"{job}.{f.name}: the CLI has no {f.flag}"
        dest = actions[f.flag].dest
        assert dest == f.name, f"{job}: {f.flag} sets {dest!r}, the table calls it {f.name!r}"
        if actions[f.flag].required:  # no default on the CLI: it must be given
            assert f.default_for("cli") is None, (job, f.name)
        elif f.flag.startswith("--"):
            assert getattr(a, f.name) == f.default_for("cli"), (job, f.name, getattr(a, f.name))
            checked += 1
    assert checked >= 3


def test_core_defaults_are_the_tables():
    from sdkd_ext.bench import BenchSpec
    from sdkd_ext.compare import CompareSpec
    from sdkd_ext.distill import LossWeights, recipe
    from sdkd_ext.fast import TARGETS, FastJob
    from sdkd_ext.lcm.job import LcmJob
    from sdkd_ext.lora.train import LoraSpec
    from sdkd_ext.rebase import RebaseJob
    from sdkd_ext.sampling import DEFAULT_SAMPLER, MAX_STEPS as SAMPLING_MAX, SAMPLER_NAMES, Sampler
    from sdkd_ext.train import TrainConfig

    d = {n: f.default_for("cli") for n, f in JOBS["distil"].items()}
    cfg, w = TrainConfig(), LossWeights()
    assert (cfg.steps, cfg.lr, cfg.preview_every, cfg.keep_state) == (d["steps"], LR["distil"], d["preview_every"],
                                                                      d["keep_state"])
    assert (w.sd, w.out, w.feat) == (d["l_sd"], d["l_out"], d["l_feat"])
    assert {k: v for k, v in recipe("sdkd").items() if k in d} == {k: d[k] for k in recipe("sdkd") if k in d}
    lora = LoraSpec()
    assert (lora.rank, lora.alpha, lora.text_encoder) == tuple(field("lora", n).default for n in ("rank", "alpha",
                                                                                                   "text_encoder"))
    lcm = {f.name: f for f in dataclasses.fields(LcmJob)}
    assert lcm["lora"].default.rank == field("lcm", "rank").default and lcm["resolution"].default == 512
    assert lcm["train"].default_factory().lr == LR["lcm"]
    fast = {f.name: f for f in dataclasses.fields(FastJob)}
    assert fast["prompts"].default == field("fast", "prompts").default
    assert fast["vram"].default == field("fast", "vram").default_for("cli")
    assert fast["lcm"].default_factory().lr == LR["lcm"]
    assert fast["distill"].default_factory().steps == field("fast", "distill_steps").default
    assert list(TARGETS) == list(field("fast", "target").choices)
    assert TARGETS[field("fast", "target").default] == field("fast", "target").default_for("tab")
    spec, sampler = {f.name: f.default for f in dataclasses.fields(CompareSpec)}, Sampler()
    assert list(spec["seeds"]) == field("compare", "seeds").default_for("cli") and spec["size"] == 512
    for job in ("compare", "bench"):
        assert (sampler.name, sampler.steps, sampler.guidance) == tuple(field(job, n).default for n in
                                                                         ("sampler", "steps", "guidance"))
    assert (DEFAULT_SAMPLER, tuple(SAMPLER_NAMES), SAMPLING_MAX) == (SAMPLERS[0], SAMPLERS, MAX_STEPS)
    b = BenchSpec()
    assert [getattr(b, n) for n in ("size", "repeats", "t2i_repeats")] == [field("bench", n).default
                                                                           for n in ("size", "repeats", "t2i_repeats")]
    r = {f.name: f.default for f in dataclasses.fields(RebaseJob)}
    assert (r["strength"], r["dtype"]) == (field("rebase", "strength").default, field("rebase", "dtype").default)


def sections(gr, folder):
    """Every tab section's widgets, built as the tab builds them (host lists empty)."""
    from sdkd_ext.hosts.base import FolderHost
    from sdkd_ext.ui import tab

    with gr.Blocks():
        host = FolderHost([folder], [folder])
        made = [tab.make_it_fast_section(gr), tab.prune_section(gr), tab.distil_section(gr), tab.lora_section(gr),
                tab.few_step_section(gr, []), tab.compare_section(gr, [], [])[0], tab.bench_section(gr, [])[0],
                tab.port_section(gr, host), tab.rebase_section(gr, [])]
    return made


def test_tab_widgets_show_the_tables_labels_and_defaults(tmp_path):
    gr = pytest.importorskip("gradio")
    from sdkd_ext.ui.jobs import DATA_KINDS

    seen = set()
    for section in sections(gr, tmp_path):
        job = section.widgets.job
        assert set(section.order) == set(section.widgets.made), job  # the click passes every widget, once
        for name, widget in section.widgets.made.items():
            if name not in JOBS[job]:  # a host list ("students", the port's LoRA), not a setting
                continue
            f = JOBS[job][name]
            assert widget.label == f.tab, (job, name, widget.label)
            value = widget.value if not isinstance(widget, gr.Number) or widget.value is None else float(widget.value)
            want = f.default_for("tab")
            assert value == (float(want) if isinstance(want, (int, float)) and not isinstance(want, bool) else want) \
                or (want is None and value in (None, "", [])), (job, name, widget.value, want)
            seen.add((job, name))
    assert field("distil", "kind").default_for("tab") in DATA_KINDS
    shown = {(job, f.name) for job in JOBS for f in JOBS[job].values() if f.tab is not None}
    assert shown - seen == {("rebase", "community"), ("fast", "resume")}  # the tab's checkpoint; another section's


def test_words_and_forms():
    assert labels("rebase", "node")["COMMUNITY"] == "ckpt_name" and labels("rebase", "cli")["COMMUNITY"] == "COMMUNITY"
    assert labels("lcm", "tab")["--alpha"] == "Rank" and "--preview-every" not in labels("lcm", "node")
    assert node_input("distil", "lr") == ("FLOAT", {"default": 5e-5, "min": 1e-7, "max": 1.0, "step": 1e-6,
                                                    "round": False})
    f = Form.of("distil", "tab", ("checkpoint", "steps", "vram"), ("t", 5))
    assert (f.checkpoint, f.steps, f.vram, f.l_sd) == ("t", 5, "auto", 1.0)  # not given: the tab's default
    assert Form.given("distil", "cli").vram is None
    with pytest.raises(AttributeError):
        f.nonsense
    with pytest.raises(ValueError):
        Form.of("distil", "tab", ("steps",), (1, 2))
