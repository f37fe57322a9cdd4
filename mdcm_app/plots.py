"""Pure plotting helpers: plotly figures for distributions and effects, PIL image grids and PNG
bar charts (PNG export without kaleido or a browser), the home-page picture.

Images follow the library convention: float arrays (C, H, W) with values in [-1, 1].
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "bar_png",
    "distribution_figure",
    "effect_figure",
    "example_description",
    "example_names",
    "grids_by_class",
    "hero_picture",
    "image_grid",
    "image_to_array",
    "marginal_figure",
    "pairwise_figure",
    "png_bytes",
    "preview_rows",
    "to_uint8",
]

log = logging.getLogger("mdcm_app")

BLUE, ORANGE, GREEN, GREY = "#1d6fa5", "#f28e2b", "#59a14f", "#9aa5b1"


def example_names() -> list[str]:
    """Names of the built-in studies."""
    from mdcm.examples import EXAMPLES

    return list(EXAMPLES)


def example_description(name: str) -> str:
    """The one-line description of a built-in study ("" when unknown)."""
    from mdcm.examples import EXAMPLES

    return str(EXAMPLES.get(name, ""))


# ---------------------------------------------------------------------- images
def to_uint8(img: np.ndarray) -> np.ndarray:
    """(C,H,W) in [-1,1] -> (H,W,3) uint8."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    a = np.clip((a + 1.0) * 127.5, 0, 255).astype(np.uint8)
    a = np.transpose(a, (1, 2, 0))
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def image_grid(
    images: np.ndarray,
    ncol: int = 8,
    scale: int = 4,
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A grid of (N,C,H,W) images in [-1,1], each enlarged ``scale`` times (nearest)."""
    imgs = np.asarray(images)
    n = len(imgs)
    if n == 0:
        return Image.new("RGB", (64, 16), "white")
    h, w = imgs.shape[2] * scale, imgs.shape[3] * scale
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    top = 14 if labels else 0
    grid = Image.new("RGB", (ncol * (w + pad) + pad, nrow * (h + pad + top) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, ncol)
        tile = Image.fromarray(to_uint8(imgs[i])).resize((w, h), Image.NEAREST)
        x, y = pad + c * (w + pad), pad + r * (h + pad + top)
        if labels:
            draw.text((x, y), str(labels[i])[:12], fill="black")
        grid.paste(tile, (x, y + top))
    return grid


def image_to_array(
    data: bytes, shape: Sequence[int], name: str = "the uploaded file"
) -> np.ndarray:
    """An uploaded PNG/JPEG resized to a model's image shape (C,H,W), values in [-1,1].

    Raises ValueError naming the user's file (``name``) and, in words, what is wrong with it:
    not an image (text or other data), an image too large to decode, a damaged image.
    """
    from PIL import UnidentifiedImageError

    from mdcm.limits import DEFAULT_LIMITS

    c, h, w = (int(s) for s in shape)
    head = bytes(data[:512])
    if not head:
        raise ValueError(f"{name} is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        iw, ih = img.size
        if iw * ih > DEFAULT_LIMITS.max_image_pixels:
            raise ValueError(
                f"{name} is {iw}x{ih} pixels, more than the limit of "
                f"{DEFAULT_LIMITS.max_image_pixels} pixels; make it smaller first"
            )
        img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        what = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "other data"
        raise ValueError(
            f"{name} is not a PNG or JPEG image (it holds {what}); upload a picture file"
        ) from None
    except (OSError, SyntaxError) as exc:
        log.info("image %s cannot be decoded: %s", name, exc)
        raise ValueError(
            f"{name} could not be read as an image: the file is damaged or cut short"
        ) from None
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    a = a[None] if c == 1 else np.transpose(a, (2, 0, 1))
    return a.astype(np.float32)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bar_png(
    series: Mapping[str, Sequence[float]],
    categories: Sequence[str],
    title: str = "",
    width: int = 560,
    height: int = 320,
) -> bytes:
    """A grouped bar chart drawn with PIL (PNG bytes): one color per series, values in [0, 1]."""
    colors = [BLUE, ORANGE, GREEN, GREY, "#b07aa1", "#e15759"]
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 46, 12, 30, 44
    d.text((left, 8), title, fill="black", font=font)
    pw, ph = width - left - right, height - top - bottom
    vmax = max([1e-9] + [float(v) for s in series.values() for v in s])
    vmax = 1.0 if vmax <= 1.0 else vmax
    for t in range(5):
        y = top + ph - ph * t / 4
        d.line([(left, y), (left + pw, y)], fill="#e5e7eb")
        d.text((4, y - 6), f"{vmax * t / 4:.2f}", fill="black", font=font)
    ncat, nser = max(1, len(categories)), max(1, len(series))
    gw = pw / ncat
    bw = gw * 0.8 / nser
    for j, (_name, vals) in enumerate(series.items()):
        for i, v in enumerate(vals):
            x0 = left + i * gw + gw * 0.1 + j * bw
            y0 = top + ph - ph * float(v) / vmax
            d.rectangle([x0, y0, x0 + bw - 2, top + ph], fill=colors[j % len(colors)])
    for i, c in enumerate(categories):
        d.text(
            (left + i * gw + gw / 2 - 3 * len(str(c)), top + ph + 4),
            str(c),
            fill="black",
            font=font,
        )
    x = left
    for j, name in enumerate(series):
        d.rectangle([x, height - 14, x + 10, height - 4], fill=colors[j % len(colors)])
        d.text((x + 14, height - 16), name, fill="black", font=font)
        x += 24 + 7 * len(name)
    return png_bytes(img)


# ---------------------------------------------------------------------- plotly
def _layout(fig: go.Figure, title: str, height: int = 320, caveat: str | None = None) -> go.Figure:
    """Title, size, legend below. No plotly template: ``st.plotly_chart`` applies the app's
    theme anyway, and building a template costs about 40 ms per figure (a slider move draws
    two figures)."""
    if caveat:
        title = f"{title}<br><sup style='color:#b45309'>{caveat}</sup>"
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 40, "r": 10, "t": 48, "b": 40},
        legend={"orientation": "h", "y": -0.2},
        barmode="group",
    )
    return fig


def distribution_figure(
    series: Mapping[str, Sequence[float]],
    categories: Sequence[str],
    title: str,
    errors: Mapping[str, Sequence[float]] | None = None,
    caveat: str | None = None,
) -> go.Figure:
    """Grouped bars of categorical distributions (e.g. model under do() vs naive vs truth);
    ``errors`` are half-widths of 95% sampling intervals; ``caveat`` is printed under the title
    (e.g. "not identifiable: one of many answers that fit the data")."""
    colors = [BLUE, ORANGE, GREEN, GREY]
    fig = go.Figure()
    for j, (name, vals) in enumerate(series.items()):
        err = (errors or {}).get(name)
        fig.add_bar(
            x=[str(c) for c in categories],
            y=list(map(float, vals)),
            name=name,
            marker_color=colors[j % len(colors)],
            error_y={"type": "data", "array": list(map(float, err))} if err is not None else None,
            hovertemplate="%{x}: %{y:.3f}"
            + (" ± %{error_y.array:.3f} (95%, sampling noise only)" if err is not None else "")
            + f"<extra>{name}</extra>",
        )
    fig.update_yaxes(title="probability", range=[0, 1.05])
    return _layout(fig, title, caveat=caveat)


def marginal_figure(
    values: np.ndarray,
    name: str,
    kind: str,
    other: np.ndarray | None = None,
    labels: tuple[str, str] = ("real", "model"),
    categories: Sequence[str] | None = None,
) -> go.Figure:
    """A variable's marginal: bars for categorical (``categories`` names the classes),
    histogram for continuous (first dimension)."""
    fig = go.Figure()
    if kind == "categorical":
        k = int(max(np.max(values), np.max(other) if other is not None else 0)) + 1
        k = max(k, len(categories or ()))
        names = list(categories or ()) + [str(i) for i in range(len(categories or ()), k)]
        for arr, lab, col in ((values, labels[0], BLUE), (other, labels[1], ORANGE)):
            if arr is None:
                continue
            p = np.bincount(np.asarray(arr, dtype=np.int64), minlength=k) / max(1, len(arr))
            fig.add_bar(x=names, y=p, name=lab, marker_color=col)
        fig.update_yaxes(title="probability")
    else:
        for arr, lab, col in ((values, labels[0], BLUE), (other, labels[1], ORANGE)):
            if arr is None:
                continue
            a = np.asarray(arr, dtype=np.float32).reshape(len(arr), -1)[:, 0]
            fig.add_histogram(
                x=a,
                name=lab,
                marker_color=col,
                opacity=0.6,
                histnorm="probability density",
                nbinsx=30,
            )
        fig.update_layout(barmode="overlay")
    return _layout(fig, f"{name}", height=280)


def effect_figure(
    values: Sequence[str],
    series: Mapping[str, Sequence[float]],
    lower: Mapping[str, Sequence[float]] | None = None,
    upper: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    ytitle: str = "probability",
    xtitle: str = "treatment value",
    caveat: str | None = None,
) -> go.Figure:
    """Lines across treatment values, with 95% sampling intervals per series when given;
    ``caveat`` is printed under the title."""
    colors = [BLUE, ORANGE, GREEN, GREY]
    fig = go.Figure()
    xs = [str(v) for v in values]
    for j, (name, ys) in enumerate(series.items()):
        col = colors[j % len(colors)]
        if lower and upper and name in lower and name in upper:
            lo, hi = list(map(float, lower[name])), list(map(float, upper[name]))
            fig.add_scatter(
                x=xs,
                y=list(map(float, ys)),
                name=name,
                mode="lines+markers",
                line={"color": col},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [h - y for h, y in zip(hi, ys, strict=True)],
                    "arrayminus": [y - a for y, a in zip(ys, lo, strict=True)],
                },
            )
        else:
            fig.add_scatter(
                x=xs,
                y=list(map(float, ys)),
                name=name,
                mode="lines+markers",
                line={"color": col, "dash": "dot" if j else "solid"},
            )
    fig.update_yaxes(title=ytitle)
    fig.update_xaxes(title=xtitle, type="category")
    return _layout(fig, title, caveat=caveat)


# ---------------------------------------------------------------------- home picture
def _arrow(
    d: ImageDraw.ImageDraw,
    p: tuple[float, float],
    q: tuple[float, float],
    color: str,
    dashed: bool = False,
    heads: tuple[bool, bool] = (False, True),
) -> None:
    p_, q_ = np.array(p, dtype=float), np.array(q, dtype=float)
    v = q_ - p_
    length = float(np.linalg.norm(v))
    u = v / length
    if dashed:
        for t in np.arange(0, length, 14):
            a, b = p_ + u * t, p_ + u * min(t + 8, length)
            d.line([tuple(a), tuple(b)], fill=color, width=3)
    else:
        d.line([p, q], fill=color, width=3)
    nrm = np.array([-u[1], u[0]])
    for tip, dirn, on in ((q_, u, heads[1]), (p_, -u, heads[0])):
        if on:
            base = tip - dirn * 14
            d.polygon([tuple(tip), tuple(base + nrm * 7), tuple(base - nrm * 7)], fill=color)


def hero_picture() -> Image.Image:
    """The home-page picture: D -> image -> A with a dashed hidden confounder D <-> A."""
    w, h = 520, 260
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22) if hasattr(ImageFont, "load_default") else None
    small = ImageFont.load_default(size=14)
    nodes = {"D": (70, 170), "A": (450, 170)}
    for name, (x, y) in nodes.items():
        d.ellipse([x - 34, y - 34, x + 34, y + 34], fill="#8ecae6", outline="#1d3557", width=3)
        d.text((x - 8, y - 13), name, fill="#1d3557", font=font)
    # image mediator: a small grid of colored "digits"
    x0, y0 = 200, 120
    d.rectangle([x0 - 6, y0 - 6, x0 + 126, y0 + 106], fill="#ffb703", outline="#1d3557", width=3)
    rng = np.random.default_rng(3)
    for i in range(3):
        for j in range(4):
            col = ["#d62828", "#2a9d8f", "#264653"][int(rng.integers(0, 3))]
            cx, cy = x0 + 8 + j * 30, y0 + 6 + i * 32
            d.rectangle([cx, cy, cx + 24, cy + 26], fill="black")
            d.text((cx + 7, cy + 3), str(int(rng.integers(0, 10))), fill=col, font=font)
    d.text((x0 + 30, y0 + 108), "image I", fill="#1d3557", font=small)
    _arrow(d, (104, 160), (192, 150), "#333333")
    _arrow(d, (328, 150), (416, 160), "#333333")
    # hidden confounder arc (dashed, two heads) drawn as a polyline
    pts = [(70 + t * 380, 130 - 95 * np.sin(np.pi * t)) for t in np.linspace(0.08, 0.92, 40)]
    for k in range(0, len(pts) - 1, 2):
        d.line([pts[k], pts[k + 1]], fill="#d62828", width=3)
    _arrow(d, pts[1], (84, 138), "#d62828")
    _arrow(d, pts[-2], (436, 138), "#d62828")
    d.text((205, 14), "hidden confounder", fill="#d62828", font=small)
    return img


# ---------------------------------------------------------------------- tables and pairs
def preview_rows(
    columns: Mapping[str, np.ndarray], kinds: Mapping[str, str], n: int = 20
) -> dict[str, list]:
    """First ``n`` rows as plain lists (images summarised by their mean intensity)."""
    out: dict[str, list] = {}
    for name, arr in columns.items():
        a = np.asarray(arr)[:n]
        kind = kinds.get(name, "")
        if kind == "image":
            out[f"{name} (mean pixel)"] = [round(float(x.mean()), 3) for x in a]
        elif a.ndim == 2:
            for j in range(a.shape[1]):
                out[name if a.shape[1] == 1 else f"{name}[{j}]"] = [
                    round(float(x), 4) for x in a[:, j]
                ]
        else:
            out[name] = [int(x) if kind == "categorical" else float(x) for x in a]
    return out


def pairwise_figure(
    x: np.ndarray,
    y: np.ndarray,
    xname: str,
    yname: str,
    xkind: str,
    ykind: str,
    max_points: int = 2000,
) -> go.Figure:
    """Two variables together: a joint-probability heatmap (categorical x categorical), box plots
    (categorical x continuous) or a scatter plot (continuous x continuous)."""
    x = np.asarray(x)[:max_points] if xkind != "categorical" else np.asarray(x)
    y = np.asarray(y)[:max_points] if ykind != "categorical" else np.asarray(y)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    fig = go.Figure()
    if xkind == "categorical" and ykind == "categorical":
        kx, ky = int(x.max()) + 1, int(y.max()) + 1
        table = np.zeros((ky, kx))
        np.add.at(table, (y.astype(int), x.astype(int)), 1.0)
        table /= max(1.0, table.sum())
        fig.add_heatmap(
            z=table,
            x=[str(i) for i in range(kx)],
            y=[str(i) for i in range(ky)],
            colorscale="Blues",
            text=np.round(table, 3),
            texttemplate="%{text}",
        )
    elif xkind == "categorical" or ykind == "categorical":
        cat, cont = (x, y) if xkind == "categorical" else (y, x)
        cname, vname = (xname, yname) if xkind == "categorical" else (yname, xname)
        cont = np.asarray(cont, dtype=np.float32).reshape(len(cont), -1)[:, 0]
        for c in range(int(cat.max()) + 1):
            fig.add_box(y=cont[cat == c], name=f"{cname}={c}")
        fig.update_yaxes(title=vname)
        return _layout(fig, f"{vname} by {cname}")
    else:
        xa = np.asarray(x, dtype=np.float32).reshape(n, -1)[:, 0]
        ya = np.asarray(y, dtype=np.float32).reshape(n, -1)[:, 0]
        fig.add_scatter(x=xa, y=ya, mode="markers", marker={"size": 4, "opacity": 0.5})
    fig.update_xaxes(title=xname)
    fig.update_yaxes(title=yname)
    return _layout(fig, f"{xname} and {yname}")


def grids_by_class(
    images: np.ndarray, classes: np.ndarray, per_class: int = 8, scale: int = 3
) -> dict[int, Image.Image]:
    """One image grid per class value (the first ``per_class`` images of each class)."""
    out = {}
    classes = np.asarray(classes)
    for c in range(int(classes.max()) + 1 if len(classes) else 0):
        idx = np.flatnonzero(classes == c)[:per_class]
        if len(idx):
            out[c] = image_grid(np.asarray(images)[idx], ncol=per_class, scale=scale)
    return out
