"""Graph & plan: draw the causal graph on a canvas (or type it, or use the forms), set variable
kinds, see the training plan (Modular-DCM stages, rules R1-R3) and its stage dependency graph.
The canvas, the text form and the plan follow every edit."""

import json

import streamlit as st

from mdcm.graph import GraphError
from mdcm.plan import PlanError, describe_stage, make_plan
from mdcm.variables import KINDS, SchemaError
from mdcm_app import graphview, state, ui
from mdcm_app.canvas import graph_canvas

EDGE_TYPES = {"->": "→ causes (directed)", "<->": "↔ hidden confounder (bidirected)"}


# ---------------------------------------------------------------------- callbacks
def _meta() -> state.StudyMeta:
    return state.load_meta(st.session_state["study_id"])


@ui.safe_callback
def _apply_graph(new_graph, notice: str) -> None:
    meta = _meta()
    positions = graphview.node_positions(new_graph, meta.positions)
    _apply_graph_positions(meta, graphview.CanvasEdit(new_graph, positions, notice, True), notice)


@ui.safe_callback
def _edit(fn, notice: str) -> None:
    """Run one click edit on the stored graph; errors are kept for inline display."""
    try:
        graph, err = state.graph_or_error(_meta().graph_text)
        if graph is None:
            raise GraphError(f"the stored graph is invalid ({err}); fix the text first")
        _apply_graph(fn(graph), notice)
    except GraphError as exc:
        st.session_state["graph_error"] = str(exc)
        st.session_state["graph_notice"] = ""


@ui.safe_callback
def _on_canvas() -> None:
    """One finished gesture on the canvas: check it, store graph and positions, or keep the
    reason it was refused for display next to the canvas."""
    edit = (st.session_state.get("graph_canvas") or {}).get("edit")
    if not isinstance(edit, dict):
        return
    st.session_state["graph_canvas_ack"] = edit.get("seq")
    meta = _meta()
    graph, err = state.graph_or_error(meta.graph_text)
    if graph is None:
        st.session_state["graph_error"] = f"the stored graph is invalid ({err}); fix the text first"
        st.session_state["graph_notice"] = ""
        return
    try:
        res = graphview.apply_canvas_edit(
            graph, graphview.node_positions(graph, meta.positions), edit
        )
    except GraphError as exc:
        st.session_state["graph_error"] = str(exc)
        st.session_state["graph_notice"] = ""
        return
    if res.graph_changed:
        _apply_graph_positions(meta, res, res.notice)
    else:
        state.set_positions(meta, res.positions)


def _apply_graph_positions(meta: state.StudyMeta, res: graphview.CanvasEdit, notice: str) -> None:
    state.update_graph(meta, res.graph, positions=res.positions)
    st.session_state["graph_text"] = res.graph.to_text()
    st.session_state["graph_error"] = ""
    st.session_state["graph_text_error"] = ""
    st.session_state["graph_notice"] = notice


@ui.safe_callback
def _add_variable() -> None:
    name = (st.session_state.get("graph_new_var") or "").strip()
    _edit(lambda g: graphview.add_variable(g, name), f"added variable `{name}`")
    if not st.session_state.get("graph_error"):
        st.session_state["graph_new_var"] = ""


@ui.safe_callback
def _add_edge() -> None:
    a = st.session_state.get("graph_edge_from")
    b = st.session_state.get("graph_edge_to")
    kind = st.session_state.get("graph_edge_type", "->")
    _edit(lambda g: graphview.add_edge(g, a, b, kind), f"added edge `{a} {kind} {b}`")


@ui.safe_callback
def _remove_edge(a: str, kind: str, b: str) -> None:
    _edit(lambda g: graphview.remove_edge(g, a, b, kind), f"removed edge `{a} {kind} {b}`")


@ui.safe_callback
def _remove_variable(v: str) -> None:
    _edit(lambda g: graphview.remove_variable(g, v), f"removed variable `{v}`")


@ui.safe_callback
def _apply_text() -> None:
    text = st.session_state.get("graph_text", "")
    graph, err = state.graph_or_error(text)
    if graph is None:
        st.session_state["graph_text_error"] = err
        return
    if not graph.nodes:
        st.session_state["graph_text_error"] = "the graph is empty: name at least one variable"
        return
    old = _meta()
    meta = state.update_graph(old, graph, positions=graphview.node_positions(graph, old.positions))
    st.session_state["graph_text_error"] = ""
    st.session_state["graph_error"] = ""
    st.session_state["graph_notice"] = f"graph updated from text ({len(meta.variables)} variables)"


@ui.safe_callback
def _set_kind(v: str) -> None:
    kind = st.session_state.get(f"graph_kind_{v}")
    meta = _meta()
    old = dict(meta.variables.get(v, state.DEFAULT_VARIABLE))
    try:
        if kind == "categorical":
            spec = {
                "kind": kind,
                "classes": int(
                    st.session_state.get(f"graph_classes_{v}") or old.get("classes") or 2
                ),
            }
        elif kind == "continuous":
            spec = {"kind": kind, "shape": [int(st.session_state.get(f"graph_dim_{v}") or 1)]}
        else:
            raw = st.session_state.get(f"graph_shape_{v}") or "1x28x28"
            try:
                shape = [int(s) for s in raw.lower().replace(",", "x").split("x") if s.strip()]
            except ValueError:
                raise SchemaError(
                    f"variable {v!r}: image shape {raw!r} must look like "
                    "3x14x14 (channels x height x width)"
                ) from None
            spec = {"kind": kind, "shape": shape}
        state.set_variable(meta, v, spec)
        st.session_state[f"graph_kind_error_{v}"] = ""
    except SchemaError as exc:
        st.session_state[f"graph_kind_error_{v}"] = str(exc)


# ---------------------------------------------------------------------- layout
def _canvas(meta: state.StudyMeta, graph) -> None:
    """The canvas editor, with the outcome of the last edit right under it."""
    kinds = {v: meta.variables.get(v, {}).get("kind", "") for v in graph.nodes}
    data = graphview.canvas_data(graph, graphview.node_positions(graph, meta.positions), kinds)
    data["ack"] = st.session_state.get("graph_canvas_ack")
    if ui.study_models(meta):
        st.caption(
            "This study has trained models: changing the graph or a variable's kind means "
            "training again."
        )
    graph_canvas(data, key="graph_canvas", on_edit=_on_canvas)
    stale = ui.stale_reason(meta)
    if st.session_state.get("graph_error"):
        st.error(st.session_state["graph_error"], icon=":material/block:")
    elif st.session_state.get("graph_notice"):
        st.success(st.session_state["graph_notice"], icon=":material/check_circle:")
    if stale:
        st.warning(f"Needs retraining: {stale}.", icon=":material/update:")
    st.caption(
        "Solid arrows: causes. Dashed red double arrows: hidden confounders (an unseen common "
        "cause). Variables of one color are linked by hidden confounders, so their models "
        "train together (a c-component)."
    )


def _forms(graph) -> None:
    """The same edits with forms (keyboard and screen-reader friendly)."""
    st.markdown("**Add a variable**")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c1.text_input(
        "Variable name", key="graph_new_var", placeholder="e.g. Z", label_visibility="collapsed"
    )
    c2.button("Add variable", key="graph_add_var", on_click=_add_variable, width="stretch")
    st.markdown("**Add an edge**")
    nodes = list(graph.nodes)
    e1, e2, e3 = st.columns([2, 3, 2])
    e1.selectbox("From", nodes, key="graph_edge_from")
    e2.selectbox("Type", list(EDGE_TYPES), key="graph_edge_type", format_func=EDGE_TYPES.get)
    e3.selectbox("To", nodes, key="graph_edge_to", index=min(1, len(nodes) - 1) if nodes else None)
    st.button(
        "Add edge",
        key="graph_add_edge",
        on_click=_add_edge,
        type="primary",
        disabled=len(nodes) < 2,
    )
    edges = graphview.edge_list(graph)
    st.markdown(f"**Edges ({len(edges)}) and variables ({len(graph.nodes)})**")
    for a, kind, b in edges:
        r1, r2 = st.columns([5, 1], vertical_alignment="center")
        r1.markdown(f"`{a} {kind} {b}`" + (" (hidden confounder)" if kind == "<->" else ""))
        tag = "d" if kind == "->" else "b"
        r2.button(
            "",
            icon=":material/delete:",
            help=f"Remove {a} {kind} {b}",
            key=f"graph_rm_edge_{tag}_{a}_{b}",
            on_click=_remove_edge,
            args=(a, kind, b),
        )
    for v in graph.nodes:
        r1, r2 = st.columns([5, 1], vertical_alignment="center")
        r1.markdown(f"variable `{v}`")
        r2.button(
            "",
            icon=":material/delete:",
            help=f"Remove variable {v} and its edges",
            key=f"graph_rm_var_{v}",
            on_click=_remove_variable,
            args=(v,),
            disabled=len(graph.nodes) <= 1,
        )


def _kinds(meta: state.StudyMeta, graph) -> None:
    st.markdown("**Variable kinds**")
    for v in graph.nodes:
        spec = dict(meta.variables.get(v, state.DEFAULT_VARIABLE))
        c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="bottom")
        c1.markdown(f"**{v}**")
        kind_key = f"graph_kind_{v}"
        if kind_key not in st.session_state:
            st.session_state[kind_key] = spec.get("kind", "categorical")
        c2.selectbox(
            f"Kind of {v}",
            KINDS,
            key=kind_key,
            on_change=_set_kind,
            args=(v,),
            label_visibility="collapsed",
        )
        kind = st.session_state[kind_key]
        if kind == "categorical":
            key = f"graph_classes_{v}"
            if key not in st.session_state:
                st.session_state[key] = int(spec.get("classes") or 2)
            c3.number_input(
                f"Classes of {v}",
                min_value=2,
                max_value=1000,
                step=1,
                key=key,
                on_change=_set_kind,
                args=(v,),
            )
        elif kind == "continuous":
            key = f"graph_dim_{v}"
            if key not in st.session_state:
                st.session_state[key] = int((spec.get("shape") or [1])[0])
            c3.number_input(
                f"Dimension of {v}",
                min_value=1,
                max_value=64,
                step=1,
                key=key,
                on_change=_set_kind,
                args=(v,),
            )
        else:
            key = f"graph_shape_{v}"
            if key not in st.session_state:
                shp = spec.get("shape") if spec.get("kind") == "image" else [1, 28, 28]
                st.session_state[key] = "x".join(str(s) for s in shp)
            c3.text_input(
                f"Image shape of {v} (C x H x W)", key=key, on_change=_set_kind, args=(v,)
            )
        if st.session_state.get(f"graph_kind_error_{v}"):
            st.error(st.session_state[f"graph_kind_error_{v}"])


def _md(text: str) -> str:
    """Plain plan text as markdown: variable names may hold '_' (or '*')."""
    return text.replace("\\", "\\\\").replace("_", "\\_").replace("*", "\\*")


def _plan(meta: state.StudyMeta, graph) -> None:
    st.subheader("Training plan")
    study, _ = ui.study_data(meta)
    interventions = (
        [r for r in study.interventions if r <= set(graph.nodes)] if study is not None else []
    )
    mode = st.radio(
        "Plan",
        ["modular", "joint"],
        key="graph_plan_mode",
        horizontal=True,
        format_func={
            "modular": "Modular (Modular-DCM: stage by stage)",
            "joint": "Joint (one stage, NCM-style baseline)",
        }.get,
    )
    try:
        plan = make_plan(graph, interventions, joint=(mode == "joint"))
    except PlanError as exc:
        st.error(f"No plan: {exc}")
        return
    st.markdown(f"**{_md(plan.summary())}**")
    with st.expander("In technical terms"):
        st.code(plan.describe(technical=True), language=None)
    missing = ui.variables_without_data(meta)
    for s in plan.stages:
        d = describe_stage(plan, s).plain
        with st.container(border=True):
            st.markdown(f"**{_md(d.title)}**")
            for v in (v for v in s.trains if v in missing):
                st.warning(
                    f"No data yet for {_md(v)}: upload a dataset with a column {_md(v)} on the "
                    f"Data page, or remove {_md(v)} from the graph.",
                    icon=":material/database:",
                )
            for line in d.data:
                st.markdown(f"- {_md(line)}")
            for i, note in enumerate(d.notes):  # the last note of a plain conditional: reuse
                reuse = s.is_conditional and not plan.joint and i == len(d.notes) - 1
                (st.info if reuse else st.warning)(_md(note))
                if reuse:
                    ui.page_link("train", "Pick a trained mechanism on the Train page")
            if d.why:
                st.caption("Why: " + "; ".join(_md(w) for w in d.why) + ".")
    st.markdown(
        "**Stage dependency graph** (an arrow: the later stage uses what the earlier one "
        "trained, held fixed)"
    )
    st.iframe(graphview.plan_dependency_html(plan.stages, height=220), height=265)
    st.download_button(
        "Download plan (JSON)",
        json.dumps(plan.to_json(), indent=2),
        file_name="plan.json",
        mime="application/json",
        key="graph_plan_download",
    )
    schema, _ = state.schema_or_error(meta)
    if schema is not None:
        st.subheader("Can the data answer a question?")
        ui.verdict_panel(meta, schema, interventions)


def main() -> None:
    meta = ui.study_page("Causal graph and training plan")
    if "graph_text" not in st.session_state or st.session_state.get("graph_for") != meta.study_id:
        st.session_state["graph_text"] = meta.graph_text.replace("; ", "\n")
        st.session_state["graph_for"] = meta.study_id
    graph, err = state.graph_or_error(meta.graph_text)
    left, right = st.columns([3, 2], gap="large")
    with left:
        if graph is None:
            st.error(f"The stored graph is invalid: {err}. Fix the text form on the right.")
        else:
            _canvas(meta, graph)
            with st.expander("Edit with forms instead (keyboard)", key="graph_forms"):
                _forms(graph)
    with right:
        st.markdown(
            "**Text form** (`A -> B`, `A <-> B` for a hidden confounder; `;` or new "
            "lines between statements)"
        )
        st.text_area(
            "Graph text",
            key="graph_text",
            height=150,
            on_change=_apply_text,
            label_visibility="collapsed",
        )
        st.button("Apply text", key="graph_apply_text", on_click=_apply_text)
        if st.session_state.get("graph_text_error"):
            st.error(
                f"Graph text not applied: {st.session_state['graph_text_error']}",
                icon=":material/block:",
            )
        if graph is not None:
            _kinds(meta, graph)
    if graph is None:
        return
    if not graph.nodes:
        st.info("Draw at least one variable to see the training plan.")
        return
    _plan(state.load_meta(meta.study_id), graph)


ui.guard(main)
