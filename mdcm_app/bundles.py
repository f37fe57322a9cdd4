"""Streamlit controls for what leaves one study and enters another (issue #14), on top of
:mod:`mdcm.bundle`:

* Train page: per stage whose target is a plain conditional P(V | pa(V)), "train it here" or
  "use the mechanism of V from run …", listing only the trained models whose mechanism fits
  (:func:`mdcm.bundle.mechanism_mismatch`); the choice goes into the run (``run.json``
  ``config.pretrained``) and the stage shows as filled;
* a model bundle download (Train and Checks pages) and upload (Home page: it becomes a finished
  run of the study, so every page can use it);
* Intervene page: save the samples under the current do(...) as a dataset, into the study or as
  a zip download.

Session keys: ``train_reuse_<V>`` (the chosen run id, "" = train it), ``home_bundle_*``,
``iv_export_*`` (see each function).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from mdcm.bundle import (
    export_samples,
    fillable_stages,
    import_model_bundle,
    mechanism_mismatch,
    model_bundle_bytes,
)
from mdcm.data import DataError
from mdcm.model import ModelConfig, ModelFileError, read_model_json
from mdcm.plan import Plan, describe_stage, make_plan
from mdcm.runs import RunError, RunInfo, run_path, scan_runs

from . import runs_view, state, ui

__all__ = [
    "bundle_download",
    "bundle_upload",
    "chosen_mechanisms",
    "offers",
    "reuse_controls",
    "save_samples_control",
    "study_model_download",
    "trained_models",
]

#: the model settings of the app's runs (the Train page does not change them)
APP_MODEL = ModelConfig()


# ---------------------------------------------------------------------- reuse a mechanism
def trained_models() -> list[tuple[RunInfo, Path]]:
    """(run, model folder) of every finished run in the user's workspace, newest first."""
    infos, _ = scan_runs(state.runs_root())
    out = []
    for info in infos:
        path = runs_view.find_model(info.path) if info.status == "done" else None
        if path is not None:
            out.append((info, path))
    return out


def offers(
    var: str, schema: Any, models: list[tuple[RunInfo, Path]]
) -> tuple[list[tuple[RunInfo, Path]], list[tuple[str, str]]]:
    """The trained models whose mechanism of ``var`` can fill ``var``'s stage, and
    (run id, reason) for the others."""
    ok, refused = [], []
    for info, path in models:
        try:
            why = mechanism_mismatch(read_model_json(path), var, schema, APP_MODEL)
        except ModelFileError as exc:
            why = str(exc)
        if why is None:
            ok.append((info, path))
        else:
            refused.append((info.run_id, why))
    return ok, refused


def _plan(study: Any) -> Plan:
    joint = st.session_state.get("train_plan", "modular") == "joint"
    return make_plan(study.schema.graph, list(study.interventions), joint=joint)


def chosen_mechanisms(study: Any) -> dict[str, dict]:
    """The reused mechanisms chosen on the Train page, checked again now (a model may have gone
    or the study changed since the list was drawn): ``{V: {"model": folder, "run": run id}}``
    for :func:`mdcm.runs.start_run`. Raises ValueError naming the variable, run and reason."""
    out: dict[str, dict] = {}
    for var, stage in fillable_stages(_plan(study)).items():
        rid = st.session_state.get(f"train_reuse_{var}") or ""
        if not rid:
            continue
        try:
            path = runs_view.find_model(run_path(state.runs_root(), rid))
        except RunError as exc:
            raise ValueError(f"the mechanism of {var} from run {rid!r}: {exc}") from None
        if path is None:
            raise ValueError(f"run {rid!r} has no trained model to take {var}'s mechanism from")
        try:
            why = mechanism_mismatch(read_model_json(path), var, study.schema, APP_MODEL)
        except ModelFileError as exc:
            why = str(exc)
        if why:
            raise ValueError(
                f"the mechanism of {var} from run {rid} cannot fill stage {stage.id}: {why}"
            )
        out[var] = {"model": str(path), "run": rid}
    return out


def reuse_controls(study: Any) -> None:
    """The plan as the run will train it: per stage that a trained mechanism can fill, a choice
    between training it and reusing a mechanism from a finished run; filled stages say so."""
    plan = _plan(study)
    fillable = fillable_stages(plan)
    models = trained_models() if fillable else []
    st.subheader("Stages")
    for stage in plan.stages:
        title = describe_stage(plan, stage).plain.title
        with st.container(border=True):
            var = stage.trains[0] if stage.trains[0] in fillable else None
            if var is None:
                st.markdown(f"**{_md(title)}**")
                continue
            ok, refused = offers(var, study.schema, models)
            key = f"train_reuse_{var}"
            ids = [i.run_id for i, _ in ok]
            current = st.session_state.get(key) or ""
            if current and current not in ids:  # a run that went away or no longer fits
                st.session_state[key] = ""
                why = dict(refused).get(current, "it is no longer in your workspace")
                st.warning(f"Run {current} can no longer fill this stage: {why}")
            label = {i.run_id: runs_view.run_label(i) for i, _ in ok}
            chosen = st.session_state.get(key) or ""
            if chosen:
                st.markdown(f"**{_md(title)}** · :green[filled, not trained]")
            else:
                st.markdown(f"**{_md(title)}**")
            st.selectbox(
                f"Mechanism of {var}",
                [""] + ids,
                key=key,
                format_func=lambda r, v=var, names=label: (
                    f"train {v} here" if not r else f"use {v} from run {names[r]}"
                ),
                help=f"The target of this stage is P({var} | its parents) alone, so a "
                f"mechanism of {var} trained in another run (same kind, same parents) can "
                "fill it; an image mechanism brings its image code along",
                disabled=not ids,
            )
            if chosen:
                st.caption(f"{var} will be copied from run {chosen}; this stage is not trained.")
            elif not ids:
                st.caption(
                    "No finished run has a mechanism of "
                    f"{var} that fits yet"
                    + (f" (run {refused[0][0]}: {refused[0][1]})" if refused else "")
                    + "."
                )
            if refused and ids:
                with st.expander(f"Runs not offered ({len(refused)})"):
                    for rid, why in refused:
                        st.caption(f"{rid}: {why}")


def _md(text: str) -> str:
    return text.replace("_", "\\_").replace("*", "\\*")


# ---------------------------------------------------------------------- model bundles
@st.cache_data(show_spinner=False, max_entries=4)
def _bundle(path: str, mtime: float, source: str) -> bytes:
    return model_bundle_bytes(Path(path), source=json.loads(source))


def bundle_download(model_dir: Path, *, key: str, source: Mapping[str, Any]) -> None:
    """A download button for the model folder as a zip (``mdcm.bundle.model_bundle_bytes``)."""
    model_dir = Path(model_dir)
    try:
        data = _bundle(
            str(model_dir),
            (model_dir / "model.json").stat().st_mtime,
            json.dumps(dict(source), sort_keys=True, default=str),
        )
    except (ModelFileError, OSError) as exc:
        st.error(f"This model cannot be bundled: {exc}")
        return
    name = "-".join(str(v) for v in source.values() if v) or "model"
    st.download_button(
        "Download the trained model (.zip)",
        data,
        file_name=f"mdcm-model-{name}.zip",
        mime="application/zip",
        key=key,
        icon=":material/download:",
        help="A model bundle: upload it on the Home page of a study with the same graph and "
        "variable kinds (weights in safetensors, checked on upload)",
    )


def study_model_download(meta: state.StudyMeta, run_id: str | None, *, key: str) -> None:
    """:func:`bundle_download` for the model of one of the study's runs (Checks page)."""
    path = dict(ui.study_models(meta)).get(run_id or "")
    if path is not None:
        bundle_download(path, key=key, source={"run": run_id})


@ui.safe_callback
def _import_bundle() -> None:
    from .workspace import QuotaError

    st.session_state["home_bundle_error"] = ""
    st.session_state["home_bundle_notice"] = ""
    sid = st.session_state["study_id"]
    meta = state.load_meta(sid)
    up = st.session_state.get("home_bundle")
    if up is None:
        st.session_state["home_bundle_error"] = "choose a model bundle (.zip) first"
        return
    schema, err = state.schema_or_error(meta)
    if schema is None:
        st.session_state["home_bundle_error"] = f"fix the graph first: {err}"
        return
    try:
        state.admit_upload(sid, {"home_bundle": (up.name, up.getvalue())})
        rid = import_bundle_as_run(sid, schema, up.name, up.getvalue())
    except (DataError, ModelFileError, RunError, QuotaError, OSError) as exc:
        st.session_state["home_bundle_error"] = str(exc).replace(str(state.mdcm_home()), "…")
        return
    st.session_state["home_bundle_notice"] = (
        f"Imported {up.name} as run {rid}: the Intervene and Checks pages can use it now."
    )


def import_bundle_as_run(study_id: str, schema: Any, file_name: str, data: bytes) -> str:
    """Validate an uploaded bundle for the study's schema and keep it as a finished run of the
    study (``runs/<id>/model``); returns the run id. Nothing is kept when it is refused."""
    from mdcm.runs import RunRecorder, create_run

    from .uploads import store_raw

    raw = store_raw(study_id, file_name, data)
    root = state.runs_root()
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root))
    try:
        try:
            model = import_model_bundle(raw, staging / "model", schema)
        except (DataError, ModelFileError) as exc:  # name the user's file, not the stored copy
            raise type(exc)(str(exc).replace(raw.name, Path(file_name).name)) from None
        plan = read_model_json(model).get("plan") or {}
        run_dir = create_run(
            root,
            {
                "plan": "joint" if plan.get("joint") else "modular",
                "train": {},
                "label": study_id,
                "imported": {"file": Path(file_name).name},
            },
        )
        shutil.move(str(model), str(run_dir / "model"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    RunRecorder(run_dir).finish("done", f"imported from {Path(file_name).name}")
    runs_view.record_run(study_id, run_dir.name)
    return run_dir.name


def bundle_upload() -> None:
    """Home page: upload a model bundle into the current study."""
    st.file_uploader(
        "Add a trained model (a bundle .zip downloaded from the Train or Checks page)",
        type=["zip"],
        key="home_bundle",
    )
    st.button("Import model", key="home_bundle_import", on_click=_import_bundle)
    if st.session_state.get("home_bundle_error"):
        st.error(f"Model refused: {st.session_state['home_bundle_error']}", icon=":material/block:")
    elif st.session_state.get("home_bundle_notice"):
        st.success(st.session_state["home_bundle_notice"])


# ---------------------------------------------------------------------- samples as a dataset
def _default_name(schema: Any, do: Mapping[str, Any]) -> str:
    parts = [
        f"{k}{'img' if schema[k].kind == 'image' else _short(v)}" for k, v in sorted(do.items())
    ]
    return "sampled_do_" + "_".join(parts) if parts else "sampled_observational"


def _short(value: Any) -> str:
    import numpy as np

    flat = np.asarray(value).reshape(-1)
    text = str(int(flat[0])) if flat.dtype.kind in "iu" else f"{float(flat[0]):g}"
    return text.replace("-", "m").replace(".", "p")


def _draw(model: Any, do: Mapping[str, Any], n: int, seed: int) -> dict:
    from mdcm.query import sample

    return {k: v.detach().cpu().numpy() for k, v in sample(model, n, do, seed=seed).items()}


def save_samples_control(
    meta: state.StudyMeta, model: Any, do: Mapping[str, Any], given: Mapping[str, Any]
) -> None:
    """Intervene page: "save these samples as a dataset": ``n`` samples under ``do`` written
    with :func:`mdcm.bundle.export_samples`, into the study (a new dataset folder, which a later
    training run reads as data of the experiment do(...)) or as a zip to download. Samples
    conditioned on evidence are not samples of one experiment, so then it only says so."""
    schema = model.schema
    with st.expander("Save these samples as a dataset"):
        if given:
            st.caption(
                "Remove the evidence first: samples kept only where the evidence holds are not "
                "samples of one experiment, so they cannot be saved as its dataset."
            )
            return
        c1, c2, c3 = st.columns([2, 1, 2], vertical_alignment="bottom")
        c1.text_input(
            "Dataset name",
            value=_default_name(schema, do),
            key="iv_export_name",
            help="A folder name: letters, digits, '_' or '-'",
        )
        c2.number_input("Samples", 10, 20_000, 1000, step=100, key="iv_export_n")
        c3.radio(
            "Where",
            ["study", "zip"],
            key="iv_export_where",
            horizontal=True,
            format_func={"study": "into this study", "zip": "as a zip download"}.get,
        )
        st.button(
            "Save the samples",
            key="iv_export_go",
            on_click=_export,
            args=(meta.study_id, model, dict(do)),
            icon=":material/save:",
        )
        st.caption(
            "The folder holds data.csv, the images as PNGs and intervention.json with the "
            "values set; mdcm.load_study reads it back as the experiment do(...). Saved into "
            "the study, it counts as that experiment's data for later training runs."
        )
        if st.session_state.get("iv_export_error"):
            st.error(f"Not saved: {st.session_state['iv_export_error']}", icon=":material/block:")
        elif st.session_state.get("iv_export_notice"):
            st.success(st.session_state["iv_export_notice"])
        blob = st.session_state.get("iv_export_zip")
        if blob:
            st.download_button(
                f"Download {blob[0]}.zip",
                blob[1],
                file_name=f"{blob[0]}.zip",
                mime="application/zip",
                key="iv_export_download",
            )


@ui.safe_callback
def _export(study_id: str, model: Any, do: dict) -> None:
    from .uploads import _NAME_RE, _check_name, write_study_json

    st.session_state["iv_export_error"] = ""
    st.session_state["iv_export_notice"] = ""
    st.session_state["iv_export_zip"] = None
    name = (st.session_state.get("iv_export_name") or "").strip()
    n = int(st.session_state.get("iv_export_n") or 1000)
    where = st.session_state.get("iv_export_where", "study")
    schema = model.schema
    seed = int(time.time()) % 2**31
    try:
        if where == "study":
            dest = _check_name(study_id, name)
            study, _ = ui.study_data(state.load_meta(study_id))
            if study is not None and name in {d.name for d in study.datasets}:
                raise DataError(f"the study already has a dataset named {name!r}; pick another")
            ds = export_samples(schema, _draw(model, do, n, seed), do, dest)
            write_study_json(study_id, schema)
            st.session_state["iv_export_notice"] = (
                f"Saved {ds.n} samples as dataset {name!r} of this study (see the Data page)."
            )
            return
        if not _NAME_RE.match(name):
            raise DataError(f"dataset name {name!r}: use 1-64 letters, digits, '_' or '-'")
        with tempfile.TemporaryDirectory(dir=state.exports_dir()) as tmp:
            ds = export_samples(schema, _draw(model, do, n, seed), do, Path(tmp) / name)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
                for f in sorted((Path(tmp) / name).rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(tmp))
        st.session_state["iv_export_zip"] = (name, buf.getvalue())
        st.session_state["iv_export_notice"] = f"{ds.n} samples ready to download as {name}.zip."
    except (DataError, ValueError, OSError) as exc:
        st.session_state["iv_export_error"] = str(exc).replace(str(state.mdcm_home()), "…")
