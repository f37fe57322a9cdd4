"""Back-door study ``Z -> X -> Y; Z -> Y`` with a continuous confounder ``Z ~ N(0, 1)``.

``X | Z`` and ``Y | X, Z`` are logistic, so P(Y | do(X=x)) = E_Z[sigmoid(a + b x + c Z)] is a
Gaussian integral: computed exactly (to ~1e-12) by Gauss–Hermite quadrature.
"""

from __future__ import annotations

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid

NAME = "backdoor"
DESCRIPTION = (
    "Back-door adjustment: a continuous confounder Z ~ N(0,1) drives treatment X and "
    "outcome Y; P(Y | do(X)) = E_Z[P(Y | X, Z)]."
)


def build_scm() -> SCM:
    return SCM(
        (
            Node("Z", (), None, None),
            Node("X", ("Z",), lambda z: bernoulli(sigmoid(0.2 + 1.8 * z)), 2),
            Node("Y", ("X", "Z"), lambda x, z: bernoulli(sigmoid(-0.6 + 1.0 * x + 1.6 * z)), 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    schema = Schema(
        CausalGraph.parse("Z -> X -> Y; Z -> Y"),
        (
            Variable("Z", "continuous", shape=(1,), label="risk score"),
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
        **options,
    )
