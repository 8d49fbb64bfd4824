"""A miniature world of procedurally drawn scenes with captions, for offline benchmarks.

Real CLIP weights and web data cannot be downloaded here, so the benchmark draws its own:
scenes of a few objects (shape, colour, size, texture, position, count) on a background, with
captions built from templates and synonyms. Everything that varies is data in a JSON spec
(``bench/specs/*.json``); a distribution shift is a different spec, never different code.

    spec = load_spec("broad")
    items = generate(spec, 1000, seed=0)   # list[adapters.data.PairedItem], same seed -> same items

Each item is drawn from its own RNG seeded by (seed, index), so ``generate(spec, n, s)`` is a
prefix of ``generate(spec, n + k, s)`` and items can be generated in any order or process.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from adapters.data import PairedItem

SPEC_DIR = Path(__file__).parent / "specs"

# The attribute dimensions a spec samples; each is a dict {value name: {"w": weight, ...params}}.
DIMENSIONS = ("shapes", "colors", "textures", "sizes", "positions", "counts", "backgrounds", "lighting", "noise")
# Shapes the renderer can draw; a spec's shape names map onto these through "primitive".
PRIMITIVES = ("circle", "ellipse", "square", "rectangle", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring")
PATTERNS = ("solid", "hstripes", "vstripes", "diagonal", "dots", "checker", "grid")
BACKGROUND_KINDS = ("solid", "gradient", "speckle", "stripes")
# Caption slots whose phrase may be dropped from a partial caption (shape and count never are).
DROPPABLE = ("size", "color", "texture", "position", "background", "distractors")
# Slots a noisy caption may get wrong (web captions are sometimes simply wrong).
NOISABLE = ("shape", "color", "texture", "size", "position")
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}


def _merge(base: dict, override: dict) -> dict:
    """Recursive dict merge for "extends": dicts merge, anything else replaces; None deletes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class WorldSpec:
    """A distribution over scenes and captions. ``data`` is the (merged) JSON; the rest is derived."""

    name: str
    data: dict

    @property
    def description(self) -> str:
        return self.data.get("description", "")

    @property
    def image_size(self) -> int:
        return int(self.data.get("image_size", 64))

    @property
    def caption(self) -> dict:
        return self.data["caption"]

    def values(self, dim: str) -> dict:
        return self.data[dim]

    def with_caption(self, **overrides) -> WorldSpec:
        """A copy with caption settings changed, e.g. ``with_caption(partial_prob=0, noise_prob=0)``."""
        data = copy.deepcopy(self.data)
        data["caption"].update(overrides)
        return WorldSpec(self.name, data)

    def clean(self) -> WorldSpec:
        """The same world with every caption complete and correct (for evaluation)."""
        return self.with_caption(partial_prob=0.0, noise_prob=0.0)

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)


def _validate(name: str, data: dict) -> None:
    for dim in DIMENSIONS:
        values = data.get(dim)
        if not isinstance(values, dict) or not values:
            raise ValueError(f"spec {name!r}: {dim!r} must be a non-empty object")
        if not any(float(v.get("w", 1.0)) > 0 for v in values.values()):
            raise ValueError(f"spec {name!r}: {dim!r} has no value with positive weight")
    for shape, params in data["shapes"].items():
        if params.get("primitive", shape) not in PRIMITIVES:
            raise ValueError(f"spec {name!r}: shape {shape!r} has unknown primitive")
    for tex, params in data["textures"].items():
        if params.get("pattern", "solid") not in PATTERNS:
            raise ValueError(f"spec {name!r}: texture {tex!r} has unknown pattern")
    for bg, params in data["backgrounds"].items():
        if params.get("kind", "solid") not in BACKGROUND_KINDS:
            raise ValueError(f"spec {name!r}: background {bg!r} has unknown kind")
    for count in data["counts"]:
        if int(count) not in COUNT_WORDS:
            raise ValueError(f"spec {name!r}: count {count!r} not in 1..5")
    cap = data.get("caption")
    if not isinstance(cap, dict) or not cap.get("templates"):
        raise ValueError(f"spec {name!r}: caption.templates is required")
    for cat in data.get("categories", []):
        for dim, value in cat.get("fix", {}).items():
            if value not in data[dim + "s"] and value not in data.get(dim, {}):
                raise ValueError(f"spec {name!r}: category {cat.get('name')!r} fixes unknown {dim}={value!r}")


def list_specs() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.json"))


def _read_spec_json(name_or_path: str | Path) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = SPEC_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no world spec {name_or_path!r} (known: {', '.join(list_specs())})")
    data = json.loads(path.read_text())
    if "extends" in data:  # a shift may be written as a difference from another spec
        _, base = _read_spec_json(data.pop("extends"))
        data = _merge(base, data)
    return data.get("name", path.stem), data


def load_spec(name_or_path: str | Path) -> WorldSpec:
    """Load ``bench/specs/<name>.json`` or a JSON file path; ``extends`` is resolved."""
    name, data = _read_spec_json(name_or_path)
    data["name"] = name
    _validate(name, data)
    return WorldSpec(name, data)


# ----------------------------------------------------------------------------- drawing

@lru_cache(maxsize=512)
def _pattern_mask(pattern: str, period: int, size: int, phase: int) -> Image.Image:
    """An 'L' mask (255 = second colour) of a repeating pattern, cached: there are few of them."""
    yy, xx = np.mgrid[0:size, 0:size]
    xx, yy = xx + phase, yy + phase
    half = max(1, period // 2)
    if pattern == "hstripes":
        on = (yy % period) < half
    elif pattern == "vstripes":
        on = (xx % period) < half
    elif pattern == "diagonal":
        on = ((xx + yy) % period) < half
    elif pattern == "checker":
        on = ((xx // half + yy // half) % 2) == 0
    elif pattern == "dots":
        cx, cy = xx % period - (period - 1) / 2, yy % period - (period - 1) / 2
        on = cx * cx + cy * cy <= (period / 4.0 + 0.3) ** 2
    elif pattern == "grid":
        on = ((xx % period) == 0) | ((yy % period) == 0)
    else:
        on = np.zeros_like(xx, dtype=bool)
    return Image.fromarray((on * 255).astype(np.uint8), "L")


def _polygon(primitive: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(offset + rot + 2 * math.pi * k / n), cy + radius * math.sin(offset + rot + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if primitive == "triangle":
        return ring(3, r * 1.15, -math.pi / 2)
    if primitive == "square":
        return ring(4, r * 1.2, math.pi / 4)
    if primitive == "diamond":
        return ring(4, r * 1.2, 0.0)
    if primitive == "pentagon":
        return ring(5, r * 1.1, -math.pi / 2)
    if primitive == "hexagon":
        return ring(6, r * 1.1, 0.0)
    if primitive == "star":
        outer, inner = ring(5, r * 1.25, -math.pi / 2), ring(5, r * 0.5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if primitive == "cross":
        a, b = r * 1.1, r * 0.38
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(primitive)


def _shape_mask(size: int, primitive: str, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if primitive == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif primitive == "ellipse":
        draw.ellipse((cx - r * 1.3, cy - r * 0.7, cx + r * 1.3, cy + r * 0.7), fill=255)
    elif primitive == "rectangle":
        draw.rectangle((cx - r * 1.35, cy - r * 0.7, cx + r * 1.35, cy + r * 0.7), fill=255)
    elif primitive == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = r * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(_polygon(primitive, cx, cy, r, rot), fill=255)
    return mask


@lru_cache(maxsize=8)
def _black(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (0, 0, 0))


def _jitter(rgb: Sequence[int], amount: int, rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(c) + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _second_colour(rgb: Sequence[int]) -> tuple[int, int, int]:
    """Texture ink: darker on light colours, lighter on dark ones, so the pattern stays visible."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if lum > 110:
        return tuple(int(c * 0.3) for c in rgb)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * 0.7) for c in rgb)  # type: ignore[return-value]


def _background(size: int, params: dict, rng: random.Random, nrng: np.random.Generator) -> np.ndarray:
    kind = params.get("kind", "solid")
    jit = int(params.get("jitter", 12))
    colours = [np.array(_jitter(c, jit, rng), dtype=np.float32) for c in params.get("colors", [[200, 200, 200]])]
    if kind == "solid":
        return np.broadcast_to(colours[0], (size, size, 3)).copy()
    if kind == "gradient":
        a, b = colours[0], colours[-1]
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        grad = a + (b - a) * t  # top to bottom
        if rng.random() < 0.5:
            grad = grad.transpose(1, 0, 2)  # left to right
        return np.broadcast_to(grad, (size, size, 3)).copy()
    if kind == "speckle":  # blotchy texture: low-resolution noise upsampled
        cells = int(params.get("cells", 8))
        low = nrng.random((cells, cells, 1), dtype=np.float32)
        up = np.kron(low, np.ones((size // cells + 1, size // cells + 1, 1), dtype=np.float32))[:size, :size]
        a, b = colours[0], colours[-1]
        return a + (b - a) * up
    # stripes: a patterned backdrop (wallpaper, fabric) that competes with object textures
    period = int(params.get("period", 8))
    rows = (np.arange(size) // max(1, period // 2)) % 2
    out = np.where(rows[:, None, None] == 0, colours[0], colours[-1]) * np.ones((1, size, 1), dtype=np.float32)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- sampling

class _Sampler:
    """Per-spec precomputed name/weight lists, so drawing a value is one ``rng.choices`` call."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.tables = {}
        for dim in DIMENSIONS:
            names = list(spec.values(dim))
            weights = [float(spec.values(dim)[n].get("w", 1.0)) for n in names]
            self.tables[dim] = (names, weights)
        cats = spec.data.get("categories", [])
        self.categories = (cats, [float(c.get("w", 1.0)) for c in cats]) if cats else None
        dist = spec.data.get("distractors", {"0": {"w": 1.0}})
        self.distractors = ([int(k) for k in dist], [float(v.get("w", 1.0)) for v in dist.values()])

    def draw(self, dim: str, rng: random.Random, exclude: str | None = None) -> str:
        names, weights = self.tables[dim]
        if exclude is not None and len(names) > 1:
            pairs = [(n, w) for n, w in zip(names, weights, strict=True) if n != exclude and w > 0]
            if pairs:
                names, weights = [p[0] for p in pairs], [p[1] for p in pairs]
        return rng.choices(names, weights)[0]


@lru_cache(maxsize=32)
def _sampler(spec_json: str) -> _Sampler:
    data = json.loads(spec_json)
    return _Sampler(WorldSpec(data["name"], data))


def _scene(sampler: _Sampler, rng: random.Random) -> dict:
    """The scene graph: the main object group (what a caption is about) plus distractors."""
    main = {}
    category = None
    if sampler.categories:
        cats, weights = sampler.categories
        cat = rng.choices(cats, weights)[0]
        category = cat["name"]
        main.update(cat.get("fix", {}))
    for dim in ("shape", "color", "texture", "size", "position", "count"):
        if dim not in main:
            main[dim] = sampler.draw(dim + "s", rng)
    if category is None:
        category = main["shape"]
    scene = {
        "main": main,
        "category": category,
        "background": sampler.draw("backgrounds", rng),
        "lighting": sampler.draw("lighting", rng),
        "noise": sampler.draw("noise", rng),
        "distractors": [],
    }
    n_distract = rng.choices(*sampler.distractors)[0]
    used_positions = {main["position"]}
    for _ in range(n_distract):
        pos = sampler.draw("positions", rng, exclude=main["position"])
        if pos in used_positions and len(sampler.tables["positions"][0]) > len(used_positions):
            pos = sampler.draw("positions", rng, exclude=main["position"])
        used_positions.add(pos)
        scene["distractors"].append(
            {
                "shape": sampler.draw("shapes", rng, exclude=main["shape"]),
                "color": sampler.draw("colors", rng),
                "texture": sampler.draw("textures", rng),
                "size": sampler.draw("sizes", rng, exclude="large") if "large" in sampler.tables["sizes"][0] else sampler.draw("sizes", rng),
                "position": pos,
                "count": "1",
            }
        )
    return scene


def _render(spec: WorldSpec, scene: dict, rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    size = spec.image_size
    scale = size / 64.0  # spec geometry is written for 64 px and scales with image_size
    bg_params = spec.values("backgrounds")[scene["background"]]
    if bg_params.get("kind", "solid") == "solid":  # the common case, without a numpy round trip
        img = Image.new("RGB", (size, size), _jitter(bg_params.get("colors", [[200, 200, 200]])[0], int(bg_params.get("jitter", 12)), rng))
    else:
        img = Image.fromarray(np.clip(_background(size, bg_params, rng, nrng), 0, 255).astype(np.uint8), "RGB")
    jit = int(spec.data.get("color_jitter", 16))
    max_rot = math.radians(float(spec.data.get("rotation_deg", 15)))
    # Distractors first so the main group, which captions describe, is drawn on top.
    for obj in scene["distractors"] + [scene["main"]]:
        shape_p = spec.values("shapes")[obj["shape"]]
        primitive = shape_p.get("primitive", obj["shape"])
        r = float(spec.values("sizes")[obj["size"]]["radius"]) * scale * rng.uniform(0.92, 1.08)
        pos = spec.values("positions")[obj["position"]]
        ax, ay = pos["anchor"]
        count = int(obj["count"])
        if count > 1:
            r *= 0.8  # groups are drawn a little smaller so they fit their region
        step = 2.1 * r
        horizontal = pos.get("layout", "horizontal") == "horizontal"
        colour = _jitter(spec.values("colors")[obj["color"]]["rgb"], jit, rng)
        tex = spec.values("textures")[obj["texture"]]
        pattern = tex.get("pattern", "solid")
        for k in range(count):
            off = (k - (count - 1) / 2) * step
            cx = ax * size + (off if horizontal else 0) + rng.uniform(-2, 2) * scale
            cy = ay * size + (0 if horizontal else off) + rng.uniform(-2, 2) * scale
            cx, cy = min(max(cx, r), size - r), min(max(cy, r), size - r)
            mask = _shape_mask(size, primitive, cx, cy, r, rng.uniform(-max_rot, max_rot))
            img.paste(colour, (0, 0, size, size), mask)
            if pattern != "solid":
                period = max(2, int(round(float(tex.get("period", 4)) * scale)))
                ink = _pattern_mask(pattern, period, size, rng.randrange(period))
                img.paste(_second_colour(colour), (0, 0, size, size), ImageChops.multiply(mask, ink))
    light = spec.values("lighting")[scene["lighting"]]
    noise = spec.values("noise")[scene["noise"]]
    blur = float(noise.get("blur", 0.0))
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur * scale))
    gain = float(light.get("gain", 1.0)) * rng.uniform(*light.get("gain_jitter", [1.0, 1.0]))
    tint = light.get("tint", [1.0, 1.0, 1.0])
    sigma = float(noise.get("sigma", 0.0))
    factors = [gain * float(t) for t in tint]
    if any(abs(f - 1.0) > 1e-6 for f in factors):
        # Two C-level ops instead of a float round trip: scale channels down by a colour
        # multiply, then the common gain (possibly > 1, PIL extrapolates and clips) by blending.
        top = max(factors)
        if any(f != top for f in factors):
            img = ImageChops.multiply(img, Image.new("RGB", (size, size), tuple(int(round(255 * f / top)) for f in factors)))
        img = Image.blend(_black(size), img, top)
    if sigma > 0:
        arr = np.asarray(img, dtype=np.float32) + nrng.standard_normal((size, size, 3), dtype=np.float32) * sigma
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


# ----------------------------------------------------------------------------- captions

def _plural(word: str) -> str:
    last = word.split()[-1]
    head = word[: len(word) - len(last)]
    if last.endswith(("s", "x", "sh", "ch")):
        return head + last + "es"
    if last.endswith("y") and last[-2:-1] not in "aeiou":
        return head + last[:-1] + "ies"
    return head + last + "s"


def _word(cap: dict, kind: str, value: str, rng: random.Random) -> str:
    """A surface form for a value: a random synonym from caption.words, else the value's name."""
    options = cap.get("words", {}).get(kind, {}).get(value)
    if not options:
        return value
    return rng.choice(options)


def _caption(spec: WorldSpec, sampler: _Sampler, scene: dict, rng: random.Random) -> str:
    cap = spec.caption
    main = dict(scene["main"])
    # Noisy web captions: one attribute named wrongly.
    if rng.random() < float(cap.get("noise_prob", 0.0)):
        dim = rng.choice(NOISABLE)
        main[dim] = sampler.draw(dim + "s", rng, exclude=main[dim])
    dropped: set[str] = set()
    if rng.random() < float(cap.get("partial_prob", 0.0)):
        drop_p = float(cap.get("drop_prob", 0.5))
        dropped = {slot for slot in DROPPABLE if rng.random() < drop_p}
    count = int(main["count"])
    shape = _word(cap, "shapes", main["shape"], rng)
    slots = {
        "count": COUNT_WORDS[count] if count > 1 else "a",
        "shape": _plural(shape) if count > 1 else shape,
        "size": _word(cap, "sizes", main["size"], rng),
        "color": _word(cap, "colors", main["color"], rng),
        "texture": _word(cap, "textures", main["texture"], rng),
        "texture_with": _word(cap, "textures_with", main["texture"], rng) if main["texture"] in cap.get("words", {}).get("textures_with", {}) else "",
        "position": _word(cap, "positions", main["position"], rng),
        "background": rng.choice(cap.get("background_phrases", ["on a {} background"])).format(
            _word(cap, "backgrounds", scene["background"], rng)
        ),
        "be": "are" if count > 1 else "is",
        "category": _word(cap, "categories", scene["category"], rng),
        "distractors": "",
    }
    if scene["distractors"] and rng.random() < float(cap.get("mention_distractors_prob", 0.5)):
        parts = []
        for d in scene["distractors"]:
            parts.append(f"a {_word(cap, 'colors', d['color'], rng)} {_word(cap, 'shapes', d['shape'], rng)}")
        connector = rng.choice(cap.get("distractor_connectors", ["and"]))
        slots["distractors"] = f"{connector} {' and '.join(parts)}"
    for slot in dropped:
        slots[slot] = ""
    if "texture" in dropped:
        slots["texture_with"] = ""
    templates = cap["templates"]
    template = rng.choice(templates)
    text = template.format(**slots)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.:;])", r"\1", text)
    text = re.sub(r"([,:;])(?=[,.:;]|$)", "", text)  # separators left dangling by a dropped slot
    text = re.sub(r"\b(on|in|at|with|against) (a |an |the )?([,.]|$)", r"\3", text)  # prepositions orphaned by a dropped slot
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    text = re.sub(r"\bA (?=[aeiou])", "An ", text)
    return text.strip(" ,")


def _attributes(scene: dict) -> list[str]:
    main = scene["main"]
    attrs = [main["color"], main["texture"], main["size"], main["position"]]
    count = int(main["count"])
    if count > 1:
        attrs.append(COUNT_WORDS[count])
    return attrs


def generate(spec: WorldSpec | str, n: int, seed: int) -> list[PairedItem]:
    """Draw ``n`` items; item ``i`` depends only on (spec, seed, i)."""
    if isinstance(spec, str):
        spec = load_spec(spec)
    sampler = _sampler(json.dumps(spec.data, sort_keys=True))
    cap = spec.caption
    per_image = cap.get("per_image", [1, 1])
    lo, hi = (per_image, per_image) if isinstance(per_image, int) else per_image
    items = []
    for i in range(n):
        # A string seed goes through SHA-512 in random.Random: stable across runs and processes.
        rng = random.Random(f"{seed}:{i}")
        nrng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i])
        scene = _scene(sampler, rng)
        image = _render(spec, scene, rng, nrng)
        captions = [_caption(spec, sampler, scene, rng) for _ in range(rng.randint(lo, hi))]
        items.append(PairedItem(image, captions, scene["category"], _attributes(scene), f"{spec.name}:{seed}:{i}"))
    return items


def split(items: Sequence, fractions: Sequence[float], seed: int = 0) -> list[list]:
    """Shuffle ``items`` with ``seed`` and cut them into consecutive parts of the given fractions.

    The last part takes the remainder, so every item lands in exactly one part.
    """
    if any(f < 0 for f in fractions) or sum(fractions) > 1.0 + 1e-9:
        raise ValueError("fractions must be non-negative and sum to at most 1")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for k, frac in enumerate(fractions):
        end = len(items) if k == len(fractions) - 1 and abs(sum(fractions) - 1.0) < 1e-9 else start + int(round(frac * len(items)))
        parts.append([items[j] for j in order[start:end]])
        start = end
    return parts
