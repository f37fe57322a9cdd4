"""App state: documented session keys and the study folders on disk.

Everything the user would hate to lose lives on disk in the user's *workspace* ``HOME``: the data
home ``MDCM_HOME`` itself (default ``./.mdcm``) when the app runs local-only, as the command line
uses it, or ``MDCM_HOME/users/<user key>/`` in shared mode (:mod:`mdcm_app.workspace`).
:func:`mdcm_home` resolves it for the signed-in user of the current browser session, so every path
below, computed through :func:`study_dir`, :func:`runs_root` or :func:`exports_dir`, stays inside
that user's own folder, whatever study id or run id a widget, a URL or a file names::

    HOME/studies/<study_id>/app.json          title, built-in example name (or null), graph text,
                                              variable kinds, node positions on the graph canvas
                                              (the editable part of a study)
    HOME/studies/<study_id>/study/            uploaded datasets in the study folder format
                                              (study.json + one sub-folder per dataset)
    HOME/studies/<study_id>/uploads/          every raw upload, kept even when it fails validation
    HOME/studies/<study_id>/runs.json         ids of the runs started for the study (runs_view)
    HOME/runs/                                training runs (mdcm.runs): config, events, checkpoints
    HOME/exports/                             files written for the user to download

The current study and run are also written to the page URL (``?study=…&run=…``) so a browser reload
or an app restart comes back to the same place.

Session state keys (``st.session_state``):

=======================  =====================================================================
``study_id``             id of the current study folder (str) or absent
``graph_text``           the Graph page's text area (the text form of the graph being edited)
``graph_for``            study id whose graph ``graph_text`` holds (reset on a study switch)
``graph_error``          last error of a click edit on the Graph page (shown inline) or ""
``graph_notice``         last success message of a click edit or ""
``graph_text_error``     why the typed graph text was not applied, or ""
``graph_kind_error_<v>`` why variable ``v``'s kind was not applied, or ""
``home_error``           why a built-in study could not be opened, or ""
``data_problems``        validation problems of the last upload (list of str)
``data_notice``          last success message on the Data page
``train_error``          why training could not start / stop / resume, or ""
``run_id``               the training run this browser session follows (str) or absent
``ui_error``             an unexpected error raised in a widget callback, shown once
``auth_user``            the signed-in :class:`mdcm_app.workspace.User` (set by mdcm_app.auth.gate)
``ws_notice``            last message of the Workspace page
=======================  =====================================================================

Widget keys are prefixed by page (``graph_*``, ``data_*``, ``train_*``, ``iv_*``, ``chk_*``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mdcm.files import atomic_write_json, read_json_file
from mdcm.graph import CausalGraph, GraphError, parse_graph
from mdcm.variables import Schema, SchemaError, Variable

# Display titles of the built-in example studies (mdcm.examples).
BUILTIN_TITLES: dict[str, str] = {
    "colored_digits": "Colored digits (front-door with an image mediator)",
    "xray": "Chest X-ray (front-door: condition -> X-ray -> diagnosis)",
    "napkin": "Napkin graph (identifiable, needs two steps)",
    "backdoor": "Back-door adjustment",
    "bow": "Bow graph (not identifiable: for teaching)",
}
DEFAULT_VARIABLE = {"kind": "categorical", "classes": 2}


def mdcm_home() -> Path:
    """The current user's workspace folder (see the module docstring); in shared mode, with no
    signed-in user, :class:`mdcm_app.workspace.AccessError` (never someone else's folder)."""
    from . import auth

    home = auth.workspace_root()
    (home / "studies").mkdir(parents=True, exist_ok=True)
    (home / "runs").mkdir(parents=True, exist_ok=True)
    return home


def runs_root() -> Path:
    """The current user's training runs (mdcm.runs folders)."""
    return mdcm_home() / "runs"


def exports_dir() -> Path:
    """Where the app writes files for the current user to download."""
    d = mdcm_home() / "exports"
    d.mkdir(exist_ok=True)
    return d


def study_dir(study_id: str) -> Path:
    safe = "".join(c for c in study_id if c.isalnum() or c in "-_")
    if not safe or safe != study_id or len(safe) > 64:
        raise ValueError(f"bad study id {study_id[:80]!r}: use 1-64 letters, digits, '-' or '_'")
    return mdcm_home() / "studies" / safe


@dataclass(frozen=True)
class StudyMeta:
    """The editable part of a study (``app.json``)."""

    study_id: str
    title: str
    example: str | None
    graph_text: str
    variables: Mapping[str, Mapping[str, Any]]
    created: float
    #: node -> [x, y] on the Graph page's canvas (mdcm_app.graphview.node_positions)
    positions: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "id": self.study_id,
            "title": self.title,
            "example": self.example,
            "graph": self.graph_text,
            "variables": dict(self.variables),
            "created": self.created,
            "positions": {k: list(v) for k, v in self.positions.items()},
        }

    @property
    def graph(self) -> CausalGraph:
        return parse_graph(self.graph_text)

    def schema(self) -> Schema:
        """The study schema; raises GraphError / SchemaError naming the problem."""
        g = self.graph
        return Schema(
            g,
            tuple(
                Variable.from_json(v, dict(self.variables.get(v, DEFAULT_VARIABLE)))
                for v in g.nodes
            ),
        )


def save_meta(meta: StudyMeta) -> None:
    d = study_dir(meta.study_id)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "app.json", meta.to_json())


def load_meta(study_id: str) -> StudyMeta:
    """A study of the current user's workspace; ValueError (bad id, or a missing or unreadable
    app.json: JsonFileError) when there is none by that id."""
    data = read_json_file(study_dir(study_id) / "app.json")
    return StudyMeta(
        study_id=data["id"],
        title=data.get("title", study_id),
        example=data.get("example"),
        graph_text=data.get("graph", ""),
        variables=data.get("variables", {}),
        created=data.get("created", 0.0),
        positions=data.get("positions") if isinstance(data.get("positions"), dict) else {},
    )


def list_studies() -> list[StudyMeta]:
    out = []
    for d in sorted((mdcm_home() / "studies").iterdir()):
        if (d / "app.json").is_file():
            try:
                out.append(load_meta(d.name))
            except (OSError, ValueError, KeyError):
                continue
    return sorted(out, key=lambda m: -m.created)


def example_schema_json(name: str) -> tuple[str, dict]:
    """Graph text and variable kinds of a built-in example (from mdcm.examples)."""
    from mdcm.examples import load_example

    ex = load_example(name, size="cpu")
    schema = ex.study.schema
    return schema.graph.to_text().replace("\n", "; "), {
        v.name: v.to_json() for v in schema.variables
    }


def new_study(
    example: str | None = None,
    title: str | None = None,
    graph_text: str = "",
    variables: Mapping[str, Any] | None = None,
) -> StudyMeta:
    """Create a study folder (from a built-in example or empty) and return its metadata."""
    sid = _new_study_id(example or "study")
    if example is not None:
        graph_text, variables = example_schema_json(example)
        title = title or BUILTIN_TITLES.get(example, example)
    meta = StudyMeta(
        study_id=sid,
        title=title or "New study",
        example=example,
        graph_text=graph_text,
        variables=dict(variables or {}),
        created=time.time(),
    )
    save_meta(meta)
    (study_dir(sid) / "uploads").mkdir(exist_ok=True)
    return meta


def _new_study_id(prefix: str) -> str:
    """A fresh study id: a readable prefix and 12 random hex digits (unguessable, and never
    the id of another user's study, whose caches are keyed by study id)."""
    safe = "".join(c for c in prefix.replace("_", "-") if c.isalnum() or c == "-")[:40]
    return (safe or "study") + "-" + uuid.uuid4().hex[:12]


def study_from_published(published_id: str) -> StudyMeta:
    """Open a copy of a study a teacher published (mdcm_app.workspace) in the current user's
    workspace: a new study of their own; the published original stays read-only."""
    from . import auth, workspace

    sid = _new_study_id(published_id.rsplit("-", 1)[0])
    rec = workspace.copy_published(auth.settings(), published_id, study_dir(sid))
    meta = StudyMeta(
        study_id=sid,
        title=str(rec.get("title") or published_id),
        example=rec.get("example") if isinstance(rec.get("example"), str) else None,
        graph_text=str(rec.get("graph") or ""),
        variables=rec.get("variables") if isinstance(rec.get("variables"), dict) else {},
        created=time.time(),
        positions=rec.get("positions") if isinstance(rec.get("positions"), dict) else {},
    )
    save_meta(meta)
    return meta


def update_graph(
    meta: StudyMeta,
    graph: CausalGraph,
    variables: Mapping[str, Any] | None = None,
    positions: Mapping[str, Any] | None = None,
) -> StudyMeta:
    """Store a new graph (and kinds, and canvas positions); variables new to the graph get the
    default kind; positions of variables no longer in the graph are dropped."""
    old = dict(variables if variables is not None else meta.variables)
    kinds = {v: old.get(v, DEFAULT_VARIABLE) for v in graph.nodes}
    pos = dict(positions if positions is not None else meta.positions)
    new = replace(
        meta,
        graph_text=graph.to_text().replace("\n", "; "),
        variables=kinds,
        positions={v: pos[v] for v in graph.nodes if v in pos},
    )
    save_meta(new)
    return new


def set_positions(meta: StudyMeta, positions: Mapping[str, Any]) -> StudyMeta:
    """Store where the variables sit on the graph canvas (only variables of the graph)."""
    nodes = set(meta.graph.nodes) if meta.graph_text.strip() else set()
    new = replace(meta, positions={v: list(p) for v, p in positions.items() if v in nodes})
    save_meta(new)
    return new


def set_variable(meta: StudyMeta, name: str, spec: Mapping[str, Any]) -> StudyMeta:
    """Set one variable's kind; raises SchemaError if the spec is invalid."""
    Variable.from_json(name, dict(spec))  # validate first
    kinds = dict(meta.variables)
    kinds[name] = dict(spec)
    new = replace(meta, variables=kinds)
    save_meta(new)
    return new


def graph_or_error(text: str) -> tuple[CausalGraph | None, str]:
    """Parse graph text; ``(graph, "")`` or ``(None, message)``."""
    try:
        return parse_graph(text), ""
    except GraphError as exc:
        return None, str(exc)


def schema_or_error(meta: StudyMeta) -> tuple[Schema | None, str]:
    try:
        return meta.schema(), ""
    except (GraphError, SchemaError) as exc:
        return None, str(exc)


def admit_upload(study_id: str, files: Mapping[str, tuple[str, bytes]]) -> None:
    """Before the first byte of an upload is written: refuse it (QuotaError, nothing written)
    when it would take the user's workspace over its storage quota; record it in the audit log
    either way. ``files``: widget key -> (file name, bytes)."""
    from . import auth, workspace

    s, user = auth.settings(), auth.current_user()
    names = [{"name": n, "bytes": len(b)} for n, b in files.values()]
    cost = sum(workspace.upload_bytes(n, b) for n, b in files.values())
    study_dir(study_id)  # a bad id is refused before anything else
    try:
        workspace.check_room(s, mdcm_home(), cost)
    except workspace.QuotaError as exc:
        workspace.audit(s.home, "upload_refused", user, study=study_id, files=names, why=str(exc))
        raise
    workspace.audit(s.home, "upload", user, study=study_id, files=names)
