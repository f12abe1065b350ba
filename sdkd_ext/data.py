"""Training data: image folders with captions, prompt sets for data-free training, and a seeded sampler.

A folder follows the kohya/A1111 convention (`cat.png` + `cat.txt`) or the Hugging Face one (a
`metadata.jsonl` with `file_name` and `text`). Data-free training starts from prompts instead:
a file of one prompt per line, or a built-in varied list, which the teacher turns into latents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
import torch

from .errors import SdkdError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIXES = (".txt", ".caption")


@dataclass(frozen=True)
class Example:
    """One training image and its caption."""

    path: Path
    caption: str


@dataclass
class Scan:
    """What a folder holds: usable examples, and the images that had no caption (captioned by file name)."""

    examples: list[Example]
    uncaptioned: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # metadata.jsonl entries whose file is absent


@dataclass(frozen=True)
class FolderData:
    """Train on a folder of captioned images, resized and centre-cropped; optionally also their mirror images."""

    folder: Path
    flip: bool = False
    min_side: int | None = None  # images whose shorter side is below this are skipped (default: half the resolution)

    def describe(self) -> str:
        """One line for metadata and logs."""
        return f"folder {self.folder.name}" + (" (+flips)" if self.flip else "")


@dataclass(frozen=True)
class PromptData:
    """Data-free training: the teacher generates one latent per prompt (seeded), with CFG and a negative prompt."""

    prompts: tuple[str, ...]
    negative: str = ""
    guidance: float = 7.5
    sample_steps: int = 25
    origin: str = "prompts"

    def describe(self) -> str:
        """One line for metadata and logs."""
        neg = f", negative {self.negative[:40]!r}" if self.negative else ""
        return f"{self.origin}: {len(self.prompts)} teacher samples (cfg {self.guidance:g}, {self.sample_steps} steps{neg})"


DataSpec = FolderData | PromptData


def caption_from_name(path: Path) -> str:
    """A caption made from a file name: `red_car-02.png` -> 'red car 02'."""
    return " ".join(path.stem.replace("_", " ").replace("-", " ").split())


def scan_folder(folder: str | Path) -> Scan:
    """Every image under `folder` with its caption (metadata.jsonl first, else same-name .txt/.caption files)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SdkdError(f"--data {root}: no such folder; give a folder of images with same-name .txt captions")
    meta = root / "metadata.jsonl"
    scan = _scan_jsonl(root, meta) if meta.is_file() else _scan_captions(root)
    if not scan.examples:
        raise SdkdError(f"--data {root}: no images found ({', '.join(IMAGE_SUFFIXES)}); add images with same-name "
                        ".txt captions, or a metadata.jsonl with file_name and text")
    return scan


def _scan_captions(root: Path) -> Scan:
    """Images found recursively, each captioned by its same-name text file or, failing that, its file name."""
    scan = Scan([])
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file() or any(s.startswith(".") for s in p.relative_to(root).parts):
            continue
        text = next((c.read_text(encoding="utf-8", errors="replace").strip()
                     for c in (p.with_suffix(s) for s in CAPTION_SUFFIXES) if c.is_file()), "")
        if not text:
            scan.uncaptioned.append(p)
            text = caption_from_name(p)
        scan.examples.append(Example(p, text))
    return scan


def _scan_jsonl(root: Path, meta: Path) -> Scan:
    """Images listed in a Hugging Face style metadata.jsonl (`file_name`, `text`)."""
    scan = Scan([])
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SdkdError(f"{meta}: line {n} is not a JSON object with 'file_name' (and 'text'); fix or remove it") from None
        p = root / name
        if not p.is_file():
            scan.missing.append(name)
            continue
        text = str(row.get("text") or "").strip()
        if not text:
            scan.uncaptioned.append(p)
            text = caption_from_name(p)
        scan.examples.append(Example(p, text))
    return scan


class BadImage(Exception):
    """An image that cannot be used: unreadable, or smaller than the minimum size."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # "unreadable" or "too small"


def load_image(path: Path, size: int, min_side: int) -> torch.Tensor:
    """An RGB image as a 3 x size x size tensor in [-1, 1]: shorter side resized to `size`, centre-cropped."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            im = im.convert("RGB")
    except Exception as e:  # PIL raises many types for broken files
        raise BadImage("unreadable", f"{path.name}: {e}") from None
    w, h = im.size
    if min(w, h) < min_side:
        raise BadImage("too small", f"{path.name}: {w}x{h} is under {min_side} px")
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    return t.permute(2, 0, 1).float().div(127.5).sub(1.0)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with # are ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SdkdError(f"--prompts {p}: no such file; give a text file with one prompt per line")
    prompts = [s.strip() for s in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    prompts = [s for s in prompts if s and not s.startswith("#")]
    if not prompts:
        raise SdkdError(f"--prompts {p}: the file has no prompts (one per line, # for comments)")
    return prompts


# ---- the built-in varied prompt list for --self N ----------------------------------------------

_SUBJECTS = (
    "a portrait of an old fisherman", "a young woman with freckles", "a red fox in the snow", "a tabby cat on a windowsill",
    "a golden retriever puppy", "a bowl of ramen", "a stack of pancakes with berries", "a vintage sports car",
    "a steam locomotive", "a sailing ship in a storm", "a lighthouse on a cliff", "a medieval castle",
    "a futuristic city skyline", "a cozy wooden cabin", "a Japanese temple", "a busy market street",
    "a mountain lake at dawn", "a desert with sand dunes", "a tropical beach", "a waterfall in a rainforest",
    "a field of sunflowers", "a bouquet of roses", "an astronaut on the moon", "a robot reading a book",
    "a dragon flying over mountains", "a knight in shining armour", "a wizard casting a spell", "a ballet dancer",
    "a chess board mid-game", "a cup of coffee and a croissant", "an owl on a branch", "a hummingbird at a flower",
    "a koi pond", "a snowy forest path", "a city street in the rain", "a modern living room interior",
    "a library with tall shelves", "a bicycle against a brick wall", "an elephant at a watering hole",
    "a jellyfish in deep water", "a hot air balloon festival", "a plate of sushi", "a basket of apples",
    "a violin on a velvet chair", "a child flying a kite", "a farmer with a tractor", "a viking longship",
    "a neon-lit alley at night", "a greenhouse full of plants", "a snowman in a garden",
)
_STYLES = (
    "photograph", "oil painting", "watercolor painting", "pencil sketch", "digital art", "anime illustration",
    "3d render", "studio photo", "film photograph, 35mm", "impressionist painting", "concept art",
    "ink drawing", "pixel art", "low poly render", "vintage poster", "charcoal drawing", "pastel illustration",
    "cinematic still", "macro photograph", "children's book illustration",
)
_SETTINGS = (
    "golden hour lighting", "soft morning light", "dramatic lighting", "at night", "overcast day",
    "bright sunny day", "in fog", "backlit", "studio lighting", "warm colors", "cool colors", "high contrast",
    "muted tones", "vivid colors", "wide angle", "close-up", "from above", "symmetrical composition",
    "shallow depth of field", "highly detailed",
)


def builtin_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct prompts (subject, style, light/composition), shuffled reproducibly by `seed`."""
    combos = list(itertools.product(_SUBJECTS, _STYLES, _SETTINGS))
    if not 0 < n <= len(combos):
        raise SdkdError(f"--self {n}: choose between 1 and {len(combos)} prompts")
    rng = random.Random(seed)
    picked = rng.sample(combos, n)
    return [f"{s}, {style}, {setting}" for s, style, setting in picked]


# ---- seeded randomness shared by data, noise and sampling ---------------------------------------

def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (run seed, step, position...), independent of process count and order."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_randn(seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One standard-normal tensor of `shape` per seed, stacked; drawn on the CPU so every device agrees."""
    out = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    return torch.stack(out).to(device=device, dtype=dtype)

