"""Checks: real versus generated samples side by side, per-variable marginals with TVD,
per-class image grids, and for built-in studies the distance to the exact interventional truth.
Plots and image grids download as PNG."""

import numpy as np
import pandas as pd
import streamlit as st

from mdcm_app import answers, plots, ui

N_CHECK = 2000


def _tvd(p, q) -> float:
    return float(0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def _marginals(schema, real: dict, fake: dict) -> None:
    st.subheader("Marginals: data vs model")
    rows = []
    tab = [v for v in schema.variables if v.kind != "image"]
    cols = st.columns(min(3, max(1, len(tab))))
    for i, v in enumerate(tab):
        r, f = np.asarray(real[v.name]), np.asarray(fake[v.name])
        with cols[i % len(cols)]:
            st.plotly_chart(
                plots.marginal_figure(r, v.name, v.kind, f, ("data", "model")),
                key=f"chk_marg_{v.name}",
                width="stretch",
            )
            if v.kind == "categorical":
                pr = np.bincount(r, minlength=v.classes) / len(r)
                pf = np.bincount(f, minlength=v.classes) / len(f)
                rows.append(
                    {
                        "variable": v.name,
                        "kind": v.kind,
                        "TVD": round(_tvd(pr, pf), 4),
                        "data": np.round(pr, 3).tolist(),
                        "model": np.round(pf, 3).tolist(),
                    }
                )
                st.download_button(
                    f"Download {v.name} (PNG)",
                    plots.bar_png(
                        {"data": pr, "model": pf},
                        [str(k) for k in range(v.classes)],
                        f"P({v.name}): data vs model",
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
                        "kind": v.kind,
                        "TVD": None,
                        "data": f"mean {a.mean():.3f}, sd {a.std():.3f}",
                        "model": f"mean {b.mean():.3f}, sd {b.std():.3f}",
                    }
                )
    if rows:
        st.dataframe(
            pd.DataFrame(rows).astype({"data": str, "model": str}), hide_index=True, width="stretch"
        )


def _images(schema, real: dict, fake: dict) -> None:
    imgs = schema.of_kind("image")
    if not imgs:
        return
    cats = schema.of_kind("categorical")
    st.subheader("Images: data vs model")
    for v in imgs:
        c1, c2 = st.columns(2)
        for col, src, name in ((c1, real, "data"), (c2, fake, "model")):
            grid = plots.image_grid(np.asarray(src[v])[:32], ncol=8, scale=3)
            col.image(grid, caption=f"{v}: {name}")
            col.download_button(
                f"Download {name} grid (PNG)",
                plots.png_bytes(grid),
                file_name=f"{v}_{name}.png",
                mime="image/png",
                key=f"chk_grid_{v}_{name}",
            )
        if cats:
            by = st.selectbox(f"Per-class grids of {v}, grouped by", cats, key=f"chk_by_{v}")
            gr = plots.grids_by_class(real[v], real[by], per_class=8)
            gf = plots.grids_by_class(fake[v], fake[by], per_class=8)
            for c in range(schema[by].classes):
                c1, c2 = st.columns(2)
                if c in gr:
                    c1.image(gr[c], caption=f"data, {by} = {c}")
                if c in gf:
                    c2.image(gf[c], caption=f"model, {by} = {c}")
                else:
                    c2.caption(f"model produced no sample with {by} = {c}")


def _truth(model, rid, ex) -> None:
    schema = ex.study.schema
    t, y = ex.treatment, ex.outcome
    if schema[t].kind != "categorical" or schema[y].kind != "categorical":
        return
    st.subheader(f"Distance to the exact truth: P({y} | do({t}))")
    rows = []
    for x in range(schema[t].classes):
        res = answers.distribution(rid, f"{t}={x}|truth", model, y, {t: x}, (), ())
        truth = ex.truth(y, {t: x})
        naive = ex.naive(y, {t: x})
        rows.append(
            {
                f"do({t})": x,
                "model": np.round(res.probs, 3).tolist(),
                "exact truth": np.round(truth, 3).tolist(),
                "naive P(y | x)": np.round(naive, 3).tolist(),
                "TVD model vs truth": round(_tvd(res.probs, truth), 4),
                "TVD naive vs truth": round(_tvd(naive, truth), 4),
            }
        )
    df = pd.DataFrame(rows)
    st.dataframe(
        df.astype({"model": str, "exact truth": str, "naive P(y | x)": str}),
        hide_index=True,
        width="stretch",
    )
    worst = max(r["TVD model vs truth"] for r in rows)
    naive_gap = max(r["TVD naive vs truth"] for r in rows)
    msg = f"Largest distance to the truth: model {worst:.3f}, naive conditional {naive_gap:.3f}."
    if not ex.identifiable:
        st.warning(
            msg + " This query is not identifiable, so even a perfect fit need not match the truth."
        )
    elif worst <= 0.05:
        st.success(msg)
    else:
        st.info(msg + " Train longer or check the stage fits on the Train page.")
    series = {
        "model": [r["TVD model vs truth"] for r in rows],
        "naive": [r["TVD naive vs truth"] for r in rows],
    }
    st.download_button(
        "Download distance chart (PNG)",
        plots.bar_png(
            series, [str(r[f"do({t})"]) for r in rows], f"TVD to the exact P({y} | do({t}))"
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
    rid, model = ui.pick_model(meta, schema, "chk_run")
    obs = study.observational
    n = min(N_CHECK, obs.n)
    real = {k: np.asarray(v)[:n] for k, v in obs.columns.items()}
    fake = answers.samples(rid, f"obs|{n}", model, {}, n=n, seed=1)
    _marginals(schema, real, fake)
    _images(schema, real, fake)
    ex = ui.example_or_none(meta)
    if ex is not None and ex.study.schema.to_json() == schema.to_json():
        _truth(model, rid, ex)


ui.guard(main)
