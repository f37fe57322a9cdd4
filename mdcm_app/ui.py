"""Small Streamlit helpers shared by the pages: the error guard, the current study, cached loaders.

Pages stay short: they call these helpers and library functions and lay out the results.
"""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from mdcm.variables import Schema

from . import state

log = logging.getLogger("mdcm_app")

PAGES = {
    "home": "pages/home.py",
    "graph": "pages/graph.py",
    "data": "pages/data.py",
    "train": "pages/train.py",
    "intervene": "pages/intervene.py",
    "checks": "pages/checks.py",
}


def safe_callback(fn: Callable[..., None]) -> Callable[..., None]:
    """Wrap a widget callback: an unexpected error is kept for :func:`guard` to show inline
    (callbacks run before the page body, outside its error guard)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown as a friendly message
            log.error("callback error: %s", traceback.format_exc())
            st.session_state["ui_error"] = f"{type(exc).__name__}: {exc}"

    return wrapper


def guard(body: Callable[[], None]) -> None:
    """Run a page body; an unexpected error becomes a friendly message, never a traceback."""
    err = st.session_state.pop("ui_error", None)
    if err:
        st.error(
            f"That action failed: {err}. Nothing was lost; try again.", icon=":material/warning:"
        )
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - the UI must never show a raw traceback
        log.error("page error: %s", traceback.format_exc())
        st.error(
            f"Something went wrong on this page: {type(exc).__name__}: {exc}. "
            "Your study and runs are saved on disk; try again or pick another study "
            "on the Home page.",
            icon=":material/warning:",
        )


def page_link(key: str, label: str, icon: str | None = None) -> None:
    """A link to another page that degrades to text when run outside st.navigation (tests)."""
    try:
        st.page_link(PAGES[key], label=label, icon=icon)
    except Exception:  # noqa: BLE001 - AppTest running one page file on its own
        st.markdown(f"**{label}**")


# ---------------------------------------------------------------------- current study
def current_study() -> state.StudyMeta | None:
    """The study this session works on (session state, else the ``?study=`` URL parameter)."""
    sid = st.session_state.get("study_id") or st.query_params.get("study")
    if not sid:
        return None
    try:
        meta = state.load_meta(sid)
    except (OSError, ValueError, KeyError):
        st.session_state.pop("study_id", None)
        return None
    st.session_state["study_id"] = sid
    if st.query_params.get("study") != sid:
        st.query_params["study"] = sid
    return meta


def set_current_study(meta: state.StudyMeta) -> None:
    st.session_state["study_id"] = meta.study_id
    st.query_params["study"] = meta.study_id
    st.session_state["graph_text"] = meta.graph_text.replace("; ", "\n")
    for k in ("graph_error", "graph_notice", "data_problems", "data_notice", "run_id"):
        st.session_state.pop(k, None)
    if "run" in st.query_params:
        del st.query_params["run"]


def require_study() -> state.StudyMeta:
    """The current study, or a hint to pick one and stop the page."""
    meta = current_study()
    if meta is None:
        st.info("No study is open yet. Pick a built-in study or start a new one on the Home page.")
        page_link("home", "Go to Home", ":material/home:")
        st.stop()
    return meta


def study_page(title: str) -> state.StudyMeta:
    """Every study page starts the same way: the open study (or a hint), the sidebar, the title."""
    meta = require_study()
    sidebar(meta)
    st.title(title)
    return meta


def schema_or_stop(meta: state.StudyMeta):
    """The study's schema, or an inline error asking to fix the graph first (stops the page)."""
    schema, err = state.schema_or_error(meta)
    if schema is None:
        st.error(f"Fix the graph first: {err}")
        st.stop()
    return schema


# ---------------------------------------------------------------------- cached data
@st.cache_resource(show_spinner="Generating the built-in study's data…")
def load_example(name: str):
    """A built-in example (mdcm.examples), generated once per app process."""
    from mdcm.examples import load_example as _load

    return _load(name, size="cpu")


def example_or_none(meta: state.StudyMeta):
    if not meta.example:
        return None
    try:
        return load_example(meta.example)
    except ImportError:
        return None


def project_dataset(schema: Schema, dataset: Any) -> tuple[Any | None, list[str]]:
    """The dataset restricted to the schema's variables, or None with the problems found.

    Columns of variables no longer in the graph are dropped (noted); missing variables and
    type/shape mismatches make the dataset unusable under this schema.
    """
    from mdcm.data import DataError, Dataset, validate_dataset

    notes = [
        f"dataset {dataset.name!r}: column {c!r} is not in the graph (ignored)"
        for c in dataset.columns
        if c not in schema.names
    ]
    cols = {k: v for k, v in dataset.columns.items() if k in schema.names}
    do = {k: v for k, v in (dataset.do or {}).items() if k in schema.names}
    try:
        ds = Dataset(dataset.name, cols, do)
        validate_dataset(ds, schema)
    except (DataError, ValueError) as exc:
        return None, notes + [str(exc)]
    return ds, notes


def uploaded_datasets(meta: state.StudyMeta, schema: Schema) -> tuple[list[Any], list[str]]:
    """Datasets uploaded into the study folder, and the problems of those that failed to load."""
    from mdcm.data import DataError, load_dataset

    root = state.study_dir(meta.study_id) / "study"
    out, problems = [], []
    if not root.is_dir():
        return out, problems
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            out.append(load_dataset(folder, schema))
        except (DataError, ValueError, OSError) as exc:
            problems.append(f"{folder.name}: {exc}")
    return out, problems


def study_data(meta: state.StudyMeta) -> tuple[Any | None, list[str]]:
    """The study's data (built-in datasets + uploads) under the current schema, and problems.

    Returns ``(Study, problems)``; Study is None when there is no usable dataset.
    """
    schema, err = state.schema_or_error(meta)
    if schema is None:
        return None, [f"graph/kinds: {err}"]
    return _study_data(
        meta.study_id,
        meta.example,
        json.dumps(schema.to_json(), sort_keys=True),
        _uploads_stamp(meta.study_id),
    )


def _uploads_stamp(study_id: str) -> float:
    root = state.study_dir(study_id) / "study"
    if not root.is_dir():
        return 0.0
    return max([root.stat().st_mtime] + [p.stat().st_mtime for p in root.iterdir()])


@st.cache_resource(show_spinner=False, max_entries=8)
def _study_data(
    study_id: str, example: str | None, schema_json: str, stamp: float
) -> tuple[Any | None, list[str]]:
    from mdcm.data import Study

    schema = Schema.from_json(json.loads(schema_json))
    meta = state.load_meta(study_id)
    datasets: list[Any] = []
    problems: list[str] = []
    ex = None
    if example:
        try:
            ex = load_example(example)
        except ImportError:
            problems.append("the built-in examples module is not available")
    raw = list(ex.study.datasets) if ex is not None else []
    up, up_problems = uploaded_datasets(meta, schema)
    problems.extend(up_problems)
    for d in raw + up:
        ds, notes = project_dataset(schema, d)
        problems.extend(notes)
        if ds is not None:
            datasets.append(ds)
    if not datasets:
        return None, problems
    return Study(
        schema=schema, datasets=tuple(datasets), path=state.study_dir(study_id) / "study"
    ), problems


def study_summary(meta: state.StudyMeta) -> dict[str, str]:
    """Plain-text summary of graph, data and model state (Home page and sidebar)."""
    from . import runs_view

    out = {"Study": meta.title}
    g, err = state.graph_or_error(meta.graph_text)
    out["Graph"] = (
        f"{len(g.nodes)} variables, {len(g.directed)} causal and "
        f"{len(g.bidirected)} confounder edges"
        if g
        else f"invalid: {err}"
    )
    try:
        study, problems = study_data(meta)
        if study is None:
            out["Data"] = "no data yet" + (f" ({problems[0]})" if problems else "")
        else:
            parts = [f"{d.name} ({d.n} rows)" for d in study.datasets]
            real = [p for p in problems if not p.endswith("(ignored)")]
            out["Data"] = ", ".join(parts) + (f"; {len(real)} problem(s)" if real else "")
    except ImportError:
        out["Data"] = "data module not available"
    out["Model"] = runs_view.model_summary(meta)
    return out


def sidebar(meta: state.StudyMeta | None) -> None:
    with st.sidebar:
        if meta is None:
            st.caption("No study open.")
            return
        st.caption(f"Study: **{meta.title}**")
        st.caption(f"`{meta.graph_text}`")


def model_path_exists(path: Path | None) -> bool:
    return path is not None and Path(path).exists()


# ---------------------------------------------------------------------- trained models
def study_models(meta: state.StudyMeta) -> list[tuple[str, Path]]:
    """(run id, model folder) of every run of the study that has a model, newest first."""
    from . import runs_view

    out = []
    for rid in runs_view.study_run_ids(meta.study_id):
        run_dir = state.runs_root() / rid
        path = runs_view.find_model(run_dir) if run_dir.is_dir() else None
        if path is not None:
            out.append((rid, path))
    return out


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=4)
def load_model_cached(path: str, mtime: float, schema_json: str | None):
    """A trained DCM, loaded once per (folder, file time) and checked against the study."""
    from mdcm.model import load_model

    expect = Schema.from_json(json.loads(schema_json)) if schema_json else None
    return load_model(Path(path), expect_schema=expect)


def pick_model(meta: state.StudyMeta, schema: Schema, key: str):
    """Select box over the study's trained models; returns (run id, model) or stops the page."""
    from mdcm.model import ModelFileError

    models = study_models(meta)
    if not models:
        st.info("No trained model yet for this study: start a training run first.")
        page_link("train", "Go to Train", ":material/model_training:")
        st.stop()
    ids = [rid for rid, _ in models]
    rid = st.selectbox(
        "Model (training run)", ids, key=key, help="Models of this study's runs, newest first"
    )
    path = dict(models)[rid]
    try:
        model = load_model_cached(
            str(path),
            (path / "model.safetensors").stat().st_mtime,
            json.dumps(schema.to_json(), sort_keys=True),
        )
    except (ModelFileError, OSError, ValueError) as exc:
        st.error(f"This model cannot be used with the study as it is now: {exc}")
        st.stop()
    return rid, model
