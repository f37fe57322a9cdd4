"""Home: what the tool answers, pick a built-in study or start a new one, current study at a
glance. A first visit opens the default built-in study (colored digits), so graph, data and the
Train button are there without a click."""

import streamlit as st
from streamlit.errors import StreamlitAPIException

from mdcm_app import bundles, graphview, plots, state, ui

DEFAULT_EXAMPLE = "colored_digits"


def _open_default_study() -> None:
    """A session that names no study opens the default built-in one: the newest existing copy,
    else a new one. A link naming a study that does not exist is left alone (the page says so)."""
    if st.session_state.get("study_id") or st.query_params.get("study"):
        return
    if st.session_state.get("home_default_done"):
        return  # once per session: a user who closed the study is not pushed back into it
    st.session_state["home_default_done"] = True
    try:
        meta = _copy_of(DEFAULT_EXAMPLE, fresh=False)
    except Exception as exc:  # noqa: BLE001 - shown inline; the page still works
        st.session_state["home_error"] = f"Could not open the default study: {exc}"
        return
    ui.set_current_study(meta)


def _copy_of(example: str, *, fresh: bool) -> state.StudyMeta:
    """The newest existing copy of a built-in study (studies are newest first), else — or with
    ``fresh`` — a new one."""
    old = None if fresh else next((m for m in state.list_studies() if m.example == example), None)
    return old or state.new_study(example=example)


@ui.safe_callback
def _open_example() -> None:
    name = st.session_state.get("home_example")
    try:
        meta = _copy_of(name, fresh=bool(st.session_state.get("home_fresh_copy")))
    except Exception as exc:  # noqa: BLE001 - shown inline next to the button
        st.session_state["home_error"] = f"Could not open the built-in study {name!r}: {exc}"
        return
    ui.set_current_study(meta)
    st.session_state["home_error"] = ""


@ui.safe_callback
def _new_empty() -> None:
    title = (st.session_state.get("home_new_title") or "").strip() or "New study"
    meta = state.new_study(example=None, title=title, graph_text="", variables={})
    ui.set_current_study(meta)
    st.session_state["home_error"] = ""


@ui.safe_callback
def _open_recent() -> None:
    sid = st.session_state.get("home_recent")
    if sid:
        ui.set_current_study(state.load_meta(sid))


def main() -> None:
    _open_default_study()
    st.title("mdcm: causal questions about data with images")
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.markdown(
            "**What would happen to an outcome if we *made* a variable take a value** (a "
            "treatment, a label, even an image), when hidden factors confound what we observe? "
            "mdcm learns one generator per variable wired like your causal graph (Modular-DCM, "
            "Rahman & Kocaoglu, ICML 2024), trains it stage by stage, and then answers such "
            "interventional questions by sampling, telling you when the data cannot answer."
        )
        st.markdown(
            "1. **Graph**: draw the causal graph and see the training plan  \n"
            "2. **Data**: use built-in data or upload yours  \n"
            "3. **Train**: train in the background  \n"
            "4. **Intervene** and **Checks**: ask questions, check the model"
        )
    with right:
        st.image(
            plots.hero_picture(),
            caption="A front-door study: digit D drives an image I, "
            "the image drives an attribute A, and a hidden factor (dashed) drives D and A.",
            width="stretch",
        )

    st.subheader("Pick a study")
    names = plots.example_names()
    c1, c2, c3 = st.columns(3, gap="medium")
    with c1:
        st.selectbox(
            "Built-in study",
            names,
            key="home_example",
            format_func=lambda n: state.BUILTIN_TITLES.get(n, n),
        )
        st.caption(plots.example_description(st.session_state.get("home_example") or names[0]))
        st.button(
            "Open built-in study", key="home_open_example", on_click=_open_example, type="primary"
        )
        st.checkbox(
            "Start a fresh copy",
            key="home_fresh_copy",
            help="Otherwise the copy you opened last (with its edits, data and runs) reopens",
        )
        if st.session_state.get("home_error"):
            st.error(st.session_state["home_error"])
    with c2:
        st.text_input("New study title", key="home_new_title", placeholder="My study")
        st.button("Start a new study", key="home_new", on_click=_new_empty)
        st.caption("Starts empty: draw your graph on the Graph page's canvas, then upload data.")
    with c3:
        studies = state.list_studies()
        if studies:
            st.selectbox(
                "Recent studies",
                [m.study_id for m in studies],
                key="home_recent",
                format_func=lambda s: next(f"{m.title} ({s})" for m in studies if m.study_id == s),
            )
            st.button("Open", key="home_open_recent", on_click=_open_recent)
        else:
            st.caption("No saved studies yet.")

    meta = ui.current_study()
    ui.sidebar(meta)
    st.divider()
    if meta is None:
        st.info("No study open: pick a built-in study above to start.")
        return
    st.subheader(f"Current study: {meta.title}")
    summary = ui.study_summary(meta)
    cols = st.columns(3)
    for col, key in zip(cols, ("Graph", "Data", "Model"), strict=True):
        with col, st.container(border=True):
            st.markdown(f"**{key}**")
            st.write(summary[key])
    graph, err = state.graph_or_error(meta.graph_text)
    if graph is not None:
        kinds = {v: meta.variables.get(v, {}).get("kind", "") for v in graph.nodes}
        st.iframe(graphview.graph_html(graph, kinds, height=300), height=345)
    else:
        st.error(f"The stored graph is invalid: {err}")
    n1, n2, n3 = st.columns(3)
    with n1:
        ui.page_link("graph", "Edit the graph and see the plan", ":material/hub:")
    with n2:
        if st.button(
            "Train this study", key="home_train", type="primary", icon=":material/model_training:"
        ):
            _switch("train")
    with n3:
        ui.page_link("intervene", "Ask an interventional question", ":material/tune:")
    _data_glimpse(meta)
    with st.expander("Add a trained model to this study (a model bundle)"):
        bundles.bundle_upload()


def _switch(page: str) -> None:
    try:
        st.switch_page(ui.PAGES[page])
    except StreamlitAPIException:  # AppTest running this page file on its own
        st.session_state["home_error"] = "open the Train page from the menu"


def _data_glimpse(meta: state.StudyMeta) -> None:
    """A few images of the study's data (the first dataset), so the data is seen at once."""
    study, _ = ui.study_data(meta)
    if study is None:
        return
    ds = study.datasets[0]
    for v in study.schema.of_kind("image"):
        st.image(
            plots.image_grid(ds.columns[v][:24], ncol=24, scale=2),
            caption=f"{v}: the first images of dataset {ds.name!r} ({ds.n} rows)",
        )


ui.guard(main)
