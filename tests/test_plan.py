"""Tests for mdcm.plan: known plans for textbook graphs, the JSON contract, and a property test
of R1-R3 over random graphs against the independent oracle in tests/plan_oracle.py."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time

import pytest
from plan_oracle import check_plan, least_target

from mdcm.cli import main as cli_main
from mdcm.graph import CausalGraph, parse_graph, random_graph
from mdcm.identify import identify
from mdcm.plan import (
    Plan,
    PlanError,
    Regime,
    Stage,
    Target,
    describe_stage,
    joint_plan,
    make_plan,
)

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
    s1 = plan.stages[1]
    assert s1.reasons == (
        "C and N are trained together: a hidden common cause affects both",
        "the model of X from stage 0 runs inside this stage, held fixed: X is itself affected by "
        "C, so taking X as given from the data would mix up seeing X with setting it",
    )
    assert s1.technical == (
        "C and N train jointly: confounded by a latent (same c-component)",
        "X joins the matched set: do-parent X is a descendant of C (R1, conditioning would not "
        "equal intervening)",
    )


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
    (stage,) = plan.stages
    assert stage.technical[-1] == (
        "{A,C} and {B,D} merged: each needs the other trained first (dependency cycle: "
        "{A,C} runs B frozen in observational; {B,D} runs A, C frozen in observational)"
    )
    assert stage.reasons[-1] == (
        "A and C are trained together with B and D because each needs the other's models "
        "trained first (fitting A and C to the observational data needs the model of B; "
        "fitting B and D to the observational data needs the models of A and C)"
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
        for r in last.technical
    )
    assert any(
        "P is affected by Q, which shares a hidden common cause with F" in r for r in last.reasons
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
        "P joins the matched set: ancestor of frozen V within its c-component {V,P,M} (R2, a "
        "frozen part must be pinned down by its earlier stage)"
    ) in st.technical
    assert (
        f"the model of P from stage {plan.stage_of('P').id} also runs inside this stage, held "
        "fixed: V runs here too, and V's model is only pinned down together with its cause P "
        "(hidden common causes link V, P and M)"
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
    described = describe_stage(only, only.stage_of("X"))
    assert described.plain.notes == (
        "No dataset can train this stage: every dataset sets X by experiment.",
    )
    assert "no regime can train this stage" in described.text(technical=True)
    assert not check_plan(plan) and not check_plan(only)


W_GRAPH = "W -> X -> Y; X <-> W; W <-> Y"


def test_an_experiment_on_an_h_node_variable_informs_its_stage():
    # P(Y | do(X)) is identifiable only from P(V | do(W)) here (gID: Q[Y] from P_do(W)), and the
    # single stage trains W, X and Y: its do(W) target is X, Y given the recorded W.
    g = parse_graph(W_GRAPH)
    assert not identify(g, ["X"], ["Y"]).identifiable
    assert identify(g, ["X"], ["Y"], interventions=[["W"]]).identifiable
    plan = make_plan(g, [["W"]])
    assert summary(plan) == [
        (
            ("W", "X", "Y"),
            (),
            0,
            [("observational", ("W", "X", "Y"), (), ()), ("do(W)", ("X", "Y"), ("W",), ())],
        )
    ]
    assert not check_plan(plan)
    plain = describe_stage(plan, plan.stages[0]).plain
    assert plain.data[1] == (
        "From the experiment on W: fits X and Y together, given the recorded W; W is set by the "
        "experiment there, so its model learns nothing from it."
    )
    assert "W intervened (no gradient from this regime)" in plan.describe(technical=True)


def test_front_door_experiment_on_c_reaches_n():
    g = parse_graph("C -> X -> N; C <-> N")
    plan = make_plan(g, [["C"]])
    assert summary(plan) == [
        (("X",), (), 0, [("observational", ("X",), ("C",), ()), ("do(C)", ("X",), ("C",), ())]),
        (
            ("C", "N"),
            (0,),
            1,
            [("observational", ("C", "X", "N"), (), ("X",)), ("do(C)", ("N",), ("X",), ())],
        ),
    ]
    s0, s1 = plan.stages
    # N's do(C) target is a plain conditional of N in that regime, but the stage trains C and N
    # and also matches the observational joint: only stage 0 can take a pre-trained model.
    assert s1.targets[1].is_conditional and not s1.is_conditional
    assert s0.is_conditional
    assert "could reuse a model trained elsewhere" in describe_stage(plan, s0).text()
    assert "could reuse" not in describe_stage(plan, s1).text()
    assert not check_plan(plan)
    # Experiment only: N's stage needs nothing from X's, and nothing teaches C's mechanism.
    only = make_plan(g, [["C"]], observational=False)
    assert summary(only) == [
        (("C", "N"), (), 0, [("do(C)", ("N",), ("X",), ())]),
        (("X",), (), 0, [("do(C)", ("X",), ("C",), ())]),
    ]
    assert not only.stages[0].is_conditional and only.stages[1].is_conditional
    assert describe_stage(only, only.stages[0]).plain.notes == (
        "No dataset teaches the model of C: every dataset sets it by experiment.",
    )
    assert not check_plan(only)


def test_cli_plan_uses_every_experiment(capsys):
    assert cli_main(["plan", "--graph", W_GRAPH, "--intervention", "W", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)["stages"]
    assert stage["targets"][1] == {
        "regime": {"do": ["W"]},
        "matches": ["X", "Y"],
        "given": ["W"],
        "frozen": [],
    }
    graph = "C -> X -> N; C <-> N"
    assert cli_main(["plan", "--graph", graph, "--intervention", "C", "--json"]) == 0
    n_stage = json.loads(capsys.readouterr().out)["stages"][1]
    assert n_stage["trains"] == ["C", "N"]
    assert {"regime": {"do": ["C"]}, "matches": ["N"], "given": ["X"], "frozen": []} in n_stage[
        "targets"
    ]
    assert cli_main(["plan", "--graph", graph, "--intervention", "C"]) == 0
    plain = capsys.readouterr().out
    assert "From the experiment on C: fits N alone, given the recorded X; C is set" in plain
    assert cli_main(["plan", "--graph", graph, "--intervention", "C", "--technical"]) == 0
    assert "do(C): matches N; conditions on X; C intervened" in capsys.readouterr().out


def test_frozen_parts_are_pinned_in_the_regime_graph():
    # Under do(X), frozen Y's c-component in G_do(X) is {Y} alone (X <-> Y is cut), and stage
    # {X, Y} matches P_do(X)(Y | X, W), which pins Q[Y] down: {W, V} can use do(X) without X.
    g = parse_graph("X -> Y; X <-> Y; W -> Y -> V; W <-> V")
    plan = make_plan(g, [["X"]])
    assert summary(plan) == [
        (
            ("X", "Y"),
            (),
            0,
            [("observational", ("X", "Y"), ("W",), ()), ("do(X)", ("Y",), ("X", "W"), ())],
        ),
        (
            ("W", "V"),
            (0,),
            1,
            [
                ("observational", ("X", "Y", "W", "V"), (), ("X", "Y")),
                ("do(X)", ("Y", "W", "V"), ("X",), ("Y",)),
            ],
        ),
    ]
    assert least_target(g, {"W", "V"}, frozenset({"X"})) == {"Y", "W", "V"}
    assert (
        "X joins the matched set: do-parent X shares a latent confounder with Y (R1, "
        "conditioning would not equal intervening) (in observational)"
    ) in plan.stages[1].technical
    assert not check_plan(plan)


MERGE_BY_EXPERIMENTS = "V0 -> V1; V0 -> V2; V0 -> V3; V2 -> V3; V3 -> V1; V0 <-> V3; V1 <-> V2"


def test_a_merge_forced_by_two_experiments_names_them():
    # Without observational data, {V0,V3} needs V2 frozen in do(V1) and {V1,V2} needs V3 frozen
    # in do(V0): a dependency cycle that only the two experiments together close.
    g = parse_graph(MERGE_BY_EXPERIMENTS)
    plan = make_plan(g, [["V1"], ["V0"]], observational=False)
    assert [s.trains for s in plan.stages] == [("V0", "V1", "V2", "V3")]
    (stage,) = plan.stages
    assert stage.technical[-1] == (
        "{V0,V3} and {V1,V2} merged: each needs the other trained first (dependency cycle: "
        "{V0,V3} runs V2 frozen in do(V1); {V1,V2} runs V3 frozen in do(V0))"
    )
    assert stage.reasons[-1] == (
        "V0 and V3 are trained together with V1 and V2 because each needs the other's models "
        "trained first (fitting V0 and V3 to the experiment on V1 needs the model of V2; "
        "fitting V1 and V2 to the experiment on V0 needs the model of V3)"
    )
    assert not check_plan(plan)
    # Each experiment alone leaves the two c-components in separate stages.
    for do in ("V1", "V0"):
        assert len(make_plan(g, [[do]], observational=False).stages) == 2


def test_plain_reasons_never_use_a_letter_for_a_set():
    # With lowercase variable names, no capital letter may stand alone in the plain text (it
    # would read as a set, "tar joins A"), and the technical text names only R1/R2.
    rng = random.Random(4)
    words = ["tar", "dose", "age", "scan", "risk", "gene", "diet", "pain", "flu", "cost"]
    seen = 0
    for k in range(60):
        g0 = random_graph(len(words), rng.randint(9, 30), rng.randint(1, 6), seed=400 + k)
        name = dict(zip(g0.nodes, words, strict=True)).__getitem__
        g = CausalGraph.build(
            words,
            [(name(a), name(b)) for a, b in g0.directed],
            [(name(a), name(b)) for a, b in g0.bidirected],
        )
        regimes = [rng.sample(g.nodes, rng.randint(1, 2))]
        plan = make_plan(g, regimes, observational=rng.random() < 0.7)
        plain, tech = plan.describe(), plan.describe(technical=True)
        assert not re.search(r"\b[A-Z]\b", plain), plain
        assert set(re.findall(r"\b[A-Z]\w*\b", tech)) <= {"R1", "R2", "P", "Stage", "Modular"}
        seen += sum(len(s.reasons) for s in plan.stages)
    assert seen >= 100


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
    assert "Joint (NCM-style) plan" in plan.describe(technical=True)
    assert plan.describe().startswith("Joint plan (the baseline): every model is trained at once")


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
                "technical": [],
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
                    "C and N are trained together: a hidden common cause affects both",
                    "the model of X from stage 0 runs inside this stage, held fixed: X is itself "
                    "affected by C, so taking X as given from the data would mix up seeing X with "
                    "setting it (in the observational data)",
                ],
                "technical": [
                    "C and N train jointly: confounded by a latent (same c-component)",
                    "X joins the matched set: do-parent X is a descendant of C (R1, conditioning "
                    "would not equal intervening) (in observational)",
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
    assert plan.describe() == "\n".join(
        [
            "Modular plan: 2 stages in 2 rounds (stages of one round can train at the same time), "
            "on the observational data",
            "Stage 0 (can start at once): trains X",
            "  From the observational data: fits X alone, given the recorded C.",
            "  This stage could reuse a model trained elsewhere: any good generator of X given C "
            "(a pre-trained image model, for example) can stand in.",
            "Stage 1 (after stage 0): trains C and N",
            "  From the observational data: fits C, X and N together, with the model of X from "
            "stage 0 held fixed.",
            "  why:",
            "    - C and N are trained together: a hidden common cause affects both",
            "    - the model of X from stage 0 runs inside this stage, held fixed: X is itself "
            "affected by C, so taking X as given from the data would mix up seeing X with "
            "setting it",
        ]
    )
    text = plan.describe(technical=True)
    assert "Stage 0 (level 0, no dependencies): trains X" in text
    assert "Stage 1 (level 1, after stage 0): trains C, N" in text
    assert "matches C, X, N; conditions on nothing; runs X frozen" in text
    assert "plain conditional P(X | C)" in text
    assert "confounded by a latent" in text and "do-parent X is a descendant of C" in text
    merge = make_plan(parse_graph("A -> B -> C -> D; A <-> C; B <-> D")).describe(technical=True)
    assert "merged: each needs the other trained first (dependency cycle" in merge
    # one rendering for every caller: the plan's text is made of describe_stage's texts
    for s in plan.stages:
        d = describe_stage(plan, s)
        assert d.text() in plan.describe() and d.text(technical=True) in text
        assert d.plain.why == s.reasons and d.technical.why == s.technical


def test_old_plan_files_without_technical_reasons_load():
    plan = make_plan(parse_graph("C -> X -> N; C <-> N"))
    data = plan.to_json()
    for st in data["stages"]:
        del st["technical"]
    back = Plan.from_json(data, plan.graph)
    assert back.stages[1].technical == back.stages[1].reasons == plan.stages[1].reasons
    with pytest.raises(PlanError, match="reasons but"):
        Stage(0, ("X",), (), 0, (), ("a", "b"), ("a",))


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


def test_oracle_catches_a_regime_left_out_or_misused():
    g = parse_graph(W_GRAPH)
    good = make_plan(g, [["W"]])
    (st,) = good.stages

    def with_targets(*targets):
        return dataclasses.replace(good, stages=(dataclasses.replace(st, targets=targets),))

    obs, do_w = st.targets
    # the old rule: no do(W) target because the stage trains W
    assert any(
        "no target in do(W), but a valid one exists" in p for p in check_plan(with_targets(obs))
    )
    # matching the intervened W, or leaving it out of the given values
    wrong = Target(do_w.regime, ("W", "X", "Y"), (), ())
    assert any("matches intervened ['W']" in p for p in check_plan(with_targets(obs, wrong)))
    bare = Target(do_w.regime, ("X", "Y"), (), ())
    assert any("but pa(A)\\A in G_I is ['W']" in p for p in check_plan(with_targets(obs, bare)))
    # a frozen mechanism whose own stage never saw this regime pins nothing down there
    fd = make_plan(parse_graph("C -> X -> N; C <-> N"), [["X"]])
    s0, s1 = fd.stages
    frozen_x = Target(fd.regimes[1], ("C", "X", "N"), (), ("X",))
    hollow = dataclasses.replace(
        fd, stages=(s0, dataclasses.replace(s1, targets=(s1.targets[0], frozen_x)))
    )
    problems = check_plan(hollow, minimal=False)
    assert any("matches intervened ['X']" in p for p in problems)


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
        merges += any("merged" in r for s in plan.stages for r in s.technical)
        assert not check_plan(joint_plan(g), minimal=False)
    assert merges >= 20  # the sample does exercise merging
    assert time.perf_counter() - t0 < 60


def _check_regime_plans(cases) -> dict[str, int]:
    """Plan each case, check it with the oracle (R1-R3 in every G_I, minimal A, every
    (regime, stage) pair that can have a target has one) and count what the sample exercised."""
    seen = dict.fromkeys(["graphs", "pairs", "h_meets_i", "merges", "same_stages"], 0)
    for g, regimes, obs in cases:
        plan = make_plan(g, regimes, observational=obs)
        problems = check_plan(plan)
        assert not problems, (g.to_text(), regimes, obs, problems)
        assert not check_plan(joint_plan(g, regimes, observational=obs), minimal=False)
        seen["graphs"] += 1
        for s in plan.stages:
            for t in s.targets:
                seen["pairs"] += 1
                seen["h_meets_i"] += bool(set(s.trains) & t.regime.do)  # the old rule's gap
        seen["merges"] += any("merged" in r for s in plan.stages for r in s.technical)
        if obs:  # with observational data, experiments add targets, never dependencies
            base = make_plan(g)
            assert [s.trains for s in plan.stages] == [s.trains for s in base.stages]
            seen["same_stages"] += 1
    return seen


def test_property_random_graphs_with_interventions():
    t0 = time.perf_counter()
    seen = _check_regime_plans(_random_cases(500, seed=2, with_regimes=True))
    assert seen["graphs"] == 500 and seen["same_stages"] >= 350
    assert seen["h_meets_i"] >= 300  # targets the old rule dropped
    assert seen["merges"] >= 10
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_property_random_graphs_with_interventions_large_sweep():
    rng = random.Random(9)

    def cases():
        for k in range(3000):
            n = rng.randint(2, 25)
            g = random_graph(
                n, rng.randint(0, n * (n - 1) // 3), rng.randint(0, n), seed=90_000 + k
            )
            regimes = [
                rng.sample(g.nodes, rng.randint(1, min(4, n))) for _ in range(rng.randint(1, 2))
            ]
            yield g, regimes, rng.random() < 0.7

    seen = _check_regime_plans(cases())
    assert seen["graphs"] == 3000 and seen["h_meets_i"] >= 1000


def test_scales_to_1000_nodes():
    g = random_graph(1000, 2000, 300, seed=5)
    t0 = time.perf_counter()
    plan = make_plan(g, [["V3"], ["V10", "V20"]])
    assert time.perf_counter() - t0 < 5
    assert sorted(v for s in plan.stages for v in s.trains) == sorted(g.nodes)
