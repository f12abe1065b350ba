"""A procedural text-to-image dataset (coloured shapes on plain backgrounds) and a scorer for it.

It exists so a tiny demo teacher can be trained and distilled without real weights: every caption
maps to exactly one picture, and `read_attributes` reads the caption's attributes back from a
(possibly blurry, noisy, generated) image, so "did the student keep the teacher's skills" becomes
a per-attribute accuracy instead of a judgement call.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 0),
    "yellow": (245, 225, 20),
    "green": (30, 170, 50),
    "blue": (30, 80, 220),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SIZES: dict[str, float] = {"small": 0.2, "large": 0.42}  # side of the shape's box, as a fraction of the image
POSITIONS: dict[str, tuple[float, float]] = {  # name -> (x, y) anchor of the shape's box centre
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}
VOCABULARIES: dict[str, tuple[str, ...]] = {  # ShapeSpec field -> its allowed values
    "shape": SHAPES, "color": COLORS, "size": tuple(SIZES), "position": tuple(POSITIONS), "background": COLORS,
}
ATTRIBUTES: tuple[str, ...] = tuple(VOCABULARIES)

_SUPERSAMPLE = 4  # render at 4x and box-downsample: anti-aliased edges, exact interior colours
_DEAD_BAND = 0.15  # foreground weights within this of 0 or 1 snap to it, so noise adds no stray mass
# Shape type from cumulants of the foreground mass, which Gaussian blur leaves unchanged beyond the 2nd:
_TRIANGLE_K3 = -0.004  # vertical 3rd cumulant / area^1.5: 0 for circle and square, about -0.02 for triangle
_SQUARE_K4_RATIO = 1.25  # 4th cumulant along the axes / along the diagonals: circle 1, square 2, triangle ~1
_MIN_BLOB_FRACTION = 0.002  # a foreground blob smaller than this fraction of the image is "no shape"


@dataclass(frozen=True)
class ShapeSpec:
    """One caption's content: which shape, its colour, size and position, and the background colour."""

    shape: str
    color: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        """Reject values outside the vocabularies, and a shape coloured like its background."""
        for name, vocab in VOCABULARIES.items():
            if getattr(self, name) not in vocab:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {list(vocab)}")
        if self.color == self.background:
            raise ValueError(f"shape colour and background are both {self.color!r}; they must differ")


def _position_phrase(position: str) -> str:
    """'at the top left' / 'in the center': the caption's wording of a position."""
    return f"{'in' if position == 'center' else 'at'} the {position}"


def _article(word: str) -> str:
    """'a' or 'an' before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: ShapeSpec) -> str:
    """The plain-English caption of `spec`, e.g. 'a small red circle at the top left on a blue background'."""
    return (f"a {spec.size} {spec.color} {spec.shape} {_position_phrase(spec.position)} "
            f"on {_article(spec.background)} {spec.background} background")


def _alternation(words: Sequence[str]) -> str:
    """A regex group matching any of `words`, longest first so 'top left' wins over 'top'."""
    return "(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_CAPTION_RE = re.compile(
    rf"a {_alternation(list(SIZES))} {_alternation(COLORS)} {_alternation(SHAPES)} "
    rf"{_alternation([_position_phrase(p) for p in POSITIONS])} on an? {_alternation(COLORS)} background")


def parse_caption(text: str) -> ShapeSpec:
    """The spec a caption describes (inverse of `caption`; case, extra spaces and a final '.' are ignored)."""
    normal = " ".join(text.lower().split()).rstrip(".").strip()
    match = _CAPTION_RE.fullmatch(normal)
    if match is None:
        raise ValueError(
            f"not a shapes caption: {text!r}; expected 'a <size> <colour> <shape> at the <position> on a "
            f"<colour> background' with size in {list(SIZES)}, colour in {list(COLORS)}, shape in "
            f"{list(SHAPES)}, position in {list(POSITIONS)} ('in the center' for the centre)")
    size, color, shape, phrase, background = match.groups()
    position = phrase.split(" ", 2)[2]  # drop 'at the' / 'in the'
    return ShapeSpec(shape=shape, color=color, size=size, position=position, background=background)


def render(spec: ShapeSpec, size: int = 64) -> Image.Image:
    """The RGB picture of `spec`, `size` pixels square; deterministic, with exact palette colours inside."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), PALETTE[spec.background])
    side = SIZES[spec.size] * big
    cx, cy = (f * big for f in POSITIONS[spec.position])
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    draw = ImageDraw.Draw(image)
    fill = PALETTE[spec.color]
    if spec.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif spec.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def all_specs() -> list[ShapeSpec]:
    """Every valid spec (each shape, colour, size, position, and background other than the colour)."""
    return [ShapeSpec(shape, color, size, position, background)
            for shape, color, size, position, background
            in itertools.product(*VOCABULARIES.values()) if color != background]


def split_specs(holdout_fraction: float = 0.15, seed: int = 0) -> tuple[list[ShapeSpec], list[ShapeSpec]]:
    """Deterministic (train, held-out) split of `all_specs`: held-out captions are unseen whole, yet every
    attribute value still occurs in train, so held-out accuracy measures compositional generalisation."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    specs = all_specs()
    target = round(holdout_fraction * len(specs))
    counts = Counter((name, getattr(s, name)) for s in specs for name in ATTRIBUTES)
    held: set[int] = set()
    for i in np.random.default_rng(seed).permutation(len(specs)):
        if len(held) == target:
            break
        values = [(name, getattr(specs[i], name)) for name in ATTRIBUTES]
        if all(counts[v] > 1 for v in values):
            counts.subtract(values)
            held.add(int(i))
    return ([s for i, s in enumerate(specs) if i not in held], [s for i, s in enumerate(specs) if i in held])


def sample_specs(n: int, seed: int, pool: Sequence[ShapeSpec] | None = None) -> list[ShapeSpec]:
    """`n` specs drawn uniformly with replacement from `pool` (default: all specs), reproducibly."""
    pool = all_specs() if pool is None else list(pool)
    return [pool[i] for i in np.random.default_rng(seed).integers(0, len(pool), size=n)]


_PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float32)


def _nearest_colors(rgb: np.ndarray) -> np.ndarray:
    """Index into `COLORS` of the palette colour nearest each RGB row of `rgb` (shape (..., 3))."""
    return np.argmin(((rgb[..., None, :] - _PALETTE_RGB) ** 2).sum(-1), axis=-1)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges repeated): knocks pixel noise down 3x before thresholding."""
    p = np.concatenate([a[:1], a, a[-1:]], axis=0)
    p = p[:-2] + p[1:-1] + p[2:]
    p = np.concatenate([p[:, :1], p, p[:, -1:]], axis=1)
    return (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 9.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One step of 8-connected binary dilation (a 3x3 square, done as a row pass then a column pass)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    grown = rows.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def _blob(mask: np.ndarray) -> np.ndarray:
    """The 8-connected component of `mask` around its densest pixel: the shape, without stray specks."""
    seed = np.unravel_index(np.argmax(_box3(_box3(mask.astype(np.float32)))), mask.shape)
    blob = np.zeros_like(mask)
    blob[seed] = mask[seed]
    while True:
        grown = _dilate(blob) & mask
        if (grown == blob).all():
            return blob
        blob = grown


def _cumulants(weights: np.ndarray, coordinate: np.ndarray) -> tuple[float, float]:
    """3rd and 4th cumulants of `coordinate` under the mass distribution `weights`."""
    mass = weights.sum()
    centred = coordinate - (weights * coordinate).sum() / mass
    squared = centred * centred
    variance, m3, m4 = ((weights * p).sum() / mass for p in (squared, squared * centred, squared * squared))
    return float(m3), float(m4 - 3 * variance * variance)


def _shape_type(weights: np.ndarray) -> str:
    """Circle, square or triangle from the foreground mass: a triangle is top-light (3rd cumulant of y
    below 0), a square's 4th cumulant is twice as negative along its sides as along its diagonals."""
    rows, columns = np.nonzero(weights)
    weights = weights[rows.min():rows.max() + 1, columns.min():columns.max() + 1].astype(np.float64)
    y, x = np.mgrid[0:weights.shape[0], 0:weights.shape[1]].astype(np.float64)
    k3_y, k4_y = _cumulants(weights, y)
    if k3_y / weights.sum() ** 1.5 < _TRIANGLE_K3:
        return "triangle"
    k4_x = _cumulants(weights, x)[1]
    k4_diagonals = _cumulants(weights, x + y)[1] / 4 + _cumulants(weights, x - y)[1] / 4  # (x±y)/√2
    return "square" if k4_x + k4_y < _SQUARE_K4_RATIO * k4_diagonals else "circle"  # both are negative


def read_attributes(image: Image.Image) -> dict[str, str | None]:
    """Read shape, colour, size, position and background back from an image; None where no shape is found.

    Background = the commonest nearest-palette colour on the border. Each (3x3-smoothed) pixel gets a
    foreground weight t from its projection onto the background->shape colour segment, so blur and
    noise shift area and extent little. The shape is the connected blob of t > 0.5; its size is the
    larger side of its soft bounding box, its position the box centre, its type from `_shape_type`.
    """
    rgb = _box3(np.asarray(image.convert("RGB"), dtype=np.float32))
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    bg_index = int(np.bincount(_nearest_colors(border), minlength=len(COLORS)).argmax())
    bg = _PALETTE_RGB[bg_index]
    result: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    result["background"] = COLORS[bg_index]

    distance = np.linalg.norm(rgb - bg, axis=-1)
    others = np.delete(_PALETTE_RGB, bg_index, axis=0)
    candidates = rgb[distance > 0.5 * np.linalg.norm(others - bg, axis=-1).min()] - bg
    if len(candidates) < _MIN_BLOB_FRACTION * h * w:
        return result
    # Shape colour: the palette colour whose segment from bg fits the candidates best (a blurred edge is
    # a mix along that segment, and a red-yellow mix would otherwise read as orange).
    directions = _PALETTE_RGB - bg
    along = np.clip(candidates @ directions.T / np.maximum((directions ** 2).sum(-1), 1e-9), 0.0, 1.0)
    misfit = np.median(np.linalg.norm(candidates[:, None] - along[..., None] * directions, axis=-1), axis=0)
    misfit[bg_index] = np.inf
    fg_index = int(misfit.argmin())
    axis = _PALETTE_RGB[fg_index] - bg
    t = np.clip(((rgb - bg) @ axis / (axis @ axis) - _DEAD_BAND) / (1 - 2 * _DEAD_BAND), 0.0, 1.0)

    blob = _blob(_box3((t > 0.5).astype(np.float32)) > 0.5)  # 3x3 majority vote drops isolated pixels
    if blob.sum() < _MIN_BLOB_FRACTION * h * w:
        return result
    weights = t * _dilate(_dilate(blob))  # the blob with its soft edges, nothing else
    columns, rows = weights.max(axis=0), weights.max(axis=1)
    width, height = columns.sum(), rows.sum()
    cx = float(((columns * np.arange(w)).sum() / width + 0.5) / w)
    cy = float(((rows * np.arange(h)).sum() / height + 0.5) / h)

    result["shape"] = _shape_type(weights)
    result["color"] = COLORS[fg_index]
    result["size"] = "large" if max(width / w, height / h) > sum(SIZES.values()) / 2 else "small"
    result["position"] = min(POSITIONS, key=lambda p: math.hypot(POSITIONS[p][0] - cx, POSITIONS[p][1] - cy))
    return result


def score(image: Image.Image, spec: ShapeSpec) -> dict[str, bool]:
    """Per attribute, whether the image shows what `spec` asks for."""
    read = read_attributes(image)
    return {name: read[name] == getattr(spec, name) for name in ATTRIBUTES}


def accuracy(images: Sequence[Image.Image], specs: Sequence[ShapeSpec]) -> dict[str, float]:
    """Fraction of images right per attribute, plus 'mean' over the attributes."""
    if len(images) != len(specs) or not specs:
        raise ValueError(f"need as many images as specs, at least one; got {len(images)} and {len(specs)}")
    hits = [score(image, spec) for image, spec in zip(images, specs)]
    result = {name: sum(h[name] for h in hits) / len(hits) for name in ATTRIBUTES}
    result["mean"] = sum(result.values()) / len(ATTRIBUTES)
    return result


def write_folder(specs: Sequence[ShapeSpec], folder: Path, size: int = 64) -> None:
    """Render `specs` into `folder` as `00000.png` + `00000.txt` (its caption): the captioned-folder layout training reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(specs):
        render(spec, size).save(folder / f"{i:05d}.png", format="PNG")
        (folder / f"{i:05d}.txt").write_text(caption(spec) + "\n", encoding="utf-8")
