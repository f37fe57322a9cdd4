"""Data: the built-in study's data or your uploads (zip of a dataset folder, CSV + zip of images,
MedMNIST .npz), interventional datasets with their targets, previews, image grids per class,
marginals and pairwise plots, and every validation problem listed."""

import pandas as pd
import streamlit as st

from mdcm_app import auth, plots, state, ui

UPLOAD_KINDS = {
    "zip": "Zip of a dataset folder (data.csv, images, optional intervention.json)",
    "csv": "CSV file plus a zip of its images",
    "npz": "MedMNIST .npz (images + labels)",
}


@ui.safe_callback
def _import() -> None:
    """Import button callback: save raw files first, then validate and store the dataset."""
    from mdcm.data import DataError
    from mdcm_app import uploads

    sid = st.session_state["study_id"]
    meta = state.load_meta(sid)
    st.session_state["data_problems"] = []
    st.session_state["data_notice"] = ""
    schema, err = state.schema_or_error(meta)
    if schema is None:
        st.session_state["data_problems"] = [f"fix the graph first: {err}"]
        return
    kind = st.session_state.get("data_kind", "zip")
    name = (st.session_state.get("data_name") or "").strip()
    try:
        do = uploads.parse_do(st.session_state.get("data_do", ""), schema)
        picked = {
            key: st.session_state[key]
            for key in {
                "zip": ["data_zip"],
                "csv": ["data_csv", "data_images_zip"],
                "npz": ["data_npz"],
            }[kind]
            if st.session_state.get(key) is not None
        }
        # storage quota (nothing is written when over it) and the audit log
        state.admit_upload(sid, {k: (f.name, f.getvalue()) for k, f in picked.items()})
        files = {key: uploads.store_raw(sid, f.name, f.getvalue()) for key, f in picked.items()}
        if kind == "zip":
            if "data_zip" not in files:
                raise DataError("choose a .zip file first")
            ds = uploads.import_dataset_zip(sid, schema, files["data_zip"], name, do)
        elif kind == "csv":
            if "data_csv" not in files:
                raise DataError("choose a CSV file first")
            ds = uploads.import_csv_images(
                sid, schema, files["data_csv"], files.get("data_images_zip"), name, do
            )
        else:
            if "data_npz" not in files:
                raise DataError("choose a .npz file first")
            ds = uploads.import_npz(
                sid,
                schema,
                files["data_npz"],
                name,
                split=st.session_state.get("data_npz_split", "train"),
                image_var=st.session_state.get("data_npz_image"),
                label_var=st.session_state.get("data_npz_label"),
            )
    except (DataError, ValueError, OSError) as exc:
        st.session_state["data_problems"] = [str(exc)]
        return
    regime = (
        "observational"
        if not ds.do
        else "do(" + ", ".join(f"{k}={v}" for k, v in ds.do.items()) + ")"
    )
    st.session_state["data_notice"] = f"Added dataset {ds.name!r}: {ds.n} rows, {regime}."


@ui.safe_callback
def _delete(name: str) -> None:
    from mdcm_app import uploads

    uploads.delete_dataset(st.session_state["study_id"], name)
    auth.audit("delete", what="dataset", study=st.session_state["study_id"], name=name)
    st.session_state["data_notice"] = f"Deleted dataset {name!r}."


def _overview(meta, study, problems) -> None:
    uploaded = {p.name for p in (state.study_dir(meta.study_id) / "study").glob("*") if p.is_dir()}
    if study is None:
        st.info("This study has no usable data yet: upload a dataset below.")
    else:
        rows = [
            {
                "dataset": d.name,
                "regime": "observational"
                if not d.do
                else "do(" + ", ".join(f"{k}={v}" for k, v in d.do.items()) + ")",
                "rows": d.n,
                "source": "uploaded" if d.name in uploaded else "built-in",
            }
            for d in study.datasets
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        for name in sorted(uploaded):
            st.button(
                f"Delete uploaded dataset {name}",
                key=f"data_delete_{name}",
                on_click=_delete,
                args=(name,),
            )
    real = [p for p in problems if not p.endswith("(ignored)")]
    notes = [p for p in problems if p.endswith("(ignored)")]
    if real:
        st.error("**Validation problems**\n\n" + "\n".join(f"- {p}" for p in real))
    if notes:
        st.caption("Notes: " + "; ".join(notes))


def _explore(study) -> None:
    schema = study.schema
    kinds = {v.name: v.kind for v in schema.variables}
    names = [d.name for d in study.datasets]
    dname = st.selectbox("Dataset", names, key="data_view")
    ds = study.dataset(dname)
    st.markdown(f"**Preview** (first 20 of {ds.n} rows)")
    frame, images = _preview_frame(ds.columns, kinds, 20)
    st.dataframe(
        frame,
        width="stretch",
        hide_index=False,
        column_config={v: st.column_config.ImageColumn(v, width="small") for v in images},
        row_height=56 if images else None,
    )
    images = schema.of_kind("image")
    cats = schema.of_kind("categorical")
    if images:
        st.markdown("**Image grids per class**")
        g1, g2 = st.columns(2)
        img_var = g1.selectbox("Image variable", images, key="data_grid_image")
        by = g2.selectbox("Group by", cats or ["(none)"], key="data_grid_by")
        if by in ds.columns:
            for c, grid in plots.grids_by_class(ds.columns[img_var], ds.columns[by]).items():
                st.image(grid, caption=f"{img_var} where {by} = {c}")
        else:
            st.image(plots.image_grid(ds.columns[img_var][:16], ncol=16, scale=3))
    tab = [v for v in schema.variables if v.kind != "image"]
    if tab:
        st.markdown("**Marginals**")
        cols = st.columns(min(3, len(tab)))
        for i, v in enumerate(tab):
            with cols[i % len(cols)]:
                st.plotly_chart(
                    plots.marginal_figure(ds.columns[v.name], v.name, v.kind),
                    key=f"data_marg_{v.name}",
                    width="stretch",
                )
    if len(tab) >= 2:
        st.markdown("**Pairwise**")
        p1, p2 = st.columns(2)
        tnames = [v.name for v in tab]
        x = p1.selectbox("x", tnames, key="data_pair_x")
        y = p2.selectbox("y", tnames, index=1, key="data_pair_y")
        if x != y:
            st.plotly_chart(
                plots.pairwise_figure(ds.columns[x], ds.columns[y], x, y, kinds[x], kinds[y]),
                key="data_pair_fig",
                width="stretch",
            )
        else:
            st.caption("Pick two different variables.")


def _preview_frame(columns, kinds, n: int) -> tuple[pd.DataFrame, list[str]]:
    """The first ``n`` rows as a table, each image as a thumbnail (a PNG data URL for
    ``st.column_config.ImageColumn``); returns the table and its image columns."""
    import base64

    import numpy as np

    images = [v for v in columns if kinds.get(v) == "image"]
    table = plots.preview_rows({k: c for k, c in columns.items() if k not in images}, kinds, n)
    for v in images:
        pics = np.asarray(columns[v][:n])
        table[v] = [
            "data:image/png;base64,"
            + base64.b64encode(
                plots.png_bytes(
                    plots.image_grid(p[None], ncol=1, scale=max(1, 48 // p.shape[-1]), pad=0)
                )
            ).decode()
            for p in pics
        ]
    order = [c for v in columns for c in table if c == v or c.startswith(f"{v}[")]
    return pd.DataFrame({c: table[c] for c in order}), images


def _upload(meta) -> None:
    schema, err = state.schema_or_error(meta)
    st.radio(
        "What are you uploading?", list(UPLOAD_KINDS), key="data_kind", format_func=UPLOAD_KINDS.get
    )
    kind = st.session_state.get("data_kind", "zip")
    if kind == "zip":
        st.file_uploader("Dataset folder as .zip", type=["zip"], key="data_zip")
    elif kind == "csv":
        st.file_uploader(
            "data.csv (one column per variable; image columns hold file paths)",
            type=["csv"],
            key="data_csv",
        )
        st.file_uploader("Images as .zip (optional)", type=["zip"], key="data_images_zip")
    else:
        st.file_uploader("MedMNIST .npz", type=["npz"], key="data_npz")
        n1, n2, n3 = st.columns(3)
        n1.selectbox("Split", ["train", "val", "test"], key="data_npz_split")
        names = list(schema.names) if schema else []
        n2.selectbox("Images go to", names, key="data_npz_image")
        n3.selectbox(
            "Labels go to",
            names,
            key="data_npz_label",
            index=min(1, len(names) - 1) if names else None,
        )
    c1, c2 = st.columns(2)
    c1.text_input(
        "Dataset name",
        key="data_name",
        value="uploaded",
        help="A folder name: letters, digits, '_' or '-'",
    )
    c2.text_input(
        "Intervention targets (empty = observational)",
        key="data_do",
        placeholder="e.g. X=1",
        help="The variables set by the experiment, NAME=VALUE",
    )
    st.button("Import dataset", key="data_import", on_click=_import, type="primary")
    for p in st.session_state.get("data_problems") or []:
        st.error(f"Upload refused: {p}", icon=":material/block:")
    if st.session_state.get("data_problems"):
        st.caption(
            "The uploaded file is kept in the study's uploads folder; fix it and upload again."
        )
    if st.session_state.get("data_notice"):
        st.success(st.session_state["data_notice"])
    if schema is not None:
        st.caption(
            "Expected columns: "
            + ", ".join(
                f"`{v.name}` ({v.kind}{', ' + str(v.classes) + ' classes' if v.classes else ''})"
                for v in schema.variables
            )
        )


def main() -> None:
    meta = ui.study_page("Data")
    study, problems = ui.study_data(meta)
    _overview(meta, study, problems)
    explore, upload = st.tabs(["Explore", "Upload"])
    with explore:
        if study is not None:
            _explore(study)
        else:
            st.caption("Nothing to show yet.")
    with upload:
        _upload(meta)


ui.guard(main)
