"""Napkin graph ``W -> Z -> X -> Y; W <-> X; W <-> Y`` (Pearl & Mackenzie 2018), all binary.

P(Y | do(X)) is identifiable (but not by back-door or front-door adjustment); two explicit latents
``U1`` (W, X) and ``U2`` (W, Y) give the exact truth by enumeration.
"""

from __future__ import annotations

import numpy as np

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid

NAME = "napkin"
DESCRIPTION = (
    "Napkin graph: W -> Z -> X -> Y with hidden confounders W <-> X and W <-> Y; "
    "identifiable, but by neither back-door nor front-door."
)


def build_scm() -> SCM:
    half = np.array([[0.5, 0.5]])
    return SCM(
        (
            Node("U1", (), lambda: half, 2, "latent"),
            Node("U2", (), lambda: half, 2, "latent"),
            Node(
                "W", ("U1", "U2"), lambda u1, u2: bernoulli(sigmoid(-2.0 + 1.5 * u1 + 3.5 * u2)), 2
            ),
            Node("Z", ("W",), lambda w: bernoulli(sigmoid(-2.0 + 4.0 * w)), 2),
            Node("X", ("Z", "U1"), lambda z, u1: bernoulli(sigmoid(-2.0 + 3.0 * z + 1.5 * u1)), 2),
            Node("Y", ("X", "U2"), lambda x, u2: bernoulli(sigmoid(-1.5 + 1.0 * x + 3.5 * u2)), 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    graph = CausalGraph.parse("W -> Z -> X -> Y; W <-> X; W <-> Y")
    schema = Schema(graph, tuple(Variable(v, "categorical", classes=2) for v in "WZXY"))
    return make_example(
        NAME,
        schema,
        build_scm(),
        treatment="X",
        outcome="Y",
        description=DESCRIPTION,
        n=n,
        seed=seed,
        **options,
    )
