"""Intervene: set treatment variables (select boxes, sliders, typed text, an uploaded image),
optional discrete evidence; every answer starts with one sentence in the study's own words,
then the chart, the effect across treatment values with its table, and generated images. The
identifiability verdict is always shown, and a non-identifiable answer carries its caveat in the
sentence, the chart and the table. One sample draw per query feeds all of them (and Checks)."""

import contextlib
import functools

import numpy as np
import pandas as pd
import streamlit as st

from mdcm import explain
from mdcm_app import answers, bundles, plots, state, ui


# ---------------------------------------------------------------------- typed interventions
def _typed_text(schema, do: dict) -> str:
    """The widgets' values as the text box shows them: do(C=1, Z=0.5)."""
    parts = []
    for v, x in do.items():
        var = schema[v]
        if var.kind == "categorical":
            parts.append(f"{v}={int(x)}")
        elif var.kind == "continuous":
            parts.append(f"{v}={float(x[0]):g}")
    return f"do({', '.join(parts)})" if parts else ""


def _schema():
    meta = state.load_meta(st.session_state["study_id"])
    return ui.schema_or_stop(meta)


@ui.safe_callback
def _apply_typed() -> None:
    """Typing moves the widgets: parse the text and set each widget's value (one state)."""
    from mdcm.data import DataError
    from mdcm_app.uploads import parse_do

    st.session_state["iv_do_error"] = ""
    text = st.session_state.get("iv_do_text", "")
    if not text.strip():
        return
    schema = _schema()
    try:
        typed = parse_do(text, schema)
    except DataError as exc:
        st.session_state["iv_do_error"] = f"Intervention refused: {exc}"
        return
    images = [k for k in typed if schema[k].kind == "image"]
    if images:
        st.session_state["iv_do_error"] = (
            f"Intervention refused: set the image {images[0]} with the uploader below"
        )
        return
    treat = list(st.session_state.get("iv_treat") or [])
    for v, x in typed.items():
        if v not in treat:
            treat.append(v)
        if schema[v].kind == "categorical":
            st.session_state[f"iv_val_{v}"] = int(x)
        else:
            st.session_state[f"iv_val_{v}"] = float(x)
    st.session_state["iv_treat"] = treat
    st.session_state["iv_outcome"] = [
        y for y in st.session_state.get("iv_outcome") or [] if y not in treat
    ]


def _continuous_range(study, v: str) -> tuple[float, float]:
    lo, hi = -3.0, 3.0
    obs = study.observational if study is not None else None
    if obs is not None and v in obs.columns:
        a = np.asarray(obs.columns[v], dtype=np.float32)[:, 0]
        lo, hi = float(np.quantile(a, 0.01)), float(np.quantile(a, 0.99))
        lo, hi = round(lo, 2), round(max(hi, lo + 0.01), 2)
    x = st.session_state.get(f"iv_val_{v}")
    if isinstance(x, int | float):  # a typed value outside the data's range widens the slider
        lo, hi = min(lo, float(x)), max(hi, float(x))
    return lo, hi


# ---------------------------------------------------------------------- widgets
def _treatment_widgets(schema, study, treat: list[str]) -> tuple[dict, dict]:
    """One widget per treatment variable; returns the do() values and, per image treatment,
    (image, slot for the out-of-range check, what to call the image)."""
    do: dict = {}
    images: dict = {}
    obs = study.observational if study is not None else None
    cols = st.columns(max(1, len(treat)))
    for col, v in zip(cols, treat, strict=False):
        var = schema[v]
        label = f"Set {explain.var_name(var)} to"
        with col:
            if var.kind == "categorical":
                widget = st.select_slider if var.classes <= 12 else st.selectbox
                do[v] = int(
                    widget(
                        label,
                        list(range(var.classes)),
                        key=f"iv_val_{v}",
                        format_func=lambda k, var=var: explain.class_label(var, k),
                        help=f"do({v}=…): {v} is set by intervention for every case",
                    )
                )
            elif var.kind == "continuous":
                lo, hi = _continuous_range(study, v)
                if f"iv_val_{v}" not in st.session_state:
                    st.session_state[f"iv_val_{v}"] = round((lo + hi) / 2, 2)
                x = st.slider(
                    label,
                    min_value=lo,
                    max_value=hi,
                    key=f"iv_val_{v}",
                    help=f"do({v}=…); the range is the data's 1st to 99th percentile",
                )
                do[v] = [float(x)] * var.shape[0]
            else:
                got = _image_widget(var, obs)
                if got is not None:
                    do[v] = got[0]
                    images[v] = got
    return do, images


def _image_widget(var, obs):
    c, h, w = var.shape
    v = var.name
    up = st.file_uploader(
        f"Image for {explain.var_name(var)} (PNG or JPEG; the model sees it at {h}×{w})",
        type=["png", "jpg", "jpeg"],
        key=f"iv_img_{v}",
    )
    if up is not None:
        try:
            img = plots.image_to_array(up.getvalue(), var.shape, name=up.name)
        except ValueError as exc:
            st.error(str(exc), icon=":material/broken_image:")
            return None
        what = f"Your image {up.name}"
        p1, p2 = st.columns(2)
        p1.image(up.getvalue(), caption=f"{up.name} as uploaded", width=160)
        p2.image(
            plots.image_grid(img[None], ncol=1, scale=max(1, 160 // max(h, w))),
            caption=f"as the model sees it: {h}×{w}, {'grayscale' if c == 1 else 'color'}",
        )
    elif obs is not None and v in obs.columns:
        idx = st.number_input(
            "…or use data image number",
            min_value=0,
            max_value=obs.n - 1,
            value=0,
            key=f"iv_idx_{v}",
        )
        img = np.asarray(obs.columns[v][int(idx)], dtype=np.float32)
        what = f"Data image {int(idx)}"
        st.image(
            plots.image_grid(img[None], ncol=1, scale=max(1, 160 // max(h, w))),
            caption=f"data image {int(idx)} ({h}×{w})",
        )
    else:
        st.info(f"Upload an image for {v}.")
        return None
    return img, st.empty(), what


def _evidence(schema, rest: list[str], outcomes: list[str]) -> dict:
    cands = [v for v in rest if v not in outcomes and schema[v].kind == "categorical"]
    if not cands:
        return {}
    given_vars = st.multiselect(
        "Evidence (optional: only cases where these were observed)",
        cands,
        key="iv_given",
        format_func=lambda v: explain.var_name(schema[v]),
    )
    given = {}
    if given_vars:
        gcols = st.columns(len(given_vars))
        for col, g in zip(gcols, given_vars, strict=True):
            given[g] = int(
                col.selectbox(
                    f"{explain.var_name(schema[g])} =",
                    list(range(schema[g].classes)),
                    key=f"iv_given_{g}",
                    format_func=lambda k, var=schema[g]: explain.class_label(var, k),
                )
            )
    return given


# ---------------------------------------------------------------------- answers
def _naive(schema, study, y: str, do: dict, given: dict):
    """The data's plain conditional P(y | treatment values, evidence), when every treatment is
    categorical and the data have rows with those values."""
    obs = study.observational if study is not None else None
    var = schema[y]
    if obs is None or var.kind == "image" or y not in obs.columns:
        return None
    if any(schema[k].kind != "categorical" or k not in obs.columns for k in do):
        return None
    mask = np.ones(obs.n, dtype=bool)
    for k, v in {**do, **given}.items():
        if k in obs.columns:
            mask &= np.asarray(obs.columns[k]) == v
    if not mask.sum():
        return None
    ys = np.asarray(obs.columns[y])[mask]
    if var.kind == "categorical":
        return np.bincount(ys, minlength=var.classes) / mask.sum()
    return ys.reshape(len(ys), -1).mean(0)


CAVEAT = "Not identifiable: one of many answers that fit the data; bars show sampling noise only"


def _answer(ctx, y: str, do: dict, given: dict, ident) -> None:
    schema, study, ex, mid, model = ctx["schema"], ctx["study"], ctx["ex"], ctx["mid"], ctx["model"]
    var = schema[y]
    res = answers.distribution(mid, model, y, do, given, ctx["interventions"])
    unsure = ident is not None and not ident.identifiable
    naive = _naive(schema, study, y, do, given)
    spread = answers.spread(ctx["models"], y, do, given) if unsure else None
    if res.acceptance_rate < 1.0:
        st.caption(f"The evidence kept {res.acceptance_rate:.1%} of the samples ({res.n}).")
    if var.kind != "image":
        sentence = explain.answer_sentence(
            schema,
            y,
            do,
            probs=res.probs,
            ci=res.ci,
            mean=res.mean,
            given=given,
            naive=naive,
            identifiable=not unsure,
            spread=spread,
            unlike_data=ctx.get("unlike_data", ()),
        )
        (st.warning if unsure else st.info)(sentence, icon=":material/chat:")
    title = f"{explain.var_name(var)} if {explain.do_phrase(schema, do)}"
    if var.kind == "categorical":
        model_name = "model: if set" + (" (one of many answers)" if unsure else "")
        series = {model_name: res.probs}
        errors = {model_name: res.ci[:, 1] - res.probs}
        if naive is not None:
            cond = ", ".join(f"{k}={v}" for k, v in {**do, **given}.items())
            series[f"data: cases that had {cond}"] = naive
        plain = all(schema[k].kind == "categorical" for k in do)
        if ex is not None and plain and not given:
            with contextlib.suppress(ValueError, KeyError):
                series["exact truth (built-in study)"] = ex.truth(y, do)
        cats = explain.class_labels(var)
        st.plotly_chart(
            plots.distribution_figure(
                series, cats, title, errors=errors, caveat=CAVEAT if unsure else None
            ),
            key=f"iv_dist_{y}",
            width="stretch",
        )
        st.download_button(
            f"Download chart of {y} (PNG)",
            functools.partial(
                plots.bar_png, series, cats, title + (" (not identifiable)" if unsure else "")
            ),
            file_name=f"P_{y}_do.png",
            mime="image/png",
            key=f"iv_png_{y}",
        )
    elif var.kind == "continuous":
        st.metric(
            f"{explain.var_name(var)}: average if set",
            f"{float(res.mean[0]):.3f}",
            help=f"95% interval {res.ci[0, 0]:.3f} … {res.ci[0, 1]:.3f} (sampling noise only)",
        )
        sm = answers.query_draw(mid, model, do, given).samples
        st.plotly_chart(
            plots.marginal_figure(sm[y], title, "continuous", labels=("model: if set", "")),
            key=f"iv_dist_{y}",
            width="stretch",
        )
    else:
        sm = answers.query_draw(mid, model, do, given).samples
        st.image(plots.image_grid(sm[y][:32], ncol=8, scale=4), caption=title)


def _effect(ctx, treat: str, y: str, ident) -> None:
    schema, study, ex, mid, model = ctx["schema"], ctx["study"], ctx["ex"], ctx["mid"], ctx["model"]
    tvar, yvar = schema[treat], schema[y]
    res = answers.effect(mid, model, study, treat, y)
    unsure = ident is not None and not ident.identifiable
    xs = [explain.class_label(tvar, r.value) for r in res.rows]
    if res.positive is not None:
        what = f"P({y} = {explain.class_label(yvar, res.positive)})"
        k = res.positive
    else:
        what, k = f"average {y}", 0
    label = f"{what} if set" + (" (one of many answers)" if unsure else "")
    series = {f"model: {label}": [float(r.probs[k]) for r in res.rows]}
    lower = {f"model: {label}": [float(r.ci[k, 0]) for r in res.rows]}
    upper = {f"model: {label}": [float(r.ci[k, 1]) for r in res.rows]}
    if all(r.naive is not None for r in res.rows):
        series[f"data: cases that had that {treat}"] = [float(r.naive[k]) for r in res.rows]
    if ex is not None and res.positive is not None:
        with contextlib.suppress(ValueError, KeyError):
            series["exact truth (built-in study)"] = [
                float(ex.truth(y, {treat: r.value})[k]) for r in res.rows
            ]
    st.plotly_chart(
        plots.effect_figure(
            xs,
            series,
            lower,
            upper,
            title=f"{explain.var_name(yvar)} for each value of {explain.var_name(tvar)}",
            ytitle="probability" if res.positive is not None else y,
            xtitle=f"{treat} set to",
            caveat=CAVEAT.replace("bars", "bars and whiskers") if unsure else None,
        ),
        key=f"iv_effect_{y}",
        width="stretch",
    )
    ref = explain.class_label(tvar, res.reference)
    rows = [
        {
            f"{treat} set to": explain.class_label(tvar, r.value),
            label: round(float(r.probs[k]), 3),
            "95% interval (sampling noise only)": f"{r.ci[k, 0]:.3f} … {r.ci[k, 1]:.3f}",
            f"change vs {treat}={ref}": f"{r.effect:+.3f} ({r.effect_ci[0]:+.3f} … "
            f"{r.effect_ci[1]:+.3f})",
            f"data: cases that had that {treat}": None
            if r.naive is None
            else round(float(r.naive[k]), 3),
            "data rows": r.naive_n,
        }
        for r in res.rows
    ]
    if unsure:
        st.caption(
            ":orange[Not identifiable: every number in this table is one of many answers that "
            "fit the data equally well; the intervals show sampling noise only.]"
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key=f"iv_table_{y}")


def _check_images(ctx, images: dict) -> list[str]:
    """Fill each image's slot with the out-of-range warning when it is unlike the data; returns
    the image treatments that are."""
    unlike = []
    for v, (img, slot, what) in images.items():
        check = answers.image_check(ctx["data_key"], ctx["mid"], ctx["model"], ctx["study"], v, img)
        if check is not None and check.out_of_range:
            slot.warning(check.message(what), icon=":material/report:")
            unlike.append(v)
    return unlike


def _fit_warnings(model, treat: list, outcomes: list, given: dict) -> None:
    """An answer that only an experiment's data identify is as good as the model's fit to that
    data: say so when the training record shows a poor fit there (mdcm.query)."""
    from mdcm.query import regime_fit_warning

    regimes = model.record.get("regimes", [])
    for y in outcomes:
        warn = regime_fit_warning(model, treat, [y], list(given), regimes)
        if warn:
            st.warning(f"{explain.var_name(model.schema[y])}: {warn}.", icon=":material/warning:")


# ---------------------------------------------------------------------- page
def main() -> None:
    meta = ui.study_page("Intervene")
    schema = ui.schema_or_stop(meta)
    study, _ = ui.study_data(meta)
    ex = ui.example_or_none(meta)
    names = list(schema.names)
    if "iv_treat" not in st.session_state:
        st.session_state["iv_treat"] = (
            [ex.treatment] if ex is not None and ex.treatment in names else names[:1]
        )
    st.session_state["iv_treat"] = [v for v in st.session_state["iv_treat"] if v in names]
    c1, c2 = st.columns(2)
    treat = c1.multiselect(
        "Treatment (the variable you set)",
        names,
        key="iv_treat",
        format_func=lambda v: explain.var_name(schema[v]),
    )
    rest = [v for v in names if v not in treat]
    if "iv_outcome" not in st.session_state:
        st.session_state["iv_outcome"] = (
            [ex.outcome] if ex is not None and ex.outcome in rest else rest[-1:]
        )
    st.session_state["iv_outcome"] = [v for v in st.session_state["iv_outcome"] if v in rest]
    outcomes = c2.multiselect(
        "Outcome(s) (what you want to know)",
        rest,
        key="iv_outcome",
        format_func=lambda v: explain.var_name(schema[v]),
    )
    if not treat or not outcomes:
        st.info("Pick at least one treatment and one outcome.")
        return
    given = _evidence(schema, rest, outcomes)
    interventions = list(study.interventions) if study is not None else []
    st.subheader("Can the data answer this?")
    verdicts = ui.verdict(schema, treat, outcomes, list(given), interventions)
    data_key = ui.data_key(meta)
    if study is not None and len(treat) == 1:
        for y in outcomes:
            warn = answers.overlap(data_key, study, treat[0], y)
            if warn:
                st.warning(f"Positivity: {warn}", icon=":material/warning:")
    st.subheader("Answers")
    mid, model = ui.pick_model(meta, schema, "iv_run")
    ctx = {
        "meta": meta,
        "schema": schema,
        "study": study,
        "ex": ex,
        "mid": mid,
        "model": model,
        "interventions": interventions,
        "data_key": data_key,
        "models": [],
    }
    if any(v is not None and not v.identifiable for v in verdicts.values()):
        ctx["models"] = ui.fitting_models(meta, schema)
    _fit_warnings(model, treat, outcomes, given)
    _set_and_answer(ctx, treat, outcomes, given, verdicts)
    effect_ys = [y for y in outcomes if schema[y].kind != "image"]
    if (
        len(treat) == 1
        and schema[treat[0]].kind == "categorical"
        and study is not None
        and not given
        and effect_ys
    ):
        from mdcm.query import QueryError

        st.subheader(f"Effect across values of {explain.var_name(schema[treat[0]])}")
        for y in effect_ys:
            try:
                _effect(ctx, treat[0], y, verdicts.get(y))
            except (QueryError, ValueError) as exc:
                st.error(f"Effect of {treat[0]} on {y}: {exc}")


@ui.timed_fragment
def _set_and_answer(ctx: dict, treat: list, outcomes: list, given: dict, verdicts: dict) -> None:
    """The treatment's widgets and the answers they drive. A fragment: moving a slider reruns
    only this part (the verdict, the model picker and the effect across all values stay as they
    are), which keeps a slider move well under a second (bench/ui_latency.py)."""
    from mdcm.query import QueryError

    schema, study, model, mid = ctx["schema"], ctx["study"], ctx["model"], ctx["mid"]
    st.markdown("**Set the treatment**")
    do, images = _treatment_widgets(schema, study, treat)
    if not st.session_state.get("iv_do_error"):
        st.session_state["iv_do_text"] = _typed_text(schema, do)
    typable = [v for v in schema.names if schema[v].kind != "image"]
    first = next((v for v in treat if v in typable), typable[0] if typable else None)
    if first is not None:  # images are set with the uploader only
        example_value = "0.5" if schema[first].kind == "continuous" else "1"
        st.text_input(
            "…or type the intervention",
            key="iv_do_text",
            on_change=_apply_typed,
            placeholder=f"e.g. do({first}={example_value})",
            help="NAME=VALUE pairs separated by commas, with or without do( … ); typing moves "
            "the widgets above",
        )
    if list(st.session_state.get("iv_treat") or []) != list(treat):
        st.rerun()  # the typed text named another treatment: redraw the whole page
    if st.session_state.get("iv_do_error"):
        st.error(st.session_state["iv_do_error"], icon=":material/block:")
    missing = [v for v in treat if v not in do]
    if missing:
        st.info(f"Set a value for {', '.join(missing)} to see answers.")
        return
    ctx["unlike_data"] = _check_images(ctx, images) if study is not None else []
    cols = st.columns(min(2, len(outcomes)))
    for i, y in enumerate(outcomes):
        with cols[i % len(cols)]:
            try:
                _answer(ctx, y, do, given, verdicts.get(y))
            except (QueryError, ValueError) as exc:
                st.error(f"{explain.var_name(schema[y])}: {exc}")
    shown = [v for v in schema.of_kind("image") if v not in do and v not in outcomes]
    if shown:
        st.subheader("Generated images under the intervention")
        sm = answers.query_draw(mid, model, do, given).samples
        for v in shown:
            grid = plots.image_grid(sm[v][:32], ncol=16, scale=3)
            st.image(
                grid, caption=f"{explain.var_name(schema[v])} if {explain.do_phrase(schema, do)}"
            )
            st.download_button(
                f"Download {v} grid (PNG)",
                functools.partial(plots.png_bytes, grid),
                file_name=f"{v}_do.png",
                mime="image/png",
                key=f"iv_grid_png_{v}",
            )
    bundles.save_samples_control(ctx["meta"], model, do, given)  # canvas engineer's control (#14)


ui.guard(main)
