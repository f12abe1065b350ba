"""The shapes dataset: captions invert, renders are exact, the split generalises, and the scorer reads
clean and degraded renders right while scoring noise at chance."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from sdkd_ext import shapes
from sdkd_ext.shapes import ShapeSpec

CHANCE = {"shape": 1 / len(shapes.SHAPES), "color": 1 / (len(shapes.COLORS) - 1), "size": 1 / len(shapes.SIZES),
          "position": 1 / len(shapes.POSITIONS), "background": 1 / len(shapes.COLORS)}


def _degrade(image: Image.Image, rng: np.random.Generator, radius: float = 1.5, sigma: float = 15.0) -> Image.Image:
    """Gaussian blur then additive Gaussian noise (sigma in 0-255 units), like a soft, grainy sample."""
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    pixels += rng.normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _contact_sheet(specs: Sequence[ShapeSpec], columns: int = 4, scale: int = 3) -> Image.Image:
    """Renders in a grid, each above its caption, for eyeballing the dataset."""
    cell, text_height = 64 * scale, 48
    rows = -(-len(specs) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, spec in enumerate(specs):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        sheet.paste(shapes.render(spec).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x + 2, y + cell + 2), "\n".join(textwrap.wrap(shapes.caption(spec), 30)), fill="black")
    return sheet


def test_caption_reads_as_plain_english():
    spec = ShapeSpec("circle", "red", "small", "top left", "blue")
    assert shapes.caption(spec) == "a small red circle at the top left on a blue background"
    assert shapes.caption(ShapeSpec("square", "white", "large", "center", "orange")) == \
        "a large white square in the center on an orange background"


def test_every_caption_is_unique_and_parses_back():
    specs = shapes.all_specs()
    captions = [shapes.caption(s) for s in specs]
    assert len(set(captions)) == len(specs)
    assert [shapes.parse_caption(c) for c in captions] == specs
    assert shapes.parse_caption("  A Large  BLUE triangle at the bottom right on a black background. ") == \
        ShapeSpec("triangle", "blue", "large", "bottom right", "black")


@pytest.mark.parametrize("text", [
    "",
    "a small red circle",
    "a huge red circle at the top on a blue background",
    "a small red hexagon at the top on a blue background",
    "a small red circle at the center on a blue background",  # the centre is 'in the center'
    "a small red circle in the top on a blue background",
    "a small red circle at the top on a blue background with a hat",
])
def test_parse_rejects_text_that_is_not_a_caption(text):
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.parse_caption(text)


def test_spec_rejects_unknown_values_and_invisible_shapes():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        ShapeSpec("hexagon", "red", "small", "top", "blue")
    with pytest.raises(ValueError, match="unknown position 'middle'"):
        ShapeSpec("circle", "red", "small", "middle", "blue")
    with pytest.raises(ValueError, match="must differ"):
        shapes.parse_caption("a small red circle at the top on a red background")


def test_all_specs_is_every_combination():
    specs = shapes.all_specs()
    colour_pairs = len(shapes.COLORS) * (len(shapes.COLORS) - 1)
    layouts = len(shapes.SHAPES) * len(shapes.SIZES) * len(shapes.POSITIONS)
    assert len(specs) == len(set(specs)) == layouts * colour_pairs == 3024


def test_render_is_deterministic_with_exact_colours_inside():
    for spec in shapes.sample_specs(60, seed=0):
        image = shapes.render(spec)
        assert image.mode == "RGB" and image.size == (64, 64)
        assert image.tobytes() == shapes.render(spec).tobytes()
        x, y = (int(f * 64) for f in shapes.POSITIONS[spec.position])
        assert image.getpixel((x, y)) == shapes.PALETTE[spec.color]
        assert image.getpixel((0, 0)) == image.getpixel((63, 63)) == shapes.PALETTE[spec.background]
    assert shapes.render(shapes.all_specs()[0], size=128).size == (128, 128)


def test_split_holds_out_unseen_captions_yet_trains_every_value():
    specs = shapes.all_specs()
    train, heldout = shapes.split_specs()
    assert not set(train) & set(heldout)
    assert sorted(map(shapes.caption, train + heldout)) == sorted(map(shapes.caption, specs))
    assert len(heldout) == round(0.15 * len(specs))
    assert shapes.split_specs() == (train, heldout)
    assert shapes.split_specs(seed=1)[1] != heldout
    for fraction in (0.15, 0.9):
        train, _ = shapes.split_specs(fraction)
        for name, vocab in shapes.VOCABULARIES.items():
            assert {getattr(s, name) for s in train} == set(vocab), (fraction, name)
    with pytest.raises(ValueError, match="holdout_fraction"):
        shapes.split_specs(1.0)


def test_sample_specs_is_reproducible_and_respects_the_pool():
    assert shapes.sample_specs(50, seed=3) == shapes.sample_specs(50, seed=3)
    assert shapes.sample_specs(50, seed=3) != shapes.sample_specs(50, seed=4)
    _, heldout = shapes.split_specs()
    drawn = shapes.sample_specs(500, seed=0, pool=heldout)
    assert len(drawn) == 500 and set(drawn) <= set(heldout)


def test_scorer_reads_every_clean_render_right():
    specs = shapes.all_specs()
    accuracy = shapes.accuracy([shapes.render(s) for s in specs], specs)
    assert accuracy == dict.fromkeys([*shapes.ATTRIBUTES, "mean"], 1.0)


def test_scorer_survives_blur_and_noise():
    rng = np.random.default_rng(0)
    specs = shapes.all_specs()[::3]
    accuracy = shapes.accuracy([_degrade(shapes.render(s), rng) for s in specs], specs)
    assert min(accuracy.values()) >= 0.95, accuracy


def test_scorer_is_at_chance_on_images_without_a_shape():
    rng = np.random.default_rng(0)
    specs = shapes.sample_specs(600, seed=1)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in specs]
    accuracy = shapes.accuracy(noise, specs)
    assert accuracy["mean"] < 0.35, accuracy
    for name, chance in CHANCE.items():
        assert accuracy[name] < chance + 0.1, (name, accuracy)
    grey = shapes.accuracy([Image.new("RGB", (64, 64), (128, 128, 128))] * len(specs), specs)
    assert grey["mean"] < 0.35, grey
    assert shapes.read_attributes(Image.new("RGB", (64, 64), (128, 128, 128)))["shape"] is None


def test_accuracy_needs_one_image_per_spec():
    with pytest.raises(ValueError, match="as many images as specs"):
        shapes.accuracy([], [])


def test_contact_sheet_of_captioned_renders(tmp_path):
    path = tmp_path / "shapes_grid.png"
    _contact_sheet(shapes.sample_specs(16, seed=3)).save(path)
    assert Image.open(path).size == (4 * 192, 4 * (192 + 48))
