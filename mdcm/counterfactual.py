"""Counterfactual queries by a twin network (design.md §5a).

``P(Y_{do(X=x)} | e)``: among the units whose *factual* values match the evidence ``e``, the
distribution of Y in the world where ``do(X=x)`` had held. The DCM is an SCM
(``V := G_V(pa(V), Z_V, U …)``), so its counterfactuals come from the twin network (Balke &
Pearl 1994): a factual and a counterfactual copy of every mechanism that share ALL exogenous
noise — each variable's own ``Z_V`` and every confounder's ``U``. Two calls of
:meth:`mdcm.model.DCM.forward_values` with one ``noise_seed`` are exactly that: the factual world
runs the mechanisms as they are, the counterfactual world with ``do(X=x)`` in ``fixed``; the
evidence is applied by rejection on the factual copy (the official Modular-DCM code does the
same with shared ``cf_exogenous`` noise and rejection on ``cf_evidence``).

What the answer means: when the query is identifiable (ID*/IDC*, Shpitser & Pearl 2007;
:func:`mdcm.identify.identify_counterfactual`), every model that fits the data gives the same
number, so a DCM that fits answers it correctly. Otherwise (the probability of necessity in a
back-door graph, the effect of treatment on the treated in the bow) the number depends on how the
networks happen to couple the noise across the two worlds, not on the data; results then carry
:data:`COUPLING_WARNING`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .model import DCM, NoiseStreams

__all__ = [
    "COUPLING_WARNING",
    "CounterfactualResult",
    "CounterfactualSamples",
    "counterfactual_distribution",
    "counterfactual_identification",
    "counterfactual_samples",
    "gumbel_posterior",
    "unit_counterfactual",
    "UnitCounterfactual",
    "UNIT_LEVEL_NOTE",
]

COUPLING_WARNING = (
    "not identifiable from the available data: this counterfactual depends on how the model "
    "couples the noise across the factual and the counterfactual world, not on the data; "
    "another model that fits the data equally well can give a different number"
)
NOT_IDENTIFIABLE = (
    "not identifiable from the available data: the model's answer is one of many that fit "
    "the data equally well (an interventional part of it is not identifiable)"
)
_CHUNK = 8192


def _query_error(message: str) -> Exception:
    from .query import QueryError  # query.py re-exports this module: import it lazily

    return QueryError(message)


def _ev_text(evidence: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in evidence.items()) or "(none)"


def check_evidence(model: DCM, evidence: Mapping[str, Any]) -> dict[str, int]:
    """Factual evidence as ``{name: class}``: known, categorical variables with a class in
    range; raises :class:`mdcm.query.QueryError` naming the offending entry."""
    out: dict[str, int] = {}
    for v, x in dict(evidence or {}).items():
        if v not in model.specs:
            raise _query_error(
                f"evidence names unknown variable {v!r}; the model has {', '.join(model.order)}"
            )
        var = model.schema[v]
        if var.kind == "image":
            raise _query_error(
                f"evidence on {v}: {v} is an image; condition on categorical variables only "
                "(a unit-level question about one image is answered by abduction, "
                "see mdcm.counterfactual.unit_counterfactual)"
            )
        if var.kind != "categorical":
            raise _query_error(
                f"evidence on {v}: {v} is {var.kind}; only categorical evidence is supported"
            )
        if isinstance(x, bool) or not isinstance(x, int | np.integer):
            raise _query_error(f"evidence {v}={x!r}: must be a class index 0 … {var.classes - 1}")
        if not 0 <= int(x) < var.classes:
            raise _query_error(
                f"evidence {v}={x}: out of range, {v} has classes 0 … {var.classes - 1}"
            )
        out[v] = int(x)
    return out


def _encode_do(model: DCM, do: Mapping[str, Any], n: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in do.items():
        if k not in model.specs:
            raise _query_error(
                f"do names unknown variable {k!r}; the model has {', '.join(model.order)}"
            )
        try:
            t = model.encode(k, v, n)
        except ValueError as exc:
            raise _query_error(str(exc)) from None
        if t.shape[0] != n:
            raise _query_error(f"do({k}=…): give one value, not {t.shape[0]} per-unit values")
        out[k] = t
    return out


def _rows(
    model: DCM, v: str, values: Mapping[str, torch.Tensor], idx: torch.Tensor
) -> torch.Tensor:
    """Decoded values of ``v`` for the units ``idx`` (a generated latent image is decoded from
    its code for those units only, not for every rejected one)."""
    codes = getattr(values, "codes", {})
    raw = model.coders[v].decode(codes[v][idx]) if v in codes else values[v][idx]
    return model.decode(v, raw).cpu()


# ---------------------------------------------------------------------- samples
@dataclass(frozen=True)
class CounterfactualSamples:
    """Accepted units in both worlds: ``factual[v][i]`` and ``counterfactual[v][i]`` are unit
    ``i`` (one draw of every exogenous noise) without and with the intervention. Values are
    decoded as by :meth:`mdcm.model.DCM.sample` (class indices, vectors, images in [-1, 1])."""

    factual: dict[str, torch.Tensor]
    counterfactual: dict[str, torch.Tensor]
    evidence: dict[str, int]
    do: dict[str, Any]
    drawn: int

    @property
    def n(self) -> int:
        return int(next(iter(self.factual.values())).shape[0]) if self.factual else 0

    @property
    def acceptance_rate(self) -> float:
        return self.n / max(self.drawn, 1) if self.evidence else 1.0


@torch.no_grad()
def counterfactual_samples(
    model: DCM,
    evidence: Mapping[str, int] | None,
    do: Mapping[str, Any] | None,
    n: int,
    seed: int = 0,
    *,
    max_draws: int | None = None,
    min_accepted: int | None = None,
) -> CounterfactualSamples:
    """Up to ``n`` units drawn from the twin network, kept when their factual values match
    ``evidence`` (rejection), each with its counterfactual values under ``do``.

    Draws at most ``max_draws`` units (default ``50 n``). Raises
    :class:`mdcm.query.QueryError` naming the evidence when none is accepted (impossible
    under the model) or fewer than ``min_accepted`` (default: a quarter of ``n``, at least
    100, at most ``n``): the estimate would be noise. With no intervention the two worlds
    are equal unit by unit."""
    model.check_schema()
    if n < 1:
        raise _query_error("n must be at least 1")
    evidence = check_evidence(model, evidence or {})
    do = dict(do or {})
    _encode_do(model, do, 1)  # validate the values once, with a clear message
    max_draws = int(max_draws or 50 * n)
    need = min(n, max(100, n // 4)) if min_accepted is None else min(n, int(min_accepted))
    fact: dict[str, list[torch.Tensor]] = {v: [] for v in model.order}
    cf: dict[str, list[torch.Tensor]] = {v: [] for v in model.order}
    base = int(np.random.SeedSequence([int(seed), 2024]).generate_state(1, np.uint64)[0] >> 2)
    drawn = accepted = i = 0
    was = model.training
    model.eval()
    try:
        while accepted < n and drawn < max_draws:
            rate = accepted / drawn if drawn else 1.0
            want = (n - accepted) / max(rate, 1e-3) * 1.2 if evidence else n - accepted
            m = int(min(max(want, 256 if evidence else 1), _CHUNK, max_draws - drawn))
            noise_seed = (base + 104_729 * i) % 2**62
            i += 1
            f_vals = model.forward_values(m, {}, noise_seed=noise_seed)
            c_vals = model.forward_values(m, _encode_do(model, do, m), noise_seed=noise_seed)
            ok = torch.ones(m, dtype=torch.bool, device=model.device)
            for v, x in evidence.items():
                ok &= model.decode(v, f_vals[v]) == x
            drawn += m
            k = int(ok.sum())
            if k:
                take = min(k, n - accepted)
                idx = ok.nonzero().flatten()[:take]
                for v in model.order:
                    fact[v].append(_rows(model, v, f_vals, idx))
                    cf[v].append(_rows(model, v, c_vals, idx))
                accepted += take
    finally:
        model.train(was)
    if accepted < need:
        rate = accepted / max(drawn, 1)
        what = (
            "never occurs under the model (acceptance 0): impossible evidence"
            if accepted == 0
            else f"is too rare under the model (acceptance rate {rate:.3%})"
        )
        raise _query_error(
            f"evidence {_ev_text(evidence)} {what}: {accepted} of {drawn} factual units match, "
            f"fewer than the {need} needed for n={n}. Use fewer evidence variables or a more "
            "common value"
        )
    return CounterfactualSamples(
        {v: torch.cat(t) for v, t in fact.items()},
        {v: torch.cat(t) for v, t in cf.items()},
        evidence,
        do,
        drawn,
    )


# ---------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class CounterfactualResult:
    """``P(outcome_{do} | evidence)`` (``counterfactual``) next to the same units' factual
    distribution ``P(outcome | evidence)`` (``factual``) and the interventional
    ``P(outcome | do)`` of the whole population (``interventional``), each a
    :class:`mdcm.query.QueryResult` (probabilities or a mean, 95% intervals), with the
    ID*/IDC* verdict of the counterfactual."""

    outcome: str
    evidence: dict[str, int]
    do: dict[str, Any]
    kind: str
    counterfactual: Any
    factual: Any
    interventional: Any | None
    n: int
    drawn: int
    acceptance_rate: float
    identification: Any | None
    query: str
    warning: str | None = None
    seconds: float = 0.0
    samples: CounterfactualSamples | None = field(default=None, repr=False, compare=False)

    @property
    def probs(self) -> np.ndarray | None:
        return self.counterfactual.probs

    @property
    def identifiable(self) -> bool | None:
        return None if self.identification is None else bool(self.identification.identifiable)

    def to_json(self) -> dict:
        from .query import _jsonable

        return {
            "query": self.query,
            "outcome": self.outcome,
            "evidence": dict(self.evidence),
            "do": {k: _jsonable(v) for k, v in self.do.items()},
            "kind": self.kind,
            "counterfactual": _estimate_json(self.counterfactual),
            "factual": _estimate_json(self.factual),
            "interventional": None
            if self.interventional is None
            else self.interventional.to_json(),
            "n": self.n,
            "drawn": self.drawn,
            "acceptance_rate": self.acceptance_rate,
            "identification": None
            if self.identification is None
            else self.identification.to_json(),
            "warning": self.warning,
            "seconds": self.seconds,
        }


def _estimate_json(r: Any) -> dict:
    """The estimate part of a world's :class:`mdcm.query.QueryResult` (its verdict is the
    counterfactual's, reported once)."""
    full = r.to_json()
    return {k: full[k] for k in ("probs", "ci", "mean", "n")}


def counterfactual_identification(
    model_or_schema: Any,
    outcome: str,
    do: Mapping[str, Any],
    evidence: Mapping[str, int],
    interventions: Iterable[Iterable[str]] = (),
) -> Any:
    """The ID*/IDC* verdict (:func:`mdcm.identify.identify_counterfactual`) for a query on this
    schema, with the classes of its categorical variables. A non-categorical do() value (an
    image, a vector) is checked as a generic value (class 0: only equality with other values
    of the same variable matters)."""
    from .identify import identify_counterfactual

    schema = getattr(model_or_schema, "schema", model_or_schema)
    classes = {v.name: v.classes for v in schema.variables if v.kind == "categorical"}
    do_vals = {k: (int(v) if schema[k].kind == "categorical" else 0) for k, v in do.items()}
    classes.update({k: 1 for k in do if schema[k].kind != "categorical"})
    return identify_counterfactual(
        schema.graph,
        {outcome: None},
        do_vals,
        dict(evidence),
        [list(i) for i in interventions],
        classes=classes,
    )


def counterfactual_distribution(
    model: DCM,
    outcome: str,
    evidence: Mapping[str, int] | None,
    do: Mapping[str, Any] | None,
    n: int = 4000,
    seed: int = 0,
    *,
    interventions: Iterable[Iterable[str]] = (),
    with_interventional: bool = True,
    keep_samples: bool = False,
) -> CounterfactualResult:
    """``P(outcome_{do} | evidence)`` from ``n`` accepted units of the twin network, with the
    factual distribution of the same units, the interventional answer (``n`` fresh samples of
    ``P(outcome | do)``) and the verdict. ``interventions`` lists the intervened sets of the
    model's interventional training datasets (they can make more terms identifiable)."""
    t0 = time.monotonic()
    do = dict(do or {})
    if outcome not in model.specs:
        raise _query_error(
            f"outcome names unknown variable {outcome!r}; the model has {', '.join(model.order)}"
        )
    if outcome in do:
        raise _query_error(f"{outcome} is both intervened on and the outcome")
    interventions = [list(i) for i in interventions]
    samples = counterfactual_samples(model, evidence, do, n, seed)
    from .identify import IdentificationError

    try:
        ident = counterfactual_identification(model, outcome, do, samples.evidence, interventions)
    except IdentificationError as exc:
        raise _query_error(str(exc)) from None
    from .query import interventional_distribution, result_from_samples

    var = model.schema[outcome]
    warning = None
    if not ident.identifiable:
        lead = COUPLING_WARNING if ident.cross_world else NOT_IDENTIFIABLE
        warning = f"{lead} ({ident.reason})"
    rate = samples.acceptance_rate
    keep = keep_samples or var.kind == "image"
    # the estimates of each world (result_from_samples gives no verdict without a treatment;
    # the counterfactual world carries the ID*/IDC* one)
    cf = replace(
        result_from_samples(
            model, outcome, samples.counterfactual[outcome], rate, keep_samples=keep
        ),
        do=do,
        given=samples.evidence,
        identification=ident,
        warning=warning,
    )
    fact = replace(
        result_from_samples(model, outcome, samples.factual[outcome], rate, keep_samples=keep),
        given=samples.evidence,
    )
    inter = None
    if with_interventional and do:
        inter = interventional_distribution(
            model, outcome, do, n, seed + 1, interventions=interventions
        )
    return CounterfactualResult(
        outcome,
        samples.evidence,
        do,
        var.kind,
        cf,
        fact,
        inter,
        samples.n,
        samples.drawn,
        samples.acceptance_rate,
        ident,
        ident.query,
        warning,
        time.monotonic() - t0,
        samples if keep_samples or var.kind == "image" else None,
    )


# ---------------------------------------------------------------------- unit level (stretch)
UNIT_LEVEL_NOTE = (
    "model-dependent: a unit-level counterfactual for one observed image rests on the model's "
    "own noise (its mixture component and Gaussian noise, abducted from the image's code) and "
    "on the Gumbel-max coupling of its choices; it is not identifiable from data alone in "
    "general (Pan & Bareinboim 2024). Read it as what this model imagines, not as a fact"
)


def gumbel_posterior(
    logits: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Gumbel noise ``g`` drawn from its posterior given that ``argmax(logits + g) = chosen``
    (top-down sampling: the maximum is Gumbel(logsumexp(logits)), the others are Gumbels
    truncated below it; Maddison et al. 2014, used for Gumbel-max counterfactuals by Oberst &
    Sontag 2019). ``logits`` (n, K), ``chosen`` (n,) -> ``g`` (n, K)."""

    def gumbel(shape: torch.Size) -> torch.Tensor:
        u = torch.rand(shape, generator=gen, device=logits.device).clamp(1e-10, 1 - 1e-7)
        return -torch.log(-torch.log(u))

    top = torch.logsumexp(logits, dim=1, keepdim=True) + gumbel(logits.shape[:1] + (1,))
    others = logits + gumbel(logits.shape)
    # truncate every other perturbed logit below the maximum: -log(e^-T + e^-G)
    trunc = -torch.logaddexp(-top, -others)
    y = trunc.scatter(1, chosen[:, None], top)
    return y - logits


@dataclass(frozen=True)
class UnitCounterfactual:
    """Counterfactuals of ONE unit whose image ``image`` was observed: ``n`` draws from the
    model's posterior over the unit's noise (importance-resampled, ``ess`` = effective sample
    size of the weights) in the factual and in the counterfactual world. ``note`` says why the
    answer is model-dependent."""

    image: str
    evidence: dict[str, int]
    do: dict[str, Any]
    factual: dict[str, torch.Tensor]
    counterfactual: dict[str, torch.Tensor]
    ess: float
    drawn: int
    note: str = UNIT_LEVEL_NOTE

    def distribution(self, outcome: str, world: str = "counterfactual", classes: int = 0):
        """Probabilities of a categorical ``outcome`` in one world among the draws."""
        vals = (self.counterfactual if world == "counterfactual" else self.factual)[outcome]
        return np.bincount(vals.numpy().astype(np.int64), minlength=classes) / max(len(vals), 1)


@torch.no_grad()
def unit_counterfactual(
    model: DCM,
    image: str,
    observed: Any,
    do: Mapping[str, Any],
    evidence: Mapping[str, int] | None = None,
    n: int = 256,
    seed: int = 0,
    *,
    particles: int = 4096,
) -> UnitCounterfactual:
    """ "This image, had ``do`` held": abduction, action, prediction (Pearl 2009, §7.1) for one
    unit whose image ``image`` (a latent image mechanism, :class:`mdcm.nets.LatentMixture`) was
    observed, plus optional categorical ``evidence`` about the same unit.

    Abduction: ``particles`` draws of the other noise from the prior; each is weighted by the
    mixture likelihood of the image's code given its sampled parents and confounder noise
    (exact for the image's own noise: the posterior over the component is
    ``w_k N(code; mu_k, s_k)`` normalised, then ``eps = (code - mu_k) / s_k``; the Gumbel noise
    of the component choice from :func:`gumbel_posterior`); evidence is applied by rejection.
    Action and prediction: the counterfactual world reruns every mechanism on the same noise
    with ``do``; the image's code there is ``mu'_{k'} + s'_{k'} eps`` with ``k'`` the Gumbel-max
    choice under the new parents. ``n`` units are resampled by weight. See
    :data:`UNIT_LEVEL_NOTE` for what such an answer means."""
    model.check_schema()
    if image not in model.specs or model.schema[image].kind != "image":
        raise _query_error(f"{image!r} is not an image variable of the model")
    if not model.latent_image(image):
        raise _query_error(
            f"unit-level abduction needs a latent image mechanism for {image} (this model's "
            f"image mechanism is {model.config.image_kind()!r})"
        )
    do = dict(do or {})
    if image in do:
        raise _query_error(f"{image} is both observed and intervened on: drop do({image}=…)")
    evidence = check_evidence(model, evidence or {})
    graph = model.schema.graph
    anc = graph.ancestors([image]) - {image}
    mech = model.generators[image]
    x_obs = model.encode(image, observed, 1)
    code_obs = model.coders[image].encode(x_obs)
    gen = torch.Generator(device=model.device).manual_seed(int(seed))
    base = int(np.random.SeedSequence([int(seed), 7]).generate_state(1, np.uint64)[0] >> 2)
    fact_parts: dict[str, list[torch.Tensor]] = {v: [] for v in model.order}
    cf_parts: dict[str, list[torch.Tensor]] = {v: [] for v in model.order}
    logw_parts: list[torch.Tensor] = []
    drawn = 0
    was = model.training
    model.eval()
    try:
        i = 0
        while drawn < particles:
            m = min(_CHUNK, particles - drawn)
            ns = (base + 104_729 * i) % 2**62
            i += 1
            streams = NoiseStreams(model, None, ns)
            # factual world: the image's ancestors from the prior, the image as observed
            f_anc = model.forward_values(m, {}, needed=anc, noise_seed=ns)
            cond, u = model.condition(image, f_anc, m), streams.u(image, m)
            code = code_obs.expand(m, -1)
            logits, mu, log_s = mech.params(cond, u)
            z = (code[:, None, :] - mu) * torch.exp(-log_s)
            comp = -0.5 * z.pow(2).sum(-1) - log_s.sum(-1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)
            joint = torch.log_softmax(logits, dim=1) + comp
            logw = torch.logsumexp(joint, dim=1)  # = mech.code_log_prob(cond, u, code)
            k = torch.multinomial(torch.softmax(joint, dim=1), 1, generator=gen)[:, 0]
            rows = torch.arange(m, device=model.device)
            eps = (code - mu[rows, k]) * torch.exp(-log_s[rows, k])
            g = gumbel_posterior(logits, k, gen)
            f_anc.set(image, x_obs.expand(m, *x_obs.shape[1:]))  # children read its code
            f_all = model.forward_values(m, f_anc, noise_seed=ns)
            ok = torch.ones(m, dtype=torch.bool, device=model.device)
            for v, x in evidence.items():
                ok &= model.decode(v, f_all[v]) == x
            # counterfactual world: the same noise, do(...), the image from its abducted noise
            enc_do = _encode_do(model, do, m)
            c_anc = model.forward_values(m, enc_do, needed=anc - set(do), noise_seed=ns)
            logits2, mu2, log_s2 = mech.params(model.condition(image, c_anc, m), u)
            k2 = (logits2 + g).argmax(1)
            code2 = mu2[rows, k2] + torch.exp(log_s2[rows, k2]) * eps
            c_anc.set_latent(image, code2, functools.partial(model.coders[image].decode, code2))
            c_all = model.forward_values(m, c_anc, noise_seed=ns)
            keep = ok.nonzero().flatten()
            drawn += m
            if len(keep):
                logw_parts.append(logw[keep])
                for v in model.order:
                    fact_parts[v].append(_rows(model, v, f_all, keep))
                    cf_parts[v].append(_rows(model, v, c_all, keep))
    finally:
        model.train(was)
    if not logw_parts:
        raise _query_error(
            f"evidence {_ev_text(evidence)} never occurs with this {image} under the model "
            f"(0 of {drawn} draws): impossible evidence for this unit"
        )
    logw = torch.cat(logw_parts)
    w = torch.softmax(logw - logw.max(), dim=0)
    ess = float(1.0 / (w**2).sum())
    pick = torch.multinomial(w, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    fact = {v: torch.cat(t)[pick] for v, t in fact_parts.items()}
    cf = {v: torch.cat(t)[pick] for v, t in cf_parts.items()}
    return UnitCounterfactual(image, evidence, do, fact, cf, ess, drawn)
