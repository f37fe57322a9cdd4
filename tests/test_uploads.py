"""Hostile uploads: every case asserts the exact refusal and that nothing lands outside dest."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdcm.data import DataError, UploadLimits, load_study
from mdcm.examples import export_example
from mdcm.readers import read_csv_upload, read_png
from mdcm.safezip import find_study_dir, safe_extract_zip


@pytest.fixture()
def box(tmp_path):
    """A sandbox: ``box/upload.zip`` is extracted to ``box/dest``; everything else in ``tmp_path``
    must be untouched afterwards."""
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    (tmp_path / "outside.txt").write_text("keep")
    yield sandbox
    outside = sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if not str(p.relative_to(tmp_path)).startswith("box")
    )
    assert outside == ["outside.txt"], outside
    assert (tmp_path / "outside.txt").read_text() == "keep"
    for p in sandbox.rglob("*"):
        rel = p.relative_to(sandbox)
        assert rel.parts[0] in ("upload.zip", "dest", "src"), rel


def make_zip(
    path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression=zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def refuse(
    box: Path,
    entries,
    message: str,
    limits: UploadLimits = UploadLimits(),
    raw: bytes | None = None,
) -> None:
    z = box / "upload.zip"
    if raw is not None:
        z.write_bytes(raw)
    else:
        make_zip(z, entries)
    with pytest.raises(DataError) as info:
        safe_extract_zip(z, box / "dest", limits)
    assert message in str(info.value), str(info.value)
    assert not (box / "dest").exists()  # partial output removed


def test_1_parent_traversal(box):
    refuse(
        box,
        [("ok.txt", b"x"), ("../evil.txt", b"x")],
        "upload.zip: entry '../evil.txt': path traversal ('..') refused",
    )


def test_2_nested_traversal(box):
    refuse(
        box,
        [("a/b/../../../evil.txt", b"x")],
        "upload.zip: entry 'a/b/../../../evil.txt': path traversal ('..') refused",
    )


def test_3_absolute_path(box):
    refuse(
        box, [("/tmp/evil.txt", b"x")], "upload.zip: entry '/tmp/evil.txt': absolute path refused"
    )


def test_4_drive_letter(box):
    refuse(box, [("C:/evil.txt", b"x")], "upload.zip: entry 'C:/evil.txt': absolute path refused")


def test_5_backslash_traversal(box):
    refuse(box, [("..\\evil.txt", b"x")], "upload.zip: entry '..\\\\evil.txt': path traversal")


def test_6_symlink_entry(box):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    refuse(
        box,
        [("a.txt", b"x"), (info, b"/etc/passwd")],
        "upload.zip: entry 'link': symbolic links are refused",
    )


def test_7_too_many_files(box):
    refuse(
        box,
        [(f"f{i}.txt", b"x") for i in range(11)],
        "upload.zip: 11 entries, more than the limit of 10 files",
        UploadLimits(max_files=10),
    )


def test_8_declared_file_too_big(box):
    refuse(
        box,
        [("big.bin", b"0" * 5000)],
        "upload.zip: entry 'big.bin': declares 5000 bytes, more than the per-file limit of 4096",
        UploadLimits(max_file_bytes=4096),
    )


def test_9_total_too_big(box):
    refuse(
        box,
        [(f"f{i}.bin", os.urandom(3000)) for i in range(4)],
        "upload.zip: declares 12000 bytes uncompressed, more than the limit of 10000",
        UploadLimits(max_total_bytes=10_000),
    )


def test_10_zip_bomb_ratio(box):
    refuse(
        box,
        [("zeros.bin", bytes(4 << 20))],
        "upload.zip: entry 'zeros.bin': compression ratio",
        UploadLimits(),
    )


def test_11_header_lies_about_size(box):
    """The central directory claims 10 bytes; the stream holds 100 000: capped, never trusted."""
    buf = io.BytesIO()
    make_zip(buf, [("lie.bin", os.urandom(100_000))])
    raw = bytearray(buf.getvalue())
    cd = raw.index(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # uncompressed size
    raw[26 - 4 : 26] = (10).to_bytes(4, "little")  # local header too
    refuse(
        box,
        None,
        "upload.zip: entry 'lie.bin': corrupt or unsupported entry (Bad CRC-32",
        raw=bytes(raw),
    )


def test_12_nested_zip_too_deep(box):
    inner = io.BytesIO()
    make_zip(inner, [("deep.txt", b"x")])
    middle = io.BytesIO()
    make_zip(middle, [("inner.zip", inner.getvalue())])
    refuse(
        box,
        [("middle.zip", middle.getvalue())],
        "upload.zip/middle.zip: nested archive 'inner.zip' is deeper than the limit of 1 level(s)",
    )


def test_13_nested_zip_within_depth_is_extracted(box):
    inner = io.BytesIO()
    make_zip(inner, [("data.csv", b"X\n1\n")])
    z = make_zip(box / "upload.zip", [("ds.zip", inner.getvalue()), ("top.txt", b"t")])
    dest = safe_extract_zip(z, box / "dest")
    assert (dest / "ds" / "data.csv").read_bytes() == b"X\n1\n"
    assert not (dest / "ds.zip").exists()
    with pytest.raises(DataError, match="nested archive 'ds.zip' is deeper than the limit of 0"):
        safe_extract_zip(z, box / "dest2", UploadLimits(max_nesting=0))


def test_14_duplicate_entries(box):
    with pytest.warns(UserWarning, match="Duplicate name"):
        z = make_zip(box / "upload.zip", [("a.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(DataError, match="upload.zip: entry 'a.txt': duplicate entry name"):
        safe_extract_zip(z, box / "dest")
    assert not (box / "dest").exists()


def test_15_case_insensitive_duplicates(box):
    refuse(
        box,
        [("Data.csv", b"1"), ("data.csv", b"2")],
        "upload.zip: entry 'data.csv': duplicate entry name",
    )


def test_16_not_a_zip(box):
    refuse(box, None, "upload.zip: not a valid zip archive", raw=b"just some text, not a zip")


def test_17_encrypted_entry(box):
    buf = io.BytesIO()
    make_zip(buf, [("secret.txt", b"x" * 10)])
    raw = bytearray(buf.getvalue())
    cd = raw.index(b"PK\x01\x02")
    raw[cd + 8] |= 0x1  # general purpose flag
    raw[6] |= 0x1
    refuse(
        box, None, "upload.zip: entry 'secret.txt': encrypted entries are refused", raw=bytes(raw)
    )


def test_18_file_and_folder_collide(box):
    refuse(box, [("a", b"file"), ("a/b.txt", b"x")], "collides with an existing file")


def test_19_destination_must_be_empty(box):
    z = make_zip(box / "upload.zip", [("a.txt", b"x")])
    (box / "dest").mkdir()
    (box / "dest" / "mine.txt").write_text("old")
    with pytest.raises(DataError, match="must be a new or empty folder"):
        safe_extract_zip(z, box / "dest")
    assert (box / "dest" / "mine.txt").read_text() == "old"


def test_20_special_file_entry(box):
    info = zipfile.ZipInfo("fifo")
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    refuse(box, [(info, b"")], "upload.zip: entry 'fifo': special file refused")


def test_21_png_that_is_text(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("<html>not an image</html>")
    with pytest.raises(
        DataError,
        match="file 'fake.png' is not a PNG image \\(it starts with text, not the PNG signature\\)",
    ):
        read_png(p, where="upload")
    p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(20))  # a JPEG header
    with pytest.raises(DataError, match="starts with binary data"):
        read_png(p, where="upload")


def test_22_png_decompression_bomb_checked_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("L", (2000, 2000)).save(p)  # tiny file, 4M pixels
    assert p.stat().st_size < 20_000
    with pytest.raises(
        DataError, match="image 'bomb.png' is 2000x2000 pixels, more than the limit of 1048576"
    ):
        read_png(p, where="upload")


def test_23_csv_cleaning(tmp_path):
    p = tmp_path / "data.csv"
    p.write_bytes('\ufeffX, "Y, with comma"\r\n1,"a ""quoted"" b"\r\n\r\n'.encode())
    header, rows = read_csv_upload(p)
    assert header == ["X", "Y, with comma"] and rows == [["1", 'a "quoted" b']]
    p.write_text("X,Y\n1,2\n3,4,5\n")
    with pytest.raises(
        DataError,
        match="data.csv: row 2 \\(line 3\\) has 3 field\\(s\\), the header has 2 \\(X, Y\\)",
    ):
        read_csv_upload(p, where="data.csv")
    p.write_bytes(b"X,Y\n1,\x00\n")
    with pytest.raises(DataError, match="contains NUL bytes"):
        read_csv_upload(p)
    p.write_text("X\n" + "1\n" * 11)
    with pytest.raises(DataError, match="more than 10 rows"):
        read_csv_upload(p, limits=UploadLimits(max_rows=10))


def test_24_valid_study_upload_round_trip(box):
    src = box / "src"
    export_example("napkin", src, n=30, seed=3)
    z = box / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, "napkin_study/" + str(p.relative_to(src)))
    dest = safe_extract_zip(z, box / "dest")
    study = load_study(find_study_dir(dest))
    assert study.observational.n == 30
    assert set(study.schema.names) == {"W", "Z", "X", "Y"}
    np.testing.assert_array_equal(
        study.observational.columns["X"], load_study(src).observational.columns["X"]
    )


def test_25_find_study_dir_errors(tmp_path):
    with pytest.raises(DataError, match="no study.json found in the upload"):
        find_study_dir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "study.json").write_text("{}")
    with pytest.raises(DataError, match="several studies \\(a, b\\)"):
        find_study_dir(tmp_path)


def test_26_many_small_bombs_trip_the_archive_ratio(box):
    """Each member stays under the per-file ratio threshold, the archive as a whole does not."""
    refuse(
        box,
        [(f"z{i}.bin", bytes(600_000)) for i in range(4)],
        "upload.zip: 2400000 bytes packed into ",
    )


def test_limits_are_configurable_from_the_environment():
    from mdcm.data import DataError, UploadLimits

    lim = UploadLimits.from_env({"MDCM_LIMIT_MAX_ROWS": "5", "MDCM_LIMIT_MAX_RATIO": "50.5"})
    assert lim.max_rows == 5 and lim.max_ratio == 50.5 and lim.max_files == UploadLimits().max_files
    with pytest.raises(DataError, match="MDCM_LIMIT_MAX_FILES='many' is not a number"):
        UploadLimits.from_env({"MDCM_LIMIT_MAX_FILES": "many"})
