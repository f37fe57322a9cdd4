"""AppTest tests of the issue-#14 controls outside the canvas: image thumbnails in the Data
preview, reusing a trained mechanism on the Train page, model bundles (download on Train and
Checks, upload on Home) and saving interventional samples as a dataset (Intervene). Each control
gets its happy path and a bad input."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from test_app import _page, _study  # noqa: E402 - the shared AppTest helpers

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(REPO)
    return tmp_path / "home"


def _texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


# ---------------------------------------------------------------------- Data preview
def test_data_preview_shows_image_thumbnails(home):
    at = _page("data", _study("colored_digits")).run()
    assert not at.exception and not at.error
    frame = at.dataframe[1].value  # [0] lists the datasets
    assert list(frame.columns) == ["D", "I", "A"]
    assert not any("mean pixel" in c for c in frame.columns)
    url = frame["I"].iloc[0]
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size[0] >= 28 and img.mode == "RGB"  # a 14x14 image, enlarged
    # the thumbnail shows the data's pixels (same picture, enlarged by a whole factor)
    from mdcm_app import ui

    first = np.asarray(ui.study_data(_meta(at))[0].datasets[0].columns["I"][0])
    k = img.size[0] // first.shape[-1]
    px = np.asarray(img)[::k, ::k].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    assert np.abs(px - first).max() < 0.02


def _meta(at: AppTest):
    from mdcm_app import state

    return state.load_meta(at.session_state["study_id"])


# ---------------------------------------------------------------------- helpers: finished runs
def _schema_with(study_id: str, **changes):
    from mdcm.variables import Schema
    from mdcm_app import state

    body = state.load_meta(study_id).schema().to_json(descriptions=False)
    body["variables"].update(changes)
    return Schema.from_json(body)


def _finished_run(study_id: str, schema=None, seed: int = 0) -> str:
    """A saved (untrained) model recorded as a finished run of the study."""
    import torch

    from mdcm.model import DCM, save_model
    from mdcm.runs import RunRecorder, create_run
    from mdcm_app import runs_view, state

    schema = schema or state.load_meta(study_id).schema()
    run_dir = create_run(state.runs_root(), {"plan": "modular", "train": {"steps": 1}})
    torch.manual_seed(seed)
    save_model(DCM(schema), run_dir / "model")
    RunRecorder(run_dir).finish("done")
    runs_view.record_run(study_id, run_dir.name)
    return run_dir.name


def _stop_all(root: Path) -> None:
    from mdcm.runs import run_status, stop_run, wait_run

    for rd in (root / "runs").iterdir():
        if rd.is_dir() and (rd / "run.json").is_file() and run_status(rd).active:
            stop_run(rd)
            wait_run(rd, timeout_s=60)


# ---------------------------------------------------------------------- Train: reuse
def test_train_page_offers_only_fitting_mechanisms_and_records_the_choice(home):
    import json

    sid = _study("colored_digits")
    good = _finished_run(sid)
    bad = _finished_run(sid, _schema_with(sid, D={"kind": "categorical", "classes": 4}))
    at = _page("train", sid).run()
    assert not at.exception and not at.error
    box = at.selectbox(key="train_reuse_I")
    assert box.options == ["train I here", f"use I from run {_label(good)}"]  # not `bad`
    assert f"{bad}: its parent D is categorical, 4 classes" in _texts(at.caption)
    box.select_index(1).run()
    md = _texts(at.markdown)
    assert "trains I** · :green[filled, not trained]" in md
    at.number_input(key="train_steps").set_value(5)
    at.button(key="train_start").click().run()
    try:
        assert not at.error, _texts(at.error)
        rid = at.session_state["run_id"]
        cfg = json.loads((home / "runs" / rid / "run.json").read_text())["config"]
        assert cfg["pretrained"] == {
            "I": {"model": str((home / "runs" / good / "model").resolve()), "run": good}
        }
        assert "I: mechanism reused from run " + good in _texts(at.caption)
    finally:
        _stop_all(home)


def test_train_page_refuses_a_mechanism_from_an_incompatible_run(home):
    import torch

    from mdcm.model import DCM, save_model

    sid = _study("colored_digits")
    donor = _finished_run(sid)
    at = _page("train", sid).run()
    at.selectbox(key="train_reuse_I").select_index(1).run()
    # the donor run's model is replaced meanwhile by one of another study (the page is stale)
    torch.manual_seed(0)
    other = _schema_with(sid, I={"kind": "image", "shape": [1, 14, 14]})
    save_model(DCM(other), home / "runs" / donor / "model")
    runs_before = sorted(p.name for p in (home / "runs").iterdir())
    at.button(key="train_start").click().run()
    err = _texts(at.error)
    assert f"the mechanism of I from run {donor} cannot fill stage 0" in err
    assert "its I is image [1, 14, 14]; this study's is image [3, 14, 14]" in err
    assert sorted(p.name for p in (home / "runs").iterdir()) == runs_before  # nothing started
    assert not at.exception
    # and the list no longer offers it, saying why
    assert _texts(at.warning).count(f"Run {donor} can no longer fill this stage") == 1


def _label(run_id: str) -> str:
    from mdcm.runs import run_status
    from mdcm_app import runs_view, state

    return runs_view.run_label(run_status(state.runs_root() / run_id))


# ---------------------------------------------------------------------- model bundles
def _downloads(at: AppTest) -> dict[str, object]:
    return {
        n.proto.label: n.proto
        for n in at._tree
        if getattr(n, "type", None) == "download_button" or type(n).__name__ == "DownloadButton"
    }


def test_train_and_checks_pages_offer_the_model_bundle(home):
    sid = _study("colored_digits")
    rid = _finished_run(sid)
    at = _page("train", sid)
    at.session_state["run_id"] = rid
    at.run()
    assert not at.exception
    assert "Download the trained model (.zip)" in _downloads(at)
    chk = _page("checks", sid).run()
    assert not chk.exception
    assert "Download the trained model (.zip)" in _downloads(chk)


def test_home_imports_a_model_bundle_and_refuses_bad_ones(home, tmp_path):
    from mdcm.bundle import model_bundle_bytes
    from mdcm_app import state, ui

    sid = _study("colored_digits")
    donor_study = _study("colored_digits")
    rid = _finished_run(donor_study, seed=3)
    blob = model_bundle_bytes(state.runs_root() / rid / "model", source={"run": rid})
    at = _page("home", sid).run()
    assert not at.exception
    at.file_uploader(key="home_bundle").upload("digits-model.zip", blob, "application/zip")
    at.button(key="home_bundle_import").click().run()
    assert not at.error, _texts(at.error)
    assert "Imported digits-model.zip as run" in _texts(at.success)
    models = ui.study_models(state.load_meta(sid))
    assert len(models) == 1 and (models[0][1] / "model.json").is_file()
    # the imported run is finished and the weights are the donor's
    import torch

    from mdcm.model import load_model

    a, b = load_model(state.runs_root() / rid / "model"), load_model(models[0][1])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # a corrupt bundle and a bundle of another study are refused; nothing is added
    bow = _study("bow")
    bow_blob = model_bundle_bytes(state.runs_root() / _finished_run(bow) / "model")
    for name, data, message in (
        ("broken.zip", blob[: len(blob) // 2], "Model refused: broken.zip: not a valid zip"),
        ("bow-model.zip", bow_blob, "was trained for graph 'X -> Y"),
    ):
        at.file_uploader(key="home_bundle").upload(name, data, "application/zip")
        at.button(key="home_bundle_import").click().run()
        err = _texts(at.error)
        assert "Model refused" in err and message in err, err
        assert str(home) not in err  # no server paths
        assert len(ui.study_models(state.load_meta(sid))) == 1
    assert not at.exception


# ---------------------------------------------------------------------- Intervene: export
def test_intervene_saves_samples_as_a_dataset(home, tmp_path):
    import json
    import zipfile

    from mdcm.data import load_study
    from mdcm_app import state

    sid = _study("colored_digits")
    _finished_run(sid)
    at = _page("intervene", sid).run()
    assert not at.exception, at.exception
    at.text_input(key="iv_export_name").input("do_D_first")
    at.number_input(key="iv_export_n").set_value(60)
    at.button(key="iv_export_go").click().run()
    assert not at.error, _texts(at.error)
    assert "Saved 60 samples as dataset 'do_D_first'" in _texts(at.success)
    folder = state.study_dir(sid) / "study" / "do_D_first"
    do = json.loads((folder / "intervention.json").read_text())["do"]
    assert set(do) == {"D"}
    study = load_study(state.study_dir(sid) / "study")  # the study folder, unchanged format
    (ds,) = [d for d in study.datasets if d.name == "do_D_first"]
    assert ds.n == 60 and ds.do == do and (np.asarray(ds.columns["D"]) == do["D"]).all()
    # the same name again is refused, and nothing is overwritten
    stamp = (folder / "data.csv").stat().st_mtime_ns
    at.button(key="iv_export_go").click().run()
    assert "already exists" in _texts(at.error)
    assert (folder / "data.csv").stat().st_mtime_ns == stamp
    # as a zip download: the zip holds one dataset folder that loads as the regime
    at.text_input(key="iv_export_name").input("for_a_classifier")
    at.radio(key="iv_export_where").set_value("zip")
    at.button(key="iv_export_go").click().run()
    assert not at.error, _texts(at.error)
    name, blob = at.session_state["iv_export_zip"]
    assert name == "for_a_classifier"
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        z.extractall(tmp_path)
    (back,) = load_study(tmp_path / "for_a_classifier").datasets
    assert back.n == 60 and back.do == do
    assert not (state.study_dir(sid) / "study" / "for_a_classifier").exists()


def test_train_progress_has_an_overall_bar_and_the_picker_follows_the_run(home):
    from mdcm.runs import append_event
    from mdcm_app import state

    sid = _study("colored_digits")
    old = _finished_run(sid, seed=1)
    rid = _finished_run(sid)
    for stage, secs in ((0, 3.0), (1, 5.0)):
        append_event(state.runs_root() / rid, {"kind": "stage_start", "stage": stage, "step": 0})
        append_event(
            state.runs_root() / rid,
            {"kind": "stage_end", "stage": stage, "step": 20, "elapsed_s": secs, "message": "ok"},
        )
    at = _page("train", sid)
    at.session_state["run_id"] = rid
    at.run()
    assert not at.exception
    bars = [str(p.proto.text) for p in at.get("progress")]
    assert bars[0] == "Overall: 100% of 2 stages"
    assert at.selectbox(key="train_pick_run").value == rid  # the run shown above, not `old`
    at.session_state["run_id"] = old
    at.run()
    assert at.selectbox(key="train_pick_run").value == old
