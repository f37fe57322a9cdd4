"""Cached answers for the Intervene and Checks pages (thin wrappers over :mod:`mdcm.query`).

Results are cached with ``st.cache_data`` keyed by the model id and a text key of the query, so a
slider that comes back to a value answers at once; the model and study themselves are passed as
unhashed arguments (leading underscore).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import streamlit as st

N_QUERY = 2000


def do_key(do: Mapping[str, Any]) -> str:
    """A stable text key for intervention values (images hashed)."""
    parts = []
    for k in sorted(do):
        v = do[k]
        if isinstance(v, np.ndarray) and v.size > 8:
            parts.append(f"{k}=img:{hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()}")
        else:
            parts.append(f"{k}={np.asarray(v).tolist()}")
    return ";".join(parts)


@st.cache_data(show_spinner=False, max_entries=512)
def distribution(
    model_id: str,
    query_key: str,
    _model: Any,
    outcome: str,
    _do: Mapping[str, Any],
    given: tuple[tuple[str, int], ...],
    interventions: tuple[tuple[str, ...], ...],
    n: int = N_QUERY,
    seed: int = 0,
):
    from mdcm.query import interventional_distribution

    return interventional_distribution(
        _model,
        outcome,
        dict(_do),
        n=n,
        seed=seed,
        given=dict(given) or None,
        interventions=[list(i) for i in interventions],
    )


@st.cache_data(show_spinner=False, max_entries=64)
def effect(
    model_id: str,
    study_key: str,
    _model: Any,
    _study: Any,
    treatment: str,
    outcome: str,
    n: int = N_QUERY,
    seed: int = 0,
):
    from mdcm.query import effect_table

    return effect_table(_model, _study, treatment, outcome, n=n, seed=seed)


@st.cache_data(show_spinner=False, max_entries=128)
def samples(
    model_id: str, query_key: str, _model: Any, _do: Mapping[str, Any], n: int = 32, seed: int = 0
) -> dict[str, np.ndarray]:
    out = _model.sample(n, dict(_do) or None, seed=seed)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


@st.cache_data(show_spinner=False, max_entries=64)
def overlap(study_key: str, _study: Any, treatment: str, outcome: str) -> str | None:
    from mdcm.query import overlap_warning

    try:
        return overlap_warning(_study, _study.schema.graph, treatment, outcome)
    except Exception:  # noqa: BLE001 - a warning helper must never break the page
        return None
