"""The data's own error: how far the best plug-in estimate from the SAME rows is from the exact
answer, so a model's error can be read against what its training data allows.

For each built-in example and seed this redraws the study's rows (``Example.sample`` with the
study's seed gives the same rows, plus the hidden features the images were drawn from) and
evaluates the identifying formula (:func:`mdcm.identify.identify`) on the empirical table, with
every image replaced by its hidden features (the plug-in that reads images perfectly); a formula
that holds "for any value" of a variable is evaluated at every value and the worst is reported.
Studies with continuous variables get the g-formula when the treatment has no hidden confounder:
a (multinomial) logistic regression of the outcome on the treatment and its parents, averaged
over the rows' parents. Otherwise the row says "—". Error as in bench/train_quality.py: the worst
case over treatment (and evidence) values of the TVD to the exact truth.

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

DEFAULT = ["napkin", "backdoor", "experiment", "xray", "colored_digits", "two_images"]


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
    names = list(ex.schema.names)
    tables = _regime_tables(ex, seed)
    if tables is None:
        return _g_formula_error(ex)
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
    worst = 0.0
    for x in range(k):
        for g in cells:
            for rest in itertools.product(*[range(est.shape[names.index(v)]) for v in free]):
                fixed = {ex.treatment: x, **g, **dict(zip(free, rest, strict=True))}
                idx = tuple(slice(None) if v == ex.outcome else fixed.get(v, 0) for v in names)
                p = np.asarray(est[idx], dtype=float).ravel()
                p = p / p.sum()
                worst = max(worst, tvd(p, ex.truth(ex.outcome, {ex.treatment: x}, g)))
    return worst


def _g_formula_error(ex) -> float | None:
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
    worst = 0.0
    with torch.no_grad():
        for xv in range(ex.schema[x].classes):
            p = torch.softmax(lin(design(np.full(len(target), xv))), 1).mean(0).numpy()
            worst = max(worst, tvd(p, ex.truth(y, {x: xv})))
    return worst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", nargs="*", default=DEFAULT)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = ap.parse_args(argv)
    print(f"{'example':16} " + " ".join(f"seed {s:>2}" for s in args.seeds))
    for name in args.examples:
        vals = []
        for s in args.seeds:
            ex = load_example(name, size="cpu", seed=s)
            e = plug_in_error(ex, s)
            vals.append("      —" if e is None else f"{e:7.3f}")
        print(f"{name:16} " + " ".join(vals), flush=True)


if __name__ == "__main__":
    main()
