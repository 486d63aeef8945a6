"""Renderers for the TTE-Bench visual vocabulary.

Every image is RGB with sides that are multiples of 28 px: the vision tower uses 14-px patches
merged 2x2, so one 28x28 cell is exactly one visual token. Drawing is clean and high-contrast
(no jitter, no anti-aliasing noise) so a tiny model can perceive it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 28
GRID = 3  # scenes are GRID x GRID cells
BG = (30, 30, 30)
COLORS = {  # saturated and far apart in RGB so colour is never ambiguous
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 90, 250),
    "yellow": (245, 225, 30),
    "purple": (165, 55, 225),
    "orange": (255, 135, 0),
}
SHAPES = ("circle", "square", "triangle", "cross")
ITEMS = ("apple", "pear", "plum", "lemon", "melon", "grape")

Obj = tuple  # (colour, shape)
Scene = tuple  # GRID*GRID row-major slots, each an Obj or None
Page = tuple  # rows of (item, value), top to bottom

# Shape geometry on a 28-px cell (the object spans ~22 px); scaled for larger crops.
_BOX = {"circle": (3, 3, 25, 25), "square": (4, 4, 24, 24)}
_TRIANGLE = ((14, 3), (25, 25), (3, 25))
_CROSS = ((3, 10, 25, 18), (10, 3, 18, 25))


def draw_object(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, obj: Obj) -> None:
    """Draw `obj` inside the size x size square whose top-left corner is (x, y)."""
    colour, shape = obj
    fill, k = COLORS[colour], size / CELL

    def pts(*uv):  # cell coordinates -> image coordinates
        return [(x + u * k, y + v * k) for u, v in uv]

    if shape in _BOX:
        x0, y0, x1, y1 = _BOX[shape]
        (draw.ellipse if shape == "circle" else draw.rectangle)(pts((x0, y0), (x1, y1)), fill=fill)
    elif shape == "triangle":
        draw.polygon(pts(*_TRIANGLE), fill=fill)
    elif shape == "cross":
        for x0, y0, x1, y1 in _CROSS:
            draw.rectangle(pts((x0, y0), (x1, y1)), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene) -> Image.Image:
    """3x3 grid of 28-px cells (84x84); slot i is row i // 3, column i % 3."""
    img = Image.new("RGB", (GRID * CELL, GRID * CELL), BG)
    draw = ImageDraw.Draw(img)
    for i, obj in enumerate(scene):
        if obj is not None:
            draw_object(draw, (i % GRID) * CELL, (i // GRID) * CELL, CELL, obj)
    return img


def render_crop(obj: Obj, size: int = 2 * CELL) -> Image.Image:
    """One object drawn large (56x56 by default) on the dark background."""
    img = Image.new("RGB", (size, size), BG)
    draw_object(ImageDraw.Draw(img), 0, 0, size, obj)
    return img


def digit_tile(digit: np.ndarray, w: int, h: int) -> Image.Image:
    """An 8x8 sklearn digit (0..16) as a white-on-black grayscale tile, bilinear-resized to w x h."""
    arr = np.clip(np.rint(np.asarray(digit, dtype=np.float64) * (255 / 16)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").resize((w, h), Image.Resampling.BILINEAR)


# Position cues. Qwen2-VL's vision features carry no absolute position (RoPE puts position in the
# attention scores only), and a small model learns "which digit is left" or "which number sits in the
# apple row" very slowly from positions alone. So the images carry the cue visibly, as real documents
# often do: tinted halves for digit pairs, a tint per video frame, zebra-striped table rows.
PAIR_TINTS = [(0, 0, 110), (110, 0, 0)]                        # left, right
FRAME_TINTS = [(110, 0, 0), (0, 110, 0), (0, 0, 110), (110, 110, 0)]
ROW_TINTS = [(255, 215, 215), (215, 255, 215), (215, 215, 255)]


def _tinted(tile: Image.Image, tint) -> Image.Image:
    """White strokes over a coloured background."""
    a = np.asarray(tile, dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.rint(np.asarray(tint, np.float32) * (1 - a) + 255.0 * a).astype(np.uint8), "RGB")


def render_digit_pair(a: np.ndarray, b: np.ndarray) -> Image.Image:
    """56x56: digit `a` fills the left half (28x56), digit `b` the right half, each on its own tint."""
    img = Image.new("RGB", (2 * CELL, 2 * CELL))
    img.paste(_tinted(digit_tile(a, CELL, 2 * CELL), PAIR_TINTS[0]), (0, 0))
    img.paste(_tinted(digit_tile(b, CELL, 2 * CELL), PAIR_TINTS[1]), (CELL, 0))
    return img


def render_digit_frame(digit: np.ndarray, index: int) -> Image.Image:
    """Video frame `index`: 56x56 filled by a single digit on that frame's tint."""
    return _tinted(digit_tile(digit, 2 * CELL, 2 * CELL), FRAME_TINTS[index % len(FRAME_TINTS)])


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=18)  # bundled font: no system fonts needed


def render_page(rows: Page) -> Image.Image:
    """112x84 page, one zebra-striped 28-px row per (item, value): word in the left 84 px, value centred
    in the right 28x28 cell."""
    img = Image.new("RGB", (4 * CELL, len(rows) * CELL), (255, 255, 255))
    draw, font = ImageDraw.Draw(img), _font()
    for r, (item, value) in enumerate(rows):
        draw.rectangle((0, r * CELL, 4 * CELL - 1, (r + 1) * CELL - 1), fill=ROW_TINTS[r % len(ROW_TINTS)])
        y = r * CELL + CELL // 2
        draw.text((3, y), item, fill=(0, 0, 0), font=font, anchor="lm")
        draw.text((3 * CELL + CELL // 2, y), str(value), fill=(0, 0, 0), font=font, anchor="mm")
    return img
