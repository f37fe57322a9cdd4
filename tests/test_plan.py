"""Tests for mdcm.plan: known plans for textbook graphs, the JSON contract, and a property test
of R1-R3 over random graphs against the independent oracle in tests/plan_oracle.py."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest
from plan_oracle import check_plan, least_target

from mdcm.graph import parse_graph, random_graph
from mdcm.plan import Plan, PlanError, Regime, Stage, Target, joint_plan, make_plan

OBS = Regime()


def summary(plan: Plan) -> list[tuple]:
    """(trains, depends_on, level, [(regime label, matches, given, frozen)]) per stage."""
    return [
        (
            s.trains,
            s.depends_on,
            s.level,
            [(t.regime.label, t.matches, t.given, t.frozen) for t in s.targets],
        )
        for s in plan.stages
    ]


# ---------------------------------------------------------------------- known answers
def test_front_door_worked_example():
    plan = make_plan(parse_graph("C -> X -> N; C <-> N"))
    assert summary(plan) == [
        (("X",), (), 0, [("observational", ("X",), ("C",), ())]),
        (("C", "N"), (0,), 1, [("observational", ("C", "X", "N"), (), ("X",))]),
    ]
    assert plan.stage_of("N").id == 1 and plan.stage_of("X").id == 0
    assert plan.levels() == [[0], [1]]
    assert plan.stages[0].targets[0].is_conditional
    reasons = plan.stages[1].reasons
    assert "C and N train jointly: confounded by a latent (same c-component)" in reasons
    assert (
        "X joins A: do-parent X is a descendant of C (R1, conditioning would not equal intervening)"
    ) in reasons


def test_back_door_all_plain_conditionals_in_parallel():
    plan = make_plan(parse_graph("Z -> X -> Y; Z -> Y"))
    assert summary(plan) == [
        (("Z",), (), 0, [("observational", ("Z",), (), ())]),
        (("X",), (), 0, [("observational", ("X",), ("Z",), ())]),
        (("Y",), (), 0, [("observational", ("Y",), ("Z", "X"), ())]),
    ]
    assert plan.levels() == [[0, 1, 2]]


def test_napkin():
    plan = make_plan(parse_graph("W -> Z -> X -> Y; W <-> X; W <-> Y"))
    assert summary(plan) == [
        (("Z",), (), 0, [("observational", ("Z",), ("W",), ())]),
        (("W", "X", "Y"), (0,), 1, [("observational", ("W", "Z", "X", "Y"), (), ("Z",))]),
    ]


def test_bow_is_one_stage():
    plan = make_plan(parse_graph("X -> Y; X <-> Y"))
    assert summary(plan) == [(("X", "Y"), (), 0, [("observational", ("X", "Y"), (), ())])]


def test_merge_of_a_dependency_cycle():
    plan = make_plan(parse_graph("A -> B -> C -> D; A <-> C; B <-> D"))
    assert summary(plan) == [
        (("A", "B", "C", "D"), (), 0, [("observational", ("A", "B", "C", "D"), (), ())])
    ]
    assert any(
        r.startswith("{A,C} and {B,D} merged: each needs the other trained first (dependency cycle")
        for r in plan.stages[0].reasons
    )


def test_ancestor_confounded_with_a_frozen_variable_joins():
    # H={Y,Z}; F joins (descendant of Y); P's ancestor Q is confounded with F, so P joins
    # (R1, third case), then Q joins (bidirected-adjacent to F).
    plan = make_plan(parse_graph("Y -> F -> Z; Y <-> Z; F <-> Q; Q -> P -> Z"))
    last = plan.stages[-1]
    assert last.trains == ("Y", "Z")
    assert last.targets[0].matches == ("Y", "F", "Z", "Q", "P")
    assert last.targets[0].given == ()
    assert set(last.depends_on) == {plan.stage_of("F").id, plan.stage_of("P").id}
    assert any(
        "do-parent P has an ancestor Q that shares a latent confounder with F" in r
        for r in last.reasons
    )
    assert not check_plan(plan)


R2_GRAPH = "Y -> V -> Y2; Y <-> Y2; P -> V; P <-> M; M <-> V"


def test_r2_pulls_in_component_ancestors():
    # H={Y,Y2}: V joins (a descendant of Y, R1). V is frozen, so its parent P within the
    # c-component {V,P,M} must join too (R2) although P breaks no R1 condition; M need not.
    plan = make_plan(parse_graph(R2_GRAPH))
    st = plan.stage_of("Y")
    assert st.trains == ("Y", "Y2") and st.depends_on == (plan.stage_of("M").id,)
    assert [(t.matches, t.given, t.frozen) for t in st.targets] == [
        (("Y", "V", "Y2", "P"), (), ("V", "P"))
    ]
    assert (
        "P joins A: ancestor of frozen V within its c-component {V,P,M} (R2, a frozen part "
        "must be pinned down by its earlier stage)"
    ) in st.reasons
    assert not check_plan(plan)


# ---------------------------------------------------------------------- regimes
def test_interventional_regime_front_door():
    g = parse_graph("C -> X -> N; C <-> N")
    plan = make_plan(g, [["X"]])
    assert [r.label for r in plan.regimes] == ["observational", "do(X)"]
    assert summary(plan) == [
        (("X",), (), 0, [("observational", ("X",), ("C",), ())]),  # X intervened: no do(X)
        (
            ("C", "N"),
            (0,),
            1,
            [("observational", ("C", "X", "N"), (), ("X",)), ("do(X)", ("C", "N"), ("X",), ())],
        ),
    ]
    only = make_plan(g, [["X"]], observational=False)
    assert summary(only) == [  # same level: topological order
        (("C", "N"), (), 0, [("do(X)", ("C", "N"), ("X",), ())]),
        (("X",), (), 0, []),
    ]
    assert "no dataset can train this stage" in only.stage_of("X").describe()
    assert not check_plan(plan) and not check_plan(only)


def test_regime_unusable_when_r2_needs_an_intervened_variable():
    # Frozen Y would need its in-component ancestor X; under do(X) Y's mechanism is not pinned
    # down by the observational fit of {X, Y} (the bow), so {W, V} cannot use do(X).
    g = parse_graph("X -> Y; X <-> Y; W -> Y -> V; W <-> V")
    plan = make_plan(g, [["X"]])
    st = plan.stage_of("W")
    assert [t.regime.label for t in st.targets] == ["observational"]
    assert any(
        r.startswith("regime do(X) not used: frozen Y needs its ancestor X") for r in st.reasons
    )
    assert least_target(g, {"W", "V"}, frozenset({"X"})) is None
    assert not check_plan(plan)


def test_regime_label_and_json_follow_graph_order():
    g = parse_graph("X -> W -> Y")
    r = Regime.of(g, ["W", "X"])
    assert r.label == "do(X, W)" and r.to_json() == {"do": ["X", "W"]}
    assert r == Regime(frozenset({"W", "X"})) and hash(r) == hash(Regime(frozenset("WX")))
    assert Regime().label == "observational" and Regime().to_json() == "observational"
    assert Regime.from_json({"do": ["W", "X"]}, g).label == "do(X, W)"
    assert Regime.from_json("observational") == Regime()
    plan = make_plan(g, [["W", "X"], {"X"}, ("X",), [], "Y"])
    assert [x.label for x in plan.regimes] == ["observational", "do(X, W)", "do(X)", "do(Y)"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g: make_plan(g, [["Q"]]), "unknown variable 'Q'"),
        (lambda g: make_plan(g, "X"), "list of intervened sets"),
        (lambda g: make_plan(g, (), observational=False), "no data regime"),
        (lambda g: make_plan("X -> Y"), "needs a CausalGraph"),
        (lambda g: joint_plan(g, [["Q"]]), "unknown variable 'Q'"),
        (lambda g: make_plan(g).stage_of("Q"), "no stage trains 'Q'"),
        (lambda g: Regime.from_json(["X"]), "regime must be"),
    ],
)
def test_errors(call, message):
    g = parse_graph("C -> X -> N; C <-> N")
    with pytest.raises(PlanError, match=message):
        call(g)
    assert issubclass(PlanError, ValueError)


# ---------------------------------------------------------------------- joint baseline
def test_joint_plan():
    g = parse_graph("C -> X -> N; C <-> N")
    plan = joint_plan(g, [["X"]])
    assert plan.joint and make_plan(g, [["X"]], joint=True) == plan
    assert summary(plan) == [
        (
            ("C", "X", "N"),
            (),
            0,
            [("observational", ("C", "X", "N"), (), ()), ("do(X)", ("C", "N"), ("X",), ())],
        )
    ]
    assert not check_plan(plan)
    assert "Joint (NCM-style) plan" in plan.describe()


# ---------------------------------------------------------------------- contract
def test_to_json_contract_exactly():
    plan = make_plan(parse_graph("C -> X -> N; C <-> N"), [["X"]])
    data = plan.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "joint": False,
        "regimes": ["observational", {"do": ["X"]}],
        "stages": [
            {
                "id": 0,
                "trains": ["X"],
                "depends_on": [],
                "level": 0,
                "targets": [
                    {"regime": "observational", "matches": ["X"], "given": ["C"], "frozen": []}
                ],
                "reasons": [],
            },
            {
                "id": 1,
                "trains": ["C", "N"],
                "depends_on": [0],
                "level": 1,
                "targets": [
                    {
                        "regime": "observational",
                        "matches": ["C", "X", "N"],
                        "given": [],
                        "frozen": ["X"],
                    },
                    {"regime": {"do": ["X"]}, "matches": ["C", "N"], "given": ["X"], "frozen": []},
                ],
                "reasons": [
                    "C and N train jointly: confounded by a latent (same c-component)",
                    "X joins A: do-parent X is a descendant of C (R1, conditioning would "
                    "not equal intervening) (in observational)",
                ],
            },
        ],
    }


def test_json_round_trip():
    g = random_graph(12, 25, 4, seed=11)
    for plan in (make_plan(g, [["V2"], ["V5", "V1"]]), joint_plan(g, [["V3"]])):
        data = json.loads(json.dumps(plan.to_json()))
        back = Plan.from_json(data, g)
        assert back == plan and back.to_json() == plan.to_json()
    with pytest.raises(PlanError, match="malformed"):
        Plan.from_json({"stages": [{"id": 0}]}, g)


def test_types_are_frozen_and_public():
    plan = make_plan(parse_graph("X -> Y"))
    for obj in (plan, plan.stages[0], plan.stages[0].targets[0], plan.regimes[0]):
        assert dataclasses.is_dataclass(obj)
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.__setattr__("joint", True)
    assert isinstance(plan.stages[0], Stage) and isinstance(plan.stages[0].targets[0], Target)


def test_describe_mentions_roles_and_reasons():
    plan = make_plan(parse_graph("C -> X -> N; C <-> N"))
    text = plan.describe()
    assert "Stage 0 (level 0, no dependencies): trains X" in text
    assert "Stage 1 (level 1, after stage 0): trains C, N" in text
    assert "matches C, X, N; conditions on nothing; runs X frozen" in text
    assert "plain conditional P(X | C)" in text
    assert "confounded by a latent" in text and "do-parent X is a descendant of C" in text
    merge = make_plan(parse_graph("A -> B -> C -> D; A <-> C; B <-> D")).describe()
    assert "merged: each needs the other trained first (dependency cycle" in merge


def test_deterministic():
    g = random_graph(14, 30, 5, seed=3)
    assert make_plan(g, [["V1"]]) == make_plan(g, [["V1"]])
    assert make_plan(g).to_json() == make_plan(g).to_json()


def test_empty_and_single_variable_graphs():
    assert make_plan(parse_graph("")).stages == ()
    plan = make_plan(parse_graph("X"))
    assert summary(plan) == [(("X",), (), 0, [("observational", ("X",), (), ())])]


# ---------------------------------------------------------------------- oracle
def test_oracle_catches_broken_plans():
    g = parse_graph("C -> X -> N; C <-> N")
    good = make_plan(g)
    s0, s1 = good.stages
    # {C,N} matched given X: the front-door mistake (R1 fails).
    naive = Target(OBS, ("C", "N"), ("X",), ())
    bad = dataclasses.replace(
        good, stages=(s0, dataclasses.replace(s1, targets=(naive,), depends_on=()))
    )
    assert any("R1 fails" in p for p in check_plan(bad))
    # Wrong order: {C,N} first (R3 fails).
    swapped = (dataclasses.replace(s1, id=0, depends_on=(), level=0), dataclasses.replace(s0, id=1))
    assert any("R3 fails" in p for p in check_plan(dataclasses.replace(good, stages=swapped)))
    # A stage missing: X never trained.
    assert any("never trained" in p for p in check_plan(dataclasses.replace(good, stages=(s0,))))
    # R2: drop P from the frozen part of the R2 graph's second stage.
    p2 = make_plan(parse_graph(R2_GRAPH))
    st = p2.stage_of("Y")
    cut = Target(OBS, ("Y", "V", "Y2"), ("P",), ("V",))
    broken = tuple(dataclasses.replace(s, targets=(cut,)) if s is st else s for s in p2.stages)
    problems = check_plan(dataclasses.replace(p2, stages=broken))
    assert any("R2 fails" in p for p in problems)
    assert not any("R1 fails" in p for p in problems)


def _random_cases(count: int, seed: int, with_regimes: bool):
    rng = random.Random(seed)
    for k in range(count):
        n = rng.randint(2, 15)
        pairs = n * (n - 1) // 2
        density = rng.choice([0.1, 0.2, 0.35, 0.5, 0.8])
        n_dir = round(density * pairs)
        n_bi = rng.choice([0, 1, n // 4, n // 3, n // 2, n])
        g = random_graph(n, n_dir, n_bi, seed=seed * 10_000 + k)
        regimes = []
        if with_regimes:
            for _ in range(rng.randint(1, 2)):
                regimes.append(rng.sample(g.nodes, rng.randint(1, min(3, n))))
        yield g, regimes, rng.random() < 0.8 or not regimes


def test_property_random_graphs_observational():
    t0 = time.perf_counter()
    merges = 0
    for g, _, _ in _random_cases(500, seed=1, with_regimes=False):
        plan = make_plan(g)
        problems = check_plan(plan)
        assert not problems, (g.to_text(), problems)
        merges += any("merged" in r for s in plan.stages for r in s.reasons)
        assert not check_plan(joint_plan(g), minimal=False)
    assert merges >= 20  # the sample does exercise merging
    assert time.perf_counter() - t0 < 60


def test_property_random_graphs_with_interventions():
    dropped = 0
    for g, regimes, obs in _random_cases(300, seed=2, with_regimes=True):
        plan = make_plan(g, regimes, observational=obs)
        problems = check_plan(plan)
        assert not problems, (g.to_text(), regimes, obs, problems)
        dropped += any(r.startswith("regime ") for s in plan.stages for r in s.reasons)
        assert not check_plan(joint_plan(g, regimes, observational=obs), minimal=False)
    assert dropped >= 1


def test_scales_to_1000_nodes():
    g = random_graph(1000, 2000, 300, seed=5)
    t0 = time.perf_counter()
    plan = make_plan(g, [["V3"], ["V10", "V20"]])
    assert time.perf_counter() - t0 < 5
    assert sorted(v for s in plan.stages for v in s.trains) == sorted(g.nodes)
