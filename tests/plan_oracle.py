"""An independent validity oracle for training plans (design.md §2, rules R1-R3 in every regime).

Written from the definitions only, with none of the planner's machinery: the oracle builds the
structural causal model's DAG itself, with one explicit latent node per bidirected edge, and
applies do(I) the way an SCM does, by cutting every edge into I (a latent shared with an
intervened variable then feeds only the other one). From that DAG it reads everything it checks:

* the parents in G_I, and the c-components of G_I (observed variables sharing a latent parent);
* **R1** by d-separation (networkx ``is_d_separator``) with the edges out of B removed;
* **R2** by ancestor sets inside each c-component of G_I not inside H;
* **R3** by stage order, and the stage that trains a frozen mechanism must itself have a target
  in the same regime (that target is what pins the frozen factor down there).

``least_target`` computes the least valid A for an h-node by brute force over d-separation, so
tests can also check that the planner's A is minimal and that every (regime, stage) pair that can
have a target has one.
"""

from __future__ import annotations

import functools

import networkx as nx

from mdcm.graph import CausalGraph
from mdcm.plan import Plan


@functools.lru_cache(maxsize=4096)
def scm_dag(g: CausalGraph, do: frozenset[str] = frozenset()) -> nx.DiGraph:
    """The DAG of G_I with explicit latents ``("U", a, b)``: every edge into ``do`` cut."""
    dag = nx.DiGraph()
    dag.add_nodes_from(g.nodes)
    dag.add_edges_from((a, b) for a, b in g.directed if b not in do)
    for a, b in g.bidirected:
        dag.add_node(("U", a, b))
        dag.add_edges_from((("U", a, b), v) for v in (a, b) if v not in do)
    return dag


def _without_out_edges(dag: nx.DiGraph, cut: set[str]) -> nx.DiGraph:
    """A copy of ``dag`` with the edges out of ``cut`` removed."""
    out = dag.copy()
    out.remove_edges_from([(x, y) for x in cut for y in dag.successors(x)])
    return out


def parents(g: CausalGraph, do: frozenset[str], a: set[str]) -> set[str]:
    """pa(A) \\ A in G_I (observed parents only)."""
    dag = scm_dag(g, do)
    return {p for v in a for p in dag.predecessors(v) if isinstance(p, str)} - a


@functools.lru_cache(maxsize=4096)
def c_components(g: CausalGraph, do: frozenset[str] = frozenset()) -> tuple[frozenset[str], ...]:
    """The c-components of G_I: observed variables joined through shared latent parents."""
    dag = scm_dag(g, do)
    und = nx.Graph()
    und.add_nodes_from(g.nodes)
    for u in dag:
        if not isinstance(u, str):
            kids = list(dag.successors(u))
            und.add_edges_from(zip(kids, kids[1:], strict=False))
    return tuple(frozenset(c) for c in nx.connected_components(und))


def r1_holds(g: CausalGraph, do: frozenset[str], a: set[str], b: set[str]) -> bool:
    """R1: A ⊥ B in G_I with the edges out of B removed (do-calculus rule 2)."""
    return not b or nx.is_d_separator(_without_out_edges(scm_dag(g, do), b), set(a), set(b), set())


def r2_missing(
    g: CausalGraph, h: set[str], a: set[str], do: frozenset[str] = frozenset()
) -> set[str]:
    """Variables that R2 asks for: ancestors within G[C] of A ∩ C, for the c-components C of G_I
    not inside H."""
    dag = scm_dag(g, do)
    missing: set[str] = set()
    for c in c_components(g, do):
        if c <= h or not (a & c):
            continue
        sub = dag.subgraph(c)
        for v in a & c:
            missing |= nx.ancestors(sub, v)
    return missing - a


def least_target(g: CausalGraph, h: set[str], do: frozenset[str] = frozenset()) -> set[str] | None:
    """See :func:`_least_target` (cached: the checks ask twice for each regime and stage)."""
    found = _least_target(g, frozenset(h), frozenset(do))
    return None if found is None else set(found)


@functools.lru_cache(maxsize=4096)
def _least_target(g: CausalGraph, h: frozenset[str], do: frozenset[str]) -> frozenset[str] | None:
    """The least A ⊇ H \\ I satisfying R1 and R2 in regime do(I), by adding one at a time every
    do-parent that is d-connected to A (each one must be in any valid superset), and every missing
    in-component ancestor. None when H \\ I is empty (nothing to train in this regime) or an
    intervened variable would have to join A (it has no mechanism there)."""
    a = set(h) - do
    if not a:
        return None
    while True:
        b = parents(g, do, a)
        cut = _without_out_edges(scm_dag(g, do), b)
        add = {x for x in b if not nx.is_d_separator(cut, a, {x}, set())}
        add |= r2_missing(g, h, a, do)
        if add & do:
            return None
        if not add:
            return frozenset(a)
        a |= add


def check_plan(plan: Plan, minimal: bool = True) -> list[str]:
    """Every problem found with ``plan`` (empty when valid). ``minimal`` also checks that each
    target's A is the least valid one."""
    g = plan.graph
    problems: list[str] = []
    stages = plan.stages
    nodes = set(g.nodes)

    def declared(t: tuple[str, ...]) -> bool:
        return list(t) == g.order(t)

    if [s.id for s in stages] != list(range(len(stages))):
        problems.append(f"stage ids are not 0..n-1: {[s.id for s in stages]}")
    owner: dict[str, int] = {}
    for s in stages:
        for v in s.trains:
            if v in owner:
                problems.append(f"{v} trained twice (stages {owner[v]} and {s.id})")
            owner[v] = s.id
    if set(owner) != nodes:
        problems.append(f"mechanisms never trained: {sorted(nodes - set(owner))}")
    regimes_of = {s.id: {t.regime for t in s.targets} for s in stages}
    comps = c_components(g)
    for s in stages:
        h = set(s.trains)
        tag = f"stage {s.id}"
        if not declared(s.trains):
            problems.append(f"{tag}: trains not in declaration order")
        for c in comps:
            if c & h and not c <= h:
                problems.append(f"{tag}: splits c-component {sorted(c)}")
        if any(d >= s.id for d in s.depends_on) or list(s.depends_on) != sorted(set(s.depends_on)):
            problems.append(f"{tag}: depends_on {s.depends_on} not sorted earlier stages")
        want_level = max((stages[d].level + 1 for d in s.depends_on if d < len(stages)), default=0)
        if s.level != want_level:
            problems.append(f"{tag}: level {s.level}, longest dependency path says {want_level}")
        needed: set[int] = set()
        by_regime = {t.regime: t for t in s.targets}
        if len(by_regime) != len(s.targets):
            problems.append(f"{tag}: two targets for one regime")
        for r in plan.regimes:
            t = by_regime.get(r)
            if plan.joint:
                if t is None:
                    problems.append(f"{tag}: joint plan lacks a target for {r.label}")
                continue
            if t is None and least_target(g, h, r.do) is not None:
                problems.append(f"{tag}: no target in {r.label}, but a valid one exists")
            if t is not None and not h - r.do:
                problems.append(f"{tag}: target in {r.label}, which intervenes on all of it")
        for t in s.targets:
            if t.regime not in plan.regimes:
                problems.append(f"{tag}: target for unknown regime {t.regime.label}")
                continue
            do = t.regime.do
            ttag = f"{tag} [{t.regime.label}]"
            a = set(t.matches)
            if not (declared(t.matches) and declared(t.given) and declared(t.frozen)):
                problems.append(f"{ttag}: names not in declaration order")
            if a & do:
                problems.append(f"{ttag}: matches intervened {sorted(a & do)}")
            if not plan.joint and not h - do <= a:
                problems.append(f"{ttag}: A does not contain H minus the intervened variables")
            b = parents(g, do, a)
            if set(t.given) != b:
                problems.append(f"{ttag}: given {t.given} but pa(A)\\A in G_I is {sorted(b)}")
            if set(t.frozen) != a - h:
                problems.append(f"{ttag}: frozen {t.frozen} but A\\H is {sorted(a - h)}")
            if not r1_holds(g, do, a, b):
                problems.append(
                    f"{ttag}: R1 fails: A={sorted(a)} not d-separated from B={sorted(b)}"
                )
            if plan.joint:
                continue
            missing = r2_missing(g, h, a, do)
            if missing:
                problems.append(
                    f"{ttag}: R2 fails: A lacks in-component ancestors {sorted(missing)}"
                )
            for v in a - h:
                needed.add(owner.get(v, -1))
                if owner.get(v, 10**9) >= s.id:
                    problems.append(
                        f"{ttag}: R3 fails: frozen {v} is trained by stage "
                        f"{owner.get(v)}, not earlier"
                    )
                elif t.regime not in regimes_of.get(owner[v], set()):
                    problems.append(
                        f"{ttag}: R3 fails: frozen {v}'s stage {owner[v]} has no target in "
                        f"{t.regime.label}, so nothing pins it down there"
                    )
            if minimal:
                least = least_target(g, h, do)
                if least != a:
                    problems.append(
                        f"{ttag}: A={sorted(a)} is not the least valid "
                        f"A={sorted(least) if least else least}"
                    )
        if set(s.depends_on) != needed:
            problems.append(
                f"{tag}: depends_on {s.depends_on} but frozen mechanisms come from {sorted(needed)}"
            )
    return problems
