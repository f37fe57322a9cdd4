"""One place for writing and reading the files mdcm keeps: atomic writes, crash-safe versioned
replacement, guarded JSON reads and a file lock.

Every file of a model, a checkpoint, a run and an app study goes through :func:`atomic_write`
(temporary file in the same folder, ``fsync``, ``os.replace``), so a crash or a full disk never
leaves a half-written file in place. Folders that several files describe together (a model: weights
+ ``model.json``) are replaced with :func:`replace_with_versioned`, so every state in between loads.
This module imports neither torch nor streamlit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "JsonFileError",
    "atomic_write",
    "atomic_write_json",
    "locked",
    "plain_file_name",
    "read_json_file",
    "replace_with_versioned",
    "sha256_file",
]

#: the largest JSON file any reader here accepts (model.json, checkpoint.json, run.json, ...)
MAX_JSON_BYTES = 10_000_000


class JsonFileError(ValueError):
    """A JSON file that cannot be used: missing, unreadable, too large, not JSON, nested too deeply
    or not an object. Callers re-raise it as their own domain error (DataError, RunError, ...)."""


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    A unique temporary file in the same folder is written, flushed and ``fsync``ed, then renamed
    over ``path``; on any failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path | str, data: Any, *, indent: int | None = 2) -> None:
    """:func:`atomic_write` of ``json.dumps(data)`` (sorted keys, so diffs stay small)."""
    atomic_write(path, json.dumps(data, indent=indent, sort_keys=True, default=str))


def read_json_file(path: Path | str, *, max_bytes: int = MAX_JSON_BYTES, obj: bool = True) -> Any:
    """Parse a small JSON file; every failure is a :class:`JsonFileError` whose message completes
    a sentence about the file ("<path> is not valid JSON (line 3, ...)").

    A UTF-8 byte-order mark is accepted. With ``obj`` the top level must be a JSON object.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise JsonFileError("is missing") from None
    except OSError as exc:
        raise JsonFileError(f"cannot be read ({exc.strerror or exc})") from None
    if size > max_bytes:
        raise JsonFileError(f"is too large to be read ({size} bytes, at most {max_bytes})")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise JsonFileError(
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise JsonFileError("is nested too deeply") from None
    except UnicodeDecodeError:
        raise JsonFileError("is not UTF-8 text") from None
    except OSError as exc:
        raise JsonFileError(f"cannot be read ({exc.strerror or exc})") from None
    if obj and not isinstance(data, dict):
        raise JsonFileError(f"is not a JSON object (it holds a {type(data).__name__})")
    return data


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(lock_path: Path | str) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``lock_path`` for a read-modify-write of a file
    that several processes update (run.json, an app study's runs.json)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def plain_file_name(name: Any, folder: Path) -> str | None:
    """``name`` if it is a plain file name (no path separators, not hidden/dot-dot) naming a
    file inside ``folder``; else None. Pointer names in model/checkpoint json go through this so
    a tampered json cannot redirect the loader outside its folder."""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith("."):
        return None
    if "/" in name or "\\" in name or os.sep in name or "\x00" in name:
        return None
    if Path(name).name != name or not (folder / name).is_file():
        return None
    return name


def _versioned(fixed: str, data: bytes) -> str:
    stem, dot, ext = fixed.partition(".")
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}{dot}{ext}"


def replace_with_versioned(
    folder: Path, files: Mapping[str, bytes], write_pointer: Callable[[Mapping[str, str]], None]
) -> None:
    """Crash-safe replacement of fixed-name files that a json pointer file describes.

    Order (each write atomic): 1. every new file under a versioned name (``stem-<sha8>.ext``);
    2. ``write_pointer(names)`` with the versioned names; 3. versioned -> fixed names;
    4. ``write_pointer(fixed names)``; 5. remove versioned leftovers. A failure in 1-2 leaves
    the old pointer and old files untouched (the new versioned files are removed); after 2 every
    state is loadable, because loaders read the file the pointer names and fall back to the
    fixed name.
    """
    made: dict[str, str] = {}
    try:
        for fixed, data in files.items():
            vname = _versioned(fixed, data)
            atomic_write(folder / vname, data)
            made[fixed] = vname
        write_pointer(dict(made))
    except BaseException:
        for vname in made.values():
            with contextlib.suppress(OSError):
                (folder / vname).unlink()
        raise
    for fixed, vname in made.items():
        os.replace(folder / vname, folder / fixed)
    write_pointer({fixed: fixed for fixed in files})
    for fixed in files:  # versioned leftovers of an earlier save that stopped after step 2
        stem, dot, ext = fixed.partition(".")
        for old in folder.glob(f"{stem}-{'[0-9a-f]' * 8}{dot}{ext}"):
            with contextlib.suppress(OSError):
                old.unlink()
