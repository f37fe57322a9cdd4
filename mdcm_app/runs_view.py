"""Glue between a study and its training runs (mdcm.runs): which runs belong to which study,
where a run's trained model is, per-stage progress tables built from ``events.jsonl``, and the
actions on runs (start, stop, resume, delete) with their fair-use checks and audit lines.

Runs live in the current user's workspace (``state.runs_root()``); the small file
``studies/<id>/runs.json`` records the runs started for a study (so the app finds them after a
reload or restart) and is what makes a run id *this user's*: an id that is not listed there —
typed into a URL, say — is refused, never looked up elsewhere.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mdcm.files import JsonFileError, atomic_write_json, locked, read_json_file
from mdcm.runs import MODEL_DIR, RunError, RunInfo, run_path, run_status

from . import state

__all__ = [
    "delete_run",
    "delete_study",
    "find_model",
    "latest_model",
    "model_summary",
    "own_run_dir",
    "queue_note",
    "record_run",
    "resume",
    "stage_progress",
    "coder_progress",
    "stop",
    "study_run_ids",
    "study_runs",
    "submit_training",
]


def _runs_file(study_dir: Path) -> Path:
    return study_dir / "runs.json"


def _read_ids(study_dir: Path) -> list[str]:
    """Run ids recorded in a study folder, oldest first."""
    try:
        data = read_json_file(_runs_file(study_dir), obj=False)
    except JsonFileError:
        return []
    return [r for r in data if isinstance(r, str)] if isinstance(data, list) else []


def study_run_ids(study_id: str) -> list[str]:
    """Run ids started for this study, newest first."""
    return list(reversed(_read_ids(state.study_dir(study_id))))


def _write_ids(study_dir: Path, change) -> None:
    """Read-modify-write the study's runs.json under a lock, so two browser sessions that start
    runs at the same moment both keep theirs."""
    with locked(study_dir / "runs.lock"):
        ids = change(_read_ids(study_dir))
        atomic_write_json(_runs_file(study_dir), ids, indent=None)


def record_run(study_id: str, run_id: str) -> None:
    """Add a run to the study's list (once)."""
    _write_ids(state.study_dir(study_id), lambda ids: ids + ([run_id] if run_id not in ids else []))


def find_model(run_dir: Path) -> Path | None:
    """The trained model folder of a run (``<run>/model``, :data:`mdcm.runs.MODEL_DIR`), or None
    while the run has not written it."""
    path = Path(run_dir) / MODEL_DIR
    return path if (path / "model.json").is_file() else None


def study_runs(study_id: str) -> list[RunInfo]:
    """The study's runs in the current user's workspace, newest first (unreadable ones left out)."""
    out = []
    for rid in study_run_ids(study_id):
        try:
            out.append(run_status(run_path(state.runs_root(), rid)))
        except (RunError, OSError, ValueError):
            continue
    return out


def own_run_dir(study_id: str, run_id: str) -> Path:
    """The folder of one of this study's runs in the current user's workspace; AccessError for
    a run id that is not one of them (another user's, another study's, or made up)."""
    from .workspace import AccessError

    if run_id not in study_run_ids(study_id):
        raise AccessError(
            f"run {str(run_id)[:80]!r} is not one of this study's runs in your workspace"
        )
    try:
        return run_path(state.runs_root(), run_id)
    except RunError as exc:
        raise AccessError(str(exc)) from None


def latest_model(study_id: str) -> tuple[str, Path] | None:
    """(run id, model folder) of the newest run of the study that has a finished model."""
    root = state.runs_root()
    for rid in study_run_ids(study_id):
        run_dir = root / rid
        if not run_dir.is_dir():
            continue
        status = _status(run_dir)
        if status != "done":
            continue
        path = find_model(run_dir)
        if path is not None:
            return rid, path
    return None


def _status(run_dir: Path) -> str:
    try:
        return run_status(run_dir).status
    except (RunError, OSError, ValueError):  # a half-written run folder counts as unknown
        return "unknown"


def model_summary(meta: state.StudyMeta) -> str:
    ids = study_run_ids(meta.study_id)
    if not ids:
        return "not trained yet"
    found = latest_model(meta.study_id)
    if found is None:
        return f"{len(ids)} run(s), none finished yet"
    return f"trained (run {found[0]}); {len(ids)} run(s) in all"


def stage_progress(
    events: Iterable[Mapping[str, Any]], max_steps: int | None = None
) -> dict[int, dict[str, Any]]:
    """Per stage: steps done, fraction, last losses, loss and quality curves, finished flag.

    ``events`` are the dicts of ``events.jsonl`` (mdcm.train.Event.to_json()).
    """
    out: dict[int, dict[str, Any]] = {}
    for e in events:
        if "stage" not in e or e.get("stage") is None:
            continue
        s = int(e["stage"])
        rec = out.setdefault(
            s,
            {
                "step": 0,
                "done": False,
                "losses": [],
                "quality": [],
                "message": "",
                "stopped_by": "",
                "elapsed_s": 0.0,
            },
        )
        kind = e.get("kind", "")
        step = int(e.get("step") or 0)
        rec["step"] = max(rec["step"], step)
        rec["elapsed_s"] = float(e.get("elapsed_s") or rec["elapsed_s"])
        losses = e.get("losses") or {}
        if losses:
            rec["losses"].append({"step": step, **{k: float(v) for k, v in losses.items()}})
        if e.get("quality") is not None:
            rec["quality"].append({"step": step, "quality": float(e["quality"])})
        if kind == "stage_end":
            rec["done"] = True
            rec["message"] = e.get("message", "")
        if kind == "error":
            rec["message"] = e.get("message", "")
    for rec in out.values():
        if rec["done"]:
            rec["fraction"] = 1.0
        elif max_steps:
            rec["fraction"] = min(1.0, rec["step"] / max_steps)
        else:
            rec["fraction"] = 0.0
    return out


def coder_progress(
    events: Iterable[Mapping[str, Any]], total: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per image variable, the fit of its image code before stage 0 (the trainer's ``coder``
    events): steps done, of how many (``total``, else the number the first event names), the
    last reconstruction MSE, whether it finished, and its last message."""
    import re

    out: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for e in events:
        if e.get("kind") != "coder":
            continue
        msg = str(e.get("message") or "")
        named = re.search(r"image code of (\S+?)(?: \((\d+) steps\))?(?: \(|$)", msg)
        losses = e.get("losses") or {}
        keys = [k[len("coder_") : -len("_mse")] for k in losses if k.startswith("coder_")]
        var = keys[0] if keys else (named.group(1) if named else current)
        if var is None:
            continue
        current = var
        rec = out.setdefault(
            var, {"step": 0, "total": total, "mse": None, "done": False, "message": ""}
        )
        if named and named.group(2) and rec["total"] is None:
            rec["total"] = int(named.group(2))
        rec["step"] = max(rec["step"], int(e.get("step") or 0))
        if losses:
            rec["mse"] = float(next(iter(losses.values())))
        if msg:
            rec["message"] = msg
        rec["done"] = rec["done"] or msg.startswith("fitted")
    for rec in out.values():
        rec["fraction"] = 1.0 if rec["done"] else min(1.0, rec["step"] / max(rec["total"] or 1, 1))
    return out


def _training_source(meta: state.StudyMeta, study: Any, example_schema: Any | None) -> dict:
    """Where a background run reads its data: the built-in example by name when the study still
    has the example's graph and kinds and no uploads, else a study folder written for the run
    (``studies/<id>/train-<time>/``, the mdcm.data folder format)."""
    import time

    from mdcm.data import save_study

    uploaded = [
        d for d in study.datasets if (state.study_dir(meta.study_id) / "study" / d.name).is_dir()
    ]
    if (
        meta.example
        and example_schema is not None
        and not uploaded
        and example_schema.to_json() == study.schema.to_json()
    ):
        return {"example": meta.example}
    folder = state.study_dir(meta.study_id) / f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    save_study(study, folder, overwrite=True)
    return {"study_dir": folder}


def run_label(info: Any) -> str:
    """One line describing a run for select boxes and tables."""
    import time

    cfg = info.config or {}
    steps = (cfg.get("train") or {}).get("steps", "?")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
    return f"{info.run_id} · {cfg.get('plan', '?')} · {steps} steps · started {when}"


# ---------------------------------------------------------------------- actions on runs
def _who():
    """(settings, signed-in user, job limits) of the current browser session."""
    from . import auth

    s = auth.settings()
    return s, auth.current_user(), auth.limits(s)


def submit_training(
    meta: state.StudyMeta,
    study: Any,
    example_schema: Any | None,
    *,
    plan: str,
    train_config: Mapping[str, Any],
    pretrained: Mapping[str, Mapping[str, Any]] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> RunInfo:
    """Start training a study: checks the storage quota, creates the run *held* in the user's
    workspace, queues it and launches it at once when the job limits allow (else it waits, with
    its place in the queue shown). Raises QuotaError, RunError, ValueError or OSError."""
    from mdcm.runs import start_run

    from . import jobs, workspace

    s, user, lim = _who()
    workspace.check_room(s, state.mdcm_home(), 0, what="a new training run")
    source = _training_source(meta, study, example_schema)
    info = start_run(
        state.runs_root(),
        plan=plan,
        train_config=dict(train_config),
        label=meta.study_id,
        hold=True,
        pretrained=pretrained,
        workers=workers,
        ray_address=ray_address,
        **source,
    )
    record_run(meta.study_id, info.run_id)
    jobs.enqueue(s.home, info.path, (user or workspace.LOCAL_USER).key)
    workspace.audit(s.home, "train", user, study=meta.study_id, run=info.run_id, plan=plan)
    jobs.dispatch(s.home, lim)
    return run_status(info.path)


def stop(run_dir: Path) -> RunInfo:
    """Stop one of the user's runs (a waiting one leaves the queue) and let the next one start."""
    from mdcm.runs import stop_run

    from . import jobs, workspace

    s, user, lim = _who()
    info = stop_run(run_dir)
    workspace.audit(s.home, "stop", user, run=Path(run_dir).name)
    jobs.dispatch(s.home, lim)
    return info


def resume(run_dir: Path) -> RunInfo:
    """Resume one of the user's runs through the job queue (the same limits as a new run)."""
    from mdcm.runs import resume_run

    from . import jobs, workspace

    s, user, lim = _who()
    workspace.check_room(s, state.mdcm_home(), 0, what="resuming a training run")
    info = resume_run(run_dir, hold=True)
    jobs.enqueue(s.home, info.path, (user or workspace.LOCAL_USER).key)
    workspace.audit(s.home, "resume", user, run=info.run_id)
    jobs.dispatch(s.home, lim)
    return run_status(info.path)


def queue_note(run_dir: Path) -> str:
    """Where a waiting run stands in the training queue ("" when it is not waiting)."""
    from . import jobs

    s, _user, lim = _who()
    return jobs.queue_note(s.home, run_dir, lim)


def delete_run(study_id: str, run_id: str) -> None:
    """Delete one of this study's runs (its folder, model included); a run that is still
    queued or running must be stopped first."""
    from . import jobs, workspace

    s, user, _lim = _who()
    run_dir = own_run_dir(study_id, run_id)
    if run_dir.is_dir():
        if run_status(run_dir).active:
            raise RunError(f"run {run_id} is still running or queued; stop it first")
        shutil.rmtree(run_dir)
    _write_ids(state.study_dir(study_id), lambda ids: [r for r in ids if r != run_id])
    jobs.forget(s.home, run_dir)
    workspace.audit(s.home, "delete", user, what="run", study=study_id, run=run_id)


def delete_study(study_id: str) -> None:
    """Delete one of the user's studies with its uploads and runs; refused while one of its
    runs is still queued or running."""
    from . import workspace

    s, user, _lim = _who()
    state.load_meta(study_id)  # ValueError: not a study of this workspace
    ids = study_run_ids(study_id)
    active = [r for r in ids if _status(state.runs_root() / r) in ("queued", "running")]
    if active:
        raise RunError(f"run {active[0]} of this study is still running or queued; stop it first")
    for rid in ids:
        delete_run(study_id, rid)
    shutil.rmtree(state.study_dir(study_id))
    workspace.audit(s.home, "delete", user, what="study", study=study_id)
