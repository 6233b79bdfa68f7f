"""Procedural captioned scenes: the training data of the embedded text-to-image model ``shapes-pixart``.

A scene is one or two objects on a plain dark background. An object is a (shape, colour, size,
position) with

* shape    ∈ circle, square, triangle, diamond
* colour   ∈ red, green, blue, yellow, purple, white
* size     ∈ small, large
* position ∈ left, right, top, bottom, centre (fixed anchors; "centre" only alone)

Two-object scenes put their objects on opposite sides (left + right or top + bottom), so they never
overlap and every object sits at its own anchor. Captions name everything, e.g.
"a small red circle on the left" or "a large blue square at the bottom and a small white triangle
at the top" (the two objects in either order), so the caption fixes the scene up to small jitter
(anchor ±0.75 px, size ±6 %, colour ±12 per channel, background grey level). There are
4·6·2·5 = 240 single-object and 2·48² = 4608 two-object scenes.

Held-out split: about 10 % of the scenes (chosen by a fixed hash of the canonical description) are
never used for training; evaluation captions (``conditions`` of the bundle) come from them, so the
model is scored on combinations it has not seen.

Labels are per position slot (``POSITIONS`` order): ``labels[i, slot] = (shape, colour, size)``
with shape 0 = empty, 1..4 = ``SHAPES``; colour/size index or -1 when the slot is empty.

Everything is a pure function of ``(n, seed, split, resolution)``: same arguments, same bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 45, 45),
    "green": (45, 185, 70),
    "blue": (55, 95, 240),
    "yellow": (235, 210, 45),
    "purple": (160, 65, 215),
    "white": (235, 235, 235),
}
SIZES = {"small": 4.0, "large": 6.0}  # radius in pixels at 32×32 (scaled with the resolution)
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}  # (x, y) as fractions of the side
WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
PAIRS = (("left", "right"), ("top", "bottom"))
SLOTS = tuple(POSITIONS)
ATTRIBUTES = ("shape", "colour", "size", "position")
P_SINGLE = 0.4  # probability of a one-object scene
HELD_OUT_MOD = 10  # a scene is held out when crc32(description) % 10 == 0

Obj = tuple[str, str, str, str]  # (shape, colour, size, position)


@dataclass
class Scenes:
    images: torch.Tensor  # uint8 N×3×H×W
    captions: list[str]
    labels: torch.Tensor  # int64 N×5×3: per slot (shape 0=empty / 1..4, colour or -1, size or -1)
    scenes: list[tuple[Obj, ...]]  # the objects of each scene, in caption order


def describe(obj: Obj) -> str:
    shape, colour, size, pos = obj
    return f"a {size} {colour} {shape} {WHERE[pos]}"


def caption(scene: tuple[Obj, ...]) -> str:
    return " and ".join(describe(o) for o in scene)


def _key(scene: tuple[Obj, ...]) -> str:
    """Canonical description (order-free) used for the held-out split."""
    return "|".join(sorted(",".join(o) for o in scene))


def is_held_out(scene: tuple[Obj, ...]) -> bool:
    return zlib.crc32(_key(scene).encode()) % HELD_OUT_MOD == 0


def all_scenes() -> list[tuple[Obj, ...]]:
    """Every scene, canonical order (objects sorted by slot); captions may list them either way."""
    objs = lambda pos: [(s, c, z, pos) for s, c, z in product(SHAPES, COLOURS, SIZES)]  # noqa: E731
    out = [(o,) for pos in SLOTS for o in objs(pos)]
    for a, b in PAIRS:
        out += [(x, y) for x in objs(a) for y in objs(b)]
    return out


_SPLITS: dict[str, tuple[list, list]] = {}


def _split(split: str) -> tuple[list, list]:
    """(single-object scenes, two-object scenes) of a split: "train", "heldout" or "all"."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train, heldout or all, not {split!r}")
    if split not in _SPLITS:
        keep = {"train": lambda s: not is_held_out(s), "heldout": is_held_out, "all": lambda s: True}[split]
        scenes = [s for s in all_scenes() if keep(s)]
        _SPLITS[split] = ([s for s in scenes if len(s) == 1], [s for s in scenes if len(s) == 2])
    return _SPLITS[split]


def sample_descriptions(n: int, seed: int, split: str = "train") -> list[tuple[Obj, ...]]:
    """n seeded scene descriptions (objects in caption order) from a split."""
    singles, pairs = _split(split)
    rng = np.random.default_rng([seed, 1])
    one = rng.random(n) < P_SINGLE
    i1 = rng.integers(0, len(singles), n)
    i2 = rng.integers(0, len(pairs), n)
    swap = rng.random(n) < 0.5
    out = []
    for k in range(n):
        if one[k]:
            out.append(singles[i1[k]])
        else:
            a, b = pairs[i2[k]]
            out.append((b, a) if swap[k] else (a, b))
    return out


def labels_of(scene: tuple[Obj, ...]) -> np.ndarray:
    lab = np.full((len(SLOTS), 3), -1, dtype=np.int64)
    lab[:, 0] = 0
    for shape, colour, size, pos in scene:
        lab[SLOTS.index(pos)] = (SHAPES.index(shape) + 1, list(COLOURS).index(colour), list(SIZES).index(size))
    return lab


def _coverage(shape_id, dx, dy, r):
    """Antialiased coverage in [0, 1] of the shapes (per image) at offsets dx, dy (N×H×W), radius r (N×1×1)."""
    circle = np.hypot(dx, dy) - r
    square = np.maximum(np.abs(dx), np.abs(dy)) - 0.886 * r
    diamond = (np.abs(dx) + np.abs(dy) - 1.15 * r) / np.sqrt(2.0)
    big = 1.35 * r  # triangle circumradius; its box is centred on the anchor (apex up)
    ty = dy - 0.125 * big
    triangle = np.maximum.reduce([ty - big / 2, 0.866 * dx - 0.5 * ty - big / 2, -0.866 * dx - 0.5 * ty - big / 2])
    sdf = np.select([shape_id == 0, shape_id == 1, shape_id == 2], [circle, square, triangle], diamond)
    return np.clip(0.5 - sdf, 0.0, 1.0)


def render(scenes: list[tuple[Obj, ...]], seed: int, resolution: int = 32) -> np.ndarray:
    """uint8 N×3×H×W images of the scenes (jitter drawn from ``seed``)."""
    n, side = len(scenes), resolution
    scale = side / 32.0
    rng = np.random.default_rng([seed, 2])
    bg = rng.uniform(15, 45, n)
    jit_xy = rng.uniform(-0.75, 0.75, (n, 2, 2)) * scale
    jit_r = rng.uniform(0.94, 1.06, (n, 2))
    jit_c = rng.uniform(-12, 12, (n, 2, 3))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    out = np.empty((n, 3, side, side), dtype=np.uint8)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    for lo in range(0, n, 2048):
        hi = min(n, lo + 2048)
        m = hi - lo
        img = np.broadcast_to(bg[lo:hi, None, None, None], (m, 3, side, side)).astype(np.float32).copy()
        for k in range(2):
            present = np.array([len(s) > k for s in scenes[lo:hi]])
            if not present.any():
                continue
            objs = [s[k] if len(s) > k else s[0] for s in scenes[lo:hi]]
            sid = np.array([SHAPES.index(o[0]) for o in objs])[:, None, None]
            col = palette[[list(COLOURS).index(o[1]) for o in objs]] + jit_c[lo:hi, k]
            rad = (np.array([SIZES[o[2]] for o in objs]) * scale * jit_r[lo:hi, k])[:, None, None]
            anchor = np.array([POSITIONS[o[3]] for o in objs]) * side + jit_xy[lo:hi, k]
            dx = xx[None] - anchor[:, 0, None, None]
            dy = yy[None] - anchor[:, 1, None, None]
            cov = (_coverage(sid, dx, dy, rad) * present[:, None, None])[:, None].astype(np.float32)
            img = img * (1 - cov) + np.clip(col, 0, 255)[:, :, None, None].astype(np.float32) * cov
        out[lo:hi] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def sample_scenes(n: int, seed: int, split: str = "train", resolution: int = 32) -> Scenes:
    """n seeded captioned scenes: uint8 images N×3×H×W, captions, per-slot labels and descriptions."""
    scenes = sample_descriptions(n, seed, split)
    images = render(scenes, seed, resolution)
    labels = np.stack([labels_of(s) for s in scenes]) if n else np.zeros((0, len(SLOTS), 3), np.int64)
    return Scenes(torch.from_numpy(images), [caption(s) for s in scenes], torch.from_numpy(labels), scenes)


def parse_caption(text: str) -> tuple[Obj, ...]:
    """The scene a caption describes (inverse of ``caption``); ValueError when it is not one."""
    objs = []
    for part in text.strip().split(" and "):
        words = part.split()
        if len(words) < 6 or words[0] != "a":
            raise ValueError(f"not a scene caption: {text!r}")
        size, colour, shape = words[1:4]
        where = " ".join(words[4:])
        pos = {v: k for k, v in WHERE.items()}.get(where)
        if size not in SIZES or colour not in COLOURS or shape not in SHAPES or pos is None:
            raise ValueError(f"not a scene caption: {text!r}")
        objs.append((shape, colour, size, pos))
    return tuple(objs)
