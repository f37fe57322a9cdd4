"""The Graph page's canvas editor (issue #14): the pure edit functions it relies on, and the page
driven through AppTest exactly as the browser drives it (one ``edit`` trigger per gesture, sent as
the component's trigger widget state). The real-browser drawing test is in
tests/test_browser_canvas.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdcm.graph import CausalGraph, GraphError, parse_graph
from mdcm_app import graphview

pytest.importorskip("streamlit")
from streamlit.proto.WidgetStates_pb2 import WidgetState  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 90


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    return tmp_path / "home"


def _graph_page(study_id: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / "graph.py"), default_timeout=TIMEOUT)
    at.session_state["study_id"] = study_id
    return at.run()


def _canvas_element(at: AppTest):
    found = [n for n in at._tree if getattr(n, "type", None) == "bidi_component"]
    assert len(found) == 1, "the Graph page shows one canvas"
    return found[0]


def canvas_drawn(at: AppTest) -> dict:
    """The data the canvas component was given (what the browser draws)."""
    return json.loads(_canvas_element(at).proto.json)


def gesture(at: AppTest, edit: dict) -> AppTest:
    """Send one canvas gesture the way the browser does: the component's trigger aggregator
    widget (``$$STREAMLIT_INTERNAL_KEY_<id>__events``) holding ``[{"event": "edit", ...}]``."""
    from streamlit.components.v2.bidi_component.constants import EVENT_DELIM
    from streamlit.runtime.state.session_state import STREAMLIT_INTERNAL_KEY_PREFIX

    base = _canvas_element(at).proto.id
    states = at._tree.get_widget_states()
    ws = WidgetState(
        id=f"{STREAMLIT_INTERNAL_KEY_PREFIX}_{base}{EVENT_DELIM}events",
        json_trigger_value=json.dumps([{"event": "edit", "value": edit}]),
    )
    states.widgets.append(ws)
    return at._run(states)


def _stages(at: AppTest) -> list[str]:
    return [
        str(m.value)
        for m in at.markdown
        if str(m.value).startswith("**Stage ") and "trains" in str(m.value)
    ]


def _empty_study() -> str:
    from mdcm_app import state

    return state.new_study(title="drawn", graph_text="", variables={}).study_id


# ---------------------------------------------------------------------- pure edit functions
def test_apply_canvas_edit_builds_front_door_and_keeps_positions():
    g, pos = CausalGraph(()), {}
    for name, x in (("C", 100), ("X", 300), ("N", 500)):
        res = graphview.apply_canvas_edit(g, pos, {"op": "add_node", "name": name, "x": x, "y": 90})
        g, pos = res.graph, res.positions
        assert res.graph_changed
    for a, b, kind in (("C", "X", "->"), ("X", "N", "->"), ("C", "N", "<->")):
        res = graphview.apply_canvas_edit(g, pos, {"op": "add_edge", "a": a, "b": b, "kind": kind})
        g, pos = res.graph, res.positions
    assert g == parse_graph("C -> X -> N; C <-> N")
    assert pos == {"C": (100.0, 90.0), "X": (300.0, 90.0), "N": (500.0, 90.0)}
    moved = graphview.apply_canvas_edit(g, pos, {"op": "move", "name": "X", "x": 1e9, "y": -5})
    assert not moved.graph_changed and moved.graph == g
    assert moved.positions["X"] == (graphview.CANVAS_W - 20, 20)  # kept inside the canvas
    gone = graphview.apply_canvas_edit(g, pos, {"op": "remove_node", "name": "X"})
    assert gone.graph == parse_graph("C <-> N") and "X" not in gone.positions
    cut = graphview.apply_canvas_edit(
        g, pos, {"op": "remove_edge", "a": "N", "b": "C", "kind": "<->"}
    )
    assert cut.graph == parse_graph("C -> X -> N")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"op": "add_edge", "a": "N", "b": "C", "kind": "->"}, "directed cycle"),
        ({"op": "add_edge", "a": "C", "b": "X", "kind": "->"}, "already exists"),
        ({"op": "add_edge", "a": "C", "b": "C", "kind": "<->"}, "self-loop"),
        ({"op": "add_edge", "a": "C", "b": "Q", "kind": "->"}, "unknown variable 'Q'"),
        ({"op": "add_edge", "a": "C", "b": "N", "kind": "=>"}, "unknown edge type"),
        ({"op": "add_node", "name": "1bad", "x": 1, "y": 1}, "bad variable name"),
        ({"op": "add_node", "name": "X", "x": 1, "y": 1}, "already exists"),
        ({"op": "add_node", "name": "Z", "x": "nan", "y": 1}, "bad canvas position"),
        ({"op": "add_node", "name": ["Z"], "x": 1, "y": 1}, "must be a variable name"),
        ({"op": "remove_edge", "a": "X", "b": "C", "kind": "->"}, "there is no edge X -> C"),
        ({"op": "explode"}, "unknown canvas edit"),
    ],
)
def test_apply_canvas_edit_refuses_bad_gestures(edit, message):
    g = parse_graph("C -> X -> N; C <-> N")
    with pytest.raises(GraphError, match=message):
        graphview.apply_canvas_edit(g, {}, edit)


def test_node_positions_fill_in_missing_and_drop_stale():
    g = parse_graph("C -> X -> N; C <-> N")
    pos = graphview.node_positions(g, {"C": [50, 60], "gone": [1, 2], "X": ["a", 2]})
    assert set(pos) == {"C", "X", "N"} and pos["C"] == (50.0, 60.0)
    for x, y in pos.values():
        assert 0 < x < graphview.CANVAS_W and 0 < y < graphview.CANVAS_H
    # every placed variable has room of its own
    pts = list(pos.values())
    assert all(
        abs(a[0] - b[0]) >= 60 or abs(a[1] - b[1]) >= 40
        for i, a in enumerate(pts)
        for b in pts[i + 1 :]
    )
    data = graphview.canvas_data(g, pos, {"X": "image"})
    colors = {n["id"]: n["color"] for n in data["nodes"]}
    assert colors["C"] == colors["N"] != colors["X"]  # one color per c-component
    assert {(e["a"], e["kind"], e["b"]) for e in data["edges"]} == {
        ("C", "->", "X"),
        ("X", "->", "N"),
        ("C", "<->", "N"),
    }


# ---------------------------------------------------------------------- the page
def test_canvas_draws_front_door_from_empty_study(home):
    sid = _empty_study()
    at = _graph_page(sid)
    assert not at.exception and not at.error
    assert canvas_drawn(at)["nodes"] == []
    assert any("Draw at least one variable" in str(i.value) for i in at.info)
    for name, x in (("C", 120), ("X", 320), ("N", 520)):
        gesture(at, {"op": "add_node", "name": name, "x": x, "y": 200, "seq": x})
        assert not at.exception and not at.error
    for i, (a, b, kind) in enumerate((("C", "X", "->"), ("X", "N", "->"), ("C", "N", "<->"))):
        gesture(at, {"op": "add_edge", "a": a, "b": b, "kind": kind, "seq": 1000 + i})
        assert not at.error
    assert parse_graph(at.text_area(key="graph_text").value) == parse_graph("C -> X -> N; C <-> N")
    stages = _stages(at)
    assert len(stages) == 2 and "trains X**" in stages[0] and "trains C and N**" in stages[1]
    drawn = canvas_drawn(at)
    assert {n["id"]: (n["x"], n["y"]) for n in drawn["nodes"]} == {
        "C": (120.0, 200.0),
        "X": (320.0, 200.0),
        "N": (520.0, 200.0),
    }
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert stored["positions"] == {"C": [120.0, 200.0], "X": [320.0, 200.0], "N": [520.0, 200.0]}
    # drag X down: the position is stored, the graph is unchanged
    gesture(at, {"op": "move", "name": "X", "x": 320, "y": 330, "seq": 2000})
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert stored["positions"]["X"] == [320.0, 330.0]
    assert parse_graph(stored["graph"]) == parse_graph("C -> X -> N; C <-> N")
    # select the confounder and press Delete: one stage per variable
    gesture(at, {"op": "remove_edge", "a": "C", "b": "N", "kind": "<->", "seq": 2001})
    assert "C <-> N" not in at.text_area(key="graph_text").value
    assert len(_stages(at)) == 3


def test_canvas_refusals_show_next_to_the_canvas(home):
    from mdcm_app import state

    sid = state.new_study(example="bow").study_id
    at = _graph_page(sid)
    before = (home / "studies" / sid / "app.json").read_text()
    gesture(at, {"op": "add_edge", "a": "Y", "b": "X", "kind": "->", "seq": 1})
    assert any("directed cycle" in str(e.value) for e in at.error)
    gesture(at, {"op": "add_node", "name": "2x", "x": 10, "y": 10, "seq": 2})
    assert any("bad variable name '2x'" in str(e.value) for e in at.error)
    gesture(at, {"op": "teleport", "seq": 3})  # a forged payload: refused, no traceback
    assert any("unknown canvas edit" in str(e.value) for e in at.error)
    assert not at.exception
    assert (
        json.loads((home / "studies" / sid / "app.json").read_text())["graph"]
        == (json.loads(before)["graph"])
    )
    assert canvas_drawn(at)["ack"] == 3  # the canvas redraws the unchanged graph


def test_text_form_and_canvas_stay_in_sync(home):
    from mdcm_app import state

    sid = state.new_study(example="bow").study_id
    at = _graph_page(sid)
    at.text_area(key="graph_text").input("Z -> X -> Y; X <-> Y").run()
    drawn = canvas_drawn(at)
    assert [n["id"] for n in drawn["nodes"]] == ["Z", "X", "Y"]
    xy = {n["id"]: (n["x"], n["y"]) for n in drawn["nodes"]}
    assert len(set(xy.values())) == 3
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert set(stored["positions"]) == {"Z", "X", "Y"}
    # the positions survive the next text edit for the variables that stay
    at.text_area(key="graph_text").input("Z -> X -> Y").run()
    again = {n["id"]: (n["x"], n["y"]) for n in canvas_drawn(at)["nodes"]}
    assert again == xy
    # and the study folder's study.json carries them once it is written
    from mdcm_app import uploads

    uploads.write_study_json(sid, state.load_meta(sid).schema())
    body = json.loads((home / "studies" / sid / "study" / "study.json").read_text())
    assert set(body["positions"]) == {"Z", "X", "Y"}


# ---------------------------------------------------------------------- Home: the default study
def test_first_visit_opens_the_default_study(home):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    sid = at.session_state["study_id"]
    assert sid.startswith("colored-digits-") and at.query_params["study"] in (sid, [sid])
    assert "Current study: Colored digits" in " ".join(str(s.value) for s in at.subheader)
    md = " ".join(str(m.value) for m in at.markdown)
    assert "3 variables" in md and "observational" in md
    assert at.button(key="home_train").label == "Train this study"
    assert len(at.get("image")) >= 2  # the front-door picture and the data's first images
    # a second first visit reopens that copy instead of making another
    again = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    assert again.session_state["study_id"] == sid
    assert len(list((home / "studies").iterdir())) == 1
    # a link naming a study that does not exist is not silently replaced
    bad = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    bad.query_params["study"] = "nope-123"
    bad.run()
    assert not bad.exception
    assert "No study open" in " ".join(str(i.value) for i in bad.info)


def test_an_edit_of_a_trained_study_warns_and_marks_variables_without_data(home):
    from test_app import _fake_trained_run

    from mdcm_app import state

    sid = state.new_study(example="bow").study_id
    _fake_trained_run(sid)
    at = _graph_page(sid)
    assert any("training again" in str(c.value) for c in at.caption)  # said before any edit
    assert not any("Needs retraining" in str(w.value) for w in at.warning)
    assert any("Can the data answer" in str(s.value) for s in at.subheader)
    gesture(at, {"op": "add_node", "name": "Z", "x": 300, "y": 300, "seq": 1})
    gesture(at, {"op": "add_edge", "a": "Z", "b": "X", "kind": "->", "seq": 2})
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "Needs retraining" in warnings
    assert "No data yet for Z: upload a dataset with a column Z on the Data page" in warnings
    assert not at.exception


def test_open_builtin_reopens_the_existing_copy_unless_a_fresh_one_is_asked(home):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    first = at.session_state["study_id"]  # the default study, opened on the first visit
    at.selectbox(key="home_example").select("colored_digits")
    at.button(key="home_open_example").click().run()
    assert at.session_state["study_id"] == first
    at.checkbox(key="home_fresh_copy").check()
    at.button(key="home_open_example").click().run()
    fresh = at.session_state["study_id"]
    assert fresh != first and fresh.startswith("colored-digits-")
    assert len(list((home / "studies").iterdir())) == 2
    assert not at.exception and not at.error
