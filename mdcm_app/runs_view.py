"""Glue between a study and its training runs (mdcm.runs): which runs belong to which study,
where a run's trained model is, and per-stage progress tables built from ``events.jsonl``.

Pure functions over plain data, except the small file ``studies/<id>/runs.json`` that records the
runs started for a study (so the app finds them after a reload or restart).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import state

__all__ = [
    "find_model",
    "latest_model",
    "model_summary",
    "record_run",
    "stage_progress",
    "study_run_ids",
]


def _runs_file(study_id: str) -> Path:
    return state.study_dir(study_id) / "runs.json"


def study_run_ids(study_id: str) -> list[str]:
    """Run ids started for this study, newest first."""
    f = _runs_file(study_id)
    if not f.is_file():
        return []
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in reversed(data) if isinstance(r, str)]


def record_run(study_id: str, run_id: str) -> None:
    f = _runs_file(study_id)
    ids = list(reversed(study_run_ids(study_id)))
    if run_id not in ids:
        ids.append(run_id)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(ids))
    tmp.replace(f)


def find_model(run_dir: Path) -> Path | None:
    """The trained model folder of a run (``model.json`` + weights), or None."""
    run_dir = Path(run_dir)
    for cand in (run_dir / "model", run_dir / "final", run_dir):
        if (cand / "model.json").is_file():
            return cand
    found = sorted(run_dir.glob("**/model.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0].parent if found else None


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
        from mdcm.runs import run_status

        return run_status(run_dir).status
    except Exception:  # noqa: BLE001 - a half-written run folder counts as unknown
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


def training_source(meta: state.StudyMeta, study: Any, example_schema: Any | None) -> dict:
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
