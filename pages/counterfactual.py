"""Counterfactual: "among the units we observed like this, what would have happened had X been
x?" The factual evidence (values, or "units like data row k"), the intervention of the
counterfactual world and the outcome are chosen here; the page always shows the ID*/IDC*
verdict, the counterfactual distribution next to the interventional and the factual one (with
95% intervals and, for built-in studies, the exact truth), and factual/counterfactual image
pairs side by side: each pair is one unit (the same noise) in the two worlds. For one observed
or uploaded image, a unit-level counterfactual ("this X-ray, had C been 1") by abduction of its
noise, labelled model-dependent."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import streamlit as st

from mdcm import explain
from mdcm_app import answers, plots, ui

N_UNITS = 2000
PAIRS = 8


@st.cache_resource(show_spinner="Drawing units in both worlds…", max_entries=128)
def _answer(
    model_id: str,
    key: str,
    outcome: str,
    regimes: tuple[tuple[str, ...], ...],
    _model: Any,
    _evidence: dict,
    _do: dict,
):
    """The counterfactual result of one query (model id + :func:`answers.query_key` of do and
    evidence), drawn once per app process; image samples of both worlds are kept for pairs."""
    from mdcm.counterfactual import counterfactual_distribution

    return counterfactual_distribution(
        _model,
        outcome,
        _evidence,
        _do,
        N_UNITS,
        seed=answers.SEED,
        interventions=[list(r) for r in regimes],
        keep_samples=True,
    )


def _value_widget(schema, study, v: str, key: str, label: str, default: int = 0) -> Any:
    """One value of ``v``: a class, a number, or a data image (by row number)."""
    var = schema[v]
    if var.kind == "categorical":
        return int(
            st.selectbox(
                label,
                list(range(var.classes)),
                index=min(default, var.classes - 1),
                key=key,
                format_func=lambda c: explain.class_label(var, c),
            )
        )
    obs = study.observational if study is not None else None
    if var.kind == "continuous":
        lo, hi = -3.0, 3.0
        if obs is not None and v in obs.columns:
            a = np.asarray(obs.columns[v], dtype=np.float32)[:, 0]
            lo, hi = float(np.quantile(a, 0.01)), float(np.quantile(a, 0.99))
        x = st.slider(
            label, min_value=round(lo, 2), max_value=round(max(hi, lo + 0.01), 2), key=key
        )
        return [float(x)] * var.shape[0]
    if obs is None or v not in obs.columns:
        st.info(f"{v} is an image: this study has no data images to set it to.")
        return None
    idx = st.number_input(
        f"{label} (data image number)", min_value=0, max_value=obs.n - 1, value=0, key=key
    )
    img = np.asarray(obs.columns[v][int(idx)], dtype=np.float32)
    st.image(plots.image_grid(img[None], ncol=1, scale=5), caption=f"{v} = image {int(idx)}")
    return img


def _evidence(schema, study, outcome: str, treatment: list[str], names: list[str]) -> dict:
    """Factual evidence: chosen values, or every categorical value of one data row."""
    cands = [v for v in names if schema[v].kind == "categorical"]
    obs = study.observational if study is not None else None
    modes = ["chosen values"] + (["units like data row k"] if obs is not None else [])
    mode = st.radio("Factual evidence", modes, horizontal=True, key="cf_ev_mode")
    if mode == "units like data row k":
        k = int(
            st.number_input("Data row k", min_value=0, max_value=obs.n - 1, value=0, key="cf_row")
        )
        ev = {v: int(np.asarray(obs.columns[v])[k]) for v in cands if v in obs.columns}
        st.caption(
            "Units like row k: the model's units whose factual "
            + ", ".join(f"{v} = {explain.class_label(schema[v], x)}" for v, x in ev.items())
            + " (every categorical value of that row)."
        )
        return ev
    if "cf_ev_vars" not in st.session_state:
        st.session_state["cf_ev_vars"] = [t for t in treatment if t in cands]
    st.session_state["cf_ev_vars"] = [v for v in st.session_state["cf_ev_vars"] if v in cands]
    chosen = st.multiselect(
        "Observed in the factual world",
        cands,
        key="cf_ev_vars",
        format_func=lambda v: explain.var_name(schema[v]),
        help="Categorical values the units had in fact (the treatment itself included: "
        "evidence X = 0 with do(X = 1) asks about the effect of treatment on the treated)",
    )
    ev = {}
    cols = st.columns(max(1, len(chosen)))
    for col, v in zip(cols, chosen, strict=False):
        with col:
            ev[v] = _value_widget(schema, study, v, f"cf_ev_{v}", f"{v} was")
    return ev


def _verdict(schema, outcome: str, do: dict, evidence: dict, interventions) -> Any:
    from mdcm.counterfactual import counterfactual_identification
    from mdcm.identify import IdentificationError

    try:
        ident = counterfactual_identification(schema, outcome, do, evidence, interventions)
    except (IdentificationError, ValueError) as exc:
        st.error(f"This question cannot be asked: {exc}", icon=":material/block:")
        st.stop()
    if ident.identifiable:
        st.success(
            f"**Identifiable** ({ident.query}): every model that fits the data gives the same "
            "answer, so a well-trained model's number below is the answer the data support.",
            icon=":material/check_circle:",
        )
    else:
        why = (
            "it depends on how a model couples the noise of the factual and the "
            "counterfactual world, which no data can show"
            if ident.cross_world
            else "a part of it is a causal effect that these data cannot identify"
        )
        st.warning(
            f"**Not identifiable** ({ident.query}): {why}. The model's numbers below are one "
            "of many answers that fit the data equally well: explore, do not conclude.",
            icon=":material/warning:",
        )
    with st.expander("Technical details (ID* / IDC*)", expanded=False):
        if ident.estimand:
            st.markdown(f"**Estimand**: `{ident.query} = {ident.estimand}`")
        st.caption(f"Reason: {ident.reason}")
    return ident


def _distribution(res, schema, ex, outcome: str, do: dict, evidence: dict) -> None:
    var = schema[outcome]
    ev_text = ", ".join(f"{k}={v}" for k, v in evidence.items())
    do_text = ", ".join(f"{k}={v}" for k, v in do.items() if schema[k].kind == "categorical")
    cf_name = f"counterfactual P({outcome}_{{{do_text or 'do'}}} | {ev_text or 'all'})"
    rows = [(cf_name, res.counterfactual)]
    if res.interventional is not None:
        rows.append((f"interventional P({outcome} | do({do_text or '…'}))", res.interventional))
    rows.append((f"factual P({outcome} | {ev_text or 'all'}), same units", res.factual))
    st.caption(
        f"{res.n} units kept of {res.drawn} drawn (evidence acceptance {res.acceptance_rate:.1%})."
    )
    if var.kind == "categorical":
        series = {name: r.probs for name, r in rows}
        errors = {name: r.ci[:, 1] - r.probs for name, r in rows}
        plain = {k: v for k, v in do.items() if schema[k].kind == "categorical"}
        if ex is not None and len(plain) == len(do):
            with contextlib.suppress(ValueError, KeyError):
                series["exact counterfactual truth"] = ex.counterfactual_truth(
                    outcome, evidence, plain
                )
        fig = plots.distribution_figure(
            series, explain.class_labels(var), f"{outcome} in the two worlds", errors=errors
        )
        st.plotly_chart(fig, key="cf_dist", width="stretch")
        st.dataframe(
            {
                "answer": [name for name, _ in rows],
                **{
                    f"{outcome} = {explain.class_label(var, c)}": [
                        f"{r.probs[c]:.3f} ({r.ci[c, 0]:.3f} … {r.ci[c, 1]:.3f})" for _, r in rows
                    ]
                    for c in range(var.classes)
                },
            },
            hide_index=True,
            key="cf_table",
        )
    elif var.kind == "continuous":
        cols = st.columns(len(rows))
        for col, (name, r) in zip(cols, rows, strict=True):
            col.metric(
                name,
                f"{float(r.mean[0]):.3f}",
                help=f"95% interval {r.ci[0, 0]:.3f} … {r.ci[0, 1]:.3f}",
            )


def _pairs(res, schema) -> None:
    """Factual and counterfactual images of the same units, side by side (labelled "factual"
    and "had X=x")."""
    s = res.samples
    had = "had " + ", ".join(
        f"{k}={v}" if schema[k].kind != "image" else f"{k}=img" for k, v in s.do.items()
    )
    for v in schema.of_kind("image"):
        if v not in s.factual:
            continue
        k = min(PAIRS, s.n)
        f, c = s.factual[v][:k].numpy(), s.counterfactual[v][:k].numpy()
        both = np.stack([f, c], axis=1).reshape(2 * k, *f.shape[1:])
        labels = [w for _ in range(k) for w in ("factual", had)]
        st.image(
            plots.image_grid(both, ncol=4, scale=5, labels=labels),
            caption=f"{v}: each pair is one unit (the same noise): factual, then "
            f"counterfactual ({had})",
        )


@st.cache_resource(show_spinner="Abducting this unit's noise…", max_entries=32)
def _unit(model_id: str, key: str, image: str, _model: Any, _img, _do: dict, _evidence: dict):
    from mdcm.counterfactual import unit_counterfactual

    return unit_counterfactual(_model, image, _img, _do, _evidence, n=512, seed=answers.SEED)


def _one_unit(mid, model, schema, study, outcome: str, do: dict, evidence: dict) -> None:
    """ "This image, had X been x": a unit-level counterfactual, labelled model-dependent."""
    from mdcm.counterfactual import UNIT_LEVEL_NOTE
    from mdcm.query import QueryError

    images = [v for v in schema.of_kind("image") if v not in do and model.latent_image(v)]
    if not images:
        return
    st.subheader("One unit: this image, had the intervention held")
    st.warning(f"Unit-level answers are {UNIT_LEVEL_NOTE}.", icon=":material/psychology:")
    c1, c2 = st.columns(2)
    image = c1.selectbox("Observed image", images, key="cf_unit_image")
    var = schema[image]
    up = c2.file_uploader(
        f"Upload an image of {image} (PNG/JPEG)", type=["png", "jpg", "jpeg"], key="cf_unit_up"
    )
    obs = study.observational if study is not None else None
    if up is not None:
        try:
            img = plots.image_to_array(up.getvalue(), var.shape, name=up.name)
        except ValueError as exc:
            st.error(f"{image}: {exc}")
            return
    elif obs is not None and image in obs.columns:
        row = int(st.session_state.get("cf_row", 0))
        k = int(
            st.number_input(
                "…or the data image number",
                0,
                obs.n - 1,
                value=min(row, obs.n - 1),
                key="cf_unit_k",
            )
        )
        img = np.asarray(obs.columns[image][k], dtype=np.float32)
    else:
        st.info(f"Upload an image of {image}.")
        return
    if not st.button("Imagine this unit in the counterfactual world", key="cf_unit_go"):
        return
    key = answers.query_key(do, evidence) + "|" + answers.do_key({image: img})
    try:
        r = _unit(mid, key, image, model, img, do, evidence)
    except (QueryError, ValueError) as exc:
        st.error(f"This unit cannot be imagined: {exc}", icon=":material/block:")
        return
    st.caption(
        f"{r.drawn} draws of the other noise, effective sample size {r.ess:.0f} after weighting "
        "by how well each explains the image."
    )
    c1, c2 = st.columns([1, 3])
    c1.image(plots.image_grid(img[None], ncol=1, scale=6), caption="observed (factual)")
    c2.image(
        plots.image_grid(r.counterfactual[image][:16].numpy(), ncol=8, scale=4),
        caption="the same unit in the counterfactual world (draws of its posterior)",
    )
    out = schema[outcome]
    if out.kind == "categorical" and outcome not in evidence:
        series = {
            f"{outcome} of this unit, factual": r.distribution(outcome, "factual", out.classes),
            f"{outcome} of this unit, counterfactual": r.distribution(
                outcome, "counterfactual", out.classes
            ),
        }
        fig = plots.distribution_figure(
            series, explain.class_labels(out), f"{outcome} of this unit (model-dependent)"
        )
        st.plotly_chart(fig, key="cf_unit_dist", width="stretch")


def main() -> None:
    meta = ui.study_page("Counterfactual")
    st.caption(
        "A counterfactual asks about units you observed: among the units whose factual values "
        "match the evidence, what would the outcome have been had the intervention held? "
        "It differs from the interventional answer, which is about the whole population."
    )
    schema = ui.schema_or_stop(meta)
    study, _ = ui.study_data(meta)
    ex = ui.example_or_none(meta)
    names = list(schema.names)
    t0 = ex.treatment if ex is not None and ex.treatment in names else names[0]
    c1, c2 = st.columns(2)
    if "cf_do_vars" not in st.session_state:
        st.session_state["cf_do_vars"] = [t0]
    st.session_state["cf_do_vars"] = [v for v in st.session_state["cf_do_vars"] if v in names]
    treat = c1.multiselect(
        "Intervention of the counterfactual world (set)",
        names,
        key="cf_do_vars",
        format_func=lambda v: explain.var_name(schema[v]),
    )
    rest = [v for v in names if v not in treat]
    if not treat or not rest:
        st.info("Pick at least one variable to set, and leave one as the outcome.")
        return
    y0 = ex.outcome if ex is not None and ex.outcome in rest else rest[-1]
    outcome = c2.selectbox(
        "Outcome (what you want to know)",
        rest,
        index=rest.index(y0),
        key="cf_outcome",
        format_func=lambda v: explain.var_name(schema[v]),
    )
    do: dict[str, Any] = {}
    cols = st.columns(len(treat))
    for col, v in zip(cols, treat, strict=True):
        with col:
            last = schema[v].classes - 1 if schema[v].kind == "categorical" else 0
            x = _value_widget(schema, study, v, f"cf_do_{v}", f"had {v} been", default=last)
            if x is not None:
                do[v] = x
    if len(do) < len(treat):
        return
    evidence = _evidence(schema, study, outcome, treat, names)
    interventions = list(study.interventions) if study is not None else []
    st.subheader("Can the data answer this?")
    _verdict(schema, outcome, do, evidence, interventions)
    st.subheader("Answers")
    from mdcm.query import QueryError

    mid, model = ui.pick_model(meta, schema, "cf_run")
    regimes = tuple(tuple(sorted(i)) for i in interventions)
    try:
        res = _answer(mid, answers.query_key(do, evidence), outcome, regimes, model, evidence, do)
    except (QueryError, ValueError) as exc:
        st.error(f"The model cannot answer this: {exc}", icon=":material/block:")
        return
    if res.warning:
        st.caption(f"Note: {res.warning}")
    _distribution(res, schema, ex, outcome, do, evidence)
    if schema.of_kind("image"):
        st.subheader("Units in both worlds")
        _pairs(res, schema)
        _one_unit(mid, model, schema, study, outcome, do, evidence)


ui.guard(main)
