"""An independent oracle for counterfactual tests: random discrete SCMs with explicit noise and
exact counterfactual probabilities by enumerating each variable's response functions.

Each observed variable V is ``V := F^{-1}_{π}(U_V | pa(V), latents)`` with its own uniform noise
``U_V`` and a per-parent-configuration order ``π`` of its classes (the *coupling*); each
bidirected edge is one explicit discrete latent root. Changing ``π`` keeps every conditional
table, so every observational and interventional distribution (P_*) stays the same while
cross-world (counterfactual) probabilities may change: two SCMs that differ only in ``π`` are the
witness pair for a non-identifiable counterfactual.

Enumeration: ``U_V`` is cut into the cells between all breakpoints of its inverse CDFs; within a
cell V's response (parent configuration -> value) is constant, so the exogenous state is finite.
Worlds share every latent and every cell; states are aggregated after each variable. This is
written without reference to ``mdcm.examples._scm`` (which integrates the noise by interval
intersections) so that the two can check each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mdcm.graph import CausalGraph

World = frozenset  # of (variable, value) pairs
MAX_ROWS = 3_000_000  # enumeration states beyond which the oracle refuses (memory)


class TooLarge(ValueError):
    """The exact enumeration would need more than :data:`MAX_ROWS` states."""


class NoiseSCM:
    """A random discrete SCM over ``graph`` (see the module docstring)."""

    def __init__(
        self,
        graph: CausalGraph,
        seed: int,
        card: Mapping[str, int] | None = None,
        *,
        classes: tuple[int, int] = (2, 3),
        latent_card: int = 2,
        alpha: float = 0.8,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.graph = graph
        self.names = list(graph.nodes)
        self.topo = graph.topological_order()
        self.card = (
            dict(card)
            if card is not None
            else {v: int(rng.integers(classes[0], classes[1] + 1)) for v in self.names}
        )
        self.latents = [f"_U{i}" for i, _ in enumerate(sorted(graph.bidirected))]
        edges = sorted(graph.bidirected)
        self.lat_card = {u: latent_card for u in self.latents}
        self.lat_p = {u: rng.dirichlet(np.full(latent_card, 1.5)) for u in self.latents}
        self.inputs = {
            v: graph.parents(v) + [u for u, e in zip(self.latents, edges, strict=True) if v in e]
            for v in self.names
        }
        self.cpt = {}
        for v in self.names:
            configs = int(np.prod([self._card(p) for p in self.inputs[v]], dtype=int))
            self.cpt[v] = rng.dirichlet(np.full(self.card[v], alpha), size=configs)
        self.order = {
            v: np.tile(np.arange(self.card[v]), (len(self.cpt[v]), 1)) for v in self.names
        }

    def _card(self, v: str) -> int:
        return self.card[v] if v in self.card else self.lat_card[v]

    def with_coupling(self, seed: int) -> NoiseSCM:
        """The same conditional tables (hence the same P_*), a random other coupling."""
        rng = np.random.default_rng(10_000 + seed)
        other = object.__new__(NoiseSCM)
        other.__dict__.update(self.__dict__)
        other.order = {
            v: np.array([rng.permutation(row) for row in o]) for v, o in self.order.items()
        }
        return other

    # ------------------------------------------------------------------ response functions
    def _responses(self, v: str) -> tuple[np.ndarray, np.ndarray]:
        """(cell probabilities (J,), responses (J, configs)) of ``U_V``."""
        p, order = self.cpt[v], self.order[v]
        cums = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        cums[:, -1] = 1.0
        cuts = np.unique(np.concatenate([[0.0, 1.0], cums[:, :-1].ravel()]))
        mids = (cuts[:-1] + cuts[1:]) / 2
        lengths = np.diff(cuts)
        resp = np.empty((len(mids), len(p)), dtype=np.int64)
        for c in range(len(p)):
            pos = np.searchsorted(cums[c], mids, side="right")
            resp[:, c] = order[c][np.minimum(pos, len(order[c]) - 1)]
        keep = lengths > 0
        return lengths[keep], resp[keep]

    def _config(self, v: str, cols: Mapping[str, np.ndarray], m: int) -> np.ndarray:
        ins = self.inputs[v]
        if not ins:
            return np.zeros(m, dtype=np.int64)
        return np.ravel_multi_index([cols[p] for p in ins], [self._card(p) for p in ins])

    def enumerate(
        self, worlds: Sequence[World], keep: set[str] | None = None
    ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """Exogenous states of the multi-world network: per world, columns of the variables in
        ``keep`` (default: all observed); and the state probabilities."""
        keep = set(self.names) if keep is None else set(keep)
        worlds = [dict(w) for w in worlds]
        cols: list[dict[str, np.ndarray]] = [{} for _ in worlds]
        w = np.ones(1)
        pending = {v: set(self.graph.children(v)) for v in self.names}
        lat_children = {u: {v for v in self.names if u in self.inputs[v]} for u in self.latents}
        for u in self.latents:
            k = self.lat_card[u]
            for c in cols:
                for key in c:
                    c[key] = np.repeat(c[key], k)
                c[u] = np.tile(np.arange(k), len(w))
            w = (w[:, None] * self.lat_p[u][None, :]).ravel()
        for v in self.topo:
            m = len(w)
            lengths, resp = self._responses(v)
            j = len(lengths)
            if m * j > MAX_ROWS:
                raise TooLarge(f"{m} states x {j} noise cells of {v}")
            new = []
            for i, wd in enumerate(worlds):
                if v in wd:
                    new.append(np.full(m * j, wd[v], dtype=np.int64))
                else:
                    cfg = self._config(v, cols[i], m)
                    new.append(resp[:, cfg].T.ravel())  # state-major, then cell
            for c in cols:
                for key in c:
                    c[key] = np.repeat(c[key], j)
            for i, c in enumerate(cols):
                c[v] = new[i]
            w = (w[:, None] * lengths[None, :]).ravel()
            for p in self.graph.parents(v):
                pending[p].discard(v)
            for u in self.latents:
                lat_children[u].discard(v)
            dead = [x for x in list(cols[0]) if x in self.card and not pending[x] and x not in keep]
            dead += [u for u in self.latents if u in cols[0] and not lat_children[u]]
            cols, w = _aggregate(cols, w, set(dead))
        return cols, w

    # ------------------------------------------------------------------ probabilities
    def probability(self, event: Mapping[tuple[str, World], int]) -> float:
        """P(event) for an event ``{(variable, world): value}``."""
        worlds = sorted({frozenset()} | {w for _, w in event}, key=lambda w: sorted(w))
        cols, w = self.enumerate(worlds, keep={v for v, _ in event})
        ok = np.ones(len(w), dtype=bool)
        for (v, world), x in event.items():
            ok &= cols[worlds.index(world)][v] == x
        return float(w[ok].sum())

    def conditional(
        self, gamma: Mapping[tuple[str, World], int], delta: Mapping[tuple[str, World], int]
    ) -> float:
        den = self.probability(delta)
        return self.probability({**gamma, **delta}) / den if den > 0 else float("nan")

    def tables(self, regimes: Sequence[Sequence[str]] = ()) -> dict[frozenset, np.ndarray]:
        """{regime I: array over all observed names whose entry v is P_{do(I=v_I)}(v_{V \\ I})}
        (I = ∅: the observational joint), for :func:`mdcm.identify.evaluate_estimand`."""
        import itertools

        out = {}
        shape = [self.card[v] for v in self.names]
        for regime in [(), *regimes]:
            regime = tuple(sorted(regime))
            t = np.zeros(shape)
            for vals in itertools.product(*(range(self.card[r]) for r in regime)):
                world = frozenset(zip(regime, vals, strict=True))
                (cols,), w = self.enumerate([world])
                idx = tuple(cols[v] for v in self.names)
                np.add.at(t, idx, w)
            out[frozenset(regime)] = t
        return out


def _aggregate(
    cols: list[dict[str, np.ndarray]], w: np.ndarray, drop: set[str]
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Drop the columns in ``drop`` and merge identical states (summing probabilities)."""
    keys = [(i, k) for i, c in enumerate(cols) for k in sorted(c) if k not in drop]
    if not keys:
        return [{} for _ in cols], np.array([w.sum()])
    mat = np.stack([cols[i][k] for i, k in keys], axis=1)
    uniq, inv = np.unique(mat, axis=0, return_inverse=True)
    w2 = np.bincount(inv.ravel(), weights=w, minlength=len(uniq))
    out: list[dict[str, np.ndarray]] = [{} for _ in cols]
    for j, (i, k) in enumerate(keys):
        out[i][k] = uniq[:, j]
    return out, w2


class ResponseSCM:
    """The canonical SCM of an ADMG (Balke & Pearl 1994; Tian & Pearl 2000): every variable's
    mechanism is a *response function* (parent values -> value), and each c-component draws the
    joint response functions of its members from one distribution. Every SCM for the graph is
    equivalent to one of these, so when two of them agree on P_* and disagree on a
    counterfactual, that counterfactual is not identifiable even from every experiment.

    :meth:`partner` moves each component's distribution along the null space of every
    single-world probability ``P(∧_{V ∈ S} r_V(pa_V) = v_V)`` (S ⊆ the component, all values),
    which keeps every observational and interventional distribution."""

    def __init__(self, graph: CausalGraph, seed: int, card: Mapping[str, int], alpha=3.0):
        import itertools

        rng = np.random.default_rng(seed)
        self.graph, self.card = graph, dict(card)
        self.names, self.topo = list(graph.nodes), graph.topological_order()
        self.parents = {v: graph.parents(v) for v in self.names}
        self.resp = {}
        for v in self.names:
            n_cfg = int(np.prod([self.card[p] for p in self.parents[v]], dtype=int))
            self.resp[v] = np.array(list(itertools.product(range(self.card[v]), repeat=n_cfg)))
        self.comps = [[v for v in self.topo if v in c] for c in graph.c_components()]
        self.profiles = []  # per component: (n_prof, members) function indices
        self.p = []
        for comp in self.comps:
            grids = np.meshgrid(*(np.arange(len(self.resp[v])) for v in comp), indexing="ij")
            prof = np.stack([x.ravel() for x in grids], axis=1)
            self.profiles.append(prof)
            self.p.append(rng.dirichlet(np.full(len(prof), alpha)))

    @staticmethod
    def size(graph: CausalGraph, card: Mapping[str, int]) -> int:
        """The number of joint response profiles (the enumeration's cost)."""
        total = 1
        for v in graph.nodes:
            n_cfg = int(np.prod([card[p] for p in graph.parents(v)], dtype=int))
            total *= card[v] ** n_cfg
        return total

    def _config(self, v: str, vals: Mapping[str, np.ndarray]) -> np.ndarray:
        ps = self.parents[v]
        if not ps:
            return np.zeros(len(next(iter(vals.values()))) if vals else 1, dtype=np.int64)
        return np.ravel_multi_index([vals[p] for p in ps], [self.card[p] for p in ps])

    def partner(self, seed: int) -> ResponseSCM:
        """Another SCM with the same P_* (see the class docstring)."""
        import itertools

        rng = np.random.default_rng(20_000 + seed)
        other = object.__new__(ResponseSCM)
        other.__dict__.update(self.__dict__)
        other.p = []
        for comp, prof, p in zip(self.comps, self.profiles, self.p, strict=True):
            fvals = {v: self.resp[v][prof[:, i]] for i, v in enumerate(comp)}  # (n_prof, n_cfg)
            rows = []
            for r in range(1, len(comp) + 1):
                for sub in itertools.combinations(comp, r):
                    outside = sorted({q for v in sub for q in self.parents[v]} - set(sub))
                    scope = list(sub) + outside
                    for vals in itertools.product(*(range(self.card[x]) for x in scope)):
                        a = dict(zip(scope, vals, strict=True))
                        ok = np.ones(len(prof), dtype=bool)
                        for v in sub:
                            cfg = self._config(v, {q: np.array([a[q]]) for q in self.parents[v]})
                            ok &= fvals[v][:, int(cfg[0])] == a[v]
                        rows.append(ok.astype(float))
            m = np.array(rows)
            q = p.copy()
            for _ in range(3):  # a few moves along random null-space directions
                z = rng.standard_normal(len(p))
                d = z - m.T @ np.linalg.lstsq(m.T, z, rcond=None)[0]  # z minus its row-space part
                if np.abs(d).max() < 1e-9:
                    break
                neg = d < 0
                step = 0.5 * float(np.min(q[neg] / -d[neg])) if neg.any() else 1.0
                q = np.clip(q + step * d, 0.0, None)
                q /= q.sum()
            other.p.append(q)
        return other

    def probability(self, event: Mapping[tuple[str, World], int]) -> float:
        """P(event) for ``{(variable, world): value}``, by enumerating every joint profile."""
        grids = np.meshgrid(*(np.arange(len(p)) for p in self.p), indexing="ij")
        idx = [x.ravel() for x in grids]
        w = np.ones(len(idx[0]))
        func = {}
        for c, (comp, prof, p) in enumerate(zip(self.comps, self.profiles, self.p, strict=True)):
            w = w * p[idx[c]]
            for i, v in enumerate(comp):
                func[v] = prof[idx[c], i]
        ok = w > 0
        for world in sorted({wd for _, wd in event}, key=sorted):
            do = dict(world)
            vals: dict[str, np.ndarray] = {}
            for v in self.topo:
                if v in do:
                    vals[v] = np.full(len(w), do[v])
                else:
                    cfg = self._config(v, vals) if self.parents[v] else np.zeros(len(w), int)
                    vals[v] = self.resp[v][func[v], cfg]
            for (v, wd), x in event.items():
                if wd == world:
                    ok &= vals[v] == x
        return float(w[ok].sum())

    def conditional(self, gamma, delta) -> float:
        den = self.probability(delta)
        return self.probability({**gamma, **delta}) / den if den > 0 else float("nan")
