"""Embedded offline datasets, generated procedurally and deterministically from a seed.

- `make_shapes`: one shape per image with its class label (classification).
- `make_scenes`: several shapes per image with boxes, instance masks and a semantic mask
  (detection, instance and semantic segmentation, tracking).
- `make_textlines`: printed text lines rendered with the fonts this machine has (OCR).

Shapes are drawn with PIL at 4x resolution and downsampled, so edges are anti-aliased like
photographs of real objects, not jagged like a rasteriser's output.
"""

from __future__ import annotations

import functools
import glob
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
