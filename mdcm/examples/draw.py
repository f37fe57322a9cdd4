"""Procedural images for the built-in examples (numpy only, no fonts, no downloads).

* :func:`render_digits`: a handwritten-like digit glyph (polylines), stroked with an anti-aliased
  pen of random width, under a random affine pose (rotation, scale, shift), in a given color.
* :func:`render_xray`: a chest-X-ray-like picture (body, two dark lung fields, spine, ribs) with an
  optional bright opacity blob (none / small / large) in one lung, plus anatomy nuisance and noise.

Both are vectorised over samples, deterministic given the generator ``rng``, and drawn at the
requested size (never upscaled: strokes, edges and noise are computed per output pixel). They work
in chunks of about :data:`PIXEL_BUDGET` pixels, so rendering 20,000 images at 128x128 needs no more
working memory than 2,048 at 16x16, and with ``as_uint8=True`` return 8-bit pixels (the PNG grid)
without ever holding the whole batch as floats.
"""

from __future__ import annotations

import functools

import numpy as np

from ..readers import images_to_uint8

#: pixels rendered per chunk (bounds the float temporaries of one chunk to ~0.3 GB)
PIXEL_BUDGET = 2**21


def chunk_rows(h: int, w: int, cap: int = 2048) -> int:
    """Samples per rendering chunk for ``h x w`` images (at most ``cap``, at least 1)."""
    return max(1, min(cap, PIXEL_BUDGET // (h * w)))


# ---------------------------------------------------------------------------- digit glyphs
# Glyph space: x in [-0.5, 0.5] (right), y in [-0.8, 0.8] (down). Each glyph is a list of polylines.


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, k: int = 14, t0: float = 0.0, t1: float = 2 * np.pi
) -> list[tuple[float, float]]:
    t = np.linspace(t0, t1, k + 1)
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in t]


GLYPHS: dict[int, list[list[tuple[float, float]]]] = {
    0: [_ellipse(0.0, 0.0, 0.42, 0.74)],
    1: [[(-0.2, -0.5), (0.05, -0.75), (0.05, 0.75)]],
    2: [
        [
            (-0.4, -0.45),
            (-0.2, -0.72),
            (0.15, -0.75),
            (0.4, -0.5),
            (0.35, -0.2),
            (-0.4, 0.75),
            (0.45, 0.75),
        ]
    ],
    3: [
        [
            (-0.4, -0.7),
            (0.35, -0.7),
            (-0.05, -0.1),
            (0.35, 0.1),
            (0.4, 0.45),
            (0.1, 0.75),
            (-0.4, 0.65),
        ]
    ],
    4: [[(0.2, 0.75), (0.2, -0.75), (-0.45, 0.3), (0.45, 0.3)]],
    5: [
        [
            (0.4, -0.75),
            (-0.35, -0.75),
            (-0.4, -0.1),
            (0.1, -0.15),
            (0.4, 0.15),
            (0.4, 0.5),
            (0.1, 0.75),
            (-0.4, 0.65),
        ]
    ],
    6: [
        [
            (0.3, -0.75),
            (-0.2, -0.3),
            (-0.4, 0.3),
            (-0.3, 0.7),
            (0.2, 0.72),
            (0.4, 0.35),
            (0.1, 0.05),
            (-0.35, 0.2),
        ]
    ],
    7: [[(-0.45, -0.75), (0.45, -0.75), (-0.1, 0.75)]],
    8: [_ellipse(0.0, -0.4, 0.3, 0.35, 10), _ellipse(0.0, 0.38, 0.4, 0.38, 12)],
    9: [_ellipse(0.0, -0.35, 0.38, 0.38, 12), [(0.38, -0.35), (0.2, 0.75)]],
}

COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.1, 0.1),
    (0.1, 1.0, 0.1),
    (0.15, 0.3, 1.0),
)
COLOR_NAMES = ("red", "green", "blue")


def _segments(digits: tuple[int, ...]) -> np.ndarray:
    """``(len(digits), S, 4)`` segment table, padded with far-away degenerate segments."""
    segs = []
    for d in digits:
        s = [
            (a[0], a[1], b[0], b[1])
            for line in GLYPHS[d]
            for a, b in zip(line, line[1:], strict=False)
        ]
        segs.append(s)
    m = max(len(s) for s in segs)
    out = np.full((len(digits), m, 4), 50.0)
    for i, s in enumerate(segs):
        out[i, : len(s)] = s
    return out


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(h) + 0.5) / h * 2 - 1
    xs = (np.arange(w) + 0.5) / w * 2 - 1
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return xx.ravel(), yy.ravel()


FIELD_HALF = 2.0  # distance fields cover glyph space [-2, 2]^2 ...
FIELD_SIZE = 401  # ... on a 0.01 grid


@functools.lru_cache(maxsize=8)
def _distance_fields(digits: tuple[int, ...]) -> np.ndarray:
    """Distance from every point of a fine glyph-space grid to each glyph's strokes:
    ``(len(digits), FIELD_SIZE, FIELD_SIZE)`` float32, indexed ``[digit, y, x]``."""
    g = np.linspace(-FIELD_HALF, FIELD_HALF, FIELD_SIZE)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    gx, gy = gx.ravel()[:, None], gy.ravel()[:, None]
    out = np.empty((len(digits), FIELD_SIZE * FIELD_SIZE), np.float32)
    for i, segs in enumerate(_segments(digits)):
        ax, ay, bx, by = (segs[:, j][None] for j in range(4))
        dx, dy = bx - ax, by - ay
        qx, qy = gx - ax, gy - ay
        t = np.clip((qx * dx + qy * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        out[i] = np.hypot(qx - t * dx, qy - t * dy).min(axis=1)
    return out.reshape(len(digits), FIELD_SIZE, FIELD_SIZE)


def glyph_intensity(
    digit_idx: np.ndarray,
    digits: tuple[int, ...],
    h: int,
    w: int,
    rng: np.random.Generator,
    chunk: int | None = None,
) -> np.ndarray:
    """Anti-aliased stroke coverage ``(n, h, w)`` in [0, 1] for glyphs ``digits[digit_idx]``.

    Each pixel centre is mapped back to glyph space through the sample's pose (rotation, shear,
    scale, shift); its distance to the strokes is read from a precomputed distance field
    (bilinear) and turned into coverage of a pen of the sample's half-width.
    """
    n = len(digit_idx)
    f32 = np.float32
    theta = rng.uniform(-0.3, 0.3, n).astype(f32)[:, None]  # ~ ±17 degrees
    scale = (0.78 * rng.uniform(0.85, 1.1, n)).astype(f32)[:, None]
    shear = rng.uniform(-0.15, 0.15, n).astype(f32)[:, None]
    shift = rng.uniform(-0.12, 0.12, (n, 2)).astype(f32)
    half = (rng.uniform(0.08, 0.14, n) * (1.0 + 0.4 * (14.0 / max(h, w)))).astype(f32)[:, None]
    px, py = (a.astype(f32)[None] for a in _grid(h, w))
    chunk = chunk or chunk_rows(h, w)
    out = np.empty((n, h * w), f32)
    for lo in range(0, n, chunk):  # bounded memory
        sl = slice(lo, lo + chunk)
        out[sl] = _coverage(
            np.asarray(digit_idx, np.int64)[sl],
            tuple(digits),
            px,
            py,
            theta[sl],
            scale[sl],
            shear[sl],
            shift[sl],
            half[sl],
            f32(2.0 / max(h, w)),
        )
    return out.reshape(n, h, w)


def _coverage(digit_idx, digits, px, py, theta, scale, shear, shift, half, pix) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    x, y = px - shift[:, :1], py - shift[:, 1:]
    gx, gy = c * x + s * y, -s * x + c * y  # undo rotation
    gx = (gx - shear * gy) / scale  # undo shear and scale
    gy = gy / scale
    step = 2 * FIELD_HALF / (FIELD_SIZE - 1)
    fx = np.clip((gx + FIELD_HALF) / step, 0, FIELD_SIZE - 1.001)
    fy = np.clip((gy + FIELD_HALF) / step, 0, FIELD_SIZE - 1.001)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    wx, wy = fx - ix, fy - iy
    field = _distance_fields(tuple(digits)).reshape(-1)
    base = digit_idx[:, None] * FIELD_SIZE * FIELD_SIZE + iy * FIELD_SIZE + ix
    d00, d01 = field[base], field[base + 1]
    d10, d11 = field[base + FIELD_SIZE], field[base + FIELD_SIZE + 1]
    dist = ((1 - wy) * ((1 - wx) * d00 + wx * d01) + wy * ((1 - wx) * d10 + wx * d11)) * scale
    return np.clip(0.5 + (half - dist) / pix, 0.0, 1.0)


def render_digits(
    digit_idx: np.ndarray,
    color_idx: np.ndarray,
    digits: tuple[int, ...],
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    as_uint8: bool = False,
) -> np.ndarray:
    """Colored digit images ``(n, 3, H, W)`` in [-1, 1] (uint8 ``0 … 255`` with ``as_uint8``) on a
    black background."""
    _, h, w = shape
    n = len(digit_idx)
    ink = glyph_intensity(digit_idx, digits, h, w, rng)
    base = np.asarray(COLORS)[np.asarray(color_idx, np.int64)]  # (n, 3)
    tint = np.clip(base + rng.uniform(-0.1, 0.1, (n, 3)), 0.0, 1.0) * rng.uniform(0.85, 1.0, (n, 1))
    tint = tint.astype(np.float32)
    out = np.empty((n, 3, h, w), np.uint8 if as_uint8 else np.float32)
    step = chunk_rows(3 * h, w)
    for lo in range(0, n, step):  # bounded memory
        sl = slice(lo, lo + step)
        img = 2.0 * (ink[sl, None] * tint[sl, :, None, None]) - 1.0
        out[sl] = images_to_uint8(img) if as_uint8 else img
    return out


def colorize(gray: np.ndarray, color_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gray images uint8 ``(n, H, W)`` to colored float ``(n, 3, H, W)`` in [-1, 1]."""
    n = len(gray)
    base = np.asarray(COLORS)[np.asarray(color_idx, np.int64)]
    tint = np.clip(base + rng.uniform(-0.1, 0.1, (n, 3)), 0.0, 1.0)
    img = (gray.astype(np.float64) / 255.0)[:, None] * tint[:, :, None, None]
    return (2.0 * img - 1.0).astype(np.float32)


# ---------------------------------------------------------------------------- chest X-rays
OPACITY_NAMES = ("none", "small", "large")
OPACITY_RADIUS = (0.0, 0.14, 0.27)


def _soft_ellipse(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry, edge: float) -> np.ndarray:
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp((r - 1.0) / edge))


def render_xray(
    opacity: np.ndarray,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    chunk: int | None = None,
    *,
    as_uint8: bool = False,
) -> np.ndarray:
    """Chest-X-ray-like images ``(n, 1, H, W)`` in [-1, 1] (uint8 ``0 … 255`` with ``as_uint8``);
    ``opacity`` 0 none, 1 small, 2 large."""
    _, h, w = shape
    opacity = np.asarray(opacity, np.int64)
    chunk = chunk or chunk_rows(h, w)
    out = np.empty((len(opacity), 1, h, w), np.uint8 if as_uint8 else np.float32)
    for lo in range(0, len(opacity), chunk):  # bounded memory
        img = _xray_chunk(opacity[lo : lo + chunk], h, w, rng)
        out[lo : lo + chunk] = images_to_uint8(img) if as_uint8 else img
    return out


def _xray_chunk(opacity: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    n = len(opacity)
    px, py = _grid(h, w)
    x, y = px[None], py[None]
    col = lambda a: np.asarray(a)[:, None]  # noqa: E731
    body_w = col(rng.uniform(0.78, 0.92, n))
    cx = col(rng.uniform(-0.06, 0.06, n))
    cy = col(rng.uniform(-0.05, 0.05, n))
    lung_rx = col(rng.uniform(0.24, 0.3, n))
    lung_ry = col(rng.uniform(0.5, 0.6, n))
    lung_dx = col(rng.uniform(0.33, 0.4, n))
    body = _soft_ellipse(x, y, cx, cy + 0.1, body_w, 1.05, 0.05)
    left = _soft_ellipse(x, y, cx - lung_dx, cy - 0.02, lung_rx, lung_ry, 0.08)
    right = _soft_ellipse(x, y, cx + lung_dx, cy - 0.02, lung_rx, lung_ry, 0.08)
    lungs = np.maximum(left, right)
    spine = np.exp(-(((x - cx) / 0.07) ** 2)) * body
    phase = col(rng.uniform(0, 1, n))
    ribs = np.clip(np.cos(2 * np.pi * ((y - cy) / 0.3 + phase)), 0, 1) ** 2 * lungs
    img = -0.95 + 1.1 * body - 0.75 * lungs + 0.3 * spine + 0.12 * ribs
    # opacity blob inside one lung (side and position are nuisance)
    side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    bx = col(cx[:, 0] + side * lung_dx[:, 0] + rng.uniform(-0.1, 0.1, n))
    by = col(cy[:, 0] + rng.uniform(-0.3, 0.3, n))
    radius = col(
        np.asarray(OPACITY_RADIUS)[np.asarray(opacity, np.int64)] * rng.uniform(0.9, 1.1, n)
    )
    r2 = ((x - bx) ** 2 + (y - by) ** 2) / np.maximum(radius**2, 1e-9)
    blob = np.where(radius > 0, np.exp(-(r2**2)), 0.0)  # soft-edged disc
    img = img + 1.5 * blob * np.maximum(lungs, 0.4)
    img = img * col(rng.uniform(0.9, 1.05, n)) + rng.normal(0.0, 0.03, img.shape)
    return np.clip(img, -1.0, 1.0).reshape(n, 1, h, w).astype(np.float32)
