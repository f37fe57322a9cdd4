"""Slow end-to-end checks of the built-ins beyond the front-door (issue #10): default CPU
training recovers the exact answers of a continuous front-door, of a study whose effect is
identifiable only thanks to an experiment, and of a chain of two images with a conditional query
(``pytest -m slow tests/test_train_slow_generality.py``).

Oracles: the examples' exact answers by enumeration of the generating model (Gauss–Hermite for
the continuous noise). Bars: TVD <= 0.03 for categorical outcomes, |mean error| <= 0.1 SD for
continuous ones; the sample sizes keep the sampling error of the check below a third of the bar.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mdcm.examples import load_example
from mdcm.model import DCM
from mdcm.plan import make_plan
from mdcm.query import sample, tvd
from mdcm.train import TrainConfig, train

pytestmark = pytest.mark.slow


@functools.cache
def trained(name: str, experiment: str | None = None):
    exps = [{experiment: None}] if experiment else ()
    ex = load_example(name, size="cpu", seed=0, interventions=exps)
    torch.manual_seed(0)
    model = DCM(ex.study.schema)
    res = train(model, make_plan(ex.study.graph, ex.study.interventions), ex.study, TrainConfig())
    return ex, model, res


def test_continuous_front_door_mean_effect() -> None:
    ex, model, res = trained("frontdoor_continuous")
    for x in (0, 1):
        mean, sd = ex.truth_mean("Y", {"X": x})
        y = model.sample(40000, {"X": x}, seed=x)["Y"].numpy()
        assert abs(y.mean() - mean) <= 0.1 * sd, (x, y.mean(), mean, sd, res)
    naive = ex.naive_mean("Y", {"X": 1})[0] - ex.naive_mean("Y", {"X": 0})[0]
    effect = (
        model.sample(40000, {"X": 1}, seed=5)["Y"].mean()
        - model.sample(40000, {"X": 0}, seed=6)["Y"].mean()
    )
    assert abs(float(effect) - 2.0) < abs(naive - 2.0) / 3  # most of the bias is gone


def test_experiment_makes_the_effect_learnable() -> None:
    ex, model, res = trained("experiment")
    assert {frozenset(d.do) for d in ex.study.datasets} == {frozenset(), frozenset({"W"})}
    for x in (0, 1):
        y = model.sample(40000, {"X": x}, seed=x)["Y"].numpy()
        p = np.bincount(y, minlength=2) / len(y)
        assert tvd(p, ex.truth("Y", {"X": x})) <= 0.03, (x, p, ex.truth("Y", {"X": x}), res)


def test_two_images_conditional_query() -> None:
    ex, model, res = trained("two_images")
    for x in (0, 1):
        for m in (0, 1):
            y = sample(model, 20000, {"X": x}, given={"M": m}, seed=2 * x + m)["Y"].numpy()
            p = np.bincount(y, minlength=2) / len(y)
            truth = ex.truth("Y", {"X": x}, {"M": m})
            assert tvd(p, truth) <= 0.03, (x, m, p, truth, res)


def test_front_door_with_an_experiment_is_no_worse() -> None:
    """An experiment on C can only help P(N | do(C)) (issue #10: the regime reaches N's stage)."""
    errs = {}
    for experiment in (None, "C"):
        ex, model, _ = trained("xray", experiment)
        errs[experiment] = max(
            tvd(
                np.bincount(model.sample(20000, {"C": c}, seed=c)["N"].numpy(), minlength=2)
                / 20000,
                ex.truth("N", {"C": c}),
            )
            for c in (0, 1)
        )
    assert errs["C"] <= max(errs[None], 0.03), errs
