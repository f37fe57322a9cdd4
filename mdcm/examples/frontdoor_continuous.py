"""Continuous front-door study ``X -> M -> Y; X <-> Y`` (issue #10: continuous variables).

A hidden ``U ~ N(0, 1)`` drives the binary treatment ``X`` (logistic) and the continuous outcome
``Y``; the continuous mediator ``M`` depends on ``X`` only. Linear-Gaussian mechanisms::

    M = 1.0 X + 0.8 e_M,        Y = 2.0 M + 1.5 U + 0.5 e_Y,        e_M, e_Y ~ N(0, 1)

so E[Y | do(X=x)] = 2 x (the front-door effect is 2.0) while the naive E[Y | X=1] - E[Y | X=0]
adds 1.5 (E[U | X=1] - E[U | X=0]) of confounding bias. Exact moments by Gauss–Hermite
enumeration of U, e_M and e_Y.
"""

from __future__ import annotations

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid

NAME = "frontdoor_continuous"
DESCRIPTION = (
    "Front-door with continuous variables: treatment X shifts the mediator M, the outcome Y reads "
    "M; a hidden U drives both X and Y. E[Y | do(X)] differs from E[Y | X] by the confounding."
)


def build_scm() -> SCM:
    return SCM(
        (
            Node("U", (), None, None, "latent"),
            Node("X", ("U",), lambda u: bernoulli(sigmoid(1.5 * u)), 2),
            Node("e_M", (), None, None, "latent"),
            Node("M", ("X", "e_M"), None, None, fn=lambda x, e: 1.0 * x + 0.8 * e),
            Node("e_Y", (), None, None, "latent"),
            Node(
                "Y", ("M", "U", "e_Y"), None, None, fn=lambda m, u, e: 2.0 * m + 1.5 * u + 0.5 * e
            ),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    n = n if n is not None else (6000 if size == "cpu" else 20000)
    schema = Schema(
        CausalGraph.parse("X -> M -> Y; X <-> Y"),
        (
            Variable("X", "categorical", classes=2, label="treatment", values=("no", "yes")),
            Variable("M", "continuous", shape=(1,), label="mediator"),
            Variable("Y", "continuous", shape=(1,), label="outcome"),
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
        **options,
    )
