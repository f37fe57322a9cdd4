"""Train: choose device, steps, batch size, modular or joint plan, seed; training runs in a
background process (mdcm.runs); live progress per stage, stop, resume, and the list of past runs
(on disk, so it survives a reload or an app restart)."""

import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mdcm_app import bundles, runs_view, state, ui


def _devices() -> list[str]:
    try:
        import torch

        return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    except ImportError:
        return ["auto", "cpu"]


@ui.safe_callback
def _follow(run_id: str | None) -> None:
    if run_id:
        st.session_state["run_id"] = run_id
        st.query_params["run"] = run_id


@ui.safe_callback
def _start() -> None:
    from mdcm.runs import RunError

    st.session_state["train_error"] = ""
    meta = state.load_meta(st.session_state["study_id"])
    study, problems = ui.study_data(meta)
    real = [p for p in problems if not p.endswith("(ignored)")]
    if study is None or real:
        st.session_state["train_error"] = (
            "Cannot train: " + "; ".join(real or ["no data"]) + ". Fix the graph or the data first."
        )
        return
    if study.observational is None and not study.interventions:
        st.session_state["train_error"] = "Cannot train: the study has no dataset."
        return
    cfg = {
        "steps": int(st.session_state.get("train_steps", 3000)),
        "batch_size": int(st.session_state.get("train_batch", 64)),
        "seed": int(st.session_state.get("train_seed", 0)),
        "device": st.session_state.get("train_device", "auto"),
        "objective": st.session_state.get("train_objective", "auto"),
        "check_every": max(5, min(200, int(st.session_state.get("train_steps", 3000)) // 10)),
    }
    import mdcm.runs

    train_keys = getattr(mdcm.runs, "TRAIN_KEYS", ())
    for key, field in (
        ("train_coder_steps", "coder_steps"),
        ("train_check_samples", "check_samples"),
    ):
        if field in train_keys and st.session_state.get(key) is not None:
            cfg[field] = int(st.session_state[key])
    limit = float(st.session_state.get("train_time_limit", 0) or 0)
    if limit > 0:
        cfg["time_limit_s"] = limit
    ex = ui.example_or_none(meta)
    try:  # quota check, held run, job queue (starts at once when a training slot is free)
        info = runs_view.submit_training(
            meta,
            study,
            ex.study.schema if ex else None,
            plan=st.session_state.get("train_plan", "modular"),
            train_config=cfg,
            pretrained=bundles.chosen_mechanisms(study),
            **_where(),
        )
    except (RunError, ValueError, OSError) as exc:
        st.session_state["train_error"] = f"Could not start training: {exc}"
        return
    _follow(info.run_id)


@ui.safe_callback
def _stop(run_dir) -> None:
    from mdcm.runs import RunError

    try:
        runs_view.stop(run_dir)
    except (RunError, OSError) as exc:
        st.session_state["train_error"] = f"Could not stop: {exc}"


@ui.safe_callback
def _resume(run_dir) -> None:
    from mdcm.runs import RunError

    try:
        runs_view.resume(run_dir)
    except (RunError, ValueError, OSError) as exc:
        st.session_state["train_error"] = f"Could not resume: {exc}"


def _settings() -> None:
    st.subheader("Settings")
    c1, c2, c3 = st.columns(3)
    c1.selectbox(
        "Device", _devices(), key="train_device", help="auto uses the GPU when one is available"
    )
    c1.radio(
        "Plan",
        ["modular", "joint"],
        key="train_plan",
        horizontal=True,
        format_func={"modular": "Modular (stages)", "joint": "Joint (baseline)"}.get,
    )
    c2.number_input(
        "Steps per stage (max)",
        min_value=1,
        max_value=200_000,
        value=3000,
        step=100,
        key="train_steps",
    )
    c2.number_input("Batch size", min_value=8, max_value=4096, value=64, step=8, key="train_batch")
    c3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="train_seed")
    c3.number_input(
        "Time limit per stage (s, 0 = none)",
        min_value=0,
        max_value=86_400,
        value=0,
        step=30,
        key="train_time_limit",
    )
    with st.expander("Advanced"):
        a1, a2, a3 = st.columns(3)
        a1.selectbox(
            "Objective",
            ["auto", "wgan", "mmd"],
            key="train_objective",
            help="auto: maximum likelihood for an image mechanism P(image | parents), "
            "a kernel (MMD) loss for the other stages; wgan: WGAN-GP everywhere",
        )
        a2.number_input(
            "Image-code fit steps",
            min_value=10,
            max_value=20_000,
            value=2000,
            step=100,
            key="train_coder_steps",
            help="Steps of the small image autoencoder: image mechanisms draw its "
            "code and decode it, children read it (studies with images only)",
        )
        a3.number_input(
            "Fit-check samples",
            min_value=256,
            max_value=65_536,
            value=4096,
            step=256,
            key="train_check_samples",
            help="Samples drawn at each fit check (quality vs steps)",
        )
    _scale_out()


def _scale_out() -> None:
    """Workers (local Ray worker processes) and an optional Ray cluster (mdcm.scheduler)."""
    import os

    from mdcm.scheduler import ADDRESS_ENV

    c1, c2 = st.columns([1, 2])
    c1.number_input(
        "Workers",
        min_value=1,
        max_value=max(1, os.cpu_count() or 1),
        value=1,
        step=1,
        key="train_workers",
        help="Stages with no dependency between them train at the same time, each in its own "
        "worker process (Ray). 1: one process, stage after stage.",
    )
    configured = os.environ.get(ADDRESS_ENV, "")
    if _shared():  # a shared server only uses the cluster its administrator set up
        if configured:
            c2.checkbox(f"Train on the cluster at {configured}", key="train_use_cluster")
        return
    c2.text_input(
        "Ray cluster address (optional)",
        key="train_ray_address",
        value=configured,
        placeholder="HOST:PORT of the head node",
        help="Train on a running Ray cluster instead of this machine (its head's address, "
        "e.g. 10.0.0.5:6379). Empty: this machine.",
    )


def _shared() -> bool:
    from mdcm_app import auth

    return auth.settings().shared


def _where() -> dict:
    """submit_training's workers / ray_address from the Workers and cluster fields; a cluster
    address that does not answer is refused here, at once (mdcm.scheduler.probe)."""
    import os

    from mdcm.scheduler import ADDRESS_ENV, probe

    if _shared():
        address = os.environ.get(ADDRESS_ENV) if st.session_state.get("train_use_cluster") else ""
    else:
        address = str(st.session_state.get("train_ray_address") or "").strip()
    if address:
        probe(address)  # ClusterError (a ValueError): shown as "Could not start training"
        return {"ray_address": address}
    workers = int(st.session_state.get("train_workers") or 1)
    return {"workers": workers} if workers > 1 else {}


def _timeline(events: list[dict]) -> None:
    """Which stages trained at the same time, and where (parallel runs)."""
    from mdcm.runs import stage_timeline

    spans = stage_timeline(events)
    started = [r["start"] for r in spans.values() if r["start"] is not None]
    if len(started) < 2 or not any(r["worker"] for r in spans.values()):
        return
    t0, now = min(started), time.time()
    fig = go.Figure()
    for sid, r in sorted(spans.items()):
        if r["start"] is None:
            continue
        w = r["worker"]
        where = f"{w.get('host')} · pid {w.get('pid')}" if w else ""
        end = r["end"] if r["end"] is not None else now
        fig.add_bar(
            y=[f"stage {sid}"],
            x=[max(end - r["start"], 0.05)],
            base=[r["start"] - t0],
            orientation="h",
            name=f"stage {sid}",
            hovertext=f"{r['state']} on {where}; attempts {r['attempts']}",
            showlegend=False,
        )
    fig.update_layout(
        title="stages over time (seconds since the first stage started)",
        height=60 + 24 * len(spans),
        margin={"l": 60, "r": 10, "t": 40, "b": 30},
        barmode="overlay",
    )
    st.plotly_chart(fig, key="train_timeline", width="stretch")


def _curves(rec: dict, sid: int) -> None:
    c1, c2 = st.columns(2)
    if rec["losses"]:
        df = pd.DataFrame(rec["losses"])
        fig = go.Figure()
        for col in df.columns:
            if col != "step":
                fig.add_scatter(
                    x=df["step"], y=df[col], name=col, mode="lines+markers", marker={"size": 4}
                )
        fig.update_layout(
            title="losses",
            height=240,
            margin={"l": 30, "r": 10, "t": 40, "b": 30},
        )
        c1.plotly_chart(fig, key=f"train_loss_{sid}", width="stretch")
        c1.caption(
            "A loss can go below zero (a critic's or a kernel estimate's); lower is not always "
            "better: the fit check on the right is the measure of quality."
        )
    if rec["quality"]:
        df = pd.DataFrame(rec["quality"])
        fig = go.Figure()
        fig.add_scatter(x=df["step"], y=df["quality"], name="fit (TVD)", mode="lines+markers")
        fig.update_layout(
            title="fit check vs steps (TVD to data, lower is better)",
            height=240,
            margin={"l": 30, "r": 10, "t": 40, "b": 30},
        )
        c2.plotly_chart(fig, key=f"train_quality_{sid}", width="stretch")


def _progress(run_dir) -> bool:
    """Draw one run's progress; True while it is still active."""
    from mdcm.runs import read_events, run_status

    info = run_status(run_dir)
    events = read_events(run_dir)
    steps = int((info.config.get("train") or {}).get("steps") or 0)
    icon = {
        "done": ":material/check_circle:",
        "running": ":material/hourglass_top:",
        "queued": ":material/hourglass_top:",
        "failed": ":material/error:",
        "stopped": ":material/stop_circle:",
        "interrupted": ":material/warning:",
    }.get(info.status, "")
    st.markdown(
        f"**Run {info.run_id}**: {icon} {info.status}"
        + (f" (attempt {info.attempts})" if info.attempts > 1 else "")
    )
    if info.message and info.status in ("failed", "interrupted", "stopped"):
        (st.error if info.status == "failed" else st.warning)(info.message)
    if info.held:
        st.info(runs_view.queue_note(run_dir) or info.message, icon=":material/schedule:")
    for var, src in (info.config.get("pretrained") or {}).items():  # recorded in run.json
        st.caption(f"{var}: mechanism reused from run {src.get('run') or src.get('model')}")
    pre = [e for e in events if e.get("stage") == -1 and e.get("kind") == "step"]
    if pre:
        st.caption(f"Preparation: {pre[-1].get('message', '')}")
    elif info.active and not events and not info.held:
        st.caption("Starting the training process (loading data, fitting image codes)…")
    coder_steps = (info.config.get("train") or {}).get("coder_steps")
    for var, rec in runs_view.coder_progress(events, coder_steps).items():  # before stage 0
        mse = "" if rec["mse"] is None else f" · reconstruction MSE {rec['mse']:.4f}"
        total = rec["total"] or "?"
        st.progress(rec["fraction"], text=f"Image code of {var}: step {rec['step']}/{total}{mse}")
    names = {
        int(e["stage"]): e.get("message", "") for e in events if e.get("kind") == "stage_start"
    }
    prog = runs_view.stage_progress(
        [
            e
            for e in events
            if (e.get("stage") or 0) >= 0
            and e.get("kind") in ("step", "check", "stage_start", "stage_end", "error")
        ],
        steps,
    )
    _overall(info, prog)
    from mdcm.runs import stage_timeline

    where = stage_timeline(events)
    _timeline(events)
    for sid in sorted(prog):
        rec = prog[sid]
        label = names.get(sid) or f"stage {sid}"
        extra = f" · {rec['message']}" if rec["done"] and rec["message"] else ""
        span = where.get(sid) or {}
        if span.get("worker") and not rec["done"]:
            w = span["worker"]
            extra += f" · {span['state']} on {w.get('host')} (pid {w.get('pid')})"
        if span.get("attempts", 0) > 1:
            extra += f" · attempt {span['attempts']} (its worker was lost)"
        st.progress(rec["fraction"], text=f"{label}: step {rec['step']}/{steps}{extra}")
        _curves(rec, sid)
    b1, b2 = st.columns(2)
    b1.button("Stop", key="train_stop", on_click=_stop, args=(run_dir,), disabled=not info.active)
    b2.button(
        "Resume",
        key="train_resume",
        on_click=_resume,
        args=(run_dir,),
        disabled=info.active or info.status == "done",
    )
    if info.status == "done":
        st.success(
            "Training finished: the model is ready. Ask questions on the Intervene page "
            "or look at the Checks page."
        )
        ui.page_link("intervene", "Go to Intervene", ":material/tune:")
        bundles.bundle_download(info.model_dir, key="train_bundle", source={"run": info.run_id})
    return info.active


def _overall(info, prog: dict) -> None:
    """One bar for the whole run: the share of its stages done, and the time left at the pace
    so far (the plan of the study as it is now gives the number of stages)."""
    from mdcm.plan import make_plan

    meta = state.load_meta(st.session_state["study_id"])
    study, _ = ui.study_data(meta)
    if study is None or not prog:
        return
    plan = make_plan(
        study.schema.graph, list(study.interventions), joint=info.config.get("plan") == "joint"
    )
    n = max(len(plan.stages), max(prog) + 1)
    if n < 2:
        return  # the stage's own bar says it all
    frac = sum(rec["fraction"] for rec in prog.values()) / n
    text = f"Overall: {frac:.0%} of {n} stage{'s' if n != 1 else ''}"
    spent = sum(rec["elapsed_s"] for rec in prog.values())
    if info.active and 0.02 < frac < 1 and spent > 0:
        left = spent * (1 - frac) / frac
        text += (
            f" · about {left / 60:.0f} min left" if left >= 90 else f" · about {left:.0f} s left"
        )
    st.progress(min(1.0, frac), text=text)


def _runs_area(meta, run_dir) -> None:
    """Progress of the followed run and the list of past runs, redrawn every second (a
    fragment) while any run of the study is active."""

    def any_active() -> bool:
        return any(i.active for i in runs_view.study_runs(meta.study_id))

    active = any_active()

    @st.fragment(run_every=1.0 if active else None)
    def area() -> None:
        try:
            if run_dir is not None:
                st.subheader("Progress")
                _progress(run_dir)
            _past_runs(meta)
        except Exception as exc:  # noqa: BLE001 - a fragment runs outside the page guard
            st.error(f"Cannot show the progress of the runs: {exc}")
            return
        followed = st.session_state.get("run_id")
        shown = run_dir.name if run_dir is not None else None
        switched = (
            bool(followed)
            and followed != shown
            and followed in runs_view.study_run_ids(meta.study_id)
        )
        if active != any_active() or switched:
            st.rerun(scope="app")  # polling on/off, or another run to follow

    area()


def _past_runs(meta) -> None:
    st.subheader("Past runs")
    infos = runs_view.study_runs(meta.study_id)
    if not infos:
        st.caption("No runs yet for this study.")
        return
    rows = [
        {
            "run": i.run_id,
            "status": i.status,
            "plan": i.config.get("plan"),
            "steps": (i.config.get("train") or {}).get("steps"),
            "device": (i.config.get("train") or {}).get("device"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created)),
            "message": i.message[:80],
        }
        for i in infos
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    followed = st.session_state.get("run_id")
    if followed in {i.run_id for i in infos} and st.session_state.get("train_pick_for") != followed:
        st.session_state["train_pick_run"] = followed  # the picker shows the run followed above
        st.session_state["train_pick_for"] = followed
    c1.selectbox(
        "Follow a run",
        [i.run_id for i in infos],
        key="train_pick_run",
        format_func=lambda r: next(runs_view.run_label(i) for i in infos if i.run_id == r),
    )
    c2.button(
        "Show", key="train_follow", on_click=lambda: _follow(st.session_state.get("train_pick_run"))
    )


def main() -> None:
    from mdcm.runs import RunError, run_path

    meta = ui.study_page("Train")
    st.caption(
        "Training runs in a background process: you can leave this page, reload the "
        "browser or restart the app; runs and their progress stay on disk."
    )
    _settings()
    study, _ = ui.study_data(meta)
    if study is not None:
        bundles.reuse_controls(study)  # per stage: train it, or reuse a trained mechanism
    st.button("Start training", key="train_start", on_click=_start, type="primary")
    if st.session_state.get("train_error"):
        st.error(st.session_state["train_error"], icon=":material/block:")
    rid = st.session_state.get("run_id") or st.query_params.get("run")
    if rid and rid not in runs_view.study_run_ids(meta.study_id):
        st.warning(  # a run id typed into the URL: never looked up outside this study's runs
            f"Run {str(rid)[:80]!r} is not one of this study's runs in your workspace, "
            "so it is not shown.",
            icon=":material/block:",
        )
    if rid and rid in runs_view.study_run_ids(meta.study_id):
        st.session_state["run_id"] = rid
        if st.query_params.get("run") != rid:
            st.query_params["run"] = rid
    run_dir = None
    if rid and rid in runs_view.study_run_ids(meta.study_id):
        try:
            run_dir = run_path(state.runs_root(), rid)
        except RunError as exc:
            st.error(f"Run {rid} cannot be read: {exc}")
    _runs_area(meta, run_dir)


ui.guard(main)
