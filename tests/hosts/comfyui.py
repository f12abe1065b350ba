"""ComfyUI 0.3.64 with sdkd's nodes: import, prune through the API, load, one UNet call, KSampler with LoRAs, cancel;
every example workflow from the template browser's route run on its defaults (shrunk), a distil interrupted, and
LCM LoRAs (tests/hosts/lcm.py) on the teacher and tiny with the `lcm` sampler."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from . import comfy_setup
from .harness import (LORA_ARGS, PROBE_KEYS, REPO, SCRATCH, Report, Server, clear, discard, disk_budget, errors_in,
                      free_port, log, python_of, run_py, sdkd)

HOST = "comfyui"
VARIANTS = ("base", "small", "tiny")
TOL = 1e-3  # max |diff| of one fp32 UNet call, ComfyUI vs sdkd's diffusers student (outputs are O(1))
# Full-size LoRA training costs ~2 min a model on 2 cores: train one for the smallest student, port to all three.
TRAINED_FOR = ("tiny",)
NEED_GIB = 8.0  # free disk the checks need at their peak (measured: the DISK line's fall in free space)
WORKFLOWS = REPO / "example_workflows"
DEMO = REPO / "sdkd_ext" / "models" / "demo-teacher.safetensors"
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # nodes the page draws and never sends to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# The workflows in the order one's outputs feed the next; the names their defaults use -> this run's models (the 15 MB
# demo teacher where sdkd reads the file itself; the full-size one where ComfyUI must load it), and what is shrunk to
# fit CI (node type -> widget values).
ORDER = ("sdkd_prune_to_file", "sdkd_train_lora", "sdkd_port_lora", "sdkd_rebase", "sdkd_compare", "sdkd_bench",
         "sdkd_distil", "sdkd_prune_in_memory", "sdkd_lcm_tiny_4_steps")
# Loaded in the page and checked against the converter, not queued: they train a student and a LoRA of the full-size
# teacher (minutes on a CPU); tests/test_comfy_fewstep.py runs their nodes on small models.
LOADED_ONLY = ("sdkd_few_step_lora", "sdkd_make_it_fast")
DEMO_NAMES = {"community-model.safetensors": "demo-teacher.safetensors",
              "bk-sdm-small.safetensors": "demo-teacher-bk-small.safetensors", "v1-5-pruned-emaonly": "demo-teacher"}
LCM_TINY = "teacher-lcm-tiny"  # the tiny student (hard-linked) the LCM checks leave, with its LCM LoRA, for the workflow
RENAMED = {name: DEMO_NAMES for name in ORDER} | {"sdkd_prune_in_memory": {"v1-5-pruned-emaonly": "teacher"},
                                                 "sdkd_lcm_tiny_4_steps": {"v1-5-pruned-emaonly-bk-tiny": LCM_TINY}}
SHRUNK = {
    "SdkdTrainLora": {"steps": 2, "resolution": 64, "rank": 4, "alpha": 4.0, "lr": 1e-2},
    "SdkdCompare": {"size": 64, "steps": 2, "reference_steps": 2, "seeds": "0"},
    "SdkdBench": {"size": 64, "steps": 1, "repeats": 1},
    "SdkdDistil": {"prompt_count": 2, "steps": 2, "resolution": 64},
    "EmptyLatentImage": {"width": 64, "height": 64},
    "KSampler": {"steps": 2},
}


def layout(run: Path) -> dict[str, Path]:
    """The throw-away --base-directory: models, custom nodes (sdkd as a user clones it, and the probe), output."""
    dirs = {name: run / sub for name, sub in
            {"ckpt": "models/checkpoints", "lora": "models/loras", "nodes": "custom_nodes", "out": "output",
             "input": "input"}.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    clear([*dirs["ckpt"].glob("teacher-*"), *dirs["ckpt"].glob("demo-teacher-*"), *dirs["lora"].glob("*"),
           *run.glob("models/x*")])
    sdkd = dirs["nodes"] / "sdkd"
    if not sdkd.exists():
        sdkd.symlink_to(REPO, target_is_directory=True)
    probe = dirs["nodes"] / "sdkd_probe"
    shutil.rmtree(probe, ignore_errors=True)
    shutil.copytree(Path(__file__).parent / "comfy_probe", probe)
    shutil.copy(PROBE_KEYS, probe)
    return dirs


def api_prompt(workflow: dict, object_info: dict) -> dict:
    """The API prompt the page would queue for a UI-format workflow: each node's widget values in the order of its
    declared widget inputs (a seed's 'control after generate' value skipped), links as [node, slot]."""
    links = {row[0]: row for row in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        declared = object_info[node["type"]]["input"]
        values = iter(node.get("widgets_values") or [])
        inputs = {}
        for name, spec in {**declared.get("required", {}), **declared.get("optional", {})}.items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                inputs[name] = next(values)
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    next(values)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        left = list(values)
        if left:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(left)} widget value(s) more than it declares")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def adapted(prompt: dict, names: dict[str, str], shrunk: dict[str, dict]) -> dict:
    """A prompt with this run's model names in every text value and CI-sized settings."""
    for node in prompt.values():
        for k, v in node["inputs"].items():
            if isinstance(v, str):
                for old, new in names.items():
                    v = v.replace(old, new)
                node["inputs"][k] = v
        node["inputs"].update(shrunk.get(node["class_type"], {}))
    return prompt


def run_prompt(server: Server, graph: dict, timeout: float = 900) -> dict:
    """Queue an API-format workflow and wait for its /history entry."""
    return run_entry(server, server.post("/prompt", {"prompt": graph, "client_id": "sdkd-ci"})["prompt_id"], timeout)


def error_of(entry: dict) -> str:
    """The exception message ComfyUI recorded for a failed prompt ('' if it succeeded)."""
    if entry["status"].get("status_str") == "success":
        return ""
    for kind, data in entry["status"].get("messages", []):
        if kind in ("execution_error", "execution_interrupted"):
            return f"{kind}: {data.get('exception_message', '').strip()}"
    return entry["status"].get("status_str", "unknown")


def prune_graph(variant: str, filename: str) -> dict:
    """sdkd's prune node alone, on the test teacher."""
    return {"1": {"class_type": "SdkdPrune", "inputs": {"ckpt_name": "teacher.safetensors", "variant": variant,
                                                         "dtype": "fp16", "filename": filename, "overwrite": False}}}


def sample_graph(ckpt: str, tag: str, lora: str | None = None) -> dict:
    """Checkpoint (+ LoRA) -> CLIP encode -> KSampler 64x64, 2 steps -> VAE decode -> SaveImage."""
    g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    src = "1"
    if lora:
        g["2"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                         "strength_model": 1.0, "strength_clip": 1.0}}
        src = "2"
    g.update({
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a flat red square", "clip": [src, 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": [src, 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": [src, 0], "seed": 0, "steps": 2, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"sdkd-ci-{tag}"}},
    })
    return g


def saved_image(entry: dict, out_dir: Path) -> Path:
    """The file SaveImage wrote for a finished prompt."""
    img = entry["outputs"]["8"]["images"][0]
    return out_dir / img.get("subfolder", "") / img["filename"]


def files_under(root: Path) -> set[Path]:
    """Every file below root (to see what a job wrote)."""
    return {p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def run(report: Report) -> None:
    """All ComfyUI checks; each prints one PASS/FAIL line."""
    from . import models  # torch and sdkd: only in the dependency set's venv

    with report.timed(HOST, "setup"):
        src, manager, venv = comfy_setup.venv()
        run_dir = SCRATCH / comfy_setup.ARCHIVE / "run"
        dirs = layout(run_dir)
        teacher = models.full_teacher(dirs["ckpt"] / "teacher.safetensors")
        data = models.caption_folder(SCRATCH / "lora-data")
        models.caption_folder(dirs["input"] / "sdkd-lora")  # the LoRA node's default image folder
        demo = dirs["ckpt"] / DEMO.name
        if not demo.exists():
            shutil.copy(DEMO, demo)
    manager_install(report, venv, src, manager, dirs["nodes"] / "sdkd")
    server = Server([python_of(venv), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(free_port()),
                     "--disable-auto-launch", "--base-directory", str(run_dir), "--database-url", "sqlite:///:memory:"],
                    cwd=src, log=run_dir / "comfyui.log", port=0)
    server.port = int(server.cmd[server.cmd.index("--port") + 1])
    try:
        with disk_budget(report, HOST, run_dir, NEED_GIB), report.timed(HOST, "checks"):
            checks(report, server, dirs, teacher, data, models)
    finally:
        server.stop()
        log(f"ComfyUI log: {server.log}")
        discard(run_dir / "models")


def manager_install(report: Report, venv: Path, src: Path, manager: Path, node: Path) -> None:
    """sdkd installed by ComfyUI-Manager's own install command (requirements.txt line by line, then install.py from
    the node folder): `pip freeze` afterwards is the venv as a Manager user has it (ComfyUI's and the Manager's
    requirements, the Manager's own fixes applied) plus additions, none upgraded, downgraded or removed."""
    from .a1111 import freeze

    with report.check(HOST, "manager-install") as r:
        baseline = comfy_setup.bare_freeze(venv, src, manager)  # first: on a new venv it is written before sdkd is in
        said = comfy_setup.manager_install(venv, src, manager, node)
        bare = dict(l.lower().split("==", 1) for l in baseline.read_text().splitlines() if "==" in l)
        after = freeze(venv)
        moved = {k: f"{v}->{after.get(k, 'removed')}" for k, v in bare.items() if after.get(k) != v}
        added = sorted(f"{k}=={v}" for k, v in after.items() if k not in bare)
        lines = said.splitlines()  # "## ComfyUI-Manager: EXECUTE => " then the command, on the same line or the next
        steps = [l.split("=> ", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
                 for i, l in enumerate(lines) if "ComfyUI-Manager: EXECUTE =>" in l]
        r["figure"] = (f"moved={moved or 'none'} added={len(added)}({','.join(added)}) manager_steps={len(steps)} "
                       f"sdkd_said={[l for l in said.splitlines() if l.startswith('sdkd:')]}")
        r["ok"] = (not moved and any("install.py" in c for c in steps)
                   and {"diffusers", "peft", "accelerate"} <= set(after))


def checks(report: Report, server: Server, dirs: dict[str, Path], teacher: Path, data: Path, models) -> None:
    """The checks against a started server."""
    from sdkd_ext.hosts.comfyui import NODE_CLASS_MAPPINGS

    with report.check(HOST, "start") as r:
        t = time.monotonic()
        server.start()
        server.wait(lambda s: isinstance(s.get("/object_info/KSampler"), dict), 300)
        r["figure"] = f"ready_in={time.monotonic() - t:.0f}s"
    with report.check(HOST, "nodes-import") as r:
        info = server.get("/object_info")
        nodes = sorted(k for k in info if k.startswith("Sdkd"))
        errs = errors_in(server.text(), "sdkd")
        r["figure"] = f"nodes={','.join(nodes) or 'none'} log_errors={len(errs)}" + (f" first={errs[0]!r}" if errs else "")
        r["ok"] = set(NODE_CLASS_MAPPINGS) <= set(nodes) and not errs
    if "SdkdPrune" not in info:
        return

    students: dict[str, str] = {}
    lcm_files: list[Path] = []
    for v in VARIANTS:
        with report.check(HOST, f"prune-{v}") as r:
            entry = run_prompt(server, prune_graph(v, f"teacher-bk-{v}"))
            out = dirs["ckpt"] / f"teacher-bk-{v}.safetensors"
            err = error_of(entry)
            r["figure"] = f"file={out.name if out.exists() else 'missing'} yaml={out.with_suffix('.yaml').exists()}"
            r["ok"] = not err and out.exists()
            if err:
                r["figure"] += f" error={err[:300]!r}"
            if r["ok"]:
                students[v] = out.name

    for v, name in students.items():
        load_check(report, server, dirs, name, models, f"load-{v}")

    teacher_lora = None
    with report.check(HOST, "teacher-lora-train") as r:
        teacher_lora = dirs["lora"].parent / "teacher-lora.safetensors"
        teacher_lora.unlink(missing_ok=True)
        shutil.rmtree(teacher_lora.with_suffix(".run"), ignore_errors=True)
        sdkd("lora", str(teacher), "--data", str(data), "--out", str(teacher_lora), *LORA_ARGS)
        r["figure"] = f"file={teacher_lora.name}"

    for v, name in students.items():
        plain = None
        with report.check(HOST, f"ksampler-{v}") as r:
            entry = run_prompt(server, sample_graph(name, v))
            err = error_of(entry)
            r["ok"] = not err
            if err:
                r["figure"] = f"error={err[:300]!r}"
            else:
                plain = saved_image(entry, dirs["out"])
                r["figure"] = f"image={plain.name}"
        loras = {kind: dirs["lora"] / f"{v}-{kind}.safetensors" for kind in ("trained", "ported")
                 if kind == "ported" or v in TRAINED_FOR}
        for kind, path in loras.items():
            with report.check(HOST, f"lora-{kind}-{v}") as r:
                if kind == "trained":
                    sdkd("lora", str(dirs["ckpt"] / name), "--data", str(data), "--out", str(path), *LORA_ARGS)
                else:
                    sdkd("lora-port", str(teacher_lora), "--to", str(dirs["ckpt"] / name), "--out", str(path))
                before = len(server.text())
                entry = run_prompt(server, sample_graph(name, f"{v}-{kind}", path.name))
                err = error_of(entry)
                not_loaded = [l for l in server.text()[before:].splitlines() if "lora key not loaded" in l]
                diff = models.image_diff(plain, saved_image(entry, dirs["out"])) if plain and not err else float("nan")
                r["figure"] = f"not_loaded={len(not_loaded)} mean|img-plain|={diff:.3f}"
                r["ok"] = not err and not not_loaded and diff > 0
                if err:
                    r["figure"] += f" error={err[:300]!r}"
                elif not_loaded:
                    r["figure"] += f" first={not_loaded[0].strip()[:200]!r}"
        student = dirs["ckpt"] / name  # no later check reads the full-size students
        if v == "tiny":
            lcm_files = lcm_host_checks(report, server, dirs, teacher, student, models)
        discard(student, student.with_suffix(".yaml"), *loras.values())

    with report.check(HOST, "prune-path-traversal") as r:
        outside = files_under(dirs["ckpt"].parents[1]) - files_under(dirs["ckpt"])
        entry = run_prompt(server, prune_graph("tiny", "../x"))
        new = sorted(str(p.relative_to(dirs["ckpt"].parents[1]))
                     for p in files_under(dirs["ckpt"].parents[1]) - files_under(dirs["ckpt"]) - outside
                     if "output" not in p.parts and "user" not in p.parts)
        err = error_of(entry)
        r["figure"] = f"refused={bool(err)} written_outside={new or 'none'}"
        r["ok"] = bool(err) and not new

    with report.check(HOST, "cancel-prune") as r:
        before = files_under(dirs["ckpt"])
        pid = server.post("/prompt", {"prompt": prune_graph("base", "cancelled"), "client_id": "sdkd-ci"})["prompt_id"]
        t = time.monotonic()  # interrupt mid-write: once the node's hidden temp file exists (a fixed wait raced it)
        while not any(dirs["ckpt"].glob(".cancelled.*")) and time.monotonic() - t < 120:
            time.sleep(0.02)
        server.post("/interrupt", {})
        entry = run_entry(server, pid, 300)
        left = sorted(p.name for p in files_under(dirs["ckpt"]) - before)
        err = error_of(entry)
        r["figure"] = f"stopped={'interrupted' in err} left_behind={left or 'none'} after={time.monotonic() - t:.1f}s"
        r["ok"] = "interrupted" in err and not left
    workflow_checks(report, server, dirs, info)
    discard(*lcm_files)
    cancel_distil(report, server, dirs, info, models)


def written(entry: dict, dirs: dict[str, Path]) -> list[str]:
    """What a finished prompt says it wrote, for each output that does not exist: model files named by sdkd nodes
    ('NAME in your checkpoints|loras') and images saved by SaveImage."""
    where = {"checkpoints": dirs["ckpt"], "loras": dirs["lora"]}
    missing = []
    for node_id, ui in entry["outputs"].items():
        for text in ui.get("text", []):
            for name, kind in re.findall(r"(\S+\.safetensors) in your (checkpoints|loras)", text):
                if not (where[kind] / name).is_file():
                    missing.append(name)
        for img in ui.get("images", []):
            if not (dirs["out"] / img.get("subfolder", "") / img["filename"]).is_file():
                missing.append(img["filename"])
    return missing


def page_prompts(report: Report, server: Server, info: dict) -> dict[str, dict]:
    """Every example workflow loaded in ComfyUI's own page (headless Chromium): the API prompt the page makes of it,
    checked against `api_prompt` (which the unit tests use); {} if the page could not be driven."""
    from .a1111 import browser_venv

    made: dict[str, dict] = {}
    with report.check(HOST, "workflows-load-in-page") as r:
        made = json.loads(run_py(browser_venv(), str(Path(__file__).parent / "comfy_page.py"), server.url, *ORDER,
                                 *LOADED_ONLY).strip().splitlines()[-1])
        differ = {}
        for n in (*ORDER, *LOADED_ONLY):
            page = {k: (v["class_type"], v["inputs"]) for k, v in made.get(n, {}).items()}  # the page adds a _meta title
            ours = {k: (v["class_type"], v["inputs"]) for k, v in
                    api_prompt(server.get(f"/api/workflow_templates/sdkd/{n}.json"), info).items()}
            if page != ours:
                differ[n] = next((k, page.get(k), ours.get(k)) for k in sorted({*page, *ours}) if page.get(k) != ours.get(k))
        every = (*ORDER, *LOADED_ONLY)
        r["figure"] = f"loaded={sum(bool(made.get(n)) for n in every)}/{len(every)} differ_from_converter={list(differ) or 'none'}"
        r["ok"] = not differ
        if differ:
            r["figure"] += f" first={str(next(iter(differ.values())))[:400]}"
    return made


def workflow_checks(report: Report, server: Server, dirs: dict[str, Path], info: dict) -> None:
    """The template browser's list names every example workflow; each, as the page queues it (or, without a page,
    as `api_prompt` converts it), runs on its defaults (with this run's model names, shrunk) and its outputs exist."""
    shipped = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    with report.check(HOST, "workflow-templates") as r:
        listed = sorted(server.get("/workflow_templates").get("sdkd", []))
        r["figure"] = f"listed={len(listed)}/{len(shipped)}"
        r["ok"] = listed == shipped and {*ORDER, *LOADED_ONLY} == set(shipped)
    made = page_prompts(report, server, info)
    for name in ORDER:
        with report.check(HOST, f"workflow-{name}") as r:
            prompt = made.get(name) or api_prompt(server.get(f"/api/workflow_templates/sdkd/{name}.json"), info)
            entry = run_prompt(server, adapted(prompt, RENAMED[name], SHRUNK))
            err = error_of(entry)
            outputs = sum(len(ui.get("text", [])) + len(ui.get("images", [])) for ui in entry["outputs"].values())
            missing = written(entry, dirs) if not err else []
            r["figure"] = f"from={'page' if name in made else 'converter'} outputs={outputs} missing={missing or 'none'}"
            r["ok"] = not err and outputs > 0 and not missing
            if err:
                r["figure"] += f" error={err[:300]!r}"


def cancel_distil(report: Report, server: Server, dirs: dict[str, Path], info: dict, models) -> None:
    """The distil workflow on the full-size teacher, stopped by ComfyUI's interrupt once training has begun: the node
    returns its text, and the student it wrote loads in ComfyUI with every key and sdkd's UNet output."""
    name = "teacher-bk-tiny-cancelled"
    out = dirs["ckpt"] / f"{name}.safetensors"
    flow = json.loads((WORKFLOWS / "sdkd_distil.json").read_text())
    # Training images, not prompts: the teacher then draws nothing before the first step (the cheapest start).
    settings = {"SdkdDistil": {**SHRUNK["SdkdDistil"], "variant": "tiny", "steps": 200, "filename": name,
                               "data": "image folder", "data_path": "sdkd-lora"}}
    with report.check(HOST, "cancel-distil") as r:
        prompt = adapted(api_prompt(flow, info), {"v1-5-pruned-emaonly": "teacher"}, settings)
        pid = server.post("/prompt", {"prompt": prompt, "client_id": "sdkd-ci"})["prompt_id"]
        t = time.monotonic()
        log = out.with_suffix(".run") / "loss.csv"
        while not (log.is_file() and len(log.read_text().splitlines()) > 1) and not server.get(f"/history/{pid}"):
            if time.monotonic() - t > 600:
                raise RuntimeError("distil wrote no training step in 600 s")
            time.sleep(0.5)
        trained = time.monotonic() - t
        server.post("/interrupt", {})
        entry = run_entry(server, pid, 600)
        text = " ".join(line for ui in entry["outputs"].values() for line in ui.get("text", []))
        r["figure"] = (f"text={text[:160]!r} student_written={out.exists()} first_step_after={trained:.1f}s "
                       f"stopped_after={time.monotonic() - t - trained:.1f}s" + (f" error={error_of(entry)[:300]!r}"
                                                                                 if error_of(entry) else ""))
        r["ok"] = not error_of(entry) and "interrupted at step" in text and out.exists()
    if out.exists():
        load_check(report, server, dirs, out.name, models, "cancel-distil-student-loads")
    discard(out, out.with_suffix(".yaml"), out.with_suffix(".run"))


def load_check(report: Report, server: Server, dirs: dict[str, Path], name: str, models, check: str) -> None:
    """ComfyUI loads `name` (in the server, through the probe node): its UNet has every key of the file, and one UNet
    call equals sdkd's own diffusers student's."""
    import safetensors.torch
    import torch

    io = dirs["out"].parent / "probe-io.safetensors"
    with report.check(HOST, check) as r:
        safetensors.torch.save_file(models.unet_inputs(), str(io))
        before = len(server.text())
        k = server.post("/sdkd_probe", {"ckpt": name, "io": str(io)})
        host_out = safetensors.torch.load_file(str(io))
        ref = models.sdkd_unet_call(dirs["ckpt"] / name, host_out)
        diff = float((host_out["out"] - ref).abs().max())
        logged = [l for l in server.text()[before:].splitlines() if "unet missing" in l or "unet unexpected" in l]
        r["figure"] = (f"type={k['model_type']} keys={k['model_keys']}/{k['file_keys']} missing={k['n_missing']} "
                       f"zero_filled={k['n_zero_filled']} unexpected={k['n_unexpected']} differ={k['n_differ']} "
                       f"max|diff|={diff:.2e}")
        r["ok"] = (k["n_missing"] == k["n_unexpected"] == k["n_differ"] == 0 and not logged and diff <= TOL
                   and torch.isfinite(ref).all().item())
        if not r["ok"]:
            r["figure"] += f" e.g.={k['examples']} log={logged[:1]}"


def run_entry(server: Server, pid: str, timeout: float = 900) -> dict:
    """Poll /history until a queued prompt has finished (or failed); a dead server or a timeout raises."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entry = server.get(f"/history/{pid}").get(pid)
        if entry and entry.get("status"):
            return entry
        if server.proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {server.proc.returncode}")
        time.sleep(0.5)
    raise RuntimeError(f"prompt {pid} not finished after {timeout:.0f}s")


def lcm_graph(ckpt: str, tag: str, lora: str | None = None) -> dict:
    """Checkpoint (+ LoRA, model only) -> ModelSamplingDiscrete lcm -> KSampler lcm 4 steps, cfg 1, 64x64 -> SaveImage."""
    g = sample_graph(ckpt, tag)
    model = ["1", 0]
    if lora:
        g["2"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0}}
        model = ["2", 0]
    g["9"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": model, "sampling": "lcm", "zsnr": False}}
    g["6"]["inputs"].update(model=["9", 0], steps=4, cfg=1.0, sampler_name="lcm", scheduler="sgm_uniform")
    return g


def lcm_host_checks(report: Report, server: Server, dirs: dict[str, Path], teacher: Path, tiny: Path, models) -> list[Path]:
    """The LCM checks (tests/hosts/lcm.py) in ComfyUI: 'lora key not loaded' or a failed prompt is a problem. Returns the
    files written (the tiny student hard-linked as LCM_TINY and the LoRAs), left for the LCM example workflow."""
    from .lcm import lcm_checks

    link = dirs["ckpt"] / f"{LCM_TINY}.safetensors"
    link.unlink(missing_ok=True)
    os.link(tiny, link)

    def sample(model: Path, lora: Path | None, tag: str) -> tuple[Path, list[str]]:
        before = len(server.text())
        entry = run_prompt(server, lcm_graph(model.name, tag, lora.name if lora else None))
        err = error_of(entry)
        problems = [l.strip() for l in server.text()[before:].splitlines() if "lora key not loaded" in l]
        return (dirs["out"] / "none" if err else saved_image(entry, dirs["out"])), problems + ([err] if err else [])

    return [link, *lcm_checks(report, HOST, teacher, link, dirs["lora"], sample, models.image_diff)]
