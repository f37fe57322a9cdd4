"""Checks: real versus generated samples side by side, per-variable distributions with their
difference (total variation distance), per-class image grids, and for built-in studies the
distance to the exact interventional truth, from the same sample draws the Intervene page shows.
Plots and image grids download as PNG."""

import functools

import numpy as np
import pandas as pd
import streamlit as st

from mdcm import explain
from mdcm.query import tvd
from mdcm_app import answers, bundles, fidelity_view, plots, ui

N_CHECK = 2000


def _rounded(p) -> list[float]:
    """Probabilities to 3 decimals as the Intervene page rounds them (Python's round of each
    float: numpy's rounds 0.6715 up where Python keeps the stored 0.67149…, so the two pages
    would show 0.672 and 0.671 for the same number)."""
    return [round(float(v), 3) for v in p]


TVD_HELP = "Difference = " + explain.GLOSSARY["TVD"]


def _marginals(schema, real: dict, fake: dict) -> None:
    tab = [v for v in schema.variables if v.kind != "image"]
    if not tab:
        return
    st.subheader("Each variable: data vs model")
    st.caption(
        "A model that fits the data draws every variable as often as the data show it. "
        "Difference 0 means the same distribution, 1 no overlap."
    )
    rows = []
    cols = st.columns(min(3, len(tab)))
    for i, v in enumerate(tab):
        r, f = np.asarray(real[v.name]), np.asarray(fake[v.name])
        with cols[i % len(cols)]:
            st.plotly_chart(
                plots.marginal_figure(
                    r,
                    explain.var_name(v),
                    v.kind,
                    f,
                    ("data", "model"),
                    explain.class_labels(v) if v.kind == "categorical" else None,
                ),
                key=f"chk_marg_{v.name}",
                width="stretch",
            )
            if v.kind == "categorical":
                pr = np.bincount(r, minlength=v.classes) / len(r)
                pf = np.bincount(f, minlength=v.classes) / len(f)
                rows.append(
                    {
                        "variable": v.name,
                        "what": v.label or "",
                        "difference (TVD)": round(tvd(pr, pf), 4),
                        "data": _rounded(pr),
                        "model": _rounded(pf),
                    }
                )
                st.download_button(
                    f"Download {v.name} (PNG)",
                    functools.partial(
                        plots.bar_png,
                        {"data": pr, "model": pf},
                        explain.class_labels(v),
                        f"{explain.var_name(v)}: data vs model",
                    ),
                    file_name=f"marginal_{v.name}.png",
                    mime="image/png",
                    key=f"chk_png_{v.name}",
                )
            else:
                a, b = r.reshape(len(r), -1)[:, 0], f.reshape(len(f), -1)[:, 0]
                rows.append(
                    {
                        "variable": v.name,
                        "what": v.label or "",
                        "difference (TVD)": None,
                        "data": f"average {a.mean():.3f}, spread (sd) {a.std():.3f}",
                        "model": f"average {b.mean():.3f}, spread (sd) {b.std():.3f}",
                    }
                )
    st.dataframe(
        pd.DataFrame(rows).astype({"data": str, "model": str}),
        hide_index=True,
        width="stretch",
        column_config={"difference (TVD)": st.column_config.NumberColumn(help=TVD_HELP)},
    )


def _images(schema, real: dict, fake: dict) -> None:
    imgs = schema.of_kind("image")
    if not imgs:
        return
    cats = schema.of_kind("categorical")
    st.subheader("Images: data vs model")
    for v in imgs:
        name = explain.var_name(schema[v])
        c1, c2 = st.columns(2)
        for col, src, who in ((c1, real, "data"), (c2, fake, "model")):
            grid = plots.image_grid(np.asarray(src[v])[:32], ncol=8, scale=3)
            col.image(grid, caption=f"{name}: {who}")
            col.download_button(
                f"Download {who} grid (PNG)",
                functools.partial(plots.png_bytes, grid),
                file_name=f"{v}_{who}.png",
                mime="image/png",
                key=f"chk_grid_{v}_{who}",
            )
        if cats:
            by = st.selectbox(
                f"Grids of {name}, one per value of",
                cats,
                key=f"chk_by_{v}",
                format_func=lambda c: explain.var_name(schema[c]),
            )
            n_fake = len(fake[v])  # a draw keeps its first images only
            gr = plots.grids_by_class(real[v], real[by], per_class=8)
            gf = plots.grids_by_class(fake[v], np.asarray(fake[by])[:n_fake], per_class=8)
            for c in range(schema[by].classes):
                lab = explain.class_label(schema[by], c)
                c1, c2 = st.columns(2)
                if c in gr:
                    c1.image(gr[c], caption=f"data, {by} = {lab}")
                if c in gf:
                    c2.image(gf[c], caption=f"model, {by} = {lab}")
                else:
                    c2.caption(f"the model drew no image with {by} = {lab}")


def _truth(ctx, ex) -> None:
    schema = ctx["schema"]
    t, y = ex.treatment, ex.outcome
    if t not in schema.names or y not in schema.names:
        return
    tvar, yvar = schema[t], schema[y]
    if tvar.kind != "categorical" or yvar.kind != "categorical":
        return
    st.subheader(f"Distance to the exact truth: {explain.var_name(yvar)} if {t} were set")
    st.caption(
        "The built-in study knows the exact answer. The model's numbers are the ones the "
        "Intervene page shows (the same samples)."
    )
    rows = []
    for x in range(tvar.classes):
        res = answers.distribution(ctx["mid"], ctx["model"], y, {t: x}, None, ctx["interventions"])
        truth = ex.truth(y, {t: x})
        naive = ex.naive(y, {t: x})
        rows.append(
            {
                f"{t} set to": explain.class_label(tvar, x),
                "model": _rounded(res.probs),
                "exact truth": _rounded(truth),
                f"data: cases that had {t}": _rounded(naive),
                "difference model vs truth": round(tvd(res.probs, truth), 4),
                "difference data vs truth": round(tvd(naive, truth), 4),
            }
        )
    st.dataframe(
        pd.DataFrame(rows).astype(
            {"model": str, "exact truth": str, f"data: cases that had {t}": str}
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "difference model vs truth": st.column_config.NumberColumn(help=TVD_HELP),
            "difference data vs truth": st.column_config.NumberColumn(help=TVD_HELP),
        },
        key="chk_truth",
    )
    worst = max(r["difference model vs truth"] for r in rows)
    naive_gap = max(r["difference data vs truth"] for r in rows)
    msg = (
        f"Largest difference from the truth: model {worst:.3f}; the plain comparison of "
        f"cases in the data {naive_gap:.3f}."
    )
    if not ex.identifiable:
        st.warning(
            msg + " This question is not identifiable, so even a model that fits the data "
            "perfectly need not match the truth."
        )
    elif worst <= 0.05:
        st.success(msg)
    else:
        st.info(msg + " Train longer or look at the stage fits on the Train page.")
    series = {
        "model": [r["difference model vs truth"] for r in rows],
        "plain comparison in the data": [r["difference data vs truth"] for r in rows],
    }
    st.download_button(
        "Download distance chart (PNG)",
        functools.partial(
            plots.bar_png,
            series,
            explain.class_labels(tvar),
            f"Difference (TVD) from the exact P({y} | do({t}))",
        ),
        file_name="distance_to_truth.png",
        mime="image/png",
        key="chk_truth_png",
    )


def main() -> None:
    meta = ui.study_page("Checks")
    schema = ui.schema_or_stop(meta)
    study, problems = ui.study_data(meta)
    if study is None or study.observational is None:
        real = [p for p in problems if not p.endswith("(ignored)")]
        if real:
            st.error(
                "The study's data does not fit its graph, so there is nothing to compare "
                "with:\n\n" + "\n".join(f"- {p}" for p in real)
            )
        st.info("The checks compare the model with observational data; this study has none.")
        return
    mid, model = ui.pick_model(meta, schema, "chk_run")
    bundles.study_model_download(meta, st.session_state.get("chk_run"), key="chk_bundle")
    obs = study.observational
    n = min(N_CHECK, obs.n)
    real = {k: np.asarray(v[:n]) for k, v in obs.columns.items()}  # slice first: 8-bit images
    fake = answers.query_draw(mid, model, {}).samples
    _marginals(schema, real, fake)
    _images(schema, real, fake)
    ex = ui.example_or_none(meta)
    if ex is not None and ex.study.schema.same_structure(schema):
        ctx = {
            "schema": schema,
            "mid": mid,
            "model": model,
            "interventions": list(study.interventions),
        }
        _truth(ctx, ex)
    fidelity_view.section(mid, ui.data_key(meta), model, study, fake)


ui.guard(main)
