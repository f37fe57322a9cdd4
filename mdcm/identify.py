"""Is a causal query identifiable from the available data, and by which formula?

Three algorithms, all over :class:`~mdcm.graph.CausalGraph` (an ADMG):

* **ID** (Shpitser & Pearl 2006, "Identification of joint interventional distributions in
  recursive semi-Markovian causal models", AAAI, Fig. 3) for ``P(Y | do(X))`` from ``P(V)``.
  Sound and complete; on failure it returns a *hedge* (two c-forests F' ⊂ F) as the witness.
* **IDC** (Shpitser & Pearl 2006b, "Identification of conditional interventional distributions",
  UAI) for ``P(Y | do(X), Z)``: move every ``z`` that rule 2 of the do-calculus allows into
  the intervention set, then run ID on ``P(Y, Z' | do(X, Z''))`` and normalise over ``Y``.
* **gID** (Lee, Correa & Bareinboim 2019, "General identifiability with arbitrary surrogate
  experiments", UAI) when interventional datasets ``P_{do(I_k)}(V)`` are available besides
  ``P(V)``. We use its c-factor characterisation: with ``D = an(Y)`` in ``G[V \\ X]``,
  ``P(y | do(x)) = Σ_{d \\ y} Π_i Q[D_i]`` over the c-components ``D_i`` of ``G[D]``, and the query
  is g-identifiable iff every ``Q[D_i]`` is identifiable from some regime ``I_k`` with
  ``I_k ∩ D_i = ∅``, i.e. Tian's ``Identify(D_i, T, Q[T])`` succeeds for ``T`` the c-component of
  ``G[V \\ I_k]`` that contains ``D_i`` and ``Q[T]`` factorised from ``P_{do(I_k)}``
  (Tian & Pearl 2002, "A general identification condition for causal effects", AAAI).
  This is Alg. 1 of Lee et al. unrolled: its loop over experiments ``Z`` with ``Z ∩ V ⊆ X``
  at a single c-component ``S`` is our loop over regimes with ``I_k ∩ D_i = ∅``, and its
  ``subID`` (ID lines 5-7 in ``G \\ Z`` from ``P_z``) decides the same question as Tian's
  ``Identify`` in ``G[V \\ I_k]``. Each c-factor comes from one regime; different c-factors may
  come from different regimes.

For counterfactuals (``P(Y_{X=x} | X=x')``, the probability of necessity, any conjunction of
values in several worlds) **ID*** and **IDC*** (Shpitser & Pearl 2007, "What counterfactuals can
be tested", UAI; JMLR 2008) work on the counterfactual graph and reduce the query to
interventional terms, each then identified by ID / gID from the available data
(:func:`identify_counterfactual`, :func:`id_star`, :func:`idc_star`; estimands as
:class:`CfTerm` trees, :func:`render_counterfactual`, :func:`evaluate_counterfactual`).

Estimands are kept as a small expression tree (:class:`Prob`, :class:`Product`, :class:`Sum`,
:class:`Fraction`), rendered to text with textbook primes for re-bound variables
(``Σ_{M} P(M | X) Σ_{X'} P(X') P(Y | X', M)``), and evaluated exactly on discrete probability
tables by :func:`evaluate_estimand` (how the tests check the formulas against ground truth).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _callable_module
from .graph import CausalGraph

__all__ = [
    "CfTerm",
    "Counterfactual",
    "CounterfactualConflict",
    "CounterfactualIdentification",
    "CounterfactualUndefined",
    "Expr",
    "Fraction",
    "Identification",
    "IdentificationError",
    "Prob",
    "Product",
    "Sum",
    "evaluate_estimand",
    "free_variables",
    "evaluate_counterfactual",
    "id_star",
    "idc_star",
    "identify",
    "identify_counterfactual",
    "render",
    "render_counterfactual",
]


class IdentificationError(ValueError):
    """A malformed query: unknown variable, empty treatment/outcome, or overlapping sets."""


# ============================================================================ expression tree
@dataclass(frozen=True)
class Prob:
    """``P_{do(regime)}(target | given)``; ``regime`` empty means the observational P."""

    target: frozenset[str]
    given: frozenset[str] = frozenset()
    regime: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Product:
    """The product of ``factors``; the empty product is 1."""

    factors: tuple[Expr, ...]


@dataclass(frozen=True)
class Sum:
    """``Σ_{over} body`` (sums over every value combination of the variables in ``over``)."""

    over: frozenset[str]
    body: Expr


@dataclass(frozen=True)
class Fraction:
    """``num / den`` (0/0 is read as 0, as for conditionals of zero-probability events)."""

    num: Expr
    den: Expr


Expr = Prob | Product | Sum | Fraction
ONE = Product(())


def free_variables(e: Expr) -> frozenset[str]:
    """Variables whose values the expression depends on (not bound by a Σ)."""
    if isinstance(e, Prob):
        return e.target | e.given | e.regime
    if isinstance(e, Product):
        return frozenset().union(*(free_variables(f) for f in e.factors))
    if isinstance(e, Sum):
        return free_variables(e.body) - e.over
    return free_variables(e.num) | free_variables(e.den)


def _product(factors: Iterable[Expr]) -> Expr:
    """Flattened product without factors equal to 1, with the chain rule
    ``P(A | B) · P(C | A, B) = P(A, C | B)`` applied within one regime."""
    flat: list[Expr] = []
    for f in factors:
        if isinstance(f, Product):
            flat.extend(f.factors)
        else:
            flat.append(f)
    merged = True
    while merged:
        merged = False
        for i, f1 in enumerate(flat):
            for j, f2 in enumerate(flat):
                if (
                    i != j
                    and isinstance(f1, Prob)
                    and isinstance(f2, Prob)
                    and f1.regime == f2.regime
                    and f2.given == f1.given | f1.target
                    and not f1.target & f2.target
                ):
                    flat[i] = Prob(f1.target | f2.target, f1.given, f1.regime)
                    del flat[j]
                    merged = True
                    break
            if merged:
                break
    return flat[0] if len(flat) == 1 else Product(tuple(flat))


def _sum(over: Iterable[str], body: Expr) -> Expr:
    """``Σ_over body`` with exact simplifications: marginals of a single P, the chain rule
    (``Σ_v P(v, A | B) · f = P(A | B) · f`` when nothing else mentions ``v``) and pulling out
    factors that do not mention the summed variables."""
    over = frozenset(over)
    if not over:
        return body
    if isinstance(body, Sum):
        return _sum(over | body.over, body.body)
    if isinstance(body, Prob):
        if over <= body.target:
            rest = body.target - over
            return Prob(rest, body.given, body.regime) if rest else ONE
        return Sum(over, body)
    if isinstance(body, Product):
        factors = list(body.factors)
        changed = True
        while changed:
            changed = False
            for v in sorted(over):
                users = [i for i, f in enumerate(factors) if v in free_variables(f)]
                if len(users) == 1:
                    f = factors[users[0]]
                    if isinstance(f, Prob) and v in f.target and v not in f.given | f.regime:
                        rest = f.target - {v}
                        factors[users[0]] = Prob(rest, f.given, f.regime) if rest else ONE
                        over = over - {v}
                        changed = True
        inside = [f for f in factors if free_variables(f) & over]
        outside = [f for f in factors if not free_variables(f) & over]
        if not over:
            return _product(outside)
        inner = _product(inside)
        if isinstance(inner, Prob) and over <= inner.target:
            return _product(outside + [_sum(over, inner)])
        return _product(outside + [Sum(over, inner)])
    return Sum(over, body)


def _fraction(num: Expr, den: Expr) -> Expr:
    """``num / den`` with ``P(A, B | C) / P(B | C) = P(A | B, C)`` and ``x / 1 = x``."""
    if den == ONE:
        return num
    if num == den:
        return ONE
    if isinstance(num, Product) and den in num.factors:
        rest = list(num.factors)
        rest.remove(den)
        return _product(rest)
    if (
        isinstance(num, Prob)
        and isinstance(den, Prob)
        and num.given == den.given
        and num.regime == den.regime
        and den.target < num.target
    ):
        return Prob(num.target - den.target, num.given | den.target, num.regime)
    return Fraction(num, den)


def _marginal(p: Expr, scope: frozenset[str], keep: Iterable[str]) -> Expr:
    """``Σ_{scope \\ keep} p`` for a distribution ``p`` over ``scope``."""
    return _sum(scope - frozenset(keep), p)


def _conditional(p: Expr, scope: frozenset[str], v: str, before: Iterable[str]) -> Expr:
    """``p(v | before)`` for a distribution ``p`` over ``scope``, as a ratio of marginals."""
    before = frozenset(before)
    return _fraction(_marginal(p, scope, before | {v}), _marginal(p, scope, before))


# ============================================================================ rendering
def render(e: Expr, order: Callable[[str], object] | None = None) -> str:
    """Readable text of an estimand. A Σ that re-binds a variable already in use renders it
    primed (``X'``), as in the textbook front-door formula."""
    key = order or (lambda v: v)
    top = free_variables(e)
    return _render(e, {v: v for v in top}, frozenset(top), key)


def _names(vs: Iterable[str], env: Mapping[str, str], key: Callable[[str], object]) -> str:
    return ", ".join(env.get(v, v) for v in sorted(vs, key=key))


def _render(
    e: Expr, env: dict[str, str], taken: frozenset[str], key: Callable[[str], object]
) -> str:
    """``env`` maps variables to their shown names; ``taken`` holds every name shown by an
    enclosing scope (a shadowed name is never reused, so ``X`` always means the free X)."""
    if isinstance(e, Prob):
        head = "P" if not e.regime else f"P_{{do({_names(e.regime, env, key)})}}"
        body = _names(e.target, env, key)
        if e.given:
            body += " | " + _names(e.given, env, key)
        return f"{head}({body})"
    if isinstance(e, Product):
        if not e.factors:
            return "1"
        plain = [f for f in e.factors if not isinstance(f, Sum)]
        sums = [f for f in e.factors if isinstance(f, Sum)]
        parts = [_render_atom(f, env, taken, key) for f in plain]
        parts += [f"[{_render(f, env, taken, key)}]" for f in sums[:-1]]
        parts += [_render(f, env, taken, key) for f in sums[-1:]]
        return " ".join(parts)
    if isinstance(e, Sum):
        inner = dict(env)
        used = set(taken)
        shown = []
        for v in sorted(e.over, key=key):
            name = v
            while name in used:
                name += "'"
            used.add(name)
            inner[v] = name
            shown.append(name)
        return f"Σ_{{{', '.join(shown)}}} {_render(e.body, inner, frozenset(used), key)}"
    return f"{_render_atom(e.num, env, taken, key)} / {_render_atom(e.den, env, taken, key)}"


def _render_atom(
    e: Expr, env: dict[str, str], taken: frozenset[str], key: Callable[[str], object]
) -> str:
    text = _render(e, env, taken, key)
    return text if isinstance(e, Prob) or e == ONE else f"[{text}]"


# ============================================================================ evaluation
def evaluate_estimand(
    e: Expr, tables: np.ndarray | Mapping[Iterable[str], np.ndarray], names: Sequence[str]
) -> np.ndarray:
    """Evaluate an estimand exactly on discrete distributions.

    ``tables`` is the observational joint (an array with one axis per name in ``names``), or a
    mapping from a regime (the set of intervened names; empty = observational) to an array over
    all names whose entry at ``v`` is ``P_{do(I = v_I)}(v_{V \\ I})``. Returns an array with one
    axis per name, of full length for the free variables of ``e`` and length 1 otherwise.
    """
    if isinstance(tables, np.ndarray):
        regimes = {frozenset(): tables}
    else:
        regimes = {frozenset(k): np.asarray(v, dtype=float) for k, v in tables.items()}
    if frozenset() not in regimes:
        raise ValueError("evaluate_estimand needs the observational table (regime ())")
    axis = {v: i for i, v in enumerate(names)}
    card = regimes[frozenset()].shape
    if len(card) != len(names):
        raise ValueError(f"table has {len(card)} axes but {len(names)} names were given")
    for v in free_variables(e) | _bound_variables(e):
        if v not in axis:
            raise ValueError(f"estimand mentions {v!r}, which is not among the table names")

    def axes_except(keep: frozenset[str]) -> tuple[int, ...]:
        return tuple(i for v, i in axis.items() if v not in keep)

    def ev(x: Expr) -> np.ndarray:
        if isinstance(x, Prob):
            if x.regime not in regimes:
                raise ValueError(f"estimand needs the regime do({', '.join(sorted(x.regime))})")
            t = regimes[x.regime]
            num = t.sum(axis=axes_except(x.target | x.given | x.regime), keepdims=True)
            den = t.sum(axis=axes_except(x.given | x.regime), keepdims=True)
            return _safe_div(num, den)
        if isinstance(x, Product):
            out = np.ones((1,) * len(names))
            for f in x.factors:
                out = out * ev(f)
            return out
        if isinstance(x, Sum):
            body = ev(x.body)
            shape = list(body.shape)
            for v in x.over:
                shape[axis[v]] = card[axis[v]]
            body = np.broadcast_to(body, shape)
            return body.sum(axis=tuple(axis[v] for v in x.over), keepdims=True)
        return _safe_div(ev(x.num), ev(x.den))

    return ev(e)


def _bound_variables(e: Expr) -> frozenset[str]:
    if isinstance(e, Prob):
        return frozenset()
    if isinstance(e, Product):
        return frozenset().union(*(_bound_variables(f) for f in e.factors))
    if isinstance(e, Sum):
        return e.over | _bound_variables(e.body)
    return _bound_variables(e.num) | _bound_variables(e.den)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(num, den)
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


# ============================================================================ result type
@dataclass(frozen=True)
class Identification:
    """The verdict for one query. ``estimand`` is text (None when not identifiable); ``reason``
    says which route identified it, or names the witness of non-identifiability.
    ``expression`` (the estimand as a tree, for :func:`evaluate_estimand`) and ``witness``
    (e.g. the hedge's two c-forests) are excluded from equality."""

    identifiable: bool
    estimand: str | None
    reason: str
    expression: Expr | None = field(default=None, compare=False, repr=False)
    witness: tuple[frozenset[str], ...] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        return {"identifiable": self.identifiable, "estimand": self.estimand, "reason": self.reason}

    @property
    def regimes_used(self) -> tuple[frozenset[str], ...]:
        """The regimes (intervened sets; empty = observational) the estimand reads, sorted.
        A regime whose intervened variables are summed over in the estimand needs data at
        every value of them; one whose variables are treatments needs the queried value."""
        found: set[frozenset[str]] = set()

        def walk(e: Expr) -> None:
            if isinstance(e, Prob):
                found.add(e.regime)
            elif isinstance(e, Product):
                for f in e.factors:
                    walk(f)
            elif isinstance(e, Sum):
                walk(e.body)
            else:
                walk(e.num)
                walk(e.den)

        if self.expression is not None:
            walk(self.expression)
        return tuple(sorted(found, key=lambda r: (len(r), sorted(r))))


# ======================================================================= ID (Shpitser & Pearl 2006)
class _Hedge(Exception):
    """Line 5 of ID: FAIL(F, F') with F = the current graph's variables and F' = F ∩ S."""

    def __init__(
        self, f: frozenset[str], f_prime: frozenset[str], x: frozenset[str], y: frozenset[str]
    ) -> None:
        super().__init__(f, f_prime)
        self.f, self.f_prime, self.x, self.y = f, f_prime, x, y


def _id(y: frozenset[str], x: frozenset[str], p: Expr, g: CausalGraph, topo: Sequence[str]) -> Expr:
    """ID(y, x, P, G) of Shpitser & Pearl (2006), Fig. 3. ``p`` is an expression for the
    distribution over the variables of ``g``; ``topo`` is a topological order of the full
    graph (its restriction is the order π of every sub-graph)."""
    v = frozenset(g.nodes)
    order = [u for u in topo if u in v]

    def before(vi: str) -> list[str]:
        return order[: order.index(vi)]

    # Line 1: if x = ∅, return Σ_{v \ y} P(v).
    if not x:
        return _marginal(p, v, y)
    # Line 2: if V ≠ An(Y)_G, return ID(y, x ∩ An(Y), Σ_{v \ An(Y)} P, G_{An(Y)}).
    an = frozenset(g.ancestors(y))
    if an != v:
        return _id(y, x & an, _marginal(p, v, an), g.subgraph(an), topo)
    # Line 3: W = (V \ X) \ An(Y)_{G_{\bar X}}; if W ≠ ∅, return ID(y, x ∪ w, P, G).
    w = (v - x) - g.mutilate(x).ancestors(y)
    if w:
        return _id(y, x | w, p, g, topo)
    # Line 4: if C(G \ X) = {S_1, ..., S_k}, return Σ_{v \ (y ∪ x)} Π_i ID(s_i, v \ s_i, P, G).
    comps = g.subgraph(v - x).c_components()
    if len(comps) > 1:
        return _sum(v - (y | x), _product(_id(s, v - s, p, g, topo) for s in comps))
    # From here C(G \ X) = {S}.
    (s,) = comps
    g_comps = g.c_components()
    # Line 5: if C(G) = {G}, throw FAIL(G, G ∩ S)  (a hedge for the query).
    if len(g_comps) == 1:
        raise _Hedge(v, s, x, y)
    # Line 6: if S ∈ C(G), return Σ_{s \ y} Π_{V_i ∈ S} P(v_i | v_π^(i-1)).
    if s in g_comps:
        return _sum(s - y, _product(_conditional(p, v, vi, before(vi)) for vi in order if vi in s))
    # Line 7: if S ⊂ S' ∈ C(G), return ID(y, x ∩ S', Π_{V_i ∈ S'} P(V_i | V_π^(i-1) ∩ S',
    #         v_π^(i-1) \ S'), G_{S'}). The variables of v_π^(i-1) \ S' lie in X: they stay free.
    s2 = next(c for c in g_comps if s < c)
    p2 = _product(_conditional(p, v, vi, before(vi)) for vi in order if vi in s2)
    return _id(y, x & s2, p2, g.subgraph(s2), topo)


# ======================================================================= gID (Lee et al. 2019)
class _NotGIdentifiable(Exception):
    def __init__(self, d_i: frozenset[str], attempts: list[str]) -> None:
        super().__init__(d_i, attempts)
        self.d_i, self.attempts = d_i, attempts


class _TianFail(Exception):
    def __init__(self, t: frozenset[str]) -> None:
        super().__init__(t)
        self.t = t


def _tian_identify(
    c: frozenset[str], t: frozenset[str], q: Expr, g: CausalGraph, topo: Sequence[str]
) -> Expr:
    """Identify(C, T, Q[T]) of Tian & Pearl (2002): Q[C] from Q[T] for C ⊆ T, T a c-component
    of its own subgraph. Raises :class:`_TianFail` when An(C) in G[T] is all of T."""
    a = frozenset(g.subgraph(t).ancestors(c))
    # A = C: Q[C] = Σ_{T \ C} Q[T].
    if a == c:
        return _marginal(q, t, c)
    # A = T: FAIL.
    if a == t:
        raise _TianFail(t)
    # C ⊂ A ⊂ T: Q[A] = Σ_{T \ A} Q[T]; T' = the c-component of G[A] containing C;
    # Q[T'] = Π_{V_i ∈ T'} Q[H^(i)] / Q[H^(i-1)] over the topological prefixes H^(i) of A.
    q_a = _marginal(q, t, a)
    t2 = g.subgraph(a).c_component_of(next(iter(c)))
    order = [u for u in topo if u in a]
    q_t2 = _product(_conditional(q_a, a, vi, order[: order.index(vi)]) for vi in order if vi in t2)
    return _tian_identify(c, t2, q_t2, g, topo)


def _gid(
    y: frozenset[str],
    x: frozenset[str],
    regimes: Sequence[frozenset[str]],
    g: CausalGraph,
    topo: Sequence[str],
) -> tuple[Expr, list[tuple[frozenset, frozenset]]]:
    """P(y | do(x)) from {P_{do(I)} : I in regimes} (∅ = observational), via the c-factor
    criterion of Lee, Correa & Bareinboim (2019). Returns the estimand and, per c-factor D_i,
    the regime used."""
    v = frozenset(g.nodes)
    d = frozenset(g.subgraph(v - x).ancestors(y))
    used: list[tuple[frozenset, frozenset]] = []
    factors: list[Expr] = []
    for d_i in g.subgraph(d).c_components():
        attempts = []
        for z in regimes:
            if z & d_i:
                attempts.append(f"{_regime_text(z, g)} intervenes on {_set(z & d_i, g)}")
                continue
            rest = v - z
            g_z = g.subgraph(rest)
            t = g_z.c_component_of(next(iter(d_i)))
            # Q[T] for a c-component T of G[V \ I]: Π_{V_i ∈ T} P_{do(I)}(v_i | v_π^(i-1)).
            order = [u for u in topo if u in rest]
            q_t = _product(
                Prob(frozenset({vi}), frozenset(order[: order.index(vi)]), z)
                for vi in order
                if vi in t
            )
            try:
                factors.append(_tian_identify(d_i, t, q_t, g_z, topo))
            except _TianFail as fail:
                attempts.append(
                    f"{_regime_text(z, g)}: an({_set(d_i, g)}) covers "
                    f"its c-component {_set(fail.t, g)}"
                )
                continue
            used.append((d_i, z))
            break
        else:
            raise _NotGIdentifiable(d_i, attempts)
    return _sum(d - y, _product(factors)), used


# ============================================================================ public API
def _set(vs: Iterable[str], g: CausalGraph) -> str:
    return "{" + ", ".join(g.order(vs)) + "}"


def _list(vs: Iterable[str], g: CausalGraph) -> str:
    return ", ".join(g.order(vs))


def _regime_text(z: frozenset[str], g: CausalGraph) -> str:
    return "P" if not z else f"P_{{do({_list(z, g)})}}"


def _query_text(y: frozenset, x: frozenset, z: frozenset, g: CausalGraph) -> str:
    cond = f"do({_list(x, g)})" + (f", {_list(z, g)}" if z else "")
    return f"P({_list(y, g)} | {cond})"


def _names_arg(vs: Iterable[str] | str, what: str, g: CausalGraph) -> frozenset[str]:
    if isinstance(vs, str):
        vs = [vs]
    out = frozenset(vs)
    for v in out:
        if v not in g.nodes:
            raise IdentificationError(
                f"{what} names unknown variable {v!r}; the graph has {', '.join(g.nodes)}"
            )
    return out


def identify(
    graph: CausalGraph,
    treatment: Iterable[str],
    outcome: Iterable[str],
    given: Iterable[str] = (),
    interventions: Iterable[Iterable[str]] = (),
    *,
    algorithm: str = "auto",
) -> Identification:
    """Decide whether ``P(outcome | do(treatment), given)`` is identifiable from the
    observational distribution plus one interventional distribution per set in
    ``interventions`` (the variables intervened on in that dataset).

    Routes: rule 3 of the do-calculus when the treatment cannot affect the outcome (``P(Y | Z)``),
    rule 2 when nothing confounds them (``P(Y | X, Z)``); otherwise ID / IDC
    (Shpitser & Pearl 2006) from observational data; gID (Lee, Correa & Bareinboim 2019) when
    interventional datasets exist (conditional queries first move ``given`` variables into the
    intervention set by rule 2, as IDC does). ``algorithm`` = "id" or "gid" forces one of the two
    general algorithms (for cross-checks); "auto" picks as above.

    An estimand may leave free a variable that is neither treatment, outcome nor given (ID's
    line 3, or the intervened value of a surrogate regime); the text then ends with
    "(for any value of …)". A regime whose intervened variable is summed over in the estimand
    needs data at every value of it; see :attr:`Identification.regimes_used`.
    Raises :class:`IdentificationError` for unknown variables, an empty treatment or outcome,
    or overlapping treatment / outcome / given sets.
    """
    x = _names_arg(treatment, "treatment", graph)
    y = _names_arg(outcome, "outcome", graph)
    z = _names_arg(given, "given", graph)
    regimes: list[frozenset[str]] = [frozenset()]
    for k, i_k in enumerate(interventions):
        r = _names_arg(i_k, f"intervention set #{k + 1}", graph)
        if r not in regimes:
            regimes.append(r)
    if not x:
        raise IdentificationError("treatment is empty: name at least one intervened variable")
    if not y:
        raise IdentificationError("outcome is empty: name at least one outcome variable")
    for a, b, na, nb in (
        (x, y, "treatment", "outcome"),
        (x, z, "treatment", "given"),
        (y, z, "outcome", "given"),
    ):
        if a & b:
            raise IdentificationError(f"{_list(a & b, graph)} is both {na} and {nb}")
    if algorithm not in ("auto", "id", "gid"):
        raise IdentificationError(f"unknown algorithm {algorithm!r}: use 'auto', 'id' or 'gid'")
    use_gid = algorithm == "gid" or (algorithm == "auto" and len(regimes) > 1)
    topo = graph.topological_order()
    key = {v: i for i, v in enumerate(graph.nodes)}.__getitem__
    query = _query_text(y, x, z, graph)

    def done(expr: Expr, reason: str) -> Identification:
        text = render(expr, key)
        # ID's line 3 and surrogate regimes can leave variables that are neither treatment,
        # outcome nor given free in the formula; its value does not depend on them.
        extra = free_variables(expr) - (x | y | z)
        if extra:
            text += f"  (for any value of {_list(extra, graph)})"
        return Identification(True, text, reason, expression=expr)

    # Shortcut (rule 3): (Y ⊥ X | Z) in G_{\bar{X(Z)}}, X(Z) = X \ an(Z) ⇒ drop do(X).
    x_z = x - graph.ancestors(z) if z else x
    if algorithm == "auto" and graph.mutilate(x_z).d_separated(y, x, z):
        expr = Prob(y, z)
        return done(
            expr,
            f"no causal effect: {_list(y, graph)} is d-separated from "
            f"{_list(x, graph)}{' given ' + _list(z, graph) if z else ''} once "
            f"the edges into {_list(x_z, graph)} are removed (do-calculus rule 3), "
            f"so {query} = {render(expr, key)}",
        )
    # Shortcut (rule 2): (Y ⊥ X | Z) in G with X's outgoing edges removed ⇒ condition on X.
    if algorithm == "auto" and graph.remove_outgoing(x).d_separated(y, x, z):
        expr = Prob(y, x | z)
        return done(
            expr,
            f"no confounding path: {_list(y, graph)} is d-separated from "
            f"{_list(x, graph)}{' given ' + _list(z, graph) if z else ''} once "
            f"the edges out of {_list(x, graph)} are removed (do-calculus rule 2), "
            f"so {query} = {render(expr, key)}",
        )

    # IDC line 1: while some z ∈ Z has (Y ⊥ z | X, Z \ {z}) in G_{\bar X, \underline z},
    # replace P(y | do(x), z) by P(y | do(x, z), Z \ {z}) (rule 2).
    x2, z2 = x, z
    moved = True
    while moved:
        moved = False
        for zi in graph.order(z2):
            g_mod = graph.mutilate(x2).remove_outgoing([zi])
            if g_mod.d_separated(y, [zi], x2 | (z2 - {zi})):
                x2, z2 = x2 | {zi}, z2 - {zi}
                moved = True
                break
    idc_note = ""
    if z - z2:
        idc_note = f"; rule 2 turns {_list(z - z2, graph)} into interventions (IDC)"
    if z2:
        idc_note += f"; normalised over {_list(y, graph)} given {_list(z2, graph)} (IDC)"

    def normalise(p: Expr) -> Expr:
        # IDC line 2: P' = ID(y ∪ z, x, P, G); return P' / Σ_y P'.
        return _fraction(p, _sum(y, p)) if z2 else p

    if not use_gid:
        try:
            p = _id(y | z2, x2, Prob(frozenset(graph.nodes)), graph, topo)
        except _Hedge as h:
            roots = frozenset(u for u in h.f_prime if not set(graph.children(u)) & h.f_prime)
            treated = (x2 & h.f) or (h.x & h.f)
            reason = (
                f"not identifiable: ID fails on a hedge for {query} (Shpitser & Pearl "
                f"2006) within the c-forests F = {_set(h.f, graph)} and F' = "
                f"{_set(h.f_prime, graph)} (root set {_set(roots, graph)}): F meets the "
                f"treatment {_list(treated, graph)}, F' does not"
            )
            if z - z2:
                reason += f" (after IDC moved {_list(z - z2, graph)} into the interventions)"
            return Identification(False, None, reason, witness=(h.f, h.f_prime))
        return done(
            normalise(p), f"identified by the ID algorithm (Shpitser & Pearl 2006){idc_note}"
        )

    try:
        p, used = _gid(y | z2, x2, regimes, graph, topo)
    except _NotGIdentifiable as fail:
        avail = ", ".join(_regime_text(r, graph) for r in regimes)
        reason = (
            f"not identifiable from {avail}: no regime identifies the c-factor "
            f"Q[{_list(fail.d_i, graph)}] of {query} (gID, Lee, Correa & Bareinboim 2019): "
            + "; ".join(fail.attempts)
        )
        return Identification(False, None, reason, witness=(fail.d_i,))
    via = ", ".join(f"Q[{_list(d_i, graph)}] from {_regime_text(r, graph)}" for d_i, r in used)
    return done(normalise(p), f"identified by gID (Lee, Correa & Bareinboim 2019): {via}{idc_note}")


# ============================================================ ID* / IDC* (Shpitser & Pearl 2007)
#
# "What counterfactuals can be tested" (UAI 2007) and "Complete identification methods for the
# causal hierarchy" (JMLR 2008, Figs. 6-8). A counterfactual event is a conjunction of values of
# variables in possibly different worlds (``Y_{X=1} = 1 ∧ X = 0``). ID* builds the counterfactual
# graph (the parallel-worlds graph, every world sharing the exogenous noise, with copies that are
# provably the same random variable merged: Lemmas 24-25), factorises the event over its
# c-components and reads each factor as an interventional probability; a c-component whose
# factor would need one variable at two different values (line 8) is the witness of
# non-identifiability. Each factor ``P_{do(x)}(s)`` is then identified from the *available*
# distributions by ID / gID above (ID* itself assumes every interventional distribution P_*;
# Correa, Lee & Bareinboim 2021 compose the two steps in the same way).


@dataclass(frozen=True, order=True)
class Sym:
    """A summation value: the value of a free node of a counterfactual graph (``tag`` is unique
    within one estimand; rendered ``z``, ``z'``, ...)."""

    var: str
    tag: int


CfValue = int | Sym


def _value_key(v: CfValue) -> tuple:
    return (0, v, "") if isinstance(v, int) else (1, v.tag, v.var)


@dataclass(frozen=True)
class Counterfactual:
    """The variable ``variable`` in the world where ``do(world)`` holds (empty: the factual
    world), e.g. ``Counterfactual("Y", frozenset({("X", 1)}))`` is ``Y_{X=1}``."""

    variable: str
    world: frozenset[tuple[str, CfValue]] = frozenset()

    @classmethod
    def of(cls, variable: str, do: Mapping[str, CfValue] | None = None) -> Counterfactual:
        return cls(variable, frozenset((do or {}).items()))

    @property
    def do(self) -> dict[str, CfValue]:
        return dict(self.world)


Event = Mapping[Counterfactual, CfValue]


# ---------------------------------------------------------------- counterfactual estimands
@dataclass(frozen=True)
class CfTerm:
    """``P_{do(do)}(y | given)`` at the given values (ints, or :class:`Sym` bound by a CfSum)."""

    y: tuple[tuple[str, CfValue], ...]
    do: tuple[tuple[str, CfValue], ...] = ()
    given: tuple[tuple[str, CfValue], ...] = ()

    def signature(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """(outcome, treatment, given) variables: terms with one signature share one estimand."""
        return (
            frozenset(v for v, _ in self.y),
            frozenset(v for v, _ in self.do),
            frozenset(v for v, _ in self.given),
        )


@dataclass(frozen=True)
class CfConst:
    value: float


@dataclass(frozen=True)
class CfProduct:
    factors: tuple[CfExpr, ...]


@dataclass(frozen=True)
class CfSum:
    over: tuple[Sym, ...]
    body: CfExpr


@dataclass(frozen=True)
class CfFraction:
    num: CfExpr
    den: CfExpr


@dataclass(frozen=True)
class CfDifference:
    plus: CfExpr
    minus: CfExpr


CfExpr = CfTerm | CfConst | CfProduct | CfSum | CfFraction | CfDifference
CF_ZERO, CF_ONE = CfConst(0.0), CfConst(1.0)


def _items(d: Mapping[str, CfValue]) -> tuple[tuple[str, CfValue], ...]:
    return tuple(sorted(d.items()))


def _cf_product(factors: Iterable[CfExpr]) -> CfExpr:
    flat: list[CfExpr] = []
    for f in factors:
        if f == CF_ZERO:
            return CF_ZERO
        if isinstance(f, CfProduct):
            flat.extend(f.factors)
        elif f != CF_ONE:
            flat.append(f)
    if not flat:
        return CF_ONE
    return flat[0] if len(flat) == 1 else CfProduct(tuple(flat))


def _cf_sum(over: Iterable[Sym], body: CfExpr) -> CfExpr:
    over = tuple(sorted(set(over)))
    if not over or body == CF_ZERO:
        return body
    return CfSum(over, body)


def _cf_fraction(num: CfExpr, den: CfExpr) -> CfExpr:
    if num == CF_ZERO:
        return CF_ZERO
    if den == CF_ONE:
        return num
    if (
        isinstance(num, CfTerm)
        and isinstance(den, CfTerm)
        and num.do == den.do
        and num.given == den.given
        and set(den.y) < set(num.y)
    ):
        rest = tuple(i for i in num.y if i not in den.y)
        return CfTerm(rest, num.do, tuple(sorted(set(num.given) | set(den.y))))
    return CfFraction(num, den)


def cf_terms(e: CfExpr) -> list[CfTerm]:
    """The interventional terms of a counterfactual estimand (in order, with repeats)."""
    if isinstance(e, CfTerm):
        return [e]
    if isinstance(e, CfConst):
        return []
    if isinstance(e, CfProduct):
        return [t for f in e.factors for t in cf_terms(f)]
    if isinstance(e, CfSum):
        return cf_terms(e.body)
    if isinstance(e, CfFraction):
        return cf_terms(e.num) + cf_terms(e.den)
    return cf_terms(e.plus) + cf_terms(e.minus)


def render_counterfactual(e: CfExpr, order: Callable[[str], object] | None = None) -> str:
    """Readable text: ``Σ_{z} P_{do(X=1, Z=z)}(Y=1) P_{do(Z=z)}(X=0) P(Z=z) / P(X=0)``."""
    key = order or (lambda v: v)
    names: dict[Sym, str] = {}

    def sym(s: Sym) -> str:
        if s not in names:
            base = s.var.lower()
            taken = set(names.values())
            name = base
            while name in taken:
                name += "'"
            names[s] = name
        return names[s]

    def val(v: CfValue) -> str:
        return sym(v) if isinstance(v, Sym) else str(v)

    def assign(items: Iterable[tuple[str, CfValue]]) -> str:
        return ", ".join(f"{k}={val(v)}" for k, v in sorted(items, key=lambda kv: key(kv[0])))

    def atom(x: CfExpr) -> str:
        text = go(x)
        return text if isinstance(x, CfTerm | CfConst) else f"[{text}]"

    def go(x: CfExpr) -> str:
        if isinstance(x, CfConst):
            return f"{x.value:g}"
        if isinstance(x, CfTerm):
            head = f"P_{{do({assign(x.do)})}}" if x.do else "P"
            body = assign(x.y) + (f" | {assign(x.given)}" if x.given else "")
            return f"{head}({body})"
        if isinstance(x, CfProduct):
            return " ".join(atom(f) for f in x.factors)
        if isinstance(x, CfSum):
            return f"Σ_{{{', '.join(sym(s) for s in x.over)}}} {go(x.body)}"
        if isinstance(x, CfFraction):
            return f"{atom(x.num)} / {atom(x.den)}"
        return f"{atom(x.plus)} - {atom(x.minus)}"

    return go(e)


def evaluate_counterfactual(
    e: CfExpr, term: Callable[[CfTerm], float], cards: Mapping[str, int]
) -> float:
    """The value of a counterfactual estimand, given the value of each interventional term at
    concrete values (``term``) and the number of classes of every summed variable (0/0 = 0)."""

    def subst(x: CfExpr, env: Mapping[Sym, int]) -> CfExpr:
        if isinstance(x, CfTerm):

            def fix(items: tuple[tuple[str, CfValue], ...]) -> tuple[tuple[str, CfValue], ...]:
                return tuple((k, env.get(v, v) if isinstance(v, Sym) else v) for k, v in items)

            return CfTerm(fix(x.y), fix(x.do), fix(x.given))
        return x

    def ev(x: CfExpr, env: dict[Sym, int]) -> float:
        if isinstance(x, CfConst):
            return x.value
        if isinstance(x, CfTerm):
            t = subst(x, env)
            for _, v in t.y + t.do + t.given:
                if isinstance(v, Sym):
                    raise ValueError(f"unbound summation value {v} in {render_counterfactual(x)}")
            return float(term(t))
        if isinstance(x, CfProduct):
            out = 1.0
            for f in x.factors:
                out *= ev(f, env)
                if out == 0.0:
                    break
            return out
        if isinstance(x, CfSum):
            total = 0.0
            for values in itertools.product(*(range(cards[s.var]) for s in x.over)):
                total += ev(x.body, {**env, **dict(zip(x.over, values, strict=True))})
            return total
        if isinstance(x, CfFraction):
            den = ev(x.den, env)
            return ev(x.num, env) / den if den > 0 else 0.0
        return ev(x.plus, env) - ev(x.minus, env)

    return ev(e, {})


# ---------------------------------------------------------------- the counterfactual graph
class CounterfactualConflict(Exception):
    """ID* line 8: one c-component of the counterfactual graph needs ``variable`` at two
    different values (``values``), so the query is not identifiable (Shpitser & Pearl 2007)."""

    def __init__(
        self, variable: str, values: tuple[CfValue, CfValue], district: tuple[Counterfactual, ...]
    ) -> None:
        super().__init__(variable, values, district)
        self.variable, self.values, self.district = variable, values, district


class CounterfactualUndefined(ValueError):
    """IDC* line 1: the evidence of a conditional counterfactual has probability 0."""


@dataclass
class _CfGraph:
    """A counterfactual graph: nodes (each one representative counterfactual variable), their
    parents, the fixed (intervened) nodes with values, and the event on the representatives."""

    nodes: list[Counterfactual]
    parents: dict[Counterfactual, list[Counterfactual]]
    fixed: dict[Counterfactual, CfValue]
    values: dict[Counterfactual, CfValue]
    rep: dict[Counterfactual, Counterfactual]  # every original node -> its representative

    def ancestors(self, vs: Iterable[Counterfactual]) -> set[Counterfactual]:
        out, stack = set(vs), list(vs)
        while stack:
            for p in self.parents[stack.pop()]:
                if p not in out:
                    out.add(p)
                    stack.append(p)
        return out

    def districts(self, g: CausalGraph) -> list[list[Counterfactual]]:
        """c-components over the non-fixed nodes: copies of one variable share its noise, and
        copies of the two ends of a bidirected edge share that edge's confounder."""
        free = [n for n in self.nodes if n not in self.fixed]
        parent = {n: n for n in free}

        def find(a: Counterfactual) -> Counterfactual:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        spouses = {v: set(g.spouses(v)) for v in g.nodes}
        for i, a in enumerate(free):
            for b in free[i + 1 :]:
                if a.variable == b.variable or b.variable in spouses[a.variable]:
                    parent[find(a)] = find(b)
        groups: dict[Counterfactual, list[Counterfactual]] = {}
        for n in free:
            groups.setdefault(find(n), []).append(n)
        return list(groups.values())

    def as_graph(self, g: CausalGraph) -> tuple[CausalGraph, dict[Counterfactual, str]]:
        """The counterfactual graph as an ADMG with plain node names (for d-separation): a
        bidirected edge wherever two non-fixed nodes share noise (copies of one variable, or
        copies of the two ends of a bidirected edge of ``g``)."""
        name = {n: f"n{i}" for i, n in enumerate(self.nodes)}
        free = [n for n in self.nodes if n not in self.fixed]
        directed = [(name[p], name[n]) for n in self.nodes for p in self.parents[n]]
        bidirected = [
            (name[a], name[b])
            for i, a in enumerate(free)
            for b in free[i + 1 :]
            if a.variable == b.variable or b.variable in g.spouses(a.variable)
        ]
        return CausalGraph.build(list(name.values()), directed, bidirected), name


def _world_key(w: frozenset[tuple[str, CfValue]]) -> tuple:
    return (len(w), sorted((k, _value_key(v)) for k, v in w))


def _make_cg(g: CausalGraph, event: Event) -> _CfGraph | None:
    """make-cg (Shpitser & Pearl 2008, Fig. 6): the parallel-worlds graph of the worlds in
    ``event`` (plus the factual one), with copies merged in topological order whenever they
    have the same mechanism and parents that are the same node or attain the same value, by
    observation or intervention (Lemmas 24-25). Returns None when merging shows the event to be
    inconsistent (one random variable at two values), and keeps only the ancestors of the
    event."""
    worlds = sorted({frozenset()} | {cf.world for cf in event}, key=_world_key)
    fixed: dict[Counterfactual, CfValue] = {}
    for w in worlds:
        for v, x in w:
            fixed[Counterfactual(v, w)] = x
    rep: dict[Counterfactual, Counterfactual] = {}

    def find(n: Counterfactual) -> Counterfactual:
        while rep.get(n, n) != n:
            n = rep[n]
        return n

    values: dict[Counterfactual, CfValue] = dict(event)

    def value(n: Counterfactual) -> CfValue | None:
        n = find(n)
        return fixed[n] if n in fixed else values.get(n)

    for v in g.topological_order():
        pa = g.parents(v)
        kept: list[Counterfactual] = []
        for w in worlds:
            b = Counterfactual(v, w)
            if b in fixed:
                continue
            for a in kept:
                same = True
                for p in pa:
                    pa_a, pa_b = find(Counterfactual(p, a.world)), find(Counterfactual(p, w))
                    if pa_a != pa_b and (value(pa_a) is None or value(pa_a) != value(pa_b)):
                        same = False
                        break
                if same:
                    if b in values:
                        if a in values and values[a] != values[b]:
                            return None
                        values[a] = values.pop(b)
                    rep[b] = a
                    break
            else:
                kept.append(b)
    nodes_all = [
        Counterfactual(v, w) for v in g.topological_order() for w in worlds
    ]  # originals, in topological order
    reps = [n for n in nodes_all if find(n) == n]
    parents = {
        n: ([] if n in fixed else [find(Counterfactual(p, n.world)) for p in g.parents(n.variable)])
        for n in reps
    }
    cg = _CfGraph(reps, parents, fixed, values, {n: find(n) for n in nodes_all})
    keep = cg.ancestors(values)
    cg.nodes = [n for n in reps if n in keep]
    cg.parents = {n: parents[n] for n in cg.nodes}
    cg.fixed = {n: x for n, x in fixed.items() if n in keep}
    return cg


def _event_for(cg: _CfGraph, event: Event) -> dict[Counterfactual, CfValue]:
    """``event`` in terms of the representatives of ``cg`` (its values after merging)."""
    return {cg.rep[cf]: cg.values[cg.rep[cf]] for cf in event}


def id_star(g: CausalGraph, event: Event, *, _tags: list[int] | None = None) -> CfExpr:
    """ID* (Shpitser & Pearl 2008, Fig. 7): ``P(event)`` as an expression in interventional
    probabilities. Raises :class:`CounterfactualConflict` when it is not identifiable even
    from every interventional distribution (line 8)."""
    tags = _tags if _tags is not None else [0]
    # Line 1: the empty conjunction has probability 1.
    if not event:
        return CF_ONE
    # Line 2: a variable set by its own world to another value (effectiveness): probability 0.
    # Line 3: ... to the same value: a tautology that can be dropped.
    reduced: dict[Counterfactual, CfValue] = {}
    for cf, x in event.items():
        own = cf.do.get(cf.variable)
        if own is None:
            reduced[cf] = x
        elif own != x:
            return CF_ZERO
    if len(reduced) != len(event):
        return id_star(g, reduced, _tags=tags)
    if all(not cf.world for cf in event):  # a factual event: read it off P(V)
        return CfTerm(_items({cf.variable: x for cf, x in event.items()}))
    # Line 4-5: the counterfactual graph, or INCONSISTENT (probability 0).
    cg = _make_cg(g, event)
    if cg is None:
        return CF_ZERO
    # Line 6: factorise over the c-components of the counterfactual graph, summing over the
    # values of the nodes that the event leaves free. Lines 7-9 per component S: the factor is
    # the conjunction of each node under its parents' values, i.e. P_{do(pa(S) \ S)}(s) when
    # no variable is needed at two different values (else line 8 fails).
    sym: dict[Counterfactual, Sym] = {}
    for n in cg.nodes:
        if n not in cg.fixed and n not in cg.values:
            tags[0] += 1
            sym[n] = Sym(n.variable, tags[0])

    def value(n: Counterfactual) -> CfValue:
        return cg.fixed[n] if n in cg.fixed else cg.values.get(n, sym.get(n))

    factors = [_district_factor(cg, d, value) for d in cg.districts(g)]
    return _cf_sum(sym.values(), _cf_product(factors))


def _district_factor(
    cg: _CfGraph, district: list[Counterfactual], value: Callable[[Counterfactual], CfValue]
) -> CfTerm:
    """ID* lines 7-9 for one c-component S: ``P_{do(pa(S) \\ S)}(s)``, each node under its
    parents' values; :class:`CounterfactualConflict` when a variable is needed at two values
    (as a node of S and/or as a parent of one)."""
    inside = set(district)
    assign: dict[str, CfValue] = {}
    y: dict[str, CfValue] = {}
    needed = [(n.variable, value(n)) for n in district]
    y.update(needed)
    needed += [(p.variable, value(p)) for n in district for p in cg.parents[n] if p not in inside]
    for var, x in needed:
        if var in assign and assign[var] != x:
            raise CounterfactualConflict(var, (assign[var], x), tuple(district))
        assign[var] = x
    return CfTerm(_items(y), _items({k: x for k, x in assign.items() if k not in y}))


def idc_star(
    g: CausalGraph, gamma: Event, delta: Event, *, _tags: list[int] | None = None
) -> CfExpr:
    """IDC* (Shpitser & Pearl 2008, Fig. 8): ``P(gamma | delta)``. Evidence that is
    d-separated from the outcome once its outgoing edges are cut becomes an intervention
    (line 4, the counterfactual rule 2; we condition on the rest of the evidence, as rule 2
    does); the rest is ``ID*(gamma ∧ delta) / ID*(delta)``. Raises
    :class:`CounterfactualConflict` (not identifiable) or :class:`CounterfactualUndefined`
    (evidence of probability 0)."""
    tags = _tags if _tags is not None else [0]
    gamma, delta = dict(gamma), dict(delta)
    for part in (gamma, delta):  # effectiveness (ID* lines 2-3) on both parts
        for cf, x in list(part.items()):
            own = cf.do.get(cf.variable)
            if own is not None and own != x:
                if part is delta:
                    raise CounterfactualUndefined("the evidence has probability 0")
                return CF_ZERO
            if own is not None:
                del part[cf]
    if not delta:
        return id_star(g, gamma, _tags=tags)
    # Line 1: undefined when the evidence is impossible.
    try:
        if id_star(g, delta, _tags=tags) == CF_ZERO:
            raise CounterfactualUndefined("the evidence has probability 0")
    except CounterfactualConflict:
        pass
    # Lines 2-3: the counterfactual graph of the whole event.
    clash = [cf for cf in gamma if cf in delta and gamma[cf] != delta[cf]]
    if clash:
        return CF_ZERO
    cg = _make_cg(g, {**gamma, **delta})
    if cg is None:
        return CF_ZERO
    d2 = _event_for(cg, delta)
    g2 = {n: x for n, x in _event_for(cg, gamma).items() if n not in d2}
    if all(not n.world for n in (*g2, *d2)):  # consistency made it factual: P(gamma | delta)
        if not g2:
            return CF_ONE
        factual = {n.variable: x for n, x in g2.items()}
        return CfTerm(_items(factual), given=_items({n.variable: x for n, x in d2.items()}))
    # Line 4: move evidence into the subscripts when rule 2 allows it. This is rule 2 in the
    # counterfactual graph G' read as a causal diagram: if y_x ⊥ γ' | δ' \ {y_x} in G' with
    # the edges out of y_x cut, observing y_x equals setting it, and setting it adds Y=y to
    # the world of every node downstream of it in G' -- evidence nodes included (leaving
    # them in their old world, as a literal reading of line 4 does, is wrong when the
    # moved variable is a parent of other evidence: Z -> W <-> Y, δ = {Z, W}).
    if g2:
        adm, name = cg.as_graph(g)
        fixed_names = [name[n] for n in cg.fixed]
        for n in sorted(d2, key=lambda c: (g.nodes.index(c.variable), _world_key(c.world))):
            others = [name[m] for m in d2 if m != n]
            cut = adm.remove_outgoing([name[n]])
            if cut.d_separated([name[n]], [name[m] for m in g2], others + fixed_names):

                def moved(part: Mapping[Counterfactual, CfValue], n=n) -> dict:
                    out: dict[Counterfactual, CfValue] = {}
                    for m, x in part.items():
                        if m != n and n in cg.ancestors([m]) and n.variable not in m.do:
                            m = Counterfactual(m.variable, m.world | {(n.variable, d2[n])})
                        out[m] = x
                    return out

                rest = moved({m: x for m, x in d2.items() if m != n})
                return idc_star(g, moved(g2), rest, _tags=tags)
    # Lines 5-6: P' = ID*(gamma' ∧ delta'), normalised by P(delta').
    num = id_star(g, {**g2, **d2}, _tags=tags)
    try:
        den = id_star(g, d2, _tags=tags)
    except CounterfactualConflict:
        # Σ_{gamma'} P' identifies P(delta') whenever P' is identified
        fresh = {}
        for n in g2:
            tags[0] += 1
            fresh[n] = Sym(n.variable, tags[0])
        den = _cf_sum(fresh.values(), id_star(g, {**fresh, **d2}, _tags=tags))
    return _cf_fraction(num, den)


# ---------------------------------------------------------------- counterfactual queries
@dataclass(frozen=True)
class CounterfactualIdentification(Identification):
    """The verdict for a counterfactual query ``P(Y_{do} | evidence)``. ``formula`` is the
    ID*/IDC* estimand over interventional terms (:func:`render_counterfactual`,
    :func:`evaluate_counterfactual`); ``factors`` the verdict of each distinct term from the
    available distributions (ID / gID); ``witness`` on failure: (the c-component's
    variables, the variable needed at two values)."""

    query: str = ""
    cross_world: bool = False  # failed at ID* line 8 (not identifiable even from every P_x)
    formula: CfExpr | None = field(default=None, compare=False, repr=False)
    factors: tuple[tuple[str, Identification], ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict:
        out = super().to_json()
        out["query"] = self.query
        out["factors"] = [
            {"term": t, "identifiable": i.identifiable, "estimand": i.estimand}
            for t, i in self.factors
        ]
        return out

    @property
    def regimes_used(self) -> tuple[frozenset[str], ...]:
        found = {r for _, i in self.factors for r in i.regimes_used}
        return tuple(sorted(found, key=lambda r: (len(r), sorted(r))))


def _cf_name(cf: Counterfactual, g: CausalGraph) -> str:
    if not cf.world:
        return cf.variable
    do = dict(cf.world)
    inner = ", ".join(f"{k}={_show_value(do[k])}" for k in g.order(do))
    return f"{cf.variable}_{{{inner}}}"


def _show_value(x: CfValue) -> str:
    return f"{x.var.lower()} (summed)" if isinstance(x, Sym) else str(x)


def counterfactual_query_text(
    graph: CausalGraph,
    outcome: Mapping[str, int | None],
    do: Mapping[str, int],
    evidence: Mapping[str, int],
) -> str:
    """``P(Y_{X=1}=1 | X=0)``: the outcome in the world do(...), evidence in the factual one."""
    sub = ", ".join(f"{k}={do[k]}" for k in graph.order(do))
    ys = []
    for y in graph.order(outcome):
        name = f"{y}_{{{sub}}}" if sub else y
        ys.append(name if outcome[y] is None else f"{name}={outcome[y]}")
    ev = ", ".join(f"{k}={evidence[k]}" for k in graph.order(evidence))
    return f"P({', '.join(ys)}{' | ' + ev if ev else ''})"


def _check_values(
    vs: Mapping[str, object], what: str, g: CausalGraph, classes: Mapping[str, int] | None
) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for v, x in vs.items():
        _names_arg([v], what, g)
        if x is None and what == "outcome":
            out[v] = None
            continue
        if isinstance(x, bool) or not isinstance(x, int | np.integer) or int(x) < 0:
            raise IdentificationError(
                f"{what} {v}={x!r}: a counterfactual value must be a class index 0, 1, …"
            )
        if classes is not None and v in classes and int(x) >= classes[v]:
            raise IdentificationError(
                f"{what} {v}={x}: out of range, {v} has classes 0 … {classes[v] - 1}"
            )
        out[v] = int(x)
    return out


def identify_counterfactual(
    graph: CausalGraph,
    outcome: str | Iterable[str] | Mapping[str, int | None],
    do: Mapping[str, int],
    evidence: Mapping[str, int] | None = None,
    interventions: Iterable[Iterable[str]] = (),
    *,
    classes: Mapping[str, int] | None = None,
) -> CounterfactualIdentification:
    """Is ``P(outcome_{do} | evidence)`` identifiable, the outcome in the world where
    ``do(...)`` holds and the evidence observed in the factual world (e.g. the effect of
    treatment on the treated ``P(Y_{X=1} | X=0)``, the probability of necessity
    ``P(Y_{X=0}=0 | X=1, Y=1)``)?

    IDC* (Shpitser & Pearl 2007) reduces the query to interventional terms or fails on a
    c-component of the counterfactual graph that needs one variable at two values (then the
    answer depends on how a model couples the noise across worlds, not on the data). Each term
    is then identified from the observational distribution plus one interventional
    distribution per set in ``interventions`` (ID / gID). An outcome given without a value
    (a name, or ``None``) is checked for every value: each of its ``classes`` when known, else
    every value the query mentions and one fresh value. With ``classes`` and a binary
    treatment, the effect of treatment on the treated is also identified by
    ``P(y_x | x') = [P(y | do(x)) - P(y, x)] / P(x')`` where IDC* alone fails (Shpitser &
    Pearl 2009, "Effects of treatment on the treated"). Raises :class:`IdentificationError`
    for unknown variables, bad values, an outcome that is also intervened on, or impossible
    evidence.
    """
    if isinstance(outcome, str):
        outcome = {outcome: None}
    elif not isinstance(outcome, Mapping):
        outcome = dict.fromkeys(outcome)
    if not outcome:
        raise IdentificationError("outcome is empty: name at least one outcome variable")
    evidence = dict(evidence or {})
    ys = _check_values(outcome, "outcome", graph, classes)
    xs = {k: v for k, v in _check_values(do, "do", graph, classes).items() if v is not None}
    es = {k: v for k, v in _check_values(evidence, "evidence", graph, classes).items()}
    both = set(ys) & set(xs)
    if both:
        raise IdentificationError(
            f"{_list(both, graph)} is both intervened on and an outcome of the counterfactual"
        )
    regimes = [list(i) for i in interventions]
    for k, r in enumerate(regimes):
        _names_arg(r, f"intervention set #{k + 1}", graph)
    query = counterfactual_query_text(graph, ys, xs, es)
    world = frozenset(xs.items())

    # outcome values to check: given ones, or every class / every mentioned value + a fresh one
    choices: list[list[CfValue]] = []
    for y in graph.order(ys):
        if ys[y] is not None:
            choices.append([ys[y]])
        elif classes is not None and y in classes and classes[y] <= 16:
            choices.append(list(range(classes[y])))
        else:
            seen = sorted({x for k, x in list(es.items()) if k == y})
            choices.append([*seen, Sym(y, -1)])
    formulas: list[CfExpr] = []
    for combo in itertools.product(*choices):
        gamma = {Counterfactual(y, world): x for y, x in zip(graph.order(ys), combo, strict=True)}
        delta = {Counterfactual(k): x for k, x in es.items()}
        try:
            formulas.append(idc_star(graph, gamma, delta))
            continue
        except CounterfactualUndefined:
            raise IdentificationError(
                f"evidence {', '.join(f'{k}={v}' for k, v in es.items())} is impossible in "
                "every model (probability 0)"
            ) from None
        except CounterfactualConflict as c:
            conflict = c
        binary = _binary_ett(graph, gamma, xs, es, classes)
        if binary is not None:
            formulas.append(binary)
            continue
        district = ", ".join(_cf_name(n, graph) for n in conflict.district)
        a, b = (_show_value(x) for x in conflict.values)
        reason = (
            f"not identifiable: in the counterfactual graph of {query}, the c-component "
            f"{{{district}}} needs {conflict.variable} at {a} and at {b} at once (ID* line 8, "
            "Shpitser & Pearl 2007). Models that agree on the data, and even on every "
            "experiment, disagree here: the answer depends on how a model couples the noise "
            "across the two worlds"
        )
        witness = (
            frozenset(n.variable for n in conflict.district),
            frozenset({conflict.variable}),
        )
        return CounterfactualIdentification(
            False, None, reason, witness=witness, query=query, cross_world=True
        )

    key = {v: i for i, v in enumerate(graph.nodes)}.__getitem__
    factors: dict[str, Identification] = {}
    for f in formulas:
        for t in cf_terms(f):
            y_vars, x_vars, z_vars = t.signature()
            if not x_vars:
                continue
            text = _query_text(y_vars, x_vars, z_vars, graph)
            if text not in factors:
                factors[text] = identify(graph, x_vars, y_vars, z_vars, regimes)
    binary = isinstance(formulas[0], CfFraction) and isinstance(formulas[0].num, CfDifference)
    route = "the binary-treatment identity" if binary else "IDC* (Shpitser & Pearl 2007)"
    bad = [(t, i) for t, i in factors.items() if not i.identifiable]
    if bad:
        t, i = bad[0]
        reason = (
            f"not identifiable from the available data: {route} reduces {query} to "
            f"interventional terms, but {t} is not identifiable ({i.reason})"
        )
        return CounterfactualIdentification(
            False, None, reason, witness=i.witness, query=query, factors=tuple(factors.items())
        )
    text = render_counterfactual(formulas[0], key)
    if len(formulas) > 1 and any(ys[y] is None for y in ys):
        text += "  (shown for the first value; the others alike)"
    where = [f"{t} = {i.estimand}" for t, i in factors.items() if i.estimand != t]
    if where:
        text += "; where " + "; ".join(where)
    reason = f"identified by {route}"
    if factors:
        reason += (
            ": every interventional term is identified ("
            + ", ".join(
                "ID"
                if "ID algorithm" in i.reason
                else ("gID" if "gID" in i.reason else "do-calculus")
                for i in factors.values()
            )
            + ")"
        )
    return CounterfactualIdentification(
        True, text, reason, query=query, formula=formulas[0], factors=tuple(factors.items())
    )


def _binary_ett(
    g: CausalGraph,
    gamma: Mapping[Counterfactual, CfValue],
    xs: Mapping[str, int],
    es: Mapping[str, int],
    classes: Mapping[str, int] | None,
) -> CfExpr | None:
    """``P(y_x | x') = [P(y | do(x)) - P(y, x)] / P(x')`` for a binary treatment X, evidence
    ``X = x'`` only and x ≠ x' (total probability over X plus consistency), or None."""
    if classes is None or len(xs) != 1 or set(es) != set(xs):
        return None
    (x, val), (_, seen) = next(iter(xs.items())), next(iter(es.items()))
    if classes.get(x) != 2 or val == seen:
        return None
    y = tuple(sorted((cf.variable, v) for cf, v in gamma.items()))
    minus = CfTerm(tuple(sorted((*y, (x, val)))))
    return CfFraction(CfDifference(CfTerm(y, ((x, val),)), minus), CfTerm(((x, seen),)))


_callable_module(__name__)  # mdcm.identify(...) works whether mdcm.identify is the module or not
