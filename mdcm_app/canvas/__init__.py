"""The graph canvas: a Streamlit Components v2 editor bundled with the app.

``canvas.js`` and ``canvas.css`` sit next to this file and are passed to
``st.components.v2.component`` as inline strings, so nothing is fetched from a CDN and no build
step is needed. The component draws :func:`mdcm_app.graphview.canvas_data` and reports one edit
per gesture as the trigger ``edit`` (see the head of ``canvas.js``); the page applies it with
:func:`mdcm_app.graphview.apply_canvas_edit`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import streamlit as st

__all__ = ["COMPONENT_NAME", "graph_canvas"]

COMPONENT_NAME = "mdcm_graph_canvas"
_HERE = Path(__file__).resolve().parent


@cache
def _component() -> Any:
    return st.components.v2.component(
        COMPONENT_NAME,
        js=(_HERE / "canvas.js").read_text(encoding="utf-8"),
        css=(_HERE / "canvas.css").read_text(encoding="utf-8"),
    )


def graph_canvas(data: dict, *, key: str, on_edit: Callable[[], None]) -> Any:
    """Mount the canvas with ``data`` (from ``canvas_data``); ``on_edit`` runs, before the page,
    whenever the user finished a gesture (read the edit from ``st.session_state[key]["edit"]``)."""
    return _component()(key=key, data=data, on_edit_change=on_edit, height="content")
