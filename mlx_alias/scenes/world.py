"""The scene world: pictures of a few objects, each with attributes a person names in words
(size, pattern, colour, shape), on cluttered backgrounds, with exact instance masks.

Everything follows from a seed, so a scene is reproducible and training data can be drawn on
the fly (about a millisecond a scene). Objects do not overlap, so each mask is the object's
whole silhouette. Backgrounds are smooth colour fields crossed by lines and blotches of every
object colour, so that no colour alone marks an object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 224  # the tiny preset's input: scenes are drawn at the model's own resolution
SIZES = ("small", "large")
PATTERNS = ("plain", "striped", "dotted", "checkered")
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "purple": (135, 50, 185),
    "pink": (245, 125, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "hexagon", "diamond")
RADII = {"small": (12, 18), "large": (26, 40)}  # half the object's extent, in pixels
OBJECTS = (2, 5)  # objects per scene, inclusive
ATTRIBUTES = ("size", "pattern", "colour", "shape")  # in the order English puts them


@dataclass(frozen=True)
class Thing:
    """One object: its attribute values (keys of ``ATTRIBUTES``), where it is, and how big."""

    size: str
    pattern: str
    colour: str
    shape: str
    x: float
    y: float
    radius: float
    angle: float  # of the pattern's stripes, and of the shape where it has no upright

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [SIZE, SIZE, 3]
    things: tuple[Thing, ...]
    masks: np.ndarray  # bool [len(things), SIZE, SIZE], each object's pixels


def _outline(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a shape centred at (x, y) with extent ``r`` (circle and heart: many points)."""

    def ring(count: int, radius: float | np.ndarray, start: float) -> list[tuple[float, float]]:
        t = start + np.arange(count) * 2 * np.pi / count
        return list(zip(x + radius * np.cos(t), y + radius * np.sin(t)))

    if shape == "circle":
        return ring(48, r, 0.0)
    if shape == "square":  # tilted by at most 10 degrees, so that it never looks like a diamond
        return ring(4, r * 1.2, np.pi / 4 + (angle / np.pi - 0.5) * 0.35)
    if shape == "triangle":
        return ring(3, r * 1.15, -np.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "diamond":
        return list(zip(x + r * np.array([0, 0.7, 0, -0.7]), y + r * np.array([-1.1, 0, 1.1, 0])))
    if shape == "star":
        radii = np.tile([r * 1.15, r * 0.48], 5)
        return ring(10, radii, -np.pi / 2)
    if shape == "cross":
        a, b = r * 0.95, r * 0.32
        xs = np.array([-b, b, b, a, a, b, b, -b, -b, -a, -a, -b])
        ys = np.array([-a, -a, -b, -b, b, b, a, a, b, b, -b, -b])
        return list(zip(x + xs, y + ys))
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        hx = 16 * np.sin(t) ** 3
        hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return list(zip(x + hx * r / 16, y + (hy + 2) * r / 16))
    raise ValueError(f"unknown shape {shape!r}")


def _pattern(kind: str, radius: float, angle: float, shape: tuple[int, int], origin: tuple[float, float]) -> np.ndarray:
    """bool [H, W]: where the pattern's accent colour shows (nothing for plain)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    x, y = x - origin[0], y - origin[1]
    period = max(4.0, radius / 2.2)
    if kind == "plain":
        return np.zeros(shape, bool)
    if kind == "striped":
        return ((x * np.cos(angle) + y * np.sin(angle)) // (period / 2)) % 2 == 1
    if kind == "dotted":
        cx, cy = (x % period) - period / 2, (y % period) - period / 2
        return cx * cx + cy * cy < (period * 0.28) ** 2
    if kind == "checkered":
        return ((x // (period / 2)) + (y // (period / 2))) % 2 == 1
    raise ValueError(f"unknown pattern {kind!r}")


def _accent(colour: str) -> tuple[int, int, int]:
    """The pattern's second colour: white on dark colours, near-black on light ones."""
    r, g, b = COLOURS[colour]
    return (25, 25, 25) if 0.3 * r + 0.59 * g + 0.11 * b > 150 else (245, 245, 245)


def _background(rng: np.random.Generator) -> Image.Image:
    """A smooth colour field with lines and blotches in the objects' colours (clutter)."""
    coarse = rng.uniform(60, 200, (4, 4, 3)).astype(np.uint8)
    picture = Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC)
    draw = ImageDraw.Draw(picture)
    palette = list(COLOURS.values()) + [(245, 245, 245), (25, 25, 25)]
    for _ in range(int(rng.integers(4, 10))):
        colour = palette[int(rng.integers(len(palette)))]
        points = [tuple(float(v) for v in rng.uniform(-20, SIZE + 20, 2)) for _ in range(2)]
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 6))):
        colour = palette[int(rng.integers(len(palette)))]
        cx, cy = rng.uniform(0, SIZE, 2)
        r = rng.uniform(3, 7)
        blob = [
            (cx + r * rng.uniform(0.6, 1.4) * np.cos(t), cy + r * rng.uniform(0.6, 1.4) * np.sin(t))
            for t in np.linspace(0, 2 * np.pi, 7, endpoint=False)
        ]
        draw.polygon([(float(a), float(b)) for a, b in blob], fill=colour)
    return picture


def _place(rng: np.random.Generator, radius: float, placed: list[Thing]) -> tuple[float, float] | None:
    """A centre for a new object that keeps it inside the picture and clear of the others."""
    margin = radius * 1.2 + 2
    for _ in range(50):
        x, y = rng.uniform(margin, SIZE - margin, 2)
        if all(np.hypot(x - t.x, y - t.y) > (radius + t.radius) * 1.25 + 4 for t in placed):
            return float(x), float(y)
    return None


def random_things(rng: np.random.Generator, count: int | None = None) -> list[Thing]:
    """Objects with random attributes at free places (fewer if the picture fills up)."""
    count = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1)) if count is None else count
    things: list[Thing] = []
    for _ in range(count):
        size = SIZES[int(rng.integers(len(SIZES)))]
        radius = float(rng.uniform(*RADII[size]))
        where = _place(rng, radius, things)
        if where is None:
            continue
        things.append(
            Thing(
                size,
                PATTERNS[int(rng.integers(len(PATTERNS)))],
                list(COLOURS)[int(rng.integers(len(COLOURS)))],
                SHAPES[int(rng.integers(len(SHAPES)))],
                *where,
                radius,
                float(rng.uniform(0, np.pi)),
            )
        )
    return things


def render(things: list[Thing], rng: np.random.Generator) -> Scene:
    """Draw ``things`` on a fresh background from ``rng``; masks are the drawn pixels."""
    canvas = np.asarray(_background(rng), dtype=np.uint8).copy()
    masks = np.zeros((len(things), SIZE, SIZE), bool)
    for i, thing in enumerate(things):
        silhouette = Image.new("L", (SIZE, SIZE), 0)
        ImageDraw.Draw(silhouette).polygon(_outline(thing.shape, thing.x, thing.y, thing.radius, thing.angle), fill=255)
        inside = np.asarray(silhouette) > 127
        accent = _pattern(thing.pattern, thing.radius, thing.angle, inside.shape, (thing.x, thing.y)) & inside
        canvas[inside] = COLOURS[thing.colour]
        canvas[accent] = _accent(thing.colour)
        masks[i] = inside
    return Scene(canvas, tuple(things), masks)


def scene(seed: int | np.random.Generator) -> Scene:
    """A random scene, the same for the same seed."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return render(random_things(rng), rng)
