"""The app's training-job queue: fair use of a shared server (issue #15).

A run the app starts is created *held* (``mdcm.runs.start_run(..., hold=True)``: status
``queued``, no process yet) and entered here. :func:`dispatch` launches held runs first come, first
served, while their user has fewer than ``per_user`` and the server fewer than ``total`` runs
active; the others wait, and :func:`queue_note` tells their position. The queue is one JSON file
in the data home (``MDCM_HOME/jobs.json``, read-modify-written under ``jobs.lock``), so it survives
an app restart and several app processes may share it. :func:`dispatch` never waits for a run, so
it never blocks a page: the app calls it after every start, stop and resume, and a background
thread of the app process calls it every few seconds (:func:`mdcm_app.auth.start_dispatcher`).
No Streamlit here.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mdcm.files import JsonFileError, atomic_write_json, locked, read_json_file
from mdcm.runs import RunError, RunInfo, launch_held, run_status

__all__ = ["Limits", "dispatch", "enqueue", "forget", "queue_note", "queue_position"]

JOBS_FILE = "jobs.json"
JOBS_LOCK = "jobs.lock"


@dataclass(frozen=True)
class Limits:
    """At most ``per_user`` active runs per user and ``total`` on the server (None: no limit)."""

    per_user: int | None = None
    total: int | None = None

    def admits(self, user_running: int, all_running: int) -> bool:
        return (self.per_user is None or user_running < self.per_user) and (
            self.total is None or all_running < self.total
        )


def _load(home: Path) -> dict[str, list[dict]]:
    try:
        data = read_json_file(Path(home) / JOBS_FILE)
    except JsonFileError:
        data = {}
    return {
        k: [e for e in data.get(k, []) if isinstance(e, dict) and isinstance(e.get("run"), str)]
        for k in ("waiting", "running")
    }


def _info(entry: dict) -> RunInfo | None:
    try:
        return run_status(Path(entry["run"]))
    except (RunError, OSError, ValueError):
        return None  # deleted, or not a run folder any more


def enqueue(home: Path, run_dir: Path, user_key: str) -> None:
    """Put a held run at the end of the queue (once)."""
    run = str(Path(run_dir).resolve())
    with locked(Path(home) / JOBS_LOCK):
        q = _load(home)
        if all(e["run"] != run for e in q["waiting"] + q["running"]):
            q["waiting"].append({"run": run, "user": user_key, "since": time.time()})
            atomic_write_json(Path(home) / JOBS_FILE, q)


def forget(home: Path, run_dir: Path) -> None:
    """Drop a run from the queue (it was deleted)."""
    run = str(Path(run_dir).resolve())
    with locked(Path(home) / JOBS_LOCK):
        q = _load(home)
        q = {k: [e for e in v if e["run"] != run] for k, v in q.items()}
        atomic_write_json(Path(home) / JOBS_FILE, q)


def dispatch(home: Path, limits: Limits) -> list[Path]:
    """Launch the waiting runs that the limits admit, oldest first; return their folders.

    Runs that ended free their slot; waiting runs that were stopped or deleted leave the queue.
    A user at their own limit does not hold up the users behind them."""
    launched: list[Path] = []
    with locked(Path(home) / JOBS_LOCK):
        q = _load(home)
        running = []
        for e in q["running"]:
            info = _info(e)
            if info is not None and info.active:
                running.append(e)
        per_user = Counter(e["user"] for e in running)
        waiting = []
        for e in q["waiting"]:
            info = _info(e)
            if info is None or info.status != "queued":
                continue  # stopped in the queue, deleted, or ended
            if not info.held:  # launched by something else: it occupies a slot now
                running.append(e)
                per_user[e["user"]] += 1
                continue
            if not limits.admits(per_user[e["user"]], len(running)):
                waiting.append(e)
                continue
            try:
                launch_held(info.path)
            except RunError:
                continue  # it failed to launch: the run says why
            running.append(e)
            per_user[e["user"]] += 1
            launched.append(info.path)
        new = {"waiting": waiting, "running": running}
        if new != q:
            atomic_write_json(Path(home) / JOBS_FILE, new)
    return launched


def queue_position(home: Path, run_dir: Path) -> tuple[int, int] | None:
    """(1-based position, number waiting) of a waiting run, or None when it is not waiting."""
    run = str(Path(run_dir).resolve())
    waiting = _load(home)["waiting"]
    for i, e in enumerate(waiting):
        if e["run"] == run:
            return i + 1, len(waiting)
    return None


def queue_note(home: Path, run_dir: Path, limits: Limits) -> str:
    """One sentence about a waiting run: its place in the queue and what it waits for."""
    q = _load(home)
    run = str(Path(run_dir).resolve())
    pos = next((i for i, e in enumerate(q["waiting"]) if e["run"] == run), None)
    if pos is None:
        return ""
    user = q["waiting"][pos]["user"]
    mine = sum(1 for e in q["running"] if e["user"] == user)
    if limits.per_user is not None and mine >= limits.per_user:
        why = (
            f"it starts when one of your {mine} running training run(s) ends "
            f"(at most {limits.per_user} per person at a time)"
        )
    elif limits.total is not None:
        why = (
            f"it starts when a training slot is free (at most {limits.total} runs at a time "
            "on this server)"
        )
    else:
        why = "it starts at the next dispatch (within a few seconds)"
    return f"Waiting in the training queue: position {pos + 1} of {len(q['waiting'])}; {why}."
