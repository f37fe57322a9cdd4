"""The data's own error: how far the best plug-in estimate from the SAME rows is from the exact
answer, so a model's error can be read against what its training data allows.

For each built-in example and seed this redraws the study's rows (``Example.sample`` with the
study's seed gives the same rows, plus the hidden features the images were drawn from) and
evaluates the identifying formula (:func:`mdcm.identify.identify`) on the empirical table, with
every image replaced by its hidden features (the plug-in that reads images perfectly); a formula
that holds "for any value" of a variable is evaluated at every value and the worst is reported.
Studies with continuous variables get the g-formula when the treatment has no hidden confounder:
a (multinomial) logistic regression of the outcome on the treatment and its parents, averaged
over the rows' parents; the linear front-door for a continuous mediator and outcome. Otherwise
the row says "—". Error as in bench/train_quality.py: the worst case over treatment (and
evidence) values of the TVD to the exact truth (|mean error| / SD for a continuous outcome).
A second row per study: the same for the effect of treatment on the treated, P(Y_x | X=x')
(bench/counterfactual_quality.py's question), from the same plug-in through the binary-treatment
identity.

    python bench/data_error.py                       # label and image built-ins, seeds 0-2
    python bench/data_error.py --examples napkin --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdcm.examples import load_example  # noqa: E402
from mdcm.graph import CausalGraph  # noqa: E402
from mdcm.identify import evaluate_estimand, identify  # noqa: E402
from mdcm.query import tvd  # noqa: E402

DEFAULT = [
    "napkin",
    "backdoor",
    "experiment",
    "xray",
    "colored_digits",
    "two_images",
    "frontdoor_continuous",
]


def _discrete_rows(ex, cols, hidden) -> tuple[dict[str, np.ndarray], dict[str, int]] | None:
    """Every variable as integer codes (images: their hidden features combined into one code),
    or None when a non-image variable is continuous."""
    rows, card = {}, {}
    for v in ex.schema.names:
        var = ex.schema[v]
        if var.kind == "image":
            feats = ex.feature_names[v]
            k = [ex.feature_classes[f] for f in feats]
            code = np.zeros(len(hidden[feats[0]]), dtype=np.int64)
            for f, c in zip(feats, k, strict=True):
                code = code * c + np.asarray(hidden[f], dtype=np.int64)
            rows[v], card[v] = code, int(np.prod(k))
        elif var.kind == "categorical":
            rows[v], card[v] = np.asarray(cols[v], dtype=np.int64), var.classes
        else:
            return None
    return rows, card


def _table(rows: dict[str, np.ndarray], card: dict[str, int], names: list[str]) -> np.ndarray:
    t = np.zeros([card[v] for v in names])
    np.add.at(t, tuple(rows[v] for v in names), 1.0)
    return t / t.sum()


def _regime_tables(ex, seed: int) -> dict[frozenset, np.ndarray] | None:
    """Empirical tables of every dataset of the study (observational and experiments)."""
    names = list(ex.schema.names)
    tables = {}
    for i, ds in enumerate(ex.study.datasets):
        if i == 0:
            cols, hidden = ex.sample(len(ds.columns[names[0]]), seed=seed)
        else:
            sub = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            cols, hidden = ex.sample(len(ds.columns[names[0]]), do=dict(ds.do), seed=sub)
        # the redrawn rows must be the study's own (same seeds as make_example)
        assert all(
            np.array_equal(np.asarray(cols[v]), np.asarray(ds.columns[v]))
            for v in ds.columns
            if ex.schema[v].kind == "categorical"
        ), f"{ds.name}: redrawn rows differ"
        got = _discrete_rows(ex, cols, hidden)
        if got is None:
            return None
        rows, card = got
        t = _table(rows, card, names)
        regime = frozenset(ds.do)
        if regime:  # P_do(I = v_I)(rest): condition on the (randomised) intervened values
            t = t / np.maximum(
                t.sum(axis=tuple(names.index(v) for v in names if v not in regime), keepdims=True),
                1e-300,
            )
        tables[regime] = t
    return tables


def plug_in_error(ex, seed: int) -> float | None:
    """Worst-case TVD of the plug-in formula on the study's own rows, or None."""
    answers = plug_in_answers(ex, seed)
    if answers is None:
        return None
    return max(tvd(p, ex.truth(ex.outcome, {ex.treatment: x}, g)) for x, g, p in answers)


def plug_in_answers(ex, seed: int) -> list[tuple[int, dict, np.ndarray]] | None:
    """The plug-in P(Y | do(x)[, given]) on the study's own rows, one per treatment value,
    evidence cell and value of a free variable of the formula: (x, evidence, distribution)."""
    names = list(ex.schema.names)
    tables = _regime_tables(ex, seed)
    if tables is None:
        return _g_formula(ex)
    graph = ex.study.graph
    res = identify(
        graph,
        outcome=ex.outcome,
        treatment=ex.treatment,
        given=list(ex.given),
        interventions=[sorted(r) for r in tables if r],
    )
    if not res.identifiable or res.expression is None:
        return None
    est = evaluate_estimand(res.expression, tables, names)
    k = ex.schema[ex.treatment].classes
    cells = [
        dict(zip(ex.given, c, strict=True))
        for c in itertools.product(*[range(ex.schema[g].classes) for g in ex.given])
    ]
    # a free variable of the formula ("for any value of Z"): every value counts, worst reported
    free = [
        v
        for i, v in enumerate(names)
        if est.shape[i] > 1 and v not in (ex.outcome, ex.treatment, *ex.given)
    ]
    out = []
    for x in range(k):
        for g in cells:
            for rest in itertools.product(*[range(est.shape[names.index(v)]) for v in free]):
                fixed = {ex.treatment: x, **g, **dict(zip(free, rest, strict=True))}
                idx = tuple(slice(None) if v == ex.outcome else fixed.get(v, 0) for v in names)
                p = np.asarray(est[idx], dtype=float).ravel()
                out.append((x, g, p / p.sum()))
    return out


def ett_plug_in_error(ex, seed: int) -> float | None:
    """The data's own error on the effect of treatment on the treated, P(Y_x | X=x'), worst
    over x != x' (binary treatment, no evidence; else None). By consistency
    P(Y_x = y) = P(Y_x = y | x) P(x) + P(Y_x = y | x') P(x') with P(Y_x = y | x) = P(y | x), so
    the plug-in is (P^(y | do(x)) - P^(y, x)) / P^(x') (Shpitser & Pearl 2009's identity for a
    binary treatment) on the same rows; for a continuous outcome the same with means."""
    x_name, y_name = ex.treatment, ex.outcome
    if ex.schema[x_name].classes != 2 or ex.given:
        return None
    obs = ex.study.observational.columns
    xs = np.asarray(obs[x_name])
    worst = 0.0
    if ex.schema[y_name].kind == "categorical":
        answers = plug_in_answers(ex, seed)
        if answers is None:
            return None
        ys = np.asarray(obs[y_name])
        k = ex.schema[y_name].classes
        for x, _, p in answers:
            joint = np.bincount(ys[xs == x], minlength=k) / len(ys)
            q = np.clip((p - joint) / np.mean(xs == 1 - x), 0.0, None)
            truth = ex.counterfactual_truth(y_name, {x_name: 1 - x}, {x_name: x})
            worst = max(worst, tvd(q / q.sum(), truth))
        return worst
    means = _linear_front_door(ex)
    if means is None:
        return None
    ys = np.asarray(obs[y_name], dtype=float).reshape(len(xs), -1)[:, 0]
    for x, mean in means.items():
        ett = (mean - np.mean(ys * (xs == x))) / np.mean(xs == 1 - x)
        t_mean, t_sd = ex.counterfactual_truth_mean(y_name, {x_name: 1 - x}, {x_name: x})
        worst = max(worst, abs(ett - t_mean) / t_sd)
    return worst


def _linear_front_door(ex) -> dict[int, float] | None:
    """E[Y | do(x)] by the front-door formula with linear regressions (correct for a
    linear-Gaussian study: frontdoor_continuous): sum_x' P(x') E[Y | M ~ P(M | x), x'],
    for a graph X -> M -> Y, X <-> Y with continuous M and Y; else None."""
    g: CausalGraph = ex.study.graph
    x, y = ex.treatment, ex.outcome
    pa_y = list(g.parents(y))
    if len(pa_y) != 1 or list(g.parents(pa_y[0])) != [x]:
        return None
    m = pa_y[0]
    if ex.schema[m].kind != "continuous" or ex.schema[y].kind != "continuous":
        return None
    obs = ex.study.observational.columns
    xs = np.asarray(obs[x])
    ms = np.asarray(obs[m], dtype=float).reshape(len(xs), -1)[:, 0]
    ys = np.asarray(obs[y], dtype=float).reshape(len(xs), -1)[:, 0]
    fits = {}
    for a in (0, 1):
        design = np.c_[np.ones(int((xs == a).sum())), ms[xs == a]]
        fits[a] = np.linalg.lstsq(design, ys[xs == a], rcond=None)[0]
    return {
        v: sum(np.mean(xs == a) * (fits[a][0] + fits[a][1] * ms[xs == v].mean()) for a in (0, 1))
        for v in (0, 1)
    }


def _g_formula(ex) -> list[tuple[int, dict, np.ndarray]] | None:
    """Back-door g-formula with a logistic outcome model (treatment without hidden confounder,
    categorical outcome and treatment, no images), else None."""
    g: CausalGraph = ex.study.graph
    x, y = ex.treatment, ex.outcome
    if any(x in e for e in g.bidirected) or ex.given or ex.schema[y].kind != "categorical":
        return None
    pa = list(g.parents(x))
    if any(ex.schema[v].kind == "image" for v in pa):
        return None
    cols = ex.study.observational.columns

    def design(xv: np.ndarray) -> torch.Tensor:
        parts = [torch.nn.functional.one_hot(torch.as_tensor(xv), ex.schema[x].classes).float()]
        for v in pa:
            c = np.asarray(cols[v])
            if ex.schema[v].kind == "categorical":
                parts.append(
                    torch.nn.functional.one_hot(torch.as_tensor(c), ex.schema[v].classes).float()
                )
            else:
                parts.append(torch.as_tensor(c, dtype=torch.float32).reshape(len(c), -1))
        return torch.cat(parts, 1)

    feats = design(np.asarray(cols[x]))
    target = torch.as_tensor(np.asarray(cols[y]))
    lin = torch.nn.Linear(feats.shape[1], ex.schema[y].classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(feats), target)
        loss.backward()
        return loss

    opt.step(closure)
    out = []
    with torch.no_grad():
        for xv in range(ex.schema[x].classes):
            p = torch.softmax(lin(design(np.full(len(target), xv))), 1).mean(0).numpy()
            out.append((xv, {}, p.astype(float)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", nargs="*", default=DEFAULT)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = ap.parse_args(argv)
    print(f"{'example':22} " + " ".join(f"seed {s:>2}" for s in args.seeds))
    for name in args.examples:
        rows: dict[str, list[str]] = {"do": [], "effect on the treated": []}
        for s in args.seeds:
            ex = load_example(name, size="cpu", seed=s)
            for what, fn in (("do", plug_in_error), ("effect on the treated", ett_plug_in_error)):
                e = fn(ex, s)
                rows[what].append("      —" if e is None else f"{e:7.3f}")
        for what, vals in rows.items():
            print(f"{name + ', ' + what:22} " + " ".join(vals), flush=True)


if __name__ == "__main__":
    main()
