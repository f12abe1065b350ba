"""The `sdkd` command line: a thin layer of argument parsing over the core functions."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from . import __version__
from .errors import SdkdError
from .export import add_output_options
from .portable import add_portable_option
from .sampling import add_sampler_options
from .variants import VARIANT_NAMES, get_variant
# Feature modules that add their own subcommands through `add_commands(sub)`.
COMMAND_MODULES: tuple[str, ...] = ("bench", "compare", "lora.cli", "lcm.cli", "fast", "distill", "plan", "public", "rebase")


def cmd_inspect(a: argparse.Namespace) -> int:
    """Say what a file is; exit 2 unless it is an SD1.x teacher or a BK-SDM student."""
    from .checkpoint import open_model
    from .detect import describe

    try:
        info = describe(open_model(a.file, ema=False))
    except SdkdError as e:
        if a.json:
            print(json.dumps({"kind": "error", "reason": str(e)}))
        raise
    if a.json:
        print(json.dumps(info.as_dict(), indent=None if a.compact else 2))
    else:
        t = info.topology
        print(f"{a.file}: {info.kind}" + (f" ({info.variant})" if info.variant else "") + (", inpainting" if info.inpainting else ""))
        if t:
            print(f"  UNet: {info.unet_params:,} parameters, {info.dtype}, {t.levels} levels x {t.layers_per_block} "
                  f"resnets, {'with' if t.mid_block else 'no'} middle block, base width {t.model_channels}")
        print(f"  VAE: {'yes' if info.has_vae else 'no'}; text encoder: {'yes' if info.has_text_encoder else 'no'}; "
              f"EMA weights: {'yes' if info.has_ema else 'no'}" + ("; portable: yes" if info.portable else ""))
        for k, v in sorted((info.metadata or {}).items()):
            if k.startswith("sdkd_") and k != "sdkd_topology":
                print(f"  {k}: {v}")
    if info.kind not in ("sd1", "student"):
        print(f"sdkd: {info.reason}", file=sys.stderr)
        return 2
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    """Prune a teacher into a student and export it."""
    from .progress import tqdm_progress
    from .prune import PruneJob, prune

    job = PruneJob(Path(a.file), get_variant(a.variant), Path(a.out) if a.out else None, a.dtype, a.ema, a.overwrite,
                   a.format == "diffusers", a.portable)
    r = prune(job, tqdm_progress())
    print(f"{r.variant}: {r.unet_params:,} UNet parameters -> {r.checkpoint} (+ {r.yaml.name})"
          + (f" and {r.diffusers}/" if r.diffusers else "") + f" in {r.seconds:.1f}s")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    """Generate one image from a checkpoint."""
    from .export import atomic_outputs
    from .lora.apply import apply_lora, parse_spec
    from .lora.kind import lacks_few_step, poor_images_line
    from .pipeline import load_pipeline, render
    from .progress import tqdm_progress
    from .sampling import from_args

    spec = from_args(a)
    loras = [parse_spec(s) for s in a.lora]
    if lacks_few_step(spec.name, [a.file, *(p for p, _ in loras)]):
        print(f"sdkd: warning: {poor_images_line(Path(a.file).name, 'add one with --lora FILE')}", file=sys.stderr)
    loaded = load_pipeline(a.file, device=a.device, ema=a.ema)
    for path, weight in loras:
        apply_lora(loaded.pipe, path, weight)
    image, _ = render(loaded.pipe, a.prompt, spec, a.seed, a.size, a.negative, tqdm_progress())
    out = Path(a.out)
    with atomic_outputs(a.overwrite) as outs:
        image.save(outs.temp(out), format="PNG")
    print(f"{out} ({loaded.info.variant}, {a.size}px, {spec.describe()}, seed {a.seed})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Run the whole product on the built-in demo teacher: prune, check, distil, check again."""
    from .demo import DemoSettings, run_demo
    from .progress import tqdm_progress

    chosen = {"captions": a.captions, "distill_steps": a.distill_steps}
    settings = DemoSettings(**{k: v for k, v in chosen.items() if v is not None})
    run_demo(Path(a.out), overwrite=a.overwrite, progress=tqdm_progress(), log=print, teacher=a.teacher,
             settings=settings)
    return 0


def cmd_ui(a: argparse.Namespace) -> int:
    """Serve the sdkd tab as a standalone web app."""
    from .hosts.standalone import launch

    launch([Path(p) for p in a.models], [Path(p) for p in a.loras], a.host, a.port)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser (kept in one place so --help stays true to the code)."""
    p = argparse.ArgumentParser(prog="sdkd", description="Prune SD1.x checkpoints into BK-SDM students "
                                "(base, small, tiny) and export files A1111, Forge, ComfyUI and diffusers load.")
    p.add_argument("--version", action="version", version=f"sdkd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="say what a model file is (exit 2 if it is not SD1.x)")
    s.add_argument("file", help=".safetensors, .ckpt or diffusers folder")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--compact", action="store_true", help="with --json: on one line")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("prune", help="prune an SD1.x checkpoint into a BK-SDM student")
    s.add_argument("file", help="the teacher: .safetensors, .ckpt or diffusers folder")
    s.add_argument("--variant", required=True, choices=VARIANT_NAMES, help="student architecture")
    add_output_options(s, "output path (default: <teacher>-bk-<variant>.safetensors beside the teacher)", required=False)
    s.add_argument("--ema", action="store_true", help="use the checkpoint's EMA UNet weights instead of the regular ones")
    s.add_argument("--format", default="safetensors", choices=["safetensors", "diffusers"],
                   help="diffusers: also write a diffusers folder beside the .safetensors")
    add_portable_option(s)
    s.set_defaults(fn=cmd_prune)

    s = sub.add_parser("generate", help="generate an image from an SD1.x checkpoint or sdkd student")
    s.add_argument("file")
    s.add_argument("--prompt", required=True)
    s.add_argument("--negative", default="")
    add_sampler_options(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=512, help="image side in pixels")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    s.add_argument("--ema", action="store_true", help="use EMA UNet weights")
    s.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="apply a LoRA made for this model, e.g. style.safetensors:0.8 (repeatable)")
    s.add_argument("--out", required=True, help="output PNG")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("demo", help="prune the built-in demo teacher to every variant, score them, distil tiny, score again")
    s.add_argument("--out", default="sdkd-demo", help="folder for the demo's files (default ./sdkd-demo)")
    s.add_argument("--teacher", default="demo", help="teacher trained on the shapes task (default: the built-in one)")
    s.add_argument("--captions", type=int, help="how many held-out captions each model draws (default: a quick grid)")
    s.add_argument("--distill-steps", type=int,
                   help="distillation steps for the tiny student (default: a few minutes on 2 CPU cores)")
    s.add_argument("--overwrite", action="store_true", help="replace files from an earlier demo run")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("ui", help="serve the sdkd tab as a standalone web app (needs gradio)")
    s.add_argument("--models", nargs="+", default=["."], help="checkpoint folders (first: where students go)")
    s.add_argument("--loras", nargs="*", default=[], help="LoRA folders")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=7870)
    s.set_defaults(fn=cmd_ui)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one command; user errors print one line and exit 2. Library notices that are harmless for
    sdkd are silenced first (sdkd_ext/quiet.py), so the console holds sdkd's own lines and bars."""
    from .quiet import quiet_libraries

    quiet_libraries()
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except SdkdError as e:
        print(f"sdkd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sdkd: interrupted", file=sys.stderr)
        return 130
