"""App state: documented session keys and the study folders on disk.

Everything the user would hate to lose lives on disk under ``MDCM_HOME`` (default ``./.mdcm``)::

    MDCM_HOME/studies/<study_id>/app.json     title, built-in example name (or null), graph text,
                                              variable kinds  (the editable part of a study)
    MDCM_HOME/studies/<study_id>/study/       uploaded datasets in the study folder format
                                              (study.json + one sub-folder per dataset)
    MDCM_HOME/studies/<study_id>/uploads/     every raw upload, kept even when it fails validation
    MDCM_HOME/runs/                           training runs (mdcm.runs): config, events, checkpoints

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
=======================  =====================================================================

Widget keys are prefixed by page (``graph_*``, ``data_*``, ``train_*``, ``iv_*``, ``chk_*``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdcm.graph import CausalGraph, GraphError, parse_graph
from mdcm.variables import Schema, SchemaError, Variable

# Built-in example studies: name -> (title, graph text, variable kinds). Used when
# mdcm.examples is not importable yet and as display titles.
BUILTIN_TITLES: dict[str, str] = {
    "colored_digits": "Colored digits (front-door with an image mediator)",
    "xray": "Chest X-ray (front-door: condition -> X-ray -> diagnosis)",
    "napkin": "Napkin graph (identifiable, needs two steps)",
    "backdoor": "Back-door adjustment",
    "bow": "Bow graph (not identifiable: for teaching)",
}
DEFAULT_VARIABLE = {"kind": "categorical", "classes": 2}


def mdcm_home() -> Path:
    """Root folder for everything the app keeps (``MDCM_HOME``, default ``./.mdcm``)."""
    home = Path(os.environ.get("MDCM_HOME", ".mdcm")).expanduser()
    (home / "studies").mkdir(parents=True, exist_ok=True)
    (home / "runs").mkdir(parents=True, exist_ok=True)
    return home


def runs_root() -> Path:
    return mdcm_home() / "runs"


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

    def to_json(self) -> dict:
        return {
            "id": self.study_id,
            "title": self.title,
            "example": self.example,
            "graph": self.graph_text,
            "variables": dict(self.variables),
            "created": self.created,
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


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def save_meta(meta: StudyMeta) -> None:
    d = study_dir(meta.study_id)
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / "app.json", meta.to_json())


def load_meta(study_id: str) -> StudyMeta:
    data = json.loads((study_dir(study_id) / "app.json").read_text())
    return StudyMeta(
        study_id=data["id"],
        title=data.get("title", study_id),
        example=data.get("example"),
        graph_text=data.get("graph", ""),
        variables=data.get("variables", {}),
        created=data.get("created", 0.0),
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
    sid = (example or "study").replace("_", "-") + "-" + uuid.uuid4().hex[:8]
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


def update_graph(
    meta: StudyMeta, graph: CausalGraph, variables: Mapping[str, Any] | None = None
) -> StudyMeta:
    """Store a new graph (and kinds); variables new to the graph get the default kind."""
    old = dict(variables if variables is not None else meta.variables)
    kinds = {v: old.get(v, DEFAULT_VARIABLE) for v in graph.nodes}
    new = StudyMeta(
        meta.study_id,
        meta.title,
        meta.example,
        graph.to_text().replace("\n", "; "),
        kinds,
        meta.created,
    )
    save_meta(new)
    return new


def set_variable(meta: StudyMeta, name: str, spec: Mapping[str, Any]) -> StudyMeta:
    """Set one variable's kind; raises SchemaError if the spec is invalid."""
    Variable.from_json(name, dict(spec))  # validate first
    kinds = dict(meta.variables)
    kinds[name] = dict(spec)
    new = StudyMeta(meta.study_id, meta.title, meta.example, meta.graph_text, kinds, meta.created)
    save_meta(new)
    return new


def delete_study(study_id: str) -> None:
    shutil.rmtree(study_dir(study_id), ignore_errors=True)


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
