"""Faults: a training process killed mid-stage and resumed, a checkpoint write that fails
(disk full), and a diverging loss."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from mdcm import runs

FAST = {"batch_size": 32, "check_samples": 512, "mmd_batch": 64, "device": "cpu", "seed": 0}


@pytest.fixture
def root(tmp_path: Path):
    r = tmp_path / "runs"
    yield r
    for info in runs.list_runs(r):  # never leave a run process of ours behind
        if info.active and info.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)


def _wait_for(pred, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _do_tvds(model_dir: Path, n: int, seed: int) -> np.ndarray:
    """TVD between the model's P(Y | do(X=x)) (n samples) and the exact truth, per x."""
    from mdcm.examples import load_example
    from mdcm.model import load_model
    from mdcm.query import interventional_distribution, tvd

    ex = load_example("napkin", n=50)
    model = load_model(model_dir)
    out = []
    for x in (0, 1):
        res = interventional_distribution(model, "Y", {"X": x}, n=n, seed=seed + x)
        out.append(tvd(np.asarray(res.probs), ex.truth("Y", {"X": x})))
    return np.array(out)


def test_sigkill_mid_stage_then_resume_matches_uninterrupted_run(root: Path):
    cfg = {**FAST, "steps": 40, "check_every": 10, "checkpoint_every": 10}
    full = runs.start_run(root, example="napkin", example_n=2000, train_config=cfg)
    victim = runs.start_run(root, example="napkin", example_n=2000, train_config=cfg)

    def mid_stage_checkpoint():
        return next(
            (e for e in runs.read_events(victim.path, kinds=("checkpoint",)) if e["step"] > 0), None
        )

    ck = _wait_for(mid_stage_checkpoint, 120, "a mid-stage checkpoint")
    pid = runs.run_status(victim.path).pid
    assert pid and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # no chance to clean up
    killed = _wait_for(
        lambda: (i := runs.run_status(victim.path)).status != "running" and i,
        30,
        "the killed run to be noticed",
    )
    assert killed.status == "interrupted", killed
    assert not (victim.path / "model" / "model.json").exists()
    n_before = len(runs.read_events(victim.path))

    resumed = runs.resume_run(victim.path)
    assert resumed.attempts == 2
    done_v = runs.wait_run(victim.path, 150)
    done_f = runs.wait_run(full.path, 150)
    assert done_f.status == "done", (done_f.message, (full.path / "stderr.log").read_text())
    assert done_v.status == "done", (done_v.message, (victim.path / "stderr.log").read_text())

    # the resumed attempt started from the checkpoint, not from scratch
    after = runs.read_events(victim.path)[n_before:]
    first_step = next(e for e in after if e["kind"] in ("step", "check") and e["stage"] >= 0)
    assert (first_step["stage"], first_step["step"]) > (ck["stage"], ck["step"]) or first_step[
        "stage"
    ] > ck["stage"], (ck, first_step)
    assert not any(e["kind"] == "stage_start" and e["stage"] < ck["stage"] for e in after)

    # quality of P(Y | do(X)) against the exact truth: equal within sampling noise
    n = 20000
    tv_full = _do_tvds(done_f.model_dir, n, seed=11)
    tv_res = _do_tvds(done_v.model_dir, n, seed=23)
    # binary outcome: each TVD is |p_hat - p| with sd <= 0.5/sqrt(n); the difference of two
    # independent estimates has sd <= 0.5*sqrt(2/n); allow 4 sd
    tol = 4 * 0.5 * math.sqrt(2 / n)
    assert np.all(np.abs(tv_full - tv_res) <= tol), (tv_full, tv_res, tol)


# ---------------------------------------------------------------------- in-process faults
def _napkin_setup():
    from mdcm.examples import load_example
    from mdcm.model import DCM
    from mdcm.plan import make_plan
    from mdcm.train import TrainConfig

    study = load_example("napkin", n=1500, seed=0).study
    plan = make_plan(study.schema.graph, study.interventions)
    cfg = TrainConfig(steps=12, check_every=4, checkpoint_every=4, **FAST)
    return study, plan, cfg, DCM


@pytest.mark.parametrize("fail_on", [0, 1, 2], ids=["weights", "optimizer", "state-json"])
def test_failed_checkpoint_write_leaves_last_good_checkpoint(
    tmp_path: Path, monkeypatch, fail_on: int
):
    """Disk full while writing the 2nd checkpoint (fsync reports ENOSPC on one of its files):
    training stops with the OS error, and resuming from the folder still works."""
    from mdcm.train import train

    study, plan, cfg, DCM = _napkin_setup()
    ckdir = tmp_path / "ck"
    events: list = []
    real_fsync = os.fsync
    calls = {"n": 0, "checkpoints": 0}

    def on_event(e):
        events.append(e)
        if e.kind == "checkpoint":
            calls["checkpoints"] += 1

    def flaky_fsync(fd):
        if calls["checkpoints"] == 1:  # during the second checkpoint
            if calls["n"] == fail_on:
                raise OSError(errno.ENOSPC, "No space left on device")
            calls["n"] += 1
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    torch_seed_model = DCM(study.schema)
    with pytest.raises(OSError) as info:
        train(torch_seed_model, plan, study, cfg, on_event=on_event, checkpoint_dir=ckdir)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not list(ckdir.glob("*.tmp")) and not list(ckdir.glob(".*.tmp"))  # no debris
    good = [e for e in events if e.kind == "checkpoint"][0]
    # resume from what is on disk: the first (good) checkpoint must still load
    resumed: list = []
    result = train(
        DCM(study.schema),
        plan,
        study,
        cfg,
        on_event=resumed.append,
        checkpoint_dir=ckdir,
        resume=True,
    )
    assert len(result.stages) == len(plan.stages)
    first = next(e for e in resumed if e.kind in ("step", "check") and e.stage >= 0)
    assert (first.stage, first.step) > (good.stage, good.step)


def test_nan_loss_gives_clear_training_error(tmp_path: Path, monkeypatch):
    import torch

    import mdcm.train as train_mod
    from mdcm.cli import main

    real = train_mod.mmd2
    calls = {"n": 0}

    def nan_after_three(x, y, *a, **k):
        calls["n"] += 1
        out = real(x, y, *a, **k)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(train_mod, "mmd2", nan_after_three)
    # library level: a TrainingError that says what happened
    study, plan, cfg, DCM = _napkin_setup()
    events: list = []
    with pytest.raises(train_mod.TrainingError) as info:
        train_mod.train(DCM(study.schema), plan, study, cfg, on_event=events.append)
    msg = str(info.value)
    assert "nan" in msg.lower() and "diverged" in msg
    assert events[-1].kind == "error" and events[-1].message == msg
    assert torch.is_tensor(torch.zeros(1))
    # command line with a run folder: exit 2, one line, run recorded as failed
    calls["n"] = 0
    run_dir = tmp_path / "runs" / "nan_run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(
            [
                "train",
                "--example",
                "napkin",
                "--n",
                "1500",
                "--run-dir",
                str(run_dir),
                "--steps",
                "12",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "--set",
                "check_samples=512",
                "--set",
                "mmd_batch=64",
                "--progress",
                "off",
            ]
        )
    assert rc == 2
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("mdcm: error:")]
    assert len(lines) == 1 and "diverged" in lines[0]
    info2 = runs.run_status(run_dir)
    assert info2.status == "failed" and "diverged" in info2.message
    assert (run_dir / "error.txt").read_text().strip() == info2.message
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert runs.read_events(run_dir)[-1]["kind"] == "error"


def test_sigterm_stops_cleanly_with_a_checkpoint(tmp_path: Path):
    """SIGTERM (e.g. a batch scheduler's time limit) ends training at the next step, writing a
    checkpoint and no model; a later --resume continues from it."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    ck = tmp_path / "ck"
    argv = [
        sys.executable,
        "-m",
        "mdcm",
        "train",
        "--example",
        "napkin",
        "--n",
        "1000",
        "--out",
        str(tmp_path / "model"),
        "--checkpoint-dir",
        str(ck),
        "--steps",
        "100000",
        "--check-every",
        "5",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--progress",
        "off",
        "--set",
        "check_samples=256",
        "--set",
        "mmd_batch=32",
    ]
    log = tmp_path / "stderr.log"
    with open(log, "w") as errf:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errf, env=env)
    try:
        # "training N stage(s) ..." is printed once the data, plan and model are built
        _wait_for(
            lambda: proc.poll() is not None or "training" in log.read_text(),
            90,
            "training to start",
            poll=0.1,
        )
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "stopped" in err and "--resume" in err
    assert (ck / "checkpoint.json").is_file()
    assert json.loads((ck / "checkpoint.json").read_text())["stage_index"] == 0
    assert not (tmp_path / "model").exists()
