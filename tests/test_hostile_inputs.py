"""Hostile inputs, issue 5: the cases that the other test files do not already cover.

Already covered elsewhere (not repeated here): zip traversal / symlinks / bombs / nesting
(test_uploads.py), CSV row/column errors, BOM, NaN/inf, class ranges, image size/mode, study.json
and intervention.json basics (test_data.py), pickle / tampered / truncated model files and another
graph (test_model.py), NaN generator loss and OOM in the generator step (test_train.py), SIGKILL +
resume, fsync ENOSPC on the weights file, SIGTERM (test_faults.py), run ids, corrupt events and
two real background runs (test_runs.py), random graph text and CLI arguments (test_hostile_cli.py).

Every case asserts the exact outcome: the error type, a message that names the file / row /
column / variable at fault, that nothing was written outside the folder it belongs to, and, for
faults, that the last good model or checkpoint still loads. Oracles are independent of the code
under test: hand-written files, byte-level edits with their own sha256, a pickle that provably
runs code when unpickled, a marker file that must not appear.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from study_files import make_study

import mdcm.train as train_mod
from mdcm import runs
from mdcm.checkpoints import CKPT_OPTIM, CKPT_STATE, CKPT_WEIGHTS
from mdcm.data import DataError, load_study, save_study
from mdcm.model import DCM, ModelConfig, ModelFileError, load_model, save_model
from mdcm.plan import make_plan
from mdcm.readers import read_csv_upload
from mdcm.runs import RunError
from mdcm.train import TrainConfig, TrainingError, train

SMALL = ModelConfig(
    noise_dim=4,
    image_noise_dim=8,
    confounder_dim=3,
    hidden=16,
    image_hidden=32,
    image_channels=8,
    code_dim=4,
)
TINY = dict(
    steps=6,
    batch_size=32,
    check_every=3,
    checkpoint_every=2,
    check_samples=256,
    mmd_batch=64,
    coder_steps=5,
    device="cpu",
    seed=0,
)
CAT2 = {"kind": "categorical", "classes": 2}
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # valid JSON, nested past the recursion limit


# ====================================================================== helpers
def png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose IHDR declares ``width x height`` 8-bit grey pixels (a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def load_error(root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_study(root)
    return str(info.value)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _RunsCode:
    """Unpickling this object runs ``touch MARKER`` (a real, harmless code-execution payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def payload(marker: Path, protocol: int) -> bytes:
    return pickle.dumps(_RunsCode(marker), protocol=protocol)


def napkin(n: int = 400):
    from mdcm.examples import load_example

    return load_example("napkin", n=n, seed=0).study


def fresh(study, seed: int = 0) -> DCM:
    torch.manual_seed(seed)
    return DCM(study.schema, SMALL)


def no_tmp(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    """A finished checkpoint folder of a tiny napkin run (copied by the tests that spoil it)."""
    study = napkin()
    ck = tmp_path_factory.mktemp("ck") / "ck"
    train(fresh(study), make_plan(study.graph), study, TrainConfig(**TINY), checkpoint_dir=ck)
    assert (ck / CKPT_STATE).is_file()
    return ck


# ====================================================================== 1. data and uploads
def test_data_1_million_rows_load_in_time_and_one_more_is_refused(tmp_path):
    """10^6 rows is the default row limit: loaded in a few seconds; 10^6 + 1 rows is refused."""
    vars_ = {"X": CAT2, "Y": {"kind": "continuous", "shape": [1]}}
    root = make_study(tmp_path / "s", "X -> Y", {"obs": ""}, vars_)
    body = b"0,1.5\n1,-2\n" * 500_000
    (root / "obs" / "data.csv").write_bytes(b"X,Y\n" + body)
    t0 = time.monotonic()
    ds = load_study(root).observational
    assert ds.n == 1_000_000 and ds.columns["X"][:4].tolist() == [0, 1, 0, 1]
    assert ds.columns["Y"][1, 0] == -2.0
    (root / "obs" / "data.csv").write_bytes(b"X,Y\n" + body + b"1,2\n")
    assert load_error(root) == "obs/data.csv: more than 1000000 rows"
    assert time.monotonic() - t0 < 30


def test_data_2_single_row_dataset_loads_and_trains(tmp_path):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": "X,Y\n1,0\n"}, {"X": CAT2, "Y": CAT2})
    study = load_study(root)
    assert study.observational.n == 1
    res = train(
        fresh(study),
        make_plan(study.graph),
        study,
        TrainConfig(**{**TINY, "steps": 2, "check_samples": 64, "mmd_batch": 16}),
    )
    assert [s.steps for s in res.stages] == [2, 2]


@pytest.mark.parametrize(
    "cell,message",
    [
        ("NA", "obs/data.csv: row 2, column 'Y': 'NA' is not a number"),
        ("N/A", "obs/data.csv: row 2, column 'Y': 'N/A' is not a number"),
        ("", "obs/data.csv: row 2, column 'Y': '' is not a number"),
        ("1e999", "obs/data.csv: row 2, column 'Y': '1e999' is not a finite number"),
        ("Infinity", "obs/data.csv: row 2, column 'Y': 'Infinity' is not a finite number"),
        ('"1,5"', "obs/data.csv: row 2, column 'Y': '1,5' is not a number"),
    ],
    ids=["NA", "N/A", "empty", "overflow-1e999", "Infinity", "decimal-comma-quoted"],
)
def test_data_3_missing_and_non_finite_continuous_cells(tmp_path, cell, message):
    """Missing values in a continuous column are refused (not silently imputed), row named."""
    vars_ = {"X": CAT2, "Y": {"kind": "continuous", "shape": [1]}}
    root = make_study(tmp_path / "s", "X -> Y", {"obs": f"X,Y\n0,0.5\n1,{cell}\n"}, vars_)
    assert message in load_error(root)


def test_data_4_quoted_newline_keeps_row_and_line_numbers_apart(tmp_path):
    """A quoted field spanning two lines is one row: the next bad row is row 2, on line 4."""
    p = tmp_path / "data.csv"
    p.write_text('X,Note\n0,"two\nlines, one field"\n1,a,extra\n')
    with pytest.raises(DataError) as info:
        read_csv_upload(p, where="obs/data.csv")
    assert str(info.value) == (
        "obs/data.csv: row 2 (line 4) has 3 field(s), the header has 2 (X, Note)"
    )
    p.write_text('X,Note\n0,"two\nlines, one field"\n')
    assert read_csv_upload(p)[1] == [["0", "two\nlines, one field"]]


def test_data_5_utf16_csv_from_a_spreadsheet_is_named(tmp_path):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": ""}, {"X": CAT2, "Y": CAT2})
    (root / "obs" / "data.csv").write_bytes("X,Y\r\n0,1\r\n".encode("utf-16"))
    assert load_error(root) == "obs/data.csv: line 1 is not valid UTF-8 text"


def test_data_6_integral_floats_are_cleaned_to_class_indices(tmp_path):
    root = make_study(
        tmp_path / "s", "X -> Y", {"obs": "X,Y\n1.0, 0\n 0 ,1e0\n"}, {"X": CAT2, "Y": CAT2}
    )
    ds = load_study(root).observational
    assert ds.columns["X"].tolist() == [1, 0] and ds.columns["Y"].tolist() == [0, 1]
    assert ds.columns["X"].dtype == np.int64


def test_data_6b_wide_header_is_answered_in_linear_time(tmp_path):
    """A 25 000-column header (a ~190 KB line) must not cost quadratic time (duplicate-name
    check): a few hundred KB of upload may not tie up the server for seconds or minutes."""
    p = tmp_path / "data.csv"
    n = 25_000
    p.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join(["0"] * n) + "\n")
    t0 = time.monotonic()
    header, rows = read_csv_upload(p)
    elapsed = time.monotonic() - t0
    assert len(header) == n and len(rows[0]) == n
    assert elapsed < 2.0, f"{elapsed:.1f} s for a {n}-column header"


def test_data_6c_giant_single_field_is_refused_with_its_line(tmp_path):
    root = make_study(
        tmp_path / "s",
        "X -> Y",
        {"obs": "X,Y\n0,1\n1," + "1" * 200_000 + "\n"},
        {"X": CAT2, "Y": CAT2},
    )
    assert load_error(root) == (
        "obs/data.csv: line 3: malformed CSV (field larger than field limit (131072))"
    )


IMG = {"X": CAT2, "I": {"kind": "image", "shape": [1, 8, 8]}}


def image_study(tmp_path: Path, second: str = "im/b.png", variables=None) -> Path:
    root = make_study(
        tmp_path / "s", "X -> I", {"obs": f"X,I\n0,im/a.png\n1,{second}\n"}, variables or IMG
    )
    png(root / "obs" / "im" / "a.png", np.zeros((8, 8), np.uint8))
    return root


@pytest.mark.parametrize(
    "mode,array",
    [
        ("P", None),
        ("LA", np.zeros((8, 8, 2), np.uint8)),
        ("I;16", np.zeros((8, 8), np.uint16)),
    ],
    ids=["palette", "grey+alpha", "16-bit"],
)
def test_data_7_image_modes_other_than_L_and_RGB(tmp_path, mode, array):
    root = image_study(tmp_path)
    b = root / "obs" / "im" / "b.png"
    (Image.new("P", (8, 8)) if array is None else Image.fromarray(array)).save(b)
    assert Image.open(b).mode == mode
    assert (
        f"obs/data.csv: row 2, column 'I': image 'b.png' has mode {mode!r}; use 'L' "
        "(grayscale) or 'RGB'"
    ) in load_error(root)


def test_data_8_header_only_png_declaring_10_gigapixels_is_refused_fast(tmp_path):
    root = image_study(tmp_path)
    (root / "obs" / "im" / "b.png").write_bytes(header_only_png(100_000, 100_000))
    assert (root / "obs" / "im" / "b.png").stat().st_size < 100
    t0 = time.monotonic()
    msg = load_error(root)
    assert time.monotonic() - t0 < 5
    assert "obs/data.csv: row 2, column 'I': image 'b.png'" in msg
    assert "pixels" in msg and "limit" in msg, msg


def test_data_8b_png_text_chunk_bomb_is_refused_fast(tmp_path):
    """A valid 8x8 PNG carrying a zTXt chunk that inflates to 100 MB (100 KB on disk)."""
    root = image_study(tmp_path)
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    raw = buf.getvalue()
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (100 << 20), 9))
    at = raw.index(b"IDAT") - 4
    (root / "obs" / "im" / "b.png").write_bytes(raw[:at] + bomb + raw[at:])
    assert (root / "obs" / "im" / "b.png").stat().st_size < 200_000
    t0 = time.monotonic()
    msg = load_error(root)
    assert time.monotonic() - t0 < 5
    assert (
        "obs/data.csv: row 2, column 'I': image 'b.png' cannot be read (Decompressed data "
        "too large" in msg
    ), msg


def test_data_9_truncated_png_is_named(tmp_path):
    root = image_study(tmp_path)
    good = png(
        tmp_path / "full.png", np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    )
    data = good.read_bytes()
    (root / "obs" / "im" / "b.png").write_bytes(data[: len(data) // 2])
    assert (
        "obs/data.csv: row 2, column 'I': image 'b.png' cannot be read (image file is truncated"
    ) in load_error(root)


def test_data_10_png_path_that_is_a_folder(tmp_path):
    root = image_study(tmp_path, second="im/dir.png")
    (root / "obs" / "im" / "dir.png").mkdir()
    assert "obs/data.csv: row 2, column 'I': " in load_error(root)
    assert "is a folder, not an image" in load_error(root)


def test_data_11_mixed_sizes_when_the_shape_is_inferred_from_the_first_image(tmp_path):
    root = image_study(tmp_path, variables={"X": CAT2, "I": "image"})
    png(root / "obs" / "im" / "b.png", np.zeros((9, 9), np.uint8))
    assert (
        "obs/data.csv: row 2, column 'I': image 'b.png' is 9x9 (HxW); expected 8x8"
        in load_error(root)
    )


@pytest.mark.parametrize(
    "study_json,message",
    [
        ('{"graph": "X -> Y -> Z -> X"}', "study.json: graph: directed cycle X -> Y -> Z -> X"),
        (
            '{"graph": "X -> Y", "variables": {"X": 5}}',
            "study.json: variable 'X': expected a kind or an object",
        ),
        (
            '{"graph": "X -> Y", "variables": {"X": {"kind": "categorical", "classes": 1}}}',
            "study.json: variable 'X': a categorical variable needs 'classes' between 2 and 1000, "
            "got 1",
        ),
        (
            '{"graph": "X -> Y", '
            '"variables": {"X": {"kind": "categorical", "classes": 1000000000}}}',
            "study.json: variable 'X': a categorical variable needs 'classes' between 2 and 1000",
        ),
        (
            '{"graph": "X -> Y", '
            '"variables": {"Y": {"kind": "image", "shape": [1, 40000, 40000]}}}',
            "study.json: variable 'Y': an image has shape [C, H, W] with C 1 or 3 and "
            "4 <= H, W <= 512",
        ),
        (
            '{"graph": "X -> Y", "variables": {"Y": {"kind": "continuous", "shape": ["1"]}}}',
            "study.json: variable 'Y': 'shape' must be a list of integers",
        ),
    ],
    ids=[
        "cyclic-graph",
        "kind-not-text",
        "one-class",
        "1e9-classes",
        "giant-image",
        "shape-strings",
    ],
)
def test_data_12_study_json_schema_attacks(tmp_path, study_json, message):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": "X,Y\n0,1\n"}, {})
    (root / "study.json").write_text(study_json)
    assert message in load_error(root)


def test_data_13_study_json_nested_past_the_recursion_limit(tmp_path):
    """Valid JSON nested 100 000 deep must give a DataError naming study.json, not a
    RecursionError escaping into the app."""
    root = make_study(tmp_path / "s", "X -> Y", {"obs": "X,Y\n0,1\n"}, {})
    (root / "study.json").write_text(DEEP_JSON)
    assert load_error(root).startswith("study.json: ")


@pytest.mark.parametrize(
    "do,message",
    [
        ({"X": True}, "do1/intervention.json: do(X=True) must be a class index 0 … 1"),
        ({"X": 1.0}, "do1/intervention.json: do(X=1.0) must be a class index 0 … 1"),
        ({"Y": float("nan")}, "do1/intervention.json: do(Y=nan) must be 1 finite number(s)"),
        ({"Y": [1.0, 2.0]}, "do1/intervention.json: do(Y=[1.0, 2.0]) must be 1 finite number(s)"),
        ({"X": 1, "../Q": 0}, "do1/intervention.json: intervention on unknown variable '../Q'"),
    ],
    ids=["bool", "float-class", "NaN", "wrong-length", "unknown-among-good"],
)
def test_data_14_intervention_values(tmp_path, do, message):
    vars_ = {"X": CAT2, "Y": {"kind": "continuous", "shape": [1]}}
    root = make_study(tmp_path / "s", "X -> Y", {"do1": "X,Y\n1,0.5\n"}, vars_)
    (root / "do1" / "intervention.json").write_text(json.dumps({"do": do}))  # NaN as JSON NaN
    assert message in load_error(root)


def test_data_15_image_intervention_path_cannot_leave_the_dataset(tmp_path):
    root = image_study(tmp_path)
    png(root / "obs" / "im" / "b.png", np.zeros((8, 8), np.uint8))
    (root / "obs" / "intervention.json").write_text(json.dumps({"do": {"I": "../../x.png"}}))
    assert "obs/intervention.json: do(I=…) for an image must be a relative PNG path" in load_error(
        root
    )


def test_data_16_intervention_json_nested_past_the_recursion_limit(tmp_path):
    root = make_study(tmp_path / "s", "X -> Y", {"do1": "X,Y\n1,0\n"}, {"X": CAT2, "Y": CAT2})
    (root / "do1" / "intervention.json").write_text(DEEP_JSON)
    assert load_error(root).startswith("do1/intervention.json: ")


def test_data_17_save_study_refuses_a_dataset_name_that_is_a_path(tmp_path):
    from mdcm.data import Dataset, Study

    study = load_study(
        make_study(tmp_path / "src", "X -> Y", {"obs": "X,Y\n0,1\n"}, {"X": CAT2, "Y": CAT2})
    )
    evil = Study(study.schema, (Dataset("../../evil", study.observational.columns),))
    (tmp_path / "out").mkdir()
    before = tree(tmp_path)
    with pytest.raises(DataError, match=r"dataset name '../../evil' cannot be a folder name"):
        save_study(evil, tmp_path / "out" / "study")
    assert tree(tmp_path) == before  # nothing written, no temp folder left


@pytest.fixture()
def app_home(tmp_path, monkeypatch) -> Path:
    pytest.importorskip("mdcm_app.uploads")
    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_data_18_app_zip_upload_with_traversal_writes_nothing_outside_the_study(app_home):
    from mdcm_app import state, uploads

    sid = state.new_study(example="bow").study_id
    schema = state.load_meta(sid).schema()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ds/data.csv", "X,Y,Z\n0,1,0\n")
        zf.writestr("ds/../../../../escaped.txt", "pwned")
    raw = uploads.store_raw(sid, "../../evil name.zip", buf.getvalue())
    assert raw.parent == state.study_dir(sid) / "uploads" and "/" not in raw.name
    with pytest.raises(
        DataError,
        match=r"entry 'ds/\.\./\.\./\.\./\.\./escaped.txt': path "
        r"traversal \('\.\.'\) refused",
    ):
        uploads.import_dataset_zip(sid, schema, raw, "trial")
    with pytest.raises(DataError, match=r"dataset name '\.\./trial': use 1-64 letters"):
        uploads.import_dataset_zip(sid, schema, raw, "../trial")
    files = [p for p in app_home.parent.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(state.study_dir(sid)) for p in files), files
    assert not list(app_home.parent.rglob("escaped.txt"))
    assert not (state.study_dir(sid) / "study" / "trial").exists()
    assert [p.name for p in (state.study_dir(sid) / "uploads").iterdir()] == [raw.name]


@pytest.mark.parametrize(
    "bad",
    ["../x", "/etc", "", "a/b", ".", "..", "x" * 300, "a\x00b"],
    ids=["dotdot", "absolute", "empty", "slash", "dot", "dotdot-only", "300-chars", "NUL"],
)
def test_data_19_app_study_ids_cannot_escape_or_overflow(app_home, bad):
    from mdcm_app import state

    with pytest.raises(ValueError, match="study id"):
        state.study_dir(bad)


# ====================================================================== 2. model and run files
@pytest.fixture()
def saved(tmp_path):
    study = napkin(50)
    model = fresh(study)
    return model, save_model(model, tmp_path / "model")


def _same_samples(a: DCM, b: DCM) -> bool:
    x, y = a.sample(64, seed=3), b.sample(64, seed=3)
    return all(torch.equal(x[v], y[v]) for v in x)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_model_1_pickle_payload_is_refused_and_never_runs(saved, tmp_path, protocol):
    _, path = saved
    proof = tmp_path / "proof"
    pickle.loads(payload(proof, protocol))  # the oracle: this payload runs code
    assert proof.exists()
    marker = tmp_path / "pwned"
    (path / "model.safetensors").write_bytes(payload(marker, protocol))
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"] = sha(payload(marker, protocol))  # even with a matching recorded hash
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ModelFileError,
        match=r"model.safetensors .*(pickle|not a valid "
        r"safetensors)",
    ):
        load_model(path)
    assert not marker.exists()


def test_model_2_empty_weights_file(saved):
    _, path = saved
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"model.safetensors is truncated \(0 bytes\)"):
        load_model(path)


def test_model_3_absurd_header_length(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes((2**63).to_bytes(8, "little") + data[8:])
    with pytest.raises(ModelFileError, match="is not a valid safetensors file"):
        load_model(path)


def test_model_3b_header_declaring_a_4_terabyte_tensor(saved):
    """A well-formed safetensors header whose single tensor claims 4 TB: refused from the
    offsets, nothing allocated."""
    _, path = saved
    header = json.dumps(
        {
            "w": {
                "dtype": "F32",
                "shape": [1_000_000_000, 1000],
                "data_offsets": [0, 4_000_000_000_000],
            }
        }
    ).encode()
    blob = len(header).to_bytes(8, "little") + header + b"\0" * 64
    (path / "model.safetensors").write_bytes(blob)
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"] = sha(blob)
    (path / "model.json").write_text(json.dumps(meta))
    t0 = time.monotonic()
    with pytest.raises(ModelFileError, match="is not a valid safetensors file"):
        load_model(path)
    assert time.monotonic() - t0 < 5


def test_model_4_rehashed_weights_of_another_graph_do_not_fit(saved, tmp_path):
    """An attacker who also rewrites the sha256 still cannot load weights made for another
    graph: the tensors must fit the schema recorded in model.json."""
    from mdcm.examples import load_example

    _, path = saved
    other = save_model(fresh(load_example("bow", n=50).study), tmp_path / "other")
    blob = (other / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(blob)
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"] = sha(blob)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="weights do not fit the recorded schema"):
        load_model(path)


def test_model_5_model_json_edited_to_another_schema(saved):
    _, path = saved
    meta = json.loads((path / "model.json").read_text())
    meta["schema"]["variables"]["Y"] = {"kind": "categorical", "classes": 3}
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="weights do not fit the recorded schema"):
        load_model(path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda m: m.update(graph="X -> Y -> X") or m["schema"].update(graph="X -> Y; Y -> X"),
            "model.json: bad schema or config",
        ),
        (
            lambda m: m["schema"]["variables"].update(Y={"kind": "widget"}),
            "model.json: bad schema or config",
        ),
        (lambda m: m.pop("schema"), "model.json: bad schema or config"),
    ],
    ids=["cyclic-graph", "unknown-kind", "no-schema"],
)
def test_model_6_model_json_with_a_broken_schema(saved, edit, message):
    _, path = saved
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_model_7_missing_weights_file(saved):
    _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"model.safetensors is missing"):
        load_model(path)


def test_model_8_oversized_model_json(saved):
    _, path = saved
    with open(path / "model.json", "ab") as f:
        f.write(b" " * 10_000_001)
    with pytest.raises(ModelFileError, match="is too large to be a model description"):
        load_model(path)


def test_model_9_model_json_nested_past_the_recursion_limit(saved):
    _, path = saved
    (path / "model.json").write_text(DEEP_JSON)
    with pytest.raises(ModelFileError, match="model.json"):
        load_model(path)


def test_model_10_weights_entry_cannot_redirect_the_loader(saved, tmp_path):
    """model.json's "weights" name is informational: the loader reads only the folder's own
    model.safetensors, never a path written in the json."""
    model, path = saved
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"not weights")
    meta = json.loads((path / "model.json").read_text())
    meta["weights"] = str(outside)
    (path / "model.json").write_text(json.dumps(meta))
    assert _same_samples(load_model(path), model)
    meta["weights"] = "../outside.safetensors"
    (path / "model.json").write_text(json.dumps(meta))
    assert _same_samples(load_model(path), model)


@pytest.mark.parametrize("fail_at", ["weights", "json"])
def test_model_11_disk_full_while_replacing_a_model_keeps_the_old_one(saved, monkeypatch, fail_at):
    """Saving over a good model when the disk fills up: the old model must still load (and no
    temp file is left), whichever of the two files fails."""
    old, path = saved
    new = fresh(napkin(50), seed=7)
    real_replace = os.replace
    calls = {"n": 0}

    def full(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == (1 if fail_at == "weights" else 2):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as info:
        save_model(new, path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert info.value.errno == errno.ENOSPC
    assert no_tmp(path) == []
    assert _same_samples(load_model(path), old)


def test_model_12_cli_sample_with_a_pickle_model_exits_2_without_running_it(saved, tmp_path):
    from mdcm.cli import main

    _, path = saved
    marker = tmp_path / "pwned"
    (path / "model.safetensors").write_bytes(payload(marker, 2))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["sample", "--model", str(path), "-n", "5", "--out", str(tmp_path / "s")])
    lines = err.getvalue().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("mdcm: error: ")
    assert "pickle" in lines[0] and "model.safetensors" in lines[0]
    assert not marker.exists() and not (tmp_path / "s").exists()


# ---------------------------------------------------------------------- run files and ids
@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil", "", "x" * 65, "a/../../evil"])
def test_run_1_create_run_refuses_ids_that_escape(tmp_path, bad):
    root = tmp_path / "runs"
    with pytest.raises(RunError, match="bad run id"):
        runs.create_run(root, {"plan": "modular"}, run_id=bad)
    assert not list(tmp_path.rglob("evil*"))
    assert not root.exists() or tree(root) == []


def test_run_2_same_explicit_id_twice_keeps_the_first(tmp_path):
    first = runs.create_run(tmp_path, {"plan": "modular", "label": "first"}, run_id="r1")
    before = (first / "run.json").read_bytes()
    with pytest.raises(RunError, match="run 'r1' already exists"):
        runs.create_run(tmp_path, {"plan": "modular", "label": "second"}, run_id="r1")
    assert (first / "run.json").read_bytes() == before


def test_run_3_a_pid_written_in_run_json_is_never_signalled(tmp_path):
    """run.json is a file on disk: stop_run must only write the stop flag, never kill the pid
    it finds there (which could belong to any process)."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run = runs.create_run(tmp_path, {"plan": "modular"})
        data = json.loads((run / "run.json").read_text())
        data.update(status="running", pid=bystander.pid, pid_start=None)
        (run / "run.json").write_text(json.dumps(data))
        info = runs.stop_run(run)
        assert info.stop_requested and (run / "stop").is_file()
        time.sleep(0.3)
        assert bystander.poll() is None  # still alive
    finally:
        bystander.kill()
        bystander.wait()


def test_run_4_run_json_nested_past_the_recursion_limit(tmp_path):
    good = runs.create_run(tmp_path, {"plan": "modular"})
    bad = tmp_path / "deep"
    bad.mkdir()
    (bad / "run.json").write_text(DEEP_JSON)
    with pytest.raises(RunError, match="deep: run.json"):
        runs.run_status(bad)
    infos, skipped = runs.scan_runs(tmp_path)
    assert [i.path for i in infos] == [good] and [s for s, _ in skipped] == ["deep"]


def test_run_5_disk_full_while_updating_run_json(tmp_path, monkeypatch):
    run = runs.create_run(tmp_path, {"plan": "modular"})
    before = (run / "run.json").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        runs.RunRecorder(run).finish("failed", "boom")
    monkeypatch.undo()
    assert (run / "run.json").read_bytes() == before
    assert no_tmp(run) == [] and not [p for p in run.iterdir() if p.name.startswith(".")]
    assert runs.run_status(run).status in ("queued", "failed")


# ====================================================================== 3. training faults
def _exploding_critic(monkeypatch, after: int = 9) -> None:
    """From the ``after``-th call on, the WGAN gradient penalty (so the critic loss) is inf."""
    real_gp = train_mod.gradient_penalty
    calls = {"n": 0}

    def exploding(*a, **k):
        calls["n"] += 1
        out = real_gp(*a, **k)
        return out * float("inf") if calls["n"] > after else out

    monkeypatch.setattr(train_mod, "gradient_penalty", exploding)


def test_train_1_diverging_critic_stops_and_the_checkpoint_stays_good(tmp_path, monkeypatch):
    study = napkin()
    plan = make_plan(study.graph)
    cfg = TrainConfig(**{**TINY, "objective": "wgan", "steps": 8})
    real_gp = train_mod.gradient_penalty
    _exploding_critic(monkeypatch)
    ck = tmp_path / "ck"
    last = {}
    events = []

    def on_event(e):
        events.append(e)
        if e.kind == "checkpoint":
            last.update(
                {f: (ck / f).read_bytes() for f in (CKPT_WEIGHTS, CKPT_OPTIM, CKPT_STATE)}, event=e
            )

    with pytest.raises(TrainingError) as info:
        train(fresh(study), plan, study, cfg, on_event=on_event, checkpoint_dir=ck)
    msg = str(info.value)
    assert "critic" in msg and "diverged" in msg, msg
    assert events[-1].kind == "error" and events[-1].message == msg
    assert last["event"].step > 0  # a mid-stage checkpoint was written
    for f in (CKPT_WEIGHTS, CKPT_OPTIM, CKPT_STATE):  # ... and is exactly what is on disk
        assert (ck / f).read_bytes() == last[f], f
    assert no_tmp(ck) == []
    monkeypatch.setattr(train_mod, "gradient_penalty", real_gp)
    resumed = []
    res = train(
        fresh(study, seed=5),
        plan,
        study,
        cfg,
        on_event=resumed.append,
        checkpoint_dir=ck,
        resume=True,
    )
    assert [s.steps for s in res.stages] == [8, 8]
    first = next(e for e in resumed if e.kind in ("step", "check") and e.stage >= 0)
    assert (first.stage, first.step) > (last["event"].stage, last["event"].step)


def test_train_1b_diverging_critic_message_names_the_stage(monkeypatch):
    study = napkin()
    _exploding_critic(monkeypatch)
    with pytest.raises(TrainingError) as info:
        train(
            fresh(study),
            make_plan(study.graph),
            study,
            TrainConfig(**{**TINY, "objective": "wgan", "steps": 8}),
        )
    assert "critic" in str(info.value) and "stage 0" in str(info.value), str(info.value)


def _oom_train(monkeypatch, where: str, exc: BaseException, **cfg):
    study = napkin()

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(train_mod._Trainer, where, boom)
    events = []
    with pytest.raises(TrainingError) as info:
        train(
            fresh(study),
            make_plan(study.graph),
            study,
            TrainConfig(**{**TINY, **cfg}),
            on_event=events.append,
        )
    return str(info.value), events


def test_train_2_gpu_oom_in_the_critic_step_is_actionable(monkeypatch):
    msg, events = _oom_train(
        monkeypatch,
        "_critic_step",
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
        objective="wgan",
        batch_size=32,
    )
    assert "batch_size=32" in msg and "smaller batch" in msg and "batch_size=16" in msg, msg
    assert events[-1].kind == "error" and events[-1].message == msg


def test_train_3_gpu_oom_in_the_fit_check_is_actionable(monkeypatch):
    msg, _ = _oom_train(monkeypatch, "_check", torch.OutOfMemoryError("CUDA out of memory"))
    assert "smaller batch" in msg, msg


def test_train_4_cpu_allocator_failure_is_actionable(monkeypatch):
    """On a CPU machine torch reports exhausted RAM as a RuntimeError from its allocator; that
    too must become the actionable TrainingError (smaller batch), not a raw traceback."""
    msg, _ = _oom_train(
        monkeypatch,
        "_gen_step",
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate "
            "memory)"
        ),
    )
    assert "smaller batch" in msg and "batch_size=" in msg, msg


def test_train_5_oom_in_a_run_is_recorded_as_failed_with_the_advice(tmp_path, monkeypatch):
    from mdcm.cli import main

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_mod._Trainer, "_gen_step", boom)
    run_dir = tmp_path / "runs" / "oom_run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(
            [
                "train",
                "--example",
                "napkin",
                "--n",
                "300",
                "--run-dir",
                str(run_dir),
                "--steps",
                "4",
                "--batch-size",
                "32",
                "--device",
                "cpu",
                "--progress",
                "off",
                "--set",
                "check_samples=256",
                "--set",
                "mmd_batch=64",
            ]
        )
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("mdcm: error:")]
    assert rc == 2 and len(lines) == 1 and "smaller batch" in lines[0], err.getvalue()
    info = runs.run_status(run_dir)
    assert info.status == "failed" and "smaller batch" in info.message
    assert not (run_dir / "model" / "model.json").exists()


def test_train_6_disk_full_at_the_first_checkpoint_leaves_nothing_half_written(
    tmp_path, monkeypatch
):
    study = napkin()
    plan = make_plan(study.graph)
    ck = tmp_path / "ck"
    real_replace = os.replace

    def full(src, dst, *a, **k):
        if Path(dst).parent == ck:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as info:
        train(fresh(study), plan, study, TrainConfig(**TINY), checkpoint_dir=ck)
    monkeypatch.setattr(os, "replace", real_replace)
    assert info.value.errno == errno.ENOSPC
    assert no_tmp(ck) == [] and not (ck / CKPT_STATE).exists()
    # nothing to resume from: resume=True starts from the beginning and finishes
    res = train(fresh(study), plan, study, TrainConfig(**TINY), checkpoint_dir=ck, resume=True)
    assert [s.steps for s in res.stages] == [TINY["steps"]] * 2


def _resume(ck: Path):
    study = napkin()
    return train(
        fresh(study),
        make_plan(study.graph),
        study,
        TrainConfig(**TINY),
        checkpoint_dir=ck,
        resume=True,
    )


@pytest.mark.parametrize(
    "spoil,message",
    [
        (
            lambda ck: (ck / CKPT_STATE).write_text('{"stage_index": 1, '),
            "checkpoint.json is not valid JSON",
        ),
        (lambda ck: (ck / CKPT_STATE).write_text("[1, 2, 3]"), "checkpoint.json"),
        (lambda ck: (ck / CKPT_STATE).write_text(DEEP_JSON), "checkpoint.json"),
        (
            lambda ck: (ck / CKPT_WEIGHTS).write_bytes((ck / CKPT_WEIGHTS).read_bytes()[:-7]),
            "checkpoint.safetensors is missing or does not match checkpoint.json",
        ),
        (lambda ck: (ck / CKPT_OPTIM).unlink(), "optim.pt is missing or does not match"),
    ],
    ids=["truncated-json", "json-list", "deep-json", "truncated-weights", "missing-optim"],
)
def test_train_7_spoiled_checkpoint_gives_a_clear_error(good_ckpt, tmp_path, spoil, message):
    ck = tmp_path / "ck"
    shutil.copytree(good_ckpt, ck)
    spoil(ck)
    with pytest.raises(TrainingError, match=message):
        _resume(ck)


def _optim_payload(good_ckpt: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the good checkpoint whose optim.pt is a code payload, its hash re-recorded."""
    ck = tmp_path / "ck"
    shutil.copytree(good_ckpt, ck)
    marker = tmp_path / "pwned"
    blob = payload(marker, 2)
    (ck / CKPT_OPTIM).write_bytes(blob)
    state = json.loads((ck / CKPT_STATE).read_text())
    state["optim_sha256"] = sha(blob)
    (ck / CKPT_STATE).write_text(json.dumps(state))
    return ck, marker


def test_train_8_pickle_payload_in_the_optimizer_state_never_runs(good_ckpt, tmp_path):
    """optim.pt is the one torch.save file. Even with its hash rewritten in checkpoint.json, a
    code payload in it must not run when a run is resumed."""
    ck, marker = _optim_payload(good_ckpt, tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - the type is test_train_8b's business
        _resume(ck)
    assert not marker.exists()


def test_train_8b_pickle_payload_in_the_optimizer_state_is_a_training_error(good_ckpt, tmp_path):
    ck, _ = _optim_payload(good_ckpt, tmp_path)
    with pytest.raises(Exception) as info:  # noqa: B017
        _resume(ck)
    assert isinstance(info.value, TrainingError), repr(info.value)
    assert "optim.pt" in str(info.value) and "weights_only=False" not in str(info.value)


# ====================================================================== 4. concurrency
def test_concurrency_1_many_runs_created_at_the_same_instant(tmp_path):
    barrier = threading.Barrier(16)
    made: list[Path] = []
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            barrier.wait()
            made.append(runs.create_run(tmp_path, {"plan": "modular", "label": f"s{i}"}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(made)) == 16
    labels = sorted(json.loads((p / "run.json").read_text())["config"]["label"] for p in made)
    assert labels == sorted(f"s{i}" for i in range(16))
    assert len(runs.list_runs(tmp_path)) == 16


def test_concurrency_2_parallel_run_json_updates_lose_nothing(tmp_path):
    """The launcher and the run process update run.json at the same time (read-modify-write
    under a file lock): no update may be lost and the file is always valid JSON."""
    run = runs.create_run(tmp_path, {"plan": "modular"})
    stop = threading.Event()
    bad_reads: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads((run / "run.json").read_text())
            except json.JSONDecodeError as exc:
                bad_reads.append(str(exc))

    def writer(k: int) -> None:
        for i in range(30):
            runs._update_run_json(run, **{f"w{k}": i})

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    r.join()
    data = json.loads((run / "run.json").read_text())
    assert [data[f"w{k}"] for k in range(4)] == [29] * 4 and not bad_reads
    assert no_tmp(run) == []


def test_concurrency_3_reading_events_while_a_writer_appends_in_pieces(tmp_path):
    """A reader polling events.jsonl while the writer's lines land in two pieces sees only whole
    events, always a prefix of what was written, in order."""
    run = runs.create_run(tmp_path, {"plan": "modular"})
    n = 300
    done = threading.Event()

    def writer() -> None:
        with open(run / "events.jsonl", "a", encoding="utf-8") as f:
            for i in range(n):
                line = json.dumps({"kind": "step", "stage": 0, "step": i}) + "\n"
                f.write(line[:9])
                f.flush()
                time.sleep(0.0002)
                f.write(line[9:])
                f.flush()
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    snapshots = 0
    while not done.is_set():
        steps = [e["step"] for e in runs.read_events(run)]
        assert steps == list(range(len(steps)))
        snapshots += 1
    t.join()
    assert [e["step"] for e in runs.read_events(run)] == list(range(n)) and snapshots > 1


def test_concurrency_4_stop_flag_of_one_run_does_not_touch_another(tmp_path):
    a = runs.create_run(tmp_path, {"plan": "modular"})
    b = runs.create_run(tmp_path, {"plan": "modular"})
    rec_a, rec_b = runs.RunRecorder(a), runs.RunRecorder(b)
    runs.stop_run(a)
    assert rec_a.should_stop() and not rec_b.should_stop()
    rec_b.on_event({"kind": "stage_start", "stage": 0, "step": 0})
    assert runs.read_events(a) == [] and len(runs.read_events(b)) == 1


def test_concurrency_5_two_sessions_upload_the_same_dataset_name_at_once(app_home, monkeypatch):
    """Two browser sessions import a dataset called "trial" at the same moment: one wins, the
    other is told the name is taken, and the winner's folder is not mixed with the loser's."""
    from mdcm_app import state, uploads

    sid = state.new_study(example="bow").study_id
    schema = state.load_meta(sid).schema()
    raws = [
        uploads.store_raw(sid, "a.csv", b"X,Y\n0,0\n0,1\n"),
        uploads.store_raw(sid, "b.csv", b"X,Y\n1,1\n1,0\n1,1\n"),
    ]
    both_validated = threading.Barrier(2)
    real = uploads.load_dataset

    def slow_validation(*a, **k):
        out = real(*a, **k)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_validated.wait(timeout=5)  # both sessions are past the name check
        return out

    monkeypatch.setattr(uploads, "load_dataset", slow_validation)
    won, lost = [], []

    def session(raw: Path) -> None:
        try:
            won.append(uploads.import_csv_images(sid, schema, raw, None, "trial"))
        except DataError as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=session, args=(r,)) for r in raws]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    folder = state.study_dir(sid) / "study" / "trial"
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv"], tree(folder)
    assert len(won) == 1 and len(lost) == 1 and "already exists" in lost[0], (won, lost)
    assert (folder / "data.csv").read_bytes().count(b"\n") == won[0].n + 1


def test_concurrency_6_a_page_reloading_during_a_real_run_sees_consistent_states(tmp_path):
    """What a reloaded page does (list runs, read status and events) while a real background
    run trains: never an error, statuses only move forward, events only grow."""
    root = tmp_path / "runs"
    cfg = {
        "steps": 6,
        "batch_size": 32,
        "seed": 0,
        "device": "cpu",
        "check_every": 3,
        "checkpoint_every": 3,
        "check_samples": 512,
        "mmd_batch": 64,
    }
    info = runs.start_run(root, example="napkin", example_n=500, train_config=cfg)
    seen: list[str] = []
    prev: list[dict] = []
    order = ["queued", "running", "done"]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert [i.run_id for i in runs.list_runs(root)] == [info.run_id]
            now = runs.run_status(info.path)
            events = runs.read_events(info.path)
            assert events[: len(prev)] == prev
            prev = events
            if not seen or seen[-1] != now.status:
                seen.append(now.status)
            if not now.active:
                break
            time.sleep(0.02)
    finally:
        last = runs.run_status(info.path)
        if last.active and last.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(last.pid, 9)
    assert seen[-1] == "done", (seen, (info.path / "stderr.log").read_text()[-2000:])
    assert all(s in order for s in seen), seen
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen
    assert prev[-1]["kind"] in ("done", "saved")


# ====================================================================== 5. text and command line
def test_cli_1_train_on_a_hostile_study_is_one_line_naming_the_row(tmp_path):
    from mdcm.cli import main

    root = make_study(tmp_path / "s", "X -> Y", {"obs": "X,Y\n0,1\n1,7\n"}, {"X": CAT2, "Y": CAT2})
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(
            [
                "train",
                "--study",
                str(root),
                "--out",
                str(tmp_path / "m"),
                "--steps",
                "2",
                "--device",
                "cpu",
                "--progress",
                "off",
            ]
        )
    assert rc == 2 and err.getvalue().count("\n") == 1, err.getvalue()
    assert err.getvalue().startswith("mdcm: error: ")
    assert "obs/data.csv: row 2, column 'Y': class 7 is out of range" in err.getvalue()
    assert not (tmp_path / "m").exists()


def test_cli_2_huge_graph_text_is_answered_quickly(tmp_path):
    """A 2 MB graph text (an upload of the wrong file) is refused or parsed within seconds."""
    from mdcm.graph import GraphError, parse_graph

    text = "; ".join(f"V{i} -> V{i + 1}" for i in range(120_000))
    t0 = time.monotonic()
    try:
        g = parse_graph(text)
        assert len(g.nodes) == 120_001
    except GraphError as exc:
        assert str(exc)
    assert time.monotonic() - t0 < 20
    junk = os.urandom(1 << 20).decode("latin-1")
    t0 = time.monotonic()
    with pytest.raises(GraphError):
        parse_graph(junk)
    assert time.monotonic() - t0 < 20
