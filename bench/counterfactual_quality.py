"""Counterfactual quality after default CPU training: the effect of treatment on the treated.

For each built-in example this trains the modular plan with the library defaults
(``TrainConfig(seed=s)``, ``ModelConfig()``), then for every pair of treatment values x ≠ x'
compares the model's ``P(Y_{X=x} | X=x')`` (twin network, :func:`mdcm.counterfactual_distribution`)
with the exact truth (:meth:`Example.counterfactual_truth`, enumeration of the generators' noise),
next to the model's interventional answer ``P(Y | do(X=x))`` against its truth, and the gap
between the two truths (how different the question is). Errors: TVD for a categorical outcome,
|mean error| / SD of the counterfactual outcome for a continuous one; worst case over the pairs.

Bars (issue #12): identifiable built-ins within 0.03 (label studies) and 0.05 (image studies).
The bow is reported for contrast (not identifiable: no bar; its number depends on the coupling).

    nice -n 10 python bench/counterfactual_quality.py                     # every built-in, seed 0
    nice -n 10 python bench/counterfactual_quality.py --examples xray --seeds 0 1 2

Prints one table and writes ``bench/out/counterfactual_quality_<time>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdcm.counterfactual import counterfactual_distribution  # noqa: E402
from mdcm.examples import EXAMPLES, load_example  # noqa: E402
from mdcm.model import DCM, ModelConfig  # noqa: E402
from mdcm.plan import make_plan  # noqa: E402
from mdcm.query import tvd  # noqa: E402
from mdcm.train import TrainConfig, train  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
LABEL_BAR, IMAGE_BAR = 0.03, 0.05


def bar(ex, identifiable: bool) -> float | None:
    """The issue's bar for the effect of treatment on the treated (None: not identifiable)."""
    if not identifiable:
        return None
    return IMAGE_BAR if ex.schema.of_kind("image") else LABEL_BAR


def train_default(name: str, seed: int):
    """(example, model, seconds): the built-in drawn with ``seed``, the modular plan trained
    with the library defaults."""
    ex = load_example(name, size="cpu", seed=seed)
    torch.manual_seed(seed)
    model = DCM(ex.study.schema, ModelConfig())
    t0 = time.monotonic()
    train(
        model, make_plan(ex.study.graph, ex.study.interventions), ex.study, TrainConfig(seed=seed)
    )
    return ex, model, time.monotonic() - t0


def _error(ex, r, truth) -> float:
    """TVD of a categorical answer, |mean error| / SD of a continuous one."""
    if r.probs is not None:
        return tvd(r.probs, truth)
    mean, sd = truth
    return abs(float(r.mean[0]) - mean) / sd


def ett_report(model: DCM, ex, n: int = 8000, seed: int = 0) -> dict:
    """Worst case over x ≠ x' of the model's effect-of-treatment-on-the-treated error and of
    its interventional error, the truths' gap, and the verdict."""
    t, y = ex.treatment, ex.outcome
    k = ex.schema[t].classes
    categorical = ex.schema[y].kind == "categorical"
    regimes = [list(i) for i in ex.study.interventions]
    rows = []
    verdict = None
    for x, x0 in itertools.permutations(range(k), 2):
        r = counterfactual_distribution(
            model, y, {t: x0}, {t: x}, n, seed + 31 * x + x0, interventions=regimes
        )
        verdict = r.identification
        if categorical:
            cf_truth, do_truth = ex.counterfactual_truth(y, {t: x0}, {t: x}), ex.truth(y, {t: x})
            gap = tvd(cf_truth, do_truth)
        else:
            cf_truth = ex.counterfactual_truth_mean(y, {t: x0}, {t: x})
            do_truth = ex.truth_mean(y, {t: x})
            gap = abs(cf_truth[0] - do_truth[0]) / cf_truth[1]
        rows.append(
            {
                "x": x,
                "x_observed": x0,
                "ett_error": _error(ex, r.counterfactual, cf_truth),
                "do_error": _error(ex, r.interventional, do_truth),
                "truth_gap": gap,
                "acceptance": r.acceptance_rate,
                "model": (r.probs if categorical else r.counterfactual.mean).tolist(),
            }
        )
    worst = max(rows, key=lambda row: row["ett_error"])
    return {
        "example": ex.name,
        "identifiable": bool(verdict.identifiable),
        "route": verdict.reason.split(":")[0],
        "ett_error": worst["ett_error"],
        "do_error": max(row["do_error"] for row in rows),
        "truth_gap": max(row["truth_gap"] for row in rows),
        "bar": bar(ex, bool(verdict.identifiable)),
        "pairs": rows,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="*", default=list(EXAMPLES))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--n", type=int, default=8000, help="accepted units per query")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    load = os.getloadavg()[0]
    out: list[dict] = []
    for name, seed in itertools.product(args.examples, args.seeds):
        print(f"[{name}] seed {seed}: default training", flush=True)
        ex, model, secs = train_default(name, seed)
        rep = ett_report(model, ex, n=args.n, seed=seed)
        rep.update(seed=seed, train_s=secs)
        out.append(rep)
        print(
            f"  {secs:.0f} s; ETT error {rep['ett_error']:.3f} (bar {rep['bar']}), "
            f"do error {rep['do_error']:.3f}, truths differ by {rep['truth_gap']:.3f}",
            flush=True,
        )
        (OUT / f"counterfactual_quality_{stamp}.json").write_text(
            json.dumps({"load_at_start": load, "rows": out}, indent=1, default=str)
        )
    print(f"\nload average at start: {load:.1f}; threads {args.threads}")
    print(
        f"{'example':22s} {'seed':>4s} {'ident.':>6s} {'ETT err':>8s} {'do err':>7s} "
        f"{'gap':>6s} {'bar':>5s} {'ok':>3s} {'train s':>8s}"
    )
    for r in out:
        ok = "-" if r["bar"] is None else ("yes" if r["ett_error"] <= r["bar"] else "NO")
        print(
            f"{r['example']:22s} {r['seed']:4d} {str(r['identifiable']):>6s} "
            f"{r['ett_error']:8.3f} {r['do_error']:7.3f} {r['truth_gap']:6.3f} "
            f"{r['bar'] if r['bar'] is not None else '-':>5} {ok:>3s} {r['train_s']:8.0f}"
        )
    errs = [r["ett_error"] for r in out if r["bar"] is not None]
    if errs:
        print(f"identifiable: mean ETT error {np.mean(errs):.3f}, worst {max(errs):.3f}")


if __name__ == "__main__":
    main()
