"""Semi-synthetic front-door studies over REAL images (for benchmarks), with exact ground truth.

The image node is a real picture drawn from a pool by a known mechanism on its label, so the
image's hidden feature is its label (plus, for MNIST, an assigned color) and the outcome reads the
image only through that feature: the SCM of :mod:`._scm` gives the exact answers, while the
pictures carry real-world nuisance (handwriting, anatomy).

* :func:`build_mnist_frontdoor`: ``D -> I -> A; D <-> A`` with a colorized MNIST digit as ``I``
  (same mechanisms as the procedural ``colored_digits`` example).
* :func:`build_pneumonia_frontdoor`: ``C -> X -> N; C <-> N`` with a real chest X-ray (e.g.
  PneumoniaMNIST, label 1 = pneumonia) as ``X``; ``C`` shifts the odds of the X-ray's label.

Both write the study folder through :func:`mdcm.data.save_study` and return an :class:`Example`
whose ``study.path`` is that folder. Nothing here reads files; callers pass arrays (see
:func:`mdcm.readers.read_mnist_idx`, :func:`mdcm.readers.read_medmnist_npz`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data import DataError, save_study
from ..graph import CausalGraph
from ..variables import Schema, Variable
from . import colored_digits
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid, table
from .draw import colorize

P_U = np.array([[0.5, 0.5]])
P_C_GIVEN_U = np.array([[0.8, 0.2], [0.2, 0.8]])
P_LABEL_GIVEN_C = np.array([[0.75, 0.25], [0.3, 0.7]])


def _pool(
    images: np.ndarray, labels: np.ndarray, wanted: tuple[int, ...], what: str
) -> list[np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(
            f"{what}: expected uint8 images (N, H, W[, C]) and N labels, got "
            f"{images.dtype} {images.shape} and {labels.shape}"
        )
    out = []
    for lab in wanted:
        idx = np.flatnonzero(labels == lab)
        if idx.size == 0:
            raise DataError(f"{what}: no image with label {lab} in the pool")
        out.append(idx)
    return out


def _downsample(a: np.ndarray, side: int | None) -> np.ndarray:
    """Block-average uint8 images ``(n, H, W[, C])`` to ``side x side`` (H, W multiples of side)."""
    if side is None or side == a.shape[1]:
        return a
    h, w = a.shape[1:3]
    if h % side or w % side:
        raise DataError(f"cannot downsample {h}x{w} images to {side}x{side}")
    fh, fw = h // side, w // side
    b = a.reshape(a.shape[0], side, fh, side, fw, *a.shape[3:]).astype(np.float64).mean((2, 4))
    return np.rint(b).astype(np.uint8)


def build_mnist_frontdoor(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path | str,
    n: int = 4000,
    seed: int = 0,
    *,
    digits: tuple[int, ...] = (0, 1, 7),
    side: int | None = None,
    overwrite: bool = False,
) -> Example:
    """Colored-MNIST front-door study ``D -> I -> A; D <-> A`` over real handwritten digits.

    ``I.digit = j`` picks a uniformly random pool image with label ``digits[j]``; ``I.color``
    tints it. The mechanisms (U, D | U, color | D, digit | D, A | color, digit, U) are those of
    :mod:`.colored_digits`, so ``truth`` / ``naive`` are exact. ``side=14`` block-averages 28x28
    digits to 14x14.
    """
    if len(digits) != 3:
        raise ValueError("digits must name exactly 3 digit labels")
    images = _downsample(np.asarray(images), side)
    pools = _pool(images, labels, tuple(digits), "MNIST pool")
    if images.ndim != 3:
        raise DataError("MNIST pool: expected grayscale images (N, H, W)")
    shape = (3, images.shape[1], images.shape[2])
    schema = Schema(
        CausalGraph.parse("D -> I -> A; D <-> A"),
        (
            Variable("D", "categorical", classes=3),
            Variable("I", "image", shape=shape),
            Variable("A", "categorical", classes=2),
        ),
    )

    def render(feats, rng):
        digit = np.asarray(feats["I.digit"], np.int64)
        pick = np.empty(len(digit), np.int64)
        for j, pool in enumerate(pools):
            m = digit == j
            pick[m] = rng.choice(pool, size=int(m.sum()))
        return colorize(images[pick], feats["I.color"], rng)

    ex = make_example(
        "mnist_frontdoor",
        schema,
        colored_digits.build_scm(),
        treatment="D",
        outcome="A",
        n=n,
        seed=seed,
        description=(
            "Semi-synthetic front-door: a real MNIST digit (labels "
            f"{tuple(digits)}), colorized, is the image mediator of "
            "D -> A."
        ),
        features={"I": {"I.color": 3, "I.digit": 3}},
        renderers={"I": render},
    )
    path = save_study(ex.study, out_dir, overwrite=overwrite)
    return replace(ex, study=replace(ex.study, path=Path(path)))


def build_pneumonia_scm() -> SCM:
    return SCM(
        (
            Node("U", (), lambda: P_U, 2, "latent"),
            Node("C", ("U",), table(P_C_GIVEN_U), 2),
            Node("X.label", ("C",), table(P_LABEL_GIVEN_C), 2, "feature"),
            Node(
                "N",
                ("X.label", "U"),
                lambda lab, u: bernoulli(sigmoid(-1.8 + 2.0 * lab + 2.2 * u)),
                2,
            ),
        )
    )


def build_pneumonia_frontdoor(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path | str,
    n: int = 4000,
    seed: int = 0,
    *,
    side: int | None = None,
    overwrite: bool = False,
) -> Example:
    """X-ray front-door study ``C -> X -> N; C <-> N`` over real chest X-rays.

    ``C`` (driven by a hidden ``U``) shifts the odds of the X-ray's label (P(label=1 | C) = 0.25,
    0.7); ``X`` is a uniformly random pool image with that label; ``N`` depends on the label and
    ``U``. Grayscale pools give 1-channel images, RGB pools 3-channel ones.
    """
    images = _downsample(np.asarray(images), side)
    pools = _pool(images, labels, (0, 1), "X-ray pool")
    shape = (1, *images.shape[1:3]) if images.ndim == 3 else (images.shape[3], *images.shape[1:3])
    schema = Schema(
        CausalGraph.parse("C -> X -> N; C <-> N"),
        (
            Variable("C", "categorical", classes=2),
            Variable("X", "image", shape=shape),
            Variable("N", "categorical", classes=2),
        ),
    )

    def render(feats, rng):
        lab = np.asarray(feats["X.label"], np.int64)
        pick = np.empty(len(lab), np.int64)
        for j, pool in enumerate(pools):
            m = lab == j
            pick[m] = rng.choice(pool, size=int(m.sum()))
        a = images[pick].astype(np.float32) / 127.5 - 1.0
        return a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)

    ex = make_example(
        "pneumonia_frontdoor",
        schema,
        build_pneumonia_scm(),
        treatment="C",
        outcome="N",
        n=n,
        seed=seed,
        description=(
            "Semi-synthetic front-door: a real chest X-ray chosen by its "
            "label (pneumonia or not) is the image mediator of C -> N."
        ),
        features={"X": {"X.label": 2}},
        renderers={"X": render},
    )
    path = save_study(ex.study, out_dir, overwrite=overwrite)
    return replace(ex, study=replace(ex.study, path=Path(path)))
