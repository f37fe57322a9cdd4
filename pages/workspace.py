"""Workspace: what is yours on this server. Storage used against your quota, your studies and
their runs (open, delete), the training queue, and the studies a teacher published to the class
(open a copy of your own; teachers publish and withdraw them). Everything listed here comes from
your own folder (mdcm_app.workspace), so nothing of anyone else's can be picked."""

import time

import pandas as pd
import streamlit as st

from mdcm.runs import RunError
from mdcm_app import auth, runs_view, state, ui, workspace


def _notice(text: str) -> None:
    st.session_state["ws_notice"] = text


@ui.safe_callback
def _open(sid: str) -> None:
    ui.set_current_study(state.load_meta(sid))
    _notice(f"Opened study {sid}.")


@ui.safe_callback
def _delete_study(sid: str) -> None:
    if not st.session_state.get("ws_confirm"):
        _notice("Tick 'yes, delete' first: a deleted study cannot be brought back.")
        return
    try:
        runs_view.delete_study(sid)
    except (RunError, ValueError, OSError) as exc:
        _notice(f"Could not delete study {sid}: {exc}")
        return
    if st.session_state.get("study_id") == sid:
        for key in ("study_id", "run_id"):
            st.session_state.pop(key, None)
        st.query_params.clear()
    st.session_state["ws_confirm"] = False
    _notice(f"Deleted study {sid} with its data and runs.")


@ui.safe_callback
def _delete_run(sid: str) -> None:
    rid = st.session_state.get("ws_run")
    if not rid:
        return
    try:
        runs_view.delete_run(sid, rid)
    except (RunError, ValueError, OSError) as exc:
        _notice(f"Could not delete run {rid}: {exc}")
        return
    if st.session_state.get("run_id") == rid:
        st.session_state.pop("run_id", None)
        st.query_params.pop("run", None)
    _notice(f"Deleted run {rid} and its model.")


def _teacher_action(sid: str, act, event: str, done: str) -> None:
    """Publish or withdraw (teachers only: workspace.publish_study / unpublish_study check)."""
    s, user = auth.settings(), auth.current_user()
    try:
        act(s, user, sid)
    except (workspace.AccessError, ValueError, OSError) as exc:
        _notice(f"Could not {event}: {exc}")
        return
    workspace.audit(s.home, event, user, study=sid)
    _notice(done)


@ui.safe_callback
def _publish(sid: str) -> None:
    _teacher_action(
        sid,
        lambda s, user, sid: workspace.publish_study(s, user, state.study_dir(sid)),
        "publish",
        f"Published study {sid} read-only to the class.",
    )


@ui.safe_callback
def _unpublish(pid: str) -> None:
    _teacher_action(
        pid, workspace.unpublish_study, "unpublish", f"Withdrew the published study {pid}."
    )


@ui.safe_callback
def _open_published(pid: str) -> None:
    s, user = auth.settings(), auth.current_user()
    try:
        meta = state.study_from_published(pid)
    except (workspace.AccessError, ValueError, OSError) as exc:
        _notice(f"Could not open a copy: {exc}")
        return
    workspace.audit(s.home, "copy_published", user, published=pid, study=meta.study_id)
    ui.set_current_study(meta)
    _notice(f"Opened your own copy of the published study {pid}.")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _table(rows) -> None:
    st.dataframe(pd.DataFrame(list(rows)), hide_index=True, width="stretch")


def _storage(s: workspace.Settings) -> None:
    used = workspace.used_bytes(state.mdcm_home())
    if s.quota_bytes:
        st.progress(
            min(1.0, used / s.quota_bytes),
            text=f"Storage: {used / 1e6:,.1f} MB of your {s.quota_bytes / 1e6:,.0f} MB used",
        )
    else:
        st.caption(f"Storage used: {used / 1e6:,.1f} MB (no quota set)")
    per = "no limit" if s.jobs_per_user is None else f"at most {s.jobs_per_user}"
    total = "no limit" if s.jobs_total is None else f"at most {s.jobs_total}"
    st.caption(
        f"Training runs at the same time: {per} per person, {total} on this server; "
        "further runs wait in a queue and start on their own."
    )


def _runs_of(sid: str) -> None:
    infos = runs_view.study_runs(sid)
    if not infos:
        st.caption("No runs for this study.")
        return
    _table(
        {
            "run": i.run_id,
            "status": i.status,
            "queue": runs_view.queue_note(i.path) if i.held else "",
            "started": _when(i.created),
        }
        for i in infos
    )
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c1.selectbox("Run", [i.run_id for i in infos], key="ws_run")
    c2.button("Delete run", key="ws_delete_run", on_click=_delete_run, args=(sid,))


def _studies(user: workspace.User) -> None:
    st.subheader("Your studies")
    studies = state.list_studies()
    if not studies:
        st.caption("No studies yet: open a built-in study or start one on the Home page.")
        return
    _table(
        {
            "title": m.title,
            "study": m.study_id,
            "model": runs_view.model_summary(m),
            "created": _when(m.created),
        }
        for m in studies
    )
    titles = {m.study_id: m.title for m in studies}
    sid = st.selectbox(
        "Study", list(titles), key="ws_study", format_func=lambda s: f"{titles[s]} ({s})"
    )
    c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
    c1.button("Open", key="ws_open", on_click=_open, args=(sid,), type="primary")
    c2.checkbox("yes, delete", key="ws_confirm")
    c3.button("Delete study", key="ws_delete", on_click=_delete_study, args=(sid,))
    if user.teacher:
        c4.button("Publish to the class", key="ws_publish", on_click=_publish, args=(sid,))
    _runs_of(sid)


def _published(s: workspace.Settings, user: workspace.User) -> None:
    st.subheader("Published by a teacher")
    pubs = workspace.list_published(s)
    if not pubs:
        st.caption("No published studies.")
        return
    for rec in pubs:
        when = _when(float(rec.get("published") or 0))
        with st.container(border=True):
            st.markdown(f"**{rec.get('title') or rec['id']}** · by {rec.get('publisher')} · {when}")
            st.caption(f"`{rec.get('graph', '')}`")
            c1, c2 = st.columns(2)
            c1.button(
                "Open a copy",
                key=f"ws_pub_open_{rec['id']}",
                on_click=_open_published,
                args=(rec["id"],),
            )
            if user.teacher:
                c2.button(
                    "Withdraw", key=f"ws_pub_rm_{rec['id']}", on_click=_unpublish, args=(rec["id"],)
                )


def main() -> None:
    s, user = auth.settings(), auth.current_user() or workspace.LOCAL_USER
    ui.sidebar(ui.current_study())
    st.title("Workspace")
    if s.shared:
        st.caption(
            f"Your studies, uploads, runs and models are kept in your own folder on this server "
            f"({user.login}); nobody else can list or open them."
        )
    else:
        st.caption(f"Local mode: everything is kept in {state.mdcm_home().resolve()}.")
    if st.session_state.get("ws_notice"):
        st.info(st.session_state["ws_notice"])
    _storage(s)
    _studies(user)
    if s.shared:
        _published(s, user)


ui.guard(main)
