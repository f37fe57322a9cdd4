"""Counterfactual queries (mdcm.counterfactual) and the exact counterfactual truth of the
built-ins (Example.counterfactual_truth): the twin network shares all noise, rejection matches
exact values, hostile inputs get specific messages, and the truth agrees with two independent
oracles (a response-function enumerator and a Monte-Carlo twin sampler of the generators)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from cf_oracle import NoiseSCM
from mechanisms import HandSet

from mdcm.counterfactual import (
    COUPLING_WARNING,
    counterfactual_distribution,
    counterfactual_identification,
    counterfactual_samples,
)
from mdcm.examples import EXAMPLES, load_example
from mdcm.graph import CausalGraph
from mdcm.model import DCM, ModelConfig
from mdcm.query import QueryError
from mdcm.variables import Schema, Variable

F = frozenset()


# --------------------------------------------------------------------------- exact truth
def _noise_scm(ex) -> tuple[NoiseSCM, dict[str, str]]:
    """The built-in's discrete SCM (latents and image features as nodes) in the oracle's
    form: the same conditional tables, inverse-CDF mechanisms in class order."""
    scm = ex.scm
    name = {n.name: n.name.replace(".", "_") for n in scm.nodes}
    g = CausalGraph.build(
        [name[n.name] for n in scm.nodes],
        [(name[p], name[n.name]) for n in scm.nodes for p in n.parents],
    )
    card = {name[n.name]: n.classes for n in scm.nodes}
    oracle = NoiseSCM(g, 0, card)
    for n in scm.nodes:
        v = name[n.name]
        ins = oracle.inputs[v]  # the graph's parent order
        rows = []
        for cfg in itertools.product(*(range(card[p]) for p in ins)):
            at = dict(zip(ins, cfg, strict=True))
            args = [np.array([at[name[p]]]) for p in n.parents]
            rows.append(np.broadcast_to(np.asarray(n.cpt(*args), float), (1, n.classes))[0])
        oracle.cpt[v] = np.array(rows)
    return oracle, name


DISCRETE = [
    n
    for n in EXAMPLES
    if all(node.classes is not None and node.fn is None for node in load_example(n, n=20).scm.nodes)
]


@pytest.mark.parametrize("name", DISCRETE)
def test_counterfactual_truth_matches_response_function_enumeration(name):
    ex = load_example(name, n=20)
    oracle, rename = _noise_scm(ex)
    t, y = ex.treatment, ex.outcome
    k = ex.schema[t].classes
    for x, x0 in itertools.product(range(k), range(k)):
        want = [
            oracle.conditional({(rename[y], frozenset({(rename[t], x)})): c}, {(rename[t], F): x0})
            for c in range(ex.schema[y].classes)
        ]
        np.testing.assert_allclose(ex.counterfactual_truth(y, {t: x0}, {t: x}), want, atol=1e-12)


def _twin_monte_carlo(ex, outcome, evidence, do, n, seed=0):
    """Sample the generating SCM twice on the SAME uniform/normal noise per node (inverse CDF,
    as SCM.sample draws it), the second time under do(); keep units matching the evidence."""
    rng = np.random.default_rng(seed)
    noise = {
        node.name: rng.standard_normal(n) if node.classes is None else rng.random(n)
        for node in ex.scm.nodes
    }

    def world(do):
        out = {}
        for node in ex.scm.nodes:
            if node.name in do:
                out[node.name] = np.full(n, do[node.name])
            elif node.fn is not None:
                out[node.name] = node.fn(*[out[q] for q in node.parents])
            elif node.classes is None:
                out[node.name] = noise[node.name]
            else:
                p = np.broadcast_to(node.cpt(*[out[q] for q in node.parents]), (n, node.classes))
                c = np.cumsum(p, axis=1)[:, :-1]
                out[node.name] = (c < noise[node.name][:, None]).sum(axis=1)
        return out

    fact, cf = world({}), world(do)
    keep = np.ones(n, dtype=bool)
    for k, v in evidence.items():
        keep &= fact[k] == v
    return cf[outcome][keep]


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_counterfactual_truth_matches_a_monte_carlo_twin_network(name):
    ex = load_example(name, n=20)
    t, y = ex.treatment, ex.outcome
    ev, do = {t: 0}, {t: ex.schema[t].classes - 1}
    ys = _twin_monte_carlo(ex, y, ev, do, 200_000)
    if ex.schema[y].kind == "categorical":
        want = ex.counterfactual_truth(y, ev, do)
        got = np.bincount(ys.astype(int), minlength=len(want)) / len(ys)
        se = np.sqrt(want * (1 - want) / len(ys))
        assert np.all(np.abs(got - want) < 5 * se + 1e-9), (got, want)
    else:
        mean, sd = ex.counterfactual_truth_mean(y, ev, do)
        assert abs(ys.mean() - mean) < 5 * sd / np.sqrt(len(ys))
        assert abs(ys.std() - sd) < 0.02 * sd


def test_counterfactual_truth_reduces_to_naive_and_truth():
    for name in EXAMPLES:
        ex = load_example(name, n=20)
        t, y = ex.treatment, ex.outcome
        if ex.schema[y].kind != "categorical":
            continue
        np.testing.assert_allclose(ex.counterfactual_truth(y, {t: 1}, {}), ex.naive(y, {t: 1}))
        np.testing.assert_allclose(ex.counterfactual_truth(y, {}, {t: 1}), ex.truth(y, {t: 1}))
        # consistency: P(Y_{X=x} | X=x) = P(Y | X=x)
        np.testing.assert_allclose(ex.counterfactual_truth(y, {t: 1}, {t: 1}), ex.naive(y, {t: 1}))


def test_counterfactual_truth_refuses_bad_questions():
    ex = load_example("colored_digits", n=20)
    with pytest.raises(ValueError, match="'I' is an image"):
        ex.counterfactual_truth("A", {"I": 0}, {"D": 1})
    with pytest.raises(ValueError, match="outcome 'I' is an image"):
        ex.counterfactual_truth("I", {"D": 0}, {"D": 1})
    with pytest.raises(ValueError, match="D=3 must be a class index"):
        ex.counterfactual_truth("A", {"D": 3}, {"D": 1})
    with pytest.raises(ValueError, match="unknown variable 'Q'"):
        ex.counterfactual_truth("A", {"Q": 0}, {"D": 1})
    with pytest.raises(ValueError, match="hidden confounder"):
        ex.counterfactual_truth("A", {"U": 0}, {"D": 1})
    cont = load_example("backdoor", n=20)
    with pytest.raises(ValueError, match="'Z' is continuous"):
        cont.counterfactual_truth("Y", {"Z": 0}, {"X": 1})


# --------------------------------------------------------------------------- twin network
SMALL = ModelConfig(noise_dim=2, confounder_dim=2, hidden=8, code_dim=4, image_hidden=16)


class ConfTable(HandSet):
    """Categorical mechanism from a table P(V | parents, U): U = [first confounder value > 0]
    (a fair coin, shared by both ends of the bidirected edge), parents' classes from their
    one-hot inputs. Gumbel-max on the table's logits (mdcm.nets.gumbel_one_hot)."""

    categorical = True

    def __init__(self, table: np.ndarray, parent_classes: list[int], confounded: bool) -> None:
        super().__init__(SMALL.noise_dim)
        self.logits = torch.log(torch.as_tensor(table, dtype=torch.float32).clamp_min(1e-30))
        self.pc, self.confounded = parent_classes, confounded

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        idx = torch.zeros(cond.shape[0], dtype=torch.long)
        off = 0
        for k in self.pc:
            idx = idx * k + cond[:, off : off + k].argmax(1)
            off += k
        if self.confounded:
            u = noise[:, self.z_dim] > 0
            idx = idx * 2 + u.long()
        return self.logits.reshape(-1, self.logits.shape[-1])[idx]


PZ = np.array([0.35, 0.65])
PX_Z = np.array([[0.75, 0.25], [0.3, 0.7]])  # [z, x]
PY_ZX = np.array([[[0.8, 0.2], [0.45, 0.55]], [[0.6, 0.4], [0.1, 0.9]]])  # [z, x, y]


def backdoor_dcm() -> DCM:
    g = CausalGraph.parse("Z -> X -> Y; Z -> Y")
    m = DCM(Schema(g, tuple(Variable(v, "categorical", classes=2) for v in g.nodes)), SMALL)
    assert m.parents["Y"] == ("Z", "X")
    m.generators["Z"] = ConfTable(PZ[None], [], False)
    m.generators["X"] = ConfTable(PX_Z, [2], False)
    m.generators["Y"] = ConfTable(PY_ZX, [2, 2], False)
    return m


PX_U = np.array([[0.8, 0.2], [0.3, 0.7]])  # [u, x]
PY_XU = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.5, 0.5], [0.05, 0.95]]])  # [x, u, y]


def bow_dcm(px_u=PX_U) -> DCM:
    g = CausalGraph.parse("X -> Y; X <-> Y")
    m = DCM(Schema(g, tuple(Variable(v, "categorical", classes=2) for v in g.nodes)), SMALL)
    m.generators["X"] = ConfTable(px_u, [], True)
    m.generators["Y"] = ConfTable(PY_XU, [2], True)
    return m


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + np.exp(-t))


def test_no_intervention_gives_the_factual_world_unit_by_unit():
    for name in ("colored_digits", "backdoor", "napkin"):
        ex = load_example(name, n=50)
        model = DCM(ex.schema, SMALL)
        s = counterfactual_samples(model, {}, {}, 300, seed=3)
        assert s.n == 300 and s.acceptance_rate == 1.0
        for v in model.order:
            assert torch.equal(s.factual[v], s.counterfactual[v]), (name, v)


def test_intervention_changes_only_descendants():
    ex = load_example("napkin", n=50)
    model = DCM(ex.schema, SMALL)
    s = counterfactual_samples(model, {"X": 0}, {"X": 1}, 400, seed=1)
    assert (s.factual["X"] == 0).all() and (s.counterfactual["X"] == 1).all()
    for v in ("W", "Z"):  # non-descendants of X share every noise, so they do not move
        assert torch.equal(s.factual[v], s.counterfactual[v])
    hand = counterfactual_samples(backdoor_dcm(), {"X": 0}, {"X": 1}, 400, seed=1)
    assert torch.equal(hand.factual["Z"], hand.counterfactual["Z"])
    assert (hand.factual["Y"] != hand.counterfactual["Y"]).any()
    # images: each factual / counterfactual pair is one unit (the same noise), and do(D) moves it
    ex = load_example("colored_digits", n=50)
    model = DCM(ex.schema, SMALL)
    s = counterfactual_samples(model, {"D": 0}, {"D": 2}, 64, seed=0)
    assert s.factual["I"].shape == s.counterfactual["I"].shape == (64, *ex.schema["I"].shape)
    assert not torch.equal(s.factual["I"], s.counterfactual["I"])


def test_rejection_matches_the_models_exact_counterfactuals():
    """Back-door with hand-set tables: the effect of treatment on the treated (identifiable:
    Σ_z P(y | x, z) P(z | x')) and the probability of necessity (not identifiable: under the
    Gumbel-max coupling of the model it is [σ(b0 - b1) - σ(a0 - a1)]^+ per z)."""
    model = backdoor_dcm()
    n = 20_000
    r = counterfactual_distribution(model, "Y", {"X": 0}, {"X": 1}, n, seed=0)
    pz_x0 = PZ * PX_Z[:, 0] / (PZ * PX_Z[:, 0]).sum()
    ett = float((PY_ZX[:, 1, 1] * pz_x0).sum())
    se = np.sqrt(ett * (1 - ett) / r.n)
    assert abs(r.probs[1] - ett) < 4 * se, (r.probs, ett)
    assert r.identifiable and r.warning is None and "IDC*" in r.identification.reason
    assert abs(r.acceptance_rate - float((PZ * PX_Z[:, 0]).sum())) < 0.02
    naive = float(PY_ZX[:, 0, 1] @ pz_x0)  # the same units in the factual world: P(Y=1 | X=0)
    assert abs(r.factual.probs[1] - naive) < 4 * np.sqrt(naive * (1 - naive) / r.n)
    do1 = float(PY_ZX[:, 1, 1] @ PZ)
    assert abs(r.interventional.probs[1] - do1) < 4 * np.sqrt(do1 * (1 - do1) / n)
    # probability of necessity P(Y_{X=0}=0 | X=1, Y=1)
    pn = counterfactual_distribution(model, "Y", {"X": 1, "Y": 1}, {"X": 0}, n, seed=2)
    a, b = np.log(PY_ZX[:, 1, :]), np.log(PY_ZX[:, 0, :])
    both = np.maximum(0.0, _sigmoid(b[:, 0] - b[:, 1]) - _sigmoid(a[:, 0] - a[:, 1]))
    w = PZ * PX_Z[:, 1]
    want = float((w * both).sum() / (w * PY_ZX[:, 1, 1]).sum())
    assert abs(pn.probs[0] - want) < 4 * np.sqrt(want * (1 - want) / pn.n), (pn.probs, want)
    assert not pn.identifiable and pn.warning.startswith(COUPLING_WARNING)


def test_confounder_noise_is_shared_across_worlds():
    """Bow with a hand-set coin U: the effect of treatment on the treated of the model is
    Σ_u P(u | X=0) P(Y=1 | X=1, u), which needs the same U in both worlds."""
    model = bow_dcm()
    r = counterfactual_distribution(model, "Y", {"X": 0}, {"X": 1}, 20_000, seed=5)
    pu = 0.5 * PX_U[:, 0] / (0.5 * PX_U[:, 0]).sum()
    want = float(pu @ PY_XU[1, :, 1])
    assert abs(r.probs[1] - want) < 4 * np.sqrt(want * (1 - want) / r.n)
    # binary X: P_* would identify it ([P(y | do(x)) - P(y, x)] / P(x')), but the data do not
    assert not r.identifiable and not r.warning.startswith(COUPLING_WARNING)
    assert "hedge" in r.warning and "binary-treatment" in r.warning
    json.dumps(r.to_json())  # serialisable for the CLI's summary.json


@pytest.mark.parametrize(
    "evidence, do, needle",
    [
        ({"Q": 0}, {"X": 1}, "evidence names unknown variable 'Q'"),
        ({"X": 2}, {"X": 1}, "evidence X=2: out of range, X has classes 0 … 1"),
        ({"X": "a"}, {"X": 1}, "evidence X='a': must be a class index"),
        ({"X": True}, {"X": 1}, "evidence X=True"),
        ({"X": 0}, {"Q": 1}, "do names unknown variable 'Q'"),
        ({"X": 0}, {"X": 5}, "class must be in 0..1"),
    ],
)
def test_bad_evidence_and_interventions_are_named(evidence, do, needle):
    with pytest.raises(QueryError, match=needle.replace("(", r"\(")):
        counterfactual_samples(bow_dcm(), evidence, do, 100)


def test_evidence_on_images_and_continuous_variables_is_refused():
    ex = load_example("colored_digits", n=50)
    with pytest.raises(QueryError, match="evidence on I: I is an image"):
        counterfactual_samples(DCM(ex.schema, SMALL), {"I": 0}, {"D": 1}, 100)
    ex = load_example("backdoor", n=50)
    with pytest.raises(QueryError, match="evidence on Z: Z is continuous"):
        counterfactual_samples(DCM(ex.schema, SMALL), {"Z": 0}, {"X": 1}, 100)


def test_impossible_and_vanishing_evidence():
    never = np.array([[1.0, 0.0], [1.0, 0.0]])  # X is never 1
    with pytest.raises(QueryError, match=r"evidence X=1 never occurs .*impossible evidence"):
        counterfactual_samples(bow_dcm(never), {"X": 1}, {"X": 0}, 200)
    rare = np.array([[0.999, 0.001], [0.999, 0.001]])
    with pytest.raises(QueryError, match=r"evidence X=1 is too rare .* for n=2000"):
        counterfactual_samples(bow_dcm(rare), {"X": 1}, {"X": 0}, 2000, max_draws=20_000)


def test_bad_outcomes_are_named():
    with pytest.raises(QueryError, match="outcome names unknown variable 'Q'"):
        counterfactual_distribution(bow_dcm(), "Q", {"X": 0}, {"X": 1}, 100)
    with pytest.raises(QueryError, match="X is both intervened on and the outcome"):
        counterfactual_distribution(bow_dcm(), "X", {"X": 0}, {"X": 1}, 100)


def test_verdicts_of_built_in_questions():
    """The effect of treatment on the treated on every built-in: identifiable except in the bow
    (the napkin and the experiment through the binary-treatment identity)."""
    for name in EXAMPLES:
        ex = load_example(name, n=50)
        t = ex.treatment
        interventions = [list(d.do) for d in ex.study.datasets if d.do]
        r = counterfactual_identification(ex.schema, ex.outcome, {t: 1}, {t: 0}, interventions)
        assert r.identifiable is (name != "bow"), (name, r.reason)
    img = load_example("xray", n=50)
    r = counterfactual_identification(img.schema, "N", {"X": np.zeros(img.schema["X"].shape)}, {})
    assert r.identifiable  # P(N_{X=x}) = P(N | do(X)): back-door through C


# --------------------------------------------------------------------------- unit level
def test_gumbel_posterior_matches_rejection_from_the_prior():
    """g ~ Gumbel conditioned on argmax(logits + g) = k: every draw picks k, and its law is the
    prior's restricted to that event (compared with rejection sampling)."""
    from mdcm.counterfactual import gumbel_posterior

    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.3, -1.0, 1.2]]).expand(200_000, 3)
    u = torch.rand(logits.shape, generator=gen).clamp(1e-10, 1 - 1e-7)
    prior = logits - torch.log(-torch.log(u))
    for k in range(3):
        post = logits + gumbel_posterior(logits, torch.full((len(logits),), k), gen)
        assert (post.argmax(1) == k).all()
        ref = prior[prior.argmax(1) == k]
        assert torch.allclose(post.mean(0), ref.mean(0), atol=0.03), (k, post.mean(0), ref.mean(0))
        assert torch.allclose(post.std(0), ref.std(0), atol=0.03)


def _xray_model():
    ex = load_example("xray", n=50, seed=0)
    torch.manual_seed(0)
    return ex, DCM(ex.schema, SMALL)


def test_unit_counterfactual_without_intervention_is_the_unit_itself():
    from mdcm.counterfactual import unit_counterfactual

    ex, model = _xray_model()
    x_obs = ex.study.observational.columns["X"][0]
    r = unit_counterfactual(model, "X", x_obs, {}, n=64, particles=512)
    code = model.coders["X"].encode(model.encode("X", x_obs, 1))
    want = model.decode("X", model.coders["X"].decode(code))
    assert torch.allclose(r.counterfactual["X"], want.expand_as(r.counterfactual["X"]), atol=1e-4)
    for v in ("C", "N"):
        assert torch.equal(r.factual[v], r.counterfactual[v])
    assert 1 <= r.ess <= 512 and "model-dependent" in r.note


def test_unit_abduction_weighs_the_parents_by_the_image_likelihood():
    """Posterior of the image's parent C given the observed X: P(c) p(code | c) normalised
    (xray: X has no confounder), P(c) read off the model's own samples."""
    from mdcm.counterfactual import unit_counterfactual

    ex, model = _xray_model()
    x_obs = ex.study.observational.columns["X"][3]
    r = unit_counterfactual(model, "X", x_obs, {"C": 1}, n=6000, particles=20_000, seed=1)
    assert (r.counterfactual["C"] == 1).all()
    prior = np.bincount(model.sample(40_000, seed=5)["C"].numpy(), minlength=2) / 40_000
    code = model.coders["X"].encode(model.encode("X", x_obs, 1)).expand(2, -1)
    lik = model.generators["X"].code_log_prob(torch.eye(2), torch.zeros(2, 0), code)
    post = prior * np.exp((lik - lik.max()).detach().numpy())
    post /= post.sum()
    got = np.bincount(r.factual["C"].numpy(), minlength=2) / len(r.factual["C"])
    assert np.abs(got - post).max() < 0.04, (got, post, r.ess)


def test_unit_counterfactual_refuses_bad_questions():
    from mdcm.counterfactual import unit_counterfactual

    ex, model = _xray_model()
    x_obs = ex.study.observational.columns["X"][0]
    with pytest.raises(QueryError, match="'C' is not an image variable"):
        unit_counterfactual(model, "C", 0, {"C": 1})
    with pytest.raises(QueryError, match="X is both observed and intervened on"):
        unit_counterfactual(model, "X", x_obs, {"X": x_obs})
    pixel = DCM(ex.schema, ModelConfig(image_net="mlp", hidden=8, image_hidden=16))
    with pytest.raises(QueryError, match="needs a latent image mechanism"):
        unit_counterfactual(pixel, "X", x_obs, {"C": 1})
    with pytest.raises(QueryError, match="evidence names unknown variable 'Q'"):
        unit_counterfactual(model, "X", x_obs, {"C": 1}, {"Q": 0})


def test_twin_network_agrees_with_the_identification_formula_on_the_models_own_data():
    """For ANY model of the front-door graph (here an untrained one with strong weights), the
    twin network's effect of treatment on the treated equals the front-door ETT formula
    Σ_m P(m | x) P(y | m, x') evaluated on the model's own samples: identifiability holds inside
    the model class, so a disagreement would be a bug of the sampler."""
    torch.manual_seed(3)
    g = CausalGraph.parse("X -> M -> Y; X <-> Y")
    classes = {"X": 2, "M": 3, "Y": 2}
    model = DCM(Schema(g, tuple(Variable(v, "categorical", classes=k) for v, k in classes.items())))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    s = model.sample(300_000, seed=1)
    x_, m_, y_ = (s[v].numpy() for v in "XMY")
    for x, x0 in ((1, 0), (0, 1)):
        pm = np.bincount(m_[x_ == x], minlength=3) / (x_ == x).sum()
        py = np.array([y_[(m_ == k) & (x_ == x0)].mean() for k in range(3)])
        formula = float(pm @ py)
        r = counterfactual_distribution(model, "Y", {"X": x0}, {"X": x}, 60_000, seed=2)
        assert r.identifiable
        assert abs(r.probs[1] - formula) < 0.012, (x, x0, r.probs, formula)
