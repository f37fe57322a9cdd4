"""The built-ins added for studies beyond the front-door (issue #10): exact truth against
independent oracles — Monte-Carlo samples of the generating mechanisms, closed forms of the
linear-Gaussian model, and identification formulas evaluated on the exact observational (and
experimental) joint."""

from __future__ import annotations

import numpy as np

from mdcm.examples import load_example
from mdcm.identify import identify

MC_N = 200_000


def test_continuous_frontdoor_moments_match_the_closed_form_and_monte_carlo():
    ex = load_example("frontdoor_continuous", n=200, seed=0)
    # closed form: E[Y | do(X=x)] = 2 x, Var = 4 * 0.64 + 1.5^2 + 0.5^2 given do(x)
    sd_do = np.sqrt(4 * 0.64 + 2.25 + 0.25)
    for x in (0, 1):
        mean, sd = ex.truth_mean("Y", {"X": x})
        assert abs(mean - 2.0 * x) < 1e-9 and abs(sd - sd_do) < 1e-9
        cols, _ = ex.sample(MC_N, do={"X": x}, seed=3 + x, render=False)
        y = cols["Y"][:, 0]
        assert abs(y.mean() - mean) < 4.5 * sd / np.sqrt(MC_N)
    obs, _ = ex.sample(MC_N, seed=7, render=False)
    for x in (0, 1):
        mean, sd = ex.naive_mean("Y", {"X": x})
        y = obs["Y"][:, 0][obs["X"] == x]
        assert abs(y.mean() - mean) < 4.5 * sd / np.sqrt(len(y))
    # confounding: the naive difference is far from the effect 2.0
    naive = ex.naive_mean("Y", {"X": 1})[0] - ex.naive_mean("Y", {"X": 0})[0]
    assert naive > 3.0


def test_experiment_randomises_w_row_by_row_and_identifies_the_effect():
    ex = load_example("experiment", n=20000, seed=1)
    names = {d.name: d for d in ex.study.datasets}
    assert set(names) == {"observational", "do_W=random"}
    exp = names["do_W=random"]
    assert exp.do == {"W": None}
    w = np.asarray(exp.columns["W"])
    assert abs(w.mean() - 0.5) < 4.5 * 0.5 / np.sqrt(len(w))  # randomised by the experimenter
    g = ex.study.graph
    assert not identify(g, ["X"], ["Y"]).identifiable
    verdict = identify(g, ["X"], ["Y"], interventions=[["W"]])
    assert verdict.identifiable
    # gID's estimand P_do(W)(Y | X), evaluated on the exact experimental joint, equals the truth
    vals, p = ex.scm.enumerate({"W": None})
    for x in (0, 1):
        k = vals["X"] == x
        est = np.bincount(vals["Y"][k], weights=p[k], minlength=2) / p[k].sum()
        assert np.allclose(est, ex.truth("Y", {"X": x}), atol=1e-12)
    # and it differs from the observational conditional (the confounding is real)
    assert abs(ex.truth("Y", {"X": 1})[1] - ex.naive("Y", {"X": 1})[1]) > 0.04


def test_two_images_conditional_truth_matches_monte_carlo_and_the_idc_formula():
    ex = load_example("two_images", n=200, seed=0)
    g = ex.study.graph
    assert identify(g, ["X"], ["Y"], given=["M"]).identifiable
    vals, p = ex.scm.enumerate()
    for x in (0, 1):
        for m in (0, 1):
            truth = ex.scm.marginal("Y", do={"X": x}, given={"M": m})
            cols, _ = ex.sample(MC_N, do={"X": x}, seed=11 + 2 * x + m, render=False)
            y = cols["Y"][cols["M"] == m]
            freq = np.bincount(y, minlength=2) / len(y)
            assert np.all(np.abs(freq - truth) <= 4.5 * np.sqrt(truth * (1 - truth) / len(y)))
            # front-door through the image features, on the exact observational joint:
            # sum_c P(c | x) sum_o P(o | c, m) sum_x' P(x' | m) P(y | x', c, o, m)
            est = 0.0
            for c in range(3):
                pc = (
                    p[(vals["X"] == x)].dot(vals["I.color"][vals["X"] == x] == c)
                    / p[vals["X"] == x].sum()
                )
                for o in range(3):
                    sel = (vals["I.color"] == c) & (vals["M"] == m)
                    po = p[sel & (vals["J.opacity"] == o)].sum() / p[sel].sum()
                    inner = 0.0
                    for xx in (0, 1):
                        pxx = (
                            p[(vals["X"] == xx) & (vals["M"] == m)].sum() / p[vals["M"] == m].sum()
                        )
                        cell = (vals["X"] == xx) & sel & (vals["J.opacity"] == o)
                        inner += pxx * p[cell & (vals["Y"] == 1)].sum() / p[cell].sum()
                    est += pc * po * inner
            assert abs(est - truth[1]) < 1e-9
    naive = ex.scm.marginal("Y", given={"X": 1, "M": 1})
    assert abs(naive[1] - ex.scm.marginal("Y", do={"X": 1}, given={"M": 1})[1]) > 0.04
