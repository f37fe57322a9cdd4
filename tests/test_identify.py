"""Tests for mdcm.identify: textbook verdicts, exact numeric checks of estimands on random
discrete SCMs with explicit latent confounders, and verdicts cross-checked against y0."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from mdcm.graph import CausalGraph, parse_graph, random_graph
from mdcm.identify import (
    Fraction,
    Identification,
    IdentificationError,
    Prob,
    Product,
    Sum,
    evaluate_estimand,
    identify,
    render,
)

# --------------------------------------------------------------------------- textbook registry
# (name, graph, treatment, outcome, given, interventional regimes, identifiable, source)
TEXTBOOK = [
    ("back-door", "C -> X -> Y; C -> Y", "X", "Y", "", [], True, "Pearl 2009, Thm 3.3.2"),
    ("front-door", "X -> M -> Y; X <-> Y", "X", "Y", "", [], True, "Pearl 2009, Thm 3.3.4"),
    (
        "napkin",
        "W -> Z -> X -> Y; W <-> X; W <-> Y",
        "X",
        "Y",
        "",
        [],
        True,
        "Pearl & Mackenzie 2018; Shpitser & Pearl 2006",
    ),
    ("no confounding", "X -> Y; Z -> Y", "X", "Y", "", [], True, "rule 2"),
    ("no causal path", "X <-> Y; Z -> Y; Y -> X", "X", "Y", "", [], True, "rule 3"),
    ("bow", "X -> Y; X <-> Y", "X", "Y", "", [], False, "Pearl 2009, Sec. 3.5"),
    (
        "IV with confounding",
        "Z -> X -> Y; X <-> Y",
        "X",
        "Y",
        "",
        [],
        False,
        "Pearl 2009, Fig. 3.8; Shpitser & Pearl 2006",
    ),
    (
        "extended bow",
        "X -> Z -> Y; X <-> Y; Z <-> Y",
        "X",
        "Y",
        "",
        [],
        False,
        "Shpitser & Pearl 2006, Fig. 1",
    ),
    (
        "confounded treatment-mediator",
        "X -> Z -> Y; X <-> Z",
        "X",
        "Y",
        "",
        [],
        False,
        "bow on X -> Z; y0 agrees",
    ),
    ("same graph, do(Z)", "X -> Z -> Y; X <-> Z", "Z", "Y", "", [], True, "back-door via X"),
    (
        "Z <-> X and Z <-> Y, Z -> X",
        "Z -> X -> Y; Z <-> X; Z <-> Y",
        "X",
        "Y",
        "",
        [],
        False,
        "hedge {Z, X, Y} / {Y}",
    ),
    # IDC (Shpitser & Pearl 2006b)
    (
        "back-door | W (child of X)",
        "C -> X -> Y; C -> Y; X -> W",
        "X",
        "Y",
        "W",
        [],
        True,
        "rule 2 on W",
    ),
    (
        "back-door | W (child of C)",
        "C -> X -> Y; C -> Y; C -> W",
        "X",
        "Y",
        "W",
        [],
        True,
        "IDC normalisation",
    ),
    ("front-door | M", "X -> M -> Y; X <-> Y", "X", "Y", "M", [], True, "rule 2 on M"),
    ("bow | Z", "X -> Y; X <-> Y; Z -> Y", "X", "Y", "Z", [], False, "bow stays"),
    (
        "conditioning on a confounded collider",
        "X -> Y; X -> W; Y -> W; W <-> Y",
        "X",
        "Y",
        "W",
        [],
        True,
        "ID line 6 on P(Y, W | do(X)), then normalise; y0 agrees",
    ),
    (
        "front-door | Y-side confounded W",
        "X -> M -> Y; X <-> Y; Y -> W; X <-> W",
        "X",
        "Y",
        "W",
        [],
        True,
        "y0 agrees",
    ),
    # gID (Lee, Correa & Bareinboim 2019)
    (
        "bow + do(X) data",
        "X -> Y; X <-> Y",
        "X",
        "Y",
        "",
        [["X"]],
        True,
        "P(Y | do(X)) = P_do(X)(Y)",
    ),
    (
        "bow + do(Y) data",
        "X -> Y; X <-> Y",
        "X",
        "Y",
        "",
        [["Y"]],
        False,
        "Y's own mechanism is cut",
    ),
    (
        "Z <-> X, Z <-> Y + do(Z) data",
        "Z -> X -> Y; Z <-> X; Z <-> Y",
        "X",
        "Y",
        "",
        [["Z"]],
        True,
        "surrogate experiment: P(Y | do(X)) = P_do(Z)(Y | X)",
    ),
    (
        "confounded chain + do(Z) data",
        "X -> Z -> Y; X <-> Z; Z <-> Y",
        "X",
        "Y",
        "",
        [["Z"]],
        False,
        "Q[Z, Y] needs Z's mechanism",
    ),
    (
        "confounded chain + do(X) data",
        "X -> Z -> Y; X <-> Z; Z <-> Y",
        "X",
        "Y",
        "",
        [["X"]],
        True,
        "P_do(X)(Y)",
    ),
    (
        "IV + do(Z) data",
        "Z -> X -> Y; X <-> Y",
        "X",
        "Y",
        "",
        [["Z"]],
        False,
        "do(Z) leaves X <-> Y",
    ),
]


@pytest.mark.parametrize("case", TEXTBOOK, ids=[c[0] for c in TEXTBOOK])
def test_textbook_verdicts(case):
    _, text, x, y, z, regimes, expected, _src = case
    r = identify(parse_graph(text), [x], [y], [z] if z else [], regimes)
    assert r.identifiable is expected, r.reason
    assert (r.estimand is not None) is expected
    assert r.reason


def test_front_door_estimand_is_the_textbook_formula():
    r = identify(parse_graph("X -> M -> Y; X <-> Y"), ["X"], ["Y"])
    assert r.estimand == "Σ_{M} P(M | X) Σ_{X'} P(X') P(Y | X', M)"
    assert "ID algorithm" in r.reason


def test_napkin_estimand_is_the_textbook_ratio():
    r = identify(parse_graph("W -> Z -> X -> Y; W <-> X; W <-> Y"), ["X"], ["Y"])
    assert r.estimand == (
        "[Σ_{W} P(W) P(X, Y | W, Z)] / [Σ_{W} P(W) P(X | W, Z)]  (for any value of Z)"
    )


def test_back_door_and_rule2_shortcut():
    r = identify(parse_graph("C -> X -> Y; C -> Y"), ["X"], ["Y"])
    assert r.estimand == "Σ_{C} P(C) P(Y | C, X)"
    r = identify(parse_graph("X -> Y; Z -> Y"), ["X"], ["Y"])
    assert r.estimand == "P(Y | X)" and "no confounding path" in r.reason
    r = identify(parse_graph("X <-> Y; Y -> X"), ["X"], ["Y"])
    assert r.estimand == "P(Y)" and "rule 3" in r.reason


def test_gid_estimands_and_reasons():
    g = parse_graph("X -> Y; X <-> Y")
    r = identify(g, ["X"], ["Y"], interventions=[["X"]])
    assert r.estimand == "P_{do(X)}(Y)"
    assert "gID" in r.reason and "Q[Y] from P_{do(X)}" in r.reason
    r = identify(parse_graph("X -> Z -> Y; X <-> Z; Z <-> Y"), ["X"], ["Y"], interventions=[["X"]])
    assert r.estimand == "P_{do(X)}(Y)"
    r = identify(parse_graph("Z -> X -> Y; Z <-> X; Z <-> Y"), "X", "Y", interventions=[["Z"]])
    assert r.estimand == "P_{do(Z)}(Y | X)  (for any value of Z)"


def test_not_identifiable_reasons_name_the_witness():
    r = identify(parse_graph("X -> Y; X <-> Y"), ["X"], ["Y"])
    assert "hedge" in r.reason and "F = {X, Y}" in r.reason and "F' = {Y}" in r.reason
    assert r.witness == (frozenset("XY"), frozenset("Y"))
    r = identify(parse_graph("X -> Z -> Y; X <-> Y; Z <-> Y"), ["X"], ["Y"])
    assert "F = {X, Z, Y}" in r.reason and "F' = {Z, Y}" in r.reason
    r = identify(parse_graph("X -> Z -> Y; X <-> Z; Z <-> Y"), ["X"], ["Y"], interventions=[["Z"]])
    assert "Q[Z, Y]" in r.reason and "P_{do(Z)} intervenes on {Z}" in r.reason
    assert r.to_json() == {"identifiable": False, "estimand": None, "reason": r.reason}


def test_identification_equality_ignores_expression():
    a = Identification(True, "P(Y)", "r", expression=Prob(frozenset("Y")))
    b = Identification(True, "P(Y)", "r")
    assert a == b and a.to_json() == {"identifiable": True, "estimand": "P(Y)", "reason": "r"}


@pytest.mark.parametrize(
    "args, needle",
    [
        ((["Q"], ["Y"]), "'Q'"),
        ((["X"], ["Nope"]), "'Nope'"),
        (([], ["Y"]), "treatment is empty"),
        ((["X"], []), "outcome is empty"),
        ((["X"], ["X"]), "X is both treatment and outcome"),
        ((["X"], ["Y"], ["X"]), "X is both treatment and given"),
        ((["X"], ["Y"], ["Y"]), "Y is both outcome and given"),
        ((["X"], ["Y"], [], [["R"]]), "intervention set #1 names unknown variable 'R'"),
    ],
)
def test_bad_queries_raise(args, needle):
    with pytest.raises(IdentificationError, match=needle.replace("(", r"\(")):
        identify(parse_graph("X -> M -> Y; X <-> Y"), *args)


# --------------------------------------------------------------------------- exact SCM oracle
def random_scm_tables(g: CausalGraph, seed: int, regimes=()) -> tuple[dict, list[int]]:
    """Exact distributions of a random discrete SCM for ``g``: one explicit latent per
    bidirected edge, random positive conditional tables. Returns {regime: table} where the
    table for regime I holds P_{do(I = v_I)}(v_{V \\ I}) at entry v (I = ∅: the joint)."""
    rng = np.random.default_rng(seed)
    names = list(g.nodes)
    lat = sorted(g.bidirected)
    n, m = len(names), len(lat)
    card = [int(rng.integers(2, 4)) for _ in names]
    shape_all = card + [2] * m  # latents: axes n .. n+m-1, binary
    ax = {v: i for i, v in enumerate(names)}

    def cpt(axes: list[int]) -> tuple[np.ndarray, list[int]]:
        # random table of the first axis given the others (positive: Dirichlet draws)
        t = rng.dirichlet(
            np.full(shape_all[axes[0]], 0.7),
            size=int(np.prod([shape_all[a] for a in axes[1:]], dtype=int)),
        )
        t = t.reshape([shape_all[a] for a in axes[1:]] + [shape_all[axes[0]]])
        return np.moveaxis(t, -1, 0), axes

    priors = [cpt([n + k]) for k in range(m)]
    mech = {
        v: cpt(
            [ax[v]] + [ax[p] for p in g.parents(v)] + [n + k for k, e in enumerate(lat) if v in e]
        )
        for v in names
    }
    out = {}
    for regime in [frozenset()] + [frozenset(r) for r in regimes]:
        # Σ_u Π_k P(u_k) Π_{v ∉ I} P(v | pa(v), u_v): the truncated factorisation of do(I)
        factors = priors + [mech[v] for v in names if v not in regime]
        factors += [(np.ones(card[i]), [i]) for i in range(n)]  # keep every observed axis
        args = [x for arr, axes in factors for x in (arr, axes)]
        out[regime] = np.einsum(*args, list(range(n)), optimize="greedy")
    return out, card


def true_effect(tables: dict, names: list[str], x, y, z=()) -> np.ndarray:
    """P(y | do(x), z) by enumeration of the mutilated SCM; axes for all names (keepdims)."""
    t = tables[frozenset(x)]
    keep = set(x) | set(y) | set(z)
    num = t.sum(axis=tuple(i for i, v in enumerate(names) if v not in keep), keepdims=True)
    den = num.sum(axis=tuple(i for i, v in enumerate(names) if v in y), keepdims=True)
    return num / den


def assert_estimand_exact(g: CausalGraph, x, y, z=(), regimes=(), seed=0) -> Identification:
    """Identify, evaluate the estimand on the available regimes of a random SCM, and compare
    with P(y | do(x), z) computed by enumerating the SCM's mutilated model."""
    r = identify(g, x, y, z, regimes)
    assert r.identifiable, r.reason
    names = list(g.nodes)
    avail, _ = random_scm_tables(g, seed, regimes)  # the estimand sees only these
    oracle, _ = random_scm_tables(g, seed, [x])  # same SCM (same seed), plus do(x)
    est = evaluate_estimand(r.expression, avail, names)
    truth = true_effect(oracle, names, x, y, z)
    full = np.broadcast_to(est, np.broadcast_shapes(est.shape, truth.shape))
    # free variables outside the query (e.g. an intervened value in a surrogate regime) must
    # not matter: the estimand is constant along them
    for i, v in enumerate(names):
        if v not in set(x) | set(y) | set(z) and full.shape[i] > 1:
            assert np.ptp(full, axis=i).max() < 1e-9, f"estimand depends on {v}"
            full = np.take(full, [0], axis=i)
    np.testing.assert_allclose(
        full,
        np.broadcast_to(truth, full.shape),
        atol=1e-9,
        err_msg=f"{g} {x} {y} {z} {regimes}: {r.estimand}",
    )
    return r


@pytest.mark.parametrize(
    "case", [c for c in TEXTBOOK if c[6]], ids=[c[0] for c in TEXTBOOK if c[6]]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_textbook_estimands_match_exact_truth(case, seed):
    _, text, x, y, z, regimes, _, _ = case
    assert_estimand_exact(parse_graph(text), [x], [y], [z] if z else [], regimes, seed)


def test_gid_mixes_regimes_and_matches_truth():
    # Q[Y] needs the surrogate do(Z) regime, Q[M] needs P: Σ_M P(M | X) P_do(Z)(Y | X, M)-like
    g = parse_graph("Z -> X -> M -> Y; X -> Y; Z <-> X; Z <-> Y")
    assert not identify(g, ["X"], ["Y"]).identifiable
    r = assert_estimand_exact(g, ["X"], ["Y"], regimes=[["Z"]], seed=3)
    assert "P_{do(Z)}" in r.estimand


def _random_query(rng: random.Random, g: CausalGraph, conditional: bool):
    """Outcome(s) first, then (mostly) treatments among their ancestors, so that most queries
    are about a real effect; one given variable from the rest when ``conditional``."""
    nodes = list(g.nodes)
    rng.shuffle(nodes)
    ky = 1 if rng.random() < 0.7 else 2
    y = nodes[:ky]
    pool = [v for v in nodes if v not in y]
    anc = [v for v in pool if v in g.ancestors(y)]
    if anc and rng.random() < 0.8:
        pool = anc + [v for v in pool if v not in anc]
    kx = 1 if rng.random() < 0.7 else 2
    x = pool[:kx]
    rest = [v for v in nodes if v not in x and v not in y]
    z = rng.sample(rest, 1) if conditional and rest else []
    return x, y, z


def _random_graphs(count: int, seed: int, lo: int = 4, hi: int = 9):
    rng = random.Random(seed)
    for i in range(count):
        n = rng.randint(lo, hi)
        pairs = n * (n - 1) // 2
        n_bi = rng.randint(1, min(pairs, 2 * n))
        g = random_graph(n, rng.randint(n - 1, min(pairs, 2 * n)), n_bi, seed=i + seed)
        yield rng, g


def test_random_estimands_match_exact_truth():
    """ID/IDC estimands (and the rule-2/3 shortcuts) on random graphs agree with enumeration of
    a random SCM."""
    shortcut = by_id = conditional = 0
    for rng, g in _random_graphs(1500, seed=11, lo=4, hi=6):
        x, y, z = _random_query(rng, g, conditional=rng.random() < 0.4)
        r = identify(g, x, y, z)
        if not r.identifiable:
            continue
        is_id = "ID algorithm" in r.reason
        if not is_id and shortcut >= 20:
            continue
        assert_estimand_exact(g, x, y, z, seed=shortcut + by_id)
        shortcut += not is_id
        by_id += is_id
        conditional += is_id and bool(z) and "normalised" in r.reason
        if by_id >= 40 and conditional >= 10:
            break
    assert shortcut >= 20 and by_id >= 40 and conditional >= 10, (shortcut, by_id, conditional)


def test_random_gid_estimands_match_exact_truth():
    """gID (and gID after IDC's rule-2 step) with random interventional regimes (random sets
    of 1-3 non-outcome variables): every identified estimand reads only the available regimes
    and agrees with enumeration."""
    checked = needs_data = no_superset = conditional = 0
    for rng, g in _random_graphs(1500, seed=5, lo=4, hi=6):
        x, y, z = _random_query(rng, g, conditional=rng.random() < 0.3)
        cand = [v for v in g.nodes if v not in y]
        regimes = [
            rng.sample(cand, min(len(cand), rng.randint(1, 3))) for _ in range(rng.randint(1, 2))
        ]
        r = identify(g, x, y, z, regimes)
        if not r.identifiable:
            continue
        observational = identify(g, x, y, z).identifiable
        if observational and checked - needs_data >= 10:
            continue  # enough cases that P alone settles
        assert_estimand_exact(g, x, y, z, regimes=regimes, seed=checked)
        checked += 1
        if not observational:
            assert any(len(i) > 0 for i in r.regimes_used), r
            needs_data += 1
            conditional += bool(z)
            no_superset += not any(set(x) <= set(i) for i in regimes)
        if needs_data >= 40 and no_superset >= 5 and conditional >= 5:
            break
    assert needs_data >= 40 and no_superset >= 5 and conditional >= 5, (
        checked,
        needs_data,
        no_superset,
        conditional,
    )


def test_gid_with_only_observational_data_agrees_with_id():
    """Two different algorithms (ID's recursion vs Tian's c-factor Identify) give the same
    verdicts; observing more regimes never loses identifiability; do(X) data always suffices."""
    n = 0
    for rng, g in _random_graphs(300, seed=21):
        x, y, _ = _random_query(rng, g, conditional=False)
        v_id = identify(g, x, y, algorithm="id").identifiable
        v_gid = identify(g, x, y, algorithm="gid").identifiable
        assert v_id == v_gid, (g.to_text(), x, y)
        extra = [rng.sample(list(g.nodes), 1)]
        if v_id:
            assert identify(g, x, y, interventions=extra).identifiable
        assert identify(g, x, y, interventions=[x]).identifiable
        n += 1
    assert n == 300


# --------------------------------------------------------------------------- y0 cross-check
def _from_y0(e) -> object:
    """y0's estimand (Probability / Product / Sum / Fraction / One) as our expression tree, so
    the exact SCM oracle can judge it too."""
    from y0 import dsl

    if isinstance(e, dsl.Probability):
        d = e.distribution
        return Prob(frozenset(v.name for v in d.children), frozenset(v.name for v in d.parents))
    if isinstance(e, dsl.Product):
        return Product(tuple(_from_y0(f) for f in e.expressions))
    if isinstance(e, dsl.Sum):
        return Sum(frozenset(v.name for v in e.ranges), _from_y0(e.expression))
    if isinstance(e, dsl.Fraction):
        return Fraction(_from_y0(e.numerator), _from_y0(e.denominator))
    if isinstance(e, dsl.One):
        return Product(())
    raise TypeError(f"unexpected y0 expression {e!r}")


def _error_vs_truth(g: CausalGraph, expr, x, y, z, seed: int) -> float:
    names = list(g.nodes)
    tables, _ = random_scm_tables(g, seed, [x])
    est = evaluate_estimand(expr, tables[frozenset()], names)
    truth = true_effect(tables, names, x, y, z)
    full = np.broadcast_to(est, np.broadcast_shapes(est.shape, truth.shape))
    return float(np.abs(full - np.broadcast_to(truth, full.shape)).max())


def test_verdicts_agree_with_y0_on_random_graphs():
    """Verdicts against y0's ID / IDC on random graphs (4-9 nodes, up to 2 treatments,
    outcomes and given variables). Every disagreement is settled by the exact oracle: where we
    identify and y0 does not, our estimand must equal the enumerated truth; where y0 identifies
    and we do not, y0's estimand must be wrong on a random SCM (y0's IDC with two or more given
    variables drops conditions; see the report)."""
    y0_graph = pytest.importorskip("y0.graph")
    y0_dsl = pytest.importorskip("y0.dsl")
    y0_id = pytest.importorskip("y0.algorithm.identify")

    start = time.perf_counter()
    compared = skipped = n_id = n_cond = 0
    y0_misses, y0_wrong = [], []
    for rng, g in _random_graphs(700, seed=2024):
        conditional = rng.random() < 0.35
        x, y, z = _random_query(rng, g, conditional)
        if conditional and rng.random() < 0.4:
            z = [v for v in g.nodes if v not in x + y][:2]
        var = {v: y0_dsl.Variable(v) for v in g.nodes}
        yg = y0_graph.NxMixedGraph.from_edges(
            nodes=[var[v] for v in g.nodes],
            directed=[(var[a], var[b]) for a, b in g.directed],
            undirected=[(var[a], var[b]) for a, b in g.bidirected],
        )
        try:
            theirs = y0_id.identify_outcomes(
                yg, {var[v] for v in x}, {var[v] for v in y}, {var[v] for v in z} if z else None
            )
        except Exception:  # noqa: BLE001 - y0 raises on some graphs; count and skip them
            skipped += 1
            continue
        ours = identify(g, x, y, z)
        compared += 1
        n_id += ours.identifiable
        n_cond += bool(z)
        if ours.identifiable and theirs is None:
            assert_estimand_exact(g, x, y, z, seed=compared)
            y0_misses.append((str(g), x, y, z))
        elif theirs is not None and not ours.identifiable:
            err = max(_error_vs_truth(g, _from_y0(theirs), x, y, z, seed) for seed in (0, 1))
            assert err > 1e-4, (str(g), x, y, z, str(theirs))
            y0_wrong.append((str(g), x, y, z, str(theirs)))
    elapsed = time.perf_counter() - start
    print(
        f"y0 cross-check: {compared} compared ({n_id} identifiable, {n_cond} conditional), "
        f"{skipped} skipped (y0 exceptions), {len(y0_misses)} identified only by us "
        f"(estimand exact), {len(y0_wrong)} identified only by y0 (its estimand wrong), "
        f"{elapsed:.1f} s"
    )
    assert compared >= 300
    assert len(y0_misses) + len(y0_wrong) <= 0.02 * compared  # disagreements stay rare
    assert all(len(d[3]) >= 2 for d in y0_misses + y0_wrong)  # only with 2+ given variables
    assert 0.2 * compared < n_id < 0.9 * compared  # both verdicts are well represented
    assert n_cond >= 100


def test_y0_estimand_matches_truth_where_both_identify():
    """The oracle can tell formulas apart: y0's and our front-door estimands both match the
    truth, and y0's (known wrong) napkin estimand does not."""
    pytest.importorskip("y0")
    from y0.algorithm.identify import identify_outcomes
    from y0.dsl import Variable
    from y0.graph import NxMixedGraph

    w, z, x, y = (Variable(v) for v in "WZXY")
    napkin = NxMixedGraph.from_edges(directed=[(w, z), (z, x), (x, y)], undirected=[(w, x), (w, y)])
    g = parse_graph("W -> Z -> X -> Y; W <-> X; W <-> Y")
    assert _error_vs_truth(g, _from_y0(identify_outcomes(napkin, x, y)), ["X"], ["Y"], [], 0) > 1e-3
    assert _error_vs_truth(g, identify(g, "X", "Y").expression, ["X"], ["Y"], [], 0) < 1e-12
    m = Variable("M")
    fd = NxMixedGraph.from_edges(directed=[(x, m), (m, y)], undirected=[(x, y)])
    g = parse_graph("X -> M -> Y; X <-> Y")
    assert _error_vs_truth(g, _from_y0(identify_outcomes(fd, x, y)), ["X"], ["Y"], [], 0) < 1e-12


# Conditional queries found by a 4,000-graph run where y0 0.2 returns an estimand and IDC does
# not identify; y0's estimand drops a given variable and is wrong on random SCMs.
Y0_IDC_WRONG = [
    (
        "V3 -> V1; V4 -> V5; V5 -> V3; V6 -> V0; V7 -> V0; V7 -> V1; V7 -> V2; V7 -> V3; "
        "V0 <-> V2; V0 <-> V4; V0 <-> V6; V0 <-> V7; V1 <-> V2; V1 <-> V3; V2 <-> V5; V3 <-> V6; "
        "V3 <-> V7; V4 <-> V5",
        ["V3"],
        ["V5"],
        ["V0", "V1"],
    ),
    (
        "V0 -> V7; V1 -> V3; V2 -> V7; V3 -> V2; V3 -> V6; V4 -> V0; V4 -> V1; V4 -> V5; "
        "V4 -> V6; V6 -> V7; V0 <-> V3; V0 <-> V4; V0 <-> V5; V0 <-> V6; V1 <-> V2; V1 <-> V5; "
        "V1 <-> V7; V2 <-> V3; V2 <-> V5; V3 <-> V4; V3 <-> V5; V3 <-> V6; V4 <-> V7",
        ["V1", "V3"],
        ["V0", "V4"],
        ["V2", "V5"],
    ),
]


@pytest.mark.parametrize("text, x, y, z", Y0_IDC_WRONG, ids=["8-nodes-a", "8-nodes-b"])
def test_y0_idc_disagreements_are_settled_by_the_oracle(text, x, y, z):
    g = parse_graph(text)
    r = identify(g, x, y, z)
    assert not r.identifiable and "hedge" in r.reason
    pytest.importorskip("y0")
    from y0.algorithm.identify import identify_outcomes
    from y0.dsl import Variable
    from y0.graph import NxMixedGraph

    var = {v: Variable(v) for v in g.nodes}
    yg = NxMixedGraph.from_edges(
        nodes=list(var.values()),
        directed=[(var[a], var[b]) for a, b in g.directed],
        undirected=[(var[a], var[b]) for a, b in g.bidirected],
    )
    theirs = identify_outcomes(yg, {var[v] for v in x}, {var[v] for v in y}, {var[v] for v in z})
    if theirs is not None:  # y0 claims a formula: it must disagree with the exact truth
        assert max(_error_vs_truth(g, _from_y0(theirs), x, y, z, s) for s in (0, 1)) > 1e-3


def test_evaluate_estimand_by_hand():
    """P, Σ and fractions on a 2x3 table, against numbers computed by hand."""
    joint = np.array([[0.1, 0.2, 0.1], [0.3, 0.2, 0.1]])  # axes A (2 values), B (3 values)
    names = ["A", "B"]
    a, b = frozenset("A"), frozenset("B")
    p_b_given_a = evaluate_estimand(Prob(b, a), joint, names)
    np.testing.assert_allclose(p_b_given_a, [[0.25, 0.5, 0.25], [0.5, 1 / 3, 1 / 6]])
    np.testing.assert_allclose(evaluate_estimand(Prob(a), joint, names), [[0.4], [0.6]])
    # Σ over a variable that the body does not mention multiplies by its number of values
    s = evaluate_estimand(Sum(b, Prob(a)), joint, names)
    np.testing.assert_allclose(s, [[1.2], [1.8]])
    ratio = evaluate_estimand(Fraction(Prob(a | b), Prob(b)), joint, names)
    np.testing.assert_allclose(ratio, joint / joint.sum(0, keepdims=True))
    with pytest.raises(ValueError, match="regime"):
        evaluate_estimand(Prob(a, frozenset(), b), joint, names)


def test_render_primes_nested_rebinding():
    x, y = frozenset("X"), frozenset("Y")
    e = Product((Prob(y, x), Sum(x, Product((Prob(x), Sum(x, Prob(x | y)))))))
    assert render(e) == "P(Y | X) Σ_{X'} P(X') Σ_{X''} P(X'', Y)"


def test_regimes_used():
    g = parse_graph("Z -> X -> M -> Y; X -> Y; Z <-> X; Z <-> Y")
    r = identify(g, ["X"], ["Y"], interventions=[["Z"], ["M"]])
    assert r.regimes_used == (frozenset(), frozenset("Z"))
    assert identify(g, ["X"], ["M"]).regimes_used == (frozenset(),)
    assert identify(parse_graph("X -> Y; X <-> Y"), "X", "Y").regimes_used == ()
