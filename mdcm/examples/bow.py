"""Bow graph ``X -> Y; X <-> Y``: P(Y | do(X)) is NOT identifiable from observational data.

The generator (a hidden binary ``U``) still knows the true answer, so the product can show that a
model fitting the data perfectly may answer the causal query wrongly (for teaching).
"""

from __future__ import annotations

import numpy as np

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid, table

NAME = "bow"
DESCRIPTION = (
    "Bow graph X -> Y with a hidden confounder X <-> Y: the effect of X on Y is not "
    "identifiable from observational data."
)


def build_scm() -> SCM:
    return SCM(
        (
            Node("U", (), lambda: np.array([[0.5, 0.5]]), 2, "latent"),
            Node("X", ("U",), table(np.array([[0.8, 0.2], [0.25, 0.75]])), 2),
            Node("Y", ("X", "U"), lambda x, u: bernoulli(sigmoid(-1.5 + 1.0 * x + 2.5 * u)), 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    schema = Schema(
        CausalGraph.parse("X -> Y; X <-> Y"),
        (
            Variable("X", "categorical", classes=2, label="treatment", values=("no", "yes")),
            Variable("Y", "categorical", classes=2, label="recovery", values=("no", "yes")),
        ),
    )
    return make_example(
        NAME,
        schema,
        build_scm(),
        treatment="X",
        outcome="Y",
        description=DESCRIPTION,
        n=n,
        seed=seed,
        identifiable=False,
        **options,
    )
