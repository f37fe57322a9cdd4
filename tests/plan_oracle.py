"""An independent validity oracle for training plans (design.md §2, rules R1-R3).

Written from the definitions only, with none of the planner's machinery: R1 by d-separation
(``CausalGraph.d_separated`` on the mutilated graph with the edges out of B removed, which builds an
explicit latent node per bidirected edge), R2 by ancestor sets inside each c-component's induced
subgraph, R3 by stage order. ``least_target`` computes the least valid A for an h-node by brute
force over d-separation, so tests can also check that the planner's A is minimal.
"""

from __future__ import annotations

from mdcm.graph import CausalGraph
from mdcm.plan import Plan


def r1_holds(g: CausalGraph, do: frozenset[str], a: set[str], b: set[str]) -> bool:
    """R1: A ⊥ B in G_I with the edges out of B removed (do-calculus rule 2)."""
    return not b or g.mutilate(do).remove_outgoing(b).d_separated(a, b)


def r2_missing(g: CausalGraph, h: set[str], a: set[str]) -> set[str]:
    """Variables that R2 asks for: ancestors within G[C] of A ∩ C, for c-components C ⊄ H."""
    missing: set[str] = set()
    for c in g.c_components():
        if c <= h or not (a & c):
            continue
        missing |= g.subgraph(c).ancestors(a & c) - a
    return missing


def least_target(g: CausalGraph, h: set[str], do: frozenset[str] = frozenset()) -> set[str] | None:
    """The least A ⊇ H satisfying R1 and R2 in regime do(I), by adding one at a time every
    do-parent that is d-connected to A (each one must be in any valid superset), and every missing
    in-component ancestor. None when an intervened variable would have to join A."""
    gi = g.mutilate(do)
    a = set(h)
    while True:
        b = gi.parents_of(a)
        cut = gi.remove_outgoing(b)
        add = {x for x in b if not cut.d_separated(a, {x})} | r2_missing(g, h, a)
        if add & do:
            return None
        if not add:
            return a
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
    comps = g.c_components()
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
            if h & r.do:
                if t is not None:
                    problems.append(f"{tag}: target in {r.label}, which intervenes on H")
                continue
            if t is None:
                if least_target(g, h, r.do) is not None:
                    problems.append(f"{tag}: no target in {r.label}, but a valid A exists")
                continue
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
            if not plan.joint and not h <= a:
                problems.append(f"{ttag}: A does not contain H")
            b = g.mutilate(do).parents_of(a)
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
            missing = r2_missing(g, h, a)
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
