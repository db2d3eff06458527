"""Renderer of the synthetic SSv2 videos (pure numpy): textured scenes in which the named action happens.

A `VideoSpec` describes a video; the scene is drawn from `spec.seed` and the motion family places
every object at each progress value in [0, 1] (`frame_progress`: idle, linear, idle).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields, replace
from typing import Callable, Optional

import numpy as np

HEIGHT = 240
FPS = 12

# Placeholders fillers whose words hint at the object's shape (first match wins).
_SHAPE_HINTS = (
    ("ball", "circle"), ("orange", "circle"), ("apple", "circle"), ("coin", "circle"),
    ("egg", "ellipse"), ("can", "rounded"), ("bottle", "capsule_v"), ("pen", "capsule"),
    ("marker", "capsule"), ("spoon", "capsule"), ("remote", "rounded"), ("phone", "rounded"),
    ("wallet", "rounded"), ("book", "rect"), ("box", "rect"), ("cup", "rect"), ("mug", "rect"),
    ("glass", "rect"), ("keys", "triangle"), ("paper", "flat"), ("tissue", "flat"),
    ("taschentücher", "flat"), ("feather", "flat"), ("leaf", "flat"),
)
_SHAPES = ("circle", "ellipse", "rect", "rounded", "triangle", "capsule", "capsule_v")
_TEXTURES = ("solid", "stripes", "checker", "dots", "gradient")
_SKIN = ((0.94, 0.78, 0.66), (0.87, 0.67, 0.52), (0.72, 0.52, 0.38), (0.55, 0.38, 0.26),
         (0.40, 0.27, 0.19))


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to re-render one synthetic video (and its annotation entry)."""

    id: str
    split: str                          # "train" | "validation" | "test"
    template_index: int                 # SSv2 class index 0..173
    label_key: str                      # "Pushing something from left to right"
    label: str                          # filled, lowercased template
    template: str                       # "Pushing [something] from left to right"
    placeholders: tuple[str, ...]
    width: int                          # 320..427, height is always 240
    num_frames: int
    seed: int                           # appearance seed: background, objects, hand
    motion: str                         # motion family, a key of MOTIONS
    start_idle: int                     # frames before the action starts (progress 0)
    end_idle: int                       # frames after it ends (progress 1)
    params: tuple[tuple[str, float], ...] = ()   # motion parameters (name, value)
    height: int = HEIGHT
    fps: int = FPS
    texture: float = 1.0                # texture contrast of background and objects (0 = flat colours)
    object_scale: float = 1.0           # size of objects and hand

    @property
    def params_dict(self) -> dict[str, float]:
        return dict(self.params)

    def param(self, name: str) -> float:
        return self.params_dict[name]

    def to_json(self) -> dict:
        """JSON-ready dict (tuples become lists), keys in the manifest's order."""
        out = {k: getattr(self, k) for k in _JSON_ORDER}
        return {**out, "placeholders": list(self.placeholders), "params": [[k, v] for k, v in self.params]}

    @classmethod
    def from_json(cls, d: dict, where: str = "manifest") -> "VideoSpec":
        """Inverse of `to_json`; a missing or mistyped field is a ValueError naming `where`."""
        convert = {"str": str, "int": int, "float": float}
        try:
            kw = {f.name: convert[f.type](d[f.name]) for f in fields(cls)
                  if f.type in convert and (f.name in d or f.default is MISSING)}
            return cls(**kw, placeholders=tuple(str(x) for x in d["placeholders"]),
                       params=tuple((str(k), float(v)) for k, v in d["params"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad video spec {d!r:.200}: {e!r}") from e


_JSON_ORDER = ("id", "split", "template_index", "label_key", "label", "template", "placeholders", "width",
               "height", "fps", "num_frames", "seed", "motion", "start_idle", "end_idle", "params", "texture",
               "object_scale")


def frame_progress(spec: VideoSpec) -> np.ndarray:
    """(T,) float64 ground-truth progress of each frame: 0 while idle, linear, then 1."""
    T, s, e = spec.num_frames, spec.start_idle, spec.end_idle
    assert T - s - e >= 2, f"video {spec.id}: {T} frames leave no room for the action"
    i = np.arange(T, dtype=np.float64)
    return np.clip((i - s) / (T - 1 - s - e), 0.0, 1.0)


@dataclass(frozen=True)
class Sprite:
    """Appearance of one drawable: a shape of w x h pixels (at scale 1) with a texture."""

    shape: str
    w: float
    h: float
    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    texture: str = "solid"
    period: float = 12.0                # texture period in pixels
    tex_angle: float = 0.0
    shade: float = 0.25                 # strength of the top-left lighting
    soft: float = 1.0                   # edge softness in pixels (anti-aliasing / blur)


@dataclass(frozen=True)
class State:
    """Pose of a drawable in one frame: centre (x, y) in pixels, scale, angle (rad), opacity."""

    x: float
    y: float
    scale: float = 1.0
    angle: float = 0.0
    alpha: float = 1.0
    sy: float = 1.0                     # extra vertical squash


Item = tuple[Sprite, State]


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Signed distance (px, negative inside) of a shape with half-sizes a (u) and b (v)."""
    if shape == "circle":
        return np.sqrt(u * u + v * v) - min(a, b)
    if shape in ("ellipse", "flat"):
        k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        return (k - 1.0) * min(a, b)
    if shape in ("rect", "rounded"):
        r = 0.3 * min(a, b) if shape == "rounded" else 0.0
        qx, qy = np.abs(u) - (a - r), np.abs(v) - (b - r)
        out = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return out + np.minimum(np.maximum(qx, qy), 0) - r
    if shape in ("capsule", "capsule_v"):
        if a >= b:
            return np.sqrt(np.maximum(np.abs(u) - (a - b), 0) ** 2 + v * v) - b
        return np.sqrt(np.maximum(np.abs(v) - (b - a), 0) ** 2 + u * u) - a
    if shape == "triangle":                       # apex up, base down
        n = math.hypot(2 * b, a)
        side = (np.abs(u) * 2 * b - (v + b) * a) / n
        return np.maximum(v - b, side)
    if shape in ("wedge_r", "wedge_l"):           # right triangle, high side right / left
        uu = u if shape == "wedge_r" else -u
        n = math.hypot(2 * b, 2 * a)
        hyp = (-(uu + a) * 2 * b - (v - b) * 2 * a) / n
        box = np.maximum(np.abs(u) - a, np.abs(v) - b)
        return np.maximum(box, hyp)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(sp: Sprite, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(h, w) mix factor in [0, 1] between color and color2 at object coords (u, v)."""
    if sp.texture == "solid":
        return np.zeros_like(u)
    c, s = math.cos(sp.tex_angle), math.sin(sp.tex_angle)
    r = (u * c + v * s) * (2 * math.pi / sp.period)
    if sp.texture == "stripes":
        return 0.5 + 0.5 * np.sin(r)
    q = (-u * s + v * c) * (2 * math.pi / sp.period)
    if sp.texture == "checker":
        return 0.5 + 0.5 * np.tanh(2.5 * np.sin(r) * np.sin(q))
    if sp.texture == "dots":
        d = np.cos(r) * np.cos(q)
        return np.clip((d - 0.3) * 2.5, 0.0, 1.0)
    if sp.texture == "gradient":
        return np.clip(0.5 + u / max(sp.w, 1.0), 0.0, 1.0)
    raise ValueError(f"unknown texture {sp.texture!r}")


def draw(img: np.ndarray, sp: Sprite, st: State) -> None:
    """Alpha-blend sprite `sp` at pose `st` into `img` (H, W, 3) float32 in [0, 1], in place."""
    assert img.ndim == 3 and img.shape[2] == 3, img.shape
    H, W = img.shape[:2]
    a = 0.5 * sp.w * st.scale
    b = 0.5 * sp.h * st.scale * st.sy
    if a < 0.5 or b < 0.5 or st.alpha <= 0.0:
        return
    c, s = math.cos(st.angle), math.sin(st.angle)
    rx = abs(a * c) + abs(b * s) + 2 * sp.soft + 1          # half extents of the rotated box
    ry = abs(a * s) + abs(b * c) + 2 * sp.soft + 1
    x0, x1 = max(0, int(st.x - rx)), min(W, int(st.x + rx) + 2)
    y0, y1 = max(0, int(st.y - ry)), min(H, int(st.y + ry) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(st.y)   # (h, 1)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(st.x)   # (1, w)
    u = c * dx + s * dy                                                      # (h, w)
    v = -s * dx + c * dy
    cov = np.clip(0.5 - _sdf(sp.shape, u, v, a, b) / sp.soft, 0.0, 1.0)    # (h, w)
    rows, cols = np.flatnonzero(cov.any(1)), np.flatnonzero(cov.any(0))
    if rows.size == 0:
        return
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1        # crop to coverage
    cov, u, v = cov[r0:r1, c0:c1], u[r0:r1, c0:c1], v[r0:r1, c0:c1]
    light = (1.0 - sp.shade * (0.5 / b) * v - sp.shade * (0.3 / a) * u)[..., None]   # (h, w, 1)
    if sp.texture == "solid":
        col = light * np.asarray(sp.color, np.float32)
    else:
        t = _texture(sp, u / st.scale, v / (st.scale * st.sy))[..., None]           # (h, w, 1)
        c1_, c2_ = np.asarray(sp.color, np.float32), np.asarray(sp.color2, np.float32)
        col = (c1_ + t * (c2_ - c1_)) * light
    np.clip(col, 0.0, 1.0, out=col)
    region = img[y0 + r0:y0 + r1, x0 + c0:x0 + c1]
    if st.alpha < 1.0:
        cov = cov * st.alpha
    region += cov[..., None] * (col - region)


def _upsample(grid: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear upsampling of (h, w, C) to (H, W, C)."""
    h, w = grid.shape[:2]
    ys = np.linspace(0, h - 1, H)
    xs = np.linspace(0, w - 1, W)
    y0 = np.minimum(ys.astype(int), h - 2)
    x0 = np.minimum(xs.astype(int), w - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _muted(rng: np.random.Generator) -> np.ndarray:
    return np.array(_hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.8)))


def _pattern(rng: np.random.Generator, H: int, W: int, contrast: float = 1.0) -> np.ndarray:
    """(H, W, 3) float32 muted texture (noise, wood grain, tiles or gradient) scaled by `contrast`."""
    base, other = _muted(rng), _muted(rng)
    cell = rng.uniform(10, 40)
    noise = _upsample(rng.random((int(H / cell) + 2, int(W / cell) + 2, 1)), H, W)  # (H, W, 1)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    if kind == 0:                                     # blotchy noise
        t = noise
    elif kind == 1:                                   # wood grain
        period = rng.uniform(8, 20)
        t = (0.5 + 0.5 * np.sin((yy[..., None] + 25 * noise) * 2 * np.pi / period)) * 0.6
    elif kind == 2:                                   # tiles with soft grout
        size = rng.uniform(35, 70)
        gx = np.abs(((xx + rng.uniform(0, size)) % size) - size / 2) / (size / 2)
        gy = np.abs(((yy + rng.uniform(0, size)) % size) - size / 2) / (size / 2)
        t = 0.15 * noise + np.clip((np.maximum(gx, gy) - 0.88) * 6, 0, 1)[..., None]
    else:                                             # gradient
        t = 0.6 * (xx / W)[..., None] * rng.uniform(0.5, 1) + 0.4 * noise
    t = t * contrast
    img = base * (1 - t) + other * t
    grain = _upsample(rng.normal(0, 0.015, (H // 4 + 2, W // 4 + 2, 1)), H, W) * contrast
    return (img + grain).astype(np.float32)


def _object_sprite(rng: np.random.Generator, shape: str, size: float) -> Sprite:
    """A saturated, textured object of roughly `size` pixels."""
    if shape == "circle":
        w = h = size
    elif shape == "flat":
        w, h = size * rng.uniform(1.3, 1.7), size * rng.uniform(0.22, 0.32)
        shape = "rect" if rng.random() < 0.5 else "ellipse"
    elif shape == "capsule":
        w, h = size * rng.uniform(1.5, 2.0), size * rng.uniform(0.35, 0.5)
    elif shape == "capsule_v":
        w, h = size * rng.uniform(0.45, 0.6), size * rng.uniform(1.3, 1.7)
    else:
        w, h = size * rng.uniform(0.8, 1.4), size * rng.uniform(0.7, 1.2)
    color = _hsv(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.65, 1.0))
    dark = tuple(c * rng.uniform(0.3, 0.6) for c in color)
    light = tuple(min(1.0, c * 0.4 + 0.6) for c in color)
    return Sprite(shape=shape, w=w, h=h, color=color,
                  color2=dark if rng.random() < 0.6 else light,
                  texture=_TEXTURES[rng.integers(len(_TEXTURES))],
                  period=rng.uniform(7, 16), tex_angle=rng.uniform(0, np.pi),
                  shade=rng.uniform(0.15, 0.35))


def shape_hint(filler: str) -> Optional[str]:
    """Shape suggested by a placeholder filler ("a tennis ball" -> "circle"), or None."""
    low = filler.lower()
    for word, shape in _SHAPE_HINTS:
        if word in low:
            return shape
    return None


@dataclass
class Scene:
    """Per-video layout and appearance, all drawn from the spec's seed."""

    W: int
    H: int
    surface_y: float                    # table edge line
    ground: float                       # y of the bottom of objects standing on the table
    bg: np.ndarray                      # (H, W + 2 * pad, 3) float32 (empty if not rendered)
    pad: int                            # extra background width for camera pans
    A: Sprite                           # main object (first placeholder)
    B: Sprite                           # second object (second placeholder / cover / target)
    C: Sprite                           # third object
    palm: Sprite
    arm: Sprite
    rng_values: tuple[float, ...]       # per-scene random numbers for static layout


_FORCED_SHAPES = {"roll_back": ("circle", None), "put_flat": ("circle", None),
                  "feather": ("flat", None), "plug": ("capsule", "rect"),
                  "drop_into": (None, "container"), "cover": (None, "cover"),
                  "edge_fall": ("rect", "rect")}


def render_background(spec: VideoSpec, surface_y: float, pad: int) -> np.ndarray:
    """(H, W + 2 pad, 3) float32 wall above `surface_y`, table below, from its own seed stream."""
    rng = np.random.default_rng([spec.seed, 1])
    H, W = spec.height, spec.width
    wall = _pattern(rng, H, W + 2 * pad, spec.texture)
    table = _pattern(rng, H, W + 2 * pad, spec.texture)
    yy = np.arange(H, dtype=np.float32)[:, None, None]
    m = np.clip(yy - surface_y + 0.5, 0.0, 1.0)                        # (H, 1, 1)
    bg = wall * (1 - m) + table * m
    edge = np.exp(-((yy - surface_y - 1.5) ** 2) / 2.0) * 0.35        # dark table edge line
    return np.clip(bg * (1 - edge), 0.0, 1.0).astype(np.float32)


def build_scene(spec: VideoSpec, background: bool = True) -> Scene:
    """Background, objects and hand of a video, deterministic in `spec.seed` (background=False:
    `bg` is empty, skipping the slowest part)."""
    rng = np.random.default_rng([spec.seed, 2])
    W, H, pad = spec.width, spec.height, 80
    surface_y = float(rng.uniform(0.48, 0.66) * H)
    ground = surface_y + float(rng.uniform(16, 36))
    bg = render_background(spec, surface_y, pad) if background else np.zeros((0, 0, 3), np.float32)

    forced_a, forced_b = _FORCED_SHAPES.get(spec.motion, (None, None))
    names = list(spec.placeholders) + ["", "", ""]
    shapes = []
    for name, forced in ((names[0], forced_a), (names[1], forced_b), (names[2], None)):
        hint = forced or shape_hint(name) or _SHAPES[rng.integers(len(_SHAPES))]
        shapes.append(hint)
    s = spec.object_scale
    size_a = float(rng.uniform(34, 56)) * s
    A = _object_sprite(rng, shapes[0], size_a)
    if spec.motion == "feather":
        A = replace(A, color=_hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.85, 1.0)))
    if A.shape == "circle" and A.texture == "solid":
        A = replace(A, texture="stripes")            # rolling must be visible
    if shapes[1] == "container":
        B = _object_sprite(rng, "rect", size_a)
        big = max(A.w, A.h)                          # the container swallows A whole
        B = replace(B, w=big * rng.uniform(1.5, 1.8), h=big * rng.uniform(1.3, 1.6))
    elif shapes[1] == "cover":
        B = _object_sprite(rng, "rounded", size_a)
        big = max(A.w, A.h)                          # the cover hides A whole
        B = replace(B, w=big * rng.uniform(1.5, 1.9), h=big * rng.uniform(1.35, 1.7))
    else:
        B = _object_sprite(rng, shapes[1], float(rng.uniform(40, 64)) * s)
    C = _object_sprite(rng, shapes[2], float(rng.uniform(28, 48)) * s)
    skin = _SKIN[rng.integers(len(_SKIN))]
    k = float(rng.uniform(0.9, 1.15)) * s
    palm = Sprite("ellipse", 30 * k, 22 * k, skin, skin, "solid", shade=0.2)
    sleeve = _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.8))
    arm = Sprite("capsule", 40 * s, 20 * k, sleeve, tuple(c * 0.7 for c in sleeve),
                 "stripes" if rng.random() < 0.3 else "solid", period=10, shade=0.2)
    if spec.texture != 1.0:                           # objects' patterns at the same contrast
        A, B, C, arm = (replace(sp, color2=tuple(c + (c2 - c) * spec.texture for c, c2 in zip(sp.color, sp.color2)))
                        for sp in (A, B, C, arm))
    return Scene(W, H, surface_y, ground, bg, pad, A, B, C, palm, arm,
                 tuple(float(x) for x in rng.random(8)))


def _ease(p: float, w: float) -> float:
    """Monotone map [0,1]->[0,1]: mix of linear and smoothstep with weight w."""
    p = min(max(p, 0.0), 1.0)
    return (1 - w) * p + w * p * p * (3 - 2 * p)


def _hand(sc: Scene, x: float, y: float, ax: float, ay: float, scale: float = 1.0) -> list[Item]:
    """Arm from anchor (ax, ay) (usually off-screen) to a palm centred at (x, y)."""
    dx, dy = x - ax, y - ay
    length = math.hypot(dx, dy)
    ang = math.atan2(dy, dx)
    arm = replace(sc.arm, w=length / scale + sc.arm.h)
    return [(arm, State((x + ax) / 2, (y + ay) / 2, scale, ang)),
            (sc.palm, State(x, y, scale, ang))]


def _shadow(sc: Scene, x: float, w: float, height: float, y: Optional[float] = None) -> Item:
    """Soft shadow on the table under an object `height` px above it."""
    k = min(max(height, 0.0) / 150.0, 1.0)
    sp = Sprite("ellipse", w * (1.1 - 0.4 * k), 9.0, (0.0, 0.0, 0.0), soft=4.0, shade=0.0)
    return sp, State(x, (sc.ground if y is None else y) + 1.0, alpha=0.35 * (1 - 0.6 * k))


def _on_ground(sc: Scene, sp: Sprite, scale: float = 1.0, dy: float = 0.0) -> float:
    return sc.ground + dy - sp.h * scale / 2


def _statics(sc: Scene, spec_n: int, ax: float) -> list[Item]:
    """Second / third objects standing still on the table next to the main one."""
    items: list[Item] = []
    r = sc.rng_values
    side = 1 if r[0] < 0.5 else -1
    for k, sp in enumerate((sc.B, sc.C)[: max(spec_n - 1, 0)]):
        bx = ax + side * (1 if k == 0 else -1) * (sc.A.w / 2 + sp.w / 2 + 20 + 30 * r[1 + k])
        bx = min(max(bx, sp.w / 2), sc.W - sp.w / 2)
        items += [_shadow(sc, bx, sp.w, 0), (sp, State(bx, _on_ground(sc, sp, dy=-6)))]
    return items


Plan = Callable[[float, dict, Scene, int], tuple[list[Item], State]]


def _plan_slide(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """Horizontal translation on the table; grip 0 = pushed from behind, 1 = pulled, 2 = carried."""
    d, dist = q["dir"], q["dist"] * sc.W
    x = sc.W / 2 + q["off"] * sc.W * 0.1 - d * dist / 2 + d * dist * _ease(p, q["ease"])
    st = State(x, _on_ground(sc, sc.A))
    items = [_shadow(sc, x, sc.A.w, 0), (sc.A, st)]
    if q["grip"] == 0:
        hx = x - d * (sc.A.w / 2 + sc.palm.w / 2 - 2)
        items += _hand(sc, hx, st.y, hx - d * 70, sc.H + 70)
    elif q["grip"] == 1:
        hx = x + d * (sc.A.w / 2 - 4)
        items += _hand(sc, hx, st.y - sc.A.h * 0.15, hx + d * 90, sc.H + 60)
    else:
        hy = st.y - sc.A.h / 2 - 4
        items += _hand(sc, x, hy, x + 50, -90)
    return items, st


def _plan_lift(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """Vertical translation of a held object; dir -1 = up, +1 = down."""
    x = q["xf"] * sc.W
    low = _on_ground(sc, sc.A)
    high = low - q["dist"] * sc.H
    f = _ease(p, q["ease"])
    y = high + (low - high) * f if q["dir"] > 0 else low + (high - low) * f
    st = State(x, y)
    side = 1 if q["side"] > 0 else -1
    hx = x + side * (sc.A.w / 2 + 4)
    hand = _hand(sc, hx, y, hx + side * 80, sc.H + 80)
    return [_shadow(sc, x, sc.A.w, low - y), (sc.A, st)] + hand, st


def _plan_depth(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """Towards (grow=1) or away from (grow=0) the camera: the object and hand scale together."""
    s0, s1 = (q["small"], q["small"] * q["ratio"])
    if q["grow"] < 0.5:
        s0, s1 = s1, s0
    s = s0 * (s1 / s0) ** _ease(p, q["ease"])
    x = q["xf"] * sc.W
    y = sc.surface_y - 10 + 35 * (s - 1)
    st = State(x, y, s)
    hy = y + sc.A.h * s / 2 + 4
    return [(sc.A, st)] + _hand(sc, x + 6 * s, hy, x + 40, sc.H + 120, s), st


def _target_xy(sc: Scene, rel: int, bx: float, side: float) -> tuple[float, float, float]:
    """Landing centre (x, y) and scale of A for a drop relation (see `_plan_drop`)."""
    A, B = sc.A, sc.B
    if rel == 1:                                            # onto
        return bx + side * B.w * 0.1, sc.ground - B.h - A.h / 2, 1.0
    if rel == 2:                                            # in front of
        return bx + side * B.w * 0.15, _on_ground(sc, A, 1.1, 16), 1.1
    if rel == 3:                                            # behind
        return bx + side * B.w * 0.15, _on_ground(sc, A, 0.85, -16), 0.85
    if rel == 4:                                            # into (container)
        return bx, sc.ground - 4 - A.h / 2, 1.0
    if rel == 5:                                            # next to
        return bx + side * (B.w / 2 + A.w / 2 + 12), _on_ground(sc, A), 1.0
    return bx, _on_ground(sc, A), 1.0                       # no second object


def _plan_drop(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """Free fall (y quadratic in time); rel 0 alone, 1 onto, 2 in front of, 3 behind, 4 into, 5 next to B."""
    rel = int(q["rel"])
    bx = q["bx"] * sc.W
    side = 1 if q["side"] > 0 else -1
    x, y1, s = _target_xy(sc, rel, bx, side)
    y0 = min(q["h0"] * sc.H, y1 - 60)
    f = min(p / q["land"], 1.0)
    y = y0 + (y1 - y0) * f * f
    st = State(x, y, s, q["tumble"] * math.sin(math.pi * f))    # tumbles, lands upright
    B = sc.B
    b_state = State(bx, _on_ground(sc, B, dy=6 if rel == 2 else 0))
    hy = y0 - sc.A.h * s / 2 - 6 - 260 * p                  # released at p=0, then withdrawn
    hand = _hand(sc, x, hy, x + 40, -120)
    a_item = [_shadow(sc, x, sc.A.w * s, y1 - y, y=y1 + sc.A.h * s / 2), (sc.A, st)]
    if rel == 0:
        return a_item + hand, st
    b_items = [_shadow(sc, bx, B.w, 0, y=b_state.y + B.h / 2), (B, b_state)]
    if rel == 3:                                            # behind: B occludes A
        return a_item + b_items + hand, st
    if rel == 4:                                            # into: opening, A, then front wall
        top = b_state.y - B.h / 2
        inner = Sprite("ellipse", B.w * 0.92, max(B.h * 0.22, 10), tuple(c * 0.3 for c in B.color),
                       shade=0.0)
        rim = replace(B, shape="ellipse", h=max(B.h * 0.22, 10) + 6, texture="solid")
        return (b_items[:1] + [(rim, State(bx, top)), (inner, State(bx, top))] + [(sc.A, st)]
                + [(B, b_state)] + hand, st)
    return b_items + a_item + hand, st


def _plan_feather(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """Slow, swaying fall of a light flat object (near-constant speed after a short start)."""
    f = min(p / q["land"], 1.0)
    x0 = q["bx"] * sc.W
    y1 = _on_ground(sc, sc.A)
    y0 = min(q["h0"] * sc.H, y1 - 60)
    phase = 2 * math.pi * q["cycles"] * f + q["phase"]
    damp = 1.0 - f ** 4
    x = x0 + q["amp"] * math.sin(phase) * damp
    y = y0 + (y1 - y0) * (0.3 * f * f + 0.7 * f)
    st = State(x, y, 1.0, q["tilt"] * math.cos(phase) * damp)
    hand = _hand(sc, x0, y0 - sc.A.h / 2 - 8 - 260 * p, x0 + 40, -120)
    return [_shadow(sc, x, sc.A.w, y1 - y), (sc.A, st)] + hand, st


def _plan_cover(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """B (cloth / bowl) is brought from one side and lowered over A; the track follows B."""
    ax = q["xf"] * sc.W
    side = 1 if q["side"] > 0 else -1
    a_state = State(ax, _on_ground(sc, sc.A))
    B = sc.B
    yf = sc.ground + 2 - B.h / 2
    xs, ys = ax + side * q["dist"] * sc.W, yf - q["lift"]
    f = _ease(min(p / q["end"], 1.0), q["ease"])
    st = State(xs + (ax - xs) * f, ys + (yf - ys) * f * f)
    r = max(p - q["end"], 0.0) / max(1 - q["end"], 1e-6)    # hand withdraws after release
    hx = st.x + side * (B.w / 2 - 4) + side * 200 * r
    hy = st.y - B.h / 4 - 40 * r
    items = [_shadow(sc, ax, sc.A.w, 0), (sc.A, a_state), _shadow(sc, st.x, B.w, yf - st.y),
             (B, st)]
    return items + _hand(sc, hx, hy, hx + side * 90, -80), st


def _plan_put(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """A is lowered by hand (decelerating) onto the table (onto=0) or onto B (onto=1)."""
    x = q["xf"] * sc.W
    B = sc.B
    onto = q["onto"] > 0.5
    y1 = sc.ground - B.h - sc.A.h / 2 if onto else _on_ground(sc, sc.A)
    y0 = y1 - q["lift"] * sc.H
    f = min(p / q["release"], 1.0)
    g = _ease(1 - (1 - f) ** 2, q["ease"])
    st = State(x, y0 + (y1 - y0) * g)
    r = max(p - q["release"], 0.0) / max(1 - q["release"], 1e-6)
    hx, hy = x + 10 + 30 * r, st.y - sc.A.h / 2 - sc.palm.h / 2 + 4 - 200 * r
    items: list[Item] = []
    if onto:
        items += [_shadow(sc, x, B.w, 0), (B, State(x, _on_ground(sc, B)))]
    else:
        items += [_shadow(sc, x, sc.A.w, y1 - st.y)]
    return items + [(sc.A, st)] + _hand(sc, hx, hy, hx + 60, -90), st


def _plan_edge_fall(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """A is put on B's edge, overhangs, tips over and falls onto the table."""
    B = sc.B
    side = 1 if q["side"] > 0 else -1
    bx = q["xf"] * sc.W
    b_state = State(bx, _on_ground(sc, B))
    ex = bx + side * (B.w / 2 + sc.A.w * 0.15)
    top = sc.ground - B.h - sc.A.h / 2
    y0 = top - q["lift"] * sc.H
    rel = q["release"]
    if p <= rel:
        f = _ease(1 - (1 - p / rel) ** 2, q["ease"])
        st = State(ex, y0 + (top - y0) * f)
        hx, hy = ex, st.y - sc.A.h / 2 - sc.palm.h / 2 + 4
    else:
        r = (p - rel) / (1 - rel)
        tip = min(r * 1.6, 1.0)
        land = sc.ground - sc.A.w / 2
        st = State(ex + side * (sc.A.h / 2 + 6) * tip, top + (land - top) * r * r,
                   angle=side * (math.pi / 2) * tip)
        hx, hy = ex - side * 20 * r, top - sc.A.h / 2 - sc.palm.h / 2 + 4 - 220 * r
    items = [_shadow(sc, bx, B.w, 0), (B, b_state), _shadow(sc, st.x, sc.A.w, sc.ground - st.y),
             (sc.A, st)]
    return items + _hand(sc, hx, hy, hx - side * 60, -90), st


def _plan_roll_back(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """A ball rolls up a ramp, decelerates, and rolls back down: s = peak * 4 p (1 - p)."""
    d = 1 if q["dir"] > 0 else -1
    length = q["len"] * sc.W
    theta = q["theta"]
    rise = min(length * math.tan(theta), sc.ground - 30)
    theta = math.atan2(rise, length)
    x_low = sc.W / 2 - d * length / 2 + q["off"] * sc.W * 0.08
    ramp_sp = Sprite("wedge_r" if d > 0 else "wedge_l", length, rise, sc.B.color, sc.B.color2,
                     sc.B.texture, sc.B.period, sc.B.tex_angle, 0.15)
    ramp = (ramp_sp, State(x_low + d * length / 2, sc.ground - rise / 2))
    r = sc.A.w / 2
    hyp = length / math.cos(theta)
    s = q["peak"] * hyp * 4 * p * (1 - p)
    px, py = x_low + d * s * math.cos(theta), sc.ground - s * math.sin(theta)
    nx, ny = -d * math.sin(theta), -math.cos(theta)
    st = State(px + r * nx, py + r * ny, angle=d * s / r)
    push = min(p / 0.15, 1.0)                               # hand pushes, then withdraws
    hx = x_low - d * (r + sc.palm.w / 2 + 10) - d * 120 * push
    hy = sc.ground - r + 90 * push
    return ([_shadow(sc, x_low + d * length / 2, length, 0), ramp, (sc.A, st)]
            + _hand(sc, hx, hy, hx - d * 80, sc.H + 70), st)


def _plan_plug(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """A plug is pushed into a socket (B), held briefly, then pulled right back out."""
    d = 1 if q["dir"] > 0 else -1
    B = replace(sc.B, w=max(sc.B.w, 46), h=max(sc.B.h, 60))
    sx = sc.W / 2 + d * q["sock"] * sc.W
    sy = sc.surface_y - q["height"] * sc.H
    face = sx - d * B.w / 2
    A = sc.A
    x_in = face + d * (A.w / 2 - 10)                        # 10 px inside the socket
    x_out = x_in - d * q["dist"] * sc.W
    p_in, p_out = q["p_in"], q["p_in"] + q["hold"]
    if p <= p_in:
        f = _ease(p / p_in, q["ease"])
    elif p <= p_out:
        f = 1.0
    else:
        f = 1.0 - _ease((p - p_out) / (1 - p_out), q["ease"])
    st = State(x_out + (x_in - x_out) * f, sy)
    hole = Sprite("rect", 6, A.h * 0.9, (0.05, 0.05, 0.05), shade=0.0)
    hx = st.x - d * (A.w / 2 + sc.palm.w / 2 - 8)
    items = [(B, State(sx, sy)), (hole, State(face + d * 5, sy)), (A, st)]
    return items + _hand(sc, hx, sy + 4, hx - d * 100, sc.H + 60), st


def _plan_throw_catch(p: float, q: dict, sc: Scene, n: int) -> tuple[list[Item], State]:
    """Tossed straight up from the hand and caught again: y = y_hand - h * 4 p (1 - p)."""
    x = q["xf"] * sc.W
    y_h = sc.ground - q["hand"] * sc.H
    height = min(q["height"] * sc.H, y_h - sc.A.h / 2 - 4)
    y = y_h - height * 4 * p * (1 - p)
    st = State(x + q["drift"] * math.sin(math.pi * p), y, angle=q["spin"] * p)
    return _hand(sc, x + 4, y_h + sc.A.h / 2 + 8, x + 60, sc.H + 90) + [(sc.A, st)], st


def _rest(sc: Scene, q: dict) -> State:
    return State(q["xf"] * sc.W, _on_ground(sc, sc.A))


def _plan_rotate(p, q, sc, n):
    x, r = q["xf"] * sc.W, 0.5 * max(sc.A.w, sc.A.h)         # clear of the table while turning
    st = State(x, sc.ground - r - 2, angle=q["turn"] * _ease(p, q["ease"]))
    return _statics(sc, n, st.x) + [_shadow(sc, st.x, sc.A.w, 0), (sc.A, st)], st


def _plan_scale(p, q, sc, n):
    s = q["factor"] ** _ease(p, q["ease"])
    x = q["xf"] * sc.W
    st = State(x, _on_ground(sc, sc.A, s), s)
    return _statics(sc, n, x) + [_shadow(sc, x, sc.A.w * s, 0), (sc.A, st)], st


def _plan_shake(p, q, sc, n):
    base = _rest(sc, q)
    y = base.y - 30 - 25 * p                                # lifted while being shaken
    st = State(base.x + q["amp"] * math.sin(2 * math.pi * q["cycles"] * p), y)
    return (_statics(sc, n, base.x) + [_shadow(sc, st.x, sc.A.w, 30), (sc.A, st)]
            + _hand(sc, st.x, y + sc.A.h / 2 + 6, st.x + 30, sc.H + 80)), st


def _plan_drift(p, q, sc, n):
    base = _rest(sc, q)
    f = _ease(p, q["ease"])
    st = State(base.x + q["dist"] * math.cos(q["dir"]) * f,
               base.y - 40 + q["dist"] * math.sin(q["dir"]) * f)
    return (_statics(sc, n, base.x) + [(sc.A, st)]
            + _hand(sc, st.x, st.y - sc.A.h / 2 - 8, st.x + 40, -80)), st


def _plan_orbit(p, q, sc, n):
    base = _rest(sc, q)
    a = q["a0"] + q["sweep"] * _ease(p, q["ease"])
    cy = base.y - q["radius"] - 10
    st = State(base.x + q["radius"] * math.cos(a), cy + q["radius"] * math.sin(a))
    return _statics(sc, n, base.x) + [(sc.A, st)], st


def _plan_squash(p, q, sc, n):
    x = q["xf"] * sc.W
    sy = 1.0 - q["amount"] * _ease(p, q["ease"])
    st = State(x, sc.ground - sc.A.h * sy / 2, sy=sy)
    hand = _hand(sc, x, st.y - sc.A.h * sy / 2 - 8, x + 40, -90)
    return _statics(sc, n, x) + [_shadow(sc, x, sc.A.w, 0), (sc.A, st)] + hand, st


def _plan_hop(p, q, sc, n):
    base = _rest(sc, q)
    h = q["height"] * abs(math.sin(math.pi * q["hops"] * p)) * (1 - 0.5 * p)
    st = State(base.x + q["dx"] * p, base.y - h)
    return _statics(sc, n, base.x) + [_shadow(sc, st.x, sc.A.w, h), (sc.A, st)], st


def _plan_pan(p, q, sc, n):
    """Camera pan: everything shifts together (the background shift is applied by the caller)."""
    st = _rest(sc, q)
    dx = q["pan"] * _ease(p, q["ease"])
    st = State(st.x - dx, st.y)
    items = _statics(sc, n, st.x + dx) + [_shadow(sc, st.x + dx, sc.A.w, 0), (sc.A, _rest(sc, q))]
    return [(sp, State(s.x - dx, s.y, s.scale, s.angle, s.alpha, s.sy)) for sp, s in items], st


def _plan_fade(p, q, sc, n):
    st = _rest(sc, q)
    f = _ease(p, q["ease"])
    alpha = 1 - f if q["out"] > 0.5 else f
    st = State(st.x, st.y, alpha=alpha)
    return _statics(sc, n, st.x) + [_shadow(sc, st.x, sc.A.w * alpha, 0), (sc.A, st)], st


def _plan_tilt(p, q, sc, n):
    base = _rest(sc, q)
    a = q["angle"] * _ease(p, q["ease"])
    # rotate around the bottom corner on the side of the tilt
    side = 1 if a >= 0 else -1
    px, py = base.x + side * sc.A.w / 2, sc.ground
    ox, oy = base.x - px, base.y - py
    c, s = math.cos(a), math.sin(a)
    st = State(px + c * ox - s * oy, py + s * ox + c * oy, angle=a)
    return _statics(sc, n, base.x) + [_shadow(sc, st.x, sc.A.w, 0), (sc.A, st)], st


MOTIONS: dict[str, Plan] = {
    "slide": _plan_slide, "lift": _plan_lift, "depth": _plan_depth, "drop": _plan_drop,
    "drop_into": _plan_drop, "feather": _plan_feather, "cover": _plan_cover, "put": _plan_put,
    "put_flat": _plan_put, "edge_fall": _plan_edge_fall, "roll_back": _plan_roll_back,
    "plug": _plan_plug, "throw_catch": _plan_throw_catch,
    "rotate": _plan_rotate, "scale": _plan_scale, "shake": _plan_shake, "drift": _plan_drift,
    "orbit": _plan_orbit, "squash": _plan_squash, "hop": _plan_hop, "pan": _plan_pan,
    "fade": _plan_fade, "tilt": _plan_tilt,
}
# Motion families of templates outside the task table, chosen by template index modulo 10.
GENERIC_MOTIONS = ("rotate", "scale", "shake", "drift", "orbit", "squash", "hop", "pan", "fade",
                   "tilt")


# where an object stands (not how it moves): drawn from the whole range at any motion spread
PLACEMENT_PARAMS = frozenset({"xf", "off", "bx", "phase", "a0"})


def sample_params(motion: str, rng: np.random.Generator, spread: float = 1.0) -> dict[str, float]:
    """Random motion parameters of a family (the caller sets fixed ones, e.g. direction).

    `spread` scales each motion range about its middle (1 whole range, 0 the middle); placement
    (PLACEMENT_PARAMS) and signs stay random, and the same numbers are drawn at any spread."""
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"sample_params: spread must be in [0, 1], got {spread}")

    def u(lo: float, hi: float) -> float:
        v = float(rng.uniform(lo, hi))
        return (lo + hi) / 2 + spread * (v - (lo + hi) / 2)

    def place(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))
    common = {"ease": u(0, 1), "xf": place(0.35, 0.65)}
    sign = lambda: float(rng.choice((-1.0, 1.0)))   # noqa: E731
    table: dict[str, dict[str, float]] = {
        "slide": {"dir": sign(), "grip": 0.0, "dist": u(0.35, 0.6), "off": place(-1, 1)},
        "lift": {"dir": -1.0, "dist": u(0.22, 0.38), "side": sign()},
        "depth": {"grow": 1.0, "small": u(0.55, 0.8), "ratio": u(1.7, 2.3)},
        "drop": {"rel": 0.0, "bx": place(0.35, 0.65), "side": sign(), "h0": u(0.1, 0.25),
                 "land": u(0.7, 0.92), "tumble": u(-0.8, 0.8)},
        "feather": {"bx": place(0.35, 0.65), "h0": u(0.1, 0.22), "land": u(0.85, 1.0),
                    "amp": u(15, 35), "cycles": u(1.0, 2.0), "phase": place(0, 2 * np.pi),
                    "tilt": u(0.25, 0.6)},
        "cover": {"side": sign(), "dist": u(0.25, 0.35), "lift": u(30, 60), "end": u(0.8, 0.92)},
        "put": {"onto": 0.0, "lift": u(0.22, 0.35), "release": u(0.75, 0.88)},
        "edge_fall": {"side": sign(), "lift": u(0.12, 0.2), "release": u(0.4, 0.55)},
        "roll_back": {"dir": sign(), "len": u(0.45, 0.6), "theta": u(0.22, 0.38),
                      "peak": u(0.6, 0.85), "off": place(-1, 1)},
        "plug": {"dir": sign(), "sock": u(0.22, 0.3), "height": u(0.05, 0.2),
                 "dist": u(0.18, 0.28), "p_in": u(0.32, 0.45), "hold": u(0.08, 0.18)},
        "throw_catch": {"hand": u(0.05, 0.15), "height": u(0.35, 0.5), "spin": u(-4, 4),
                        "drift": u(-10, 10)},
        "rotate": {"turn": sign() * u(1.5, 3.5)},
        "scale": {"factor": float(rng.choice((u(0.5, 0.7), u(1.4, 1.9))))},
        "shake": {"amp": u(10, 22), "cycles": u(2, 3.5)},
        "drift": {"dist": u(70, 120), "dir": float(rng.choice((u(0.5, 1.0), u(2.1, 2.6),
                                                                 u(-1.0, -0.5), u(-2.6, -2.1))))},
        "orbit": {"radius": u(25, 45), "a0": place(0, 2 * np.pi), "sweep": sign() * u(2.5, 4.5)},
        "squash": {"amount": u(0.35, 0.55)},
        "hop": {"height": u(25, 45), "hops": float(rng.integers(2, 4)), "dx": sign() * u(45, 80)},
        "pan": {"pan": sign() * u(40, 75)},
        "fade": {"out": float(rng.integers(2))},
        "tilt": {"angle": sign() * u(1.2, 1.57)},
    }
    table["drop_into"] = dict(table["drop"], rel=4.0)
    table["put_flat"] = dict(table["put"])
    if motion not in table:
        raise ValueError(f"unknown motion family {motion!r}; known: {sorted(table)}")
    return {**common, **table[motion]}


def _plans(spec: VideoSpec, sc: Scene) -> list[tuple[list[Item], State]]:
    if spec.motion not in MOTIONS:
        raise ValueError(f"video {spec.id}: unknown motion family {spec.motion!r}")
    plan, q = MOTIONS[spec.motion], spec.params_dict
    n = len(spec.placeholders)
    return [plan(float(p), q, sc, n) for p in frame_progress(spec)]


def object_states(spec: VideoSpec) -> np.ndarray:
    """(T, 4) float64 per frame [x, y, scale, angle] of the object whose motion the template names
    (the first placeholder; the cover for "Covering [something] with [something]")."""
    sc = build_scene(spec, background=False)
    return np.array([[s.x, s.y, s.scale, s.angle] for _, s in _plans(spec, sc)], np.float64)


def render_video(spec: VideoSpec, return_track: bool = False):
    """Render the video: (T, 240, W, 3) uint8 RGB; with return_track also the (T, 2) x, y track."""
    assert spec.width >= 16 and spec.height >= 16, (spec.width, spec.height)
    sc = build_scene(spec)
    plans = _plans(spec, sc)
    q = spec.params_dict
    prog = frame_progress(spec)
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), np.uint8)  # (T, H, W, 3)
    still = np.ascontiguousarray(sc.bg[:, sc.pad:sc.pad + spec.width])           # (H, W, 3)
    img = np.empty_like(still)
    for t, (items, _) in enumerate(plans):
        if spec.motion == "pan":
            off = int(round(sc.pad + q["pan"] * _ease(float(prog[t]), q["ease"])))
            img[:] = sc.bg[:, off:off + spec.width]
        else:
            img[:] = still
        for sp, st in items:
            draw(img, sp, st)
        np.clip(img, 0.0, 1.0, out=img)
        frames[t] = img * 255.0 + 0.5         # float -> uint8 truncates, i.e. rounds
    if return_track:
        track = np.array([[s.x, s.y] for _, s in plans], np.float64)         # (T, 2)
        return frames, track
    return frames
