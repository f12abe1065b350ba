"""AUTOMATIC1111 v1.10.1 with sdkd's extension: install.py, the tab in Chromium, students loaded, txt2img with LoRAs,
LCM LoRAs (tests/hosts/lcm.py) with the LCM sampler."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import a1111_setup
from .harness import (ARTIFACTS, LORA_ARGS, PROBE_KEYS, REPO, SCRATCH, Report, Server, build_venv, clear, discard,
                      disk_budget, errors_in, free_port, log, python_of, run_py, sdkd)

HOST = "a1111"
VARIANTS = ("base", "small", "tiny")
NO_MIDDLE = ("small", "tiny")  # the students a web UI without sdkd builds a middle block for
TOL = 1e-3
# A small model A1111 accepts: the yaml sets UNet/VAE widths (multiples of 32 for ldm's GroupNorm(32)) and the
# text model comes from the config.json written into the HF cache entry A1111 builds CLIP from.
SMALL = {"width": 64, "context": 64, "vae_ch": 32, "text_hidden": 64, "text_layers": 2}
CLIP_ENTRY = "models--openai--clip-vit-large-patch14"
CPU_FLAGS = ("--use-cpu", "all", "--no-half", "--precision", "full")


def hf_cache(root: Path, text_config: dict) -> Path:
    """An offline HF cache entry for openai/clip-vit-large-patch14: sdkd's CLIP tokenizer files and our text config."""
    snap = root / "hub" / CLIP_ENTRY / "snapshots" / "sdkd-ci"
    snap.mkdir(parents=True, exist_ok=True)
    (root / "hub" / CLIP_ENTRY / "refs").mkdir(exist_ok=True)
    (root / "hub" / CLIP_ENTRY / "refs" / "main").write_text("sdkd-ci")
    for f in (REPO / "sdkd_ext" / "configs" / "tokenizer").iterdir():
        shutil.copy(f, snap / f.name)
    (snap / "config.json").write_text(json.dumps({**text_config, "model_type": "clip_text_model",
                                                  "architectures": ["CLIPTextModel"]}))
    return root


def browser_venv() -> Path:
    """A venv with Playwright's Python client only (it drives Debian's chromium; no browser download)."""
    return build_venv("browser", "playwright\n", torch=False)


def freeze(venv: Path) -> dict[str, str]:
    """name -> version of what is installed in a venv."""
    out = run_py(venv, "-m", "pip", "freeze", "--all")
    return dict(l.lower().split("==", 1) for l in out.splitlines() if "==" in l)


def b64_png(data: str, path: Path) -> Path:
    """Save a base64 image from the API."""
    path.write_bytes(base64.b64decode(data.split(",", 1)[-1]))
    return path


def install_extensions(data: Path) -> Path:
    """The test's probe extension (in a folder that sorts before `sdkd`: the web UI runs its model-loaded callback
    first), and sdkd as a user clones it (the checkout as `extensions/sdkd`)."""
    probe = data / "extensions" / "aaa_sdkd_probe"
    shutil.rmtree(data / "extensions" / "sdkd_probe", ignore_errors=True)  # where earlier runs put it
    shutil.rmtree(probe, ignore_errors=True)
    shutil.copytree(Path(__file__).parent / "a1111_probe", probe)
    shutil.copy(PROBE_KEYS, probe)
    ext = data / "extensions" / "sdkd"
    if ext.is_symlink() or ext.exists():
        ext.unlink()
    ext.symlink_to(REPO, target_is_directory=True)
    return ext


def run_installer(report: Report, host: str, venv: Path, src: Path, ext: Path) -> None:
    """sdkd's install.py through the web UI's own installer runner; no installed version may change."""
    with report.check(host, "install-py-pins") as r:
        before = freeze(venv)
        installer = f"from modules import launch_utils; launch_utils.run_extension_installer({str(ext)!r})"
        run_py(venv, "-c", installer, cwd=src, env={"PYTHONPATH": str(src)})
        after = freeze(venv)
        moved = {k: f"{before[k]}->{after.get(k)}" for k in before if after.get(k) != before[k]}
        added = sorted(f"{k}=={v}" for k, v in after.items() if k not in before)
        r["figure"] = f"moved={moved or 'none'} added={len(added)}({','.join(added[:6])})"
        r["ok"] = not moved


@dataclass(frozen=True)
class LoraLog:
    """How a web UI's log says a LoRA missed layers (and, where it says so, that it applied); how its list refreshes."""

    bad: str  # a log line saying some of the LoRA's keys matched no layer
    applied: str = ""  # with {stem}: the line saying the LoRA was applied ("" where the host logs none)
    refresh: str = ""  # API route that rescans the LoRA folder ("" where the host finds a new file by itself)


@dataclass(frozen=True)
class Spec:
    """What differs between A1111 and Forge for the same checks."""

    host: str
    archive: str
    teacher: Callable[[Path, Path], Path]  # (checkpoint folder, data dir) -> the test's teacher, ready for the host
    context: int  # the teacher's text context width (for the UNet call)
    cpu_flags: tuple[str, ...]
    ready: str  # the log line after which the web UI serves (A1111 loads the model at start, Forge on first use)
    lora_log: LoraLog
    noext_refuses: bool  # without sdkd, small/tiny cannot run (Forge) instead of running with an idle middle block
    portable_idle: str  # without sdkd, the key prefixes ("|"-joined) a portable student may leave at init ("": none)
    tab_jobs: Callable[..., None] | None = None  # more checks of the tab's jobs, with sdkd installed (given this spec)
    need_gib: float = 1.0  # free disk the checks need at their peak (measured: the DISK line's fall in free space)


class WebUI:
    """A1111 or Forge on loopback with the test's data dir, HF cache and (optionally) sdkd's extension."""

    def __init__(self, spec: Spec, src: Path, venv: Path, data: Path, ckpt: Path, tag: str):
        self.ready = spec.ready
        port = free_port()
        # gradio 4 (Forge) serves the web UI's own page scripts only from allowed paths: with --data-dir elsewhere
        # its folder must be allowed, or every page script is refused (403) and the tab's buttons do nothing.
        self.server = Server(
            [python_of(venv), "launch.py", "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check",
             "--skip-python-version-check", *spec.cpu_flags, "--server-name", "127.0.0.1", "--port", str(port),
             "--ckpt", str(ckpt), "--no-download-sd-model", "--api", "--data-dir", str(data), "--loglevel", "DEBUG",
             "--gradio-allowed-path", str(src)],
            cwd=src, log=data / f"webui-{tag}.log", port=port,
            env={"HF_HOME": str(data / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

    def start(self) -> float:
        """Start and wait until the web UI is up and the API answers; seconds taken."""
        t = time.monotonic()
        self.server.start()
        self.server.wait(lambda s: self.ready in s.text() and isinstance(s.get("/sdapi/v1/sd-models"), list), 600)
        return time.monotonic() - t


def small_teacher(ckpts: Path, data: Path) -> Path:
    """A1111's test model: small widths, its yaml beside it, CLIP's config in the offline HF cache."""
    from . import models

    teacher = models.teacher(ckpts / "teacher.safetensors", **SMALL)
    models.write_yaml(teacher)
    hf_cache(data / "hf", models.text_config(teacher))
    return teacher


def run_webui(report: Report, spec: Spec) -> None:
    """All checks of one web UI, with sdkd's extension and then without it; each prints one PASS/FAIL line."""
    from . import models

    host = spec.host
    with report.timed(host, "setup"):
        src, venv = a1111_setup.venv(spec.archive)
        data = SCRATCH / spec.archive / "run"
        ckpts = data / "models" / "Stable-diffusion"
        loras = data / "models" / "Lora"
        for d in (ckpts, loras, data / "extensions"):
            d.mkdir(parents=True, exist_ok=True)
        clear(list(ckpts.glob("teacher-*")) + list(loras.glob("*")))
        teacher = spec.teacher(ckpts, data)
        lora_data = models.caption_folder(SCRATCH / "lora-data")
        ext = install_extensions(data)
        bvenv = browser_venv()
    run_installer(report, host, venv, src, ext)
    try:
        with disk_budget(report, host, data, spec.need_gib):
            checks(report, spec, src, venv, data, teacher, ext, lora_data, bvenv, models)
    finally:
        discard(data / "models")


def checks(report: Report, spec: Spec, src: Path, venv: Path, data: Path, teacher: Path, ext: Path, lora_data: Path,
           bvenv: Path, models) -> None:
    """The checks with sdkd's extension, then without it; each student is deleted once nothing later needs it."""
    host, ckpts = spec.host, teacher.parent
    loras = data / "models" / "Lora"
    ui = WebUI(spec, src, venv, data, teacher, "ext")
    try:
        with report.timed(host, "checks-with-extension"):
            start_and_prune(report, host, ui, ckpts, teacher, bvenv)
            teacher_lora = train_teacher_lora(report, host, teacher, loras.parent, lora_data)
            for v in VARIANTS:
                student = ckpts / f"teacher-bk-{v}.safetensors"
                if student.exists():
                    student_checks(report, spec, ui.server, ckpts, loras, v, teacher_lora, lora_data, models)
                    if v not in NO_MIDDLE:  # only small and tiny are loaded again, without sdkd
                        discard(student, student.with_suffix(".yaml"))
            lcm_webui_checks(report, spec, ui.server, ckpts, loras, teacher, models)
            if spec.tab_jobs is not None:
                spec.tab_jobs(report, spec, ui.server, ckpts, teacher, bvenv, models)
    finally:
        ui.server.stop()
        log(f"{host} log: {ui.server.log}")
    portable = {v: ckpts / f"teacher-bk-{v}-portable.safetensors" for v in NO_MIDDLE}
    for v, out in portable.items():  # what a user without the extension is given: `sdkd prune --portable`
        sdkd("prune", str(teacher), "--variant", v, "--portable", "--dtype", "fp32", "--out", str(out))
    ext.unlink()
    ui = WebUI(spec, src, venv, data, teacher, "noext")
    try:
        with report.timed(host, "checks-without-extension"):
            with report.check(host, "start-without-sdkd") as r:
                r["figure"] = f"ready_in={ui.start():.0f}s"
            for v in NO_MIDDLE:
                if (ckpts / f"teacher-bk-{v}.safetensors").exists():
                    load_check(report, ui.server, ckpts, f"teacher-bk-{v}.safetensors", models,
                               f"noext-{'refused' if spec.noext_refuses else 'load'}-{v}", idle_ok="middle_block.",
                               host=host, context=spec.context, refused=spec.noext_refuses)
            for v, out in portable.items():
                load_check(report, ui.server, ckpts, out.name, models, f"noext-portable-{v}", idle_ok=spec.portable_idle,
                           host=host, context=spec.context)
                discard(out, out.with_suffix(".yaml"))
    finally:
        ui.server.stop()
        ext.symlink_to(REPO, target_is_directory=True)


def run(report: Report) -> None:
    """All A1111 checks."""
    run_webui(report, A1111)


def start_and_prune(report: Report, host: str, ui: WebUI, ckpts: Path, teacher: Path, bvenv: Path) -> None:
    """Start, see the extension import cleanly, press the tab's Prune for each variant in Chromium, see the list."""
    server = ui.server
    with report.check(host, "start") as r:
        r["figure"] = f"ready_in={ui.start():.0f}s"
    with report.check(host, "extension-import") as r:
        errs = errors_in(server.text(), "sdkd")
        r["figure"] = f"log_errors={len(errs)}" + (f" first={errs[0][:200]!r}" if errs else "")
        r["ok"] = not errs
    with report.check(host, "tab-prune-browser") as r:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{host}-sdkd-tab.png"
        out = run_py(bvenv, str(Path(__file__).parent / "browser.py"), "prune", server.url, "sdkd", teacher.name,
                     str(shot), *VARIANTS)
        statuses = json.loads(out.strip().splitlines()[-1])
        made = [v for v in VARIANTS if (ckpts / f"teacher-bk-{v}.safetensors").exists()]
        r["figure"] = f"written={','.join(made) or 'none'} screenshot={shot.relative_to(REPO)}"
        r["ok"] = len(made) == len(VARIANTS) and all(statuses.get(v, "").startswith("Done") for v in VARIANTS)
        if not r["ok"]:
            r["figure"] += f" statuses={statuses}"
    with report.check(host, "students-listed") as r:
        server.post("/sdapi/v1/refresh-checkpoints", {})
        titles = [m["title"] for m in server.get("/sdapi/v1/sd-models")]
        listed = [v for v in VARIANTS if any(f"teacher-bk-{v}.safetensors" in t for t in titles)]
        r["figure"] = f"listed={','.join(listed) or 'none'}"
        r["ok"] = len(listed) == len(VARIANTS)


def train_teacher_lora(report: Report, host: str, teacher: Path, folder: Path, lora_data: Path) -> Path:
    """A LoRA sdkd trains for the teacher (outside the LoRA folder: it is only the input of `sdkd lora-port`)."""
    out = folder / "teacher-lora.safetensors"
    with report.check(host, "teacher-lora-train") as r:
        out.unlink(missing_ok=True)
        shutil.rmtree(out.with_suffix(".run"), ignore_errors=True)
        sdkd("lora", str(teacher), "--data", str(lora_data), "--out", str(out), *LORA_ARGS)
        r["figure"] = f"file={out.name}"
    return out


def select(server: Server, name: str) -> None:
    """Make `name` the web UI's checkpoint through the API (A1111 loads it now, Forge when first used)."""
    title = next(m["title"] for m in server.get("/sdapi/v1/sd-models") if name in m["title"])
    server.post("/sdapi/v1/options", {"sd_model_checkpoint": title})


def student_checks(report: Report, spec: Spec, server: Server, ckpts: Path, loras: Path, v: str, teacher_lora: Path,
                   lora_data: Path, models) -> None:
    """One student: txt2img, its weights and UNet call in the host, then txt2img with a LoRA sdkd trained for it and
    with the teacher's LoRA moved by `sdkd lora-port`: no key may miss its layer and the image must change."""
    host, name = spec.host, f"teacher-bk-{v}.safetensors"
    plain = loras.parent / f"plain-{v}.png"
    with report.check(host, f"txt2img-{v}") as r:  # small/tiny: the log says sdkd's load fix applied
        plain.unlink(missing_ok=True)
        before = len(server.text())
        select(server, name)
        b64_png(txt2img(server, "a flat red square")["images"][0], plain)
        said = [l.strip() for l in server.text()[before:].splitlines() if l.startswith(f"sdkd: {name} has no middle")]
        r["figure"] = f"image={plain.name} fix_line={said[0][:200]!r}" if said else f"image={plain.name} fix_line=none"
        r["ok"] = bool(said) == (v in NO_MIDDLE)
    with report.check(host, f"fixed-before-callbacks-{v}") as r:  # the probe's callback runs before sdkd's folder
        seen = server.get("/sdkd_probe/seen_at_load").get(name)
        r["figure"] = f"middle-block parameters seen by an extension sorted before sdkd: {seen}"
        r["ok"] = seen is not None and (seen == 0) == (v in NO_MIDDLE)
    load_check(report, server, ckpts, name, models, f"load-{v}", host=host, context=spec.context)
    rules = spec.lora_log
    for kind in ("trained", "ported"):
        lora = loras / f"{v}-{kind}.safetensors"
        with report.check(host, f"lora-{kind}-{v}") as r:
            if kind == "trained":
                sdkd("lora", str(ckpts / name), "--data", str(lora_data), "--out", str(lora), *LORA_ARGS)
            else:
                sdkd("lora-port", str(teacher_lora), "--to", str(ckpts / name), "--out", str(lora))
            if rules.refresh:
                server.post(rules.refresh, {})
            before = len(server.text())
            img = b64_png(txt2img(server, f"a flat red square <lora:{lora.stem}:1>")["images"][0],
                          loras.parent / f"{v}-{kind}.png")
            lines = server.text()[before:].splitlines()
            bad = [l.strip() for l in lines if re.search(rules.bad, l)]
            applied = [l.strip() for l in lines if rules.applied and re.search(rules.applied.format(stem=re.escape(lora.stem)), l)]
            diff = models.image_diff(plain, img) if plain.exists() else float("nan")
            r["figure"] = f"unmatched={len(bad)} mean|img-plain|={diff:.3f}"
            if rules.applied:
                r["figure"] += f" applied={applied[0][:160]!r}" if applied else " applied=no"
            r["ok"] = not bad and diff > 0 and (bool(applied) or not rules.applied)
            if bad:
                r["figure"] += f" first={bad[0][:200]!r}"


def cancel_distil(report: Report, spec: Spec, server: Server, ckpts: Path, teacher: Path, bvenv: Path, models) -> None:
    """The tab's Distil, followed by the page's task id in /internal/progress, stopped by the web UI's Interrupt: the
    job ends and leaves a student that loads."""
    host, name = spec.host, "teacher-bk-tiny-cancelled"
    out = ckpts / f"{name}.safetensors"
    res: dict = {}
    with report.check(host, "cancel-distil") as r:
        res = json.loads(run_py(bvenv, str(Path(__file__).parent / "browser.py"), "distil-cancel", server.url, "sdkd",
                                teacher.name, str(ARTIFACTS / f"{host}-sdkd-distil-cancelled.png"), name
                                ).strip().splitlines()[-1])
        r["figure"] = (f"progress_at_interrupt={res['progress_at_interrupt']!r} stopped_after={res['stopped_after_s']}s "
                       f"student_written={out.exists()} status={res['status'][:160]!r}")
        r["ok"] = out.exists()
    with report.check(host, "progress-follows-tab-job") as r:
        if not res:
            raise RuntimeError("no result from the page (see cancel-distil)")
        polls = res["task_progress"]
        active = [p for p in polls if p["active"]]
        rising = [p["progress"] for p in active if "distil" in (p["textinfo"] or "")]
        r["figure"] = (f"task={res['task_id'] or 'none'} polls={len(polls)} active={len(active)} "
                       f"progress={rising[0] if rising else None}->{rising[-1] if rising else None} "
                       f"textinfo={active[-1]['textinfo'] if active else None!r} completed_after={res['task_completed']}")
        r["ok"] = bool(res["task_id"]) and len(rising) >= 2 and rising[-1] > rising[0] and res["task_completed"]
    if out.exists():
        server.post("/sdapi/v1/refresh-checkpoints", {})
        load_check(report, server, ckpts, out.name, models, "cancel-distil-student-loads", host=host, context=spec.context)
    discard(out, out.with_suffix(".yaml"), out.with_suffix(".run"))


def txt2img(server: Server, prompt: str, sampler: str = "Euler", steps: int = 2, cfg: float = 7) -> dict:
    """A 64x64 txt2img through the API (2-step Euler unless told)."""
    return server.post("/sdapi/v1/txt2img", {"prompt": prompt, "negative_prompt": "", "steps": steps, "width": 64,
                                             "height": 64, "seed": 0, "sampler_name": sampler, "cfg_scale": cfg,
                                             "batch_size": 1, "n_iter": 1})


def lcm_webui_checks(report: Report, spec: Spec, server: Server, ckpts: Path, loras: Path, teacher: Path,
                     models) -> None:
    """The LCM checks (tests/hosts/lcm.py) on the teacher and tiny: txt2img with the `LCM` sampler, 4 steps, cfg 1; a
    log line the spec calls a missed key is a problem, and so is a LoRA the host applied on fewer layers than the file
    has modules (Forge's applied line says how many keys it patched; A1111's count comes from the probe)."""
    from .lcm import lcm_checks, modules_in

    rules = spec.lora_log

    def applied(lora: Path, lines: list[str]) -> int:
        """How many of the LoRA's modules the host says it put on a layer."""
        if not rules.applied:
            return next((n["modules"] for n in server.get("/sdkd_probe/networks") if n["name"] == lora.stem), 0)
        line = next((l for l in lines if re.search(rules.applied.format(stem=re.escape(lora.stem)), l)), "")
        return int(re.search(r"with (\d+) keys", line)[1]) if line else 0

    def sample(model: Path, lora: Path | None, tag: str) -> tuple[Path, list[str]]:
        select(server, model.name)
        if lora and rules.refresh:
            server.post(rules.refresh, {})
        before = len(server.text())
        prompt = "a flat red square" + (f" <lora:{lora.stem}:1>" if lora else "")
        img = b64_png(txt2img(server, prompt, "LCM", 4, 1)["images"][0], loras.parent / f"{tag}.png")
        lines = server.text()[before:].splitlines()
        problems = [l.strip() for l in lines if re.search(rules.bad, l)]
        if lora and (n := applied(lora, lines)) != modules_in(lora):
            problems.append(f"{spec.host} applied {n} of the LoRA's {modules_in(lora)} modules")
        return img, problems

    lcm_checks(report, spec.host, teacher, ckpts / "teacher-bk-tiny.safetensors", loras, sample, models.image_diff)


def load_check(report: Report, server: Server, ckpts: Path, name: str, models, check: str, idle_ok: str = "",
               host: str = HOST, context: int = SMALL["context"], pick: bool = True, refused: bool = False) -> None:
    """Load `name` through the API (`pick`; else it must be loaded already), then compare the host's UNet with the
    file and sdkd's UNet call, in the server.

    `idle_ok`: a key prefix the host may build without weights from the file (a web UI without sdkd builds a middle
    block for small/tiny), accepted while the UNet call still matches sdkd's, or, with `refused`, while the call
    fails with an error (Forge without sdkd: the block has no weights at all) rather than give a wrong result."""
    import safetensors.torch

    with report.check(host, check) as r:
        if pick:
            select(server, name)
        io = ckpts.parent.parent / "probe-io.safetensors"
        safetensors.torch.save_file(models.unet_inputs(context=context), str(io))
        k = server.post("/sdkd_probe/check", {"io": str(io), "prefix": idle_ok})
        diff = float("nan")
        if not k["call_error"]:
            host_out = safetensors.torch.load_file(str(io))
            diff = float((host_out["out"] - models.sdkd_unet_call(ckpts / name, host_out)).abs().max())
        idle = (f" missing:{idle_ok}*={k[f'n_missing:{idle_ok}']} weightless:{idle_ok}*={k[f'n_weightless:{idle_ok}']}"
                if idle_ok else "")
        call = f"unet_call_error={k['call_error'][:120]!r}" if k["call_error"] else f"max|diff|={diff:.2e}"
        r["figure"] = (f"loaded={k['checkpoint']} keys={k['model_keys']}/{k['file_keys']} missing={k['n_missing']} "
                       f"zero_filled={k['n_zero_filled']}{idle} unexpected={k['n_unexpected']} "
                       f"differ={k['n_differ']} {call}")
        complete = k["n_missing"] == k["n_unexpected"] == k["n_differ"] == 0
        idle_only = bool(idle_ok) and k["n_missing"] == k[f"n_missing:{idle_ok}"] and k["n_unexpected"] == k["n_differ"] == 0
        outcome = bool(k["call_error"]) and k[f"n_weightless:{idle_ok}"] > 0 if refused else diff <= TOL
        r["ok"] = k["checkpoint"] == name and outcome and (complete or idle_only)
        if not complete:
            r["figure"] += f" e.g.={k['examples']}"


def watch_distil(report: Report, spec: Spec, server: Server, ckpts: Path, teacher: Path, bvenv: Path, models) -> None:
    """The tab's Distil in the page: loss curve and sample grid appear and update, Cancel stops it, its student is
    listed and "Load it now" makes it the web UI's checkpoint (its sd_model_checkpoint setting); three screenshots."""
    host, name = spec.host, "teacher-bk-tiny-watched"
    out = ckpts / f"{name}.safetensors"
    res: dict = {}
    with report.check(host, "tab-distil-live") as r:
        res = json.loads(run_py(bvenv, str(Path(__file__).parent / "browser.py"), "distil-watch", server.url, "sdkd",
                                teacher.name, str(ARTIFACTS / f"{host}-sdkd-distil"), name).strip().splitlines()[-1])
        r["figure"] = (f"loss_images={res['loss_images']} sample_images={res['sample_images']} "
                       f"in={res['seconds_to_updates']}s running={res['status_while_running'][:80]!r}")
        r["ok"] = res["loss_images"] >= 2 and res["sample_images"] >= 2
    with report.check(host, "tab-cancel") as r:
        if not res:
            raise RuntimeError("no result from the page (see tab-distil-live)")
        r["figure"] = f"student_written={out.exists()} status={res['status'][:120]!r}"
        r["ok"] = res["status"].startswith("Cancelled at step") and out.exists()
    with report.check(host, "tab-load-it-now") as r:
        if not res:
            raise RuntimeError("no result from the page (see tab-distil-live)")
        titles = [m["title"] for m in server.get("/sdapi/v1/sd-models")]
        selected = server.get("/sdapi/v1/options").get("sd_model_checkpoint", "")
        r["figure"] = (f"listed={any(out.name in t for t in titles)} button_shown={res['load_visible']} "
                       f"sd_model_checkpoint={selected!r} status={res['load_status'][:100]!r}")
        r["ok"] = any(out.name in t for t in titles) and out.name in selected and res["load_status"].startswith("Loaded")
    if out.exists():
        load_check(report, server, ckpts, out.name, models, "tab-loaded-student-complete", host=host,
                   context=spec.context, pick=False)
    discard(out, out.with_suffix(".yaml"), out.with_suffix(".run"))


def a1111_tab_jobs(report: Report, spec: Spec, server: Server, ckpts: Path, teacher: Path, bvenv: Path, models) -> None:
    """A1111's own checks of the tab's long jobs: a watched Distil with Cancel and Load it now, a Distil interrupted
    from the web UI."""
    watch_distil(report, spec, server, ckpts, teacher, bvenv, models)
    cancel_distil(report, spec, server, ckpts, teacher, bvenv, models)


A1111 = Spec(HOST, a1111_setup.ARCHIVE, small_teacher, SMALL["context"], CPU_FLAGS, "Model loaded in",
             LoraLog(bad=r"didn't match keys|Network .*layer", refresh="/sdapi/v1/refresh-loras"), False,
             "middle_block.1.|middle_block.2.", a1111_tab_jobs)  # its yaml's attention and last ResBlock
