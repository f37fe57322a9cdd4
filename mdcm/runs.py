"""Training runs on disk, shared by the command line and the Streamlit app.

A *run* is one folder under a root (default ``$MDCM_HOME/runs`` or ``./.mdcm/runs``)::

    <root>/<run_id>/
        run.json        config, created, pid, status (atomic rewrites, guarded by run.lock)
        events.jsonl    one JSON training event per line, appended and flushed by the trainer
        checkpoint/     the trainer's checkpoints (for resume)
        model/          the trained model folder, written at the end
        stop            flag file: its presence asks the trainer to stop after the current step
        error.txt       the error that ended the run, if any
        stdout.log, stderr.log   output of the background process

:func:`start_run` launches ``python -m mdcm train --run-dir RUN`` as a detached background process
and returns at once; the process reads its config from ``run.json``. :func:`run_status` reconciles
the recorded status with the process (a dead process that never finished is ``interrupted`` or
``failed``), so a crash, ``kill -9`` or a reboot never leaves a run that claims to be running.
This module imports neither torch nor streamlit, so listing runs stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import JsonFileError, atomic_write, atomic_write_json, locked, read_json_file

__all__ = [
    "RUN_ID_RE",
    "STATUSES",
    "TRAIN_KEYS",
    "RunError",
    "RunInfo",
    "RunRecorder",
    "append_event",
    "attach_run",
    "create_run",
    "default_root",
    "launch_held",
    "list_runs",
    "new_run_id",
    "read_events",
    "resume_run",
    "run_path",
    "run_status",
    "scan_runs",
    "set_run_cluster",
    "stage_timeline",
    "start_run",
    "stop_run",
    "validate_run_id",
    "wait_run",
]

RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
#: ``queued``: created, process not started yet (or *held*: waiting in an app's job queue for a
#: training slot, see :func:`launch_held`); ``running``; ``stopped``: ended on a stop request;
#: ``interrupted``: the process died without finishing (resumable); ``failed``: ended by an error;
#: ``done``: finished and the model folder is written.
STATUSES = ("queued", "running", "stopped", "interrupted", "failed", "done")
ACTIVE = frozenset({"queued", "running"})
PROGRESS_KINDS = frozenset({"coder", "stage_start", "step", "check", "checkpoint", "stage_end"})
TERMINAL = frozenset({"stopped", "failed", "done"})
RUN_JSON = "run.json"
EVENTS = "events.jsonl"
STOP_FLAG = "stop"
ERROR_TXT = "error.txt"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoint"
FORMAT = "mdcm-run/1"
#: the message of a run held in a job queue
HELD_MESSAGE = "waiting for a training slot"
#: seconds a run may stay ``queued`` with a dead launcher before it counts as failed
_QUEUE_GRACE_S = 2.0
#: minimum seconds between two ``step`` events written to events.jsonl (others always written)
STEP_EVENT_INTERVAL_S = 0.25

# Popen objects of runs started by this process, so that dead children are reaped (not zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


class RunError(ValueError):
    """A bad run id, a missing or unreadable run folder, or an action the run's state forbids."""


@dataclass(frozen=True)
class RunInfo:
    """What one run folder says, reconciled with its process."""

    run_id: str
    path: Path
    status: str
    created: float
    config: dict = field(default_factory=dict)
    pid: int | None = None
    finished: float | None = None
    message: str = ""  # error message, or why the run ended as it did
    stop_requested: bool = False
    attempts: int = 1  # 1 + number of resumes
    last_event: dict | None = None
    last_progress: dict | None = None  # last stage_start/step/check/checkpoint/stage_end event
    held: bool = False  # queued and waiting in a job queue (start_run/resume_run with hold)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ---------------------------------------------------------------------- paths and ids
def default_root() -> Path:
    """``$MDCM_HOME/runs`` when MDCM_HOME is set, else ``.mdcm/runs`` under the current folder."""
    home = os.environ.get("MDCM_HOME")
    return (Path(home) / "runs") if home else (Path.cwd() / ".mdcm" / "runs")


def new_run_id() -> str:
    """A sortable, unguessable id: UTC timestamp + 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is 1–64 characters of ``[A-Za-z0-9_-]``; else raise RunError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise RunError(f"bad run id {str(run_id)[:80]!r}: use 1-64 letters, digits, '_' or '-'")
    return run_id


def run_path(root: Path | str, run_id: str) -> Path:
    """The folder of run ``run_id`` under ``root``; never a path outside ``root``."""
    validate_run_id(run_id)
    root = Path(root).resolve()
    path = (root / run_id).resolve()
    if path.parent != root:  # a symlinked run folder pointing elsewhere
        raise RunError(f"run {run_id!r} is not inside the runs folder {root}")
    return path


# ---------------------------------------------------------------------- run.json
def _read_run_json(run_dir: Path) -> dict:
    try:
        data = read_json_file(run_dir / RUN_JSON)
    except JsonFileError as exc:
        if not (run_dir / RUN_JSON).exists():
            raise RunError(
                f"{run_dir.name}: no {RUN_JSON} (not a run folder, or half-created)"
            ) from None
        raise RunError(f"{run_dir.name}: {RUN_JSON} {exc}") from None
    if not isinstance(data.get("config", {}), dict):
        raise RunError(f"{run_dir.name}: {RUN_JSON} is not a run record")
    return data


def _update_run_json(run_dir: Path, **fields: Any) -> dict:
    with locked(run_dir / "run.lock"):
        data = _read_run_json(run_dir)
        data.update(fields)
        atomic_write_json(run_dir / RUN_JSON, data)
    return data


def _proc_start_ticks(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc, or None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()  # fields after "(comm)"; rest[0] is field 3
    try:
        return rest[0], int(rest[19])  # field 22 = starttime
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` (started at ``start_ticks``) still runs; zombies count as dead."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    st = _proc_start_ticks(pid)
    if st is not None:
        state, ticks = st
        if state in ("Z", "X"):
            return False
        if start_ticks is not None and ticks != start_ticks:  # pid reused by another process
            return False
    return True


def _tail_line(path: Path, max_bytes: int = 4000) -> str:
    """The last non-empty line of a log file (for a failure message), '' if none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


# ---------------------------------------------------------------------- events
def append_event(run_dir: Path | str, event: Mapping[str, Any]) -> None:
    """Append one event as a JSON line and flush it (the trainer's ``on_event`` sink)."""
    line = json.dumps(dict(event), default=_json_default, allow_nan=True)
    with open(Path(run_dir) / EVENTS, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    for attr in ("item", "tolist"):  # numpy / torch scalars and arrays
        if hasattr(o, attr):
            with contextlib.suppress(Exception):
                return getattr(o, attr)()
    return str(o)


def read_events(run_dir: Path | str, *, kinds: tuple[str, ...] | None = None) -> list[dict]:
    """All events of a run, oldest first. A truncated or corrupt line (a crash mid-write) is
    skipped, never raised; a run with no events file yields []."""
    path = Path(run_dir) / EVENTS
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return []
    out: list[dict] = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            ev = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if (
            isinstance(ev, dict)
            and isinstance(ev.get("kind"), str)
            and (kinds is None or ev["kind"] in kinds)
        ):
            out.append(ev)
    return out


def stage_timeline(events: list[dict]) -> dict[int, dict[str, Any]]:
    """When and where each stage trained, from a run's events (parallel runs train several at
    once; mdcm.scheduler). Per stage id: ``state`` ("queued": submitted, waiting for a worker;
    "running"; "done"; "retried": its worker was lost and it waits to start again), ``start``
    and ``end`` (event times, seconds since the epoch; ``end`` None while it runs), ``worker``
    ({node, host, pid} of its latest attempt, {} in a one-process run) and ``attempts``; a
    stage that had not ended when the run stopped or failed is "stopped"."""
    out: dict[int, dict[str, Any]] = {}
    for e in events:
        stage, kind = e.get("stage"), e.get("kind")
        if kind in ("done", "error"):  # the run (attempt) ended: what did not end, stopped
            for rec in out.values():
                if rec["state"] != "done":
                    rec["state"] = "stopped"
            continue
        if not isinstance(stage, int) or stage < 0:
            continue
        rec = out.setdefault(
            stage,
            {"state": "queued", "start": None, "end": None, "worker": {}, "attempts": 0},
        )
        t = e.get("time")
        if kind == "stage_start":
            rec.update(state="running", end=None, worker=dict(e.get("worker") or {}))
            rec["attempts"] += 1
            if rec["start"] is None:
                rec["start"] = t
        elif kind == "stage_end":
            rec.update(state="done", end=t)
        elif kind == "retry":
            rec["state"] = "retried"
    return out


# ---------------------------------------------------------------------- status
def run_status(run_dir: Path | str) -> RunInfo:
    """Read a run folder and reconcile its recorded status with its process.

    A run recorded as queued/running whose process is gone becomes ``done`` (a ``done`` event
    and a model folder exist), ``failed`` (an error was recorded, or it never started),
    ``stopped`` (the stop flag was set) or ``interrupted`` (killed; resumable)."""
    run_dir = Path(run_dir)
    run_id = validate_run_id(run_dir.name)
    data = _read_run_json(run_dir)
    status = data.get("status", "queued")
    if status not in STATUSES:
        raise RunError(f"{run_id}: unknown status {status!r} in {RUN_JSON}")
    created = data.get("created")
    if not isinstance(created, int | float):
        raise RunError(f"{run_id}: {RUN_JSON} has no creation time")
    events = read_events(run_dir)
    message = str(data.get("message", ""))
    error_path = run_dir / ERROR_TXT
    if error_path.is_file():
        with contextlib.suppress(OSError):
            message = error_path.read_text(encoding="utf-8", errors="replace").strip()[:2000]
    pid = data.get("pid")
    held = status == "queued" and bool(data.get("held"))  # in a job queue: no process, by design
    if status in ACTIVE and not held and not _pid_alive(pid, data.get("pid_start")):
        kinds = {e["kind"] for e in events}
        if "done" in kinds and (run_dir / MODEL_DIR / "model.json").is_file():
            status = "done"
        elif error_path.is_file() or "error" in kinds:
            status = "failed"
            if not message:
                message = next(
                    (str(e.get("message", "")) for e in reversed(events) if e["kind"] == "error"),
                    "",
                )
        elif (
            status == "queued"
            and time.time() - float(data.get("launched", created)) < _QUEUE_GRACE_S
        ):
            pass  # just launched; the child may not be up yet
        elif status == "queued" and not events:
            status = "failed"
            message = (
                message
                or _tail_line(run_dir / "stderr.log")
                or "the training process exited before it started"
            )
        elif (run_dir / STOP_FLAG).exists():
            status = "stopped"
        else:
            status = "interrupted"
            message = (
                message
                or "the training process ended without finishing "
                "(killed or crashed); resume it to continue"
            )
    return RunInfo(
        run_id=run_id,
        path=run_dir,
        status=status,
        created=float(created),
        config=data.get("config", {}),
        pid=pid if isinstance(pid, int) else None,
        finished=data.get("finished"),
        message=message,
        stop_requested=(run_dir / STOP_FLAG).exists(),
        attempts=int(data.get("attempts", 1) or 1),
        last_event=events[-1] if events else None,
        last_progress=next((e for e in reversed(events) if e["kind"] in PROGRESS_KINDS), None),
        held=held,
    )


def scan_runs(root: Path | str | None = None) -> tuple[list[RunInfo], list[tuple[str, str]]]:
    """(runs newest first, [(folder name, reason skipped)]) for every folder under ``root``."""
    root = Path(root) if root is not None else default_root()
    runs: list[RunInfo] = []
    skipped: list[tuple[str, str]] = []
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise RunError(f"cannot read the runs folder {root}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_dir() or entry.is_symlink():
                raise RunError(f"{entry.name}: not a run folder")
            runs.append(run_status(entry))
        except (RunError, OSError, ValueError, TypeError) as exc:
            skipped.append((entry.name, str(exc)))
    runs.sort(key=lambda r: (r.created, r.run_id), reverse=True)
    return runs, skipped


def list_runs(root: Path | str | None = None) -> list[RunInfo]:
    """Runs under ``root``, newest first; unreadable folders are skipped (see :func:`scan_runs`)."""
    return scan_runs(root)[0]


def wait_run(run_dir: Path | str, timeout_s: float = 60.0, poll_s: float = 0.2) -> RunInfo:
    """Poll until the run is no longer queued/running or ``timeout_s`` passes; return its info."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = run_status(run_dir)
        if not info.active or time.monotonic() >= deadline:
            return info
        time.sleep(poll_s)


# ---------------------------------------------------------------------- create / start / stop
#: mdcm.train.TrainConfig fields known when this was written (for UIs; the trainer is the
#: authority: start_run checks against TrainConfig itself when it is loaded, the run process always)
TRAIN_KEYS = (
    "steps",
    "batch_size",
    "objective",
    "seed",
    "device",
    "time_limit_s",
    "check_every",
    "tolerance",
    "checkpoint_every",
    "stable_checks",
    "min_steps",
    "min_steps_continuous",
    "min_steps_confounded",
    "lr",
    "betas",
    "critic_steps",
    "gp_weight",
    "mmd_weight",
    "mmd_batch",
    "mmd_lr",
    "ema",
    "tau",
    "check_samples",
    "coder_steps",
    "log_every",
    "keep_best",
    "threads",
)


def create_run(
    root: Path | str | None, config: Mapping[str, Any], *, run_id: str | None = None
) -> Path:
    """Make a new run folder with ``run.json`` (status ``queued``) and return its path."""
    root = Path(root) if root is not None else default_root()
    try:
        json.dumps(dict(config), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RunError(f"run config is not plain JSON: {exc}") from None
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        rid = validate_run_id(run_id) if run_id is not None else new_run_id()
        path = run_path(root, rid)
        try:
            path.mkdir()
        except FileExistsError:
            if run_id is not None:
                raise RunError(f"run {rid!r} already exists in {root}") from None
            continue
        break
    else:  # pragma: no cover - 20 collisions of 24 random bits within one second
        raise RunError("could not create a unique run folder")
    record = {
        "format": FORMAT,
        "run_id": rid,
        "created": time.time(),
        "status": "queued",
        "config": dict(config),
        "attempts": 1,
    }
    atomic_write_json(path / RUN_JSON, record)
    return path


def _train_config_dict(train_config: Mapping[str, Any] | None) -> dict:
    """Check the TrainConfig fields of a run. Against TrainConfig itself when mdcm.train is
    already imported (this module never imports torch); the run process checks again anyway."""
    cfg = dict(train_config or {})
    bad = [k for k in cfg if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise RunError(f"bad training setting name(s) {', '.join(map(repr, bad))}")
    train_mod = sys.modules.get("mdcm.train")
    tc = getattr(train_mod, "TrainConfig", None)
    if tc is not None:
        import dataclasses

        known = {f.name for f in dataclasses.fields(tc)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise RunError(
                f"unknown training setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
    return cfg


def _launch(run_dir: Path, resume: bool) -> subprocess.Popen:
    """Start ``python -m mdcm train --run-dir RUN`` detached, output into the run's logs."""
    import mdcm

    pkg_parent = str(Path(mdcm.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    argv = [sys.executable, "-m", "mdcm", "train", "--run-dir", str(run_dir), "--progress", "off"]
    if resume:
        argv.append("--resume")
    with open(run_dir / "stdout.log", "ab") as out, open(run_dir / "stderr.log", "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=str(run_dir),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    st = _proc_start_ticks(proc.pid)
    _update_run_json(run_dir, pid=proc.pid, pid_start=st[1] if st else None, launched=time.time())
    return proc


def start_run(
    root: Path | str | None = None,
    *,
    example: str | None = None,
    study_dir: Path | str | None = None,
    plan: str = "modular",
    train_config: Mapping[str, Any] | None = None,
    example_size: str = "cpu",
    example_n: int | None = None,
    example_seed: int = 0,
    label: str = "",
    hold: bool = False,
    pretrained: Mapping[str, Mapping[str, Any]] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> RunInfo:
    """Create a run and launch its training in the background; returns at once (status queued).
    With ``hold`` the run is created but not launched: it stays ``queued`` until a job queue
    calls :func:`launch_held` (the app's per-user and total limits on concurrent training).

    Exactly one of ``example`` (a built-in example name) and ``study_dir`` (a study folder).
    ``train_config`` holds mdcm.train.TrainConfig fields (steps, batch_size, objective, seed,
    device, time_limit_s, check_every, tolerance, checkpoint_every, ...). ``pretrained`` maps a
    variable to ``{"model": MODEL_DIR, "run": run id or None}``: its stage is filled with that
    model's mechanism (``mdcm train --pretrained``, checked by the run process). ``workers``
    (local Ray workers) or ``ray_address`` (a Ray cluster) train independent stages at the same
    time (:mod:`mdcm.scheduler`); neither: one process, stage after stage."""
    if (example is None) == (study_dir is None):
        raise RunError("give exactly one of an example name and a study folder")
    if plan not in ("modular", "joint"):
        raise RunError(f"unknown plan {plan!r}; use 'modular' or 'joint'")
    config: dict[str, Any] = {
        "plan": plan,
        "train": _train_config_dict(train_config),
        "label": str(label),
    }
    if example is not None:
        config["example"] = {
            "name": str(example),
            "size": example_size,
            "n": example_n,
            "seed": int(example_seed),
        }
    else:
        sd = Path(study_dir).resolve()  # type: ignore[arg-type]
        if not (sd / "study.json").is_file():
            raise RunError(f"{sd}: no study.json (not a study folder)")
        config["study_dir"] = str(sd)
    if pretrained:
        config["pretrained"] = {
            str(v): {"model": str(Path(src["model"]).resolve()), "run": src.get("run")}
            for v, src in pretrained.items()
        }
    config.update(_cluster_entry(workers, ray_address))
    run_dir = create_run(root, config)
    if hold:
        _update_run_json(run_dir, held=True, message=HELD_MESSAGE)
    else:
        _launch(run_dir, resume=False)
    return run_status(run_dir)


def _cluster_entry(workers: int | None, ray_address: str | None) -> dict[str, Any]:
    """``{"cluster": ...}`` for a run config (:func:`mdcm.scheduler.cluster_settings`), or {}."""
    from .scheduler import ClusterError, cluster_settings

    try:
        cluster = cluster_settings(workers, ray_address)
    except ClusterError as exc:
        raise RunError(str(exc)) from None
    return {"cluster": cluster} if cluster else {}


def set_run_cluster(
    run_dir: Path | str, workers: int | None = None, ray_address: str | None = None
) -> dict:
    """Record where the run trains from now on (``mdcm train --run-dir RUN --resume --workers N``
    moves a run to local workers, e.g. after its cluster went away); neither argument: one
    process. Returns the run's new config."""
    run_dir = Path(run_dir)
    entry = _cluster_entry(workers, ray_address)
    with locked(run_dir / "run.lock"):
        data = _read_run_json(run_dir)
        config = {k: v for k, v in data.get("config", {}).items() if k != "cluster"} | entry
        data["config"] = config
        atomic_write_json(run_dir / RUN_JSON, data)
    return dict(config)


def stop_run(run_dir: Path | str) -> RunInfo:
    """Ask a run to stop: write the ``stop`` flag that the trainer's ``should_stop`` checks."""
    run_dir = Path(run_dir)
    info = run_status(run_dir)
    atomic_write(run_dir / STOP_FLAG, f"{time.time()}\n")
    if info.active and _read_run_json(run_dir).get("held"):  # never launched: it ends here
        _update_run_json(
            run_dir,
            status="stopped",
            held=False,
            finished=time.time(),
            message="stopped in the queue",
        )
    return run_status(run_dir) if info.active else info


def resume_run(run_dir: Path | str, *, hold: bool = False) -> RunInfo:
    """Relaunch a stopped / interrupted / failed run from its last checkpoint (``--resume``).
    With ``hold`` it is queued for a job queue's :func:`launch_held` instead of launched."""
    run_dir = Path(run_dir)
    info = run_status(run_dir)
    if info.active:
        raise RunError(f"run {info.run_id} is still {info.status}; stop it before resuming")
    if info.status == "done":
        raise RunError(f"run {info.run_id} is already done")
    with contextlib.suppress(FileNotFoundError):
        (run_dir / STOP_FLAG).unlink()
    if (run_dir / ERROR_TXT).exists():
        with contextlib.suppress(OSError):
            os.replace(run_dir / ERROR_TXT, run_dir / f"error.{info.attempts}.txt")
    _update_run_json(
        run_dir,
        status="queued",
        attempts=info.attempts + 1,
        message=HELD_MESSAGE if hold else "",
        finished=None,
        pid=None,
        pid_start=None,
        launched=time.time(),
        held=bool(hold),
    )
    append_event(
        run_dir,
        {
            "kind": "resume",
            "stage": -1,
            "step": 0,
            "elapsed_s": 0.0,
            "time": time.time(),
            "message": f"attempt {info.attempts + 1}",
        },
    )
    if not hold:
        _launch(run_dir, resume=True)
    return run_status(run_dir)


def launch_held(run_dir: Path | str) -> RunInfo:
    """Launch a run that waits in a job queue (``start_run``/``resume_run`` with ``hold``); a
    resumed run continues from its checkpoint. A run that is no longer held raises RunError; a
    launch that fails ends the run as ``failed`` with the reason."""
    run_dir = Path(run_dir)
    with locked(run_dir / "run.lock"):
        data = _read_run_json(run_dir)
        if not data.get("held") or data.get("status") != "queued":
            raise RunError(f"run {run_dir.name} is not waiting in a queue")
        data.update(held=False, message="", launched=time.time())
        atomic_write_json(run_dir / RUN_JSON, data)
    try:
        _launch(run_dir, resume=int(data.get("attempts", 1) or 1) > 1)
    except OSError as exc:
        _update_run_json(run_dir, status="failed", finished=time.time(), message=str(exc))
        raise RunError(f"run {run_dir.name} could not be launched: {exc}") from None
    return run_status(run_dir)


def attach_run(
    run_dir: Path | str,
    config: Mapping[str, Any] | None,
    *,
    resume: bool = False,
    train_overrides: Mapping[str, Any] | None = None,
    image_net: str | None = None,
) -> dict:
    """The config of the run a ``mdcm train --run-dir RUN`` process is about to train.

    Without ``config``: the run already in ``run_dir`` (its run.json), with ``train_overrides``
    on top of its training settings; ``image_net``, when given, must be the one the run's model
    was built with. With ``config``: a new run created in ``run_dir`` (which must be missing or
    empty), or — with ``resume`` — the run already there. Refusals are :class:`RunError` s.
    """
    run_dir = Path(run_dir)
    exists = (run_dir / RUN_JSON).is_file()
    if config is None:
        if not exists:
            raise RunError(
                f"--run-dir {run_dir}: no {RUN_JSON}; give --study or --example to start a new "
                "run there"
            )
        cfg = dict(_read_run_json(run_dir).get("config", {}))
        cfg["train"] = {**cfg.get("train", {}), **dict(train_overrides or {})}
        had = (cfg.get("model") or {}).get("image_net", "auto")
        if image_net and image_net != had:
            raise RunError(
                f"--image-net {image_net}: this run's model was built with image_net={had}; "
                "start a new run to change it"
            )
        return cfg
    if exists:
        if not resume:
            raise RunError(
                f"--run-dir {run_dir} already holds a run; add --resume or pick a new folder"
            )
        return dict(config)
    rid = validate_run_id(run_dir.name)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()  # an empty folder made by the user
    elif run_dir.exists():
        raise RunError(f"--run-dir {run_dir} exists and is not a run folder")
    create_run(run_dir.parent, config, run_id=rid)
    return dict(config)


# ---------------------------------------------------------------------- the run process's side
class RunRecorder:
    """Used inside the training process: records status, events, stop requests and errors.

    ``on_event`` writes every event (``step`` events at most every STEP_EVENT_INTERVAL_S per
    stage: stages that train at the same time each keep their progress) as a JSON line;
    ``should_stop`` is true once the ``stop`` flag exists or SIGTERM arrived."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self._last_step_write: dict[Any, float] = {}  # stage -> time of its last step line
        self._terminated = False
        self._pending_step: dict[Any, dict] = {}  # stage -> its newest unwritten step event

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    @property
    def model_dir(self) -> Path:
        return self.run_dir / MODEL_DIR

    def config(self) -> dict:
        return dict(_read_run_json(self.run_dir).get("config", {}))

    def mark_running(self) -> None:
        st = _proc_start_ticks(os.getpid())
        _update_run_json(
            self.run_dir,
            status="running",
            pid=os.getpid(),
            pid_start=st[1] if st else None,
            started=time.time(),
        )

    def on_event(self, event: Any) -> None:
        ev = event.to_json() if hasattr(event, "to_json") else dict(event)
        ev.setdefault("time", time.time())
        stage = ev.get("stage")
        if ev.get("kind") == "step":
            now = time.monotonic()
            if now - self._last_step_write.get(stage, 0.0) < STEP_EVENT_INTERVAL_S:
                self._pending_step[stage] = ev
                return
            self._last_step_write[stage] = now
        elif stage in self._pending_step:  # keep the step just before a check/stage end
            append_event(self.run_dir, self._pending_step[stage])
        self._pending_step.pop(stage, None)
        append_event(self.run_dir, ev)

    def request_stop(self, *_: Any) -> None:
        """Signal handler: a SIGTERM asks for a clean stop, like the stop flag."""
        self._terminated = True

    def should_stop(self) -> bool:
        return self._terminated or (self.run_dir / STOP_FLAG).exists()

    @contextlib.contextmanager
    def training(self, describe: Callable[[BaseException], str] = str) -> Iterator[None]:
        """Hold the run as ``running`` by this process while the block trains. An exception
        marks it ``failed`` with ``describe(exc)`` (Ctrl-C: ``stopped``) and is re-raised.
        Refuses a run that another live process is training."""
        info = run_status(self.run_dir)
        if info.status == "running" and info.pid not in (None, os.getpid()):
            raise RunError(f"run {info.run_id} is already being trained by process {info.pid}")
        self.mark_running()
        try:
            yield
        except KeyboardInterrupt:
            self.finish("stopped", "interrupted by the user")
            raise
        except BaseException as exc:
            msg = describe(exc)
            event = {"kind": "error", "stage": -1, "step": 0, "elapsed_s": 0.0, "message": msg}
            self.on_event(event)
            self.finish("failed", msg)
            raise

    def finish(self, status: str, message: str = "") -> None:
        if status not in TERMINAL:
            raise RunError(f"finish() needs a final status, not {status!r}")
        if status == "failed":
            atomic_write(self.run_dir / ERROR_TXT, message.strip() + "\n")
        _update_run_json(self.run_dir, status=status, finished=time.time(), message=message)
