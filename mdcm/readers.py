"""Readers of the files people have: CSV uploads, PNG images, small JSON files, MNIST idx and
MedMNIST ``.npz`` (design.md §4). Each refuses bad input with a :class:`~mdcm.limits.DataError`
that names the file and row; none of them ever unpickles anything.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from .files import JsonFileError, read_json_file
from .limits import DEFAULT_LIMITS, DataError, UploadLimits

__all__ = [
    "PNG_MAGIC",
    "images_to_uint8",
    "read_csv_upload",
    "read_json",
    "read_medmnist_npz",
    "read_mnist_idx",
    "read_png",
    "uint8_to_images",
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- pixels
def uint8_to_images(a: np.ndarray) -> np.ndarray:
    """uint8 pixels ``0 … 255`` to float32 ``[-1, 1]``."""
    return (a.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def images_to_uint8(x: np.ndarray) -> np.ndarray:
    """float ``[-1, 1]`` to uint8 pixels (clipped, rounded)."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- CSV
def read_csv_upload(
    path: Path | str, *, limits: UploadLimits = DEFAULT_LIMITS, where: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """Read a user CSV: strips a UTF-8 BOM and blank lines, honours quoted fields, checks that
    every row has as many fields as the header. Returns ``(header, rows)`` of stripped strings."""
    path = Path(path)
    where = where or str(path)
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise DataError(
                f"{where}: {size} bytes, more than the limit of {limits.max_file_bytes}"
            )
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
                    f"field(s), the header has {len(header)} ({', '.join(header)})"
                )
            rows.append(fields)
            if len(rows) > limits.max_rows:
                raise DataError(f"{where}: more than {limits.max_rows} rows")
    except csv.Error as exc:
        raise DataError(f"{where}: line {reader.line_num}: malformed CSV ({exc})") from None
    if header is None:
        raise DataError(f"{where}: the file is empty (no header row)")
    return header, rows


# ----------------------------------------------------------------------------- images
def read_png(
    path: Path,
    *,
    where: str,
    limits: UploadLimits = DEFAULT_LIMITS,
    expect: tuple[int, ...] | None = None,
    as_uint8: bool = False,
) -> np.ndarray:
    """Read one PNG as float32 ``(C, H, W)`` in ``[-1, 1]`` (the uint8 pixels with ``as_uint8``);
    checks magic bytes, size before decoding (decompression bombs), mode (``L`` or ``RGB``) and
    the expected shape."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as fh:
            head = fh.read(len(PNG_MAGIC))
            if head != PNG_MAGIC:
                kind = (
                    "text"
                    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
                    else "binary data"
                )
                raise DataError(
                    f"{where}: file {path.name!r} is not a PNG image (it starts with "
                    f"{kind}, not the PNG signature)"
                )
            fh.seek(0)
            try:
                with Image.open(fh, formats=["PNG"]) as im:
                    w, h = im.size
                    if w * h > limits.max_image_pixels:
                        raise DataError(
                            f"{where}: image {path.name!r} is {w}x{h} pixels, more "
                            f"than the limit of {limits.max_image_pixels}"
                        )
                    if expect is not None:
                        c, eh, ew = expect
                        if (h, w) != (eh, ew):
                            raise DataError(
                                f"{where}: image {path.name!r} is {h}x{w} (HxW); expected {eh}x{ew}"
                            )
                    mode = im.mode
                    if mode not in ("L", "RGB"):
                        raise DataError(
                            f"{where}: image {path.name!r} has mode {mode!r}; use "
                            "'L' (grayscale) or 'RGB'"
                        )
                    if expect is not None and (1 if mode == "L" else 3) != expect[0]:
                        raise DataError(
                            f"{where}: image {path.name!r} has mode {mode!r} "
                            f"({1 if mode == 'L' else 3} channel(s)); expected "
                            f"{expect[0]} channel(s) "
                            f"({'L' if expect[0] == 1 else 'RGB'})"
                        )
                    im.load()
                    a = np.asarray(im, dtype=np.uint8)
            except (
                UnidentifiedImageError,
                Image.DecompressionBombError,
                OSError,
                SyntaxError,
                ValueError,
            ) as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(f"{where}: image {path.name!r} cannot be read ({exc})") from None
    except FileNotFoundError:
        raise DataError(f"{where}: image file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: {str(path)!r} is a folder, not an image") from None
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return a if as_uint8 else uint8_to_images(a)


# ----------------------------------------------------------------------------- interventions
def read_json(path: Path, where: str) -> object:
    """Parse a small JSON file; every failure becomes a DataError naming ``where``."""
    try:
        return read_json_file(path, obj=False)
    except JsonFileError as exc:
        raise DataError(f"{where}: {str(exc).removeprefix('is ')}") from None


# ----------------------------------------------------------------------------- real formats
def _open_maybe_gzip(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path.name}: broken gzip file ({exc})") from None
    return raw


def read_mnist_idx(
    images_path: Path | str, labels_path: Path | str
) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST idx files (raw or gzip): images uint8 ``(N, H, W)``, labels int64 ``(N,)``.

    Checks the magic numbers (2051 for images, 2049 for labels), the declared sizes and that both
    files hold the same number of items.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    img = _open_maybe_gzip(images_path)
    lab = _open_maybe_gzip(labels_path)
    if len(img) < 16 or int.from_bytes(img[:4], "big") != 2051:
        raise DataError(
            f"{images_path.name}: not an idx image file (magic number "
            f"{int.from_bytes(img[:4], 'big') if len(img) >= 4 else None}, "
            "expected 2051)"
        )
    if len(lab) < 8 or int.from_bytes(lab[:4], "big") != 2049:
        raise DataError(
            f"{labels_path.name}: not an idx label file (magic number "
            f"{int.from_bytes(lab[:4], 'big') if len(lab) >= 4 else None}, "
            "expected 2049)"
        )
    n, h, w = (int.from_bytes(img[i : i + 4], "big") for i in (4, 8, 12))
    m = int.from_bytes(lab[4:8], "big")
    if len(img) != 16 + n * h * w:
        raise DataError(
            f"{images_path.name}: header declares {n} images of {h}x{w} "
            f"({16 + n * h * w} bytes) but the file has {len(img)} bytes"
        )
    if len(lab) != 8 + m:
        raise DataError(
            f"{labels_path.name}: header declares {m} labels but the file has {len(lab) - 8}"
        )
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
                raise DataError(
                    f"{path.name}: no {ki!r}/{kl!r} arrays (the file has "
                    f"{', '.join(keys) or 'none'})"
                )
            images, labels = z[ki], z[kl]
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"{path.name}: cannot read without unpickling ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path.name}: not a readable .npz file ({exc})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path.name}: {split}_images must be uint8 (N, H, W[, C]), got "
            f"{images.dtype} {images.shape}"
        )
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise DataError(
            f"{path.name}: {split}_labels must be {len(images)} integers, got "
            f"{labels.dtype} {labels.shape}"
        )
    return images, labels.astype(np.int64)
