"""Intervene: set treatment variables (select boxes, sliders, an uploaded image), optional
discrete evidence; see generated samples, the interventional distribution of each outcome, the
effect across treatment values with intervals, the naive observational answer next to it, and the
identifiability verdict, always."""

import contextlib

import numpy as np
import pandas as pd
import streamlit as st

from mdcm_app import answers, plots, ui


def _treatment_widgets(schema, study, treat: list[str]) -> dict:
    """One widget per treatment variable; returns the do() values."""
    do: dict = {}
    obs = study.observational if study is not None else None
    cols = st.columns(max(1, len(treat)))
    for col, v in zip(cols, treat, strict=False):
        var = schema[v]
        with col:
            if var.kind == "categorical" and var.classes <= 12:
                do[v] = int(
                    st.select_slider(f"do({v} = …)", list(range(var.classes)), key=f"iv_val_{v}")
                )
            elif var.kind == "categorical":
                do[v] = int(
                    st.selectbox(f"do({v} = …)", list(range(var.classes)), key=f"iv_val_{v}")
                )
            elif var.kind == "continuous":
                lo, hi = -3.0, 3.0
                if obs is not None and v in obs.columns:
                    a = np.asarray(obs.columns[v], dtype=np.float32)[:, 0]
                    lo, hi = float(np.quantile(a, 0.01)), float(np.quantile(a, 0.99))
                    lo, hi = round(lo, 2), round(max(hi, lo + 0.01), 2)
                x = st.slider(
                    f"do({v} = …)",
                    min_value=lo,
                    max_value=hi,
                    value=round((lo + hi) / 2, 2),
                    key=f"iv_val_{v}",
                )
                do[v] = [float(x)] * var.shape[0]
            else:
                up = st.file_uploader(
                    f"Image for do({v} = …) (PNG/JPEG, resized to {var.shape[1]}x{var.shape[2]})",
                    type=["png", "jpg", "jpeg"],
                    key=f"iv_img_{v}",
                )
                if up is not None:
                    try:
                        img = plots.image_to_array(up.getvalue(), var.shape)
                    except ValueError as exc:
                        st.error(f"{v}: {exc}")
                        continue
                elif obs is not None and v in obs.columns:
                    idx = st.number_input(
                        "…or use data image number",
                        min_value=0,
                        max_value=obs.n - 1,
                        value=0,
                        key=f"iv_idx_{v}",
                    )
                    img = np.asarray(obs.columns[v][int(idx)], dtype=np.float32)
                else:
                    st.info(f"Upload an image for {v}.")
                    continue
                st.image(plots.image_grid(img[None], ncol=1, scale=6), caption=f"do({v})")
                do[v] = img
    return do


def _verdict(graph, treat, outcomes, given, interventions) -> bool:
    from mdcm.identify import IdentificationError, identify

    ok = True
    for y in outcomes:
        try:
            ident = identify(graph, treat, [y], list(given), [list(i) for i in interventions])
        except (IdentificationError, ValueError) as exc:
            st.error(f"Query P({y} | do({', '.join(treat)})): {exc}")
            return False
        q = f"P({y} | do({', '.join(treat)}){', ' + ', '.join(given) if given else ''})"
        if ident.identifiable:
            st.success(
                f"**Identifiable**: {q} = {ident.estimand}  \n{ident.reason}",
                icon=":material/check_circle:",
            )
        else:
            ok = False
            st.warning(
                f"**Not identifiable**: {q}. {ident.reason}  \nThe data cannot decide "
                "this answer: the model's numbers below are *one* of many answers that "
                "fit the data equally well, not the causal effect. Use them to explore, "
                "not to conclude.",
                icon=":material/warning:",
            )
    return ok


def _distribution(model, rid, schema, ex, study, y, do, given, interventions) -> None:
    var = schema[y]
    key = answers.do_key(do) + "|" + repr(sorted(given.items()))
    res = answers.distribution(
        rid,
        key,
        model,
        y,
        do,
        tuple(sorted(given.items())),
        tuple(tuple(sorted(i)) for i in interventions),
    )
    if res.acceptance_rate < 1.0:
        st.caption(f"Evidence kept {res.acceptance_rate:.1%} of the samples ({res.n}).")
    if var.kind == "categorical":
        series = {f"model P({y} | do)": res.probs}
        errors = {f"model P({y} | do)": (res.ci[:, 1] - res.probs)}
        plain = {k: v for k, v in do.items() if schema[k].kind == "categorical"}
        obs = study.observational if study is not None else None
        if obs is not None and len(plain) == len(do) and y in obs.columns:
            mask = np.ones(obs.n, dtype=bool)
            for k, v in {**plain, **given}.items():
                if k in obs.columns:
                    mask &= np.asarray(obs.columns[k]) == v
            if mask.sum():
                series[f"naive P({y} | {', '.join(plain)} observed)"] = (
                    np.bincount(np.asarray(obs.columns[y])[mask], minlength=var.classes)
                    / mask.sum()
                )
        if ex is not None and len(plain) == len(do) and not given:
            with contextlib.suppress(ValueError, KeyError):
                series["exact truth"] = ex.truth(y, plain)
        fig = plots.distribution_figure(
            series,
            list(range(var.classes)),
            f"P({y} | do({answers.do_key(plain) or 'image'}))",
            errors=errors,
        )
        st.plotly_chart(fig, key=f"iv_dist_{y}", width="stretch")
        st.download_button(
            f"Download chart of {y} (PNG)",
            plots.bar_png(series, [str(i) for i in range(var.classes)], f"P({y} | do(...))"),
            file_name=f"P_{y}_do.png",
            mime="image/png",
            key=f"iv_png_{y}",
        )
    elif var.kind == "continuous":
        st.metric(
            f"E[{y} | do]",
            f"{float(res.mean[0]):.3f}",
            help=f"95% interval {res.ci[0, 0]:.3f} … {res.ci[0, 1]:.3f}",
        )
        sm = answers.samples(rid, answers.do_key(do), model, do, n=1000)
        st.plotly_chart(
            plots.marginal_figure(sm[y], y, "continuous", labels=("model", "")),
            key=f"iv_dist_{y}",
            width="stretch",
        )
    else:
        sm = answers.samples(rid, answers.do_key(do), model, do, n=32)
        st.image(plots.image_grid(sm[y], ncol=8, scale=4), caption=f"{y} under do()")


def _effect(model, rid, study, treat: str, y: str, ex=None) -> None:
    schema = study.schema
    if schema[treat].kind != "categorical" or schema[y].kind == "image":
        return
    res = answers.effect(rid, f"{study.path}|{study.schema.to_json()}", model, study, treat, y)
    xs = [r.value for r in res.rows]
    label = (
        f"P({y}={res.positive} | do({treat}))"
        if res.positive is not None
        else f"E[{y} | do({treat})]"
    )
    k = res.positive if res.positive is not None else 0
    model_ys = [float(r.probs[k]) for r in res.rows]
    series = {f"model {label}": model_ys}
    lower = {f"model {label}": [float(r.ci[k, 0]) for r in res.rows]}
    upper = {f"model {label}": [float(r.ci[k, 1]) for r in res.rows]}
    if all(r.naive is not None for r in res.rows):
        series[f"naive (observed {treat})"] = [float(r.naive[k]) for r in res.rows]
    if ex is not None and res.positive is not None:
        with contextlib.suppress(ValueError, KeyError):
            series["exact truth"] = [float(ex.truth(y, {treat: x})[k]) for x in xs]
    st.plotly_chart(
        plots.effect_figure(xs, series, lower, upper, title=f"Effect of {treat} on {y}"),
        key=f"iv_effect_{y}",
        width="stretch",
    )
    rows = [
        {
            "do(" + treat + ")": r.value,
            label: round(float(r.probs[k]), 3),
            "95% interval": f"{r.ci[k, 0]:.3f} … {r.ci[k, 1]:.3f}",
            f"effect vs {treat}={res.reference}": f"{r.effect:+.3f} ({r.effect_ci[0]:+.3f} … "
            f"{r.effect_ci[1]:+.3f})",
            "naive": None if r.naive is None else round(float(r.naive[k]), 3),
            "rows observed": r.naive_n,
        }
        for r in res.rows
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _parse_typed(schema, text: str) -> dict | None:
    from mdcm.data import DataError
    from mdcm_app.uploads import parse_do

    if not text.strip():
        return None
    try:
        do = parse_do(text, schema)
    except DataError as exc:
        st.error(f"Intervention refused: {exc}", icon=":material/block:")
        st.stop()
    images = [k for k in do if schema[k].kind == "image"]
    if images:
        st.error(f"Intervention refused: set image variable {images[0]} with the uploader")
        st.stop()
    return {
        k: (int(v) if schema[k].kind == "categorical" else [float(v)] * schema[k].shape[0])
        for k, v in do.items()
    }


def main() -> None:
    meta = ui.study_page("Intervene")
    schema = ui.schema_or_stop(meta)
    study, _ = ui.study_data(meta)
    ex = ui.example_or_none(meta)
    names = list(schema.names)
    default_t = [ex.treatment] if ex is not None and ex.treatment in names else names[:1]
    c1, c2 = st.columns(2)
    treat = c1.multiselect("Treatment (intervene on)", names, default=default_t, key="iv_treat")
    rest = [v for v in names if v not in treat]
    default_y = [ex.outcome] if ex is not None and ex.outcome in rest else rest[-1:]
    outcomes = c2.multiselect("Outcome(s)", rest, default=default_y, key="iv_outcome")
    if not treat or not outcomes:
        st.info("Pick at least one treatment and one outcome.")
        return
    st.markdown("**Set the treatment**")
    do = _treatment_widgets(schema, study, treat)
    typed = _parse_typed(
        schema,
        st.text_input(
            "…or type the intervention",
            key="iv_do_text",
            placeholder="e.g. D=1",
            help="NAME=VALUE pairs separated by commas; overrides the widgets above",
        ),
    )
    if typed is not None:
        extra = [k for k in typed if k not in treat]
        if extra:
            st.error(
                f"Intervention refused: {extra[0]} is not among the chosen treatments "
                f"({', '.join(treat)})"
            )
            return
        do.update(typed)
    missing = [v for v in treat if v not in do]
    if missing:
        st.info(f"Set a value for {', '.join(missing)} to see answers.")
        return
    cands = [v for v in rest if v not in outcomes and schema[v].kind == "categorical"]
    given_vars = (
        st.multiselect("Evidence (optional, observed values)", cands, key="iv_given")
        if cands
        else []
    )
    given = {}
    if given_vars:
        gcols = st.columns(len(given_vars))
        for col, g in zip(gcols, given_vars, strict=True):
            given[g] = int(
                col.selectbox(f"{g} =", list(range(schema[g].classes)), key=f"iv_given_{g}")
            )
    interventions = list(study.interventions) if study is not None else []
    st.subheader("Identifiability")
    _verdict(schema.graph, treat, outcomes, list(given), interventions)
    if study is not None and len(treat) == 1:
        for y in outcomes:
            warn = answers.overlap(meta.study_id + str(study.path), study, treat[0], y)
            if warn:
                st.warning(f"Positivity: {warn}", icon=":material/warning:")
    st.subheader("Answers")
    from mdcm.query import QueryError

    rid, model = ui.pick_model(meta, schema, "iv_run")

    cols = st.columns(min(2, len(outcomes)))
    for i, y in enumerate(outcomes):
        with cols[i % len(cols)]:
            try:
                _distribution(model, rid, schema, ex, study, y, do, given, interventions)
            except (QueryError, ValueError) as exc:
                st.error(f"P({y} | do(…)): {exc}")
    imgs = schema.of_kind("image")
    if imgs:
        st.subheader("Generated samples under the intervention")
        sm = answers.samples(rid, answers.do_key(do), model, do, n=32)
        for v in imgs:
            st.image(plots.image_grid(sm[v], ncol=16, scale=3), caption=f"{v} | do(...)")
            st.download_button(
                f"Download {v} grid (PNG)",
                plots.png_bytes(plots.image_grid(sm[v], ncol=16, scale=3)),
                file_name=f"{v}_do.png",
                mime="image/png",
                key=f"iv_grid_png_{v}",
            )
    if len(treat) == 1 and study is not None and not given:
        st.subheader(f"Effect across values of {treat[0]}")
        for y in outcomes:
            try:
                _effect(model, rid, study, treat[0], y, ex)
            except (QueryError, ValueError) as exc:
                st.error(f"Effect of {treat[0]} on {y}: {exc}")


ui.guard(main)
