"""`shapes`: a procedural image-caption dataset, deterministic from (split, index).

Why: diffjax trains its own small text-to-image model (no weights can be downloaded), and
needs data whose captions can be checked on the generated image by a program
(`diffjax.metrics.shapes_oracle`). Every example is one filled shape (circle, square,
triangle, star, cross, diamond) of one of six well-separated colours, on a plain
background, at one cell of a 3x3 grid, small or large. Captions come from several
templates and synonyms; the attributes are returned too.

Generalisation: a fixed set of (shape, colour) and (shape, position) combinations never
appears in the `train` split; the `holdout` split contains only examples with at least one
of them, the `test` split only seen combinations (at other indices than train's).

Rendering is supersampled 4x and box-filtered, so edges are anti-aliased and the image is
an exact function of (shape, centre, radius, colours) — the oracle renders the same
`shape_alpha` to match templates. Pure numpy + PIL; no network, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image, ImageDraw

from diffjax.spec import ConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

# Well separated in RGB (pairwise distance >= ~110) so a colour name is never ambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 10),
}

# Backgrounds are far from every shape colour (the oracle separates figure from ground).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}

# Grid rows/cols -> canonical position names ("center" is the middle cell).
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")
POSITIONS: tuple[str, ...] = tuple(
    ("center" if (r == "middle" and c == "center") else
     r if c == "center" else c if r == "middle" else f"{r} {c}")
    for r in _ROWS for c in _COLS)
SIZES: tuple[str, ...] = ("small", "large")

# Geometry, in fractions of the image side. Grid-cell centres are pulled in from 1/6, 5/6
# so that a large shape at a corner stays inside the image.
GRID_CENTRES = (0.22, 0.5, 0.78)
POSITION_JITTER = 0.04
RADIUS_RANGE = {"small": (0.11, 0.13), "large": (0.18, 0.20)}
SIZE_THRESHOLD = 0.155  # between the two radius ranges; used by the oracle
SUPERSAMPLE = 4

SPLITS: tuple[str, ...] = ("train", "test", "holdout")
_SPLIT_IDS = {"train": 0, "test": 1, "holdout": 2}

# Held-out combinations: one colour and one position per shape, chosen as a Latin design
# so every colour and (almost) every position still occurs with the other five shapes.
HELDOUT_SHAPE_COLOUR: frozenset[tuple[str, str]] = frozenset(
    (s, tuple(COLOURS)[(i + 1) % len(COLOURS)]) for i, s in enumerate(SHAPES))
HELDOUT_SHAPE_POSITION: frozenset[tuple[str, str]] = frozenset(
    (s, POSITIONS[(i * 4 + 2) % len(POSITIONS)]) for i, s in enumerate(SHAPES))

# Caption vocabulary: canonical name -> words used in captions (first is canonical).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} {where}",
    "a {colour} {shape} {where}",
    "{size} {colour} {shape} {where} on a {bg} background",
    "a picture of a {size} {colour} {shape} {where}",
    "a {colour} {shape} on a {bg} background",
    "a {size} {colour} {shape}",
)


class DatasetError(ConfigError):
    """A dataset cannot be built or opened as asked: a missing folder or split, a folder
    with no usable image, a size the trainers refuse (the message names it)."""


MIN_RESOLUTION = 16   # ShapesConfig's floor: below it the shapes' geometry degenerates


def check_request(resolution: int, split_sizes: dict[str, int]) -> None:
    """Refuse, before anything is written, a shapes build the library could not use."""
    if (isinstance(resolution, bool) or not isinstance(resolution, int)
            or resolution < MIN_RESOLUTION):
        raise DatasetError(f"shapes resolution must be an integer >= {MIN_RESOLUTION} (the "
                           f"shapes' geometry needs it), got {resolution!r}")
    unknown = sorted(set(split_sizes) - set(SPLITS))
    if unknown:
        raise DatasetError(f"shapes split sizes name unknown splits {unknown}")
    bad = {k: v for k, v in split_sizes.items() if not isinstance(v, int) or v < 0}
    if bad or not any(split_sizes.values()):
        raise DatasetError(f"shapes split sizes must be integers >= 0, at least one > 0, got "
                           f"{dict(split_sizes)}")



@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """Dataset-level options; the same config must be used to build and to check."""

    resolution: int = 32
    split_sizes: tuple[tuple[str, int], ...] = (("train", 20000), ("test", 1000),
                                                ("holdout", 1000))

    def __post_init__(self):
        if self.resolution < MIN_RESOLUTION:
            raise ValueError(f"ShapesConfig.resolution must be >= {MIN_RESOLUTION}, got "
                             f"{self.resolution}")


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one image (attributes + exact geometry)."""

    shape: str
    colour: str
    background: str
    position: str
    size: str
    cx: float  # centre, fractions of the image side
    cy: float
    radius: float

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "background": self.background,
                "position": self.position, "size": self.size}


# ---------------------------------------------------------------------------------------
# Geometry and rendering
# ---------------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices (pixel units) of `shape` with centroid (cx, cy) and size r; None = ellipse.

    Every polygon has its centroid at (cx, cy), so the oracle finds the centre as the
    centroid of the figure whatever the shape.
    """
    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up; circumcentre == centroid
        return [(cx + r * np.sin(a), cy - r * np.cos(a)) for a in (0, 2 * np.pi / 3,
                                                                    4 * np.pi / 3)]
    if shape == "star":  # five points, inner radius 0.45 r
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            a = k * np.pi / 5
            pts.append((cx + rr * np.sin(a), cy - rr * np.cos(a)))
        return pts
    if shape == "cross":  # plus sign with arm half-width 0.35 r
        w = 0.35 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
                (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
                (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]
    if shape == "diamond":  # taller than wide, so it is not a rotated square
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_alpha(shape: str, cx: float, cy: float, radius: float, resolution: int) -> np.ndarray:
    """Coverage in [0, 1], float32 [resolution, resolution], of a shape (fractions of side)."""
    s = SUPERSAMPLE
    big = resolution * s
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    x, y, r = cx * big, cy * big, radius * big
    poly = _polygon(shape, x, y, r)
    if poly is None:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    small = img.reduce(s)  # box filter: exact mean coverage of each output pixel
    return np.asarray(small, dtype=np.float32) / 255.0


def render(spec: ShapeSpec, resolution: int) -> np.ndarray:
    """RGB uint8 [resolution, resolution, 3] image of `spec`."""
    a = shape_alpha(spec.shape, spec.cx, spec.cy, spec.radius, resolution)[..., None]
    fg = np.asarray(COLOURS[spec.colour], np.float32)
    bg = np.asarray(BACKGROUNDS[spec.background], np.float32)
    return np.clip(np.rint(bg * (1 - a) + fg * a), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Sampling attributes and captions
# ---------------------------------------------------------------------------------------
def is_heldout(shape: str, colour: str, position: str) -> bool:
    """True if the (shape, colour) or (shape, position) pair is held out of training."""
    return (shape, colour) in HELDOUT_SHAPE_COLOUR or (shape, position) in HELDOUT_SHAPE_POSITION


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown shapes split {split!r}; expected one of {SPLITS}")
    if index < 0:
        raise ValueError(f"shapes example index must be >= 0, got {index}")
    return np.random.default_rng([0x5A4E, _SPLIT_IDS[split], int(index)])


def sample_spec(split: str, index: int) -> ShapeSpec:
    """The attributes and geometry of example `index` of `split` (pure function)."""
    rng = _rng(split, index)
    while True:  # rejection: a handful of draws at most (12 of 324 combos are held out)
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = tuple(COLOURS)[rng.integers(len(COLOURS))]
        position = POSITIONS[rng.integers(len(POSITIONS))]
        if split == "holdout":
            # Force a held-out pair half the time each way, so both kinds are tested.
            if rng.random() < 0.5:
                colour = dict(HELDOUT_SHAPE_COLOUR)[shape]
            else:
                position = dict(HELDOUT_SHAPE_POSITION)[shape]
            break
        if not is_heldout(shape, colour, position):
            break
    background = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    size = SIZES[rng.integers(len(SIZES))]
    p = POSITIONS.index(position)
    row, col = divmod(p, 3)
    cx = GRID_CENTRES[col] + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    cy = GRID_CENTRES[row] + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    radius = rng.uniform(*RADIUS_RANGE[size])
    return ShapeSpec(shape, colour, background, position, size, float(cx), float(cy),
                     float(radius))


def where_phrase(position: str, rng: np.random.Generator) -> str:
    """A caption's words for `position` ("in the upper left corner", "on the left", ...),
    synonyms drawn from rng; public so that metrics can build position-only captions."""
    if position == "center":
        return ("in the center", "in the middle")[rng.integers(2)]
    words = position.replace("top", ("top", "upper")[rng.integers(2)])
    words = words.replace("bottom", ("bottom", "lower")[rng.integers(2)])
    if " " in words:
        return f"in the {words}" + ("", " corner")[rng.integers(2)]
    if words in ("left", "right"):
        return f"on the {words}"
    return f"at the {words}"


def make_caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """One caption of `spec` from a random template and synonyms (all drawn from rng)."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    shape_w = SHAPE_WORDS[spec.shape][rng.integers(len(SHAPE_WORDS[spec.shape]))]
    size_w = SIZE_WORDS[spec.size][rng.integers(len(SIZE_WORDS[spec.size]))]
    caption = template.format(size=size_w, colour=spec.colour, shape=shape_w,
                              where=where_phrase(spec.position, rng), bg=spec.background)
    return caption


def example(split: str, index: int, resolution: int = 32) -> dict:
    """Example `index` of `split`: image (uint8 HWC), caption, attributes, held-out flag."""
    spec = sample_spec(split, index)
    caption_rng = np.random.default_rng([0xCA9, _SPLIT_IDS[split], int(index)])
    return {
        "image": render(spec, resolution),
        "caption": make_caption(spec, caption_rng),
        **spec.attributes(),
        "heldout": is_heldout(spec.shape, spec.colour, spec.position),
    }


# ---------------------------------------------------------------------------------------
# Parsing captions back into attributes (what the oracle checks)
# ---------------------------------------------------------------------------------------
def _find(words: dict[str, tuple[str, ...]], text: str) -> str | None:
    hits = {name for name, ws in words.items()
            for w in ws if re.search(rf"\b{re.escape(w)}\b", text)}
    if len(hits) > 1:
        raise ValueError(f"caption {text!r} names several of {sorted(hits)}")
    return hits.pop() if hits else None


def parse_caption(caption: str) -> dict[str, str | None]:
    """Attributes a caption states (None where it says nothing), e.g. from a user prompt.

    Background and shape colours are told apart by the word "background".
    """
    text = caption.lower().strip()
    bg = None
    m = re.search(r"\b(\w+) background\b", text)
    if m and m.group(1) in BACKGROUNDS:
        bg = m.group(1)
        text = text[:m.start()] + text[m.end():]
    colour = _find({c: (c,) for c in COLOURS}, text)
    shape = _find(SHAPE_WORDS, text)
    size = _find(SIZE_WORDS, text)
    position = None
    row = ("top" if re.search(r"\b(top|upper)\b", text) else
           "bottom" if re.search(r"\b(bottom|lower)\b", text) else None)
    col = ("left" if re.search(r"\bleft\b", text) else
           "right" if re.search(r"\bright\b", text) else None)
    if row and col:
        position = f"{row} {col}"
    elif row or col:
        position = row or col
    elif re.search(r"\b(center|centre|middle)\b", text):
        position = "center"
    return {"shape": shape, "colour": colour, "background": bg, "position": position,
            "size": size}
