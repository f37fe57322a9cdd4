"""The modular training plan (Rahman & Kocaoglu, ICML 2024, "Modular-DCM"; design.md §2).

A :class:`Plan` splits the training of a deep causal generative model into :class:`Stage` s. A
stage trains the mechanisms of an *h-node* H (a union of whole c-components of G) by matching, in
each data regime I, a distribution over a set A ⊇ H \\ I given its do-parents B = pa(A) \\ A in the
mutilated graph G_I (edges into I and bidirected edges touching I removed): the critic sees real
rows (b, a) of that regime's dataset and fake rows (b, G(do(B=b))). The intervened variables have
no mechanism in G_I: they never join A, they enter B as the values read from the dataset, and the
mechanisms in H ∩ I get no gradient from that regime. Mechanisms in A \\ H run frozen. A stage's
target in regime I is valid when, in G_I,

* **R1** A and B are d-separated with the edges out of B removed (do-calculus rule 2, so
  P_I(A | B) = P_I(A | do(B)) and the data rows sample the target);
* **R2** for every c-component C of G_I not inside H, A ∩ C is closed under ancestors within G[C].
  The model's factor Q[A] then splits into Q[H \\ I] times, for each such C, the marginal
  Q[A ∩ C] of Q[C]; matching P_I(A | B) pins down Q[H \\ I] once every Q[C] is right;
* **R3** every frozen mechanism is trained by an earlier stage, which has a target in the same
  regime (the c-components of G_I outside I are c-components of G[H' \\ I] for the stage H'
  that trains them, so that stage's target in I pins Q[C] down).

**Every regime informs every stage it can** (design.md §2, corrected): a stage has a target in
regime I exactly when H \\ I is not empty. A valid A always exists then: an intervened variable is
a root without confounders in G_I, so neither R1 nor R2 ever asks for one. Dropping such a regime
loses exactly what makes some queries identifiable: in ``W -> X -> Y; X <-> W; W <-> Y``,
P(Y | do(X)) is identifiable only from P(V | do(W)), through the single stage's target
P_do(W)(X, Y | W).

How the planner works (all sets are Python ``int`` bit masks indexed by declaration order, so a
1,000-node graph plans in well under a second):

1. h-nodes start as the c-components of G.
2. For each h-node and regime I, A grows from H \\ I to the *least* set satisfying R1 and R2 in
   G_I. With B = pa(A) \\ A, R1 holds exactly when no b ∈ B descends (in G_I) from A ∪ sp(A): a
   path between A and B that is open given ∅ in G_I minus the edges out of B is a trek whose top
   is in A or is a latent parent of A (every other ancestor of A reaches it through B, whose
   outgoing edges are gone). Each such b must be in *every* valid A' ⊇ A, and so must each missing
   in-component ancestor (R2), so the growth reaches the least valid A, and that least A only grows
   with H.
3. A dependency edge runs from the h-node that owns each v ∈ A \\ H to H, in every regime. Since
   every valid A contains the least one, a dependency cycle can only be broken by training its
   h-nodes together: each strongly connected component is merged (its reasons name the datasets
   whose targets closed the cycle), and steps 2-3 repeat until the graph is acyclic.
4. Stages are ordered by parallel level (longest dependency path), then by topological position.

The result is the finest valid plan. ``joint_plan`` is the NCM-style baseline: one stage, H = V.

Every stage carries its reasons twice: in plain words (``Stage.reasons``; no letter that could be
a variable's name stands for a set) and in the paper's terms (``Stage.technical``).
:func:`describe_stage` renders a stage for people, for the command line and the app alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import networkx as nx

from .graph import CausalGraph

__all__ = [
    "Plan",
    "PlanError",
    "Regime",
    "Stage",
    "StageDescription",
    "StageText",
    "Target",
    "describe_stage",
    "joint_plan",
    "make_plan",
]

_R1 = "R1, conditioning would not equal intervening"
_R2 = "R2, a frozen part must be pinned down by its earlier stage"


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
        """The regime in notation: ``observational`` or ``do(X, W)``."""
        return "observational" if not self.do else f"do({', '.join(self.names)})"

    @property
    def data_name(self) -> str:
        """The regime's dataset in words: "the observational data", "the experiment on X"."""
        return "the observational data" if not self.do else f"the experiment on {_and(self.names)}"

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
    """What a stage matches in one regime I: P_I(matches | do(given)) = P_I(matches | given) (R1
    in G_I). ``given`` holds the do-parents, intervened ones included (their values come from the
    regime's dataset); ``frozen`` are the mechanisms in ``matches`` that run but are not trained
    here. The stage's mechanisms in I are in neither ``matches`` nor ``frozen``: this regime gives
    them no gradient."""

    regime: Regime
    matches: tuple[str, ...]
    given: tuple[str, ...]
    frozen: tuple[str, ...]

    @property
    def is_conditional(self) -> bool:
        """A plain conditional P_I(V | pa(V)) of one variable V in this regime: V has no latent
        confounder left in G_I (a spouse outside I would be matched too). A pre-trained
        conditional generator can stand in for V's mechanism when *every* target of a one-variable
        stage is one (:attr:`Stage.is_conditional`)."""
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
    """One training stage: trains the mechanisms ``trains`` (H), one target per regime in which
    some of them is not intervened on.

    ``reasons`` say in plain words why the stage looks the way it does; ``technical`` says the
    same in the paper's terms, one entry per reason (it defaults to ``reasons``, e.g. for plans
    saved before the two were told apart).
    """

    id: int
    trains: tuple[str, ...]
    depends_on: tuple[int, ...]
    level: int
    targets: tuple[Target, ...]
    reasons: tuple[str, ...] = ()
    technical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.technical:
            object.__setattr__(self, "technical", tuple(self.reasons))
        if len(self.technical) != len(self.reasons):
            raise PlanError(
                f"stage {self.id}: {len(self.reasons)} reasons but {len(self.technical)} "
                "technical reasons"
            )

    @property
    def is_conditional(self) -> bool:
        """The stage trains one variable and every target is the plain conditional
        P(V | pa(V)): any consistent conditional generator (a pre-trained one) can fill it."""
        return (
            len(self.trains) == 1
            and bool(self.targets)
            and all(t.is_conditional for t in self.targets)
        )

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "trains": list(self.trains),
            "depends_on": list(self.depends_on),
            "level": self.level,
            "targets": [t.to_json() for t in self.targets],
            "reasons": list(self.reasons),
            "technical": list(self.technical),
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
                    tuple(s.get("technical", ())),
                )
                for s in data["stages"]
            )
            regimes = tuple(Regime.from_json(r, graph) for r in data.get("regimes", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan JSON is malformed: {exc!r}") from None
        if not regimes:
            regimes = tuple(dict.fromkeys(t.regime for s in stages for t in s.targets))
        return cls(graph, regimes, stages, bool(data.get("joint", False)))

    def summary(self, technical: bool = False) -> str:
        """One line: how many stages in how many parallel rounds, trained on which data."""
        n, k = len(self.stages), len(self.levels())
        stages = f"{n} stage{'s' if n != 1 else ''}"
        if technical:
            kind = "Joint (NCM-style) plan" if self.joint else "Modular plan"
            regimes = ", ".join(r.label for r in self.regimes)
            return f"{kind}: {stages} in {k} level{'s' if k != 1 else ''}; data regimes: {regimes}"
        data = _and([r.data_name for r in self.regimes])
        if self.joint:
            return f"Joint plan (the baseline): every model is trained at once, on {data}"
        rounds = f"{k} round{'s' if k != 1 else ''}"
        return (
            f"Modular plan: {stages} in {rounds} (stages of one round can train at the same "
            f"time), on {data}"
        )

    def describe(self, technical: bool = False) -> str:
        """The whole plan as text: :meth:`summary`, then :func:`describe_stage` of each stage."""
        lines = [self.summary(technical)]
        lines += [describe_stage(self, s).text(technical) for s in self.stages]
        return "\n".join(lines)


# ---------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class StageText:
    """A stage described in one register (plain or technical)."""

    title: str  # "Stage 1 (after stage 0): trains C and N"
    data: tuple[str, ...]  # one line per dataset: what the stage learns from it
    notes: tuple[str, ...]  # no data for a mechanism; a model trained elsewhere can fill it
    why: tuple[str, ...]  # the stage's reasons

    def text(self) -> str:
        lines = [self.title] + [f"  {x}" for x in self.data + self.notes]
        if self.why:
            lines.append("  why:")
            lines += [f"    - {r}" for r in self.why]
        return "\n".join(lines)


@dataclass(frozen=True)
class StageDescription:
    """A stage in plain words (``plain``) and in the paper's terms (``technical``, for an
    expander next to the plain text)."""

    plain: StageText
    technical: StageText

    def text(self, technical: bool = False) -> str:
        return (self.technical if technical else self.plain).text()


def describe_stage(plan: Plan, stage: Stage) -> StageDescription:
    """How ``stage`` of ``plan`` trains, in plain words and in technical terms: what it learns
    from each dataset, what no dataset can teach it, whether a model trained elsewhere can fill
    it, and why it looks the way it does. ``mdcm plan`` and the app's Graph & plan page both
    render stages with this function."""
    owner = {v: s.id for s in plan.stages for v in s.trains}
    deps = stage.depends_on
    plural = "s" if len(deps) > 1 else ""
    after = f"after stage{plural} {_and([str(d) for d in deps])}" if deps else ""
    plain_title = f"Stage {stage.id} ({after or 'can start at once'}): trains {_and(stage.trains)}"
    tech_after = f"after stage{plural} {', '.join(map(str, deps))}" if deps else "no dependencies"
    tech_title = (
        f"Stage {stage.id} (level {stage.level}, {tech_after}): trains {_names(stage.trains)}"
    )
    plain_data, tech_data = [], []
    for t in stage.targets:
        idle = [v for v in stage.trains if v in t.regime.do]
        plain_data.append(_plain_target(t, idle, owner))
        line = f"{t.regime.label}: matches {_names(t.matches)}; conditions on "
        line += _names(t.given) if t.given else "nothing"
        if t.frozen:
            line += f"; runs {_names(t.frozen)} frozen"
        if idle:
            line += f"; {_names(idle)} intervened (no gradient from this regime)"
        if t.is_conditional and not stage.is_conditional:
            line += f" (the plain conditional {_conditional(t)} in this regime)"
        tech_data.append(line)
    plain_notes, tech_notes = [], []
    informed = {v for t in stage.targets for v in t.matches}
    silent = [v for v in stage.trains if v not in informed]
    if not stage.targets:
        plain_notes.append(
            f"No dataset can train this stage: every dataset sets {_and(silent)} by experiment."
        )
        tech_notes.append("no regime can train this stage (every regime intervenes on all of it)")
    elif silent:
        them = "it" if len(silent) == 1 else "them"
        plain_notes.append(
            f"No dataset teaches the model of {_and(silent)}: every dataset sets {them} by "
            "experiment."
        )
        tech_notes.append(f"{_names(silent)}: intervened in every regime, so never trained")
    if stage.is_conditional and not plan.joint:
        t = stage.targets[0]
        given = f" given {_and(t.given)}" if t.given else ""
        plain_notes.append(
            "This stage could reuse a model trained elsewhere: any good generator of "
            f"{t.matches[0]}{given} (a pre-trained image model, for example) can stand in."
        )
        tech_notes.append(
            f"a plain conditional {_conditional(t)}: a pre-trained conditional generator can "
            "stand in"
        )
    return StageDescription(
        StageText(plain_title, tuple(plain_data), tuple(plain_notes), stage.reasons),
        StageText(tech_title, tuple(tech_data), tuple(tech_notes), stage.technical),
    )


def _plain_target(t: Target, idle: list[str], owner: dict[str, int]) -> str:
    """What a stage learns from one dataset, in words."""
    what = f"fits {t.matches[0]} alone" if t.is_conditional else f"fits {_and(t.matches)} together"
    if t.given:
        what += f", given the recorded {_and(t.given)}"
    if t.frozen:
        stages = sorted({owner[v] for v in t.frozen if v in owner})
        src = (
            f" from stage{'s' if len(stages) > 1 else ''} {_and([str(s) for s in stages])}"
            if stages
            else ""
        )
        models = "model" if len(t.frozen) == 1 else "models"
        what += f", with the {models} of {_and(t.frozen)}{src} held fixed"
    if idle:
        verb = "is" if len(idle) == 1 else "are"
        its = "its model learns" if len(idle) == 1 else "their models learn"
        what += f"; {_and(idle)} {verb} set by the experiment there, so {its} nothing from it"
    return f"From {t.regime.data_name}: {what}."


def _conditional(t: Target) -> str:
    return f"P({t.matches[0]} | {_names(t.given)})" if t.given else f"P({t.matches[0]})"


def _names(vs: Iterable[str]) -> str:
    return ", ".join(vs)


def _set(vs: Iterable[str]) -> str:
    return "{" + ",".join(vs) + "}"


def _and(vs: Iterable[str]) -> str:
    vs = list(vs)
    if not vs:
        return "nothing"
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
    comp: list[int]  # the c-component of G_I that holds each node
    anc_c: list[int]  # ancestors within that c-component (R2), including the node itself


@dataclass(frozen=True)
class _Join:
    """Why variable ``j`` joins A in one regime: ``kind`` is "descendant" (of ``who``), "latent"
    (confounded with ``who``), "ancestor" (its ancestor ``via`` is confounded with ``who``) or
    "r2" (an in-component ancestor of frozen ``who``, component ``via``)."""

    j: int
    kind: str
    who: int
    via: int = 0


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
        self.regimes = [self._regime_masks(r) for r in regimes]
        self._cache: dict[tuple[int, int], int] = {}

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
        comp = [0] * n
        for i in range(n):
            if comp[i]:
                continue
            c = frontier = 1 << i
            while frontier:
                nxt = 0
                for k in _bits(frontier):
                    nxt |= sp[k]
                frontier = nxt & ~c
                c |= frontier
            for k in _bits(c):
                comp[k] = c
        anc_c = [0] * n  # an_{G[C]}(v) for v's c-component C of G_I
        for i in self.topo:
            m = 1 << i
            for p in _bits(pa[i] & comp[i]):
                m |= anc_c[p]
            anc_c[i] = m
        return _RegimeMasks(regime, do, pa, sp, de, comp, anc_c)

    # ------------------------------------------------------------------ step 2: grow A
    def grow(self, h: int, r: int, log: list[_Join] | None = None) -> int:
        """The least A ⊇ H \\ I satisfying R1 and R2 in G_I of regime ``r`` (H \\ I not empty).
        With ``log``, records why every variable joins."""
        key = (h, r)
        if log is None and key in self._cache:
            return self._cache[key]
        rm = self.regimes[r]
        h &= ~rm.do
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
                anc_u |= rm.anc_c[i]
            b = pa_u & ~a
            s_new = (a | sp_u) & ~seen_s
            seen_s |= s_new
            for i in _bits(s_new):
                de_u |= rm.de[i]
            r1 = b & de_u  # do-parents downstream of A ∪ sp(A): R1 fails (see module doc)
            r2 = anc_u & ~a  # missing in-component ancestors of frozen variables
            if log is not None:
                self._explain(h, a, sp_u, r1, r2, rm, log)
            if not r1 | r2:
                if log is None:
                    self._cache[key] = a
                return a
            a |= r1 | r2

    def _explain(
        self, h: int, a: int, sp_u: int, r1: int, r2: int, rm: _RegimeMasks, log: list[_Join]
    ) -> None:
        for j in _bits(r1):
            who = next((i for i in _bits(a) if rm.de[i] >> j & 1 and i != j), None)
            if who is not None:
                log.append(_Join(j, "descendant", who))
            elif sp_u >> j & 1:
                log.append(_Join(j, "latent", next(i for i in _bits(a) if rm.sp[i] >> j & 1)))
            else:
                y = next(i for i in _bits(sp_u & ~a) if rm.de[i] >> j & 1)
                who = next(i for i in _bits(a) if rm.sp[i] >> y & 1)
                log.append(_Join(j, "ancestor", who, y))
        for j in _bits(r2):
            v = next(i for i in _bits(a & ~h) if rm.anc_c[i] >> j & 1)
            log.append(_Join(j, "r2", v, rm.comp[v]))

    def join_reason(self, join: _Join, stage_of: dict[int, int]) -> tuple[str, str]:
        """(plain, technical) reason for one joining variable; ``stage_of`` maps a variable to
        the id of the stage that trains it."""
        nm = self.nodes
        j, who = nm[join.j], nm[join.who]
        held = f"the model of {j} from stage {stage_of[join.j]} runs inside this stage, held fixed"
        mixup = f"so taking {j} as given from the data would mix up seeing {j} with setting it"
        if join.kind == "descendant":
            return (
                f"{held}: {j} is itself affected by {who}, {mixup}",
                f"{j} joins the matched set: do-parent {j} is a descendant of {who} ({_R1})",
            )
        if join.kind == "latent":
            return (
                f"{held}: {j} shares a hidden common cause with {who}, {mixup}",
                f"{j} joins the matched set: do-parent {j} shares a latent confounder with "
                f"{who} ({_R1})",
            )
        if join.kind == "ancestor":
            y = nm[join.via]
            return (
                f"{held}: {j} is affected by {y}, which shares a hidden common cause with {who}, "
                f"{mixup}",
                f"{j} joins the matched set: do-parent {j} has an ancestor {y} that shares a "
                f"latent confounder with {who} ({_R1})",
            )
        comp = self.names(join.via)
        return (
            f"{held.replace(' runs', ' also runs')}: {who} runs here too, and {who}'s model is "
            f"only pinned down together with its cause {j} (hidden common causes link "
            f"{_and(comp)})",
            f"{j} joins the matched set: ancestor of frozen {who} within its c-component "
            f"{_set(comp)} ({_R2})",
        )

    # ------------------------------------------------------------------ steps 3-4
    def usable(self, h: int) -> list[int]:
        """The regimes in which h-node ``h`` has a target: those that leave part of it free."""
        return [r for r, rm in enumerate(self.regimes) if h & ~rm.do]

    def plan(self) -> tuple[list[int], dict[int, list[tuple[str, str]]], nx.DiGraph]:
        """Merge dependency cycles until stable: (h-nodes, merge reasons, dependency DAG)."""
        hnodes = list(self.components)
        merge_reasons: dict[int, list[tuple[str, str]]] = {h: [] for h in hnodes}
        while True:
            owner = [0] * len(self.nodes)
            for k, h in enumerate(hnodes):
                for i in _bits(h):
                    owner[i] = k
            dep = nx.DiGraph()
            dep.add_nodes_from(range(len(hnodes)))
            uses: dict[tuple[int, int], dict[int, int]] = {}  # edge -> regime -> frozen mask
            for k, h in enumerate(hnodes):
                for r in self.usable(h):
                    for i in _bits(self.grow(h, r) & ~h):
                        dep.add_edge(owner[i], k)
                        per = uses.setdefault((owner[i], k), {})
                        per[r] = per.get(r, 0) | 1 << i
            sccs = [c for c in nx.strongly_connected_components(dep) if len(c) > 1]
            if not sccs:
                return hnodes, merge_reasons, dep
            merged = set()
            new_nodes = []
            for scc in sccs:
                parts = sorted(scc, key=lambda k: self._h_key(hnodes[k]))
                m = 0
                reasons: list[tuple[str, str]] = []
                for k in parts:
                    m |= hnodes[k]
                    reasons += [x for x in merge_reasons[hnodes[k]] if x not in reasons]
                runs = []  # per part: regime -> what it runs of the other parts
                for k in parts:
                    per: dict[int, int] = {}
                    for q in parts:
                        for r, mask in uses.get((q, k), {}).items():
                            per[r] = per.get(r, 0) | mask
                    runs.append(per)
                reasons.append(self._merge_reason([hnodes[k] for k in parts], runs))
                merge_reasons[m] = reasons
                merged |= set(scc)
                new_nodes.append(m)
            hnodes = [h for k, h in enumerate(hnodes) if k not in merged] + new_nodes
            hnodes.sort(key=self._h_key)

    def _merge_reason(self, parts: list[int], runs: list[dict[int, int]]) -> tuple[str, str]:
        """(plain, technical) reason for merging the h-nodes ``parts`` of one dependency cycle;
        ``runs[k]`` maps each regime to the variables of the other parts that part k runs."""
        groups = [self.names(p) for p in parts]
        plain_clauses, tech_clauses = [], []
        for g, per in zip(groups, runs, strict=True):
            by_mask: dict[int, list[int]] = {}
            for r in sorted(per):
                by_mask.setdefault(per[r], []).append(r)
            plain = []
            tech = []
            for mask, rs in by_mask.items():
                used = self.names(mask)
                data = _and([self.regimes[r].regime.data_name for r in rs])
                labels = ", ".join(self.regimes[r].regime.label for r in rs)
                models = "model" if len(used) == 1 else "models"
                plain.append(f"to {data} needs the {models} of {_and(used)}")
                tech.append(f"{_set(g)} runs {_names(used)} frozen in {labels}")
            plain_clauses.append(f"fitting {_and(g)} " + ", and ".join(plain))
            tech_clauses += tech
        if len(parts) == 2:
            first, second = (_and(g) for g in groups)
            verb = "is" if len(groups[0]) == 1 else "are"
            plain = (
                f"{first} {verb} trained together with {second} because each needs the other's "
                f"models trained first ({'; '.join(plain_clauses)})"
            )
        else:
            plain = (
                f"the groups {_and(_set(g) for g in groups)} are trained together because they "
                f"need each other's models in a circle ({'; '.join(plain_clauses)})"
            )
        each = "each needs the other" if len(parts) == 2 else "each needs another"
        tech = (
            f"{_and(_set(g) for g in groups)} merged: {each} trained first (dependency cycle: "
            f"{'; '.join(tech_clauses)})"
        )
        return plain, tech

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
    stage_of = {i: sid[k] for k, h in enumerate(hnodes) for i in _bits(h)}
    stages = []
    for k in order:
        h = hnodes[k]
        reasons: list[tuple[str, str]] = []
        for c in pl.components:
            if c & h == c and c & (c - 1):  # a c-component inside H with two or more members
                names = pl.names(c)
                if len(names) == 2:
                    plain = (
                        f"{_and(names)} are trained together: a hidden common cause affects both"
                    )
                else:
                    plain = f"{_and(names)} are trained together: hidden common causes link them"
                latent = "a latent" if len(names) == 2 else "latents"
                tech = f"{_and(names)} train jointly: confounded by {latent} (same c-component)"
                reasons.append((plain, tech))
        reasons += merge_reasons.get(h, [])
        targets = []
        why: dict[tuple[str, str], list[Regime]] = {}
        for r in pl.usable(h):
            rm = pl.regimes[r]
            log: list[_Join] = []
            a = pl.grow(h, r, log)
            first: set[int] = set()
            for join in log:
                if join.j in first:  # one reason per joining variable is enough
                    continue
                first.add(join.j)
                why.setdefault(pl.join_reason(join, stage_of), []).append(rm.regime)
            b = 0
            for i in _bits(a):
                b |= rm.pa[i]
            targets.append(Target(rm.regime, pl.names(a), pl.names(b & ~a), pl.names(a & ~h)))
        every = [t.regime for t in targets]
        for (plain, tech), regs in why.items():
            if regs != every:  # say which datasets need it
                plain += f" (in {_and(r.data_name for r in regs)})"
                tech += f" (in {', '.join(r.label for r in regs)})"
            reasons.append((plain, tech))
        deps = tuple(sorted(sid[p] for p in dep.predecessors(k)))
        stages.append(
            Stage(
                sid[k],
                pl.names(h),
                deps,
                level[k],
                tuple(targets),
                tuple(p for p, _ in reasons),
                tuple(t for _, t in reasons),
            )
        )
    return Plan(graph, regimes, tuple(stages), joint=False)


def _joint(graph: CausalGraph, regimes: tuple[Regime, ...]) -> Plan:
    targets = []
    for r in regimes:
        g = graph.mutilate(r.do)
        a = [v for v in graph.nodes if v not in r.do]
        targets.append(Target(r, tuple(a), tuple(graph.order(g.parents_of(a))), ()))
    plain = (
        "the baseline to compare with: every model is trained at once, against all the data "
        "together"
    )
    tech = (
        "joint (NCM-style) baseline: every mechanism trains in one stage against the "
        "whole joint distribution"
    )
    stage = Stage(0, graph.nodes, (), 0, tuple(targets), (plain,), (tech,))
    return Plan(graph, regimes, (stage,), joint=True)


def joint_plan(
    graph: CausalGraph, interventions: Iterable[Iterable[str]] = (), *, observational: bool = True
) -> Plan:
    """The trivial baseline plan: one stage, H = A = V, B = ∅ (in regime do(I): A = V \\ I,
    given the intervened parents)."""
    if not isinstance(graph, CausalGraph):
        raise PlanError(f"joint_plan needs a CausalGraph, not {type(graph).__name__}")
    return _joint(graph, _regimes(graph, interventions, observational))
