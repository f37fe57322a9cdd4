"""Streamlit AppTest tests for every page of the app: the happy path on a built-in study and at
least one bad-input path per page. Widgets are driven by their stable keys.

The Intervene and Checks pages need a trained model; the fixture saves an untrained DCM as a
finished run (the pages' job is to show answers, not to train), and the Train test starts a real
background run of a few steps and stops it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 90


def _app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)


def _page(name: str, study_id: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=TIMEOUT)
    at.session_state["study_id"] = study_id
    return at


def _texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def _study(example: str) -> str:
    from mdcm_app import state

    return state.new_study(example=example).study_id


def _fake_trained_run(study_id: str, seed: int = 0, extra: dict | None = None) -> str:
    """An untrained model saved as a finished run of the study (for the query pages); models
    of different ``seed`` give different answers; ``extra`` is the training record."""
    from mdcm.model import DCM, save_model
    from mdcm.runs import RunRecorder, create_run
    from mdcm_app import runs_view, state

    meta = state.load_meta(study_id)
    run_dir = create_run(state.runs_root(), {"plan": "modular", "train": {"steps": 1}})
    import torch

    torch.manual_seed(seed)
    save_model(DCM(meta.schema()), run_dir / "model", extra=extra)
    RunRecorder(run_dir).finish("done")
    runs_view.record_run(study_id, run_dir.name)
    return run_dir.name


# ---------------------------------------------------------------------- Home
def test_home_opens_builtin_study_and_shows_state(home):
    at = _app().run()
    assert not at.exception
    assert not at.error
    at.selectbox(key="home_example").select("napkin")
    at.button(key="home_open_example").click().run()
    assert not at.exception and not at.error
    sid = at.session_state["study_id"]
    assert sid.startswith("napkin-")
    assert (home / "studies" / sid / "app.json").is_file()
    md = " ".join(_texts(at.markdown))
    assert "Current study: Napkin" in " ".join(_texts(at.subheader))
    assert "4 variables" in md and "2 confounder edges" in md  # the napkin graph at a glance
    assert "observational (4000 rows)" in md
    assert "not trained yet" in md


def test_home_new_study_and_missing_study_id(home):
    at = _app().run()
    at.text_input(key="home_new_title").input("My own")
    at.button(key="home_new").click().run()
    sid = at.session_state["study_id"]
    meta = json.loads((home / "studies" / sid / "app.json").read_text())
    assert meta["title"] == "My own" and meta["graph"] == ""  # drawn on the canvas
    # a stale or forged study id in the URL is ignored, not a crash
    at2 = _app()
    at2.query_params["study"] = "does-not-exist"
    at2.run()
    assert not at2.exception and not at2.error
    assert "No study open" in " ".join(_texts(at2.info))


# ---------------------------------------------------------------------- Graph
def test_graph_click_edits_sync_text_and_plan(home):
    sid = _study("bow")
    at = _page("graph", sid).run()
    assert not at.exception and not at.error
    assert at.text_area(key="graph_text").value == "X -> Y\nX <-> Y"
    # bow: X and Y form one c-component -> one stage trained jointly
    stages = [m for m in _texts(at.markdown) if m.startswith("**Stage ") and "trains" in m]
    assert len(stages) == 1 and stages[0].endswith("trains X and Y**")
    # add a variable and an instrument edge Z -> X by clicking
    at.text_input(key="graph_new_var").input("Z")
    at.button(key="graph_add_var").click().run()
    at.selectbox(key="graph_edge_from").select("Z")
    at.selectbox(key="graph_edge_type").select("->")
    at.selectbox(key="graph_edge_to").select("X")
    at.button(key="graph_add_edge").click().run()
    assert not at.error
    text = at.text_area(key="graph_text").value
    assert "Z -> X" in text.splitlines()
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert "Z -> X" in stored["graph"] and stored["variables"]["Z"]["kind"] == "categorical"
    stages = [m for m in _texts(at.markdown) if m.startswith("**Stage ") and "trains" in m]
    assert len(stages) == 2  # {Z} separately, {X, Y} jointly
    # remove the confounder by clicking its remove button: now every variable trains alone
    at.button(key="graph_rm_edge_b_X_Y").click().run()
    assert "X <-> Y" not in at.text_area(key="graph_text").value
    stages = [m for m in _texts(at.markdown) if m.startswith("**Stage ") and "trains" in m]
    assert len(stages) == 3 and all(" and " not in s.split("trains")[1] for s in stages)
    # the text form drives the graph too
    at.text_area(key="graph_text").input("C -> X -> N; C <-> N").run()
    stages = [m for m in _texts(at.markdown) if m.startswith("**Stage ") and "trains" in m]
    assert [s.split("trains ")[1] for s in stages] == ["X**", "C and N**"]
    # front-door: X first, then {C, N} with X held fixed
    assert any("the model of X from stage 0 held fixed" in m for m in _texts(at.markdown))


def test_graph_bad_inputs_show_inline_errors(home):
    sid = _study("bow")
    at = _page("graph", sid).run()
    at.text_area(key="graph_text").input("X -> Y -> X").run()
    assert any("cycle" in e for e in _texts(at.error))
    at.text_area(key="graph_text").input("X -> 1bad").run()
    assert any("bad variable name" in e for e in _texts(at.error))
    # a click edit that would close a cycle is refused and the stored graph is unchanged
    at.selectbox(key="graph_edge_from").select("Y")
    at.selectbox(key="graph_edge_to").select("X")
    at.button(key="graph_add_edge").click().run()
    assert any("cycle" in e for e in _texts(at.error))
    at.text_input(key="graph_new_var").input("X")
    at.button(key="graph_add_var").click().run()
    assert any("already exists" in e for e in _texts(at.error))
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert stored["graph"] == "X -> Y; X <-> Y"
    assert not at.exception


def test_graph_variable_kind(home):
    sid = _study("bow")
    at = _page("graph", sid).run()
    at.number_input(key="graph_classes_Y").set_value(3).run()
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert stored["variables"]["Y"] == {"kind": "categorical", "classes": 3}
    at.selectbox(key="graph_kind_Y").select("image").run()
    at.text_input(key="graph_shape_Y").input("2x8x8").run()  # 2 channels: invalid
    assert any("C 1 or 3" in e for e in _texts(at.error))
    at.text_input(key="graph_shape_Y").input("1x8x8").run()
    stored = json.loads((home / "studies" / sid / "app.json").read_text())
    assert stored["variables"]["Y"] == {"kind": "image", "shape": [1, 8, 8]}


# ---------------------------------------------------------------------- Data
def test_data_page_builtin_previews(home):
    sid = _study("colored_digits")
    at = _page("data", sid).run()
    assert not at.exception and not at.error
    overview = at.dataframe[0].value
    assert list(overview["dataset"]) == ["observational"] and int(overview["rows"][0]) == 4000
    preview = at.dataframe[1].value
    assert len(preview) == 20 and set(preview["D"]) <= {0, 1, 2}
    assert len(at.get("imgs")) >= 3 or len(at.get("image")) >= 3  # one grid per class of D
    assert len(at.get("plotly_chart")) >= 3  # marginals of D, A and the pairwise plot


def test_data_bad_upload_is_listed_and_kept(home):
    from mdcm.data import DataError
    from mdcm_app import state, uploads

    sid = _study("bow")
    schema = state.load_meta(sid).schema()
    raw = uploads.store_raw(sid, "bad.csv", b"X,Y\n0,1\n1,7\n")
    with pytest.raises(DataError, match="Y"):
        uploads.import_csv_images(sid, schema, raw, None, "trial")
    assert raw.is_file()  # nothing lost
    assert not (home / "studies" / sid / "study" / "trial").exists()
    # an interventional upload that is fine is added with its targets
    ok = uploads.store_raw(sid, "ok.csv", b"X,Y\n1,0\n1,1\n1,1\n")
    ds = uploads.import_csv_images(sid, schema, ok, None, "do_X", uploads.parse_do("X=1", schema))
    assert ds.do == {"X": 1} and ds.n == 3
    with pytest.raises(DataError, match="unknown variable"):
        uploads.parse_do("Q=1", schema)
    # a broken dataset folder in the study is listed as a validation problem on the page
    bad = home / "studies" / sid / "study" / "broken"
    bad.mkdir(parents=True)
    (bad / "data.csv").write_text("X,Y\n0,1\n1\n")
    at = _page("data", sid).run()
    assert not at.exception
    errors = " ".join(_texts(at.error))
    assert "broken" in errors and "row 2" in errors
    overview = at.dataframe[0].value
    assert set(overview["dataset"]) == {"observational", "do_X"}
    assert "do(X=1)" in set(overview["regime"])


def test_data_import_button_without_file(home):
    sid = _study("bow")
    at = _page("data", sid).run()
    at.text_input(key="data_name").input("x")
    at.button(key="data_import").click().run()
    assert any("choose a .zip file first" in e for e in _texts(at.error))
    at.text_input(key="data_do").input("X=5")
    at.button(key="data_import").click().run()
    assert any("out of range" in e for e in _texts(at.error))


# ---------------------------------------------------------------------- Train
def test_train_starts_background_run_and_stops(home):
    sid = _study("bow")
    at = _page("train", sid).run()
    assert not at.exception and not at.error
    at.number_input(key="train_steps").set_value(5000)
    at.button(key="train_start").click().run()
    assert not at.error, _texts(at.error)
    rid = at.session_state["run_id"]
    run_dir = home / "runs" / rid
    assert (run_dir / "run.json").is_file()
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    assert cfg["train"]["steps"] == 5000 and cfg["plan"] == "modular"
    assert any(m.startswith(f"**Run {rid}**") for m in _texts(at.markdown))
    at.button(key="train_stop").click().run()
    assert (run_dir / "stop").exists()
    from mdcm.runs import wait_run

    info = wait_run(run_dir, timeout_s=60)
    assert info.status in ("stopped", "done", "failed", "interrupted")
    # the run list survives a new session (a browser reload)
    at2 = _page("train", sid).run()
    assert rid in set(at2.dataframe[0].value["run"])


def test_train_refuses_bad_data(home):
    from mdcm_app import state

    sid = _study("bow")
    meta = state.load_meta(sid)
    # a variable without data: training must be refused with a message, no run started
    state.update_graph(meta, state.parse_graph("X -> Y; X <-> Y; W -> Y"))
    at = _page("train", sid).run()
    at.button(key="train_start").click().run()
    assert any("Cannot train" in e and "W" in e for e in _texts(at.error))
    assert not list((home / "runs").iterdir())


# ---------------------------------------------------------------------- Intervene
def test_intervene_answers_and_refuses_unknown_values(home):
    sid = _study("colored_digits")
    _fake_trained_run(sid)
    t0 = time.monotonic()
    at = _page("intervene", sid).run()
    assert not at.exception and not at.error, _texts(at.error)
    assert at.multiselect(key="iv_treat").value == ["D"]
    assert any("Identifiable" in s for s in _texts(at.success))  # front-door: identifiable
    assert len(at.get("plotly_chart")) >= 2  # distribution of A, effect across D
    at.select_slider(key="iv_val_D").set_value(2).run()
    assert not at.error
    t1 = time.monotonic()
    at.select_slider(key="iv_val_D").set_value(1).run()
    assert time.monotonic() - t1 < 10, "a new treatment value must answer quickly"
    # an unknown value or variable is refused, never answered
    at.text_input(key="iv_do_text").input("D=7").run()
    assert any("refused" in e and "out of range" in e for e in _texts(at.error))
    at.text_input(key="iv_do_text").input("Q=1").run()
    assert any("refused" in e and "unknown variable" in e for e in _texts(at.error))
    assert time.monotonic() - t0 < 80


def test_intervene_bow_warns_not_identifiable(home):
    sid = _study("bow")
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    assert not at.exception
    warnings = " ".join(_texts(at.warning))
    assert "Not identifiable" in warnings and "many answers" in warnings


def test_intervene_image_treatment_with_data_image(home):
    sid = _study("xray")
    _fake_trained_run(sid)
    at = _page("intervene", sid).run()
    at.multiselect(key="iv_treat").set_value(["X"]).run()
    at.multiselect(key="iv_outcome").set_value(["N"]).run()
    assert not at.exception and not at.error, _texts(at.error)
    assert at.number_input(key="iv_idx_X").value == 0
    assert len(at.get("plotly_chart")) >= 1


def test_intervene_without_model_still_shows_verdict(home):
    sid = _study("bow")
    at = _page("intervene", sid).run()
    assert not at.exception
    assert any("No trained model" in i for i in _texts(at.info))
    assert any("Not identifiable" in w for w in _texts(at.warning))


def test_image_upload_is_resized_to_model_size():
    import io

    from PIL import Image

    from mdcm_app.plots import image_to_array

    buf = io.BytesIO()
    Image.new("RGB", (64, 40), (255, 0, 0)).save(buf, format="PNG")
    a = image_to_array(buf.getvalue(), (3, 14, 14))
    assert a.shape == (3, 14, 14)
    assert np.allclose(a[0], 1.0) and np.allclose(a[1:], -1.0)  # pure red in [-1, 1]
    with pytest.raises(ValueError, match="^photo.png is not a PNG or JPEG image"):
        image_to_array(b"not an image", (1, 8, 8), name="photo.png")


# ---------------------------------------------------------------------- Checks
def test_checks_page(home):
    sid = _study("colored_digits")
    _fake_trained_run(sid)
    at = _page("checks", sid).run()
    assert not at.exception and not at.error, _texts(at.error)
    tvd = at.dataframe[0].value
    assert set(tvd["variable"]) == {"D", "A"}
    assert all(0.0 <= float(x) <= 1.0 for x in tvd["difference (TVD)"])
    truth = at.dataframe[1].value
    assert list(truth["D set to"]) == ["0", "1", "2"]
    # the naive answer differs from the truth on this confounded study
    assert max(truth["difference data vs truth"]) > 0.02
    assert len(at.get("download_button")) >= 3


def test_checks_without_data(home):
    from mdcm_app import state

    meta = state.new_study(
        example=None,
        title="empty",
        graph_text="X -> Y",
        variables={"X": state.DEFAULT_VARIABLE, "Y": state.DEFAULT_VARIABLE},
    )
    at = _page("checks", meta.study_id).run()
    assert not at.exception
    assert any("has none" in i for i in _texts(at.info))


def test_pages_without_study_point_home(home):
    for name in ("graph", "data", "train", "intervene", "checks"):
        at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=TIMEOUT).run()
        assert not at.exception
        assert any("No study is open" in i for i in _texts(at.info)), name


def test_two_sessions_run_their_own_jobs(home):
    from mdcm.runs import stop_run, wait_run

    sid = _study("bow")
    sessions = [_page("train", sid).run(), _page("train", sid).run()]
    for at, seed in zip(sessions, (1, 2), strict=True):
        at.number_input(key="train_steps").set_value(5000)
        at.number_input(key="train_seed").set_value(seed)
        at.button(key="train_start").click().run()
        assert not at.error, _texts(at.error)
    ids = [at.session_state["run_id"] for at in sessions]
    assert ids[0] != ids[1]
    for at, rid, seed in zip(sessions, ids, (1, 2), strict=True):
        # each session follows its own run
        assert any(m.startswith(f"**Run {rid}**") for m in _texts(at.markdown))
        cfg = json.loads((home / "runs" / rid / "run.json").read_text())["config"]
        assert cfg["train"]["seed"] == seed
    for rid in ids:
        stop_run(home / "runs" / rid)
    for rid in ids:
        assert not wait_run(home / "runs" / rid, timeout_s=60).active


def test_upload_zip_and_npz_end_to_end(home, tmp_path):
    """A zip of a dataset folder and a MedMNIST-style .npz go through validation into the
    study; the interventional upload changes the training plan's regimes on the Graph page."""
    import zipfile

    from mdcm.data import DataError, Dataset, save_dataset
    from mdcm_app import state, uploads

    sid = _study("xray")
    schema = state.load_meta(sid).schema()
    rng = np.random.default_rng(0)
    n = 12
    ds = Dataset(
        "exp",
        {
            "C": np.ones(n, np.int64),
            "X": rng.uniform(-1, 1, (n, 1, 16, 16)).astype(np.float32),
            "N": rng.integers(0, 2, n),
        },
        {},
    )
    folder = save_dataset(ds, schema, tmp_path / "exp")
    zpath = tmp_path / "exp.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.rglob("*"):
            if f.is_file():
                z.write(f, f"exp/{f.relative_to(folder)}")
    got = uploads.import_dataset_zip(sid, schema, zpath, "do_C", {"C": 1})
    assert got.n == n and got.do == {"C": 1}
    # the stored dataset is read back with its intervention; rows contradicting it are refused
    with pytest.raises(DataError, match="contradicts"):
        uploads.import_dataset_zip(sid, schema, zpath, "do_C0", {"C": 0})
    assert not (home / "studies" / sid / "study" / "do_C0").exists()
    # same name twice is refused
    with pytest.raises(DataError, match="already exists"):
        uploads.import_dataset_zip(sid, schema, zpath, "do_C", {"C": 1})
    at = _page("graph", sid).run()
    assert not at.exception
    assert any("do(C)" in c for c in _texts(at.code))  # the plan now has two regimes
    # MedMNIST .npz: only fits a study whose graph holds just the image and the label
    npz = tmp_path / "pneumonia.npz"
    np.savez(
        npz,
        train_images=rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 2, (10, 1)),
    )
    with pytest.raises(DataError, match="also has"):
        uploads.import_npz(sid, schema, npz, "med", split="train", image_var="X", label_var="N")
    meta2 = state.new_study(
        example=None,
        title="med",
        graph_text="X -> N",
        variables={
            "X": {"kind": "image", "shape": [1, 16, 16]},
            "N": {"kind": "categorical", "classes": 2},
        },
    )
    med = uploads.import_npz(
        meta2.study_id,
        meta2.schema(),
        npz,
        "observational",
        split="train",
        image_var="X",
        label_var="N",
    )
    assert med.columns["X"].shape == (10, 1, 16, 16)  # resized from 28x28
    at = _page("data", meta2.study_id).run()
    assert not at.exception and not at.error, _texts(at.error)
    assert int(at.dataframe[0].value["rows"][0]) == 10


def test_train_runs_to_the_end_and_model_is_usable(home):
    """A tiny background run on the bow study finishes; the page shows every stage at 100%
    and the Intervene page then answers with the trained model."""
    from mdcm.runs import wait_run

    sid = _study("bow")
    at = _page("train", sid).run()
    at.number_input(key="train_steps").set_value(10)
    at.number_input(key="train_check_samples").set_value(512)
    at.button(key="train_start").click().run()
    rid = at.session_state["run_id"]
    info = wait_run(home / "runs" / rid, timeout_s=120)
    assert info.status == "done", info.message
    at.run()
    assert any("Training finished" in s for s in _texts(at.success))
    bars = at.get("progress")
    assert len(bars) == 1  # bow: one stage, X and Y jointly
    assert "step 10/10" in bars[0].proto.text
    iv = _page("intervene", sid).run()
    assert not iv.exception and not iv.error, _texts(iv.error)
    assert iv.selectbox(key="iv_run").value == rid


# ---------------------------------------------------------------------- pure helpers
def test_graph_picture_is_offline_and_marks_confounders():
    import re

    from mdcm.graph import parse_graph
    from mdcm_app.graphview import component_colors, graph_html

    g = parse_graph("W -> Z -> X -> Y; W <-> X; W <-> Y")
    html = graph_html(g, {"W": "categorical"})
    assert not re.search(r"<(script|link)[^>]*(src|href)=\"https?://", html)  # no CDN
    assert "vis.Network" in html  # vis-network inlined
    assert html.count('"dashes": true') == 2  # both bidirected edges dashed
    colors = component_colors(g)
    assert colors["W"] == colors["X"] == colors["Y"] != colors["Z"]  # c-components


def test_stage_progress_from_events():
    from mdcm_app.runs_view import stage_progress

    events = [
        {"kind": "stage_start", "stage": 0, "step": 0},
        {"kind": "check", "stage": 0, "step": 10, "losses": {"g": 1.0}, "quality": 0.5},
        {"kind": "stage_end", "stage": 0, "step": 20, "message": "stopped by steps"},
        {"kind": "step", "stage": 1, "step": 5, "losses": {"g": 2.0}},
    ]
    prog = stage_progress(events, max_steps=20)
    assert (
        prog[0]["done"]
        and prog[0]["fraction"] == 1.0
        and prog[0]["quality"] == [{"step": 10, "quality": 0.5}]
    )
    assert not prog[1]["done"] and prog[1]["fraction"] == 0.25
