"""Two images on one causal path: ``X -> I -> J -> Y; M -> J; M -> Y; X <-> Y`` (issue #10).

A hidden binary ``U`` drives the treatment ``X`` and the outcome ``Y``. ``X`` shifts the color of
a digit image ``I`` (the image mediator); a second image ``J`` (chest-X-ray-like) shows an
opacity that depends on ``I``'s color and on a patient factor ``M``; ``Y`` reads ``J``'s opacity,
``M`` and ``U``. Children read images only through their features, so exact answers follow from
the SCM. The conditional query P(Y | do(X), M=m) is identifiable (IDC; front-door through I and J)
and differs from the naive P(Y | X, M=m).
"""

from __future__ import annotations

import numpy as np

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid, table
from .draw import render_digits, render_xray

NAME = "two_images"
DESCRIPTION = (
    "Two images on one path: treatment X shifts the color of image I, which shifts the opacity "
    "seen in a second image J (together with a factor M); the outcome Y reads J and M; a hidden "
    "U drives both X and Y."
)
DIGITS = (0, 1, 7)
SHAPES = {"cpu": ((3, 14, 14), (1, 16, 16)), "gpu": ((3, 28, 28), (1, 28, 28))}

P_U = np.array([[0.5, 0.5]])
P_X_GIVEN_U = np.array([[0.8, 0.2], [0.25, 0.75]])
P_COLOR_GIVEN_X = np.array([[0.6, 0.25, 0.15], [0.15, 0.25, 0.6]])
P_M = np.array([[0.55, 0.45]])
COLOR_TO_OPACITY = np.array([-1.2, 0.0, 1.2])
OPACITY_EFFECT = np.array([-1.1, 0.0, 1.1])


def p_opacity(color: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Ordered-logit opacity 0/1/2 given I's color and M."""
    s = COLOR_TO_OPACITY[np.asarray(color, np.int64)] + 0.8 * np.asarray(m, np.float64)
    lo, hi = sigmoid(-0.5 - s), sigmoid(0.9 - s)  # P(opacity <= 0), P(opacity <= 1)
    return np.stack([lo, hi - lo, 1.0 - hi], axis=-1)


def p_y(opacity: np.ndarray, m: np.ndarray, u: np.ndarray) -> np.ndarray:
    logit = -0.8 + OPACITY_EFFECT[np.asarray(opacity, np.int64)] + 0.7 * m + 2.0 * u
    return bernoulli(sigmoid(logit))


def build_scm() -> SCM:
    return SCM(
        (
            Node("U", (), lambda: P_U, 2, "latent"),
            Node("X", ("U",), table(P_X_GIVEN_U), 2),
            Node("I.color", ("X",), table(P_COLOR_GIVEN_X), 3, "feature"),
            Node("I.digit", (), lambda: np.full((1, 3), 1.0 / 3.0), 3, "feature"),
            Node("M", (), lambda: P_M, 2),
            Node("J.opacity", ("I.color", "M"), p_opacity, 3, "feature"),
            Node("Y", ("J.opacity", "M", "U"), p_y, 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    if size not in SHAPES:
        raise ValueError(f"{NAME}: unknown size {size!r}; use one of {', '.join(SHAPES)}")
    shape_i, shape_j = SHAPES[size]
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    schema = Schema(
        CausalGraph.parse("X -> I -> J -> Y; M -> J; M -> Y; X <-> Y"),
        (
            Variable("X", "categorical", classes=2, label="treatment", values=("no", "yes")),
            Variable("I", "image", shape=shape_i, label="digit image"),
            Variable("M", "categorical", classes=2, label="risk factor", values=("low", "high")),
            Variable("J", "image", shape=shape_j, label="X-ray"),
            Variable("Y", "categorical", classes=2, label="outcome", values=("bad", "good")),
        ),
    )

    def render_i(feats, rng):
        return render_digits(
            feats["I.digit"], feats["I.color"], DIGITS, shape_i, rng, as_uint8=True
        )

    def render_j(feats, rng):
        return render_xray(feats["J.opacity"], shape_j, rng, as_uint8=True)

    return make_example(
        NAME,
        schema,
        build_scm(),
        treatment="X",
        outcome="Y",
        given=("M",),
        description=DESCRIPTION,
        n=n,
        seed=seed,
        features={"I": {"I.color": 3, "I.digit": 3}, "J": {"J.opacity": 3}},
        renderers={"I": render_i, "J": render_j},
        **options,
    )
