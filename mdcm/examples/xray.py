"""Chest-X-ray-like front-door study: ``C -> X -> N; C <-> N`` (design.md §2 worked example).

``C`` (2 classes, e.g. a referring clinic) shifts the odds of a hidden image feature, the opacity
of the lung (none / small / large), drawn into a procedural grayscale X-ray ``X`` with anatomy
nuisance; the finding ``N`` (2 classes) depends on the opacity and on a hidden ``U`` that also
drives ``C``. Every opacity has probability >= 0.15 under every ``C`` (positivity).
"""

from __future__ import annotations

import numpy as np

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid, table
from .draw import OPACITY_NAMES, render_xray

NAME = "xray"
DESCRIPTION = (
    "Front-door with a chest-X-ray-like image: C shifts the lung opacity seen in X, the "
    "finding N reads the opacity; a hidden U drives both C and N."
)
#: image shape per size of the ladder (mdcm.examples.SIZES); "gpu" is the older name of 28 px
SHAPES = {
    "cpu": (1, 16, 16),
    "gpu": (1, 28, 28),
    "64": (1, 64, 64),
    "128": (1, 128, 128),
    "256": (1, 256, 256),
}

P_U = np.array([[0.5, 0.5]])
P_C_GIVEN_U = np.array([[0.8, 0.2], [0.2, 0.8]])
P_OPACITY_GIVEN_C = np.array([[0.6, 0.25, 0.15], [0.2, 0.35, 0.45]])
OPACITY_EFFECT = np.array([0.0, 1.0, 2.2])


def p_n(opacity: np.ndarray, u: np.ndarray) -> np.ndarray:
    return bernoulli(sigmoid(-2.0 + OPACITY_EFFECT[opacity] + 2.2 * u))


def build_scm() -> SCM:
    return SCM(
        (
            Node("U", (), lambda: P_U, 2, "latent"),
            Node("C", ("U",), table(P_C_GIVEN_U), 2),
            Node("X.opacity", ("C",), table(P_OPACITY_GIVEN_C), 3, "feature"),
            Node("N", ("X.opacity", "U"), p_n, 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    if size not in SHAPES:
        raise ValueError(f"{NAME}: unknown size {size!r}; use one of {', '.join(SHAPES)}")
    shape = SHAPES[size]
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    schema = Schema(
        CausalGraph.parse("C -> X -> N; C <-> N"),
        (
            Variable("C", "categorical", classes=2, label="symptom", values=("absent", "present")),
            Variable("X", "image", shape=shape, label="chest X-ray"),
            Variable(
                "N", "categorical", classes=2, label="diagnosis", values=("negative", "positive")
            ),
        ),
    )

    def render(feats, rng):
        return render_xray(feats["X.opacity"], shape, rng, as_uint8=True)

    return make_example(
        NAME,
        schema,
        build_scm(),
        treatment="C",
        outcome="N",
        description=DESCRIPTION + f" Opacity classes: {', '.join(OPACITY_NAMES)}.",
        n=n,
        seed=seed,
        features={"X": {"X.opacity": 3}},
        renderers={"X": render},
        **options,
    )
