"""Video sequences for tracking: a synthetic generator and a reader for real sequences.

A `Sequence` is frames (RGB uint8, all of one size), the target's box in every frame
(`x, y, w, h` in pixels, top-left corner, 0-based) and a visibility flag per frame, plus the
challenge it was made to test. Two sources:

    sequences = video.make_sequences(24, length=80, image_size=128, seed=0)   # offline
    sequence = video.read_sequence("path/to/Basketball")   # a folder of frames, or a video

The synthetic sequences each test one challenge (`CHALLENGES`): the target is a textured
shape among distractors of similar appearance (same shape or same colours); it moves smoothly
or abruptly, grows or shrinks, rotates, is lit differently, or passes behind partial or full
occluders. The ground-truth box is the tight box of the target's whole silhouette, occluded
parts included (as in OTB); `visible` is False while less than a quarter of it can be seen.

The real-sequence layout is the one of OTB and GOT-10k: a folder of frame images (directly,
or in `img/`), sorted by name, or one video file (read with OpenCV), with an optional
`groundtruth.txt` (or OTB's `groundtruth_rect.txt`) of one `x,y,w,h` line per frame (commas,
tabs or spaces), an optional GOT-10k `absence.label` (1 = target absent) and an optional
`challenge.txt` naming the sequence's challenge. `write_sequence` writes that layout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common import UserError
from common.synthetic import SHAPES, _colour, _pattern, _shape_mask

CHALLENGES = ("smooth_motion", "abrupt_motion", "scale_change", "rotation", "illumination",
              "partial_occlusion", "full_occlusion", "distractors")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}
GROUNDTRUTH_NAMES = ("groundtruth.txt", "groundtruth_rect.txt")
VISIBLE_SHARE = 0.25  # below this share of its silhouette in view, a target counts as hidden


@dataclass
class Sequence:
    """Frames with the target's box and visibility in each (None where not known)."""

    name: str
    frames: list  # RGB uint8 (H, W, 3) arrays, or a FrameFiles that reads them on demand
    boxes: np.ndarray | None = None  # (T, 4) float32 x, y, w, h
    visible: np.ndarray | None = None  # (T,) bool
    challenge: str | None = None
    source: str = "synthetic"
    files: list[str] = field(default_factory=list)  # frame file names (real sequences)

    def __len__(self) -> int:
        return len(self.frames)

    def frame_name(self, i: int) -> str:
        return self.files[i] if self.files else f"frame {i} of {self.name}"


# ---------------------------------------------------------------- boxes


def parse_box(text: str, what: str = "box") -> np.ndarray:
    """`x,y,w,h` (commas, tabs or spaces) to a float32 array; raises UserError naming `what`."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        box = np.array([float(p) for p in parts], np.float32)
    except ValueError:
        box = np.zeros(0, np.float32)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise UserError(f"{what}: expected four numbers x,y,w,h, got {text.strip()!r}")
    return box


def check_box(box, frame_shape, what: str = "the initial box") -> None:
    """A box a tracker can start from: positive size, and overlapping the frame."""
    x, y, w, h = (float(v) for v in box)
    height, width = frame_shape[:2]
    if w <= 0 or h <= 0:
        raise UserError(f"{what} {x:g},{y:g},{w:g},{h:g} has zero or negative size: give "
                        "x,y,w,h with w and h of at least one pixel")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise UserError(f"{what} {x:g},{y:g},{w:g},{h:g} lies outside the {width}x{height} "
                        "frame: x,y is the top-left corner in pixels, 0-based")


# ---------------------------------------------------------------- the synthetic generator


def _sprite(rng, shape: str, radius: float, colours, texture: str):
    """A shape's texture and alpha mask drawn at twice the size it will mostly be shown at
    (so scaling down is mostly smooth), centred on a square canvas."""
    size = int(math.ceil(radius * 2 * 2.6)) | 1
    alpha = _shape_mask(shape, size, (size / 2, size / 2), 2 * radius, 0.0)
    colour = _pattern(rng, size, texture, colours[0], colours[1])
    return colour.astype(np.float32), alpha


def _similar(rng, colours, amount: float):
    """Colours close to `colours`: a distractor that is hard to tell from the target."""
    shift = rng.uniform(-amount, amount, 3)
    return [np.clip(c + shift, 0, 255) for c in colours]


def _paste(frame, sprite, centre, scale: float, angle: float):
    """Blend a sprite into the frame at `centre`, scaled and rotated; returns its alpha map
    (frame-sized). Only the patch around the sprite is warped: whole frames cost 10x more."""
    colour, alpha = sprite
    size = alpha.shape[0]
    height, width = frame.shape[:2]
    reach = int(math.ceil(size * scale * 0.75)) + 1
    x0, y0 = int(centre[0]) - reach, int(centre[1]) - reach
    left, top = max(0, x0), max(0, y0)
    right, bottom = min(width, x0 + 2 * reach), min(height, y0 + 2 * reach)
    full = np.zeros((height, width), np.float32)
    if right <= left or bottom <= top:
        return full  # entirely outside the frame
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += np.asarray(centre) - size / 2 - (left, top)
    patch = (right - left, bottom - top)
    a = cv2.warpAffine(alpha, matrix, patch, flags=cv2.INTER_LINEAR)
    c = cv2.warpAffine(colour, matrix, patch, flags=cv2.INTER_LINEAR)
    region = frame[top:bottom, left:right]
    region *= 1 - a[..., None]
    region += c * a[..., None]
    full[top:bottom, left:right] = a
    return full


def _path(rng, length: int, size: int, margin: float, speed: float, abrupt: bool):
    """Centre positions (T, 2): constant velocity with a slow turn, bouncing off the frame's
    edges; `abrupt` adds sudden changes of direction and speed and jumps."""
    position = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * math.pi)
    turn = rng.uniform(-0.04, 0.04)
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    changes = set(rng.choice(np.arange(5, length), size=min(length - 5, max(1, length // 12)),
                             replace=False).tolist()) if abrupt and length > 6 else set()
    path = []
    for t in range(length):
        if t in changes:
            angle = rng.uniform(0, 2 * math.pi)
            velocity = rng.uniform(2.5, 5.0) * np.array([math.cos(angle), math.sin(angle)])
            if rng.random() < 0.5:  # a jump, as when the camera shakes
                position = position + rng.uniform(-8, 8, 2)
        c, s = math.cos(turn), math.sin(turn)
        velocity = np.array([c * velocity[0] - s * velocity[1], s * velocity[0] + c * velocity[1]])
        position = position + velocity
        for axis in range(2):  # bounce off the edges
            if position[axis] < margin or position[axis] > size - margin:
                velocity[axis] = -velocity[axis]
                position[axis] = np.clip(position[axis], margin, size - margin)
        path.append(position.copy())
    return np.array(path, np.float32)


def make_sequence(challenge: str, length: int = 80, image_size: int = 128, seed: int = 0,
                  name: str | None = None) -> Sequence:
    """One synthetic sequence that tests `challenge` (one of CHALLENGES); see the module
    docstring. Deterministic given the seed."""
    if challenge not in CHALLENGES:
        raise UserError(f"unknown challenge {challenge!r}; known: {', '.join(CHALLENGES)}")
    if length < 2 or image_size < 48:
        raise UserError(f"a sequence needs at least 2 frames of at least 48x48 pixels, got "
                        f"{length} frames of {image_size}x{image_size}")
    for attempt in range(20):  # a full occlusion must hide the target for a few frames
        rng = np.random.default_rng(seed if attempt == 0 else [seed, attempt])
        made = _render(challenge, length, image_size, rng, name or f"{challenge}_{seed}")
        if challenge != "full_occlusion" or (~made.visible).sum() >= min(3, length // 4):
            break
    return made


def _render(challenge: str, length: int, size: int, rng: np.random.Generator,
            name: str) -> Sequence:
    background = _pattern(rng, size, str(rng.choice(["gradient", "stripes", "noise", "plain"])),
                          _colour(rng, "any"), _colour(rng, "any")) * 0.5 + 50
    for _ in range(int(rng.integers(3, 7))):  # static clutter: other shapes in other colours
        radius = rng.uniform(0.04, 0.1) * size
        alpha = _shape_mask(str(rng.choice(SHAPES)), size, rng.uniform(0, size, 2), radius,
                            rng.uniform(0, 6.3))
        background = background * (1 - alpha[..., None]) + _colour(rng, "any") * alpha[..., None]
    background = background.astype(np.float32)

    shapes = SHAPES if challenge != "rotation" else ("square", "triangle", "star", "cross",
                                                     "crescent", "diamond", "frame")
    shape = str(rng.choice(shapes))
    colours = [_colour(rng, "any"), _colour(rng, "any")]
    texture = str(rng.choice(["stripes", "checker", "solid", "noise"]))
    radius = rng.uniform(0.07, 0.1) * size
    target = _sprite(rng, shape, radius, colours, texture)
    speed = rng.uniform(0.8, 2.0) if challenge != "abrupt_motion" else rng.uniform(1.5, 3.0)
    t = np.arange(length, dtype=np.float32)

    scale = np.ones(length, np.float32)
    if challenge == "scale_change":
        end = rng.uniform(1.7, 2.2) ** rng.choice([-1, 1])
        scale = (end ** (0.5 - 0.5 * np.cos(np.pi * t / max(1, length - 1)))).astype(np.float32)
    angle = np.full(length, rng.uniform(-20, 20), np.float32)
    if challenge == "rotation":
        angle = angle + rng.choice([-1, 1]) * rng.uniform(3, 6) * t
    margin = radius * 1.3 * float(scale.max())
    centres = _path(rng, length, size, margin, speed, challenge == "abrupt_motion")

    # distractors: the same shape in similar colours, or another shape in the same colours
    distractors = []
    for k in range(4 if challenge == "distractors" else 2):
        same_shape = challenge == "distractors" or k == 0
        sprite = _sprite(rng, shape if same_shape else str(rng.choice(SHAPES)),
                         radius * rng.uniform(0.85, 1.15), _similar(rng, colours, 25), texture)
        if challenge == "distractors":  # crosses close by the target at a random time
            meet = int(rng.integers(length // 5, max(length // 5 + 1, 4 * length // 5)))
            direction = rng.uniform(0, 2 * math.pi)
            relative = rng.uniform(1.0, 2.5) * np.array([math.cos(direction),
                                                         math.sin(direction)])
            offset = rng.uniform(1.4, 2.2) * radius * np.array([-relative[1], relative[0]]) / (
                np.linalg.norm(relative))
            path = centres + offset + (t - meet)[:, None] * relative
        else:
            path = _path(rng, length, size, radius, rng.uniform(0.8, 2.0), False)
        distractors.append((sprite, path, rng.uniform(-20, 20)))

    # occluders: static opaque bars on the target's way, which it passes behind: a full one
    # covers its path for about ten frames, a partial one half of its silhouette along a path
    occluders = []
    if challenge in ("partial_occlusion", "full_occlusion"):
        events = 1 if challenge == "full_occlusion" or length < 40 else 2
        span, reach = (1, 0.95) if challenge == "full_occlusion" else (6, 1.3)
        candidates = [int(w * (length - 1)) for w in rng.permutation(np.linspace(0.25, 0.75, 11))]
        for i in candidates:
            if len(occluders) == events:
                break
            stretch = centres[max(0, i - span): i + span + 1]
            low, high = stretch.min(0) - reach * radius, stretch.max(0) + reach * radius
            if challenge == "partial_occlusion":  # one side of the path only
                across = int(np.argmin(high - low))
                middle = float(stretch[:, across].mean())
                side = rng.choice([-1, 1])
                low[across], high[across] = sorted([middle + side * 0.3 * radius,
                                                    middle + side * 1.6 * radius])
            start = centres[:2]  # the first frames must show the target: trackers start there
            clear = 1.2 * radius * float(scale[:2].max())
            if ((start + clear > low) & (start - clear < high)).all(axis=1).any():
                continue
            if any((low < h).all() and (high > lo).all() for lo, h, _ in occluders):
                continue
            low, high = np.clip(np.floor(low), 0, size).astype(int), np.clip(
                np.ceil(high), 0, size).astype(int)
            texture_ = _pattern(rng, size, "stripes", _colour(rng, "dark"), _colour(rng, "gray"))
            occluders.append((low, high, texture_))

    gain, light = np.ones(length, np.float32), None
    if challenge == "illumination":  # the scene darkens and brightens; a light sweeps across
        period = rng.uniform(0.5, 1.0) * length
        gain = 1 + 0.35 * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3))
        gain = gain.astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        light = np.zeros((length, size, size), np.float32)
        start, end = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        for k in range(length):
            spot = start + (end - start) * k / max(1, length - 1)
            light[k] = 0.4 * np.exp(-((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2)
                                    / (2 * (0.25 * size) ** 2))

    frames, boxes, visible = [], [], []
    for k in range(length):
        frame = background.copy()
        for sprite, path, d_angle in distractors:
            _paste(frame, sprite, path[k], 0.5, d_angle + angle[k] - angle[0])
        alpha = _paste(frame, target, centres[k], 0.5 * scale[k], angle[k])
        hidden = np.zeros((size, size), bool)
        for low, high, texture_ in occluders:
            frame[low[1]:high[1], low[0]:high[0]] = texture_[low[1]:high[1], low[0]:high[0]]
            hidden[low[1]:high[1], low[0]:high[0]] = True
        silhouette = alpha > 0.5
        ys, xs = np.nonzero(silhouette)
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])
        else:  # smaller than a pixel: the box of its centre
            boxes.append([centres[k][0] - 0.5, centres[k][1] - 0.5, 1, 1])
        shown = (silhouette & ~hidden).sum() / max(1, silhouette.sum())
        visible.append(shown >= VISIBLE_SHARE)
        if challenge == "illumination":
            frame *= gain[k] * (1 + light[k][..., None])
        frame += 3 * rng.standard_normal(frame.shape, dtype=np.float32)  # sensor noise
        frames.append(np.clip(frame, 0, 255, out=frame).astype(np.uint8))
    return Sequence(name, frames, np.array(boxes, np.float32),
                    np.array(visible, bool), challenge)


def make_sequences(n: int, length: int = 80, image_size: int = 128, seed: int = 0,
                   challenges: tuple[str, ...] = CHALLENGES) -> list[Sequence]:
    """`n` sequences, the challenges taken in turn (so each gets n / len(challenges))."""
    chosen = [challenges[i % len(challenges)] for i in range(n)]
    return [make_sequence(c, length, image_size, seed=seed * 100_003 + i, name=f"{c}_{i:03d}")
            for i, c in enumerate(chosen)]


# ---------------------------------------------------------------- reading real sequences


def _frame_files(folder: Path) -> list[Path]:
    if (folder / "img").is_dir():  # OTB keeps the frames in img/
        folder = folder / "img"
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _read_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read frame {path}: not an image OpenCV can decode; remove or "
                        "replace the file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FrameFiles:
    """Frame files read on demand (a long sequence is not held in memory), each checked to be
    readable and of the first frame's size."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.shape = _read_frame(files[0]).shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        frame = _read_frame(self.files[i])
        if frame.shape != self.shape:
            raise UserError(
                f"frame {self.files[i]} is {frame.shape[1]}x{frame.shape[0]} pixels, but "
                f"{self.files[0].name} is {self.shape[1]}x{self.shape[0]}: all frames of a "
                "sequence must have one size (resize them, or split the sequence)")
        return frame


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"cannot open video {path}: OpenCV cannot decode it; convert it to "
                        "MP4 or AVI, or extract its frames into a folder")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def _sequence_video(folder: Path) -> Path | None:
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    return videos[0] if len(videos) == 1 and not _frame_files(folder) else None


def iter_frames(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB frame) for each frame of a folder of images or a video file, streamed;
    raises UserError for a missing or empty source, an unreadable frame, or a size change."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--frames {path} does not exist: pass a folder of frame images or a "
                        "video file")
    video = path if path.is_file() else _sequence_video(path)
    if video is not None:
        if video.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"{video} is not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                            "nor a folder of frames")
        first = None
        for i, frame in enumerate(_video_frames(video)):
            first = first if first is not None else frame.shape
            yield f"{video.name}#{i}", frame
        if first is None:
            raise UserError(f"video {video} has no frames OpenCV can decode")
        return
    files = _frame_files(path)
    if not files:
        raise UserError(f"{path} holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                        "directly or in img/: pass a folder of frames or a video file")
    frames = FrameFiles(files)
    for i, file in enumerate(files):
        yield str(file), frames[i]


def read_groundtruth(path: str | Path, n_frames: int) -> np.ndarray:
    """(n_frames, 4) float32 boxes from one `x,y,w,h` line per frame; a wrong number of lines
    or a malformed line raises UserError naming it. NaN lines (GOT-10k's hidden targets) stay
    NaN and are left out of scoring."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != n_frames:
        raise UserError(f"{path} has {len(lines)} box lines but the sequence has {n_frames} "
                        f"frames: give one x,y,w,h line per frame")
    boxes = np.empty((n_frames, 4), np.float32)
    for i, line in enumerate(lines):
        if re.fullmatch(r"\s*(nan|NaN)([,\s]+(nan|NaN)){3}\s*", line):
            boxes[i] = np.nan
        else:
            boxes[i] = parse_box(line, f"{path} line {i + 1}")
    return boxes


def read_sequence(path: str | Path, load: bool = False) -> Sequence:
    """A real sequence: a folder of frames (optionally in img/) or a folder holding one video
    file, or a video file; with its ground truth, absence flags and challenge when present.
    Frames of a folder are read on demand unless `load`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"sequence {path} does not exist")
    folder = path if path.is_dir() else path.parent
    video = path if path.is_file() else _sequence_video(path)
    if video is not None:
        frames = [frame for _, frame in iter_frames(video)]
        files: list[str] = []
    else:
        found = _frame_files(path)
        if not found:
            raise UserError(f"{path} holds no frame images ({', '.join(sorted(IMAGE_SUFFIXES))}"
                            "), directly or in img/, and no video file")
        frames = FrameFiles(found)
        files = [str(f) for f in found]
        if load:
            frames = [frames[i] for i in range(len(frames))]
    boxes = visible = challenge = None
    truth = next((folder / n for n in GROUNDTRUTH_NAMES if (folder / n).is_file()), None)
    if truth is not None:
        boxes = read_groundtruth(truth, len(frames))
        visible = ~np.isnan(boxes).any(axis=1)
    absence = folder / "absence.label"
    if absence.is_file() and boxes is not None:
        flags = absence.read_text().split()
        if len(flags) != len(frames):
            raise UserError(f"{absence} has {len(flags)} lines but the sequence has "
                            f"{len(frames)} frames: one 0/1 line per frame")
        visible = visible & (np.array(flags) != "1")
    if (folder / "challenge.txt").is_file():
        challenge = (folder / "challenge.txt").read_text().strip() or None
    name = path.name if path.is_dir() else path.stem
    return Sequence(name, frames, boxes, visible, challenge, str(path), files)


def read_sequences(root: str | Path) -> list[Sequence]:
    """Every sequence under `root`: root itself when it is a sequence, else each subfolder
    (sorted) that is one (GOT-10k and OTB keep one sequence per folder)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist: pass a folder of sequences "
                        "(one subfolder each: frames + groundtruth.txt)")
    if _frame_files(root) or _sequence_video(root):
        return [read_sequence(root)]
    folders = [p for p in sorted(root.iterdir()) if p.is_dir()
               and (_frame_files(p) or _sequence_video(p))]
    if not folders:
        raise UserError(f"{root} holds no sequences: expected subfolders of frame images (or "
                        "one video each) with a groundtruth.txt of x,y,w,h per frame")
    return [read_sequence(p) for p in folders]


def write_sequence(sequence: Sequence, folder: str | Path) -> Path:
    """Write a sequence in the GOT-10k layout: 00000001.jpg ..., groundtruth.txt,
    absence.label, challenge.txt (what is known)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(sequence)):
        frame = sequence.frames[i]
        cv2.imwrite(str(folder / f"{i + 1:08d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    if sequence.boxes is not None:
        (folder / "groundtruth.txt").write_text(
            "".join(",".join(f"{v:g}" for v in box) + "\n" for box in sequence.boxes))
    if sequence.visible is not None:
        (folder / "absence.label").write_text(
            "".join(f"{int(not v)}\n" for v in sequence.visible))
    if sequence.challenge:
        (folder / "challenge.txt").write_text(sequence.challenge + "\n")
    return folder


# ---------------------------------------------------------------- the OTB metrics

OVERLAP_THRESHOLDS = np.linspace(0, 1, 21)
PRECISION_PIXELS = np.arange(51)


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (N, 4) x, y, w, h, row by row."""
    x1, y1 = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


def otb_scores(boxes: np.ndarray, truth: np.ndarray, lost_frames: int = 10) -> dict:
    """One sequence's success curve (share of frames with overlap above each threshold),
    precision curve (share with centre error <= 0..50 px) and failures (stretches of
    `lost_frames` or more frames in a row with overlap 0). Frame 0 (given to the tracker)
    and frames without ground truth (NaN) are left out."""
    known = ~np.isnan(truth).any(axis=1)
    known[0] = False
    if not known.any():
        return {"success": np.zeros(len(OVERLAP_THRESHOLDS)),
                "precision": np.zeros(len(PRECISION_PIXELS)), "failures": 0, "frames": 0}
    a, b = boxes[known].astype(np.float64), truth[known].astype(np.float64)
    ious = overlap(a, b)
    error = np.hypot(a[:, 0] + a[:, 2] / 2 - b[:, 0] - b[:, 2] / 2,
                     a[:, 1] + a[:, 3] / 2 - b[:, 1] - b[:, 3] / 2)
    failures, run = 0, 0
    for value in ious:
        run = run + 1 if value == 0 else 0
        failures += run == lost_frames  # counted once, when the stretch reaches the length
    return {"success": (ious[None, :] > OVERLAP_THRESHOLDS[:, None]).mean(axis=1),
            "precision": (error[None, :] <= PRECISION_PIXELS[:, None]).mean(axis=1),
            "failures": failures, "frames": int(known.sum())}


def summarise(scores: list[dict]) -> tuple[dict, np.ndarray, np.ndarray]:
    """OTB's numbers over sequences (a list of `otb_scores`): the success and precision
    curves averaged over the sequences that have ground truth, the AUC of the success curve
    (the mean of its 21 points), precision at 20 px, and the failures summed."""
    kept = [s for s in scores if s["frames"]] or scores
    success = np.mean([s["success"] for s in kept], axis=0)
    precision = np.mean([s["precision"] for s in kept], axis=0)
    return ({"success_auc": float(success.mean()), "precision_20": float(precision[20]),
             "failures": int(sum(s["failures"] for s in scores))}, success, precision)
