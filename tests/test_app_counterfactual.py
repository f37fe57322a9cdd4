"""AppTest tests of the Counterfactual page: the ID*/IDC* verdict is always shown (with and
without a model), the counterfactual distribution sits next to the interventional and factual
ones with intervals and the exact truth, image pairs of both worlds are drawn, "units like data
row k" fills the evidence from the data, and bad questions get a message, not a traceback."""

from __future__ import annotations

import json

import pytest
from test_app import REPO, _fake_trained_run, _page, _study, _texts


@pytest.fixture()
def app_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    return tmp_path / "home"


def _figure(at, key: str) -> dict:
    for el in at.get("plotly_chart"):
        fig = json.loads(el.proto.spec)
        if el.proto.id and key in el.proto.id:
            return fig
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert len(figs) == 1, "expected exactly one chart"
    return figs[0]


def test_counterfactual_page_answers_the_effect_on_the_treated(app_home):
    sid = _study("colored_digits")
    _fake_trained_run(sid)
    at = _page("counterfactual", sid).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # defaults: do(D = last class) for units with D = 0
    assert at.multiselect(key="cf_do_vars").value == ["D"]
    assert at.selectbox(key="cf_outcome").value == "A"
    at.selectbox(key="cf_ev_D").select(0).run()
    assert not at.exception and not at.error
    ok = _texts(at.success)
    assert any("Identifiable" in t and "P(A_{D=2} | D=0)" in t for t in ok), ok
    fig = _figure(at, "cf_dist")
    names = [tr["name"] for tr in fig["data"]]
    assert names[0].startswith("counterfactual P(A_{D=2} | D=0)")
    assert any(n.startswith("interventional P(A | do(D=2))") for n in names)
    assert any(n.startswith("factual P(A | D=0)") for n in names)
    assert "exact counterfactual truth" in names
    assert all(
        tr.get("error_y") for tr in fig["data"] if tr["name"] != "exact counterfactual truth"
    )
    assert any("units kept of" in t for t in _texts(at.caption))
    assert any("each pair is one unit" in c for im in at.get("image") for c in im.captions)


def test_counterfactual_page_warns_when_not_identifiable(app_home):
    sid = _study("bow")
    _fake_trained_run(sid)
    at = _page("counterfactual", sid).run()
    at.selectbox(key="cf_ev_X").select(0).run()
    assert not at.exception and not at.error
    warn = _texts(at.warning)
    assert any("Not identifiable" in t and "P(Y_{X=1} | X=0)" in t for t in warn), warn
    # still answered, with the model's number labelled as one of many
    assert _figure(at, "cf_dist")["data"]


def test_counterfactual_verdict_without_a_model(app_home):
    sid = _study("xray")
    at = _page("counterfactual", sid).run()
    assert not at.exception
    assert any("Identifiable" in t for t in _texts(at.success))
    assert any("No trained model yet" in t for t in _texts(at.info))


def test_units_like_a_data_row(app_home):
    sid = _study("napkin")
    _fake_trained_run(sid)
    at = _page("counterfactual", sid).run()
    at.radio(key="cf_ev_mode").set_value("units like data row k").run()
    at.number_input(key="cf_row").set_value(3).run()
    assert not at.exception
    caps = _texts(at.caption)
    from mdcm.examples import load_example

    row = {v: int(load_example("napkin").study.observational.columns[v][3]) for v in "WZXY"}
    line = next(t for t in caps if "Units like row k" in t)
    assert all(f"{v} = {x}" in line for v, x in row.items()), (line, row)
    # a unit's full row includes its outcome: a cross-world question, flagged as such
    assert any("Not identifiable" in t for t in _texts(at.warning)) and not at.error


def test_impossible_question_is_a_message(app_home):
    sid = _study("colored_digits")
    _fake_trained_run(sid)
    at = _page("counterfactual", sid).run()
    at.multiselect(key="cf_do_vars").set_value(["D", "A"]).run()  # only the image is left
    assert not at.exception
    at.multiselect(key="cf_do_vars").set_value([]).run()
    assert not at.exception
    assert any("Pick at least one variable" in t for t in _texts(at.info))


def test_one_unit_is_imagined_and_labelled_model_dependent(app_home):
    sid = _study("xray")
    _fake_trained_run(sid)
    at = _page("counterfactual", sid).run()
    assert not at.exception
    assert any("model-dependent" in t for t in _texts(at.warning))
    at.number_input(key="cf_unit_k").set_value(2).run()
    at.button(key="cf_unit_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("effective sample size" in t for t in _texts(at.caption))
    caps = [c for im in at.get("image") for c in im.captions]
    assert "observed (factual)" in caps and any("counterfactual world" in c for c in caps)
    assert _figure(at, "cf_unit_dist")["data"]
