"""Small Streamlit helpers shared by the pages: the error guard, the current study, cached loaders.

Pages stay short: they call these helpers and library functions and lay out the results.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from mdcm.variables import Schema

from . import state

log = logging.getLogger("mdcm_app")

#: set to 1 (the test suite does) to let page and callback errors propagate instead of becoming
#: friendly messages, so ``AppTest`` sees them in ``at.exception``
RAISE_ENV = "MDCM_RAISE"

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
        except Exception:  # noqa: BLE001 - shown as a friendly message
            if raise_errors():
                raise
            log.error("callback error: %s", traceback.format_exc())
            st.session_state["ui_error"] = True

    return wrapper


def raise_errors() -> bool:
    """Whether unexpected errors propagate (``MDCM_RAISE=1``, set by the tests)."""
    return os.environ.get(RAISE_ENV, "") == "1"


def guard(body: Callable[[], None]) -> None:
    """Run a page body; an unexpected error becomes a friendly message, never a traceback or
    a server path (the details go to the server's log; under ``MDCM_RAISE=1`` it propagates, so
    tests see it). ``MDCM_TIMING=1`` logs how long each page run took (bench/ui_latency.py)."""
    t0 = time.perf_counter()
    if st.session_state.pop("ui_error", None):
        st.error(
            "That action failed (the details are in the server's log). Nothing was lost; try "
            "again.",
            icon=":material/warning:",
        )
    try:
        body()
    except Exception:  # noqa: BLE001 - the UI must never show a raw traceback
        if raise_errors():
            raise
        log.error("page error: %s", traceback.format_exc())
        st.error(
            "Something went wrong on this page (the details are in the server's log). Your "
            "study and runs are saved on disk; try again or pick another study on the Home page.",
            icon=":material/warning:",
        )
    finally:
        _log_time("page-run", t0)


def _log_time(what: str, t0: float) -> None:
    """Under ``MDCM_TIMING=1``: the run's end (wall clock) and duration, for the bench."""
    if os.environ.get("MDCM_TIMING") == "1":
        print(
            f"mdcm-timing {what} {time.time():.3f} {time.perf_counter() - t0:.3f}", file=sys.stderr
        )


def timed_fragment(fn: Callable[..., None]) -> Callable[..., None]:
    """``st.fragment`` whose own reruns log their time under ``MDCM_TIMING=1`` (a full page run
    is timed by :func:`guard`)."""

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            fn(*args, **kwargs)
        finally:
            ctx = get_script_run_ctx()
            if ctx is not None and ctx.fragment_ids_this_run:
                _log_time("page-run", t0)  # a rerun of this fragment alone

    return st.fragment(body)


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


def study_schema(meta: state.StudyMeta) -> tuple[Schema | None, str]:
    """The study's schema (or None and why not). A copy of a built-in study made before the
    built-ins had words for their variables gets the built-in's labels and class names for every
    variable whose kind and shape still match."""
    schema, err = state.schema_or_error(meta)
    if schema is None or not meta.example:
        return schema, err
    ex = example_or_none(meta)
    if ex is None:
        return schema, err
    words = {v.name: v for v in ex.study.schema.variables}
    variables = []
    for v in schema.variables:
        w = words.get(v.name)
        if w is not None and (w.kind, w.shape) == (v.kind, v.shape) and v.label is None:
            v = dataclasses.replace(
                v,
                label=w.label,
                values=v.values or w.values,
                description=v.description or w.description,
            )
        variables.append(v)
    return Schema(schema.graph, tuple(variables)), err


def schema_or_stop(meta: state.StudyMeta) -> Schema:
    """The study's schema, or an inline error asking to fix the graph first (stops the page)."""
    schema, err = study_schema(meta)
    if schema is None:
        st.error(f"Fix the graph first: {err}")
        page_link("graph", "Go to the Graph page", ":material/hub:")
        st.stop()
    return schema


# ---------------------------------------------------------------------- cached data
@st.cache_resource(show_spinner="Generating the built-in study's data…")
def load_example(name: str):
    """A built-in example (mdcm.examples), generated once per app process."""
    from mdcm.examples import load_example as _load

    return _load(name, size="cpu")


def example_or_none(meta: state.StudyMeta):
    """The built-in example the study was copied from, or None."""
    return load_example(meta.example) if meta.example else None


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


def data_key(meta: state.StudyMeta) -> str:
    """A cache key that changes whenever the study's data may change: the study, its graph and
    variable kinds, and the time stamp of its uploads (an upload, a deletion, a graph edit)."""
    schema, err = study_schema(meta)
    text = json.dumps(schema.to_json(), sort_keys=True) if schema is not None else err
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return f"{meta.study_id}|{digest}|{_uploads_stamp(meta.study_id)}"


def study_data(meta: state.StudyMeta) -> tuple[Any | None, list[str]]:
    """The study's data (built-in datasets + uploads) under the current schema, and problems.

    Returns ``(Study, problems)``; Study is None when there is no usable dataset.
    """
    schema, err = study_schema(meta)
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
    ex = load_example(example) if example else None
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


def variables_without_data(meta: state.StudyMeta) -> list[str]:
    """Variables of the graph that no dataset of the study has a column for ("no data yet")."""
    schema, _ = study_schema(meta)
    if schema is None:
        return []
    ex = example_or_none(meta)
    seen: set[str] = set()
    for d in ex.study.datasets if ex is not None else ():
        seen.update(d.columns)
    root = state.study_dir(meta.study_id) / "study"
    for path in sorted(root.glob("*/data.csv")) if root.is_dir() else ():
        try:
            with path.open(newline="", errors="replace") as fh:
                seen.update(c.strip() for c in next(csv.reader(fh), []))
        except (OSError, csv.Error):
            continue
    return [v for v in schema.names if v not in seen]


# ---------------------------------------------------------------------- model state
def model_fits(model_dir: Path, schema: Schema) -> tuple[bool, str]:
    """Whether the model saved in ``model_dir`` was trained for this graph and these kinds, and
    if not, why (in words). Reads only model.json (no torch), once per file version."""
    path = Path(model_dir) / "model.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return False, "its model description cannot be read"
    return _model_fits(str(path), stamp, json.dumps(schema.to_json(descriptions=False)))


@st.cache_data(show_spinner=False, max_entries=256)
def _model_fits(path: str, stamp: int, schema_json: str) -> tuple[bool, str]:
    from mdcm.files import JsonFileError, read_json_file

    schema = Schema.from_json(json.loads(schema_json))
    try:
        trained = Schema.from_json(read_json_file(path)["schema"])
    except (JsonFileError, KeyError, TypeError, ValueError, OSError):
        return False, "its model description cannot be read"
    if trained.same_structure(schema):
        return True, ""
    a, b = trained.graph, schema.graph
    if (set(a.nodes), a.directed, a.bidirected) != (set(b.nodes), b.directed, b.bidirected):
        return False, (f"it was trained for the graph `{a}`; the study's graph is now `{b}`")
    kinds = [
        v.name
        for v in schema.variables
        if v.name in trained.names
        and (trained[v.name].kind, trained[v.name].shape) != (v.kind, v.shape)
    ]
    return False, f"the kind or size of {', '.join(kinds)} changed after it was trained"


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
    study, problems = study_data(meta)
    if study is None:
        out["Data"] = "no data yet" + (f" ({problems[0]})" if problems else "")
    else:
        parts = [f"{d.name} ({d.n} rows)" for d in study.datasets]
        real = [p for p in problems if not p.endswith("(ignored)")]
        out["Data"] = ", ".join(parts) + (f"; {len(real)} problem(s)" if real else "")
        missing = variables_without_data(meta)
        if missing:
            out["Data"] += f"; no data yet for {', '.join(missing)}"
    out["Model"] = runs_view.model_summary(meta)
    stale = stale_reason(meta)
    if stale:
        out["Model"] = f"needs retraining: {stale}"
    return out


def stale_reason(meta: state.StudyMeta) -> str:
    """Why the study's newest trained model no longer fits the study ("" when it fits or when
    there is none): the graph or a variable's kind changed after training."""
    from . import runs_view

    found = runs_view.latest_model(meta.study_id)
    schema, _ = study_schema(meta)
    if found is None or schema is None:
        return ""
    ok, why = model_fits(found[1], schema)
    return "" if ok else f"the latest model no longer fits the study: {why}"


def sidebar(meta: state.StudyMeta | None) -> None:
    with st.sidebar:
        if meta is None:
            st.caption("No study open.")
            return
        st.caption(f"Study: **{meta.title}**")
        st.caption(f"`{meta.graph_text}`")
        stale = stale_reason(meta)
        if stale:
            st.warning(f"Needs retraining: {stale}.", icon=":material/update:")


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


def model_id(path: Path) -> str:
    """Cache key of a model: its folder (in shared mode each user's own) and the time its
    weights were written (a resumed run that saves a new model gets a new key)."""
    return f"{Path(path).resolve()}@{(Path(path) / 'model.safetensors').stat().st_mtime_ns}"


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=8)
def load_model_cached(path: str, mtime: float, schema_json: str | None):
    """A trained DCM, loaded once per (folder, file time) and checked against the study."""
    from mdcm.model import load_model

    expect = Schema.from_json(json.loads(schema_json)) if schema_json else None
    return load_model(Path(path), expect_schema=expect)


def _load(path: Path, schema: Schema):
    return load_model_cached(
        str(path),
        (path / "model.safetensors").stat().st_mtime,
        json.dumps(schema.to_json(descriptions=False), sort_keys=True),
    )


def _run_label(rid: str) -> str:
    from mdcm.runs import RunError, run_path, run_status

    from . import runs_view

    try:
        return runs_view.run_label(run_status(run_path(state.runs_root(), rid)))
    except (RunError, OSError, ValueError):
        return rid


def pick_model(meta: state.StudyMeta, schema: Schema, key: str):
    """Select box over the study's trained models; returns (model id, model) or stops the page.

    Models trained for an earlier graph are listed as "needs retraining" and, when picked, say
    why in words instead of answering."""
    from mdcm.model import ModelFileError

    models = study_models(meta)
    if not models:
        st.info("No trained model yet for this study: start a training run first.")
        page_link("train", "Go to Train", ":material/model_training:")
        st.stop()
    fits = {rid: model_fits(path, schema) for rid, path in models}
    ids = [rid for rid, _ in models]
    rid = st.selectbox(
        "Model",
        ids,
        key=key,
        format_func=lambda r: _run_label(r) + ("" if fits[r][0] else " · needs retraining"),
        help="Models trained on this study, newest first",
    )
    ok, why = fits[rid]
    if not ok:
        st.warning(
            f"This model needs retraining: {why}. Train again on the Train page, or pick "
            "another model.",
            icon=":material/update:",
        )
        page_link("train", "Go to Train", ":material/model_training:")
        st.stop()
    path = dict(models)[rid]
    try:
        model = _load(path, schema)
    except (ModelFileError, OSError, ValueError) as exc:
        log.warning("model %s cannot be used: %s", path, exc)
        st.error(
            "This model cannot be used: its files are damaged or were written by another "
            "version of mdcm. Train again on the Train page.",
            icon=":material/error:",
        )
        st.stop()
    return model_id(path), model


def fitting_models(meta: state.StudyMeta, schema: Schema, limit: int = 8) -> list[tuple[str, Any]]:
    """(model id, model) of up to ``limit`` of the study's models that fit its current graph
    (newest first): the models whose answers are compared for a non-identifiable query."""
    from mdcm.model import ModelFileError

    out = []
    for _rid, path in study_models(meta):
        if len(out) >= limit:
            break
        if not model_fits(path, schema)[0]:
            continue
        try:
            out.append((model_id(path), _load(path, schema)))
        except (ModelFileError, OSError, ValueError):
            continue
    return out


# ---------------------------------------------------------------------- identifiability
def _terms(text: str) -> list[str]:
    from mdcm.explain import GLOSSARY

    low = text.lower()
    return [t for t in GLOSSARY if t.lower() in low]


@st.cache_resource(show_spinner=False, max_entries=256)
def _identify(
    graph_text: str,
    treatment: tuple[str, ...],
    outcome: str,
    given: tuple[str, ...],
    regimes: tuple[tuple[str, ...], ...],
):
    """(verdict, textbook criterion or None) of one query, once per graph and query."""
    from mdcm.explain import criterion
    from mdcm.graph import parse_graph
    from mdcm.identify import identify

    graph = parse_graph(graph_text)
    ident = identify(graph, list(treatment), [outcome], list(given), [list(r) for r in regimes])
    crit = (
        criterion(graph, treatment[0], outcome)
        if ident.identifiable and len(treatment) == 1 and not given
        else None
    )
    return ident, crit


def verdict(
    schema: Schema,
    treatment: Sequence[str],
    outcomes: Sequence[str],
    given: Sequence[str] = (),
    interventions: Sequence[Any] = (),
) -> dict[str, Any]:
    """The identifiability verdict of each query P(y | do(treatment), given), shown in plain
    words (the formula, its criterion and the algorithm's reason in a "technical details"
    expander). Returns outcome -> :class:`mdcm.identify.Identification` (None on a bad query).
    Used by the Intervene page and the Graph & plan page."""
    from mdcm.explain import GLOSSARY, query_words, verdict_headline
    from mdcm.identify import IdentificationError

    out: dict[str, Any] = {}
    text = schema.graph.to_text()
    regimes = tuple(tuple(sorted(i)) for i in interventions)
    for y in outcomes:
        formal = f"P({y} | do({', '.join(treatment)}){', ' + ', '.join(given) if given else ''})"
        try:
            ident, crit = _identify(text, tuple(treatment), y, tuple(given), regimes)
        except (IdentificationError, ValueError) as exc:
            st.error(f"The question {formal} cannot be asked: {exc}", icon=":material/block:")
            out[y] = None
            continue
        out[y] = ident
        words = query_words(schema, treatment, y, given)
        if ident.identifiable:
            how = f"  \nHow: the {crit.title}." if crit is not None else ""
            st.success(
                f"**Identifiable** ({formal}). {verdict_headline(True, words)}{how}",
                icon=":material/check_circle:",
            )
        else:
            st.warning(
                f"**Not identifiable** ({formal}). {verdict_headline(False, words)} Use them "
                "to explore, not to conclude.",
                icon=":material/warning:",
            )
        with st.expander("Technical details", expanded=False):
            if crit is not None:
                st.markdown(f"**{crit.title.capitalize()}:** `{crit.formula}`")
            if ident.estimand:
                st.markdown(f"**Estimand** (ID algorithm): `{formal} = {ident.estimand}`")
            st.caption(f"Reason: {ident.reason}")
            terms = _terms(ident.reason + (crit.name if crit is not None else ""))
            terms = ["identifiable" if ident.identifiable else "not identifiable"] + terms
            for t in dict.fromkeys(terms):
                st.caption(f"*{t}*: {GLOSSARY[t]}")
    return out


def verdict_panel(
    meta: state.StudyMeta, schema: Schema, interventions: Sequence[Any] = (), key: str = "graph_q"
) -> dict[str, Any]:
    """ "Can the data answer this question?" for one treatment and one outcome picked here (the
    built-in study's own question by default), with :func:`verdict` below: the verdict next to
    the training plan on the Graph & plan page."""
    from mdcm.explain import var_name

    names = list(schema.names)
    if len(names) < 2:
        return {}
    ex = example_or_none(meta)
    t0 = ex.treatment if ex is not None and ex.treatment in names else names[0]
    c1, c2 = st.columns(2)
    t = c1.selectbox(
        "If we set",
        names,
        index=names.index(t0),
        key=f"{key}_treatment",
        format_func=lambda v: var_name(schema[v]),
    )
    rest = [v for v in names if v != t]
    y0 = ex.outcome if ex is not None and ex.outcome in rest else rest[-1]
    y = c2.selectbox(
        "what happens to",
        rest,
        index=rest.index(y0),
        key=f"{key}_outcome",
        format_func=lambda v: var_name(schema[v]),
    )
    regimes = [r for r in interventions if set(r) <= set(names)]
    return verdict(schema, [t], [y], (), regimes)
