"""AUTOMATIC1111 v1.10.1 with sdkd's extension: install.py, the tab in Chromium, students loaded, txt2img with LoRAs."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

from . import a1111_setup
from .harness import (ARTIFACTS, LORA_ARGS, PROBE_KEYS, REPO, SCRATCH, Report, Server, build_venv, clear, errors_in,
                      free_port, log, pip, python_of, run_py, sdkd)

HOST = "a1111"
VARIANTS = ("base", "small", "tiny")
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
    def steps(v: Path, cons: Path, log_to: Path) -> None:
        pip(v, "install", "-q", "playwright", log_to=log_to)
    return build_venv("browser", steps, "playwright")


def freeze(venv: Path) -> dict[str, str]:
    """name -> version of what is installed in a venv."""
    out = run_py(venv, "-m", "pip", "freeze", "--all")
    return dict(l.lower().split("==", 1) for l in out.splitlines() if "==" in l)


def b64_png(data: str, path: Path) -> Path:
    """Save a base64 image from the API."""
    path.write_bytes(base64.b64decode(data.split(",", 1)[-1]))
    return path


def install_extensions(data: Path) -> Path:
    """The test's probe extension, and sdkd as a user clones it (the checkout as `extensions/sdkd`)."""
    probe = data / "extensions" / "sdkd_probe"
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


class WebUI:
    """A1111 on loopback with the test's data dir, HF cache and (optionally) sdkd's extension."""

    def __init__(self, src: Path, venv: Path, data: Path, ckpt: Path, tag: str, cpu_flags: tuple[str, ...] = CPU_FLAGS,
                 ready: str = "Model loaded in"):
        self.ready = ready  # the log line after which the web UI serves (A1111 loads the model at start, Forge later)
        port = free_port()
        self.server = Server(
            [python_of(venv), "launch.py", "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check",
             "--skip-python-version-check", *cpu_flags, "--server-name", "127.0.0.1", "--port", str(port),
             "--ckpt", str(ckpt), "--no-download-sd-model", "--api", "--data-dir", str(data), "--loglevel", "DEBUG"],
            cwd=src, log=data / f"webui-{tag}.log", port=port,
            env={"HF_HOME": str(data / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

    def start(self) -> float:
        """Start and wait until the model is loaded and the API answers; seconds taken."""
        t = time.monotonic()
        self.server.start()
        self.server.wait(lambda s: self.ready in s.text() and isinstance(s.get("/sdapi/v1/sd-models"), list), 600)
        return time.monotonic() - t


def run(report: Report) -> None:
    """All A1111 checks; each prints one PASS/FAIL line."""
    from . import models

    with report.timed(HOST, "setup"):
        src, venv = a1111_setup.venv()
        data = SCRATCH / a1111_setup.ARCHIVE / "run"
        ckpts = data / "models" / "Stable-diffusion"
        loras = data / "models" / "Lora"
        for d in (ckpts, loras, data / "extensions"):
            d.mkdir(parents=True, exist_ok=True)
        clear(list(ckpts.glob("teacher-*")) + list(loras.glob("*")))
        teacher = models.teacher(ckpts / "teacher.safetensors", **SMALL)
        models.write_yaml(teacher)
        hf_cache(data / "hf", models.text_config(teacher))
        lora_data = models.caption_folder(SCRATCH / "lora-data")
        ext = install_extensions(data)
        bvenv = browser_venv()
    run_installer(report, HOST, venv, src, ext)

    ui = WebUI(src, venv, data, teacher, "ext")
    try:
        with report.timed(HOST, "checks-with-extension"):
            with_extension(report, ui, ckpts, loras, teacher, lora_data, bvenv, models)
    finally:
        ui.server.stop()
        log(f"A1111 log: {ui.server.log}")
    ext.unlink()
    ui = WebUI(src, venv, data, teacher, "noext")
    try:
        with report.timed(HOST, "checks-without-extension"):
            with report.check(HOST, "start-without-sdkd") as r:
                r["figure"] = f"ready_in={ui.start():.0f}s"
            for v in [v for v in VARIANTS if (ckpts / f"teacher-bk-{v}.safetensors").exists()]:
                load_check(report, ui.server, ckpts, f"teacher-bk-{v}.safetensors", models, f"noext-load-{v}",
                           idle_ok="middle_block.")
    finally:
        ui.server.stop()
        ext.symlink_to(REPO, target_is_directory=True)


def with_extension(report: Report, ui: WebUI, ckpts: Path, loras: Path, teacher: Path, lora_data: Path, bvenv: Path,
                   models) -> None:
    """The checks with sdkd installed."""
    server = ui.server
    start_and_prune(report, HOST, ui, ckpts, teacher, bvenv)

    teacher_lora = loras.parent / "teacher-lora.safetensors"
    with report.check(HOST, "teacher-lora-train") as r:
        teacher_lora.unlink(missing_ok=True)
        shutil.rmtree(teacher_lora.with_suffix(".run"), ignore_errors=True)
        sdkd("lora", str(teacher), "--data", str(lora_data), "--out", str(teacher_lora), *LORA_ARGS)
        r["figure"] = f"file={teacher_lora.name}"

    for v in VARIANTS:
        name = f"teacher-bk-{v}.safetensors"
        if not (ckpts / name).exists():
            continue
        load_check(report, server, ckpts, name, models, f"load-{v}")
        plain = loras.parent / f"plain-{v}.png"
        with report.check(HOST, f"txt2img-{v}") as r:
            b64_png(txt2img(server, "a flat red square")["images"][0], plain)
            r["figure"] = f"image={plain.name}"
        for kind in ("trained", "ported"):
            lora = loras / f"{v}-{kind}.safetensors"
            with report.check(HOST, f"lora-{kind}-{v}") as r:
                if kind == "trained":
                    sdkd("lora", str(ckpts / name), "--data", str(lora_data), "--out", str(lora), *LORA_ARGS)
                else:
                    sdkd("lora-port", str(teacher_lora), "--to", str(ckpts / name), "--out", str(lora))
                server.post("/sdapi/v1/refresh-loras", {})
                before = len(server.text())
                img = b64_png(txt2img(server, f"a flat red square <lora:{lora.stem}:1>")["images"][0],
                              loras.parent / f"{v}-{kind}.png")
                bad = [l for l in server.text()[before:].splitlines() if "didn't match keys" in l or "Network" in l and "layer" in l]
                diff = models.image_diff(plain, img) if plain.exists() else float("nan")
                r["figure"] = f"unmatched={len(bad)} mean|img-plain|={diff:.3f}"
                r["ok"] = not bad and diff > 0
                if bad:
                    r["figure"] += f" first={bad[0].strip()[:200]!r}"
    cancel_distil(report, server, ckpts, teacher, bvenv, models)


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


def cancel_distil(report: Report, server: Server, ckpts: Path, teacher: Path, bvenv: Path, models) -> None:
    """The tab's Distil, stopped by A1111's Interrupt: the job ends and leaves a student that loads."""
    name = "teacher-bk-tiny-cancelled"
    out = ckpts / f"{name}.safetensors"
    with report.check(HOST, "cancel-distil") as r:
        res = json.loads(run_py(bvenv, str(Path(__file__).parent / "browser.py"), "distil-cancel", server.url, "sdkd",
                                teacher.name, str(ARTIFACTS / "a1111-sdkd-distil-cancelled.png"), name
                                ).strip().splitlines()[-1])
        r["figure"] = (f"progress_at_interrupt={res['progress_at_interrupt']!r} stopped_after={res['stopped_after_s']}s "
                       f"student_written={out.exists()} status={res['status'][:160]!r}")
        r["ok"] = out.exists()
    if out.exists():
        server.post("/sdapi/v1/refresh-checkpoints", {})
        load_check(report, server, ckpts, out.name, models, "cancel-distil-student-loads")


def txt2img(server: Server, prompt: str) -> dict:
    """A 64x64, 2-step Euler txt2img through the API."""
    return server.post("/sdapi/v1/txt2img", {"prompt": prompt, "negative_prompt": "", "steps": 2, "width": 64,
                                             "height": 64, "seed": 0, "sampler_name": "Euler", "cfg_scale": 7,
                                             "batch_size": 1, "n_iter": 1})


def load_check(report: Report, server: Server, ckpts: Path, name: str, models, check: str, idle_ok: str = "",
               host: str = HOST, context: int = SMALL["context"]) -> None:
    """Load `name` through the API, then compare the host's UNet with the file and sdkd's UNet call, in the server.

    `idle_ok`: a key prefix the host may build without weights from the file (A1111 without sdkd builds a middle
    block for small/tiny and leaves it at its init: zeros, norms at one), accepted while the UNet call still matches."""
    import safetensors.torch

    with report.check(host, check) as r:
        title = next(m["title"] for m in server.get("/sdapi/v1/sd-models") if name in m["title"])
        server.post("/sdapi/v1/options", {"sd_model_checkpoint": title})
        io = ckpts.parent.parent / "probe-io.safetensors"
        safetensors.torch.save_file(models.unet_inputs(context=context), str(io))
        k = server.post("/sdkd_probe/check", {"io": str(io), "prefix": idle_ok})
        host_out = safetensors.torch.load_file(str(io))
        diff = float((host_out["out"] - models.sdkd_unet_call(ckpts / name, host_out)).abs().max())
        r["figure"] = (f"loaded={k['checkpoint']} keys={k['model_keys']}/{k['file_keys']} missing={k['n_missing']} "
                       f"zero_filled={k['n_zero_filled']}" + (f" missing:{idle_ok}*={k[f'n_missing:{idle_ok}']}" if idle_ok else "") +
                       f" unexpected={k['n_unexpected']} differ={k['n_differ']} "
                       f"max|diff|={diff:.2e}")
        complete = k["n_missing"] == k["n_unexpected"] == k["n_differ"] == 0
        idle_only = bool(idle_ok) and k["n_missing"] == k[f"n_missing:{idle_ok}"] and k["n_unexpected"] == k["n_differ"] == 0
        r["ok"] = k["checkpoint"] == name and diff <= TOL and (complete or idle_only)
        if not complete:
            r["figure"] += f" e.g.={k['examples']}"
