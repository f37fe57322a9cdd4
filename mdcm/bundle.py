"""What leaves one study and enters another: reused mechanisms, model bundles and sampled
datasets (issue #14).

* **Reusing a trained mechanism** (Modular-DCM's headline use of modularity, Rahman & Kocaoglu,
  ICML 2024 §4): a stage whose every target is the plain conditional P(V | pa(V)) can be filled
  by the mechanism of V from another trained model. :func:`mechanism_mismatch` says why a donor
  cannot stand in (other kind or shape, other parents, parents of another kind, a confounder on
  V, other network sizes or image coder), reading only the donor's ``model.json``;
  :func:`load_pretrained` loads donors with :func:`mdcm.model.load_model` (safetensors only,
  checksums checked) for ``mdcm.train.train(..., pretrained=...)``.
* **Model bundles**: a model folder as one zip (:func:`model_bundle_bytes`) and back
  (:func:`import_model_bundle`): extracted with :func:`mdcm.safezip.safe_extract_zip` and
  accepted only when :func:`mdcm.model.load_model` loads it for the expected schema.
* **Sampled datasets** (:func:`export_samples`): samples drawn under do(X=x) written as a
  dataset folder (``data.csv``, PNGs, ``intervention.json``, plus ``study.json``) that
  :func:`mdcm.data.load_study` reads back as the interventional regime do(X=x) — e.g. to train a
  downstream classifier on interventional samples (the paper's CelebA experiment).

Torch is imported only by the functions that load weights.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import DataError, Dataset, _describe, save_dataset, validate_dataset
from .files import atomic_write_json
from .limits import DEFAULT_LIMITS, UploadLimits
from .readers import images_to_uint8, uint8_to_images
from .safezip import safe_extract_zip
from .variables import Schema, SchemaError

if TYPE_CHECKING:
    from .model import DCM, ModelConfig
    from .plan import Plan, Stage

__all__ = [
    "BUNDLE_FORMAT",
    "export_samples",
    "fillable_stages",
    "import_model_bundle",
    "load_pretrained",
    "mechanism_mismatch",
    "model_bundle_bytes",
]

BUNDLE_FORMAT = "mdcm-bundle/1"
BUNDLE_JSON = "bundle.json"
#: the ModelConfig fields that shape the network of a mechanism of each kind (a donor built
#: with other values cannot be loaded into this model's mechanism; an image brings its coder)
_LABEL_FIELDS = ("noise_dim", "hidden")
_IMAGE_FIELDS = (
    "image_net",
    "code_dim",
    "image_hidden",
    "image_modes",
    "image_noise_dim",
    "image_channels",
    "coder_mlp_max",
)
_CONFIG_FIELDS = _LABEL_FIELDS + _IMAGE_FIELDS


# ---------------------------------------------------------------------- reusing mechanisms
def fillable_stages(plan: Plan) -> dict[str, Stage]:
    """Variable -> its stage, for every stage a pre-trained mechanism can fill
    (:attr:`mdcm.plan.Stage.is_conditional`: one variable trained, every target the plain
    conditional P(V | pa(V)))."""
    return {s.trains[0]: s for s in plan.stages if s.is_conditional}


def _spec(var: Any) -> tuple:
    return (var.kind, tuple(var.shape))


def _resolved(config: Mapping[str, Any]) -> dict:
    out = {k: config.get(k) for k in _CONFIG_FIELDS}
    if out.get("image_net") in (None, "auto"):
        out["image_net"] = "latent"
    return out


def mechanism_mismatch(
    donor_meta: Mapping[str, Any], var: str, schema: Schema, config: ModelConfig | Mapping
) -> str | None:
    """Why the mechanism of ``var`` in the model described by ``donor_meta`` (its model.json,
    :func:`mdcm.model.read_model_json`) cannot fill ``var``'s stage in a model of ``schema``
    built with ``config``; None when it can. The mechanism must have the same kind and shape,
    read the same parents (names, order, kinds, classes/shapes), touch no confounder on either
    side, and have the same network sizes (and, for an image, the same image coder)."""
    if var not in schema.names:
        return f"this study has no variable {var!r}"
    try:
        donor = Schema.from_json(donor_meta["schema"])
        if var not in donor.names:
            return f"it has no variable {var!r} (it has {', '.join(donor.names)})"
        dparents = [str(p) for p in (donor_meta.get("parents") or {})[var]]
        dconfig = dict(donor_meta.get("config") or {})
    except (KeyError, TypeError, SchemaError) as exc:
        return f"its model.json does not describe the mechanism of {var!r} ({exc})"
    want, got = _spec(schema[var]), _spec(donor[var])
    if want != got:
        return f"its {var} is {_describe(donor[var])}; this study's is {_describe(schema[var])}"
    parents = schema.graph.parents(var)
    if dparents != list(parents):
        return (
            f"its {var} reads parents ({', '.join(dparents) or 'none'}), here {var} has "
            f"parents ({', '.join(parents) or 'none'})"
        )
    for p in parents:
        if _spec(donor[p]) != _spec(schema[p]):
            return f"its parent {p} is {_describe(donor[p])}; here it is {_describe(schema[p])}"
        if schema[p].kind == "image":
            return (
                f"{var} reads the image {p} through {p}'s image code, which another model's "
                "image coder encodes differently"
            )
    for name, g in (("its", donor.graph), ("this study's", schema.graph)):
        if g.spouses(var):
            return (
                f"{var} shares a hidden confounder with {', '.join(g.spouses(var))} in {name} graph"
            )
    cfg = config.to_json() if hasattr(config, "to_json") else dict(config)
    mine, theirs = _resolved(cfg), _resolved(dconfig)
    fields = _IMAGE_FIELDS if schema[var].kind == "image" else _LABEL_FIELDS
    diff = [k for k in fields if mine[k] != theirs[k]]
    if diff:
        k = diff[0]
        return f"it was built with {k}={theirs[k]}, this model uses {k}={mine[k]}"
    return None


def load_pretrained(
    donors: Mapping[str, Path | str], schema: Schema, config: ModelConfig
) -> dict[str, DCM]:
    """Load the donor model of each variable (``{"X": model_dir}``) for
    ``train(..., pretrained=...)``: safetensors only and checksummed
    (:func:`mdcm.model.load_model`), checked with :func:`mechanism_mismatch`. Raises
    :class:`mdcm.model.ModelFileError` naming the variable, the folder and the reason."""
    from .model import ModelFileError, load_model, read_model_json

    out: dict[str, DCM] = {}
    for var, folder in donors.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFileError(f"pre-trained mechanism for {var!r}: {folder} is not a folder")
        why = mechanism_mismatch(read_model_json(folder), var, schema, config)
        if why:
            raise ModelFileError(
                f"the mechanism of {var!r} in {folder} cannot fill {var}'s stage: {why}"
            )
        out[var] = load_model(folder)
    return out


# ---------------------------------------------------------------------- model bundles
def model_bundle_bytes(model_dir: Path | str, *, source: Mapping[str, Any] | None = None) -> bytes:
    """A trained model folder as a zip: ``model.json``, its weights file and ``bundle.json``
    (format, schema, where it came from). The folder is loaded first, so only a model that
    loads is ever bundled."""
    from .model import load_model, read_model_json

    folder = Path(model_dir)
    model = load_model(folder)
    meta = read_model_json(folder)
    weights = meta.get("weights") or "model.safetensors"
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema": model.schema.to_json(),
        "source": dict(source or {}),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(BUNDLE_JSON, json.dumps(manifest, indent=1))
        z.write(folder / "model.json", "model.json")
        z.write(folder / weights, weights)
    return buf.getvalue()


def import_model_bundle(
    zip_path: Path | str,
    dest: Path | str,
    expect_schema: Schema,
    *,
    limits: UploadLimits = DEFAULT_LIMITS,
) -> Path:
    """Unpack an uploaded model bundle into the new folder ``dest`` and return it.

    The zip goes through :func:`safe_extract_zip` (traversal, links, bombs refused), the model
    folder in it (top level or its one sub-folder) must load with :func:`mdcm.model.load_model`
    for ``expect_schema`` (safetensors only, checksum, same graph and kinds). On any refusal
    nothing is left at ``dest`` and a :class:`DataError` or
    :class:`mdcm.model.ModelFileError` says why."""
    from .model import ModelFileError, load_model

    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists():
        raise DataError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dest.parent))
    try:
        safe_extract_zip(zip_path, staging / "x", limits)
        root = staging / "x"
        subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("__", "."))]
        if not (root / "model.json").is_file() and len(subs) == 1:
            root = subs[0]
        if not (root / "model.json").is_file():
            raise ModelFileError(
                f"{zip_path.name}: no model.json in the bundle (download bundles from the "
                "Train or Checks page, or zip a model folder)"
            )
        try:
            load_model(root, expect_schema=expect_schema)
        except ModelFileError as exc:
            raise ModelFileError(
                f"{zip_path.name}: {str(exc).replace(str(root), 'the bundle')}"
            ) from None
        os.replace(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------- sampled datasets
def export_samples(
    schema: Schema,
    columns: Mapping[str, Any],
    do: Mapping[str, Any],
    folder: Path | str,
) -> Dataset:
    """Write samples drawn under ``do`` as a dataset folder and return the dataset as written.

    ``folder`` must not exist yet (an existing name is refused, never overwritten). It gets
    ``data.csv``, ``images/<var>/*.png``, ``intervention.json`` with the do values (an image
    intervention as the PNG ``do_<var>.png`` next to it) and ``study.json``, so
    :func:`mdcm.data.load_study` reads the folder back as the regime do(...), and the folder
    can also join a study as one of its datasets. Images are stored as 8-bit PNGs: the returned
    dataset holds exactly the pixels written."""
    from PIL import Image

    folder = Path(folder)
    if folder.exists():
        raise DataError(f"{str(folder)!r} already exists: pick a new dataset name")
    cols: dict[str, np.ndarray] = {}
    for v in schema.variables:
        if v.name not in columns:
            raise DataError(f"the samples have no column for variable {v.name!r}")
        a = np.asarray(columns[v.name])
        cols[v.name] = uint8_to_images(images_to_uint8(a)) if v.kind == "image" else a
    do_json: dict[str, Any] = {}
    pngs: dict[str, np.ndarray] = {}
    for k, value in do.items():
        var = schema[k]
        if var.kind == "image":
            px = np.asarray(value, dtype=np.float32)
            pngs[f"do_{k}.png"] = images_to_uint8(px.reshape(var.shape))
            do_json[k] = f"do_{k}.png"
        elif var.kind == "categorical":
            do_json[k] = int(np.asarray(value).reshape(-1)[0])
        else:
            vals = [float(x) for x in np.asarray(value, np.float32).reshape(-1)]
            do_json[k] = vals[0] if len(vals) == 1 else vals
    ds = Dataset(folder.name, cols, do_json)
    validate_dataset(ds, schema)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_dataset(ds, schema, tmp)
        for name, px in pngs.items():
            img = px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(img)).save(tmp / name, format="PNG")
        atomic_write_json(tmp / "study.json", schema.to_json())
        os.rename(tmp, folder)  # refuses (never replaces) a folder made meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ds
