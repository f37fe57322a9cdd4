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

Estimands are kept as a small expression tree (:class:`Prob`, :class:`Product`, :class:`Sum`,
:class:`Fraction`), rendered to text with textbook primes for re-bound variables
(``Σ_{M} P(M | X) Σ_{X'} P(X') P(Y | X', M)``), and evaluated exactly on discrete probability
tables by :func:`evaluate_estimand` (how the tests check the formulas against ground truth).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _callable_module
from .graph import CausalGraph

__all__ = [
    "Expr",
    "Fraction",
    "Identification",
    "IdentificationError",
    "Prob",
    "Product",
    "Sum",
    "evaluate_estimand",
    "free_variables",
    "identify",
    "render",
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


_callable_module(__name__)  # mdcm.identify(...) works whether mdcm.identify is the module or not
