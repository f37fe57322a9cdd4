"""Stop requests in every phase of training (issue 11): the app's Stop button (the run's stop
flag) and SIGTERM are honoured within seconds during the data load and the image coder's fit,
and leave a run that resumes. Oracles: the run's own status and events on disk, wall time."""

from __future__ import annotations

from test_images import _run_cli


def _wait_for(pred, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_stop_during_the_coder_fit_is_prompt_and_the_run_resumes(tmp_path):
    """The app's Stop button (the stop flag) during the image coder's fit: the run ends as
    'stopped' within seconds, with a checkpoint, and resuming it finishes the training."""
    import time

    from mdcm import runs

    info = runs.start_run(
        tmp_path,
        example="xray",
        example_size="64",
        example_n=300,
        train_config={"coder_steps": 1_000_000, "steps": 4, "check_samples": 128, "seed": 1},
    )
    run = runs.run_path(tmp_path, info.run_id)

    def coder_progress():
        return [e for e in runs.read_events(run, kinds=("coder",)) if e.get("step")]

    _wait_for(coder_progress, 240, "coder-fit progress events")
    t0 = time.monotonic()
    runs.stop_run(run)
    done = runs.wait_run(run, timeout_s=60)
    took = time.monotonic() - t0
    assert done.status == "stopped", (done.status, done.message)
    assert took < 20, f"the stop took {took:.1f} s"
    assert any("stopped while fitting" in e.get("message", "") for e in runs.read_events(run))
    assert (run / runs.CHECKPOINT_DIR / "checkpoint.json").is_file()
    # resumable: the same run, continued (with a short coder fit this time), ends done; the
    # flag is cleared as runs.resume_run does before it relaunches the same command
    (run / runs.STOP_FLAG).unlink()
    rc, _, err = _run_cli(
        "train", "--run-dir", str(run), "--resume", "--set", "coder_steps=5", "--progress", "off"
    )
    assert rc == 0, err
    assert runs.run_status(run).status == "done"
    assert (run / runs.MODEL_DIR / "model.json").is_file()


def test_stop_while_a_large_study_loads_is_prompt(tmp_path):
    """Drawing 3,000 images at 256 px takes tens of seconds on a CPU: a stop request in that
    phase must not wait for it."""
    import time

    from mdcm import runs

    info = runs.start_run(
        tmp_path, example="xray", example_size="256", example_n=3000, train_config={"steps": 2}
    )
    run = runs.run_path(tmp_path, info.run_id)
    _wait_for(lambda: runs.run_status(run).status == "running", 120, "the run to start")
    time.sleep(1.0)  # inside the load (imports done, drawing the images)
    t0 = time.monotonic()
    runs.stop_run(run)
    done = runs.wait_run(run, timeout_s=60)
    took = time.monotonic() - t0
    assert done.status == "stopped" and "while loading" in done.message, done.message
    assert took < 15, f"the stop took {took:.1f} s"


def test_train_page_shows_the_coder_fit_and_its_stop_button_works(tmp_path, monkeypatch):
    """The Train page (AppTest) follows a run through its image-code fit (a progress bar per
    image) and the Stop button ends it there within seconds."""
    import time

    import test_app

    from mdcm.runs import read_events, run_status, wait_run

    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(test_app.REPO)
    sid = test_app._study("xray")
    at = test_app._page("train", sid).run()
    at.number_input(key="train_coder_steps").set_value(20_000)
    at.number_input(key="train_check_samples").set_value(512)
    at.button(key="train_start").click().run()
    run = tmp_path / "home" / "runs" / at.session_state["run_id"]
    _wait_for(
        lambda: [e for e in read_events(run, kinds=("coder",)) if e.get("step")],
        240,
        "coder-fit progress",
    )
    at.run()
    bars = [b.proto.text for b in at.get("progress")]
    assert any(t.startswith("Image code of X: step ") and "/20000" in t for t in bars), bars
    t0 = time.monotonic()
    at.button(key="train_stop").click().run()
    info = wait_run(run, timeout_s=60)
    took = time.monotonic() - t0
    assert info.status == "stopped" and took < 20, (info.status, took)
    assert run_status(run).status == "stopped"
