"""The training-job queue (mdcm_app.jobs over mdcm.runs held runs): per-user and total limits,
first come first served, positions, a stop in the queue, and a queue that carries over an app
restart. Real background training processes are started (and killed at the end, by their pid).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mdcm.runs import run_status, start_run, stop_run
from mdcm_app import jobs

REPO = Path(__file__).resolve().parent.parent
LONG = {"steps": 100_000, "device": "cpu", "threads": 1, "coder_steps": 10}


def _pid(run_dir: Path) -> int | None:
    import json

    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / "run.json").read_text()).get("pid")
    return None


@pytest.fixture()
def runs(tmp_path):
    """Make held runs for named users; every process they start is killed at the end."""
    made: list[Path] = []

    def make(user: str) -> Path:
        info = start_run(
            tmp_path / "users" / user / "runs", example="backdoor", train_config=LONG, hold=True
        )
        made.append(info.path)
        jobs.enqueue(tmp_path, info.path, user)
        return info.path

    yield make
    for run_dir in made:
        pid = _pid(run_dir)
        if pid and run_status(run_dir).active:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_inactive(run_dir: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while run_status(run_dir).active:
        assert time.monotonic() < deadline, f"{run_dir.name} still active"
        time.sleep(0.2)


def test_held_runs_wait_and_start_within_the_limits(tmp_path, runs):
    limits = jobs.Limits(per_user=1, total=2)
    a1, a2, b1 = runs("ann"), runs("ann"), runs("bob")
    time.sleep(2.5)  # past the launch grace period: a held run is still queued, not failed
    for r in (a1, a2, b1):
        info = run_status(r)
        assert (info.status, info.held, info.pid) == ("queued", True, None)
    assert jobs.queue_position(tmp_path, a2) == (2, 3)

    assert jobs.dispatch(tmp_path, limits) == [a1, b1]  # ann's second run waits for her first
    assert run_status(a1).active and not run_status(a1).held and _pid(a1)
    assert run_status(a2).held and jobs.queue_position(tmp_path, a2) == (1, 1)
    note = jobs.queue_note(tmp_path, a2, limits)
    assert "position 1 of 1" in note and "one of your 1 running" in note

    c1 = runs("cat")  # cat has no run yet, but the server is full (2 of 2)
    assert jobs.dispatch(tmp_path, limits) == []
    assert jobs.queue_position(tmp_path, c1) == (2, 2)
    assert "at most 2 runs at a time" in jobs.queue_note(tmp_path, c1, limits)

    stop_run(c1)  # a stop in the queue ends the run there and frees its place
    assert run_status(c1).status == "stopped"
    assert jobs.dispatch(tmp_path, limits) == [] and jobs.queue_position(tmp_path, c1) is None

    os.kill(_pid(a1), signal.SIGKILL)  # ann's first run ends (killed: interrupted)
    _wait_inactive(a1)
    # a fresh process ("the app after a restart") reads the queue from disk and goes on
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from mdcm_app import jobs
        print([p.name for p in jobs.dispatch(Path({str(tmp_path)!r}), jobs.Limits(1, 2))])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == repr([a2.name])
    assert run_status(a2).active and not run_status(a2).held
    assert jobs.queue_position(tmp_path, a2) is None


def test_without_limits_every_run_starts_at_once(tmp_path, runs):
    made = [runs("ann"), runs("ann"), runs("ann")]
    assert jobs.dispatch(tmp_path, jobs.Limits()) == made
    assert all(run_status(r).active and not run_status(r).held for r in made)
