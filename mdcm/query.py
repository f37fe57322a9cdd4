"""Causal queries answered by sampling a trained DCM (design.md §2, §3).

* :func:`interventional_distribution`: P(outcome | do(X=x)) and, with discrete evidence,
  P(outcome | do(X=x), Z=z) by rejection sampling (the acceptance rate is reported; too rare
  evidence is an error, not a silent guess);
* :func:`effect_table`: per treatment value P(outcome | do(x)) with a 95% interval, the effect
  against a reference value, and the naive observational P(outcome | X=x) from the study's data;
* :func:`overlap_warning`: a warning when the treatment is almost perfectly predictable from a
  variable the estimand adjusts for or passes through (positivity fails; design.md §7).

Every result carries the identifiability verdict (:func:`mdcm.identify.identify`): a DCM that
fits its training distributions answers identifiable queries correctly; a non-identifiable query
gets one of many consistent answers, and the result says so in ``warning``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .counterfactual import counterfactual_distribution, counterfactual_samples  # noqa: F401
from .fitcheck import allowed_fit
from .model import DCM

__all__ = [
    "QueryError",
    "QueryResult",
    "EffectRow",
    "EffectResult",
    "interventional_distribution",
    "result_from_samples",
    "sample_interventional",
    "effect_table",
    "overlap_warning",
    "identification",
    "tvd",
    "ImageProbe",
    "fit_image_probe",
    "predictability",
]

NOT_IDENTIFIABLE = (
    "not identifiable from the available data: the model's answer is one of many "
    "that fit the data equally well; do not read it as the causal effect"
)


class QueryError(ValueError):
    """A query that cannot be answered: unknown variable, bad value, evidence too rare."""


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two probability vectors."""
    return float(0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


# ---------------------------------------------------------------------- identification
def identification(
    graph: Any,
    treatment: Iterable[str],
    outcome: Iterable[str],
    given: Iterable[str] = (),
    interventions: Iterable[Iterable[str]] = (),
) -> Any | None:
    """The identifiability verdict from :mod:`mdcm.identify` (None if unavailable or trivial)."""
    treatment, outcome, given = list(treatment), list(outcome), list(given)
    if not treatment:
        return None
    try:
        from .identify import identify
    except ImportError:  # pragma: no cover - identify.py is written in parallel
        return None
    return identify(graph, treatment, outcome, given, [list(i) for i in interventions])


def _verdict_warning(ident: Any | None) -> str | None:
    if ident is not None and not ident.identifiable:
        return f"{NOT_IDENTIFIABLE} ({ident.reason})"
    return None


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class QueryResult:
    outcome: str
    do: Mapping[str, Any]
    given: Mapping[str, int]
    kind: str  # outcome kind: categorical | continuous | image
    probs: np.ndarray | None  # categorical: P(outcome = k | ...)
    ci: np.ndarray | None  # (k, 2) or (d, 2): 95% normal-approximation interval
    mean: np.ndarray | None  # continuous: E[outcome | ...]
    n: int  # accepted samples behind the estimate
    acceptance_rate: float  # 1.0 without evidence
    identification: Any | None = None  # mdcm.identify.Identification
    warning: str | None = None
    seconds: float = 0.0
    samples: np.ndarray | None = field(default=None, repr=False)

    @property
    def identifiable(self) -> bool | None:
        return None if self.identification is None else bool(self.identification.identifiable)

    def to_json(self) -> dict:
        return {
            "outcome": self.outcome,
            "do": {k: _jsonable(v) for k, v in self.do.items()},
            "given": dict(self.given),
            "kind": self.kind,
            "probs": None if self.probs is None else self.probs.tolist(),
            "ci": None if self.ci is None else self.ci.tolist(),
            "mean": None if self.mean is None else self.mean.tolist(),
            "n": self.n,
            "acceptance_rate": self.acceptance_rate,
            "identification": None
            if self.identification is None
            else self.identification.to_json(),
            "warning": self.warning,
            "seconds": self.seconds,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, int | float | str):
        return v
    arr = np.asarray(v.cpu() if torch.is_tensor(v) else v)
    return arr.tolist() if arr.size <= 16 else f"array{list(arr.shape)}"


def _check_names(model: DCM, names: Iterable[str], what: str) -> None:
    for v in names:
        if v not in model.specs:
            raise QueryError(
                f"{what} names unknown variable {v!r}; the model has {', '.join(model.order)}"
            )


def sample_interventional(
    model: DCM,
    n: int,
    do: Mapping[str, Any] | None = None,
    *,
    given: Mapping[str, int] | None = None,
    seed: int = 0,
    max_draws: int | None = None,
    min_accepted: int = 100,
) -> tuple[dict[str, torch.Tensor], float]:
    """Up to ``n`` samples of P(V | do(...), given) by rejection on discrete evidence.

    Returns (samples, acceptance rate). Raises :class:`QueryError` when fewer than
    ``min_accepted`` samples survive ``max_draws`` draws (default ``50 n``).
    """
    do, given = dict(do or {}), dict(given or {})
    _check_names(model, do, "do")
    _check_names(model, given, "evidence")
    for v, x in given.items():
        var = model.schema[v]
        if var.kind != "categorical":
            raise QueryError(
                f"evidence on {v!r}: only categorical evidence is supported ({v} is {var.kind})"
            )
        if not isinstance(x, int | np.integer) or not 0 <= int(x) < var.classes:
            raise QueryError(f"evidence {v}={x!r}: must be a class 0 … {var.classes - 1}")
        if v in do:
            raise QueryError(f"{v} is both intervened on and observed")
    if not given:
        return model.sample(n, do, seed=seed), 1.0
    max_draws = max_draws or 50 * n
    kept: dict[str, list[torch.Tensor]] = {v: [] for v in model.order}
    drawn = accepted = 0
    batch = max(n, 1024)
    i = 0
    while accepted < n and drawn < max_draws:
        m = min(batch, max_draws - drawn)
        s = model.sample(m, {k: v for k, v in do.items()}, seed=seed + 7919 * i)
        i += 1
        ok = torch.ones(m, dtype=torch.bool)
        for v, x in given.items():
            ok &= s[v].cpu() == int(x)
        drawn += m
        accepted += int(ok.sum())
        for v in model.order:
            kept[v].append(s[v][ok.to(s[v].device)])
        batch = min(max(batch, int(2 * (n - accepted) / max(accepted / drawn, 1e-3))), 65536)
    rate = accepted / max(drawn, 1)
    if accepted < min_accepted:
        ev = ", ".join(f"{k}={v}" for k, v in given.items())
        raise QueryError(
            f"evidence {ev} is too rare under the model ({accepted} of {drawn} "
            f"samples, acceptance rate {rate:.2%}); the estimate would be noise. "
            "Use fewer evidence variables or a more common value"
        )
    out = {v: torch.cat(kept[v])[:n] for v in model.order}
    return out, rate


def sample(
    model: DCM,
    n: int,
    do: Mapping[str, Any] | None = None,
    *,
    given: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``n`` samples of every variable from P(V | do(...)[, given]) (``mdcm.sample``): categorical
    int64 ``(n,)``, continuous ``(n, d)``, images ``(n, C, H, W)`` in [-1, 1]."""
    return sample_interventional(model, n, do, given=given, seed=seed)[0]


def interventional_distribution(
    model: DCM,
    outcome: str,
    do: Mapping[str, Any] | None = None,
    n: int = 4000,
    seed: int = 0,
    given: Mapping[str, int] | None = None,
    *,
    interventions: Iterable[Iterable[str]] = (),
    keep_samples: bool = False,
) -> QueryResult:
    """P(outcome | do(...)[, given]) from ``n`` (accepted) model samples, with the verdict.

    ``interventions`` lists the intervened sets of the interventional datasets the model was
    trained on (for the verdict). Categorical outcomes get probabilities with 95% intervals;
    continuous outcomes a mean with intervals; image outcomes only samples.
    """
    t0 = time.monotonic()
    do, given = dict(do or {}), dict(given or {})
    _check_names(model, [outcome], "outcome")
    try:
        samples, rate = sample_interventional(model, n, do, given=given, seed=seed)
    except ValueError as exc:
        if isinstance(exc, QueryError):
            raise
        raise QueryError(str(exc)) from None
    return result_from_samples(
        model,
        outcome,
        samples[outcome],
        rate,
        do,
        given,
        interventions=interventions,
        keep_samples=keep_samples,
        t0=t0,
    )


def result_from_samples(
    model: DCM,
    outcome: str,
    y: Any,
    rate: float = 1.0,
    do: Mapping[str, Any] | None = None,
    given: Mapping[str, int] | None = None,
    *,
    interventions: Iterable[Iterable[str]] = (),
    keep_samples: bool = False,
    t0: float | None = None,
) -> QueryResult:
    """The :class:`QueryResult` of samples ``y`` of ``outcome`` already drawn under ``do`` and
    ``given`` (acceptance ``rate``): one draw can feed several outcomes, charts and tables."""
    t0 = time.monotonic() if t0 is None else t0
    do, given = dict(do or {}), dict(given or {})
    ident = identification(model.schema.graph, list(do), [outcome], list(given), interventions)
    warning = _verdict_warning(ident)
    y = np.asarray(y.cpu() if torch.is_tensor(y) else y)
    var = model.schema[outcome]
    m = y.shape[0]
    probs = ci = mean = None
    if var.kind == "categorical":
        probs = np.bincount(y.astype(np.int64), minlength=var.classes) / max(m, 1)
        half = 1.96 * np.sqrt(probs * (1 - probs) / max(m, 1))
        ci = np.stack([np.clip(probs - half, 0, 1), np.clip(probs + half, 0, 1)], 1)
    elif var.kind == "continuous":
        yy = y.reshape(m, -1)
        mean = yy.mean(0)
        half = 1.96 * yy.std(0, ddof=1) / np.sqrt(max(m, 2))
        ci = np.stack([mean - half, mean + half], 1)
    return QueryResult(
        outcome,
        do,
        given,
        var.kind,
        probs,
        ci,
        mean,
        m,
        rate,
        ident,
        warning,
        time.monotonic() - t0,
        y if keep_samples or var.kind == "image" else None,
    )


# ---------------------------------------------------------------------- effects
@dataclass(frozen=True)
class EffectRow:
    value: int  # treatment value x
    probs: np.ndarray  # P(outcome | do(X=x)) (categorical) or mean (continuous)
    ci: np.ndarray  # 95% interval per entry
    naive: np.ndarray | None  # observational P(outcome | X=x) (or mean) from the data
    naive_n: int  # data rows with X=x
    effect: float  # P(Y=positive|do(x)) - P(Y=positive|do(ref)), or mean diff
    effect_ci: tuple[float, float]


@dataclass(frozen=True)
class EffectResult:
    treatment: str
    outcome: str
    reference: int
    positive: int | None  # outcome class whose probability the effect contrasts
    rows: tuple[EffectRow, ...]
    identification: Any | None
    warning: str | None  # non-identifiability and/or overlap warnings
    overlap: str | None
    n: int
    seconds: float

    @property
    def ate(self) -> float:
        """The effect of the last treatment value against the reference."""
        return self.rows[-1].effect

    def to_json(self) -> dict:
        return {
            "treatment": self.treatment,
            "outcome": self.outcome,
            "reference": self.reference,
            "positive": self.positive,
            "rows": [
                {
                    "value": r.value,
                    "probs": r.probs.tolist(),
                    "ci": r.ci.tolist(),
                    "naive": None if r.naive is None else r.naive.tolist(),
                    "naive_n": r.naive_n,
                    "effect": r.effect,
                    "effect_ci": list(r.effect_ci),
                }
                for r in self.rows
            ],
            "identification": None
            if self.identification is None
            else self.identification.to_json(),
            "warning": self.warning,
            "overlap": self.overlap,
            "n": self.n,
            "seconds": self.seconds,
        }


def effect_table(
    model: DCM,
    study: Any,
    treatment: str,
    outcome: str,
    n: int = 4000,
    seed: int = 0,
    *,
    reference: int = 0,
    positive: int | None = None,
    check_overlap: bool = True,
    results: Sequence[QueryResult] | None = None,
) -> EffectResult:
    """Per value x of a categorical ``treatment``: P(outcome | do(x)) with 95% intervals, the effect
    on P(outcome = positive) (default: the last class) against ``reference`` with a normal
    interval (independent samples), and the naive P(outcome | X=x) from the observational data.

    ``results`` (one :class:`QueryResult` per treatment value, in order) reuses answers already
    drawn, so a table and a chart of the same query show the same numbers."""
    t0 = time.monotonic()
    _check_names(model, [treatment, outcome], "effect query")
    tvar, yvar = model.schema[treatment], model.schema[outcome]
    if tvar.kind != "categorical":
        raise QueryError(f"effect_table needs a categorical treatment; {treatment} is {tvar.kind}")
    if yvar.kind == "image":
        raise QueryError(
            f"effect_table needs a categorical or continuous outcome; {outcome} is an image"
        )
    if not 0 <= reference < tvar.classes:
        raise QueryError(f"reference {reference} is not a class of {treatment}")
    if yvar.kind == "categorical":
        positive = yvar.classes - 1 if positive is None else positive
        if not 0 <= positive < yvar.classes:
            raise QueryError(f"positive class {positive} is not a class of {outcome}")
    interventions = list(getattr(study, "interventions", []) or []) if study is not None else []
    obs = getattr(study, "observational", None) if study is not None else None
    if results is not None and len(results) != tvar.classes:
        raise QueryError(
            f"results: {len(results)} answers for {tvar.classes} values of {treatment}"
        )
    res = (
        list(results)
        if results is not None
        else [
            interventional_distribution(
                model, outcome, {treatment: x}, n, seed + 101 * x, interventions=interventions
            )
            for x in range(tvar.classes)
        ]
    )

    def stat(r: QueryResult) -> tuple[float, float]:
        if yvar.kind == "categorical":
            p = float(r.probs[positive])
            return p, p * (1 - p) / max(r.n, 1)
        return float(r.mean[0]), float(((r.ci[0, 1] - r.ci[0, 0]) / (2 * 1.96)) ** 2)

    ref_mu, ref_var = stat(res[reference])
    rows = []
    for x, r in enumerate(res):
        mu, var = stat(r)
        eff = mu - ref_mu
        half = 0.0 if x == reference else 1.96 * float(np.sqrt(var + ref_var))
        naive, naive_n = None, 0
        if obs is not None and treatment in obs.columns and outcome in obs.columns:
            mask = np.asarray(obs.columns[treatment]) == x
            naive_n = int(mask.sum())
            yo = np.asarray(obs.columns[outcome])[mask]
            if naive_n:
                naive = (
                    np.bincount(yo, minlength=yvar.classes) / naive_n
                    if yvar.kind == "categorical"
                    else yo.reshape(naive_n, -1).mean(0)
                )
        rows.append(
            EffectRow(
                x,
                r.probs if r.probs is not None else r.mean,
                r.ci,
                naive,
                naive_n,
                eff,
                (eff - half, eff + half),
            )
        )
    ident = res[0].identification
    overlap = (
        overlap_warning(study, model.schema.graph, treatment, outcome)
        if check_overlap and study is not None
        else None
    )
    warning = "; ".join(w for w in (_verdict_warning(ident), overlap) if w) or None
    return EffectResult(
        treatment,
        outcome,
        reference,
        positive,
        tuple(rows),
        ident,
        warning,
        overlap,
        n,
        time.monotonic() - t0,
    )


# ---------------------------------------------------------------------- overlap
def predictability(x: np.ndarray, w: np.ndarray, kind: str, seed: int = 0) -> float:
    """Balanced accuracy of predicting the categorical ``x`` from ``w``.

    Categorical ``w``: the exact frequency table (predict the most frequent x per value of w).
    Continuous or image ``w``: a multinomial logistic regression on standardised (images: pooled
    to at most 8x8)
    features, fitted on 70% of the rows and scored on the other 30%.
    """
    x = np.asarray(x).astype(np.int64)
    k = int(x.max()) + 1 if len(x) else 1
    if kind == "categorical":
        w = np.asarray(w).astype(np.int64)
        table = np.zeros((int(w.max()) + 1, k))
        np.add.at(table, (w, x), 1)
        pred = table.argmax(1)[w]
        return _balanced_accuracy(x, pred, k)
    feats = torch.as_tensor(np.asarray(w, dtype=np.float32))
    if kind == "image":
        c, h, ww = feats.shape[1:]
        if max(h, ww) > 8:
            feats = torch.nn.functional.adaptive_avg_pool2d(feats, (min(h, 8), min(ww, 8)))
    feats = feats.reshape(len(x), -1)
    rng = np.random.RandomState(seed)
    perm = rng.permutation(len(x))
    cut = int(0.7 * len(x))
    tr, te = perm[:cut], perm[cut:]
    if len(te) == 0:
        return 0.0
    mu, sd = feats[tr].mean(0), feats[tr].std(0).clamp_min(1e-3)
    f = (feats - mu) / sd
    y = torch.as_tensor(x)
    torch_gen = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(f.shape[1], k)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=torch_gen)
        lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=60)
    ftr, ytr = f[tr], y[tr]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(ftr), ytr) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = lin(f[te]).argmax(1).numpy()
    return _balanced_accuracy(x[te], pred, k)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    recalls = [float((pred[y == c] == c).mean()) for c in range(k) if (y == c).any()]
    return float(np.mean(recalls)) if recalls else 0.0


def overlap_warning(
    study: Any,
    graph: Any,
    treatment: str,
    outcome: str,
    *,
    threshold: float = 0.95,
    max_rows: int = 2000,
    seed: int = 0,
) -> str | None:
    """A warning when ``treatment`` is almost perfectly predictable (balanced accuracy above
    ``threshold``) from a variable that its estimand adjusts for or passes through: a mediator
    (on a directed path treatment -> … -> outcome) or a parent of the treatment. Then some
    treatment values never occur with some values of that variable (positivity fails) and any
    answer for P(outcome | do(treatment)) rests on extrapolation (design.md §7)."""
    if study is None or getattr(study, "observational", None) is None:
        return None
    obs = study.observational
    schema = study.schema
    if treatment not in obs.columns or schema[treatment].kind != "categorical":
        return None
    mediators = (graph.descendants([treatment]) & graph.ancestors([outcome])) - {treatment, outcome}
    candidates = graph.order(mediators | (set(graph.parents(treatment)) - {outcome}))
    x = np.asarray(obs.columns[treatment])
    rows = np.arange(len(x))
    if len(rows) > max_rows:
        rows = np.sort(np.random.RandomState(seed).choice(len(x), max_rows, replace=False))
    if len(np.unique(x[rows])) < 2:
        return None
    found = []
    for w in candidates:
        if w not in obs.columns:
            continue
        acc = predictability(x[rows], np.asarray(obs.columns[w])[rows], schema[w].kind, seed)
        if acc > threshold:
            role = "mediator" if w in mediators else "adjustment variable"
            found.append(f"{w} ({role}, balanced accuracy {acc:.2f})")
    if not found:
        return None
    return (
        f"overlap problem: the treatment {treatment} can be predicted almost perfectly from "
        f"{', '.join(found)}. Some combinations never occur in the data, so the answer for "
        f"P({outcome} | do({treatment})) rests on extrapolation by the networks, not on data"
    )


# ---------------------------------------------------------------------- image probes (metrics)
class ImageProbe(torch.nn.Module):
    """A small conv classifier that reads hidden features (e.g. color, digit) off images; used by
    benchmarks and slow tests to measure what a generator draws."""

    def __init__(self, shape: tuple[int, ...], classes: Mapping[str, int]) -> None:
        super().__init__()
        c = shape[0]
        self.names = tuple(classes)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(c, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )
        self.heads = torch.nn.ModuleList(torch.nn.Linear(128, k) for k in classes.values())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(x)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        x = (
            torch.as_tensor(np.asarray(images, np.float32))
            if not torch.is_tensor(images)
            else images.float().cpu()
        )
        outs = [
            torch.cat(o)
            for o in zip(*(self(x[i : i + 2048]) for i in range(0, len(x), 2048)), strict=True)
        ]
        return {n: o.argmax(1).numpy() for n, o in zip(self.names, outs, strict=True)}

    def frequencies(
        self, images: torch.Tensor | np.ndarray, classes: Mapping[str, int]
    ) -> dict[str, np.ndarray]:
        pred = self.predict(images)
        return {n: np.bincount(pred[n], minlength=classes[n]) / len(pred[n]) for n in self.names}


def fit_image_probe(
    images: np.ndarray,
    features: Mapping[str, np.ndarray],
    classes: Mapping[str, int],
    steps: int = 600,
    seed: int = 0,
) -> tuple[ImageProbe, dict[str, float]]:
    """Fit an :class:`ImageProbe` on 85% of the rows; returns it and held-out accuracies."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(images, np.float32))
    ys = {k: torch.as_tensor(np.asarray(v, np.int64)) for k, v in features.items()}
    probe = ImageProbe(tuple(x.shape[1:]), {k: classes[k] for k in features})
    n = len(x)
    perm = torch.randperm(n, generator=gen)
    cut = int(0.85 * n)
    tr, te = perm[:cut], perm[cut:]
    opt = torch.optim.Adam(probe.parameters(), lr=2e-3)
    with torch.enable_grad():
        for _ in range(steps):
            idx = tr[torch.randint(0, len(tr), (128,), generator=gen)]
            outs = probe(x[idx])
            loss = sum(
                torch.nn.functional.cross_entropy(o, ys[k][idx])
                for o, k in zip(outs, probe.names, strict=True)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    probe.eval()
    pred = probe.predict(x[te])
    acc = {k: float((pred[k] == ys[k][te].numpy()).mean()) for k in probe.names}
    return probe, acc


def regime_fit_warning(
    model: DCM,
    treatment: Iterable[str],
    outcome: Iterable[str],
    given: Iterable[str] = (),
    interventions: Iterable[Iterable[str]] = (),
    *,
    slack: float = 0.02,
) -> str | None:
    """A warning when P(outcome | do(treatment), given) is identifiable only thanks to
    interventional datasets (gID, Lee, Correa & Bareinboim 2019) and the model fitted one of the
    datasets its answer rests on poorly: some stage's fit check on that regime read more than
    the training tolerance plus the check's noise floor (plus ``slack``). The training record
    comes from the model file (``model.record``, written by ``mdcm train``); None when fine."""
    from .identify import identify

    treatment, outcome, given = list(treatment), list(outcome), list(given)
    regimes = [frozenset(r) for r in interventions]
    if not treatment or not regimes:
        return None
    graph = model.schema.graph
    if identify(graph, treatment, outcome, given).identifiable:
        return None  # the observational data alone decide it
    ident = identify(graph, treatment, outcome, given, regimes)
    if not ident.identifiable:
        return None
    record = model.record
    tolerance = float(record.get("tolerance", 0.03))
    poor = []
    for regime in (r for r in ident.regimes_used if r):
        label = f"do({', '.join(graph.order(regime))})"
        for s in record.get("stages", ()):
            fit = (s.get("fits") or {}).get(label)
            allowed = allowed_fit(tolerance, float(s.get("floor") or 0.0))
            if fit is not None and fit > allowed + slack:
                poor.append(f"{label} in stage {s['stage']} (fit {fit:.3f})")
    if not poor:
        return None
    return (
        "this answer is identifiable only thanks to the experiment(s) "
        f"{', '.join(sorted({p.split(' in ')[0] for p in poor}))}, and the model fits that "
        f"data poorly: {'; '.join(poor)}; train longer or check that dataset"
    )
