"""An experiment makes a non-identifiable effect identifiable: ``W -> X -> Y; W <-> X; W <-> Y``.

From observational data alone P(Y | do(X)) is not identifiable here (X and Y share no latent, but
W is confounded with both, and W is the only way in: ID fails). A second dataset in which the
experimenter randomised ``W`` row by row (``intervention.json``: ``{"do": {"W": null}}``) cuts
both confounders: P(Y | do(X)) = P_do(W)(Y | X) (Lee, Correa & Bareinboim 2019). All binary; two
hidden confounders ``U_WX`` and ``U_WY``.
"""

from __future__ import annotations

import numpy as np

from ..graph import CausalGraph
from ..variables import Schema, Variable
from ._scm import SCM, Example, Node, bernoulli, make_example, sigmoid

NAME = "experiment"
DESCRIPTION = (
    "An experiment makes the effect identifiable: W is confounded with X and with Y; from "
    "observations alone P(Y | do(X)) is not identifiable, with a dataset in which W was "
    "randomised it is P(Y | X) in that experiment."
)
P_U = np.array([[0.5, 0.5]])


def build_scm() -> SCM:
    return SCM(
        (
            Node("U_WX", (), lambda: P_U, 2, "latent"),
            Node("U_WY", (), lambda: P_U, 2, "latent"),
            Node(
                "W", ("U_WX", "U_WY"), lambda a, b: bernoulli(sigmoid(-1.5 + 1.0 * a + 3.0 * b)), 2
            ),
            Node("X", ("W", "U_WX"), lambda w, a: bernoulli(sigmoid(-1.5 + 2.5 * w + 1.0 * a)), 2),
            Node("Y", ("X", "U_WY"), lambda x, b: bernoulli(sigmoid(-1.0 + 1.0 * x + 2.5 * b)), 2),
        )
    )


def build(
    size: str = "cpu", n: int | None = None, seed: int = 0, variant: str | None = None, **options
) -> Example:
    """The observational dataset plus (unless other ``interventions`` are given) one dataset
    ``do_W=random`` of the same size in which W was randomised row by row."""
    if variant is not None:
        raise ValueError(f"{NAME}: unknown variant {variant!r}")
    n = n if n is not None else (4000 if size == "cpu" else 20000)
    options = dict(options)
    if not options.get("interventions"):
        options["interventions"] = [{"W": None}]
    schema = Schema(
        CausalGraph.parse("W -> X -> Y; W <-> X; W <-> Y"),
        (
            Variable("W", "categorical", classes=2, label="assignment"),
            Variable("X", "categorical", classes=2, label="treatment", values=("no", "yes")),
            Variable("Y", "categorical", classes=2, label="outcome", values=("bad", "good")),
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
        identifiable=True,
        **options,
    )
