"""AppTest tests of the answers the app gives (issue #16): the sentence says the chart's numbers,
one number per quantity across chart, table and Checks, the caveat of a non-identifiable answer in
chart, table and sentence with the spread over several models, the out-of-range warning for an
uploaded image, typed interventions moving the widgets, stale models after a graph edit, error
messages that name the user's file, and caches that follow uploads."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from test_app import REPO, TIMEOUT, _fake_trained_run, _page, _study, _texts


def _figure(at, key: str) -> dict:
    """The plotly figure drawn with widget key ``key`` (its JSON spec)."""
    for el in at.get("plotly_chart"):
        fig = json.loads(el.proto.spec)
        if el.proto.id.endswith(key) or key in el.proto.id:
            return fig
    raise AssertionError(f"no chart {key}; ids: {[e.proto.id for e in at.get('plotly_chart')]}")


def _table(at, column: str):
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with column {column!r}")


def _png(rgb=(255, 0, 0), size=(300, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------- plain answers
def test_sentence_matches_chart_and_one_number_per_quantity(home):
    sid = _study("xray")
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    assert not at.exception and not at.error, _texts(at.error)
    at.select_slider(key="iv_val_C").set_value(1).run()
    fig = _figure(at, "iv_dist_N")
    model = next(t for t in fig["data"] if t["name"].startswith("model"))
    assert model["x"] == ["0 (negative)", "1 (positive)"]  # the study's own class names
    p1 = model["y"][1]
    half = model["error_y"]["array"][1]
    sentence = next(s for s in _texts(at.info) if s.startswith("If symptom C were set to 1"))
    pct = re.search(r"diagnosis N to be positive in (\d+)% of cases", sentence)
    assert pct and int(pct.group(1)) == round(100 * p1)
    lo, hi = re.search(r"95% interval (\d+)–(\d+)%", sentence).groups()
    assert (int(lo), int(hi)) == (round(100 * (p1 - half)), round(100 * (p1 + half)))
    naive = next(t for t in fig["data"] if t["name"].startswith("data: cases that had"))
    assert f"it was {round(100 * naive['y'][1])}%" in sentence
    assert "if symptom C were set to 1 (present)" in fig["layout"]["title"]["text"]
    # the effect table shows the same number for do(C=1)
    table = _table(at, "C set to")
    row = table[table["C set to"] == "1 (present)"].iloc[0]
    assert row["P(N = 1 (positive)) if set"] == round(p1, 3)
    # ... and so does the Checks page (same model, same draws), for every value of C
    chk = _page("checks", sid).run()
    assert not chk.exception and not chk.error, _texts(chk.error)
    truth = _table(chk, "C set to")
    for value in ("0 (absent)", "1 (present)"):
        got = json.loads(truth[truth["C set to"] == value].iloc[0]["model"])[1]
        assert got == table[table["C set to"] == value].iloc[0]["P(N = 1 (positive)) if set"]
    assert json.loads(truth[truth["C set to"] == "1 (present)"].iloc[0]["model"])[1] == round(p1, 3)


def test_bow_caveat_in_sentence_chart_and_table_with_spread_over_models(home):
    sid = _study("bow")
    for seed in (0, 1, 2):
        _fake_trained_run(sid, seed=seed)
    at = _page("intervene", sid).run()
    assert not at.exception and not at.error, _texts(at.error)
    warnings = " ".join(_texts(at.warning))
    assert "Not identifiable" in warnings and "many answers" in warnings
    assert "not identifiable: not identifiable" not in warnings.lower()  # no repetition
    sentence = next(s for s in _texts(at.warning) if s.startswith("If treatment X were set"))
    assert "cannot decide" in sentence and "from sampling noise alone" in sentence
    m = re.search(r"the 3 models trained on this study with different seeds answered between "
                  r"(\d+)% and (\d+)%", sentence)  # fmt: skip
    assert m and int(m.group(1)) <= int(m.group(2))
    fig = _figure(at, "iv_dist_Y")
    assert "Not identifiable" in fig["layout"]["title"]["text"]
    assert any("one of many answers" in t["name"] for t in fig["data"])
    eff = _figure(at, "iv_effect_Y")
    assert "Not identifiable" in eff["layout"]["title"]["text"]
    table = _table(at, "X set to")
    assert any("one of many answers" in c for c in table.columns)
    assert "95% interval (sampling noise only)" in table.columns
    assert any("every number in this table is one of many answers" in str(c.value)
               for c in at.caption)  # fmt: skip


def test_identifiable_verdict_names_its_criterion(home):
    sid = _study("xray")
    at = _page("intervene", sid).run()  # no model yet: the verdict still shows
    assert not at.exception
    ok = " ".join(_texts(at.success))
    assert "Identifiable" in ok and "front-door criterion, through X" in ok
    assert "c-forest" not in ok  # the algorithm's terms stay in the technical expander
    md = " ".join(_texts(at.markdown))
    assert "Σ_{X} P(X | C) Σ_{C'} P(C') P(N | C', X)" in md


# ---------------------------------------------------------------------- typed interventions
def test_typed_do_moves_the_slider_and_widgets_stay_one_state(home):
    sid = _study("xray")
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    assert at.select_slider(key="iv_val_C").value == 0
    assert at.text_input(key="iv_do_text").value == "do(C=0)"
    assert "do(C=" in at.text_input(key="iv_do_text").placeholder
    at.text_input(key="iv_do_text").input("do(C=1)").run()
    assert not at.exception and not at.error, _texts(at.error)
    assert at.select_slider(key="iv_val_C").value == 1
    assert any(s.startswith("If symptom C were set to 1") for s in _texts(at.info))
    # moving the slider rewrites the text
    at.select_slider(key="iv_val_C").set_value(0).run()
    assert at.text_input(key="iv_do_text").value == "do(C=0)"
    # a non-class value for a categorical variable says what would do
    at.text_input(key="iv_do_text").input("C=0.5").run()
    err = " ".join(_texts(at.error))
    assert "categorical" in err and "0 … 1" in err and "not a number" not in err
    assert at.select_slider(key="iv_val_C").value == 0  # unchanged


def test_typed_number_for_a_continuous_treatment(home):
    sid = _study("backdoor")
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    at.multiselect(key="iv_treat").set_value(["Z"]).run()
    at.multiselect(key="iv_outcome").set_value(["Y"]).run()
    assert "do(Z=0.5)" in at.text_input(key="iv_do_text").placeholder
    at.text_input(key="iv_do_text").input("Z=0.5").run()
    assert not at.exception and not at.error, _texts(at.error)
    assert at.slider(key="iv_val_Z").value == pytest.approx(0.5)
    assert any("risk score Z were set to 0.50" in s for s in _texts(at.info))
    # outside the data's range: the slider widens to hold it
    at.text_input(key="iv_do_text").input("do(Z=7)").run()
    assert at.slider(key="iv_val_Z").value == pytest.approx(7.0)
    assert at.slider(key="iv_val_Z").max >= 7.0


# ---------------------------------------------------------------------- images
def _xray_image_treatment() -> AppTest:
    """Intervene on a trained X-ray study with the image X as treatment and N as outcome."""
    sid = _study("xray")
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    at.multiselect(key="iv_treat").set_value(["X"]).run()
    at.multiselect(key="iv_outcome").set_value(["N"]).run()
    return at


def test_red_photo_gets_the_out_of_range_warning_and_a_data_xray_does_not(home):
    at = _xray_image_treatment()
    assert not at.exception and not at.error, _texts(at.error)
    assert not any("unlike every image" in w for w in _texts(at.warning))  # data image 0
    # sections without content are hidden: no effect across values of an image
    assert not any("Effect across" in s for s in _texts(at.subheader))
    at.file_uploader(key="iv_img_X").upload("red.png", _png(), "image/png").run()
    assert not at.exception
    warn = " ".join(_texts(at.warning))
    assert "Your image red.png is unlike every image in the training data" in warn
    assert "extrapolation" in warn
    sentence = next(s for s in _texts(at.info) if s.startswith("If chest X-ray X were replaced"))
    assert sentence.endswith(
        "The image chosen for chest X-ray X is unlike every image in the data, so this answer "
        "is an extrapolation by the networks."
    )
    captions = [i.proto.imgs[0].caption for i in at.get("image") if i.proto.imgs]
    assert "red.png as uploaded" in captions
    assert "as the model sees it: 16×16, grayscale" in captions


def test_text_file_named_png_gets_a_message_with_the_users_file_name(home):
    at = _xray_image_treatment()
    at.file_uploader(key="iv_img_X").upload("my_scan.png", b"not,an\nimage,at all\n").run()
    assert not at.exception
    err = " ".join(_texts(at.error))
    assert "my_scan.png is not a PNG or JPEG image (it holds text)" in err
    assert "BytesIO" not in err and "/tmp" not in err and str(home) not in err


# ---------------------------------------------------------------------- no traps
def test_graph_edit_after_training_shows_needs_retraining(home):
    from mdcm_app import state

    sid = _study("xray")
    _fake_trained_run(sid)
    meta = state.load_meta(sid)
    state.update_graph(meta, state.parse_graph("C -> X -> N"))  # the confounder removed
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params["study"] = sid
    app.run()
    assert not app.exception
    text = " ".join(_texts(app.markdown)) + " ".join(_texts(app.warning))
    assert "needs retraining" in text
    iv = _page("intervene", sid).run()
    assert not iv.exception and not iv.error, _texts(iv.error)
    warn = " ".join(_texts(iv.warning))
    assert "This model needs retraining" in warn and "the study's graph is now `C -> X; X" in warn
    assert str(home) not in warn and "{'" not in warn  # no server path, no dict dump


def test_overlap_warning_and_effect_table_follow_uploads(home):
    """The positivity warning is cached per study data and the effect table's data column is
    read from the current data: after an upload that changes the data, the page shows the new
    data's answers (the old caches were keyed on the study only, #9)."""
    from mdcm_app import state, uploads

    meta = state.new_study(
        example=None,
        title="overlap",
        graph_text="X -> M -> Y; X <-> Y",
        variables={v: state.DEFAULT_VARIABLE for v in "XMY"},
    )
    sid = meta.study_id
    schema = meta.schema()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, 400)

    def upload(name: str, m: np.ndarray) -> None:
        y = rng.integers(0, 2, 400)
        text = "X,M,Y\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(x, m, y, strict=True))
        raw = uploads.store_raw(sid, f"{name}.csv", text.encode())
        uploads.import_csv_images(sid, schema, raw, None, name)

    def naive_column(at) -> list[float]:
        return list(_table(at, "X set to")["data: cases that had that X"])

    upload("observational", rng.integers(0, 2, 400))  # M unrelated to X: overlap is fine
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    assert not at.exception and not at.error, _texts(at.error)
    assert not any("Positivity" in w for w in _texts(at.warning))
    before = naive_column(at)
    uploads.delete_dataset(sid, "observational")
    upload("observational", x.copy())  # now M reveals X exactly (and new Y values)
    at2 = _page("intervene", sid).run()
    assert any("Positivity" in w and "M (mediator" in w for w in _texts(at2.warning))
    after = naive_column(at2)
    data = state.study_dir(sid) / "study" / "observational" / "data.csv"
    table = pd.read_csv(data)
    expect = [round(float(table["Y"][table["X"].eq(v)].mean()), 3) for v in (0, 1)]
    assert after == expect and after != before  # the new data's P(Y=1 | X=x), not the old


def test_page_errors_reach_apptest_under_mdcm_raise(home, monkeypatch):
    """ui.guard re-raises under MDCM_RAISE=1 (set by conftest) and shows a message without."""
    sid = _study("bow")
    at = _page("checks", sid)
    at.session_state["study_id"] = sid
    from mdcm_app import ui

    def boom(*a, **k):
        raise RuntimeError("boom in the page")

    monkeypatch.setattr(ui, "study_data", boom)
    at.run()
    assert at.exception  # the error reaches the test (its text is redacted by Streamlit)
    monkeypatch.setenv("MDCM_RAISE", "0")
    at2 = _page("checks", sid).run()
    assert not at2.exception
    assert any("Something went wrong" in e for e in _texts(at2.error))


def _verdict_panel_script() -> None:
    import streamlit as st

    from mdcm_app import state, ui

    meta = state.load_meta(st.session_state["study_id"])
    ui.verdict_panel(meta, ui.schema_or_stop(meta), key="vp")


def test_verdict_panel_for_the_graph_page(home):
    """The verdict next to the plan: the built-in's own question by default, any other pair on
    request, in plain words first and the algorithm's terms in the expander."""
    sid = _study("napkin")
    at = AppTest.from_function(_verdict_panel_script, default_timeout=TIMEOUT)
    at.session_state["study_id"] = sid
    at.run()
    assert not at.exception
    assert at.selectbox(key="vp_treatment").value == "X"
    ok = " ".join(_texts(at.success))
    assert "Identifiable" in ok and "criterion" not in ok  # napkin: neither back- nor front-door
    at.selectbox(key="vp_treatment").select("W").run()
    at.selectbox(key="vp_outcome").select("X").run()  # W -> Z -> X; W <-> X: front-door via Z
    assert "front-door criterion, through Z" in " ".join(_texts(at.success))
    at = AppTest.from_function(_verdict_panel_script, default_timeout=TIMEOUT)
    at.session_state["study_id"] = _study("bow")
    at.run()
    bad = " ".join(_texts(at.warning))
    assert "Not identifiable" in bad and "cannot decide" in bad
    assert "hedge" not in bad
    captions = " ".join(str(c.value) for c in at.caption)
    assert "hedge" in captions and "c-forests" in captions  # the technical reason, in the expander


def test_answer_resting_on_a_poorly_fitted_experiment_says_so(home):
    """experiment: P(Y | do(X)) is identifiable only from the dataset where W was randomised;
    a model whose training record shows a poor fit to that dataset gets a warning."""
    sid = _study("experiment")
    record = {
        "regimes": [["W"]],
        "tolerance": 0.03,
        "stages": [{"stage": 0, "fits": {"observational": 0.01, "do(W)": 0.2}, "floor": 0.01}],
    }
    _fake_trained_run(sid, extra=record)
    at = _page("intervene", sid).run()
    assert not at.exception and not at.error, _texts(at.error)
    assert at.multiselect(key="iv_treat").value == ["X"]
    warn = " ".join(_texts(at.warning))
    assert "identifiable only thanks to the experiment(s) do(W)" in warn
    assert any("Identifiable" in s for s in _texts(at.success))


def test_upload_errors_name_the_users_files_not_staging_folders(home):
    """A CSV or zip upload that fails names the user's file (and the path inside the zip),
    never the staging folder or a server path (#16)."""
    import zipfile

    from mdcm.data import DataError
    from mdcm_app import state, uploads

    sid = _study("xray")
    schema = state.load_meta(sid).schema()
    raw = uploads.store_raw(sid, "labels.csv", b"C,X,N\n0,scan1.png,1\n")
    with pytest.raises(DataError) as err:
        uploads.import_csv_images(sid, schema, raw, None, "up1")
    msg = str(err.value)
    assert msg.startswith("labels.csv: row 1, column 'X'") and "scan1.png" in msg
    assert "staging" not in msg and str(home) not in msg
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mine/data.csv", "C,X,N\n0,img/a.png,1\n")
        z.writestr("mine/img/a.png", b"just text")
    raw = uploads.store_raw(sid, "my xrays.zip", buf.getvalue())
    with pytest.raises(DataError) as err:
        uploads.import_dataset_zip(sid, schema, raw, "up2")
    msg = str(err.value)
    assert msg.startswith("my_xrays.zip: mine/data.csv: row 1, column 'X'"), msg
    assert "staging" not in msg and str(home) not in msg
