"""The modular training plan (Rahman & Kocaoglu, ICML 2024, "Modular-DCM"; design.md §2).

A :class:`Plan` splits the training of a deep causal generative model into :class:`Stage` s. A
stage trains the mechanisms of an *h-node* H (a union of whole c-components) by matching, for each
data regime, a distribution over a set A ⊇ H given its do-parents B = pa(A) \\ A: the critic sees
real rows (b, a) and fake rows (b, G(do(B=b))). Mechanisms in A \\ H run frozen. A stage is valid
when

* **R1** A and B are d-separated in G_I with the edges out of B removed (do-calculus rule 2, so
  P(A | B) = P(A | do(B)) and the data rows sample the target);
* **R2** for every c-component C not inside H, A ∩ C is closed under ancestors within G[C] (each
  frozen factor Q[A ∩ C] is a marginal of Q[C], which an earlier stage matched);
* **R3** every frozen mechanism is trained by an earlier stage.

How the planner works (all sets are Python ``int`` bit masks indexed by declaration order, so a
1,000-node graph plans in well under a second):

1. h-nodes start as the c-components.
2. For each h-node and regime, A grows from H to the *least* set satisfying R1 and R2. With
   B = pa(A) \\ A, R1 holds exactly when no b ∈ B descends (in G_I) from A ∪ sp(A): a path
   between A and B that is open given ∅ in G_I minus the edges out of B is a trek whose top is in
   A or is a latent parent of A (every other ancestor of A reaches it through B, whose outgoing
   edges are gone). Each such b must be in *every* valid A' ⊇ A, and so must each missing
   in-component ancestor (R2), so the growth reaches the least valid A, and that least A only grows
   with H. In regime I a variable in I never joins A through R1 (it is a root without latents in
   G_I); if R2 asks for one, no valid A exists in that regime and the stage does not use it.
3. A dependency edge runs from the h-node that owns each v ∈ A \\ H to H. Since every valid A
   contains the least one, a dependency cycle can only be broken by training its h-nodes together:
   each strongly connected component is merged, and steps 2-3 repeat until the graph is acyclic.
4. Stages are ordered by parallel level (longest dependency path), then by topological position.

The result is the finest valid plan. ``joint_plan`` is the NCM-style baseline: one stage, H = V.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import networkx as nx

from .graph import CausalGraph

__all__ = ["Plan", "PlanError", "Regime", "Stage", "Target", "joint_plan", "make_plan"]

_R1 = "R1, conditioning would not equal intervening"


class PlanError(ValueError):
    """A training plan that cannot be made (e.g. an intervention on an unknown variable)."""


# ---------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Regime:
    """One dataset's regime: the set of intervened variables (empty = observational).

    ``names`` only fixes the display order (graph declaration order when built with
    :meth:`of`); it takes no part in equality or hashing.
    """

    do: frozenset[str] = frozenset()
    names: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        do = frozenset([self.do]) if isinstance(self.do, str) else frozenset(self.do)
        object.__setattr__(self, "do", do)
        if len(self.names) != len(do) or set(self.names) != do:
            object.__setattr__(self, "names", tuple(sorted(do)))

    @classmethod
    def of(cls, graph: CausalGraph, do: Iterable[str]) -> Regime:
        """The regime ``do(...)`` on ``graph``, checked and in declaration order."""
        do = [do] if isinstance(do, str) else list(do)
        for v in do:
            if not isinstance(v, str) or v not in graph.nodes:
                raise PlanError(
                    f"intervention on unknown variable {v!r}; the graph has "
                    f"{', '.join(graph.nodes)}"
                )
        return cls(frozenset(do), tuple(graph.order(do)))

    @property
    def observational(self) -> bool:
        return not self.do

    @property
    def label(self) -> str:
        return "observational" if not self.do else f"do({', '.join(self.names)})"

    def to_json(self) -> str | dict:
        return "observational" if not self.do else {"do": list(self.names)}

    @classmethod
    def from_json(cls, data: str | dict, graph: CausalGraph | None = None) -> Regime:
        if data == "observational":
            return cls()
        if not isinstance(data, dict) or not isinstance(data.get("do"), list):
            raise PlanError(f"regime must be 'observational' or {{'do': [...]}}, not {data!r}")
        return (
            cls.of(graph, data["do"])
            if graph is not None
            else cls(frozenset(data["do"]), tuple(data["do"]))
        )


@dataclass(frozen=True)
class Target:
    """What a stage matches in one regime: P(matches | do(given)) = P(matches | given) (R1).

    ``frozen`` are the mechanisms in ``matches`` that run but are not trained here.
    """

    regime: Regime
    matches: tuple[str, ...]
    given: tuple[str, ...]
    frozen: tuple[str, ...]

    @property
    def is_conditional(self) -> bool:
        """A plain conditional P(V | pa(V)) of one variable: a pre-trained conditional
        generator can stand in for this stage."""
        return len(self.matches) == 1 and not self.frozen

    def to_json(self) -> dict:
        return {
            "regime": self.regime.to_json(),
            "matches": list(self.matches),
            "given": list(self.given),
            "frozen": list(self.frozen),
        }

    @classmethod
    def from_json(cls, data: dict, graph: CausalGraph | None = None) -> Target:
        return cls(
            Regime.from_json(data["regime"], graph),
            tuple(data["matches"]),
            tuple(data["given"]),
            tuple(data.get("frozen", ())),
        )


@dataclass(frozen=True)
class Stage:
    """One training stage: trains the mechanisms ``trains`` (H), one target per usable regime."""

    id: int
    trains: tuple[str, ...]
    depends_on: tuple[int, ...]
    level: int
    targets: tuple[Target, ...]
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        after = (
            (
                f"after stage{'s' if len(self.depends_on) > 1 else ''} "
                + ", ".join(map(str, self.depends_on))
            )
            if self.depends_on
            else "no dependencies"
        )
        lines = [f"Stage {self.id} (level {self.level}, {after}): trains {_names(self.trains)}"]
        if not self.targets:
            lines.append(
                "  no dataset can train this stage (every regime intervenes on it or breaks R2)"
            )
        for t in self.targets:
            given = _names(t.given) if t.given else "nothing"
            line = f"  {t.regime.label}: matches {_names(t.matches)}; conditions on {given}"
            if t.frozen:
                line += f"; runs {_names(t.frozen)} frozen"
            if t.is_conditional:
                cond = f"P({t.matches[0]} | {_names(t.given)})" if t.given else f"P({t.matches[0]})"
                line += (
                    f" (a plain conditional {cond}: a pre-trained conditional generator can "
                    "stand in)"
                )
            lines.append(line)
        if self.reasons:
            lines.append("  why:")
            lines += [f"    - {r}" for r in self.reasons]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "trains": list(self.trains),
            "depends_on": list(self.depends_on),
            "level": self.level,
            "targets": [t.to_json() for t in self.targets],
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Plan:
    """A training plan: stages in a valid (topological) order."""

    graph: CausalGraph
    regimes: tuple[Regime, ...]
    stages: tuple[Stage, ...]
    joint: bool = False

    def stage_of(self, v: str) -> Stage:
        """The stage that trains the mechanism of ``v``."""
        for s in self.stages:
            if v in s.trains:
                return s
        raise PlanError(f"no stage trains {v!r}; the graph has {', '.join(self.graph.nodes)}")

    def levels(self) -> list[list[int]]:
        """Stage ids grouped by parallel level (stages of one level may train in parallel)."""
        out: list[list[int]] = []
        for s in self.stages:
            while len(out) <= s.level:
                out.append([])
            out[s.level].append(s.id)
        return out

    def to_json(self) -> dict:
        return {
            "joint": self.joint,
            "regimes": [r.to_json() for r in self.regimes],
            "stages": [s.to_json() for s in self.stages],
        }

    @classmethod
    def from_json(cls, data: dict, graph: CausalGraph) -> Plan:
        """Read back :meth:`to_json` (e.g. a plan saved with a training run)."""
        try:
            stages = tuple(
                Stage(
                    int(s["id"]),
                    tuple(s["trains"]),
                    tuple(s["depends_on"]),
                    int(s["level"]),
                    tuple(Target.from_json(t, graph) for t in s["targets"]),
                    tuple(s.get("reasons", ())),
                )
                for s in data["stages"]
            )
            regimes = tuple(Regime.from_json(r, graph) for r in data.get("regimes", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan JSON is malformed: {exc!r}") from None
        if not regimes:
            regimes = tuple(dict.fromkeys(t.regime for s in stages for t in s.targets))
        return cls(graph, regimes, stages, bool(data.get("joint", False)))

    def describe(self) -> str:
        kind = "Joint (NCM-style) plan" if self.joint else "Modular plan"
        regimes = ", ".join(r.label for r in self.regimes)
        lines = [
            f"{kind}: {len(self.stages)} stage"
            f"{'s' if len(self.stages) != 1 else ''} in {len(self.levels())} level"
            f"{'s' if len(self.levels()) != 1 else ''}; data regimes: {regimes}"
        ]
        for s in self.stages:
            lines.append(s.describe())
        return "\n".join(lines)


def _names(vs: Iterable[str]) -> str:
    return ", ".join(vs)


def _set(vs: Iterable[str]) -> str:
    return "{" + ",".join(vs) + "}"


def _and(vs: list[str]) -> str:
    return vs[0] if len(vs) == 1 else ", ".join(vs[:-1]) + " and " + vs[-1]


# ---------------------------------------------------------------------- bit-set helpers
def _bits(mask: int) -> Iterator[int]:
    """Indices of the set bits, ascending (= declaration order)."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@dataclass
class _RegimeMasks:
    """Per-regime adjacency of the mutilated graph G_I, as bit masks."""

    regime: Regime
    do: int
    pa: list[int]
    sp: list[int]
    de: list[int]  # descendants in G_I, including the node itself


class _Planner:
    """Bit-mask machinery for :func:`make_plan` (see the module docstring)."""

    def __init__(self, graph: CausalGraph, regimes: tuple[Regime, ...]) -> None:
        self.g = graph
        self.nodes = graph.nodes
        self.idx = {v: i for i, v in enumerate(graph.nodes)}
        n = len(self.nodes)
        self.topo = [self.idx[v] for v in graph.topological_order()]
        self.topo_pos = [0] * n
        for k, i in enumerate(self.topo):
            self.topo_pos[i] = k
        parents: list[list[int]] = [[] for _ in range(n)]
        for a, b in graph.directed:
            parents[self.idx[b]].append(self.idx[a])
        self.parents = parents
        self.components = [self.mask(c) for c in graph.c_components()]
        self.comp_of = [0] * n
        for k, c in enumerate(self.components):
            for i in _bits(c):
                self.comp_of[i] = k
        # an_{G[C]}(v): ancestors of v within its own c-component (R2), observational graph.
        anc_c = [0] * n
        for i in self.topo:
            m = 1 << i
            for p in parents[i]:
                if self.comp_of[p] == self.comp_of[i]:
                    m |= anc_c[p]
            anc_c[i] = m
        self.anc_c = anc_c
        self.regimes = [self._regime_masks(r) for r in regimes]
        self._cache: dict[tuple[int, int], int | None] = {}

    def mask(self, vs: Iterable[str]) -> int:
        m = 0
        for v in vs:
            m |= 1 << self.idx[v]
        return m

    def names(self, mask: int) -> tuple[str, ...]:
        return tuple(self.nodes[i] for i in _bits(mask))

    def _regime_masks(self, regime: Regime) -> _RegimeMasks:
        n = len(self.nodes)
        do = self.mask(regime.do)
        pa = [0] * n
        ch: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):
            if not do >> i & 1:
                for p in self.parents[i]:
                    pa[i] |= 1 << p
                    ch[p].append(i)
        sp = [0] * n
        for a, b in self.g.bidirected:
            ia, ib = self.idx[a], self.idx[b]
            if not (do >> ia & 1 or do >> ib & 1):
                sp[ia] |= 1 << ib
                sp[ib] |= 1 << ia
        de = [0] * n
        for i in reversed(self.topo):
            m = 1 << i
            for c in ch[i]:
                m |= de[c]
            de[i] = m
        return _RegimeMasks(regime, do, pa, sp, de)

    # ------------------------------------------------------------------ step 2: grow A
    def grow(self, h: int, r: int, log: list[tuple[int, str]] | None = None) -> int | None:
        """The least A ⊇ H satisfying R1 and R2 in regime ``r``; None when R2 would need an
        intervened variable. With ``log``, records (variable, reason) for every addition."""
        key = (h, r)
        if log is None and key in self._cache:
            return self._cache[key]
        rm = self.regimes[r]
        a = h
        pa_u = sp_u = de_u = anc_u = 0
        seen = seen_s = 0
        while True:
            new = a & ~seen
            seen = a
            for i in _bits(new):
                pa_u |= rm.pa[i]
                sp_u |= rm.sp[i]
            for i in _bits(new & ~h):
                anc_u |= self.anc_c[i]
            b = pa_u & ~a
            s_new = (a | sp_u) & ~seen_s
            seen_s |= s_new
            for i in _bits(s_new):
                de_u |= rm.de[i]
            r1 = b & de_u  # do-parents downstream of A ∪ sp(A): R1 fails (see module doc)
            r2 = anc_u & ~a  # missing in-component ancestors of frozen variables
            add = r1 | r2
            if log is not None:
                self._explain(h, a, b, sp_u, r1, r2, rm, log)
            if add & rm.do:
                if log is None:
                    self._cache[key] = None
                return None
            if not add:
                if log is None:
                    self._cache[key] = a
                return a
            a |= add

    def _explain(
        self,
        h: int,
        a: int,
        b: int,
        sp_u: int,
        r1: int,
        r2: int,
        rm: _RegimeMasks,
        log: list[tuple[int, str]],
    ) -> None:
        nm = self.nodes
        for j in _bits(r1):
            who = next((i for i in _bits(a) if rm.de[i] >> j & 1 and i != j), None)
            if who is not None:
                why = f"do-parent {nm[j]} is a descendant of {nm[who]}"
            elif sp_u >> j & 1:
                who = next(i for i in _bits(a) if rm.sp[i] >> j & 1)
                why = f"do-parent {nm[j]} shares a latent confounder with {nm[who]}"
            else:
                y = next(i for i in _bits(sp_u & ~a) if rm.de[i] >> j & 1)
                who = next(i for i in _bits(a) if rm.sp[i] >> y & 1)
                why = (
                    f"do-parent {nm[j]} has an ancestor {nm[y]} that shares a latent "
                    f"confounder with {nm[who]}"
                )
            log.append((j, f"{nm[j]} joins A: {why} ({_R1})"))
        for j in _bits(r2):
            v = next(i for i in _bits(a & ~h) if self.anc_c[i] >> j & 1)
            comp = _set(self.names(self.components[self.comp_of[v]]))
            if rm.do >> j & 1:
                log.append(
                    (
                        j,
                        f"regime {rm.regime.label} not used: frozen {nm[v]} needs its "
                        f"ancestor {nm[j]} within c-component {comp}, which is intervened "
                        "on there (R2 cannot hold)",
                    )
                )
            else:
                log.append(
                    (
                        j,
                        f"{nm[j]} joins A: ancestor of frozen {nm[v]} within its "
                        f"c-component {comp} (R2, a frozen part must be pinned down by "
                        "its earlier stage)",
                    )
                )

    # ------------------------------------------------------------------ steps 3-4
    def plan(self) -> tuple[list[int], dict[int, list[str]], nx.DiGraph]:
        """Merge dependency cycles until stable: (h-nodes, merge reasons, dependency DAG)."""
        hnodes = list(self.components)
        merge_reasons: dict[int, list[str]] = {h: [] for h in hnodes}
        while True:
            owner = [0] * len(self.nodes)
            for k, h in enumerate(hnodes):
                for i in _bits(h):
                    owner[i] = k
            dep = nx.DiGraph()
            dep.add_nodes_from(range(len(hnodes)))
            for k, h in enumerate(hnodes):
                for r, rm in enumerate(self.regimes):
                    if h & rm.do:
                        continue
                    a = self.grow(h, r)
                    if a is None:
                        continue
                    for i in _bits(a & ~h):
                        dep.add_edge(owner[i], k)
            sccs = [c for c in nx.strongly_connected_components(dep) if len(c) > 1]
            if not sccs:
                return hnodes, merge_reasons, dep
            merged = set()
            new_nodes = []
            for scc in sccs:
                parts = sorted((hnodes[k] for k in scc), key=self._h_key)
                m = 0
                m_scc = 0
                for p in parts:
                    m_scc |= p
                reasons: list[str] = []
                for p in parts:
                    m |= p
                    reasons += [x for x in merge_reasons[p] if x not in reasons]
                labels = [_set(self.names(p)) for p in parts]
                each = "each needs the other" if len(parts) == 2 else "each needs another"
                needs = []
                for p in parts:
                    uses = 0
                    for r in range(len(self.regimes)):
                        a = None if p & self.regimes[r].do else self.grow(p, r)
                        uses |= (a or 0) & ~p & m_scc
                    needs.append(f"{_set(self.names(p))} runs {_names(self.names(uses))} frozen")
                reasons.append(
                    f"{_and(labels)} merged: {each} trained first (dependency cycle: "
                    f"{'; '.join(needs)})"
                )
                merge_reasons[m] = reasons
                merged |= set(scc)
                new_nodes.append(m)
            hnodes = [h for k, h in enumerate(hnodes) if k not in merged] + new_nodes
            hnodes.sort(key=self._h_key)

    def _h_key(self, h: int) -> int:
        return min(self.topo_pos[i] for i in _bits(h))


# ---------------------------------------------------------------------- public functions
def _regimes(
    graph: CausalGraph, interventions: Iterable[Iterable[str]] | None, observational: bool
) -> tuple[Regime, ...]:
    if isinstance(interventions, str):
        raise PlanError(
            f"interventions must be a list of intervened sets such as "
            f"[[{interventions!r}]], not the string {interventions!r}"
        )
    out: list[Regime] = [Regime()] if observational else []
    for item in interventions or ():
        if isinstance(item, Regime):
            item = item.do
        r = Regime.of(graph, item)
        if r not in out:
            out.append(r)
    if not out:
        raise PlanError("no data regime: give observational=True or at least one intervention")
    return tuple(out)


def make_plan(
    graph: CausalGraph,
    interventions: Iterable[Iterable[str]] = (),
    *,
    joint: bool = False,
    observational: bool = True,
) -> Plan:
    """The modular training plan for ``graph`` (design.md §2).

    ``interventions`` lists the intervened sets of the interventional datasets (a plain string in
    the list is one variable); the observational regime comes first when ``observational``.
    ``joint=True`` returns :func:`joint_plan`.
    """
    if not isinstance(graph, CausalGraph):
        raise PlanError(f"make_plan needs a CausalGraph, not {type(graph).__name__}")
    regimes = _regimes(graph, interventions, observational)
    if joint:
        return _joint(graph, regimes)
    pl = _Planner(graph, regimes)
    hnodes, merge_reasons, dep = pl.plan()
    # Step 4: level = longest dependency path; order by (level, topological position).
    level: dict[int, int] = {}
    for k in nx.topological_sort(dep):
        level[k] = max((level[p] + 1 for p in dep.predecessors(k)), default=0)
    order = sorted(range(len(hnodes)), key=lambda k: (level[k], pl._h_key(hnodes[k])))
    sid = {k: n for n, k in enumerate(order)}
    stages = []
    for k in order:
        h = hnodes[k]
        trains = pl.names(h)
        reasons: list[str] = []
        for c in pl.components:
            if c & h == c and c & (c - 1):  # a c-component inside H with two or more members
                names = list(pl.names(c))
                latent = "a latent" if len(names) == 2 else "latents"
                reasons.append(
                    f"{_and(names)} train jointly: confounded by {latent} (same c-component)"
                )
        reasons += merge_reasons.get(h, [])
        targets = []
        why: dict[str, list[str]] = {}
        usable = [r for r, rm in enumerate(pl.regimes) if not h & rm.do]
        for r in usable:
            rm = pl.regimes[r]
            log: list[tuple[int, str]] = []
            a = pl.grow(h, r, log)
            if a is None:  # only the reason the regime is unusable matters
                log = [x for x in log if x[1].startswith("regime ")]
            first: set[int] = set()
            for j, msg in log:
                if j in first:  # one reason per joining variable is enough
                    continue
                first.add(j)
                why.setdefault(msg, [])
                if rm.regime.label not in why[msg]:
                    why[msg].append(rm.regime.label)
            if a is None:
                continue
            b = 0
            for i in _bits(a):
                b |= rm.pa[i]
            b &= ~a
            targets.append(
                Target(
                    rm.regime,
                    pl.names(a & ~rm.do),
                    pl.names(b | (a & rm.do)),
                    pl.names(a & ~h & ~rm.do),
                )
            )
        all_labels = [t.regime.label for t in targets]
        for msg, labels in why.items():
            if labels == all_labels or msg.startswith("regime "):
                reasons.append(msg)
            else:
                reasons.append(f"{msg} (in {', '.join(labels)})")
        deps = tuple(sorted(sid[p] for p in dep.predecessors(k)))
        stages.append(Stage(sid[k], trains, deps, level[k], tuple(targets), tuple(reasons)))
    return Plan(graph, regimes, tuple(stages), joint=False)


def _joint(graph: CausalGraph, regimes: tuple[Regime, ...]) -> Plan:
    targets = []
    for r in regimes:
        g = graph.mutilate(r.do)
        a = [v for v in graph.nodes if v not in r.do]
        targets.append(Target(r, tuple(a), tuple(graph.order(g.parents_of(a))), ()))
    reasons = (
        "joint (NCM-style) baseline: every mechanism trains in one stage against the "
        "whole joint distribution",
    )
    stage = Stage(0, graph.nodes, (), 0, tuple(targets), reasons)
    return Plan(graph, regimes, (stage,), joint=True)


def joint_plan(
    graph: CausalGraph, interventions: Iterable[Iterable[str]] = (), *, observational: bool = True
) -> Plan:
    """The trivial baseline plan: one stage, H = A = V, B = ∅ (in regime do(I): A = V \\ I,
    given the intervened parents)."""
    if not isinstance(graph, CausalGraph):
        raise PlanError(f"joint_plan needs a CausalGraph, not {type(graph).__name__}")
    return _joint(graph, _regimes(graph, interventions, observational))
