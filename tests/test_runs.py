"""Training runs on disk (mdcm.runs): real background runs, stop flag, corrupt folders, ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdcm import runs
from mdcm.runs import RunError, RunRecorder

TINY = {
    "steps": 6,
    "batch_size": 32,
    "seed": 0,
    "device": "cpu",
    "check_every": 3,
    "checkpoint_every": 3,
    "check_samples": 512,
    "mmd_batch": 64,
}


@pytest.fixture
def root(tmp_path: Path):
    """A runs root; every run process still alive at the end is killed (by its own pid)."""
    r = tmp_path / "runs"
    yield r
    for info in runs.list_runs(r):
        if info.active and info.pid:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_run(
    root: Path,
    *,
    status: str = "running",
    pid: int | None = None,
    events: list[dict] | None = None,
    created: float | None = None,
) -> Path:
    path = runs.create_run(root, {"plan": "modular", "train": {}, "example": {"name": "napkin"}})
    data = json.loads((path / "run.json").read_text())
    data.update(
        status=status, pid=pid if pid is not None else _dead_pid(), launched=time.time() - 60
    )
    if created is not None:
        data["created"] = created
    (path / "run.json").write_text(json.dumps(data))
    for ev in events or []:
        runs.append_event(path, ev)
    return path


# ---------------------------------------------------------------------- ids and paths
@pytest.mark.parametrize(
    "bad", ["", "..", "../x", "a/b", "a\\b", "x" * 65, "é", "a b", ".", "/etc", "run\x00", None, 7]
)
def test_bad_run_ids_are_refused(tmp_path: Path, bad):
    with pytest.raises(RunError):
        runs.run_path(tmp_path, bad)


def test_run_path_never_escapes_root(tmp_path: Path):
    root = tmp_path / "runs"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunError):
        runs.run_path(root, "sneaky")
    assert runs.run_path(root, "ok_id-1") == (root / "ok_id-1").resolve()


def test_new_ids_are_valid_and_distinct():
    ids = {runs.new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(runs.RUN_ID_RE.match(i) for i in ids)


# ---------------------------------------------------------------------- events and status
def test_read_events_tolerates_truncated_and_corrupt_lines(tmp_path: Path):
    run = _fake_run(
        tmp_path,
        events=[
            {"kind": "stage_start", "stage": 0, "step": 0},
            {"kind": "step", "stage": 0, "step": 1},
        ],
    )
    with open(run / "events.jsonl", "a") as f:
        f.write('not json\n{"kind": 3}\n[1, 2]\n{"kind": "step", "stage": 0, "st')  # cut mid-write
    evs = runs.read_events(run)
    assert [e["kind"] for e in evs] == ["stage_start", "step"]
    assert runs.read_events(run, kinds=("step",)) == [evs[1]]
    assert runs.read_events(tmp_path / "nowhere") == []


@pytest.mark.parametrize(
    "events,model,expect",
    [
        ([], False, "interrupted"),
        ([{"kind": "checkpoint", "stage": 0, "step": 5}], False, "interrupted"),
        ([{"kind": "error", "stage": 0, "step": 5, "message": "loss is NaN"}], False, "failed"),
        ([{"kind": "done", "stage": 1, "step": 9}], True, "done"),
    ],
)
def test_dead_process_status_is_reconciled(tmp_path: Path, events, model, expect):
    run = _fake_run(tmp_path, events=events)
    if model:
        (run / "model").mkdir()
        (run / "model" / "model.json").write_text("{}")
    info = runs.run_status(run)
    assert info.status == expect
    assert not info.active
    if expect == "failed":
        assert "NaN" in info.message


def test_queued_run_whose_process_never_started_is_failed(tmp_path: Path):
    run = _fake_run(tmp_path, status="queued")
    (run / "stderr.log").write_text("Traceback ...\nImportError: no module named torch\n")
    info = runs.run_status(run)
    assert info.status == "failed"
    assert "ImportError" in info.message


def test_live_process_counts_as_running(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run = _fake_run(tmp_path, pid=proc.pid)
        assert runs.run_status(run).status == "running"
        proc.kill()
        proc.wait()
        assert runs.run_status(run).status == "interrupted"
    finally:
        proc.kill()


def test_list_runs_newest_first_and_skips_corrupt_folders(tmp_path: Path):
    now = time.time()
    a = _fake_run(tmp_path, created=now - 30, status="done")
    b = _fake_run(tmp_path, created=now - 10, status="failed")
    c = _fake_run(tmp_path, created=now - 20, status="stopped")
    (tmp_path / "empty").mkdir()  # half-created
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "run.json").write_text('{"status": "run')  # truncated
    (tmp_path / "notdict").mkdir()
    (tmp_path / "notdict" / "run.json").write_text("[1, 2, 3]")
    (tmp_path / "weird_status").mkdir()
    (tmp_path / "weird_status" / "run.json").write_text(
        json.dumps({"status": "exploded", "created": now, "config": {}})
    )
    (tmp_path / "stray_file.txt").write_text("hi")
    (tmp_path / "bad id!").mkdir()
    infos, skipped = runs.scan_runs(tmp_path)
    assert [i.path for i in infos] == [b, c, a]
    assert [i.status for i in infos] == ["failed", "stopped", "done"]
    assert sorted(f for f, _ in skipped) == sorted(
        ["empty", "badjson", "notdict", "weird_status", "stray_file.txt", "bad id!"]
    )
    assert all(reason for _, reason in skipped)
    assert runs.list_runs(tmp_path / "does-not-exist") == []


def test_stop_flag_and_recorder(tmp_path: Path):
    run = _fake_run(tmp_path, pid=os.getpid())
    rec = RunRecorder(run)
    assert not rec.should_stop()
    info = runs.stop_run(run)
    assert info.stop_requested and rec.should_stop()
    rec.finish("stopped", "stopped on request")
    assert runs.run_status(run).status == "stopped"
    with pytest.raises(RunError):
        rec.finish("running")


def test_recorder_throttles_step_events_but_keeps_the_rest(tmp_path: Path):
    run = _fake_run(tmp_path, pid=os.getpid())
    rec = RunRecorder(run)
    rec.on_event({"kind": "stage_start", "stage": 0, "step": 0})
    for i in range(1, 501):
        rec.on_event({"kind": "step", "stage": 0, "step": i, "losses": {"g": 0.1}})
    rec.on_event({"kind": "checkpoint", "stage": 0, "step": 500})
    rec.on_event({"kind": "stage_end", "stage": 0, "step": 500})
    evs = runs.read_events(run)
    steps = [e for e in evs if e["kind"] == "step"]
    assert 1 <= len(steps) < 100
    assert [e["kind"] for e in evs if e["kind"] != "step"] == [
        "stage_start",
        "checkpoint",
        "stage_end",
    ]
    assert steps[-1]["step"] == 500  # the stage's last step is always written
    assert all("time" in e for e in evs)


def test_start_run_rejects_bad_config(tmp_path: Path):
    with pytest.raises(RunError):
        runs.start_run(tmp_path, train_config={})  # no source
    with pytest.raises(RunError):
        runs.start_run(tmp_path, example="napkin", study_dir=tmp_path, train_config={})
    with pytest.raises(RunError):
        runs.start_run(tmp_path, example="napkin", plan="sideways", train_config={})
    with pytest.raises(RunError):
        runs.start_run(tmp_path, study_dir=tmp_path / "nope", train_config={})
    assert runs.list_runs(tmp_path) == []


def test_unknown_training_setting_is_refused(root: Path):
    import mdcm.train  # noqa: F401  (start_run checks names early once the trainer is loaded)

    with pytest.raises(RunError, match="stepz"):
        runs.start_run(root, example="napkin", train_config={"stepz": 3})
    with pytest.raises(RunError):
        runs.start_run(root, example="napkin", train_config={"not a name": 3})
    # the run process checks again (start_run may run without the trainer loaded)
    path = runs.create_run(
        root, {"plan": "modular", "example": {"name": "napkin", "n": 500}, "train": {"stepz": 3}}
    )
    rc, _, err = _main("train", "--run-dir", str(path))
    assert rc == 2 and "stepz" in err and err.count("\n") == 1
    info = runs.run_status(path)
    assert info.status == "failed" and "stepz" in info.message


def test_advertised_train_keys_exist_in_train_config():
    import dataclasses

    from mdcm.train import TrainConfig

    assert set(runs.TRAIN_KEYS) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_run_that_fails_early_is_failed_with_its_message(root: Path):
    info = runs.start_run(root, example="no_such_example", train_config={"steps": 3})
    final = runs.wait_run(info.path, 60)
    assert final.status == "failed", final
    assert "no_such_example" in final.message
    assert "no_such_example" in (info.path / "error.txt").read_text()
    assert runs.read_events(info.path)[-1]["kind"] == "error"


# ---------------------------------------------------------------------- the runs command line
def _main(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from mdcm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_runs_command_line(tmp_path: Path):
    old = _fake_run(tmp_path, created=time.time() - 100, status="done")
    live = _fake_run(
        tmp_path,
        pid=os.getpid(),
        events=[
            {"kind": "stage_start", "stage": 0, "step": 0},
            {"kind": "check", "stage": 0, "step": 40, "quality": 0.1},
        ],
    )
    (tmp_path / "junk").mkdir()
    rc, out, err = _main("runs", "list", "--root", str(tmp_path))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith(live.name) and "running" in lines[0] and "step 40" in lines[0]
    assert lines[1].startswith(old.name) and "done" in lines[1]
    assert "junk" in err
    rc, out, _ = _main("runs", "list", "--root", str(tmp_path), "--json")
    data = json.loads(out)
    assert [r["run_id"] for r in data["runs"]] == [live.name, old.name]
    assert [s["folder"] for s in data["skipped"]] == ["junk"]
    rc, out, _ = _main("runs", "show", live.name, "--root", str(tmp_path))
    assert rc == 0 and "running" in out and "fit=0.1" in out
    rc, out, _ = _main("runs", "stop", live.name, "--root", str(tmp_path))
    assert rc == 0 and (live / "stop").exists()
    rc, _, err = _main("runs", "resume", live.name, "--root", str(tmp_path))
    assert rc == 2 and "still running" in err and err.count("\n") == 1
    for bad in ("../x", "a/b", "nope"):
        rc, _, err = _main("runs", "show", bad, "--root", str(tmp_path))
        assert rc == 2 and err.startswith("mdcm: error: ") and err.count("\n") == 1


# ---------------------------------------------------------------------- real background runs
def test_real_background_runs_finish_separately(root: Path):
    t0 = time.monotonic()
    a = runs.start_run(root, example="napkin", train_config={**TINY, "seed": 1}, example_n=2000)
    b = runs.start_run(root, example="backdoor", train_config={**TINY, "seed": 2}, example_n=2000)
    assert time.monotonic() - t0 < 5  # start_run returns at once
    assert a.status in ("queued", "running") and a.path != b.path
    fa, fb = runs.wait_run(a.path, 120), runs.wait_run(b.path, 120)
    assert fa.status == "done", (fa.message, (a.path / "stderr.log").read_text()[-2000:])
    assert fb.status == "done", (fb.message, (b.path / "stderr.log").read_text()[-2000:])
    for info, name in ((fa, "napkin"), (fb, "backdoor")):
        evs = runs.read_events(info.path)
        kinds = [e["kind"] for e in evs]
        assert kinds[0] == "stage_start" and "done" in kinds and "saved" in kinds
        assert all(isinstance(e["stage"], int) for e in evs)
        assert info.config["example"]["name"] == name
        assert (info.model_dir / "model.json").is_file()
        assert info.finished is not None and info.finished >= info.created
    # the two runs did not write into each other's folders
    assert json.loads((fa.path / "run.json").read_text())["config"]["train"]["seed"] == 1
    assert json.loads((fb.path / "run.json").read_text())["config"]["train"]["seed"] == 2
    from mdcm.model import load_model

    assert sorted(load_model(fa.model_dir).schema.names) == ["W", "X", "Y", "Z"]
    assert sorted(load_model(fb.model_dir).schema.names) == ["X", "Y", "Z"]
    listed = runs.list_runs(root)
    assert [i.run_id for i in listed] == [b.run_id, a.run_id]  # newest first
    with pytest.raises(RunError):
        runs.resume_run(fa.path)  # already done


def test_real_run_stops_on_flag_and_resumes(root: Path):
    info = runs.start_run(
        root, example="napkin", example_n=2000, train_config={**TINY, "steps": 100000}
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if runs.read_events(info.path, kinds=("step", "check")):
            break
        assert runs.run_status(info.path).active, (info.path / "stderr.log").read_text()
        time.sleep(0.2)
    with pytest.raises(RunError):
        runs.resume_run(info.path)  # still running
    runs.stop_run(info.path)
    final = runs.wait_run(info.path, 60)
    assert final.status == "stopped", (final.message, (info.path / "stderr.log").read_text())
    assert not (info.path / "model" / "model.json").exists()
    # resume with a small step budget so that it finishes
    data = json.loads((info.path / "run.json").read_text())
    data["config"]["train"]["steps"] = TINY["steps"]
    (info.path / "run.json").write_text(json.dumps(data))
    again = runs.resume_run(info.path)
    assert again.attempts == 2 and not again.stop_requested
    done = runs.wait_run(info.path, 120)
    assert done.status == "done", (done.message, (info.path / "stderr.log").read_text()[-2000:])
    assert "resume" in [e["kind"] for e in runs.read_events(info.path)]
