"""Uploads into a study folder (no Streamlit): a zip of a dataset folder, a CSV plus a zip of
images, or a MedMNIST ``.npz``. Every raw upload is first saved under ``uploads/`` (nothing is lost
on a bad upload), then unpacked into a staging folder, validated with :mod:`mdcm.data`, and only
then moved into ``study/<name>/``. Problems raise :class:`mdcm.data.DataError` naming the file,
row, column or variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from mdcm.data import (
    DataError,
    Dataset,
    check_do,
    load_dataset,
    save_dataset,
    validate_dataset,
)
from mdcm.readers import read_medmnist_npz
from mdcm.safezip import safe_extract_zip
from mdcm.variables import Schema

from . import state

__all__ = [
    "dataset_root",
    "delete_dataset",
    "import_csv_images",
    "import_dataset_zip",
    "import_npz",
    "parse_do",
    "store_raw",
    "write_study_json",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


def dataset_root(study_id: str) -> Path:
    root = state.study_dir(study_id) / "study"
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_study_json(study_id: str, schema: Schema) -> Path:
    """Keep ``study/study.json`` in step with the current graph, kinds and canvas positions."""
    root = dataset_root(study_id)
    try:
        stored = state.load_meta(study_id).positions
    except (OSError, ValueError, KeyError):  # a study folder without app metadata
        stored = {}
    positions = {v: p for v, p in stored.items() if v in schema.names}
    body = dict(schema.to_json(), **({"positions": positions} if positions else {}))
    (root / "study.json").write_text(json.dumps(body, indent=1))
    return root


def store_raw(study_id: str, filename: str, data: bytes) -> Path:
    """Save an uploaded file as-is under ``uploads/`` and return its path."""
    up = state.study_dir(study_id) / "uploads"
    up.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename or "upload").name)[:80] or "upload"
    path = up / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}-{safe}"
    path.write_bytes(data)
    return path


def parse_do(text: str, schema: Schema) -> dict[str, object]:
    """Parse intervention targets typed as ``X=1, Z=0.5`` or ``do(X=1, Z=0.5)`` (checked
    against the schema)."""
    out: dict[str, object] = {}
    text = (text or "").strip()
    if text.lower().startswith("do(") and text.endswith(")"):
        text = text[3:-1]
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise DataError(f"intervention {part!r}: write targets as NAME=VALUE, e.g. X=1")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in schema.names:
            raise DataError(
                f"intervention on unknown variable {name!r}; the graph has "
                f"{', '.join(schema.names)}"
            )
        var = schema[name]
        if var.kind == "categorical":
            try:
                out[name] = int(value)
            except ValueError:
                raise DataError(
                    f"intervention {part!r}: {name} is categorical, so give one of its "
                    f"classes 0 … {var.classes - 1}, not {value!r}"
                ) from None
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise DataError(f"intervention {part!r}: {value!r} is not a number") from None
    if out:
        check_do(out, schema, "intervention")
    return out


def _check_name(study_id: str, name: str) -> Path:
    if not _NAME_RE.match(name or ""):
        raise DataError(f"dataset name {name!r}: use 1-64 letters, digits, '_' or '-'")
    dest = dataset_root(study_id) / name
    if dest.exists():
        raise DataError(
            f"a dataset named {name!r} already exists in this study; pick another "
            "name or delete it first"
        )
    return dest


def _staging(study_id: str) -> Path:
    return state.study_dir(study_id) / "uploads" / f"staging-{time.time_ns()}"


def _find_dataset_folder(root: Path) -> Path:
    if (root / "data.csv").is_file():
        return root
    subs = [p for p in root.rglob("data.csv") if "__MACOSX" not in p.parts]
    if len(subs) == 1:
        return subs[0].parent
    if not subs:
        raise DataError(
            "the zip has no data.csv (a dataset folder holds data.csv, image files "
            "and, for interventional data, intervention.json)"
        )
    raise DataError(f"the zip has {len(subs)} data.csv files; upload one dataset per zip")


def _finish(
    study_id: str, folder: Path, schema: Schema, name: str, do: Mapping[str, object] | None
) -> Dataset:
    dest = _check_name(study_id, name)
    if do:
        (folder / "intervention.json").write_text(json.dumps({"do": dict(do)}))
    ds = load_dataset(folder, schema)
    try:
        dest.mkdir()  # claims the name atomically: a second session importing it now fails here
    except FileExistsError:
        raise DataError(
            f"a dataset named {name!r} already exists in this study; pick another "
            "name or delete it first"
        ) from None
    os.replace(folder, dest)  # same file system (both inside the study folder): atomic
    write_study_json(study_id, schema)
    return Dataset(name, ds.columns, ds.do)


def import_dataset_zip(
    study_id: str, schema: Schema, zip_path: Path, name: str, do: Mapping[str, object] | None = None
) -> Dataset:
    """A zip of one dataset folder -> ``study/<name>/`` (validated first)."""
    _check_name(study_id, name)
    stage = _staging(study_id)
    try:
        safe_extract_zip(zip_path, stage)
        return _finish(study_id, _find_dataset_folder(stage), schema, name, do)
    except DataError as exc:
        raise _in_users_words(exc, stage, user_file_name(zip_path)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def import_csv_images(
    study_id: str,
    schema: Schema,
    csv_path: Path,
    zip_path: Path | None,
    name: str,
    do: Mapping[str, object] | None = None,
) -> Dataset:
    """A CSV (image columns hold paths inside the zip) plus an optional zip of images."""
    _check_name(study_id, name)
    stage = _staging(study_id)
    try:
        if zip_path is not None:
            safe_extract_zip(zip_path, stage)
        else:
            stage.mkdir(parents=True)
        shutil.copyfile(csv_path, stage / "data.csv")
        return _finish(study_id, stage, schema, name, do)
    except DataError as exc:
        raise _in_users_words(
            exc,
            stage,
            user_file_name(zip_path) if zip_path is not None else "",
            {"data.csv": user_file_name(csv_path)},
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


_RAW_PREFIX = re.compile(r"^\d{8}-\d{6}-\d{6}-")


def user_file_name(raw: Path) -> str:
    """The name the user gave a file saved by :func:`store_raw` (without its time prefix)."""
    return _RAW_PREFIX.sub("", Path(raw).name)


def _in_users_words(
    exc: DataError, stage: Path, upload: str, renames: Mapping[str, str] | None = None
) -> DataError:
    """The error in terms of what the user uploaded: no staging folder, no server path; files
    inside an uploaded zip are named by their path in it, after the zip's name."""
    text = str(exc).replace(str(stage) + os.sep, "").replace(stage.name + "/", "")
    for inner, outer in (renames or {}).items():
        text = text.replace(f"{inner}:", f"{outer}:", 1)
    return DataError(f"{upload}: {text}" if upload and not text.startswith(upload) else text)


def _resize_images(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 (N,H,W[,C]) -> float32 (N,C,H,W) in [-1,1] at the schema's size."""
    c, h, w = shape
    out = np.empty((len(images), c, h, w), np.float32)
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        pil = pil.convert("L" if c == 1 else "RGB")
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.BILINEAR)
        a = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return out


def import_npz(
    study_id: str,
    schema: Schema,
    npz_path: Path,
    name: str,
    *,
    split: str,
    image_var: str,
    label_var: str,
    max_rows: int = 20_000,
) -> Dataset:
    """A MedMNIST ``.npz``: images -> ``image_var`` (resized), labels -> ``label_var``.

    The study must have exactly these two variables (the npz holds no others)."""
    dest = _check_name(study_id, name)
    images, labels = read_medmnist_npz(npz_path, split=split)
    others = [v for v in schema.names if v not in (image_var, label_var)]
    if others:
        raise DataError(
            f"{Path(npz_path).name}: the .npz holds only images and labels, but the "
            f"graph also has {', '.join(others)}; remove them or upload a CSV"
        )
    if schema[image_var].kind != "image":
        raise DataError(
            f"variable {image_var!r} is {schema[image_var].kind}, not an image; set "
            "its kind on the Graph page"
        )
    if schema[label_var].kind != "categorical":
        raise DataError(f"variable {label_var!r} must be categorical for MedMNIST labels")
    k = schema[label_var].classes
    if labels.max() >= k:
        raise DataError(
            f"{Path(npz_path).name}: labels go up to {int(labels.max())} but "
            f"{label_var!r} has {k} classes; set classes to {int(labels.max()) + 1}"
        )
    images, labels = images[:max_rows], labels[:max_rows]
    ds = Dataset(
        name,
        {
            image_var: _resize_images(images, schema[image_var].shape),
            label_var: labels.astype(np.int64),
        },
        {},
    )
    validate_dataset(ds, schema)
    write_study_json(study_id, schema)
    save_dataset(ds, schema, dest)
    return ds


def delete_dataset(study_id: str, name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise DataError(f"bad dataset name {name!r}")
    shutil.rmtree(dataset_root(study_id) / name, ignore_errors=True)
