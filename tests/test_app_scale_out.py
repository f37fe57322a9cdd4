"""The Train page's scale-out controls (issue 13): the Workers field and the cluster address go
into the run's config (mdcm.runs), an unreachable cluster is refused with a message and no run,
and the progress of a parallel run shows which stages ran at the same time and where."""

from __future__ import annotations

import json
import time

import pytest
from test_app import _page, _study, _texts

from mdcm import runs

pytest.importorskip("streamlit")


def test_workers_field_goes_into_the_run_config(home):
    sid = _study("bow")
    at = _page("train", sid).run()
    assert not at.exception and not at.error
    at.number_input(key="train_workers").set_value(2)
    at.number_input(key="train_steps").set_value(5000)
    at.button(key="train_start").click().run()
    assert not at.error, _texts(at.error)
    run_dir = home / "runs" / at.session_state["run_id"]
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    assert cfg["cluster"] == {"workers": 2} and cfg["train"]["steps"] == 5000
    runs.stop_run(run_dir)
    assert runs.wait_run(run_dir, timeout_s=120).status in ("stopped", "done", "failed")


def test_unreachable_cluster_is_refused_with_a_message_and_no_run(home):
    sid = _study("bow")
    at = _page("train", sid).run()
    at.text_input(key="train_ray_address").set_value("127.0.0.1:1")
    at.button(key="train_start").click().run()
    errors = _texts(at.error)
    assert any("Could not start training" in e and "cannot reach" in e for e in errors), errors
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())
    at.text_input(key="train_ray_address").set_value("no port")
    at.button(key="train_start").click().run()
    assert any("bad Ray cluster address" in e for e in _texts(at.error))


def test_progress_of_a_parallel_run_shows_stages_side_by_side(home):
    from mdcm_app import runs_view, state

    sid = _study("backdoor")
    run_dir = runs.create_run(
        state.runs_root(), {"plan": "modular", "train": {"steps": 100}, "cluster": {"workers": 2}}
    )
    t = time.time() - 30
    workers = [
        {"node": "n1", "host": "alpha", "pid": 11},
        {"node": "n2", "host": "beta", "pid": 22},
    ]
    for i, (sid_, w) in enumerate(((0, workers[0]), (1, workers[1]))):
        runs.append_event(
            run_dir,
            {"kind": "stage_start", "stage": sid_, "step": 0, "time": t + i, "worker": w},
        )
    runs.append_event(run_dir, {"kind": "step", "stage": 1, "step": 40, "time": t + 5})
    runs.append_event(
        run_dir, {"kind": "stage_end", "stage": 0, "step": 100, "time": t + 9, "message": "ok"}
    )
    runs.RunRecorder(run_dir).mark_running()  # this process "trains" it
    runs_view.record_run(sid, run_dir.name)
    at = _page("train", sid)
    at.session_state["run_id"] = run_dir.name
    at.run()
    assert not at.exception, at.exception
    bars = [p.text for p in at.get("progress")]
    assert any("stage 1" in b and "running on beta (pid 22)" in b for b in bars), bars
    charts = [c for c in at.get("plotly_chart") if "train_timeline" in str(c.proto.id)]
    assert charts, "no stages-over-time chart"
    spans = runs.stage_timeline(runs.read_events(run_dir))
    assert spans[0]["state"] == "done" and spans[1]["state"] == "running"
    assert spans[0]["start"] < spans[1]["start"] < spans[0]["end"]  # side by side
