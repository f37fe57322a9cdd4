"""Queries by sampling (mdcm/query.py) against exact values.

The DCMs here have hand-set generators (conditional probability tables), so every query has an
exact answer computed independently by enumerating the tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from mechanisms import HandSet

from mdcm.data import Dataset, Study
from mdcm.graph import CausalGraph
from mdcm.model import DCM, ModelConfig
from mdcm.query import (
    QueryError,
    effect_table,
    interventional_distribution,
    overlap_warning,
    predictability,
    tvd,
)
from mdcm.variables import Schema, Variable

SMALL = ModelConfig(noise_dim=2, confounder_dim=2, hidden=8, code_dim=4, image_hidden=16)


class Table(HandSet):
    """Categorical mechanism given by a table P(V | parents) indexed by parent classes."""

    categorical = True

    def __init__(self, table: np.ndarray, parent_classes: list[int]) -> None:
        super().__init__(SMALL.noise_dim)
        self.logits = torch.log(torch.as_tensor(table, dtype=torch.float32).clamp_min(1e-12))
        self.pc = parent_classes

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        idx = torch.zeros(cond.shape[0], dtype=torch.long)
        off = 0
        for k in self.pc:
            idx = idx * k + cond[:, off : off + k].argmax(1)
            off += k
        flat = self.logits.reshape(-1, self.logits.shape[-1])
        return flat[idx]


# Z -> X -> Y; Z -> Y (all binary); tables
PZ = np.array([0.3, 0.7])
PX_Z = np.array([[0.8, 0.2], [0.25, 0.75]])  # [z, x]
PY_XZ = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.5, 0.5], [0.15, 0.85]]])  # [x, z, y]


def backdoor_dcm() -> DCM:
    g = CausalGraph.parse("Z -> X -> Y; Z -> Y")
    m = DCM(Schema(g, tuple(Variable(v, "categorical", classes=2) for v in g.nodes)), SMALL)
    m.generators["Z"] = Table(PZ, [])
    m.generators["X"] = Table(PX_Z, [2])
    assert m.parents["Y"] == ("Z", "X")  # declaration order
    m.generators["Y"] = Table(PY_XZ.transpose(1, 0, 2), [2, 2])
    return m


def exact(do: dict[str, int], given: dict[str, int], outcome: str) -> np.ndarray:
    """Enumerate the mutilated model: P(outcome | do, given)."""
    joint = np.zeros(2)
    for z, x, y in itertools.product(range(2), repeat=3):
        vals = {"Z": z, "X": x, "Y": y}
        if any(vals[k] != v for k, v in do.items()):
            continue
        p = PZ[z]
        p *= 1.0 if "X" in do else PX_Z[z, x]
        p *= PY_XZ[x, z, y]
        if all(vals[k] == v for k, v in given.items()):
            joint[vals[outcome]] += p
    return joint / joint.sum()


def test_interventional_matches_exact() -> None:
    m = backdoor_dcm()
    for x in (0, 1):
        r = interventional_distribution(m, "Y", {"X": x}, n=20000, seed=x)
        truth = exact({"X": x}, {}, "Y")
        assert tvd(r.probs, truth) < 0.015
        assert r.acceptance_rate == 1.0
        assert r.identification is not None and r.identification.identifiable
        assert r.warning is None
        assert np.all(r.ci[:, 0] <= r.probs) and np.all(r.probs <= r.ci[:, 1])
    # do() differs from conditioning here (Z confounds X and Y), so the test has teeth
    assert tvd(exact({"X": 1}, {}, "Y"), exact({}, {"X": 1}, "Y")) > 0.05


@pytest.mark.parametrize(
    ("do", "given", "outcome"),
    [
        ({"X": 1}, {"Z": 0}, "Y"),  # evidence on a non-descendant
        ({"Z": 1}, {"Y": 0}, "X"),  # evidence on a descendant (Bayes inversion)
        ({}, {"Y": 1}, "Z"),  # plain observational conditional
    ],
)
def test_rejection_sampling_matches_exact(do, given, outcome) -> None:
    m = backdoor_dcm()
    r = interventional_distribution(m, outcome, do, n=15000, seed=3, given=given)
    truth = exact(do, given, outcome)
    se = np.sqrt(truth * (1 - truth) / r.n)
    assert np.all(np.abs(r.probs - truth) < 4 * se + 1e-3), (r.probs, truth)
    # the acceptance rate is the probability of the evidence under do(...)
    p_ev = sum(exact(do, {}, k)[v] for k, v in given.items()) if len(given) == 1 else None
    assert abs(r.acceptance_rate - p_ev) < 0.02
    assert r.n == 15000


def test_rare_evidence_is_an_error() -> None:
    m = backdoor_dcm()
    m.generators["Y"] = Table(np.array([[[1.0, 0.0]] * 2] * 2), [2, 2])  # Y is never 1
    with pytest.raises(QueryError, match="too rare"):
        interventional_distribution(m, "X", {}, n=500, given={"Y": 1})


def test_bad_queries() -> None:
    m = backdoor_dcm()
    with pytest.raises(QueryError, match="unknown variable"):
        interventional_distribution(m, "Q", {"X": 1})
    with pytest.raises(QueryError, match="both intervened on and observed"):
        interventional_distribution(m, "Y", {"X": 1}, given={"X": 1})
    with pytest.raises(QueryError, match="class 0"):
        interventional_distribution(m, "Y", {"X": 1}, given={"Z": 5})
    with pytest.raises(QueryError):
        interventional_distribution(m, "Y", {"X": 7})


def _study(graph: CausalGraph, schema: Schema, columns: dict) -> Study:
    return Study(schema, (Dataset("observational", columns),))


def test_effect_table_against_exact_and_naive() -> None:
    m = backdoor_dcm()
    data = m.sample(30000, seed=9)
    study = _study(m.schema.graph, m.schema, {k: v.numpy() for k, v in data.items()})
    res = effect_table(m, study, "X", "Y", n=20000, seed=1)
    assert [r.value for r in res.rows] == [0, 1]
    for r in res.rows:
        assert tvd(r.probs, exact({"X": r.value}, {}, "Y")) < 0.015
        assert tvd(r.naive, exact({}, {"X": r.value}, "Y")) < 0.02
        assert r.naive_n > 0
    ate = exact({"X": 1}, {}, "Y")[1] - exact({"X": 0}, {}, "Y")[1]
    lo, hi = res.rows[1].effect_ci
    assert lo < ate < hi and hi - lo < 0.05
    assert abs(res.ate - ate) < 0.02
    assert res.identification.identifiable and res.warning is None


def test_non_identifiable_query_warns() -> None:
    g = CausalGraph.parse("X -> Y; X <-> Y")
    m = DCM(Schema(g, tuple(Variable(v, "categorical", classes=2) for v in g.nodes)), SMALL)
    r = interventional_distribution(m, "Y", {"X": 1}, n=200)
    assert r.identification is not None and not r.identification.identifiable
    assert r.warning and "not identifiable" in r.warning


def test_overlap_warning_fires_only_without_overlap() -> None:
    g = CausalGraph.parse("D -> M -> A; D <-> A")
    schema = Schema(
        g,
        (
            Variable("D", "categorical", classes=3),
            Variable("M", "categorical", classes=3),
            Variable("A", "categorical", classes=2),
        ),
    )
    rng = np.random.default_rng(0)
    d = rng.integers(0, 3, 3000)
    a = rng.integers(0, 2, 3000)
    reveal = _study(g, schema, {"D": d, "M": d.copy(), "A": a})
    w = overlap_warning(reveal, g, "D", "A")
    assert w is not None and "M (mediator" in w and "extrapolation" in w
    m_noisy = np.where(rng.random(3000) < 0.6, d, rng.integers(0, 3, 3000))
    ok = _study(g, schema, {"D": d, "M": m_noisy, "A": a})
    assert overlap_warning(ok, g, "D", "A") is None


def test_predictability_of_images() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, 800)
    ims = rng.normal(0, 0.3, (800, 1, 6, 6)).astype(np.float32)
    ims[:, 0, 0, 0] += 3.0 * x  # one pixel reveals x
    assert predictability(x, ims, "image") > 0.95
    assert predictability(x, rng.normal(size=(800, 1, 6, 6)), "image") < 0.7
