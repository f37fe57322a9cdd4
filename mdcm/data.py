"""Dataset and study folders, validation, real-data readers and safe uploads (design.md §4).

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
Uploaded archives go through :func:`safe_extract_zip` (path traversal, symlinks, zip bombs).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath

import numpy as np

from .graph import CausalGraph, GraphError
from .variables import MAX_CLASSES, Schema, SchemaError, Variable

__all__ = [
    "DataError", "Dataset", "Study", "UploadLimits", "DEFAULT_LIMITS",
    "load_study", "save_study", "load_dataset", "save_dataset", "infer_schema",
    "read_csv_upload", "read_png", "read_mnist_idx", "read_medmnist_npz", "safe_extract_zip",
    "find_study_dir", "column_names", "images_to_uint8", "uint8_to_images",
]

STUDY_FILE = "study.json"
DATA_FILE = "data.csv"
INTERVENTION_FILE = "intervention.json"
IMAGE_DIR = "images"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_INFERRED_CLASSES = 32          # integer columns with max+1 <= this are read as categorical
_DIM_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\[(?P<i>\d+)\]$")


class DataError(ValueError):
    """Bad data: the message names the file, row, column and variable at fault."""


@dataclass(frozen=True)
class UploadLimits:
    """Hard limits for user-supplied files (zip uploads, CSV rows, images).

    ``max_ratio`` is checked for members larger than ``ratio_min_bytes`` only (tiny files may
    compress very well legitimately). ``max_nesting`` is how many levels of zip-inside-zip are
    extracted; deeper archives are refused.
    """

    max_files: int = 100_000
    max_total_bytes: int = 1 << 30              # 1 GiB uncompressed, all members together
    max_file_bytes: int = 256 << 20             # 256 MiB for one member
    max_ratio: float = 200.0                    # uncompressed / compressed
    ratio_min_bytes: int = 1 << 20
    max_image_pixels: int = 1 << 20             # H * W of one image (decompression bombs)
    max_rows: int = 1_000_000
    max_nesting: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UploadLimits:
        """Defaults overridden by ``MDCM_LIMIT_<FIELD>`` variables (e.g. ``MDCM_LIMIT_MAX_ROWS``),
        so the app and the command line can be configured without code."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = env.get(f"MDCM_LIMIT_{f.name.upper()}")
            if raw is None:
                continue
            try:
                value = float(raw) if f.type in (float, "float") else int(raw)
            except ValueError:
                raise DataError(f"MDCM_LIMIT_{f.name.upper()}={raw!r} is not a number") from None
            if value < 0:
                raise DataError(f"MDCM_LIMIT_{f.name.upper()} must not be negative")
            values[f.name] = value
        return cls(**values)


DEFAULT_LIMITS = UploadLimits.from_env(os.environ)


# ----------------------------------------------------------------------------- data types
@dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset: samples from one regime (observational when ``do`` is empty).

    ``columns`` maps each variable to an array: categorical int64 ``(N,)``, continuous float32
    ``(N, d)``, image float32 ``(N, C, H, W)`` in ``[-1, 1]``. Equality is identity (the columns
    are arrays).
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
        raise DataError(f"no dataset named {name!r}; the study has "
                        f"{', '.join(d.name for d in self.datasets)}")


# ----------------------------------------------------------------------------- helpers
def column_names(var: Variable) -> list[str]:
    """CSV columns that hold ``var`` (``V`` or ``V[0] … V[d-1]`` for a continuous vector)."""
    if var.kind == "continuous" and var.shape[0] > 1:
        return [f"{var.name}[{i}]" for i in range(var.shape[0])]
    return [var.name]


def uint8_to_images(a: np.ndarray) -> np.ndarray:
    """uint8 pixels ``0 … 255`` to float32 ``[-1, 1]``."""
    return (a.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def images_to_uint8(x: np.ndarray) -> np.ndarray:
    """float ``[-1, 1]`` to uint8 pixels (clipped, rounded)."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


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


# ----------------------------------------------------------------------------- CSV
def read_csv_upload(path: Path | str, *, limits: UploadLimits = DEFAULT_LIMITS,
                    where: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Read a user CSV: strips a UTF-8 BOM and blank lines, honours quoted fields, checks that
    every row has as many fields as the header. Returns ``(header, rows)`` of stripped strings."""
    path = Path(path)
    where = where or str(path)
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise DataError(f"{where}: {size} bytes, more than the limit of "
                            f"{limits.max_file_bytes}")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{where}: line {line} is not valid UTF-8 text") from None
    if "\x00" in text:
        raise DataError(f"{where}: contains NUL bytes; it is not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            fields = [f.strip() for f in fields]
            if header is None:
                header = fields
                blank = [i + 1 for i, h in enumerate(header) if not h]
                if blank:
                    raise DataError(f"{where}: header column {blank[0]} has no name")
                dup = sorted(h for h, k in Counter(header).items() if k > 1)
                if dup:
                    raise DataError(f"{where}: column {dup[0]!r} appears twice in the header")
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{where}: row {len(rows) + 1} (line {reader.line_num}) has {len(fields)} "
                    f"field(s), the header has {len(header)} ({', '.join(header)})")
            rows.append(fields)
            if len(rows) > limits.max_rows:
                raise DataError(f"{where}: more than {limits.max_rows} rows")
    except csv.Error as exc:
        raise DataError(f"{where}: line {reader.line_num}: malformed CSV ({exc})") from None
    if header is None:
        raise DataError(f"{where}: the file is empty (no header row)")
    return header, rows


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
                raise DataError(f"{where}: row {i + 1}, column {col!r}: {s!r} is not a number"
                                ) from None
        raise DataError(f"{where}: column {col!r}: not numeric")  # pragma: no cover
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: row {i + 1}, column {col!r}: {values[i]!r} is not a finite "
                        "number (NaN and infinity are not allowed)")
    return out


def _parse_classes(values: Sequence[str], where: str, var: Variable) -> np.ndarray:
    f = _parse_floats(values, where, var.name)
    frac = np.flatnonzero(f != np.round(f))
    if frac.size:
        i = int(frac[0])
        raise DataError(f"{where}: row {i + 1}, column {var.name!r}: {values[i]!r} is not a class "
                        f"index (variable {var.name!r} is {_describe(var)})")
    out = f.astype(np.int64)
    bad = np.flatnonzero((out < 0) | (out >= var.classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: row {i + 1}, column {var.name!r}: class {values[i]} is out of "
                        f"range; variable {var.name!r} declares {var.classes} classes "
                        f"(0 … {var.classes - 1})")
    return out


# ----------------------------------------------------------------------------- images
def read_png(path: Path, *, where: str, limits: UploadLimits = DEFAULT_LIMITS,
             expect: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one PNG as float32 ``(C, H, W)`` in ``[-1, 1]``; checks magic bytes, size before
    decoding (decompression bombs), mode (``L`` or ``RGB``) and the expected shape."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as fh:
            head = fh.read(len(PNG_MAGIC))
            if head != PNG_MAGIC:
                kind = "text" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) \
                    else "binary data"
                raise DataError(f"{where}: file {path.name!r} is not a PNG image (it starts with "
                                f"{kind}, not the PNG signature)")
            fh.seek(0)
            try:
                with Image.open(fh, formats=["PNG"]) as im:
                    w, h = im.size
                    if w * h > limits.max_image_pixels:
                        raise DataError(f"{where}: image {path.name!r} is {w}x{h} pixels, more "
                                        f"than the limit of {limits.max_image_pixels}")
                    if expect is not None:
                        c, eh, ew = expect
                        if (h, w) != (eh, ew):
                            raise DataError(f"{where}: image {path.name!r} is {h}x{w} (HxW); "
                                            f"expected {eh}x{ew}")
                    mode = im.mode
                    if mode not in ("L", "RGB"):
                        raise DataError(f"{where}: image {path.name!r} has mode {mode!r}; use "
                                        "'L' (grayscale) or 'RGB'")
                    if expect is not None and (1 if mode == "L" else 3) != expect[0]:
                        raise DataError(f"{where}: image {path.name!r} has mode {mode!r} "
                                        f"({1 if mode == 'L' else 3} channel(s)); expected "
                                        f"{expect[0]} channel(s) "
                                        f"({'L' if expect[0] == 1 else 'RGB'})")
                    im.load()
                    a = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError,
                    SyntaxError, ValueError) as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(f"{where}: image {path.name!r} cannot be read ({exc})") from None
    except FileNotFoundError:
        raise DataError(f"{where}: image file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: {str(path)!r} is a folder, not an image") from None
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return uint8_to_images(a)


def _read_image_column(folder: Path, values: Sequence[str], where: str, var: Variable,
                       limits: UploadLimits) -> np.ndarray:
    root = folder.resolve()
    out = np.empty((len(values),) + var.shape, dtype=np.float32)
    for i, rel in enumerate(values):
        at = f"{where}: row {i + 1}, column {var.name!r}"
        if not _safe_relative(rel):
            raise DataError(f"{at}: image path {rel!r} must be relative to the dataset folder "
                            "and stay inside it")
        p = folder / rel
        try:
            p.resolve().relative_to(root)
        except ValueError:
            raise DataError(f"{at}: image path {rel!r} leaves the dataset folder") from None
        out[i] = read_png(p, where=at, limits=limits, expect=var.shape)
    return out


# ----------------------------------------------------------------------------- interventions
def read_json(path: Path, where: str) -> object:
    """Parse a small JSON file; every failure becomes a DataError naming ``where``."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read ({exc})") from None


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
            raise DataError(f"{where}: intervention on unknown variable {name!r}; the graph has "
                            f"{', '.join(schema.names)}")
        var = schema[name]
        if value is None:
            continue
        if var.kind == "categorical":
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"{where}: do({name}={value!r}) must be a class index "
                                f"0 … {var.classes - 1}")
            if not 0 <= value < var.classes:
                raise DataError(f"{where}: do({name}={value}) is out of range; {name!r} declares "
                                f"{var.classes} classes")
        elif var.kind == "continuous":
            vals = value if isinstance(value, list) else [value]
            if (len(vals) != var.shape[0]
                    or not all(isinstance(v, int | float) and not isinstance(v, bool)
                               and math.isfinite(v) for v in vals)):
                raise DataError(f"{where}: do({name}={value!r}) must be {var.shape[0]} finite "
                                "number(s)")
        elif not isinstance(value, str) or not _safe_relative(value):
            raise DataError(f"{where}: do({name}=…) for an image must be a relative PNG path")


# ----------------------------------------------------------------------------- datasets
def load_dataset(folder: Path | str, schema: Schema, *,
                 limits: UploadLimits = DEFAULT_LIMITS) -> Dataset:
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
            raise DataError(f"{where}: column {extra[0]!r} does not fit variable {base!r} "
                            f"({_describe(schema[base])}); expected columns "
                            f"{', '.join(column_names(schema[base]))}")
        raise DataError(f"{where}: column {extra[0]!r} is not a variable of the graph "
                        f"({', '.join(schema.names)})")
    index = {h: i for i, h in enumerate(header)}
    columns: dict[str, np.ndarray] = {}
    for var in schema.variables:
        cols = column_names(var)
        missing = [c for c in cols if c not in index]
        if missing and len(missing) == len(cols) and var.name in do and do[var.name] is not None \
                and var.kind != "image":
            columns[var.name] = _fill_do(var, do[var.name], len(rows))
            continue
        if missing:
            raise DataError(f"{where}: missing column {missing[0]!r} for variable {var.name!r} "
                            f"({_describe(var)}); the variable is in the graph but not in the data")
        values = [[r[index[c]] for r in rows] for c in cols]
        if var.kind == "categorical":
            columns[var.name] = _parse_classes(values[0], where, var)
        elif var.kind == "continuous":
            columns[var.name] = np.stack([_parse_floats(v, where, c)
                                          for v, c in zip(values, cols, strict=True)],
                                         axis=1).astype(np.float32)
        else:
            columns[var.name] = _read_image_column(folder, values[0], where, var, limits)
        if var.name in do and do[var.name] is not None and var.kind != "image":
            want = _fill_do(var, do[var.name], 1)[0]
            got = columns[var.name]
            diff = np.flatnonzero(np.any((got != want).reshape(len(got), -1), axis=1))
            if diff.size:
                i = int(diff[0])
                raise DataError(f"{where}: row {i + 1}, column {var.name!r}: value "
                                f"{values[0][i]!r} contradicts intervention.json "
                                f"do({var.name}={do[var.name]!r})")
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
        raise DataError(f"{at}: column {extra[0]!r} is not a variable of the graph "
                        f"({', '.join(schema.names)})")
    if ds.n == 0:
        raise DataError(f"{at}: the dataset is empty")
    check_do(ds.do, schema, at)
    for var in schema.variables:
        a = np.asarray(ds.columns[var.name])
        if var.kind == "categorical":
            if a.shape != (ds.n,) or not np.issubdtype(a.dtype, np.integer):
                raise DataError(f"{at}: variable {var.name!r} must be an integer array of shape "
                                f"({ds.n},), got {a.dtype} {a.shape}")
            bad = np.flatnonzero((a < 0) | (a >= var.classes))
            if bad.size:
                i = int(bad[0])
                raise DataError(f"{at}: row {i + 1}, variable {var.name!r}: class {int(a[i])} is "
                                f"out of range; {var.classes} classes declared")
        else:
            shape = (ds.n,) + tuple(var.shape)
            if a.shape != shape or not np.issubdtype(a.dtype, np.floating):
                raise DataError(f"{at}: variable {var.name!r} must be a float array of shape "
                                f"{shape}, got {a.dtype} {a.shape}")
            finite = np.isfinite(a.reshape(ds.n, -1)).all(axis=1)
            if not finite.all():
                i = int(np.flatnonzero(~finite)[0])
                raise DataError(f"{at}: row {i + 1}, variable {var.name!r}: NaN or infinity")
            if var.kind == "image":
                lo, hi = float(a.min()), float(a.max())
                if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
                    raise DataError(f"{at}: image variable {var.name!r} has values in "
                                    f"[{lo:.3g}, {hi:.3g}]; images must lie in [-1, 1]")


def save_dataset(ds: Dataset, schema: Schema, folder: Path | str) -> Path:
    """Write one dataset folder (``data.csv``, ``intervention.json``, ``images/<var>/*.png``)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header: list[str] = []
    cols: list[list[str]] = []
    for var in schema.variables:
        a = np.asarray(ds.columns[var.name])
        header += column_names(var)
        if var.kind == "categorical":
            cols.append([str(int(x)) for x in a])
        elif var.kind == "continuous":
            cols += [[format(float(x), ".9g") for x in a[:, j]] for j in range(a.shape[1])]
        else:
            sub = folder / IMAGE_DIR / var.name
            sub.mkdir(parents=True, exist_ok=True)
            px = images_to_uint8(a)
            names = []
            width = max(5, len(str(ds.n)))
            for i in range(ds.n):
                rel = f"{IMAGE_DIR}/{var.name}/{i:0{width}d}.png"
                img = px[i, 0] if var.shape[0] == 1 else px[i].transpose(1, 2, 0)
                Image.fromarray(np.ascontiguousarray(img), mode=None).save(
                    folder / rel, format="PNG", compress_level=1)
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
    subs = sorted(p for p in root.iterdir() if p.is_dir()
                  and not p.name.startswith((".", "__")) and (p / DATA_FILE).is_file())
    if subs:
        return subs
    if (root / DATA_FILE).is_file():
        return [root]
    raise DataError(f"study folder {str(root)!r} has no dataset: expected sub-folders with "
                    f"{DATA_FILE}")


def _read_study_json(root: Path) -> dict:
    p = root / STUDY_FILE
    if not p.is_file():
        raise DataError(f"{str(root)!r} has no {STUDY_FILE}")
    data = read_json(p, STUDY_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("graph"), str):
        raise DataError(f'{STUDY_FILE}: expected an object with a "graph" text, e.g. '
                        '{"graph": "X -> Y", "variables": {...}}')
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
    datasets = sorted((load_dataset(f, schema, limits=limits) for f in folders),
                      key=lambda d: (bool(d.do), d.name))           # observational first
    if len(folders) == 1 and folders[0] == root and not datasets[0].do:
        datasets = [Dataset("observational", datasets[0].columns, {})]
    return Study(schema, tuple(datasets), root)


def save_study(study: Study, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``study`` as a folder (atomically: built next to ``path``, then renamed)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise DataError(f"{str(path)!r} already exists and is not empty "
                        "(pass overwrite=True to replace it)")
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


def infer_schema(graph: CausalGraph, folder: Path | str | Iterable[Path | str], *,
                 declared: Mapping[str, object] | None = None,
                 limits: UploadLimits = DEFAULT_LIMITS) -> Schema:
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
            raise DataError(f"{STUDY_FILE}: variable {name!r} is declared but is not in the graph "
                            f"({', '.join(graph.nodes)})")
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
            or (kind in ("continuous", "image") and "shape" in spec))
        if complete:
            out.append(Variable.from_json(name, spec))
            continue
        if kind is not None and kind not in ("categorical", "continuous", "image"):
            raise DataError(f"{STUDY_FILE}: variable {name!r}: unknown kind {kind!r}")
        if tables is None:
            tables = [(f, *read_csv_upload(f / DATA_FILE, limits=limits,
                                           where=f"{f.name}/{DATA_FILE}")) for f in folders]
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
        if name not in header and not any(_DIM_RE.match(h) and _DIM_RE.match(h).group("name")
                                          == name for h in header):
            raise DataError(f"{where}: missing column {name!r}; the variable is in the graph but "
                            "not in the data")
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
            raise DataError(f"{where}: row 1, column {name!r}: image path {vs[0]!r} must be "
                            "relative to the dataset folder")
        first = read_png(folder / vs[0], where=f"{where}: row 1, column {name!r}", limits=limits)
        return Variable(name, "image", shape=first.shape)
    if any(looks_png):
        folder, where, vs = values[0]
        i = next(i for i, v in enumerate(vs) if not v.lower().endswith(".png")) \
            if not all(v.lower().endswith(".png") for v in vs) else 0
        raise DataError(f"{where}: row {i + 1}, column {name!r}: {vs[i]!r} mixes with .png paths")
    nums = [(_parse_floats(vs, where, name)) for _, where, vs in values]
    f = np.concatenate(nums)
    integral = bool(np.all(f == np.round(f)))
    if kind == "categorical" or (kind is None and integral and f.min() >= 0
                                 and f.max() + 1 <= MAX_INFERRED_CLASSES):
        if not integral or f.min() < 0:
            raise DataError(f"variable {name!r} is declared categorical but its values are not "
                            "class indices 0, 1, 2, …")
        k = max(2, int(f.max()) + 1)
        if k > MAX_CLASSES:
            raise DataError(f"variable {name!r}: {k} classes is more than {MAX_CLASSES}")
        return Variable(name, "categorical", classes=k)
    return Variable(name, "continuous", shape=(1,))


# ----------------------------------------------------------------------------- real formats
def _open_maybe_gzip(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path.name}: broken gzip file ({exc})") from None
    return raw


def read_mnist_idx(images_path: Path | str, labels_path: Path | str) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Read MNIST idx files (raw or gzip): images uint8 ``(N, H, W)``, labels int64 ``(N,)``.

    Checks the magic numbers (2051 for images, 2049 for labels), the declared sizes and that both
    files hold the same number of items.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    img = _open_maybe_gzip(images_path)
    lab = _open_maybe_gzip(labels_path)
    if len(img) < 16 or int.from_bytes(img[:4], "big") != 2051:
        raise DataError(f"{images_path.name}: not an idx image file (magic number "
                        f"{int.from_bytes(img[:4], 'big') if len(img) >= 4 else None}, "
                        "expected 2051)")
    if len(lab) < 8 or int.from_bytes(lab[:4], "big") != 2049:
        raise DataError(f"{labels_path.name}: not an idx label file (magic number "
                        f"{int.from_bytes(lab[:4], 'big') if len(lab) >= 4 else None}, "
                        "expected 2049)")
    n, h, w = (int.from_bytes(img[i:i + 4], "big") for i in (4, 8, 12))
    m = int.from_bytes(lab[4:8], "big")
    if len(img) != 16 + n * h * w:
        raise DataError(f"{images_path.name}: header declares {n} images of {h}x{w} "
                        f"({16 + n * h * w} bytes) but the file has {len(img)} bytes")
    if len(lab) != 8 + m:
        raise DataError(f"{labels_path.name}: header declares {m} labels but the file has "
                        f"{len(lab) - 8}")
    if n != m:
        raise DataError(f"{images_path.name} has {n} images but {labels_path.name} has {m} labels")
    images = np.frombuffer(img, np.uint8, offset=16).reshape(n, h, w).copy()
    labels = np.frombuffer(lab, np.uint8, offset=8).astype(np.int64)
    return images, labels


def read_medmnist_npz(path: Path | str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read a MedMNIST ``.npz`` (never unpickles): images uint8 ``(N, H, W[, C])``, labels int64
    ``(N,)`` from the keys ``{split}_images`` and ``{split}_labels``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            ki, kl = f"{split}_images", f"{split}_labels"
            if ki not in keys or kl not in keys:
                raise DataError(f"{path.name}: no {ki!r}/{kl!r} arrays (the file has "
                                f"{', '.join(keys) or 'none'})")
            images, labels = z[ki], z[kl]
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"{path.name}: cannot read without unpickling ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path.name}: not a readable .npz file ({exc})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{path.name}: {split}_images must be uint8 (N, H, W[, C]), got "
                        f"{images.dtype} {images.shape}")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                          np.integer):
        raise DataError(f"{path.name}: {split}_labels must be {len(images)} integers, got "
                        f"{labels.dtype} {labels.shape}")
    return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------- safe uploads
def _check_member_name(name: str, zip_name: str) -> PurePosixPath:
    at = f"{zip_name}: entry {name!r}"
    if not name or "\x00" in name:
        raise DataError(f"{at}: empty name or NUL byte")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise DataError(f"{at}: absolute path refused")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{at}: path traversal ('..') refused")
    if not parts:
        raise DataError(f"{at}: empty path")
    return PurePosixPath(*parts)


class _Budget:
    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0


def safe_extract_zip(zip_path: Path | str, dest_dir: Path | str,
                     limits: UploadLimits = DEFAULT_LIMITS) -> Path:
    """Extract an uploaded zip into ``dest_dir`` (created; must be empty) and return it.

    Refuses, before writing anything: path traversal (``..``), absolute paths and drive letters,
    symlink and special entries, encrypted entries, duplicate names, more than ``max_files``
    members, declared sizes above the limits, suspicious compression ratios. While writing, every
    member is streamed with a byte cap (headers may lie). A nested ``.zip`` is extracted into a
    folder of the same stem, up to ``max_nesting`` levels. On any error everything written so far
    is removed and :class:`DataError` is raised. Nothing is ever written outside ``dest_dir``.
    """
    zip_path, dest = Path(zip_path), Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"destination {str(dest)!r} must be a new or empty folder")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with open(zip_path, "rb") as fh:
            _extract(fh, zip_path.name, dest.resolve(), limits, _Budget(limits), depth=0)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for p in list(dest.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() \
                    else p.unlink(missing_ok=True)
        raise
    return dest


def _extract(fh, zip_name: str, dest: Path, limits: UploadLimits, budget: _Budget,
             depth: int) -> None:
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{zip_name}: not a valid zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if budget.files + len(infos) > limits.max_files:
            raise DataError(f"{zip_name}: {budget.files + len(infos)} entries, more than the "
                            f"limit of {limits.max_files} files")
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        seen: set[str] = set()
        declared = 0
        for info in infos:
            rel = _check_member_name(info.filename, zip_name)
            at = f"{zip_name}: entry {info.filename!r}"
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(f"{at}: symbolic links are refused")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(f"{at}: special file refused")
            if info.flag_bits & 0x1:
                raise DataError(f"{at}: encrypted entries are refused")
            key = str(rel).lower()
            if key in seen:
                raise DataError(f"{at}: duplicate entry name")
            seen.add(key)
            if not info.is_dir():
                if info.file_size > limits.max_file_bytes:
                    raise DataError(f"{at}: declares {info.file_size} bytes, more than the "
                                    f"per-file limit of {limits.max_file_bytes}")
                declared += info.file_size
                if (info.file_size > limits.ratio_min_bytes
                        and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
                    raise DataError(f"{at}: compression ratio "
                                    f"{info.file_size / max(info.compress_size, 1):.0f}:1 is "
                                    f"above the limit of {limits.max_ratio:.0f}:1 (zip bomb?)")
            plan.append((info, rel))
        if budget.bytes + declared > limits.max_total_bytes:
            raise DataError(f"{zip_name}: declares {budget.bytes + declared} bytes uncompressed, "
                            f"more than the limit of {limits.max_total_bytes}")
        packed = sum(i.compress_size for i in infos)
        if declared > limits.ratio_min_bytes and declared > limits.max_ratio * max(packed, 1):
            raise DataError(f"{zip_name}: {declared} bytes packed into {packed} (ratio "
                            f"{declared / max(packed, 1):.0f}:1, above the limit of "
                            f"{limits.max_ratio:.0f}:1; zip bomb?)")
        for info, rel in plan:
            target = dest.joinpath(*rel.parts)
            if not _inside(target, dest):
                raise DataError(f"{zip_name}: entry {info.filename!r} leaves the destination")
            if info.is_dir():
                _mkdirs(target, dest)
                continue
            _mkdirs(target.parent, dest)
            if target.exists() or target.is_symlink():
                raise DataError(f"{zip_name}: entry {info.filename!r} collides with an existing "
                                "path")
            budget.files += 1
            _stream_member(zf, info, target, limits, budget, zip_name)
            if rel.suffix.lower() == ".zip":
                if depth + 1 > limits.max_nesting:
                    raise DataError(f"{zip_name}: nested archive {info.filename!r} is deeper than "
                                    f"the limit of {limits.max_nesting} level(s)")
                sub = target.with_suffix("")
                if sub.exists():
                    raise DataError(f"{zip_name}: nested archive {info.filename!r} collides with "
                                    f"{sub.name!r}")
                _mkdirs(sub, dest)
                with open(target, "rb") as inner:
                    _extract(inner, f"{zip_name}/{info.filename}", sub.resolve(), limits, budget,
                             depth + 1)
                target.unlink()


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _mkdirs(p: Path, root: Path) -> None:
    rel = p.relative_to(root) if p.is_absolute() else p
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            raise DataError(f"path {str(rel)!r} collides with an existing file")
        cur.mkdir(exist_ok=True)


def _stream_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                   limits: UploadLimits, budget: _Budget, zip_name: str) -> None:
    at = f"{zip_name}: entry {info.filename!r}"
    cap_file = min(limits.max_file_bytes, info.file_size)
    written = 0
    try:
        with zf.open(info) as src, open(target, "xb") as out:
            while True:
                chunk = src.read(1 << 16)
                if not chunk:
                    break
                written += len(chunk)
                budget.bytes += len(chunk)
                if written > cap_file:
                    raise DataError(f"{at}: holds more bytes than its header declares "
                                    f"({info.file_size}) or than the per-file limit")
                if budget.bytes > limits.max_total_bytes:
                    raise DataError(f"{zip_name}: more than {limits.max_total_bytes} bytes "
                                    "uncompressed in total")
                if (written > limits.ratio_min_bytes
                        and written > limits.max_ratio * max(info.compress_size, 1)):
                    raise DataError(f"{at}: compression ratio above {limits.max_ratio:.0f}:1 "
                                    "(zip bomb?)")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib_error(), EOFError, NotImplementedError) as exc:
        raise DataError(f"{at}: corrupt or unsupported entry ({exc})") from None


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def find_study_dir(root: Path | str) -> Path:
    """The folder holding ``study.json``: ``root`` itself or its only sub-folder that has one
    (zip tools often add one top-level folder)."""
    root = Path(root)
    if (root / STUDY_FILE).is_file():
        return root
    hits = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / STUDY_FILE).is_file()
            and not p.name.startswith(("__", "."))]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DataError(f"no {STUDY_FILE} found in the upload (looked in the top folder and one "
                        "level down)")
    raise DataError(f"the upload holds several studies ({', '.join(p.name for p in hits)}); "
                    "upload one at a time")
