"""Tests for mdcm.graph: parsing, printing, JSON, c-components, surgery, d-separation."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest

from mdcm.graph import CausalGraph, GraphError, parse_graph, random_graph

FRONT_DOOR = "C -> X -> N; C <-> N"
NAPKIN = "W -> Z -> X -> Y; W <-> X; W <-> Y"


# ---------------------------------------------------------------------- parsing
def test_parse_chain_and_bidirected():
    g = parse_graph(FRONT_DOOR)
    assert g.nodes == ("C", "X", "N")
    assert g.directed == {("C", "X"), ("X", "N")}
    assert g.bidirected == {("C", "N")}


def test_parse_reversed_arrow_and_isolated_and_newlines():
    g = parse_graph("Y <- W\nZ\n\nX -> Y")
    assert g.nodes == ("Y", "W", "Z", "X")
    assert g.directed == {("W", "Y"), ("X", "Y")}
    assert g.bidirected == frozenset()
    assert g.parents("Y") == ["W", "X"]  # declaration order


def test_parse_comments_and_blank_statements():
    g = parse_graph("# a graph\nA -> B  # cause\n;; B <-> C # confounded\n   # only a comment")
    assert g.nodes == ("A", "B", "C")
    assert g.directed == {("A", "B")}
    assert g.bidirected == {("B", "C")}


def test_bidirected_edges_are_normalised():
    assert parse_graph("B <-> A").bidirected == {("A", "B")}
    assert parse_graph("B <-> A").bidirected == parse_graph("A <-> B").bidirected


def test_directed_and_bidirected_between_one_pair_allowed():
    g = parse_graph("X -> Y; X <-> Y")
    assert g.directed == {("X", "Y")} and g.bidirected == {("X", "Y")}


def test_empty_text_is_empty_graph():
    g = parse_graph("")
    assert g.nodes == () and g.directed == frozenset()
    assert parse_graph(g.to_text()) == g


@pytest.mark.parametrize(
    "text, message",
    [
        ("A ~ B", "unknown token '~' in 'A ~ B'"),
        ("A => B", "unknown token '='"),
        ("A <-- B", "unknown token '-'"),
        ("X -> Y\nY -> Z\nZ ~ Q", "unknown token '~' on line 3"),
        ("A -- B", "undirected edge '--'"),
        ("X --", "undirected edge '--'"),
        ("X -- Y --", "undirected edge '--'"),
        ("A B", "unexpected 'B' in 'A B'"),
        ("A -> B C", "unexpected 'C'"),
        ("A ->", "edge A -> has no target"),
        ("A -> B ->", "edge B -> has no target"),
        ("A -> -> B", "edge '->' is missing a variable"),
        ("-> B", "edge '->' is missing a variable"),
        ("1X -> B", "bad variable name '1X'"),
        ("A.b -> C", "bad variable name 'A.b'"),
        ("A -> A", "self-loop A -> A"),
        ("A <-> A", "self-loop A <-> A"),
        ("A -> B; B -> A", "contradictory edges A -> B and B -> A"),
        ("A -> B -> C -> A", "directed cycle A -> B -> C -> A"),
        ("A -> B\nB -> C\nC -> A", "directed cycle A -> B -> C -> A"),
        ("A -> B; A -> B", "duplicate edge A -> B"),
        ("A -> B; B <- A", "duplicate edge A -> B"),
        ("A <-> B; B <-> A", "duplicate edge B <-> A"),
    ],
)
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(GraphError) as err:
        parse_graph(text)
    assert message in str(err.value)


def test_bad_inputs():
    with pytest.raises(GraphError, match="must be a string"):
        parse_graph(None)  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="too long"):
        parse_graph("A -> B;" * 40_000)
    with pytest.raises(GraphError, match="bad variable name"):
        parse_graph("A" * 65)
    assert parse_graph("A" * 64).nodes == ("A" * 64,)


def test_constructor_errors():
    with pytest.raises(GraphError, match="declared twice"):
        CausalGraph(("A", "A"))
    with pytest.raises(GraphError, match="unknown variable 'C'"):
        CausalGraph(("A", "B"), frozenset({("A", "C")}))
    with pytest.raises(GraphError, match="unknown variable 'C'"):
        CausalGraph(("A", "B"), bidirected=frozenset({("C", "A")}))
    with pytest.raises(GraphError, match="self-loop"):
        CausalGraph(("A",), frozenset({("A", "A")}))
    with pytest.raises(GraphError, match="bad variable name"):
        CausalGraph(("A B",))
    with pytest.raises(GraphError, match="directed cycle"):
        CausalGraph.build("AB", [("A", "B"), ("B", "A")])


def test_build_adds_edge_endpoints_in_order():
    g = CausalGraph.build(["Z"], [("X", "Y")], [("Y", "W")])
    assert g.nodes == ("Z", "X", "Y", "W")


# ---------------------------------------------------------------------- printing / JSON
ROUND_TRIP = [
    FRONT_DOOR,
    NAPKIN,
    "X -> Y; X <-> Y",
    "Z -> X -> Y; Z -> Y",
    "A; B; C",
    "Y <- X; Q; X <-> Q",
    "B -> A; C",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_text_round_trip_keeps_declared_order(text):
    g = parse_graph(text)
    h = parse_graph(g.to_text())
    assert h == g and h.nodes == g.nodes
    assert parse_graph(str(g)) == g


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_json_round_trip(text):
    import json

    g = parse_graph(text)
    data = g.to_json()
    assert CausalGraph.from_json(data) == g
    h = CausalGraph.from_json(json.dumps(data))
    assert h == g and h.nodes == g.nodes


def test_random_graphs_round_trip():
    for seed in range(30):
        g = random_graph(8, seed % 20, seed % 6, seed)
        assert parse_graph(g.to_text()).nodes == g.nodes
        assert parse_graph(g.to_text()) == g
        assert CausalGraph.from_json(g.to_json()) == g


def test_to_json_format():
    assert parse_graph("B -> A; A <-> C").to_json() == {
        "nodes": ["B", "A", "C"],
        "directed": [["B", "A"]],
        "bidirected": [["A", "C"]],
    }


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be an object"),
        ({"directed": []}, "must be an object"),
        ({"nodes": ["A", "B"], "directed": [["A", "B", "C"]]}, "exactly two ends"),
        ({"nodes": ["A", "B"], "directed": [1]}, "lists of two names"),
        ({"nodes": ["A"], "directed": [["A", "B"]]}, "undeclared variable 'B'"),
        ({"nodes": ["A", "B"], "directed": [["A", "B"], ["A", "B"]]}, "duplicate edge A -> B"),
        ({"nodes": ["A", "B"], "bidirected": [["A", "B"], ["B", "A"]]}, "duplicate edge"),
        ({"nodes": ["A", "B"], "directed": [["A", "B"], ["B", "A"]]}, "contradictory"),
        ({"nodes": ["A", "A"]}, "declared twice"),
        (
            {"nodes": ["A", "B", "C"], "directed": [["A", "B"], ["B", "C"], ["C", "A"]]},
            "directed cycle",
        ),
    ],
)
def test_from_json_errors(data, message):
    with pytest.raises(GraphError, match=message):
        CausalGraph.from_json(data)


# ---------------------------------------------------------------------- relations
def test_relations_napkin():
    g = parse_graph(NAPKIN)
    assert g.parents("X") == ["Z"]
    assert g.children("W") == ["Z"]
    assert g.spouses("W") == ["X", "Y"]
    assert g.spouses("Y") == ["W"]
    assert g.parents_of({"Z", "X"}) == {"W"}
    assert g.ancestors({"X"}) == {"W", "Z", "X"}  # includes X itself
    assert g.descendants({"Z"}) == {"Z", "X", "Y"}
    assert g.ancestors("W") == {"W"}
    assert g.order({"Y", "W", "X"}) == ["W", "X", "Y"]
    assert g.topological_order() == ["W", "Z", "X", "Y"]


def test_topological_order_ties_follow_declaration():
    g = parse_graph("B; A; C -> A")
    assert g.topological_order() == ["B", "C", "A"]


def test_unknown_variable_in_queries():
    g = parse_graph(FRONT_DOOR)
    for call in (
        lambda: g.parents("Q"),
        lambda: g.ancestors(["Q"]),
        lambda: g.mutilate(["Q"]),
        lambda: g.subgraph(["C", "Q"]),
        lambda: g.d_separated(["C"], ["Q"]),
    ):
        with pytest.raises(GraphError, match="unknown variable 'Q'"):
            call()


def test_c_components():
    g = parse_graph(NAPKIN)
    assert g.c_components() == [frozenset("WXY"), frozenset("Z")]
    assert g.c_component_of("Y") == frozenset("WXY")
    g = parse_graph("A -> B -> C -> D; A <-> C; B <-> D; E")
    assert g.c_components() == [frozenset("AC"), frozenset("BD"), frozenset("E")]
    # chains of confounders join into one component
    assert parse_graph("A <-> B; B <-> C; D").c_components() == [frozenset("ABC"), frozenset("D")]


def test_c_components_partition_random_graphs():
    for seed in range(20):
        g = random_graph(10, 12, 4, seed)
        comps = g.c_components()
        assert sorted(v for c in comps for v in c) == sorted(g.nodes)
        # no bidirected edge crosses components; each component is bidirected-connected
        for a, b in g.bidirected:
            assert g.c_component_of(a) == g.c_component_of(b)
        for c in comps:
            u = nx.Graph()
            u.add_nodes_from(c)
            u.add_edges_from(e for e in g.bidirected if e[0] in c)
            assert nx.is_connected(u)


def test_mutilate_and_remove_outgoing():
    g = parse_graph(NAPKIN)
    m = g.mutilate(["X"])
    assert m.nodes == g.nodes
    assert m.directed == {("W", "Z"), ("X", "Y")}
    assert m.bidirected == {("W", "Y")}
    r = g.remove_outgoing(["Z", "W"])
    assert r.directed == {("X", "Y")}
    assert r.bidirected == g.bidirected


def test_subgraph():
    g = parse_graph(NAPKIN)
    s = g.subgraph(["Y", "W", "X"])
    assert s.nodes == ("W", "X", "Y")
    assert s.directed == {("X", "Y")}
    assert s.bidirected == {("W", "X"), ("W", "Y")}


# ---------------------------------------------------------------------- d-separation
@pytest.mark.parametrize(
    "text, x, y, z, separated",
    [
        ("X -> M -> Y", "X", "Y", "", False),  # chain
        ("X -> M -> Y", "X", "Y", "M", True),
        ("X <- M -> Y", "X", "Y", "", False),  # fork
        ("X <- M -> Y", "X", "Y", "M", True),
        ("X -> M <- Y", "X", "Y", "", True),  # collider
        ("X -> M <- Y", "X", "Y", "M", False),
        ("X -> M <- Y; M -> D", "X", "Y", "D", False),  # descendant of a collider
        ("X <-> Y", "X", "Y", "", False),  # latent confounder
        ("X <-> M <-> Y", "X", "Y", "", True),  # M is a collider of two latents
        ("X <-> M <-> Y", "X", "Y", "M", False),
        ("X -> M <-> Y", "X", "Y", "", True),
        ("X -> M <-> Y", "X", "Y", "M", False),
        ("X <- A -> M <- B -> Y", "X", "Y", "", True),  # M-bias
        ("X <- A -> M <- B -> Y", "X", "Y", "M", False),
        ("X <- A -> M <- B -> Y", "X", "Y", "MA", True),
        ("Z -> X -> Y; Z -> Y", "Z", "Y", "X", False),  # back-door
        (NAPKIN, "W", "X", "Z", False),
        (NAPKIN, "Z", "Y", "X", False),  # Z -> X <-> W <-> Y, X collider
        (NAPKIN, "Z", "Y", "WX", False),  # X and W are open colliders
        ("Z -> X -> Y; W <-> X; W <-> Y", "Z", "Y", "X", True),  # W is a closed collider
        ("Z -> X -> Y; W <-> X; W <-> Y", "Z", "W", "", True),
    ],
)
def test_d_separation_textbook(text, x, y, z, separated):
    g = parse_graph(text)
    assert g.d_separated(list(x), list(y), list(z)) is separated
    assert g.d_separated(list(y), list(x), list(z)) is separated


def test_d_separation_do_calculus_rule2_front_door():
    g = parse_graph(FRONT_DOOR)
    cut = g.remove_outgoing(["X"])
    assert not cut.d_separated(["X"], ["N"])  # back-door X <- C <-> N is open
    assert cut.d_separated(["X"], ["N"], ["C"])
    assert g.remove_outgoing(["C"]).d_separated(["X"], ["C"])  # P(X | do(C)) = P(X | C)


def test_d_separation_edge_cases():
    g = parse_graph("X -> Y; Z")
    assert g.d_separated([], ["Y"])
    assert not g.d_separated(["X"], ["X", "Y"])
    assert g.d_separated(["Z"], ["X", "Y"])
    assert g.d_separated(["X"], ["Y"], ["X"])  # X is given


def test_d_separation_matches_networkx_on_dags():
    # Without bidirected edges d-separation is plain DAG d-separation.
    for seed in range(10):
        g = random_graph(7, 9, 0, seed)
        dag = nx.DiGraph(list(g.directed))
        dag.add_nodes_from(g.nodes)
        for x, y in itertools.combinations(g.nodes, 2):
            z = {v for v in g.nodes if v not in (x, y)} if seed % 2 else set()
            assert g.d_separated([x], [y], z) == nx.is_d_separator(dag, {x}, {y}, z)


def test_latent_projection_dag():
    d = parse_graph(FRONT_DOOR).latent_projection_dag()
    assert set(d.nodes) == {"C", "X", "N", "U[C,N]"}
    assert set(d.edges) == {("C", "X"), ("X", "N"), ("U[C,N]", "C"), ("U[C,N]", "N")}


# ---------------------------------------------------------------------- random graphs
def test_random_graph_deterministic_and_sized():
    a = random_graph(12, 20, 4, seed=7)
    assert a == random_graph(12, 20, 4, seed=7)
    assert a != random_graph(12, 20, 4, seed=8)
    assert a.nodes == tuple(f"V{i}" for i in range(12))
    assert len(a.directed) == 20 and len(a.bidirected) == 4
    full = random_graph(5, 100, 100, seed=1)
    assert len(full.directed) == 10 and len(full.bidirected) == 10  # capped at the pairs
    assert nx.is_directed_acyclic_graph(nx.DiGraph(list(full.directed)))
