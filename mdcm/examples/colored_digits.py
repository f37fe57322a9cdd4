"""Colored digits front-door study: ``D -> I -> A; D <-> A`` (design.md §4, §7).

A hidden binary ``U`` drives the class ``D`` (3 classes) and the attribute ``A`` (2 classes). The
image ``I`` (RGB) shows a digit glyph (0, 1 or 7) in a color (red, green, blue); ``D`` only shifts
the odds of color and digit (every color and every digit keeps probability >= 0.2 under every
``D``: positivity), and ``A`` reads the image only through its color and digit (plus ``U``). So
P(A | do(D)) is identified by the front-door formula and differs clearly from P(A | D).

``variant="reveal"`` makes the color equal to ``D`` deterministically: the image then reveals the
treatment, positivity fails, and the overlap warning should fire (design.md §7).
"""

from __future__ import annotations

import numpy as np

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid, table
from .draw import COLOR_NAMES, render_digits

NAME = "colored_digits"
DESCRIPTION = (
    "Front-door with an image mediator: class D shifts the color and digit of image I, "
    "attribute A reads the image; a hidden U drives both D and A."
)
DIGITS = (0, 1, 7)
#: image shape per size of the ladder (mdcm.examples.SIZES); "gpu" is the older name of 28 px
SHAPES = {
    "cpu": (3, 14, 14),
    "gpu": (3, 28, 28),
    "64": (3, 64, 64),
    "128": (3, 128, 128),
    "256": (3, 256, 256),
}

P_U = np.array([[0.5, 0.5]])
P_D_GIVEN_U = np.array([[0.65, 0.25, 0.10], [0.10, 0.25, 0.65]])
P_COLOR_GIVEN_D = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])
P_COLOR_REVEAL = np.eye(3)
P_DIGIT_GIVEN_D = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
COLOR_EFFECT = np.array([-1.4, 0.0, 1.4])
DIGIT_EFFECT = np.array([-0.6, 0.0, 0.6])


def p_a(color: np.ndarray, digit: np.ndarray, u: np.ndarray) -> np.ndarray:
    logit = -1.0 + COLOR_EFFECT[color] + DIGIT_EFFECT[digit] + 2.0 * u
    return bernoulli(sigmoid(logit))


def build_scm(variant: str | None = None, image: str = "I") -> SCM:
    p_color = P_COLOR_REVEAL if variant == "reveal" else P_COLOR_GIVEN_D
    return SCM(
        (
            Node("U", (), lambda: P_U, 2, "latent"),
            Node("D", ("U",), table(P_D_GIVEN_U), 3),
            Node(f"{image}.color", ("D",), table(p_color), 3, "feature"),
            Node(f"{image}.digit", ("D",), table(P_DIGIT_GIVEN_D), 3, "feature"),
            Node("A", (f"{image}.color", f"{image}.digit", "U"), p_a, 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant not in (None, "reveal"):
        raise ValueError(f"{NAME}: unknown variant {variant!r}; use None or 'reveal'")
    if size not in SHAPES:
        raise ValueError(f"{NAME}: unknown size {size!r}; use one of {', '.join(SHAPES)}")
    shape = SHAPES[size]
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    graph = CausalGraph.parse("D -> I -> A; D <-> A")
    schema = Schema(
        graph,
        (
            Variable("D", "categorical", classes=3, label="class"),
            Variable("I", "image", shape=shape, label="image"),
            Variable(
                "A", "categorical", classes=2, label="attribute", values=("absent", "present")
            ),
        ),
    )

    def render(feats, rng):
        return render_digits(feats["I.digit"], feats["I.color"], DIGITS, shape, rng, as_uint8=True)

    desc = DESCRIPTION + f" Colors {', '.join(COLOR_NAMES)}; digits {DIGITS}."
    if variant == "reveal":
        desc += " Variant 'reveal': the color equals D (no overlap; the effect is not learnable)."
    return make_example(
        NAME,
        schema,
        build_scm(variant),
        treatment="D",
        outcome="A",
        description=desc,
        n=n,
        seed=seed,
        features={"I": {"I.color": 3, "I.digit": 3}},
        renderers={"I": render},
        variant=variant,
        **options,
    )
