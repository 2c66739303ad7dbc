"""SynthDrive: procedurally rendered driving scenes with the redundancy of real driving logs.

Each *sequence* is a short clip of consecutive frames (10 fps) of one road scene: sky, road with
lane marks, horizon, roadside clutter, and a few (1-6) labelled objects of five classes with a
long-tailed frequency -- car (~50 %), pedestrian, cyclist, truck and traffic_sign (rare). Ego motion
pans the camera by ``ego_speed`` pixels per frame and moves it forward, so consecutive frames are
near-duplicates; objects persist across frames with a ``track_id``. ``frames=1`` gives the
"diverse" variant (every image an independent scene).

Difficulty varies on purpose, so detector uncertainty varies: conditions day / dusk / fog / night
(night rare) change brightness, contrast and haze (fog is thicker near the horizon); perspective
makes far objects small; objects are drawn far-to-near and boxes mostly hidden behind nearer
objects are dropped (counted as ``occluded_dropped``), as are boxes mostly outside the frame
(``truncated_dropped``).

Everything is deterministic by ``seed``: a sequence's content depends only on ``(seed, sequence
index)``, so the same settings give byte-identical tables and PNGs. Splits are assigned per
sequence (no sequence spans two splits).
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from pydantic import Field, model_validator

from activedet import schema, store
from activedet.config import FrozenModel, load_config
from activedet.data.dataset import write_dataset_tables
from activedet.errors import ConfigError
from activedet.progress import Progress

log = logging.getLogger(__name__)

#: category id -> name (ids start at 1, COCO convention)
CATEGORIES: dict[int, str] = {1: "car", 2: "pedestrian", 3: "cyclist", 4: "truck", 5: "traffic_sign"}
CLASS_WEIGHTS: dict[int, float] = {1: 0.50, 2: 0.20, 3: 0.12, 4: 0.10, 5: 0.08}
CONDITIONS = ("day", "dusk", "fog", "night")
CONDITION_WEIGHTS = (0.55, 0.20, 0.15, 0.10)
FPS = 10.0

# Per-class geometry at scale s = 1 for a 128-px-high image: (box width, box height, s_min, s_max).
# s_min keeps the smallest side of a fully visible box >= ~10 px.
_GEOMETRY: dict[int, tuple[float, float, float, float]] = {
    1: (70.0, 44.0, 0.25, 1.0),
    2: (24.0, 62.0, 0.42, 1.0),
    3: (46.0, 56.0, 0.25, 0.95),
    4: (116.0, 68.0, 0.20, 0.80),
    5: (26.0, 26.0, 0.40, 0.95),
}
_CAR_COLOURS = [
    (200, 30, 30), (30, 60, 190), (190, 190, 195), (240, 240, 240), (35, 35, 40), (230, 200, 40),
    (40, 140, 60), (20, 30, 90), (150, 20, 90), (120, 120, 125),
]
_TRAILER_COLOURS = [(235, 235, 230), (200, 205, 210), (230, 130, 40), (80, 120, 190), (150, 160, 150)]
_CAB_COLOURS = [(200, 30, 30), (30, 60, 190), (240, 200, 30), (40, 140, 60), (245, 245, 245)]
_SHIRT_COLOURS = [(220, 40, 40), (40, 80, 220), (250, 210, 40), (240, 120, 20), (40, 180, 80), (200, 60, 200)]
_SKIN = [(240, 200, 160), (200, 150, 110), (140, 95, 60), (95, 65, 40)]
_MIN_SIDE = 10.0  # px at H = 128; boxes whose visible part is much smaller are not labelled


class SynthConfig(FrozenModel):
    """Settings of one SynthDrive dataset."""

    sequences: int = Field(50, ge=1, description="number of sequences (clips)")
    frames: int = Field(10, ge=1, description="frames per sequence (1 = diverse, no near-duplicates)")
    seed: int = Field(0, ge=0, description="random seed; same seed and settings give identical output")
    height: int = Field(128, ge=64, le=2048, description="image height in pixels")
    width: int = Field(256, ge=64, le=4096, description="image width in pixels")
    ego_speed: float = Field(3.0, ge=0.0, le=50.0, description="camera pan per frame in pixels (also drives forward motion)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of sequences in the val split")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of sequences in the test split")
    min_objects: int = Field(1, ge=0, description="fewest objects spawned per sequence")
    max_objects: int = Field(6, ge=1, description="most objects spawned per sequence")
    max_occlusion: float = Field(
        0.6, gt=0.0, le=1.0, description="drop a box when more than this fraction is hidden by nearer objects"
    )
    night_fraction: float = Field(0.10, ge=0.0, le=1.0, description="probability of a night sequence")
    fog_fraction: float = Field(0.15, ge=0.0, le=1.0, description="probability of a fog sequence")
    dusk_fraction: float = Field(0.20, ge=0.0, le=1.0, description="probability of a dusk sequence")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of the PNG files")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        if self.night_fraction + self.fog_fraction + self.dusk_fraction > 1.0:
            raise ValueError("night_fraction + fog_fraction + dusk_fraction must be <= 1")
        n_val, n_test = split_counts(self.sequences, self.val_fraction, self.test_fraction)
        if n_val + n_test >= self.sequences:
            raise ValueError(
                f"val_fraction + test_fraction leave no train sequence out of {self.sequences}"
            )
        return self

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


def split_counts(sequences: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Number of val and test sequences: rounded; a non-zero fraction gets at least one sequence
    when there are 3 or more (so tiny datasets stay all-train instead of failing)."""

    def count(fraction: float) -> int:
        n = int(round(sequences * fraction))
        return max(n, 1) if fraction > 0 and sequences >= 3 else n

    return count(val_fraction), count(test_fraction)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``128x256``) into ``(height, width)``."""
    parts = str(text).lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--size: expected HxW such as 128x256, got {text!r}") from None
    return h, w


# --------------------------------------------------------------------------- scene model


@dataclass
class _Obj:
    category: int
    track: int
    lateral: float  # position across the road, in road half-widths (0 = ego lane centre)
    depth: float  # 1 / scale; 1 = at the bottom edge of the image
    d_lateral: float  # per frame
    d_depth: float  # per frame, on top of the ego's forward motion
    static: bool
    colours: tuple
    variant: int


@dataclass
class _Scene:
    condition: str
    horizon: float  # fraction of the image height
    vp_offset: float  # vanishing point x offset (fraction of width)
    pan: float  # pixels per frame per unit of ego_speed (signed)
    sky: tuple
    ground: tuple
    road: tuple
    fog_density: float
    buildings: list  # (x, width, height, grey) in pixels at pan 0
    trees: list  # (lateral, depth)
    objects: list[_Obj] = field(default_factory=list)


@dataclass(frozen=True)
class Frame:
    """One rendered frame: an RGB image and its labelled boxes (absolute xyxy pixels)."""

    image: np.ndarray  # uint8 [H, W, 3]
    boxes: np.ndarray  # float32 [N, 4]
    categories: np.ndarray  # int32 [N]
    track_ids: list[int]
    condition: str
    occluded_dropped: int
    truncated_dropped: int


def _choice(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _spawn_object(rng: np.random.Generator, category: int, track: int) -> _Obj:
    _, _, s_min, s_max = _GEOMETRY[category]
    scale = s_min + (s_max - s_min) * float(rng.random()) ** 1.5  # far (small) objects more common
    side = 1.0 if rng.random() < 0.5 else -1.0
    static, d_lat, d_depth = False, 0.0, float(rng.uniform(-0.05, 0.05))
    if category in (1, 4):
        lateral = float(_choice(rng, (-0.66, 0.0, 0.66)) + rng.normal(0, 0.05))
    elif category == 2:
        if rng.random() < 0.3:  # crossing the road
            lateral, d_lat = float(rng.uniform(-0.9, 0.9)), side * float(rng.uniform(0.01, 0.04))
        else:
            lateral, d_lat = side * float(rng.uniform(1.05, 1.45)), 0.0
        static, d_depth = True, float(rng.uniform(-0.01, 0.01))
    elif category == 3:
        lateral = side * float(rng.uniform(0.8, 1.1))
        d_depth = float(rng.uniform(-0.03, 0.03))
    else:
        lateral, static, d_depth = side * float(rng.uniform(1.15, 1.4)), True, 0.0
    if category == 1:
        colours = (_choice(rng, _CAR_COLOURS),)
    elif category == 4:
        colours = (_choice(rng, _TRAILER_COLOURS), _choice(rng, _CAB_COLOURS))
    elif category in (2, 3):
        colours = (_choice(rng, _SHIRT_COLOURS), _choice(rng, _SKIN), (int(rng.integers(20, 70)),) * 3)
    else:
        colours = ()
    return _Obj(category, track, lateral, 1.0 / scale, d_lat, d_depth, static, colours, int(rng.integers(3)))


def _make_scene(config: SynthConfig, sequence: int) -> _Scene:
    rng = np.random.default_rng([config.seed, sequence, 1])
    day = 1.0 - config.night_fraction - config.fog_fraction - config.dusk_fraction
    probs = np.array([day, config.dusk_fraction, config.fog_fraction, config.night_fraction])
    condition = CONDITIONS[int(rng.choice(4, p=probs / probs.sum()))]
    w, h = config.width, config.height
    buildings = []
    x = float(-w * 0.5)
    while x < w * 1.5:
        bw = float(rng.uniform(0.05, 0.16)) * w
        buildings.append((x, bw, float(rng.uniform(0.04, 0.22)) * h, int(rng.integers(90, 170))))
        x += bw + float(rng.uniform(0, 0.1)) * w
    trees = [(float(rng.choice([-1, 1]) * rng.uniform(1.6, 2.6)), float(rng.uniform(1.2, 5.0))) for _ in range(int(rng.integers(0, 4)))]
    scene = _Scene(
        condition=condition,
        horizon=float(rng.uniform(0.36, 0.44)),
        vp_offset=float(rng.uniform(-0.08, 0.08)),
        pan=float(rng.choice([-1, 1]) * rng.uniform(0.3, 1.0)),
        sky=(int(rng.integers(110, 170)), int(rng.integers(160, 205)), int(rng.integers(215, 250))),
        ground=(int(rng.integers(60, 120)), int(rng.integers(100, 150)), int(rng.integers(50, 90))),
        road=(int(rng.integers(70, 110)),) * 3,
        fog_density=float(rng.uniform(0.55, 0.8)),
        buildings=buildings,
        trees=trees,
    )
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    cats = list(CLASS_WEIGHTS)
    weights = np.array([CLASS_WEIGHTS[c] for c in cats])
    for k in range(n):
        cat = cats[int(rng.choice(len(cats), p=weights / weights.sum()))]
        scene.objects.append(_spawn_object(rng, cat, k))
    return scene


# --------------------------------------------------------------------------- rendering


def _shade(colour, f: float) -> tuple:
    return tuple(int(min(255, max(0, c * f))) for c in colour)


def _draw_car(d: ImageDraw.ImageDraw, x0, y0, x1, y1, o: _Obj, lights: list) -> None:
    w, h = x1 - x0, y1 - y0
    body = o.colours[0]
    d.rectangle([x0 + 0.16 * w, y0, x1 - 0.16 * w, y0 + 0.45 * h], fill=body)  # cabin
    d.rectangle([x0 + 0.22 * w, y0 + 0.1 * h, x1 - 0.22 * w, y0 + 0.4 * h], fill=_shade(body, 0.3))  # window
    d.rectangle([x0, y0 + 0.4 * h, x1, y1 - 0.14 * h], fill=body)  # body
    wheel = (22, 22, 22)
    d.rectangle([x0 + 0.04 * w, y1 - 0.24 * h, x0 + 0.24 * w, y1], fill=wheel)
    d.rectangle([x1 - 0.24 * w, y1 - 0.24 * h, x1 - 0.04 * w, y1], fill=wheel)
    tl = [(x0 + 0.04 * w, y0 + 0.5 * h, x0 + 0.2 * w, y0 + 0.62 * h), (x1 - 0.2 * w, y0 + 0.5 * h, x1 - 0.04 * w, y0 + 0.62 * h)]
    for r in tl:
        d.rectangle(r, fill=(210, 25, 25))
    d.rectangle([x0 + 0.35 * w, y0 + 0.62 * h, x1 - 0.35 * w, y0 + 0.72 * h], fill=(225, 225, 215))  # plate
    lights.extend(tl)


def _draw_truck(d: ImageDraw.ImageDraw, x0, y0, x1, y1, o: _Obj, lights: list) -> None:
    w, h = x1 - x0, y1 - y0
    trailer, cab = o.colours
    facing_right = o.variant != 0
    tx0, tx1 = (x0, x0 + 0.7 * w) if facing_right else (x0 + 0.3 * w, x1)
    cx0, cx1 = (x0 + 0.72 * w, x1) if facing_right else (x0, x0 + 0.28 * w)
    d.rectangle([tx0, y0, tx1, y1 - 0.15 * h], fill=trailer)
    d.line([tx0, y0 + 0.5 * h, tx1, y0 + 0.5 * h], fill=_shade(trailer, 0.7), width=max(1, int(0.04 * h)))
    d.rectangle([cx0, y0 + 0.3 * h, cx1, y1 - 0.15 * h], fill=cab)
    wx0, wx1 = (cx0 + 0.25 * (cx1 - cx0), cx1) if facing_right else (cx0, cx1 - 0.25 * (cx1 - cx0))
    d.rectangle([wx0, y0 + 0.36 * h, wx1, y0 + 0.55 * h], fill=(60, 80, 110))
    d.rectangle([x0, y1 - 0.2 * h, x1, y1 - 0.14 * h], fill=(50, 50, 50))  # chassis
    r = 0.13 * h
    for fx in (0.12, 0.3, 0.85) if facing_right else (0.15, 0.7, 0.88):
        cx = x0 + fx * w
        d.ellipse([cx - r, y1 - 2 * r, cx + r, y1], fill=(20, 20, 20))
    lights.append((tx0 + 0.01 * w, y1 - 0.35 * h, tx0 + 0.05 * w, y1 - 0.25 * h) if facing_right else (tx1 - 0.05 * w, y1 - 0.35 * h, tx1 - 0.01 * w, y1 - 0.25 * h))


def _draw_person(d: ImageDraw.ImageDraw, x0, y0, x1, y1, shirt, skin, pants) -> None:
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    hr = 0.09 * h
    d.ellipse([cx - hr, y0, cx + hr, y0 + 2 * hr], fill=skin)
    d.rectangle([x0 + 0.15 * w, y0 + 0.2 * h, x1 - 0.15 * w, y0 + 0.55 * h], fill=shirt)  # torso
    d.rectangle([x0, y0 + 0.22 * h, x0 + 0.15 * w, y0 + 0.5 * h], fill=shirt)  # arms
    d.rectangle([x1 - 0.15 * w, y0 + 0.22 * h, x1, y0 + 0.5 * h], fill=shirt)
    d.rectangle([x0 + 0.18 * w, y0 + 0.55 * h, cx - 0.04 * w, y1], fill=pants)  # legs
    d.rectangle([cx + 0.04 * w, y0 + 0.55 * h, x1 - 0.18 * w, y1], fill=pants)


def _draw_cyclist(d: ImageDraw.ImageDraw, x0, y0, x1, y1, o: _Obj) -> None:
    w, h = x1 - x0, y1 - y0
    shirt, skin, pants = o.colours
    r = 0.25 * w
    lw = max(1, int(round(0.05 * w)))
    frame = (40, 40, 40) if o.variant == 0 else (180, 30, 30)
    back, front = (x0 + r, y1 - r), (x1 - r, y1 - r)
    for cx, cy in (back, front):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(15, 15, 15), width=lw + 1)
    seat = (x0 + 0.4 * w, y0 + 0.5 * h)
    bars = (x1 - 0.3 * w, y0 + 0.45 * h)
    d.line([back, seat, front, bars], fill=frame, width=lw)
    d.line([back, (x0 + 0.5 * w, y1 - r), front], fill=frame, width=lw)
    hr = 0.08 * h
    hx = x0 + 0.52 * w
    d.ellipse([hx - hr, y0, hx + hr, y0 + 2 * hr], fill=skin)
    d.polygon([(hx - 0.12 * w, y0 + 0.15 * h), (hx + 0.1 * w, y0 + 0.15 * h), (seat[0] + 0.05 * w, seat[1]), (seat[0] - 0.08 * w, seat[1])], fill=shirt)
    d.line([(hx + 0.05 * w, y0 + 0.22 * h), bars], fill=shirt, width=lw + 1)  # arm
    d.line([seat, (x0 + 0.5 * w, y1 - r)], fill=pants, width=lw + 1)  # leg


def _draw_sign(d: ImageDraw.ImageDraw, x0, y0, x1, y1, bottom: float, o: _Obj) -> None:
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    d.rectangle([cx - max(0.6, 0.06 * w), y1, cx + max(0.6, 0.06 * w), bottom], fill=(130, 130, 130))  # pole
    if o.variant == 0:  # prohibition: red ring
        d.ellipse([x0, y0, x1, y1], fill=(210, 20, 20))
        d.ellipse([x0 + 0.2 * w, y0 + 0.2 * h, x1 - 0.2 * w, y1 - 0.2 * h], fill=(245, 245, 245))
    elif o.variant == 1:  # warning: triangle
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=(210, 20, 20))
        d.polygon([(cx, y0 + 0.35 * h), (x1 - 0.22 * w, y1 - 0.12 * h), (x0 + 0.22 * w, y1 - 0.12 * h)], fill=(250, 220, 40))
    else:  # information: blue square
        d.rectangle([x0, y0, x1, y1], fill=(20, 70, 200))
        d.rectangle([x0 + 0.3 * w, y0 + 0.2 * h, x1 - 0.3 * w, y1 - 0.2 * h], fill=(245, 245, 245))


class _Camera:
    """Ground-plane perspective of one frame: scale s = 1/depth; s = 1 at the image bottom."""

    def __init__(self, config: SynthConfig, scene: _Scene, t: int):
        self.h, self.w = config.height, config.width
        self.u = config.height / 128.0
        self.y_h = scene.horizon * self.h
        self.pan_px = t * config.ego_speed * scene.pan
        self.vp_x = self.w / 2 + scene.vp_offset * self.w + self.pan_px

    def ground(self, lateral: float, scale: float) -> tuple[float, float]:
        """Screen (x, y) of a ground point at ``lateral`` (road half-widths) and ``scale``."""
        return self.vp_x + lateral * scale * self.w * 0.55, self.y_h + scale * (self.h - self.y_h)


def _background(d: ImageDraw.ImageDraw, cam: _Camera, scene: _Scene, forward: float) -> None:
    h, w, y_h = cam.h, cam.w, cam.y_h
    d.rectangle([0, 0, w, y_h], fill=scene.sky)
    d.rectangle([0, y_h * 0.55, w, y_h], fill=_shade(scene.sky, 1.08))
    parallax = cam.pan_px * 0.3
    for bx, bw, bh, grey in scene.buildings:
        x = bx + parallax
        if x + bw >= 0 and x <= w:
            d.rectangle([x, y_h - bh * cam.u, x + bw, y_h], fill=(grey, grey, grey + 10))
    d.rectangle([0, y_h, w, h], fill=scene.ground)
    big = 4.0  # scale beyond the bottom edge so the road polygon covers it
    left, right = cam.ground(-1.1, big), cam.ground(1.1, big)
    d.polygon([(cam.vp_x, y_h), right, left], fill=scene.road)
    for side in (-1.0, 1.0):  # solid edge lines
        a, b = cam.ground(side * 0.98, big), cam.ground(side * 1.02, big)
        d.polygon([(cam.vp_x, y_h), a, b], fill=(225, 225, 225))
    period, length = 1.2, 0.5  # dashes in depth units
    phase = forward % period
    for k in range(12):
        d0 = 1.0 + k * period - phase
        d1 = d0 + length
        if d0 < 0.6:
            continue
        s0, s1 = 1.0 / d0, 1.0 / d1
        for lane in (-0.33, 0.33):
            quad = [cam.ground(lane - 0.015, s0), cam.ground(lane + 0.015, s0), cam.ground(lane + 0.015, s1), cam.ground(lane - 0.015, s1)]
            d.polygon(quad, fill=(235, 235, 225))
    for lateral, depth in scene.trees:  # unlabelled clutter
        depth = depth - forward
        if depth < 0.6:
            continue
        s = 1.0 / depth
        x, y = cam.ground(lateral, s)
        r = 18 * s * cam.u
        d.rectangle([x - 0.15 * r, y - 2.2 * r, x + 0.15 * r, y], fill=(90, 60, 30))
        d.ellipse([x - r, y - 3.6 * r, x + r, y - 1.6 * r], fill=(30, 110, 40))


def _object_box(cam: _Camera, o: _Obj) -> tuple[float, float, float, float, float]:
    """Unclipped box of an object (x1, y1, x2, y2) and its ground-contact y."""
    bw, bh, _, _ = _GEOMETRY[o.category]
    s = 1.0 / o.depth
    x, y = cam.ground(o.lateral, s)
    w, h = bw * s * cam.u, bh * s * cam.u
    if o.category == 5:  # the box is the sign plate, on a pole of 1.7 plate heights
        return x - w / 2, y - 2.7 * h, x + w / 2, y - 1.7 * h, y
    return x - w / 2, y - h, x + w / 2, y, y


def _condition(arr: np.ndarray, scene: _Scene, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """Apply the scene's lighting/weather; sensor noise only where it is realistic (night, fog).

    Day and dusk frames stay noise-free on purpose: noise makes PNG encoding several times
    slower, and the hard cases are what need it.
    """
    if scene.condition == "day":
        return arr
    img = arr.astype(np.float32)
    if scene.condition == "dusk":
        img *= np.array([0.85, 0.65, 0.55], np.float32)
        img = (img - 60.0) * 0.85 + 60.0
    elif scene.condition == "night":
        img *= np.array([0.22, 0.22, 0.30], np.float32)
    else:  # fog: blend towards grey, thicker towards the horizon (far objects are hardest)
        rows = np.arange(cam.h, dtype=np.float32)
        dist = np.clip(1.0 - (rows - cam.y_h) / (cam.h - cam.y_h), 0.0, 1.0) ** 0.6
        alpha = (scene.fog_density * np.where(rows < cam.y_h, 1.0, dist))[:, None, None]
        img = img * (1.0 - alpha) + np.float32(200.0) * alpha
    if scene.condition in ("night", "fog"):
        amp = 5 if scene.condition == "night" else 3
        img += rng.integers(-amp, amp + 1, size=img.shape[:2], dtype=np.int16)[:, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_frame(config: SynthConfig, scene: _Scene, sequence: int, t: int) -> Frame:
    """Render frame ``t`` of ``scene`` (pure: the scene is not modified)."""
    cam = _Camera(config, scene, t)
    forward = t * config.ego_speed * 0.02  # ego forward motion in depth units
    img = Image.new("RGB", (config.width, config.height))
    d = ImageDraw.Draw(img)
    _background(d, cam, scene, forward)

    placed = []  # (depth, obj, box, bottom) of objects in view
    for o in scene.objects:
        depth = o.depth + t * o.d_depth - (forward if o.static else 0.0)
        _, _, s_min, _ = _GEOMETRY[o.category]
        if depth < 1.0 or 1.0 / depth < 0.85 * s_min:
            continue  # passed under the camera or vanished into the distance
        moved = _Obj(**{**o.__dict__, "depth": depth, "lateral": o.lateral + t * o.d_lateral})
        x1, y1, x2, y2, bottom = _object_box(cam, moved)
        if x2 <= 0 or x1 >= cam.w or y2 <= 0 or y1 >= cam.h:
            continue
        placed.append((depth, moved, (x1, y1, x2, y2), bottom))
    placed.sort(key=lambda p: -p[0])  # far to near

    lights: list = []
    for _, o, (x1, y1, x2, y2), bottom in placed:
        if o.category == 1:
            _draw_car(d, x1, y1, x2, y2, o, lights)
        elif o.category == 4:
            _draw_truck(d, x1, y1, x2, y2, o, lights)
        elif o.category == 2:
            _draw_person(d, x1, y1, x2, y2, *o.colours)
        elif o.category == 3:
            _draw_cyclist(d, x1, y1, x2, y2, o)
        else:
            _draw_sign(d, x1, y1, x2, y2, bottom, o)

    rng = np.random.default_rng([config.seed, sequence, t, 2])
    arr = _condition(np.asarray(img), scene, cam, rng)
    if scene.condition == "night" and lights:
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        for r in lights:
            d.rectangle(r, fill=(255, 60, 50))
        arr = np.asarray(img)

    boxes, cats, tracks, occluded, truncated = _visible_boxes(cam, placed, config.max_occlusion)
    return Frame(arr, boxes, cats, tracks, scene.condition, occluded, truncated)


def _visible_boxes(cam: _Camera, placed: list, max_occlusion: float):
    """Clip boxes to the image; drop those mostly hidden (nearer objects) or mostly outside."""
    covered = np.zeros((cam.h, cam.w), bool)
    min_side = 0.6 * _MIN_SIDE * cam.u
    keep, occluded, truncated = [], 0, 0
    for _, o, (x1, y1, x2, y2), _ in reversed(placed):  # near to far
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(cam.w)), min(y2, float(cam.h))
        area = (x2 - x1) * (y2 - y1)
        inside = (cx2 - cx1) * (cy2 - cy1)
        ix1, iy1, ix2, iy2 = (int(math.floor(cx1)), int(math.floor(cy1)), int(math.ceil(cx2)), int(math.ceil(cy2)))
        region = covered[iy1:iy2, ix1:ix2]
        hidden = float(region.mean()) if region.size else 1.0
        region[...] = True
        if inside < 0.5 * area or min(cx2 - cx1, cy2 - cy1) < min_side:
            truncated += 1
            continue
        if hidden > max_occlusion:
            occluded += 1
            continue
        keep.append((o.category, o.track, (cx1, cy1, cx2, cy2)))
    keep.reverse()
    boxes = np.array([k[2] for k in keep], np.float32).reshape(-1, 4)
    return boxes, np.array([k[0] for k in keep], np.int32), [k[1] for k in keep], occluded, truncated


def render_sequence(config: SynthConfig, sequence: int) -> list[Frame]:
    """All frames of sequence number ``sequence`` (depends only on the seed and the index)."""
    scene = _make_scene(config, sequence)
    return [render_frame(config, scene, sequence, t) for t in range(config.frames)]


def sequence_splits(config: SynthConfig) -> list[str]:
    """Split of each sequence: a seeded permutation, so no sequence spans two splits."""
    n_val, n_test = split_counts(config.sequences, config.val_fraction, config.test_fraction)
    order = np.random.default_rng([config.seed, 7]).permutation(config.sequences)
    splits = ["train"] * config.sequences
    for rank, seq in enumerate(order):
        if rank < n_test:
            splits[int(seq)] = "test"
        elif rank < n_test + n_val:
            splits[int(seq)] = "val"
    return splits


def image_id(sequence: int, frame: int) -> str:
    return f"s{sequence:05d}_f{frame:04d}"


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


# --------------------------------------------------------------------------- writing


def generate_synthdrive(out_uri: str, config: SynthConfig | None = None, **overrides) -> dict:
    """Render a SynthDrive dataset and commit it at ``out_uri`` (local path or ``s3://``).

    Settings come from ``config`` and/or keyword overrides of :class:`SynthConfig` fields
    (``sequences``, ``frames``, ``seed``, ``height``, ``width``, ``ego_speed``, ...). Returns a
    summary (counts per split, class and condition; dropped boxes) that is also stored in
    ``dataset.json``. Raises :class:`~activedet.errors.ConfigError` on invalid settings.
    """
    base = config.model_dump() if config is not None else {}
    config = load_config(SynthConfig, {**base, **overrides}, where="synth")
    splits = sequence_splits(config)
    images: dict[str, list] = {k: [] for k in ("image_id", "uri", "width", "height", "sequence_id", "frame_index", "timestamp", "split")}
    box_ids, box_xyxy, box_cats, box_tracks = [], [], [], []
    conditions: Counter = Counter()
    image_conditions: list[str] = []
    occluded = truncated = 0
    total = config.sequences * config.frames
    # S3 round trips dominate there: upload images concurrently (bounded queue, bounded memory)
    pool = ThreadPoolExecutor(max_workers=8) if store.is_s3(out_uri) else None
    pending: deque = deque()
    try:
        with store.OutputWriter(out_uri) as out, Progress(total, "synth", unit="img") as bar:
            for seq in range(config.sequences):
                seq_id = f"s{seq:05d}"
                for t, frame in enumerate(render_sequence(config, seq)):
                    iid = image_id(seq, t)
                    rel = f"images/{iid}.png"
                    png = encode_png(frame.image, config.png_compress_level)
                    if pool is None:
                        out.write_bytes(rel, png)
                    else:
                        pending.append(pool.submit(out.write_bytes, rel, png))
                        while len(pending) > 64:
                            pending.popleft().result()
                    for key, value in (
                        ("image_id", iid), ("uri", rel), ("width", config.width), ("height", config.height),
                        ("sequence_id", seq_id), ("frame_index", t), ("timestamp", t / FPS), ("split", splits[seq]),
                    ):
                        images[key].append(value)
                    box_ids += [iid] * len(frame.boxes)
                    box_xyxy.append(frame.boxes)
                    box_cats.append(frame.categories)
                    box_tracks += [f"{seq_id}_t{k:02d}" for k in frame.track_ids]
                    conditions[frame.condition] += 1
                    image_conditions.append(frame.condition)
                    occluded += frame.occluded_dropped
                    truncated += frame.truncated_dropped
                    bar.update()
            while pending:
                pending.popleft().result()
            images_table = pa.Table.from_pydict(images, schema=schema.IMAGES)
            boxes = schema.boxes_from_arrays(
                box_ids,
                np.concatenate(box_xyxy) if box_xyxy else np.zeros((0, 4), np.float32),
                np.concatenate(box_cats) if box_cats else np.zeros(0, np.int32),
                source="gt",
                extra={"track_id": box_tracks},
            )
            categories = pa.table(
                {"id": pa.array(list(CATEGORIES), pa.int32()), "name": pa.array(list(CATEGORIES.values()), pa.string())},
                schema=schema.CATEGORIES,
            )
            cat_counts = Counter(int(c) for c in boxes.column("category_id").to_pylist())
            summary = {
                "generator": "synthdrive",
                "config": config.model_dump(),
                "images_per_split": dict(sorted(Counter(images["split"]).items())),
                "sequences_per_split": dict(sorted(Counter(splits).items())),
                "boxes_per_category": {CATEGORIES[c]: cat_counts.get(c, 0) for c in CATEGORIES},
                "images_per_condition": {c: conditions.get(c, 0) for c in CONDITIONS},
                "occluded_dropped": occluded,
                "truncated_dropped": truncated,
            }
            write_dataset_tables(out, images_table, boxes, categories, summary)
            out.write_table(
                "conditions.parquet",
                pa.table({"image_id": pa.array(images["image_id"], pa.string()), "condition": pa.array(image_conditions, pa.string())}),
            )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary.update(num_images=images_table.num_rows, num_boxes=boxes.num_rows, uri=str(out_uri))
    log.info("SynthDrive: %d images, %d boxes at %s", images_table.num_rows, boxes.num_rows, out_uri)
    return summary

