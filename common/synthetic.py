"""Embedded offline datasets, generated procedurally and deterministically from a seed.

- `make_shapes`: one shape per image with its class label (classification).
- `make_scenes`: several shapes per image with boxes, instance masks and a semantic mask
  (detection, instance and semantic segmentation, tracking).
- `make_textlines`: fixed-size printed text lines rendered with the fonts this machine has.
- `textline_stream` / `make_textline_set`: an unlimited seeded stream of printed lines in many
  pinned font families and conditions, clean to degraded (OCR; see `render_textline`).

Shapes are drawn with PIL at 4x resolution and downsampled, so edges are anti-aliased like
photographs of real objects, not jagged like a rasteriser's output.
"""

from __future__ import annotations

import functools
import glob
import io
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SHAPES = (
    "circle", "ring", "square", "frame", "triangle",
    "diamond", "hexagon", "star", "cross", "crescent",
)
BACKGROUNDS = ("plain", "gradient", "noise", "stripes")
TEXTURES = ("solid", "stripes", "checker", "noise")
PALETTES = ("any", "warm", "cool", "gray", "dark", "pastel")
_SUPERSAMPLE = 4


def _polygon(center, radius, sides, rotation, star=False):
    points = []
    count = sides * 2 if star else sides
    for i in range(count):
        angle = rotation + 2 * math.pi * i / count - math.pi / 2
        r = radius * (0.45 if star and i % 2 else 1.0)
        points.append((center[0] + r * math.cos(angle), center[1] + r * math.sin(angle)))
    return points


def _shape_mask(name: str, size: int, center, radius: float, rotation: float) -> np.ndarray:
    """Anti-aliased alpha mask (float32 in [0, 1]) of one shape on a size x size canvas."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = center[0] * s, center[1] * s, radius * s
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        draw.ellipse(box, fill=255)
    elif name == "ring":
        draw.ellipse(box, fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif name in ("square", "frame"):
        draw.polygon(_polygon((cx, cy), r * 1.1, 4, rotation + math.pi / 4), fill=255)
        if name == "frame":
            draw.polygon(_polygon((cx, cy), r * 0.6, 4, rotation + math.pi / 4), fill=0)
    elif name == "triangle":
        draw.polygon(_polygon((cx, cy + 0.15 * r), r * 1.1, 3, rotation), fill=255)
    elif name == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)], fill=255
        )
    elif name == "hexagon":
        draw.polygon(_polygon((cx, cy), r, 6, rotation), fill=255)
    elif name == "star":
        draw.polygon(_polygon((cx, cy), r * 1.1, 5, rotation, star=True), fill=255)
    elif name == "cross":
        w = 0.32 * r
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
    elif name == "crescent":
        draw.ellipse(box, fill=255)
        off = 0.45 * r
        draw.ellipse((cx - r + off, cy - r - 0.1 * r, cx + r + off, cy + r - 0.1 * r), fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(SHAPES)}")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _colour(rng: np.random.Generator, palette: str) -> np.ndarray:
    """An RGB colour in [0, 255] drawn from a palette (palettes give domain shifts)."""
    if palette == "gray":
        v = rng.uniform(20, 235)
        return np.array([v, v, v], np.float32)
    hue = rng.uniform(0, 1)
    if palette == "warm":
        hue = rng.uniform(-0.08, 0.17) % 1.0
    elif palette == "cool":
        hue = rng.uniform(0.45, 0.75)
    sat = rng.uniform(0.15, 0.45) if palette == "pastel" else rng.uniform(0.5, 1.0)
    val = rng.uniform(0.15, 0.45) if palette == "dark" else rng.uniform(0.55, 1.0)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb, np.float32) * 255.0


def _pattern(rng: np.random.Generator, size: int, kind: str, a, b) -> np.ndarray:
    """A size x size x 3 float image mixing colours a and b with a pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind in ("plain", "solid"):
        w = np.zeros((size, size), np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        w = (np.cos(angle) * xx + np.sin(angle) * yy)
        w = (w - w.min()) / max(float(np.ptp(w)), 1e-6)
    elif kind == "stripes":
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 7)
        w = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    elif kind == "checker":
        cells = int(rng.integers(3, 7))
        w = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    elif kind == "noise":
        w = rng.uniform(0, 1, (size, size)).astype(np.float32)
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return a * (1 - w[..., None]) + b * w[..., None]


def _check_names(values, known, what):
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {', '.join(known)}")


def make_shapes(
    n: int,
    image_size: int = 32,
    seed: int = 0,
    shapes: tuple[str, ...] = SHAPES,
    palette: str = "any",
    backgrounds: tuple[str, ...] = BACKGROUNDS,
    textures: tuple[str, ...] = TEXTURES,
    occluders: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, size, size, 3) uint8 with one shape each, and labels (n,) int64.

    Each image gets a random shape class (balanced), size, position, rotation, colour,
    texture and background; `occluders` grey bars are drawn over the shape. Change
    `palette`/`backgrounds` to make a domain-shifted copy of the same task.
    """
    _check_names(shapes, SHAPES, "shapes")
    _check_names(backgrounds, BACKGROUNDS, "backgrounds")
    _check_names(textures, TEXTURES, "textures")
    _check_names([palette], PALETTES, "palette")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(shapes)
    rng.shuffle(labels)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    for i, label in enumerate(labels):
        radius = rng.uniform(0.22, 0.42) * image_size
        margin = radius * 0.9
        center = rng.uniform(margin, image_size - margin, 2)
        alpha = _shape_mask(shapes[label], image_size, center, radius, rng.uniform(-0.3, 0.3))
        fg_colour = _colour(rng, palette)
        bg_colour = _colour(rng, palette)
        # keep the shape visible: push the background away from the foreground's brightness
        if abs(fg_colour.mean() - bg_colour.mean()) < 60:
            bg_colour = np.clip(255 - fg_colour + rng.uniform(-30, 30, 3), 0, 255)
        fg = _pattern(rng, image_size, rng.choice(textures), fg_colour, fg_colour * 0.6)
        bg = _pattern(
            rng, image_size, rng.choice(backgrounds), bg_colour, _colour(rng, palette) * 0.5
            + bg_colour * 0.5
        )
        image = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
        for _ in range(occluders):
            h, w = (rng.uniform(0.1, 0.3, 2) * image_size).astype(int) + 1
            y, x = rng.integers(0, image_size - h), rng.integers(0, image_size - w)
            image[y : y + h, x : x + w] = rng.uniform(60, 200)
        noise = rng.normal(0, 4, image.shape)
        images[i] = np.clip(image + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


@dataclass
class Scene:
    """One image with its objects: boxes are [x1, y1, x2, y2] in pixels."""

    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (k, 4) float32
    labels: np.ndarray  # (k,) int64, class ids from 0
    masks: np.ndarray  # (k, H, W) bool, visible part of each instance
    semantic: np.ndarray  # (H, W) uint8, 0 = background, class id + 1 elsewhere
    visible: np.ndarray  # (k,) float32, visible share of each object (1 = not occluded)


def make_scene(
    rng: np.random.Generator,
    image_size: int = 64,
    max_objects: int = 4,
    shapes: tuple[str, ...] = SHAPES,
    min_visible: float = 0.3,
) -> Scene:
    """One scene of 1..max_objects shapes; later shapes occlude earlier ones."""
    background = rng.choice(BACKGROUNDS)
    bg = _pattern(rng, image_size, background, _colour(rng, "any"), _colour(rng, "any"))
    image = bg * 0.6 + 40
    owner = np.full((image_size, image_size), -1, np.int64)
    objects = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(shapes)))
        radius = rng.uniform(0.08, 0.2) * image_size
        center = rng.uniform(radius, image_size - radius, 2)
        alpha = _shape_mask(shapes[label], image_size, center, radius, rng.uniform(-0.3, 0.3))
        colour = _colour(rng, "any")
        fg = _pattern(rng, image_size, rng.choice(TEXTURES), colour, colour * 0.7)
        image = image * (1 - alpha[..., None]) + fg * alpha[..., None]
        owner[alpha > 0.5] = k
        objects.append((label, int((alpha > 0.5).sum())))
    boxes, labels, masks, visible = [], [], [], []
    for k, (label, full_area) in enumerate(objects):
        mask = owner == k
        if full_area == 0 or mask.sum() < min_visible * full_area:
            continue  # mostly hidden: not a labelled object
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(label)
        masks.append(mask)
        visible.append(mask.sum() / full_area)  # pixels left visible by the shapes drawn later
    semantic = np.zeros((image_size, image_size), np.uint8)
    for label, mask in zip(labels, masks):
        semantic[mask] = label + 1
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
        masks=np.array(masks, bool).reshape(-1, image_size, image_size),
        semantic=semantic,
        visible=np.array(visible, np.float32),
    )


def make_scenes(n: int, image_size: int = 64, seed: int = 0, **kwargs) -> list[Scene]:
    """`n` scenes with boxes, instance masks and semantic masks (see `make_scene`)."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, image_size, **kwargs) for _ in range(n)]


def available_fonts() -> list[str]:
    """TrueType fonts on this machine: system fonts plus the DejaVu fonts matplotlib ships."""
    import matplotlib

    mpl_fonts = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    found = glob.glob(os.path.join(mpl_fonts, "*.ttf"))
    for folder in ("/usr/share/fonts", os.path.expanduser("~/.fonts")):
        found += glob.glob(os.path.join(folder, "**", "*.ttf"), recursive=True)
    # symbol / display fonts do not render Latin text
    skip = ("cmex", "cmsy", "cmmi", "STIX", "Display", "Symbol")
    return sorted({f for f in found if not any(s in os.path.basename(f) for s in skip)})


TEXT_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def make_textlines(
    n: int,
    seed: int = 0,
    height: int = 32,
    width: int = 160,
    min_chars: int = 3,
    max_chars: int = 10,
    alphabet: str = TEXT_ALPHABET,
    fonts: list[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Grayscale text-line images (n, height, width) uint8 (dark text on light paper) and texts.

    Font, size, position, ink/paper contrast, slight rotation and noise vary per line.
    """
    fonts = fonts or available_fonts()
    if not fonts:
        raise RuntimeError("no TrueType fonts found (matplotlib ships DejaVu: is it installed?)")
    rng = np.random.default_rng(seed)
    images = np.empty((n, height, width), np.uint8)
    texts = []
    for i in range(n):
        text = "".join(rng.choice(list(alphabet), int(rng.integers(min_chars, max_chars + 1))))
        font = ImageFont.truetype(str(rng.choice(fonts)), int(height * rng.uniform(0.55, 0.8)))
        paper, ink = rng.uniform(170, 255), rng.uniform(0, 90)
        canvas = Image.new("L", (width * 2, height), int(paper))
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = rng.uniform(1, max(2, width - (right - left) - 2))
        y = (height - (bottom - top)) / 2 - top + rng.uniform(-2, 2)
        draw.text((x, y), text, fill=int(ink), font=font)
        canvas = canvas.rotate(rng.uniform(-2, 2), resample=Image.Resampling.BILINEAR,
                               fillcolor=int(paper))
        line = np.asarray(canvas, np.float32)[:, :width]
        if right - left > width - 2:  # too long for the line: squeeze it horizontally
            wide = canvas.crop((0, 0, int(x + right - left + 2), height))
            line = np.asarray(wide.resize((width, height), Image.Resampling.BILINEAR), np.float32)
        images[i] = np.clip(line + rng.normal(0, 6, line.shape), 0, 255).astype(np.uint8)
        texts.append(text)
    return images, texts


# ---------------------------------------------------------------------------------------------
# Printed text lines for OCR: an unlimited, seeded stream in many fonts and conditions

# What the OCR recipe reads: letters, digits, space and common punctuation.
TEXTLINE_CHARSET = (" !\"&'(),-./0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "abcdefghijklmnopqrstuvwxyz")
# Font families come from matplotlib (DejaVu, STIX) and from pinned PyPI packages that ship
# TrueType/OpenType files (requirements.txt), never from the system: every clone renders the
# same lines. The unseen families never appear in training; the held-out test lines use them.
TEXTLINE_FONT_PACKAGES = ("font_roboto", "font_source_sans_pro", "font_source_serif_pro",
                          "font_lato", "font_caladea", "font_hanken_grotesk", "font_manrope",
                          "font_fredoka_one", "font_rhd")
UNSEEN_FONT_FAMILIES = ("Caladea", "Lato")
TEXTLINE_CONDITIONS = ("train", "clean", "degraded")
_MATPLOTLIB_FAMILIES = ("DejaVuSans", "DejaVuSansMono", "DejaVuSerif", "STIXGeneral")


def _font_covers(path: str, chars: str) -> bool:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as font:
        cmap = font.getBestCmap() or {}
    return all(ord(c) in cmap for c in chars if c != " ")


@functools.lru_cache(maxsize=4)
def textline_fonts(charset: str = TEXTLINE_CHARSET) -> dict[str, tuple[str, ...]]:
    """Font files by family (e.g. "Lato": its regular, bold, italic, ... files) that have a
    glyph for every character of `charset`: matplotlib's DejaVu and STIX families plus the
    installed `TEXTLINE_FONT_PACKAGES`. Variable fonts, hairline weights (Thin, ExtraLight)
    and duplicate .otf files are left out."""
    import importlib.util

    import matplotlib

    found: dict[str, dict[str, str]] = {}
    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    for path in sorted(glob.glob(os.path.join(folder, "*.ttf"))):
        stem = os.path.basename(path)[:-4]
        family = "STIXGeneral" if stem.startswith("STIXGeneral") else stem.split("-")[0]
        if family in _MATPLOTLIB_FAMILIES:
            found.setdefault(family, {})[stem] = path
    for package in TEXTLINE_FONT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue  # not installed: `pip install -r requirements.txt` brings it
        files = os.path.join(list(spec.submodule_search_locations)[0], "files")
        for path in sorted(glob.glob(os.path.join(files, "*.[ot]tf"))):
            stem = os.path.basename(path)[:-4]
            # variable fonts repeat the static ones; hairline weights are display type
            if any(w in stem for w in ("Variable", "Thin", "ExtraLight", "Hairline")):
                continue
            family = found.setdefault(stem.split("-")[0], {})
            if stem not in family or path.endswith(".ttf"):  # the .ttf of an .otf/.ttf pair
                family[stem] = path
    fonts = {}
    for family, files in sorted(found.items()):
        usable = tuple(sorted(p for p in files.values() if _font_covers(p, charset)))
        if usable:
            fonts[family] = usable
    return fonts


def textline_font_split(unseen: tuple[str, ...] = UNSEEN_FONT_FAMILIES,
                        charset: str = TEXTLINE_CHARSET) -> tuple[list[str], list[str]]:
    """(training font files, unseen-family font files): no family is in both."""
    fonts = textline_fonts(charset)
    missing = [f for f in unseen if f not in fonts]
    if missing:
        raise RuntimeError(f"font families {missing} not found (have {sorted(fonts)}): install "
                           "the pinned font packages with `pip install -r requirements.txt`")
    train = [p for family, files in fonts.items() if family not in unseen for p in files]
    test = [p for family in unseen for p in fonts[family]]
    return train, test


@functools.lru_cache(maxsize=1)
def textline_words() -> tuple[str, ...]:
    """The English word list of `random_textline` (common/textline_words.txt)."""
    path = os.path.join(os.path.dirname(__file__), "textline_words.txt")
    with open(path, encoding="utf-8") as f:
        return tuple(w.strip() for w in f if w.strip() and not w.startswith("#"))


def _word(rng: np.random.Generator) -> str:
    words = textline_words()
    word = words[int(rng.integers(len(words)))]
    case = rng.random()
    return word.capitalize() if case < 0.25 else word.upper() if case < 0.37 else word


def _number(rng: np.random.Generator) -> str:
    d = lambda lo, hi: str(int(rng.integers(lo, hi)))  # noqa: E731 - a local shorthand
    kind = int(rng.integers(9))
    if kind == 0:
        return f"{d(1, 32):0>2}/{d(1, 13):0>2}/{d(1950, 2040)}"  # a date
    if kind == 1:
        return f"{d(0, 24)}:{d(0, 60):0>2}"  # a time
    if kind == 2:
        return f"({d(100, 1000)}) {d(100, 1000)}-{d(1000, 10000)}"  # a phone number
    if kind == 3:
        return f"{d(1, 1000)},{d(0, 1000):0>3}"  # thousands
    if kind == 4:
        return f"{d(0, 1000)}.{d(0, 100):0>2}"  # a decimal
    if kind == 5:
        return f"{d(1, 100)}-{d(1, 100)}"  # a range
    return d(0, 10 ** int(rng.integers(1, 7)))


def _random_chars(rng: np.random.Generator, n: int, charset: str) -> str:
    return "".join(rng.choice(list(charset.replace(" ", "")), n))


def _phrase_piece(rng: np.random.Generator, charset: str) -> str:
    """A word or number, sometimes with punctuation attached as in running text."""
    r = rng.random()
    piece = (_number(rng) if r < 0.18 else
             _random_chars(rng, int(rng.integers(1, 8)), charset) if r < 0.26 else _word(rng))
    r = rng.random()
    if r < 0.12:
        piece += rng.choice([",", ".", ";", ":", "!", "?"])
    elif r < 0.16:
        piece = f'"{piece}"'
    elif r < 0.20:
        piece = f"({piece})"
    elif r < 0.23:
        piece = f"'{piece}'"
    elif r < 0.27:
        piece += rng.choice(["-", "/", "'s", "'t", "...", "?!", ").", "),"]) + (
            _word(rng) if rng.random() < 0.5 else "")
    elif r < 0.30:
        piece = rng.choice(["&", "-", "/", ":", "--", "(", ")"]) + (" " + piece)
    return piece


def random_textline(rng: np.random.Generator, max_chars: int = 32,
                    charset: str = TEXTLINE_CHARSET) -> str:
    """One line of 1 to `max_chars` characters of `charset`: running text (words, numbers,
    punctuation: most lines), a number-heavy line, or a random string (with spaces)."""
    length = int(rng.integers(1, max_chars + 1)) if rng.random() < 0.6 else int(
        rng.integers(max(1, max_chars // 2), max_chars + 1))
    kind = rng.random()
    if kind < 0.15:  # random characters: every character equally often, no language model
        text = _random_chars(rng, length, charset)
        spaces = rng.random(length) < 0.12
        text = "".join(" " if s and 0 < i < length - 1 else c
                       for i, (c, s) in enumerate(zip(text, spaces)))
    else:
        pieces: list[str] = []
        while sum(len(p) + 1 for p in pieces) <= length:
            pieces.append(_number(rng) if kind < 0.25 else _phrase_piece(rng, charset))
        text = " ".join(pieces)
        if len(text) > length:  # cut at a space when there is one, else anywhere
            cut = text.rfind(" ", 0, length + 1)
            text = text[:cut] if cut > 0 else text[:length]
    text = " ".join(text.split())  # one space between words, none at the ends
    text = "".join(c for c in text if c in charset)
    return text or _random_chars(rng, 1, charset)


def _grey_level_colour(rng: np.random.Generator, level: float, tint: float) -> np.ndarray:
    """An RGB colour of about the luminance `level`, tinted by up to `tint` per channel."""
    colour = level + rng.uniform(-tint, tint, 3)
    colour += level - colour @ np.array([0.299, 0.587, 0.114])  # back to the luminance asked
    return np.clip(colour, 0, 255)


def _background(rng: np.random.Generator, height: int, width: int, paper: np.ndarray,
                texture: str, amplitude: float) -> np.ndarray:
    """(height, width, 3) float32 paper: plain, gradient, cloudy noise, ruled lines, stripes."""
    image = np.broadcast_to(paper.astype(np.float32), (height, width, 3)).copy()
    if texture == "gradient":
        ramp = np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]
        image += amplitude * ramp * rng.uniform(-1, 1, 3).astype(np.float32)
    elif texture == "cloudy":
        cells = rng.normal(0, 1, (max(2, height // 6), max(2, width // 6), 3))
        cloud = Image.fromarray(((cells.clip(-2.5, 2.5) + 2.5) * 51).astype(np.uint8))
        cloud = np.asarray(cloud.resize((width, height), Image.Resampling.BICUBIC), np.float32)
        image += amplitude * (cloud / 127.5 - 1)
    elif texture == "ruled":
        period = rng.uniform(4, 12)
        rows = (np.arange(height) % period < 1).astype(np.float32)[:, None, None]
        image -= amplitude * rows * rng.uniform(0.3, 1, 3).astype(np.float32)
    elif texture == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 10)
        y, x = np.mgrid[:height, :width].astype(np.float32)
        wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
        image += amplitude * wave[..., None] * rng.uniform(0.3, 1, 3).astype(np.float32)
    return image


def _condition(rng: np.random.Generator, condition: str) -> dict:
    """The rendering parameters of one line in a condition (see `render_textline`)."""
    if condition == "train":  # a third each: like clean, like degraded, anything in between
        pick = rng.random()
        condition = "clean" if pick < 0.3 else "degraded" if pick < 0.6 else "wide"
    if condition == "clean":
        return dict(size=rng.uniform(22, 34), contrast=rng.uniform(150, 240), light=True,
                    tint=5.0, texture="plain", amplitude=0.0, blur=rng.uniform(0, 0.7),
                    rotation=rng.uniform(-1, 1), shear=0.0, stretch=1.0,
                    noise=rng.uniform(0, 3), jpeg=None)
    if condition == "degraded":
        return dict(size=rng.uniform(13, 18), contrast=rng.uniform(35, 90),
                    light=rng.random() < 0.8, tint=60.0,
                    texture=str(rng.choice(["gradient", "cloudy", "ruled", "stripes"])),
                    amplitude=rng.uniform(5, 20), blur=rng.uniform(0.2, 1.0),
                    rotation=rng.uniform(-2, 2), shear=rng.uniform(-0.15, 0.15), stretch=1.0,
                    noise=rng.uniform(4, 12), jpeg=int(rng.integers(25, 61)))
    if condition == "wide":
        return dict(size=rng.uniform(10, 40), contrast=rng.uniform(30, 250),
                    light=rng.random() < 0.8, tint=rng.uniform(0, 80),
                    texture=str(rng.choice(["plain", "gradient", "cloudy", "ruled",
                                            "stripes"])),
                    amplitude=rng.uniform(0, 25), blur=rng.uniform(0, 1.3) * (rng.random() < 0.6),
                    rotation=rng.uniform(-3, 3), shear=rng.uniform(-0.25, 0.25),
                    stretch=rng.uniform(0.8, 1.25), noise=rng.uniform(0, 16),
                    jpeg=int(rng.integers(20, 95)) if rng.random() < 0.5 else None)
    raise ValueError(f"unknown condition {condition!r}; known: {', '.join(TEXTLINE_CONDITIONS)}")


def render_textline(rng: np.random.Generator, text: str, font_path: str,
                    condition: str = "train") -> np.ndarray:
    """One printed line as an RGB uint8 image (H, W, 3), cropped around the text as a line
    detector would (font-metric height, random margins).

    Conditions: "clean": text 22-34 px high (the font's pixel size), dark on light paper,
    slight blur and rotation. "degraded": text 13-18 px high, low contrast, coloured textured
    paper, noise, JPEG quality 25-60, blur, rotation and shear. "train": a mix of those two
    and of wider ranges (10-40 px, light on dark, stretched glyphs, ...)."""
    p = _condition(rng, condition)
    size = max(6, int(round(p["size"])))
    font = _font(font_path, size)
    ascent, descent = font.getmetrics()
    left, _, right, _ = font.getbbox(text, anchor="ls")
    pad = size + 4
    mask = Image.new("L", (right - left + 2 * pad, ascent + descent + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad + ascent), text, fill=255, font=font,
                              anchor="ls")
    if p["stretch"] != 1.0:  # condensed or extended type
        mask = mask.resize((max(1, round(mask.width * p["stretch"])), mask.height),
                           Image.Resampling.BILINEAR)
    if p["shear"] or p["rotation"]:
        middle = mask.height / 2
        mask = mask.transform(mask.size, Image.Transform.AFFINE,
                              (1, p["shear"], -p["shear"] * middle, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
        mask = mask.rotate(p["rotation"], resample=Image.Resampling.BILINEAR)
    ink_box = mask.getbbox() or (pad, pad, pad + 1, pad + ascent)
    top = min(pad, ink_box[1]) - int(size * rng.uniform(0.05, 0.35))
    bottom = max(pad + ascent + descent, ink_box[3]) + int(size * rng.uniform(0.05, 0.35))
    x0 = ink_box[0] - int(size * rng.uniform(0.1, 0.9))
    x1 = ink_box[2] + int(size * rng.uniform(0.1, 0.9))
    alpha = np.asarray(mask.crop((x0, max(0, top), x1, min(mask.height, bottom))),
                       np.float32)[..., None] / 255
    height, width = alpha.shape[:2]
    paper_level = rng.uniform(150 + p["contrast"] * 0.4, 255) if p["light"] else rng.uniform(
        0, 105 - p["contrast"] * 0.4)
    ink_level = paper_level - p["contrast"] if p["light"] else paper_level + p["contrast"]
    ink_level = float(np.clip(ink_level, 0, 255))
    paper = _grey_level_colour(rng, paper_level, p["tint"])
    ink = _grey_level_colour(rng, ink_level, p["tint"] / 2)
    image = _background(rng, height, width, paper, p["texture"], p["amplitude"])
    image = image * (1 - alpha) + ink.astype(np.float32) * alpha
    line = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if p["blur"] > 0.05:
        line = line.filter(ImageFilter.GaussianBlur(p["blur"]))
    pixels = np.asarray(line, np.float32)
    if p["noise"] > 0:
        pixels = pixels + rng.normal(0, p["noise"], pixels.shape).astype(np.float32)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if p["jpeg"]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=p["jpeg"])
        pixels = np.asarray(Image.open(buffer).convert("RGB"))
    return pixels


def textline(seed: int, index: int, fonts: list[str] | tuple[str, ...],
             condition: str = "train", max_chars: int = 32,
             charset: str = TEXTLINE_CHARSET) -> tuple[np.ndarray, str]:
    """Line number `index` of the stream `seed`: the same (image, text) on every machine and in
    any order, since each line draws from its own generator seeded by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    text = random_textline(rng, max_chars, charset)
    font = fonts[int(rng.integers(len(fonts)))]
    return render_textline(rng, text, font, condition), text


def textline_stream(seed: int, fonts: list[str] | tuple[str, ...], condition: str = "train",
                    max_chars: int = 32, start: int = 0, step: int = 1,
                    charset: str = TEXTLINE_CHARSET) -> Iterator[tuple[np.ndarray, str]]:
    """Lines start, start + step, ... of the unlimited stream `seed` (see `textline`):
    `step` > 1 splits the stream between parallel readers without repeating a line."""
    for index in itertools.count(start, step):
        yield textline(seed, index, fonts, condition, max_chars, charset)


def make_textline_set(n: int, seed: int, fonts: list[str] | tuple[str, ...],
                      condition: str = "train", max_chars: int = 32,
                      charset: str = TEXTLINE_CHARSET) -> tuple[list[np.ndarray], list[str]]:
    """The first `n` lines of the stream `seed`: RGB images of their own sizes and texts."""
    lines = [textline(seed, i, fonts, condition, max_chars, charset) for i in range(n)]
    return [image for image, _ in lines], [text for _, text in lines]


# ---------------------------------------------------------------------------------------------
# Glyph corpus: the pretraining data of the generic backbone (recipes/pretrain)

# Unicode blocks the corpus draws its classes from: Latin, Greek and Cyrillic letters, arrows,
# mathematical operators, technical symbols, box drawing (line art), miscellaneous symbols and
# dingbats (pictograms of everyday objects). Digits are left out, and so is every glyph whose
# Unicode name says it is one of the shapes of `make_shapes`, so that the digit and shape
# datasets stay unseen by the pretrained backbone (transfer to them is then a real test).
GLYPH_BLOCKS = ((0x41, 0x5A), (0x61, 0x7A), (0x391, 0x3C9), (0x410, 0x44F), (0x2190, 0x21FF),
                (0x2200, 0x22FF), (0x2300, 0x23FF), (0x2500, 0x257F), (0x2600, 0x26FF),
                (0x2700, 0x27BF))
GLYPH_EXCLUDED_WORDS = ("DIGIT", "CIRCLE", "RING", "SQUARE", "FRAME", "TRIANGLE", "DIAMOND",
                        "LOZENGE", "HEXAGON", "STAR", "CROSS", "CRESCENT", "BULLET", "ELLIPSE",
                        "RECTANGLE", "PENTAGON", "ASTERISK", "NUMBER", "ROMAN")
GLYPH_FONTS = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral")
_GLYPH_BACKGROUNDS = ("plain", "gradient", "noise", "stripes", "checker")


def glyph_fonts() -> list[str]:
    """The fonts of the glyph corpus: matplotlib's DejaVu and STIX families (16 files), so that
    every clone renders the same glyphs whatever fonts its machine has."""
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    found = sorted(glob.glob(os.path.join(folder, "*.ttf")))
    keep = [f for f in found if os.path.basename(f).split("-")[0].split(".")[0] in GLYPH_FONTS
            or os.path.basename(f).startswith("STIXGeneral")]
    if not keep:
        raise RuntimeError(f"no DejaVu/STIX fonts in {folder}: is matplotlib installed?")
    return keep


@functools.lru_cache(maxsize=2048)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)  # loading a font file costs more than drawing a glyph


def _glyph_signature(char: str, font_path: str) -> np.ndarray | None:
    """A 12x12 binary thumbnail of a glyph's ink, cropped to its box (None: too little ink)."""
    font = ImageFont.truetype(font_path, 48)
    canvas = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(canvas).text((48, 48), char, fill=255, font=font, anchor="mm")
    box = canvas.getbbox()
    if box is None or (box[2] - box[0]) * (box[3] - box[1]) < 64:
        return None
    ink = np.asarray(canvas.crop(box).resize((12, 12), Image.Resampling.BOX), np.float32)
    return ink > 64


def glyph_classes(max_classes: int | None = None) -> list[tuple[str, list[str]]]:
    """The corpus classes: (character, fonts that have it), deterministic for a set of fonts.

    A character is kept when at least two of the corpus fonts have it, it has enough ink, it is
    not excluded by name (see GLYPH_EXCLUDED_WORDS), and its thumbnail differs from every kept
    one in at least 8 of 144 pixels (Latin A, Greek Alpha and Cyrillic A are one class).
    """
    import unicodedata

    from fontTools.ttLib import TTFont

    fonts = glyph_fonts()
    cmaps = {f: set(TTFont(f, lazy=True).getBestCmap() or {}) for f in fonts}
    reference = next(f for f in fonts if os.path.basename(f) == "DejaVuSans.ttf")
    kept, signatures = [], []
    for first, last in GLYPH_BLOCKS:
        for code in range(first, last + 1):
            char = chr(code)
            name = unicodedata.name(char, "")
            if (not name or unicodedata.category(char)[0] not in "LSP"
                    or any(word in name for word in GLYPH_EXCLUDED_WORDS)):
                continue
            having = [f for f in fonts if code in cmaps[f]]
            if len(having) < 2 or code not in cmaps[reference]:
                continue
            signature = _glyph_signature(char, reference)
            if signature is None or any((signature != s).sum() < 8 for s in signatures):
                continue
            kept.append((char, having))
            signatures.append(signature)
    if max_classes is not None and len(kept) > max_classes:  # an even spread over the blocks
        kept = [kept[i] for i in np.linspace(0, len(kept) - 1, max_classes).round().astype(int)]
    return kept


def _contrasting(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """An ink colour whose luminance differs from the background's mean by at least 70."""
    lum = float(background.reshape(-1, 3).mean(0) @ [0.299, 0.587, 0.114])
    for _ in range(8):
        ink = _colour(rng, str(rng.choice(PALETTES)))
        if abs(float(ink @ [0.299, 0.587, 0.114]) - lum) >= 70:
            return ink
    return np.full(3, 0.0 if lum > 127 else 255.0, np.float32)


def make_glyph(rng: np.random.Generator, char: str, fonts: list[str], size: int = 32,
               gray: float = 0.35) -> np.ndarray:
    """One corpus image (size, size, 3) uint8: a glyph in a random font, scale, position,
    rotation, shear and stroke weight, filled or outlined, solid or textured ink, over a
    textured background with clutter, noise and blur; gray with probability `gray`."""
    from PIL import ImageChops, ImageFilter

    big = 2 * size
    height = rng.uniform(0.45, 0.9) * big
    font_path = str(rng.choice(fonts))
    probe = _font(font_path, 100).getbbox(char)
    extent = max(probe[2] - probe[0], probe[3] - probe[1], 1)
    font = _font(font_path, max(6, int(100 * height / extent / 2)) * 2)  # even: fewer sizes
    mask = Image.new("L", (big, big), 0)
    centre = big / 2 + rng.uniform(-0.12, 0.12, 2) * big
    stroke = int(rng.integers(1, 4)) if rng.random() < 0.25 else 0
    ImageDraw.Draw(mask).text(tuple(centre), char, fill=255, font=font, anchor="mm",
                              stroke_width=stroke, stroke_fill=255)
    if rng.random() < 0.15:  # outline only: the ink's rim
        mask = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(5)),
                                   mask.filter(ImageFilter.MinFilter(3)))
    shear = rng.uniform(-0.25, 0.25) if rng.random() < 0.5 else 0.0
    mask = mask.transform((big, big), Image.Transform.AFFINE,
                          (1, shear, -shear * big / 2, 0, 1, 0), Image.Resampling.BILINEAR)
    mask = mask.rotate(rng.uniform(-20, 20), Image.Resampling.BILINEAR)
    alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), np.float32)[..., None]
    alpha /= 255.0

    background = _pattern(rng, size, str(rng.choice(_GLYPH_BACKGROUNDS)),
                          _colour(rng, str(rng.choice(PALETTES))),
                          _colour(rng, str(rng.choice(PALETTES))))
    if rng.random() < 0.3:  # clutter: a few strokes behind the glyph
        lines = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(lines)
        for _ in range(int(rng.integers(1, 4))):
            draw.line([tuple(rng.uniform(0, big, 2)) for _ in range(int(rng.integers(2, 4)))],
                      fill=255, width=int(rng.integers(1, 4)))
        clutter = np.asarray(lines.resize((size, size), Image.Resampling.BOX),
                             np.float32)[..., None] / 255.0 * rng.uniform(0.3, 0.8)
        background = background * (1 - clutter) + _colour(rng, "any") * clutter
    ink = _contrasting(rng, background)
    if rng.random() < 0.3:  # textured ink
        ink = _pattern(rng, size, str(rng.choice(TEXTURES)), ink, _contrasting(rng, background))
    image = background * (1 - alpha) + ink * alpha
    if rng.random() < gray:
        image = np.repeat(image @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=2)
    if rng.random() < 0.5:
        image = image + rng.normal(0, rng.uniform(2, 12), image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        image = np.asarray(Image.fromarray(image).filter(
            ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))))
    return image


def make_glyphs(n: int, size: int = 32, seed: int = 0, classes=None, gray: float = 0.35):
    """`n` corpus images (n, size, size, 3) uint8, labels (n,) int32 (balanced: image i has
    class i mod K in a shuffled order) and the class characters. `classes`: from glyph_classes()."""
    classes = classes if classes is not None else glyph_classes()
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(classes)).astype(np.int32)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        char, fonts = classes[label]
        images[i] = make_glyph(rng, char, fonts, size, gray)
    return images, labels, [char for char, _ in classes]
