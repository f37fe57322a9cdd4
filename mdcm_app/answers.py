"""Cached answers for the Intervene and Checks pages: one sample draw per query.

A query is (model, do values, evidence). Its draw, :data:`N_QUERY` samples of every variable with
one seed, is made once per app process (``st.cache_resource`` keyed by the model's id and a text
key of the query) and every number about that query is computed from it: the chart, the sentence,
the effect table's row, the Checks page's distance to the truth. So one quantity has one number
wherever it appears, a slider that comes back to a value answers at once, and the effect table
(which draws every treatment value) leaves every slider position drawn already.

Models and studies are passed as unhashed arguments (leading underscore); the keys carry what
identifies them (:func:`mdcm_app.ui.model_id`, :func:`mdcm_app.ui.data_key`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

N_QUERY = 2000
SEED = 0
KEEP_IMAGES = 64  # image samples kept per draw (for grids); labels keep all N_QUERY


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


def query_key(do: Mapping[str, Any], given: Mapping[str, int] | None = None) -> str:
    """The text key of a query: its do values and its evidence."""
    return do_key(do) + "|" + ";".join(f"{k}={int(v)}" for k, v in sorted((given or {}).items()))


@dataclass(frozen=True)
class Draw:
    """One draw of a query: samples of every variable (images: the first :data:`KEEP_IMAGES`)
    and the share of samples the evidence kept."""

    samples: Mapping[str, np.ndarray]
    acceptance_rate: float


@st.cache_resource(show_spinner=False, max_entries=256)
def draw(
    model_id: str,
    key: str,
    _model: Any,
    _do: Mapping[str, Any],
    _given: Mapping[str, int] | None = None,
    n: int = N_QUERY,
    seed: int = SEED,
) -> Draw:
    """The one draw of the query ``key`` (= :func:`query_key` of ``_do`` and ``_given``)."""
    from mdcm.query import sample_interventional

    samples, rate = sample_interventional(_model, n, dict(_do), given=dict(_given or {}), seed=seed)
    out = {}
    for v, t in samples.items():
        a = t.detach().cpu().numpy()
        if _model.schema[v].kind == "image":
            a = a[:KEEP_IMAGES].copy()
        a.setflags(write=False)
        out[v] = a
    return Draw(out, rate)


def query_draw(
    model_id: str, model: Any, do: Mapping[str, Any], given: Mapping[str, int] | None = None
) -> Draw:
    """The cached draw of P(V | do, given)."""
    return draw(model_id, query_key(do, given), model, dict(do), dict(given or {}))


def distribution(
    model_id: str,
    model: Any,
    outcome: str,
    do: Mapping[str, Any],
    given: Mapping[str, int] | None = None,
    interventions: Sequence[Sequence[str]] = (),
):
    """P(outcome | do, given) from the query's one draw (a :class:`mdcm.query.QueryResult`)."""
    regimes = tuple(tuple(sorted(i)) for i in interventions)
    return _result(
        model_id, query_key(do, given), outcome, regimes, model, dict(do), dict(given or {})
    )


@st.cache_resource(show_spinner=False, max_entries=512)
def _result(
    model_id: str,
    key: str,
    outcome: str,
    regimes: tuple[tuple[str, ...], ...],
    _model: Any,
    _do: Mapping[str, Any],
    _given: Mapping[str, int],
):
    from mdcm.query import result_from_samples

    d = query_draw(model_id, _model, _do, _given)
    return result_from_samples(
        _model,
        outcome,
        d.samples[outcome],
        d.acceptance_rate,
        _do,
        _given,
        interventions=[list(r) for r in regimes],
    )


def effect(
    model_id: str,
    model: Any,
    study: Any,
    treatment: str,
    outcome: str,
):
    """P(outcome | do(treatment = x)) for every x, the effect against x = 0 and the naive
    conditional (:func:`mdcm.query.effect_table`), from the same draws as the charts."""
    from mdcm.query import effect_table

    interventions = list(study.interventions) if study is not None else []
    k = model.schema[treatment].classes
    results = [
        distribution(model_id, model, outcome, {treatment: x}, None, interventions)
        for x in range(k)
    ]
    return effect_table(model, study, treatment, outcome, check_overlap=False, results=results)


def spread(
    models: Sequence[tuple[str, Any]],
    outcome: str,
    do: Mapping[str, Any],
    given: Mapping[str, int] | None = None,
) -> tuple[float, float, int] | None:
    """(lowest, highest, number of models) of the answer over several trained models: for a
    binary outcome P(outcome = last class), for a continuous one its mean. None with fewer than
    two models or for other outcomes."""
    if len(models) < 2:
        return None
    var = models[0][1].schema[outcome]
    if var.kind == "image" or (var.kind == "categorical" and var.classes != 2):
        return None
    vals = []
    for mid, model in models:
        r = distribution(mid, model, outcome, do, given)
        vals.append(float(r.probs[-1]) if r.probs is not None else float(r.mean[0]))
    return min(vals), max(vals), len(vals)


@st.cache_data(show_spinner=False, max_entries=64)
def overlap(data_key: str, _study: Any, treatment: str, outcome: str) -> str | None:
    """The positivity warning of :func:`mdcm.query.overlap_warning`, per study data and query."""
    from mdcm.query import overlap_warning

    return overlap_warning(_study, _study.schema.graph, treatment, outcome)


@st.cache_resource(show_spinner="Measuring the range of the data's images…", max_entries=16)
def image_reference(data_key: str, model_id: str | None, variable: str, _images, _coder=None):
    """The data's own range for one image variable (:func:`mdcm.novelty.image_reference`)."""
    from mdcm.novelty import image_reference as reference

    return reference(_images, coder=_coder)


def image_check(
    data_key: str,
    model_id: str,
    model: Any,
    study: Any,
    variable: str,
    image: np.ndarray,
):
    """How an image given for do(variable = image) compares with the data's images (the
    observational dataset's, else the first dataset that has them; a
    :class:`mdcm.novelty.RangeCheck`), or None when the study has no images of it."""
    from mdcm.novelty import check_image

    found = [d for d in study.datasets if variable in d.columns]
    if study.observational is not None and variable in study.observational.columns:
        found = [study.observational]  # the data's own images (no float copy of all datasets)
    if not found or len(found[0].columns[variable]) < 2:
        return None
    coder = model.coders[variable] if variable in getattr(model, "coders", {}) else None
    if coder is not None and not bool(coder.fitted):
        coder = None
    ref = image_reference(
        data_key,
        model_id if coder is not None else None,
        variable,
        found[0].columns[variable],
        coder,
    )
    return check_image(ref, image, coder=coder)
