"""Safe extraction of uploaded zip archives (:func:`safe_extract_zip`) and finding the study folder
inside one (:func:`find_study_dir`).

Refused before anything is written: path traversal, absolute paths and drive letters, symbolic
links and special files, encrypted entries, duplicate names (also by case), more entries or bytes
than the :class:`~mdcm.limits.UploadLimits`, zip-bomb compression ratios and nesting deeper than
``max_nesting``. Entries are streamed with a byte cap (headers can lie); on any error everything
written so far is removed.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .limits import DEFAULT_LIMITS, DataError, UploadLimits

__all__ = ["find_study_dir", "safe_extract_zip"]

STUDY_FILE = "study.json"


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


def safe_extract_zip(
    zip_path: Path | str, dest_dir: Path | str, limits: UploadLimits = DEFAULT_LIMITS
) -> Path:
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
                shutil.rmtree(
                    p, ignore_errors=True
                ) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        raise
    return dest


def _extract(
    fh, zip_name: str, dest: Path, limits: UploadLimits, budget: _Budget, depth: int
) -> None:
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{zip_name}: not a valid zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if budget.files + len(infos) > limits.max_files:
            raise DataError(
                f"{zip_name}: {budget.files + len(infos)} entries, more than the "
                f"limit of {limits.max_files} files"
            )
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
                    raise DataError(
                        f"{at}: declares {info.file_size} bytes, more than the "
                        f"per-file limit of {limits.max_file_bytes}"
                    )
                declared += info.file_size
                if (
                    info.file_size > limits.ratio_min_bytes
                    and info.file_size > limits.max_ratio * max(info.compress_size, 1)
                ):
                    raise DataError(
                        f"{at}: compression ratio "
                        f"{info.file_size / max(info.compress_size, 1):.0f}:1 is "
                        f"above the limit of {limits.max_ratio:.0f}:1 (zip bomb?)"
                    )
            plan.append((info, rel))
        if budget.bytes + declared > limits.max_total_bytes:
            raise DataError(
                f"{zip_name}: declares {budget.bytes + declared} bytes uncompressed, "
                f"more than the limit of {limits.max_total_bytes}"
            )
        packed = sum(i.compress_size for i in infos)
        if declared > limits.ratio_min_bytes and declared > limits.max_ratio * max(packed, 1):
            raise DataError(
                f"{zip_name}: {declared} bytes packed into {packed} (ratio "
                f"{declared / max(packed, 1):.0f}:1, above the limit of "
                f"{limits.max_ratio:.0f}:1; zip bomb?)"
            )
        for info, rel in plan:
            target = dest.joinpath(*rel.parts)
            if not _inside(target, dest):
                raise DataError(f"{zip_name}: entry {info.filename!r} leaves the destination")
            if info.is_dir():
                _mkdirs(target, dest)
                continue
            _mkdirs(target.parent, dest)
            if target.exists() or target.is_symlink():
                raise DataError(
                    f"{zip_name}: entry {info.filename!r} collides with an existing path"
                )
            budget.files += 1
            _stream_member(zf, info, target, limits, budget, zip_name)
            if rel.suffix.lower() == ".zip":
                if depth + 1 > limits.max_nesting:
                    raise DataError(
                        f"{zip_name}: nested archive {info.filename!r} is deeper than "
                        f"the limit of {limits.max_nesting} level(s)"
                    )
                sub = target.with_suffix("")
                if sub.exists():
                    raise DataError(
                        f"{zip_name}: nested archive {info.filename!r} collides with {sub.name!r}"
                    )
                _mkdirs(sub, dest)
                with open(target, "rb") as inner:
                    _extract(
                        inner,
                        f"{zip_name}/{info.filename}",
                        sub.resolve(),
                        limits,
                        budget,
                        depth + 1,
                    )
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


def _stream_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    limits: UploadLimits,
    budget: _Budget,
    zip_name: str,
) -> None:
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
                    raise DataError(
                        f"{at}: holds more bytes than its header declares "
                        f"({info.file_size}) or than the per-file limit"
                    )
                if budget.bytes > limits.max_total_bytes:
                    raise DataError(
                        f"{zip_name}: more than {limits.max_total_bytes} bytes "
                        "uncompressed in total"
                    )
                if written > limits.ratio_min_bytes and written > limits.max_ratio * max(
                    info.compress_size, 1
                ):
                    raise DataError(
                        f"{at}: compression ratio above {limits.max_ratio:.0f}:1 (zip bomb?)"
                    )
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
    hits = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and (p / STUDY_FILE).is_file() and not p.name.startswith(("__", "."))
    ]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DataError(
            f"no {STUDY_FILE} found in the upload (looked in the top folder and one level down)"
        )
    raise DataError(
        f"the upload holds several studies ({', '.join(p.name for p in hits)}); "
        "upload one at a time"
    )
