"""The study format: dataset and study folders, their validation and schema inference
(design.md §4). File readers live in :mod:`mdcm.readers`, safe zip extraction in
:mod:`mdcm.safezip`, the upload limits in :mod:`mdcm.limits`.

Folder formats
--------------
A **dataset** is a folder with ``data.csv`` (one row per sample, one column per variable) and, for
an interventional dataset, ``intervention.json`` (``{"do": {"X": 1}}``; absent = observational).

* categorical variable ``V``: one column ``V`` of class indices ``0 … k-1``;
* continuous variable ``V`` with ``d`` dimensions: one column ``V`` when ``d == 1``, else columns
  ``V[0] … V[d-1]``;
* image variable ``V``: one column ``V`` of PNG paths relative to the dataset folder (mode ``L``
  for 1 channel, ``RGB`` for 3); pixel values ``0 … 255`` map linearly to ``[-1, 1]``.

A **study** is a folder with ``study.json`` (``{"graph": "...", "variables": {...}}``) and one
sub-folder per dataset. Variable kinds may be omitted from ``study.json``; they are then inferred
from the data (:func:`infer_schema`).

An intervened variable's ``do`` value is stored as written in ``intervention.json``: a class index
(categorical), a number or list (continuous), a relative PNG path (image), or ``null`` meaning "set
by the experimenter row by row" (the column then holds the assigned values).

Every problem raises :class:`DataError` whose message names the file, row, column and variable.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from .graph import CausalGraph, GraphError
from .limits import DEFAULT_LIMITS, DataError, UploadLimits
from .readers import images_to_uint8, read_csv_upload, read_json, read_png, uint8_to_images
from .variables import MAX_CLASSES, Schema, SchemaError, Variable

__all__ = [
    "DEFAULT_LIMITS",
    "DataError",
    "Dataset",
    "ImageArray",
    "Study",
    "UploadLimits",
    "check_do",
    "column_names",
    "infer_schema",
    "load_dataset",
    "load_study",
    "save_dataset",
    "save_study",
    "validate_dataset",
]

STUDY_FILE = "study.json"
DATA_FILE = "data.csv"
INTERVENTION_FILE = "intervention.json"
IMAGE_DIR = "images"
MAX_INFERRED_CLASSES = 32  # integer columns with max+1 <= this are read as categorical
_DIM_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\[(?P<i>\d+)\]$")


# ----------------------------------------------------------------------------- data types
class ImageArray(NDArrayOperatorsMixin):
    """An image column held as 8-bit pixels ``(N, C, H, W)`` (``0 … 255``, the PNG grid) and read
    as float32 in ``[-1, 1]``: a quarter of the memory of a float column (20,000 images of
    128x128 take 330 MB instead of 1.3 GB), and row selections stay 8-bit.

    It behaves like the float array it stands for: ``len``, ``shape``, ``dtype`` (float32),
    ``a[rows]`` (another ImageArray), ``np.asarray(a)`` and arithmetic (float32 copies), and any
    other ndarray method on a float copy. ``pixels`` is the uint8 array itself (it may be a
    ``np.memmap``); the trainer moves it to the device as is and converts one batch at a time.
    """

    __slots__ = ("pixels",)

    def __init__(self, pixels: np.ndarray) -> None:
        pixels = pixels if isinstance(pixels, np.ndarray) else np.asarray(pixels)
        if pixels.dtype != np.uint8:
            raise TypeError(f"ImageArray holds uint8 pixels, not {pixels.dtype}")
        object.__setattr__(self, "pixels", pixels)

    @classmethod
    def from_float(cls, images: np.ndarray) -> ImageArray:
        """Quantise float images in ``[-1, 1]`` to the 8-bit grid."""
        return cls(images_to_uint8(images))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def ndim(self) -> int:
        return self.pixels.ndim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: object) -> ImageArray | float:
        part = self.pixels[index]
        if np.ndim(part) == 0:
            return float(part) / 127.5 - 1.0
        return ImageArray(part)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        out = uint8_to_images(self.pixels)
        return out if dtype is None else out.astype(dtype)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: object, **kw: object):
        args = [np.asarray(x) if isinstance(x, ImageArray) else x for x in inputs]
        return getattr(ufunc, method)(*args, **kw)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # pickling and copy protocols: no float copy
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __getstate__(self) -> dict:
        return {"pixels": self.pixels}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "pixels", state["pixels"])

    def __repr__(self) -> str:
        return f"ImageArray(shape={self.shape}, uint8 pixels)"


@dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset: samples from one regime (observational when ``do`` is empty).

    ``columns`` maps each variable to an array: categorical int64 ``(N,)``, continuous float32
    ``(N, d)``, image float32 ``(N, C, H, W)`` in ``[-1, 1]`` — or an :class:`ImageArray` (8-bit
    pixels read as such floats; what dataset folders and the built-ins give). Equality is
    identity (the columns are arrays).
    """

    name: str
    columns: Mapping[str, np.ndarray]
    do: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"dataset {self.name!r}: columns have different lengths {lengths}")

    @property
    def n(self) -> int:
        return next(iter(len(v) for v in self.columns.values()), 0)

    @property
    def regime(self) -> frozenset[str]:
        return frozenset(self.do)

    def take(self, index: np.ndarray | Sequence[int] | slice) -> Dataset:
        """The rows ``index`` (e.g. a train/validation split) as a new dataset."""
        return Dataset(self.name, {k: v[index] for k, v in self.columns.items()}, dict(self.do))

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A seeded random split into (first ``fraction`` of rows, the rest)."""
        perm = np.random.default_rng(seed).permutation(self.n)
        cut = int(round(fraction * self.n))
        return self.take(np.sort(perm[:cut])), self.take(np.sort(perm[cut:]))


@dataclass(frozen=True, eq=False)
class Study:
    """A causal graph with variable kinds (the schema) and the datasets observed under it."""

    schema: Schema
    datasets: tuple[Dataset, ...]
    path: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        names = [d.name for d in self.datasets]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise DataError(f"study has two datasets named {dup[0]!r}")
        for d in self.datasets:
            validate_dataset(d, self.schema)

    @property
    def graph(self) -> CausalGraph:
        return self.schema.graph

    @property
    def observational(self) -> Dataset | None:
        return next((d for d in self.datasets if not d.do), None)

    @property
    def interventions(self) -> list[frozenset[str]]:
        return [d.regime for d in self.datasets if d.do]

    def dataset(self, name: str) -> Dataset:
        for d in self.datasets:
            if d.name == name:
                return d
        raise DataError(
            f"no dataset named {name!r}; the study has {', '.join(d.name for d in self.datasets)}"
        )


# ----------------------------------------------------------------------------- helpers
def column_names(var: Variable) -> list[str]:
    """CSV columns that hold ``var`` (``V`` or ``V[0] … V[d-1]`` for a continuous vector)."""
    if var.kind == "continuous" and var.shape[0] > 1:
        return [f"{var.name}[{i}]" for i in range(var.shape[0])]
    return [var.name]


def _describe(var: Variable) -> str:
    if var.kind == "categorical":
        return f"categorical, {var.classes} classes"
    if var.kind == "continuous":
        return f"continuous, {var.shape[0]} dim(s)"
    return f"image {list(var.shape)}"


def _safe_relative(rel: str) -> bool:
    if not rel or "\x00" in rel or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return False
    parts = re.split(r"[\\/]", rel)
    return ".." not in parts


def _parse_floats(values: Sequence[str], where: str, col: str) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except ValueError:
        out = None
    if out is None:
        for i, s in enumerate(values):
            try:
                float(s)
            except ValueError:
                raise DataError(
                    f"{where}: row {i + 1}, column {col!r}: {s!r} is not a number"
                ) from None
        raise DataError(f"{where}: column {col!r}: not numeric")  # pragma: no cover
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: row {i + 1}, column {col!r}: {values[i]!r} is not a finite "
            "number (NaN and infinity are not allowed)"
        )
    return out


def _parse_classes(values: Sequence[str], where: str, var: Variable) -> np.ndarray:
    f = _parse_floats(values, where, var.name)
    frac = np.flatnonzero(f != np.round(f))
    if frac.size:
        i = int(frac[0])
        raise DataError(
            f"{where}: row {i + 1}, column {var.name!r}: {values[i]!r} is not a class "
            f"index (variable {var.name!r} is {_describe(var)})"
        )
    out = f.astype(np.int64)
    bad = np.flatnonzero((out < 0) | (out >= var.classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: row {i + 1}, column {var.name!r}: class {values[i]} is out of "
            f"range; variable {var.name!r} declares {var.classes} classes "
            f"(0 … {var.classes - 1})"
        )
    return out


def _read_image_column(
    folder: Path, values: Sequence[str], where: str, var: Variable, limits: UploadLimits
) -> ImageArray:
    root = folder.resolve()
    out = np.empty((len(values),) + var.shape, dtype=np.uint8)
    for i, rel in enumerate(values):
        at = f"{where}: row {i + 1}, column {var.name!r}"
        if not _safe_relative(rel):
            raise DataError(
                f"{at}: image path {rel!r} must be relative to the dataset folder "
                "and stay inside it"
            )
        p = folder / rel
        try:
            p.resolve().relative_to(root)
        except ValueError:
            raise DataError(f"{at}: image path {rel!r} leaves the dataset folder") from None
        out[i] = read_png(p, where=at, limits=limits, expect=var.shape, as_uint8=True)
    return ImageArray(out)


def _read_intervention(folder: Path, schema: Schema, where: str) -> dict[str, object]:
    p = folder / INTERVENTION_FILE
    if not p.exists():
        return {}
    wi = f"{where}/{INTERVENTION_FILE}"
    data = read_json(p, wi)
    if not isinstance(data, dict) or not isinstance(data.get("do"), dict):
        raise DataError(f'{wi}: expected an object like {{"do": {{"X": 1}}}}')
    do = data["do"]
    if not do:
        raise DataError(f'{wi}: "do" is empty; remove the file for an observational dataset')
    check_do(do, schema, wi)
    return dict(do)


def check_do(do: Mapping[str, object], schema: Schema, where: str = "intervention") -> None:
    """Check that every intervened variable exists and its value fits its kind."""
    for name, value in do.items():
        if name not in schema.names:
            raise DataError(
                f"{where}: intervention on unknown variable {name!r}; the graph has "
                f"{', '.join(schema.names)}"
            )
        var = schema[name]
        if value is None:
            continue
        if var.kind == "categorical":
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(
                    f"{where}: do({name}={value!r}) must be a class index 0 … {var.classes - 1}"
                )
            if not 0 <= value < var.classes:
                raise DataError(
                    f"{where}: do({name}={value}) is out of range; {name!r} declares "
                    f"{var.classes} classes"
                )
        elif var.kind == "continuous":
            vals = value if isinstance(value, list) else [value]
            if len(vals) != var.shape[0] or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in vals
            ):
                raise DataError(
                    f"{where}: do({name}={value!r}) must be {var.shape[0]} finite number(s)"
                )
        elif not isinstance(value, str) or not _safe_relative(value):
            raise DataError(f"{where}: do({name}=…) for an image must be a relative PNG path")


# ----------------------------------------------------------------------------- datasets
def load_dataset(
    folder: Path | str, schema: Schema, *, limits: UploadLimits = DEFAULT_LIMITS
) -> Dataset:
    """Read one dataset folder (``data.csv``, optional ``intervention.json``, PNG files)."""
    folder = Path(folder)
    where = f"{folder.name}/{DATA_FILE}"
    if not (folder / DATA_FILE).is_file():
        raise DataError(f"dataset folder {str(folder)!r} has no {DATA_FILE}")
    do = _read_intervention(folder, schema, folder.name)
    header, rows = read_csv_upload(folder / DATA_FILE, limits=limits, where=where)
    if not rows:
        raise DataError(f"{where}: the dataset is empty (a header but no rows)")
    expected = {c: v for v in schema.variables for c in column_names(v)}
    extra = [h for h in header if h not in expected]
    if extra:
        m = _DIM_RE.match(extra[0])
        base = m.group("name") if m else extra[0]
        if base in schema.names:
            raise DataError(
                f"{where}: column {extra[0]!r} does not fit variable {base!r} "
                f"({_describe(schema[base])}); expected columns "
                f"{', '.join(column_names(schema[base]))}"
            )
        raise DataError(
            f"{where}: column {extra[0]!r} is not a variable of the graph "
            f"({', '.join(schema.names)})"
        )
    index = {h: i for i, h in enumerate(header)}
    columns: dict[str, np.ndarray] = {}
    for var in schema.variables:
        cols = column_names(var)
        missing = [c for c in cols if c not in index]
        if (
            missing
            and len(missing) == len(cols)
            and var.name in do
            and do[var.name] is not None
            and var.kind != "image"
        ):
            columns[var.name] = _fill_do(var, do[var.name], len(rows))
            continue
        if missing:
            raise DataError(
                f"{where}: missing column {missing[0]!r} for variable {var.name!r} "
                f"({_describe(var)}); the variable is in the graph but not in the data"
            )
        values = [[r[index[c]] for r in rows] for c in cols]
        if var.kind == "categorical":
            columns[var.name] = _parse_classes(values[0], where, var)
        elif var.kind == "continuous":
            columns[var.name] = np.stack(
                [_parse_floats(v, where, c) for v, c in zip(values, cols, strict=True)], axis=1
            ).astype(np.float32)
        else:
            columns[var.name] = _read_image_column(folder, values[0], where, var, limits)
        if var.name in do and do[var.name] is not None and var.kind != "image":
            want = _fill_do(var, do[var.name], 1)[0]
            got = columns[var.name]
            diff = np.flatnonzero(np.any((got != want).reshape(len(got), -1), axis=1))
            if diff.size:
                i = int(diff[0])
                raise DataError(
                    f"{where}: row {i + 1}, column {var.name!r}: value "
                    f"{values[0][i]!r} contradicts intervention.json "
                    f"do({var.name}={do[var.name]!r})"
                )
    return Dataset(folder.name, columns, do)


def _fill_do(var: Variable, value: object, n: int) -> np.ndarray:
    if var.kind == "categorical":
        return np.full(n, int(value), dtype=np.int64)
    vals = value if isinstance(value, list) else [value]
    return np.tile(np.asarray(vals, np.float32)[None], (n, 1))


def validate_dataset(ds: Dataset, schema: Schema) -> None:
    """Check an in-memory dataset against the schema (names, dtypes, shapes, ranges, finiteness)."""
    at = f"dataset {ds.name!r}"
    missing = [v for v in schema.names if v not in ds.columns]
    extra = [v for v in ds.columns if v not in schema.names]
    if missing:
        raise DataError(f"{at}: variable {missing[0]!r} is in the graph but not in the data")
    if extra:
        raise DataError(
            f"{at}: column {extra[0]!r} is not a variable of the graph ({', '.join(schema.names)})"
        )
    if ds.n == 0:
        raise DataError(f"{at}: the dataset is empty")
    check_do(ds.do, schema, at)
    for var in schema.variables:
        col = ds.columns[var.name]
        if isinstance(col, ImageArray):  # 8-bit pixels: always finite and in range
            shape = (ds.n,) + tuple(var.shape)
            if var.kind != "image" or col.shape != shape:
                raise DataError(
                    f"{at}: variable {var.name!r} ({_describe(var)}) cannot hold images of "
                    f"shape {col.shape}" + (f"; expected {shape}" if var.kind == "image" else "")
                )
            continue
        a = np.asarray(col)
        if var.kind == "categorical":
            if a.shape != (ds.n,) or not np.issubdtype(a.dtype, np.integer):
                raise DataError(
                    f"{at}: variable {var.name!r} must be an integer array of shape "
                    f"({ds.n},), got {a.dtype} {a.shape}"
                )
            bad = np.flatnonzero((a < 0) | (a >= var.classes))
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{at}: row {i + 1}, variable {var.name!r}: class {int(a[i])} is "
                    f"out of range; {var.classes} classes declared"
                )
        else:
            shape = (ds.n,) + tuple(var.shape)
            if a.shape != shape or not np.issubdtype(a.dtype, np.floating):
                raise DataError(
                    f"{at}: variable {var.name!r} must be a float array of shape "
                    f"{shape}, got {a.dtype} {a.shape}"
                )
            finite = np.isfinite(a.reshape(ds.n, -1)).all(axis=1)
            if not finite.all():
                i = int(np.flatnonzero(~finite)[0])
                raise DataError(f"{at}: row {i + 1}, variable {var.name!r}: NaN or infinity")
            if var.kind == "image":
                lo, hi = float(a.min()), float(a.max())
                if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
                    raise DataError(
                        f"{at}: image variable {var.name!r} has values in "
                        f"[{lo:.3g}, {hi:.3g}]; images must lie in [-1, 1]"
                    )


def save_dataset(ds: Dataset, schema: Schema, folder: Path | str) -> Path:
    """Write one dataset folder (``data.csv``, ``intervention.json``, ``images/<var>/*.png``)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header: list[str] = []
    cols: list[list[str]] = []
    for var in schema.variables:
        col = ds.columns[var.name]
        a = col.pixels if isinstance(col, ImageArray) else np.asarray(col)
        header += column_names(var)
        if var.kind == "categorical":
            cols.append([str(int(x)) for x in a])
        elif var.kind == "continuous":
            cols += [[format(float(x), ".9g") for x in a[:, j]] for j in range(a.shape[1])]
        else:
            sub = folder / IMAGE_DIR / var.name
            sub.mkdir(parents=True, exist_ok=True)
            px = a if isinstance(col, ImageArray) else images_to_uint8(a)
            names = []
            width = max(5, len(str(ds.n)))
            for i in range(ds.n):
                rel = f"{IMAGE_DIR}/{var.name}/{i:0{width}d}.png"
                img = px[i, 0] if var.shape[0] == 1 else px[i].transpose(1, 2, 0)
                Image.fromarray(np.ascontiguousarray(img), mode=None).save(
                    folder / rel, format="PNG", compress_level=1
                )
                names.append(rel)
            cols.append(names)
    with open(folder / DATA_FILE, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(zip(*cols, strict=True))
    if ds.do:
        (folder / INTERVENTION_FILE).write_text(json.dumps({"do": _jsonable(ds.do)}, indent=1))
    return folder


def _jsonable(do: Mapping[str, object]) -> dict:
    out = {}
    for k, v in do.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# ----------------------------------------------------------------------------- studies
def _dataset_folders(root: Path) -> list[Path]:
    subs = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "__")) and (p / DATA_FILE).is_file()
    )
    if subs:
        return subs
    if (root / DATA_FILE).is_file():
        return [root]
    raise DataError(
        f"study folder {str(root)!r} has no dataset: expected sub-folders with {DATA_FILE}"
    )


def _read_study_json(root: Path) -> dict:
    p = root / STUDY_FILE
    if not p.is_file():
        raise DataError(f"{str(root)!r} has no {STUDY_FILE}")
    data = read_json(p, STUDY_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("graph"), str):
        raise DataError(
            f'{STUDY_FILE}: expected an object with a "graph" text, e.g. '
            '{"graph": "X -> Y", "variables": {...}}'
        )
    if not isinstance(data.get("variables", {}), dict):
        raise DataError(f'{STUDY_FILE}: "variables" must be an object keyed by variable name')
    return data


def load_study(path: Path | str, *, limits: UploadLimits = DEFAULT_LIMITS) -> Study:
    """Read a study folder: ``study.json`` plus every sub-folder holding a ``data.csv``."""
    root = Path(path)
    if root.is_file() and root.suffix.lower() == ".zip":
        raise DataError(f"{root.name} is a zip archive: extract it with safe_extract_zip first")
    if not root.is_dir():
        raise DataError(f"study folder {str(root)!r} does not exist")
    data = _read_study_json(root)
    try:
        graph = CausalGraph.parse(data["graph"])
    except GraphError as exc:
        raise DataError(f"{STUDY_FILE}: graph: {exc}") from None
    folders = _dataset_folders(root)
    try:
        schema = infer_schema(graph, folders, declared=data.get("variables", {}), limits=limits)
    except SchemaError as exc:
        raise DataError(f"{STUDY_FILE}: {exc}") from None
    datasets = sorted(
        (load_dataset(f, schema, limits=limits) for f in folders),
        key=lambda d: (bool(d.do), d.name),
    )  # observational first
    if len(folders) == 1 and folders[0] == root and not datasets[0].do:
        datasets = [Dataset("observational", datasets[0].columns, {})]
    return Study(schema, tuple(datasets), root)


def save_study(study: Study, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``study`` as a folder (atomically: built next to ``path``, then renamed)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise DataError(
            f"{str(path)!r} already exists and is not empty (pass overwrite=True to replace it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / STUDY_FILE).write_text(json.dumps(study.schema.to_json(), indent=1))
        for ds in study.datasets:
            if not _safe_relative(ds.name) or "/" in ds.name or "\\" in ds.name:
                raise DataError(f"dataset name {ds.name!r} cannot be a folder name")
            save_dataset(ds, study.schema, tmp / ds.name)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def infer_schema(
    graph: CausalGraph,
    folder: Path | str | Iterable[Path | str],
    *,
    declared: Mapping[str, object] | None = None,
    limits: UploadLimits = DEFAULT_LIMITS,
) -> Schema:
    """Variable kinds for ``graph``, read from ``data.csv`` where ``declared`` omits them.

    Integer columns ``0 … m`` with ``m + 1 <= 32`` become categorical with ``k = m + 1`` classes
    (at least 2; the largest over all folders), other numbers continuous (``V[0] … V[d-1]``
    columns give a vector), ``.png`` paths an image whose shape comes from the first image.
    ``declared`` entries may be complete (``{"kind": "categorical", "classes": 3}``), a kind only
    (``"image"`` or ``{"kind": "image"}``), or absent.
    """
    folders = [Path(folder)] if isinstance(folder, str | Path) else [Path(f) for f in folder]
    declared = dict(declared or {})
    for name in declared:
        if name not in graph.nodes:
            raise DataError(
                f"{STUDY_FILE}: variable {name!r} is declared but is not in the graph "
                f"({', '.join(graph.nodes)})"
            )
    out: list[Variable] = []
    tables = None
    for name in graph.nodes:
        spec = declared.get(name)
        if spec is None:
            kind = None
        elif isinstance(spec, str):
            kind = spec
        elif isinstance(spec, dict):
            kind = spec.get("kind")
        else:
            raise DataError(f"{STUDY_FILE}: variable {name!r}: expected a kind or an object")
        complete = isinstance(spec, dict) and (
            (kind == "categorical" and "classes" in spec)
            or (kind in ("continuous", "image") and "shape" in spec)
        )
        if complete:
            out.append(Variable.from_json(name, spec))
            continue
        if kind is not None and kind not in ("categorical", "continuous", "image"):
            raise DataError(f"{STUDY_FILE}: variable {name!r}: unknown kind {kind!r}")
        if tables is None:
            tables = [
                (f, *read_csv_upload(f / DATA_FILE, limits=limits, where=f"{f.name}/{DATA_FILE}"))
                for f in folders
            ]
        out.append(_infer_variable(name, kind, tables, limits))
    return Schema(graph, tuple(out))


def _infer_variable(name: str, kind: str | None, tables: list, limits: UploadLimits) -> Variable:
    dims: set[int] = set()
    values: list[tuple[Path, str, list[str]]] = []
    for folder, header, rows in tables:
        where = f"{folder.name}/{DATA_FILE}"
        if name in header:
            values.append((folder, where, [r[header.index(name)] for r in rows]))
        for h in header:
            m = _DIM_RE.match(h)
            if m and m.group("name") == name:
                dims.add(int(m.group("i")))
        if name not in header and not any(
            _DIM_RE.match(h) and _DIM_RE.match(h).group("name") == name for h in header
        ):
            raise DataError(
                f"{where}: missing column {name!r}; the variable is in the graph but "
                "not in the data"
            )
    if dims:
        d = max(dims) + 1
        if dims != set(range(d)):
            raise DataError(f"columns of {name!r}: expected {name}[0] … {name}[{d - 1}]")
        if kind not in (None, "continuous"):
            raise DataError(f"variable {name!r} has vector columns {name}[i] but kind {kind!r}")
        return Variable(name, "continuous", shape=(d,))
    all_vals = [v for _, _, vs in values for v in vs]
    if not all_vals:
        raise DataError(f"variable {name!r}: no rows to infer its kind from")
    looks_png = [v.lower().endswith(".png") for v in all_vals]
    if kind == "image" or (kind is None and all(looks_png)):
        folder, where, vs = values[0]
        if not _safe_relative(vs[0]):
            raise DataError(
                f"{where}: row 1, column {name!r}: image path {vs[0]!r} must be "
                "relative to the dataset folder"
            )
        first = read_png(folder / vs[0], where=f"{where}: row 1, column {name!r}", limits=limits)
        return Variable(name, "image", shape=first.shape)
    if any(looks_png):
        folder, where, vs = values[0]
        i = (
            next(i for i, v in enumerate(vs) if not v.lower().endswith(".png"))
            if not all(v.lower().endswith(".png") for v in vs)
            else 0
        )
        raise DataError(f"{where}: row {i + 1}, column {name!r}: {vs[i]!r} mixes with .png paths")
    nums = [(_parse_floats(vs, where, name)) for _, where, vs in values]
    f = np.concatenate(nums)
    integral = bool(np.all(f == np.round(f)))
    if kind == "categorical" or (
        kind is None and integral and f.min() >= 0 and f.max() + 1 <= MAX_INFERRED_CLASSES
    ):
        if not integral or f.min() < 0:
            raise DataError(
                f"variable {name!r} is declared categorical but its values are not "
                "class indices 0, 1, 2, …"
            )
        k = max(2, int(f.max()) + 1)
        if k > MAX_CLASSES:
            raise DataError(f"variable {name!r}: {k} classes is more than {MAX_CLASSES}")
        return Variable(name, "categorical", classes=k)
    return Variable(name, "continuous", shape=(1,))
