"""Dataset and study folders: round trips, schema inference, validation messages, real readers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from study_files import make_study

from mdcm.data import (
    DataError,
    Dataset,
    Study,
    UploadLimits,
    infer_schema,
    load_dataset,
    load_study,
    save_study,
)
from mdcm.graph import CausalGraph
from mdcm.readers import read_medmnist_npz, read_mnist_idx
from mdcm.variables import Schema, Variable


# ----------------------------------------------------------------------------- helpers
def png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)
    return path.name


def rich_study() -> Study:
    rng = np.random.default_rng(0)
    n = 12
    graph = CausalGraph.parse("Z -> X -> Y; Z -> Y; X -> G; X -> C; X <-> Y")
    schema = Schema(
        graph,
        (
            Variable("Z", "continuous", shape=(3,)),
            Variable("X", "categorical", classes=3),
            Variable("Y", "continuous", shape=(1,)),
            Variable("G", "image", shape=(1, 6, 5)),
            Variable("C", "image", shape=(3, 4, 7)),
        ),
    )

    def cols(x=None):
        return {
            "Z": rng.normal(size=(n, 3)).astype(np.float32),
            "X": np.full(n, x, np.int64) if x is not None else rng.integers(0, 3, n),
            "Y": rng.normal(size=(n, 1)).astype(np.float32),
            "G": rng.integers(0, 256, (n, 1, 6, 5)).astype(np.float32) / 127.5 - 1,
            "C": rng.integers(0, 256, (n, 3, 4, 7)).astype(np.float32) / 127.5 - 1,
        }

    return Study(schema, (Dataset("observational", cols()), Dataset("do_X", cols(2), {"X": 2})))


# ----------------------------------------------------------------------------- round trips
def test_round_trip_all_kinds(tmp_path):
    study = rich_study()
    path = save_study(study, tmp_path / "s")
    back = load_study(path)
    assert back.schema == study.schema and back.path == path
    assert [d.name for d in back.datasets] == ["observational", "do_X"]
    assert back.interventions == [frozenset({"X"})]
    assert back.observational.name == "observational"
    for ds in study.datasets:
        got = back.dataset(ds.name)
        assert dict(got.do) == dict(ds.do) and got.n == ds.n
        for v in study.schema.names:
            assert got.columns[v].dtype == ds.columns[v].dtype
            np.testing.assert_array_equal(got.columns[v], ds.columns[v])
    header = (path / "observational" / "data.csv").read_text().splitlines()[0]
    assert header == "Z[0],Z[1],Z[2],X,Y,G,C"
    assert json.loads((path / "do_X" / "intervention.json").read_text()) == {"do": {"X": 2}}


def test_save_refuses_non_empty_folder_unless_overwrite(tmp_path):
    study = rich_study()
    save_study(study, tmp_path / "s")
    with pytest.raises(DataError, match="already exists and is not empty"):
        save_study(study, tmp_path / "s")
    save_study(study, tmp_path / "s", overwrite=True)
    assert load_study(tmp_path / "s").observational.n == 12
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp folders left


def test_schema_inference(tmp_path):
    root = tmp_path / "s"
    (root / "obs" / "img").mkdir(parents=True)
    rows = ["A,B,V[0],V[1],I"]
    for i in range(4):
        png(root / "obs" / "img" / f"{i}.png", np.full((9, 8, 3), 40 * i))
        rows.append(f"{i % 3},{0.5 * i},{i},{-i},img/{i}.png")
    (root / "obs" / "data.csv").write_text("\n".join(rows) + "\n")
    (root / "study.json").write_text(json.dumps({"graph": "A -> B -> V; A -> I"}))
    study = load_study(root)
    assert study.schema["A"] == Variable("A", "categorical", classes=3)
    assert study.schema["B"] == Variable("B", "continuous", shape=(1,))
    assert study.schema["V"] == Variable("V", "continuous", shape=(2,))
    assert study.schema["I"] == Variable("I", "image", shape=(3, 9, 8))
    np.testing.assert_array_equal(study.observational.columns["V"][:, 1], [0, -1, -2, -3])
    # declared kinds win; a bare kind is completed from the data
    schema = infer_schema(
        CausalGraph.parse("A -> B -> V; A -> I"),
        root / "obs",
        declared={"A": {"kind": "categorical", "classes": 5}, "B": "continuous"},
    )
    assert schema["A"].classes == 5 and schema["B"].kind == "continuous"
    assert schema["I"].shape == (3, 9, 8)


def test_inference_widens_classes_over_datasets_and_single_folder_study(tmp_path):
    root = make_study(tmp_path / "s", "X -> Y", {"a": "X,Y\n0,1\n1,0\n", "b": "X,Y\n0,4\n1,2\n"})
    assert load_study(root).schema["Y"].classes == 5
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "study.json").write_text('{"graph": "X -> Y"}')
    (flat / "data.csv").write_text("X,Y\n0,1\n1,1\n")
    study = load_study(flat)
    assert study.observational.name == "observational" and study.observational.n == 2


def test_bom_quotes_blank_lines_and_whitespace(tmp_path):
    root = make_study(
        tmp_path / "s",
        "X -> Y",
        {"obs": ""},
        {"X": {"kind": "categorical", "classes": 2}, "Y": "continuous"},
    )
    (root / "obs" / "data.csv").write_bytes(
        '\ufeff"X", "Y"\r\n"1", " 2.5"\r\n\r\n0,-1e-3\r\n'.encode()
    )
    ds = load_study(root).observational
    np.testing.assert_array_equal(ds.columns["X"], [1, 0])
    np.testing.assert_allclose(ds.columns["Y"][:, 0], [2.5, -1e-3])


def test_omitted_column_of_intervened_variable_is_filled(tmp_path):
    root = make_study(
        tmp_path / "s",
        "X -> Y",
        {"obs": "X,Y\n0,1\n1,0\n", "do1": "Y\n1\n1\n"},
        {"X": {"kind": "categorical", "classes": 2}, "Y": {"kind": "categorical", "classes": 2}},
        do={"do1": {"X": 1}},
    )
    ds = load_study(root).dataset("do1")
    np.testing.assert_array_equal(ds.columns["X"], [1, 1])
    assert ds.regime == frozenset({"X"})


# ----------------------------------------------------------------------------- validation
CAT2 = {"X": {"kind": "categorical", "classes": 2}, "Y": {"kind": "categorical", "classes": 2}}


@pytest.mark.parametrize(
    "csv_text,variables,message",
    [
        (
            "X\n0\n1\n",
            CAT2,
            "obs/data.csv: missing column 'Y' for variable 'Y' (categorical, 2 "
            "classes); the variable is in the graph but not in the data",
        ),
        ("X,Y,Q\n0,1,2\n", CAT2, "obs/data.csv: column 'Q' is not a variable of the graph (X, Y)"),
        ("X,Y\n0,1\n1,abc\n", CAT2, "obs/data.csv: row 2, column 'Y': 'abc' is not a number"),
        ("X,Y\n0,1\n1,\n", CAT2, "obs/data.csv: row 2, column 'Y': '' is not a number"),
        (
            "X,Y\n0,1\n0,2\n",
            CAT2,
            "obs/data.csv: row 2, column 'Y': class 2 is out of range; "
            "variable 'Y' declares 2 classes (0 … 1)",
        ),
        ("X,Y\n-1,1\n", CAT2, "obs/data.csv: row 1, column 'X': class -1 is out of range"),
        ("X,Y\n0,0.5\n", CAT2, "obs/data.csv: row 1, column 'Y': '0.5' is not a class index"),
        ("X,Y\n", CAT2, "obs/data.csv: the dataset is empty (a header but no rows)"),
        ("", CAT2, "obs/data.csv: the file is empty (no header row)"),
        (
            "X,Y\n0,1\n1\n",
            CAT2,
            "obs/data.csv: row 2 (line 3) has 1 field(s), the header has 2 (X, Y)",
        ),
        ("X,Y\n0,1,1\n", CAT2, "obs/data.csv: row 1 (line 2) has 3 field(s), the header has 2"),
        ("X,X\n0,1\n", CAT2, "obs/data.csv: column 'X' appears twice in the header"),
        (
            "X,Y\n0,nan\n",
            {"X": CAT2["X"], "Y": "continuous"},
            "obs/data.csv: row 1, column 'Y': 'nan' is not a finite number",
        ),
        (
            "X,Y\n0,1\n1,-inf\n",
            {"X": CAT2["X"], "Y": "continuous"},
            "obs/data.csv: row 2, column 'Y': '-inf' is not a finite number",
        ),
        (
            "X,Y[0],Y[1]\n0,1,2\n",
            {"X": CAT2["X"], "Y": {"kind": "continuous", "shape": [3]}},
            "obs/data.csv: missing column 'Y[2]' for variable 'Y' (continuous, 3 dim(s))",
        ),
        (
            "X,Y[0]\n0,1\n",
            {"X": CAT2["X"], "Y": {"kind": "continuous", "shape": [1]}},
            "obs/data.csv: column 'Y[0]' does not fit variable 'Y' (continuous, 1 dim(s)); "
            "expected "
            "columns Y",
        ),
        ('X,Y\n0,"1\n', CAT2, "obs/data.csv: line 2: malformed CSV"),
    ],
)
def test_csv_errors_name_file_row_column(tmp_path, csv_text, variables, message):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": csv_text}, variables)
    with pytest.raises(DataError) as info:
        load_study(root)
    assert message in str(info.value)


def test_non_utf8_csv(tmp_path):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": ""}, CAT2)
    (root / "obs" / "data.csv").write_bytes(b"X,Y\n0,1\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="obs/data.csv: line 3 is not valid UTF-8 text"):
        load_study(root)


@pytest.mark.parametrize(
    "do,message",
    [
        (
            {"Q": 1},
            "do1/intervention.json: intervention on unknown variable 'Q'; the graph has X, Y",
        ),
        ({"X": 5}, "do1/intervention.json: do(X=5) is out of range; 'X' declares 2 classes"),
        ({"X": "a"}, "do1/intervention.json: do(X='a') must be a class index 0 … 1"),
        ({}, 'do1/intervention.json: "do" is empty'),
    ],
)
def test_intervention_errors(tmp_path, do, message):
    root = make_study(tmp_path / "s", "X -> Y", {"do1": "X,Y\n1,0\n"}, CAT2, do={"do1": do})
    with pytest.raises(DataError) as info:
        load_study(root)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"do": {"X": 1}', "do1/intervention.json: not valid JSON (line 1, column 16"),
        ('{"X": 1}', 'do1/intervention.json: expected an object like {"do": {"X": 1}}'),
        ("[1]", "do1/intervention.json: expected an object like"),
    ],
)
def test_malformed_intervention_json(tmp_path, text, message):
    root = make_study(tmp_path / "s", "X -> Y", {"do1": "X,Y\n1,0\n"}, CAT2)
    (root / "do1" / "intervention.json").write_text(text)
    with pytest.raises(DataError) as info:
        load_study(root)
    assert message in str(info.value)


def test_column_contradicting_intervention(tmp_path):
    root = make_study(
        tmp_path / "s", "X -> Y", {"do1": "X,Y\n1,0\n0,0\n"}, CAT2, do={"do1": {"X": 1}}
    )
    with pytest.raises(
        DataError,
        match=r"do1/data.csv: row 2, column 'X': value '0' contradicts "
        r"intervention.json do\(X=1\)",
    ):
        load_study(root)


@pytest.mark.parametrize(
    "study_json,message",
    [
        (None, "has no study.json"),
        ("{oops", "study.json: not valid JSON (line 1, column 2"),
        ('{"variables": {}}', 'study.json: expected an object with a "graph" text'),
        ('{"graph": "X -> -> Y"}', "study.json: graph:"),
        (
            '{"graph": "X -> Y", "variables": {"Q": "categorical"}}',
            "study.json: variable 'Q' is declared but is not in the graph (X, Y)",
        ),
        (
            '{"graph": "X -> Y", "variables": {"X": "widget"}}',
            "study.json: variable 'X': unknown kind 'widget'",
        ),
        (
            '{"graph": "X -> Y -> Z", "variables": {}}',
            "obs/data.csv: missing column 'Z'; the variable is in the graph but not in the data",
        ),
    ],
)
def test_study_json_errors(tmp_path, study_json, message):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": "X,Y\n0,1\n"})
    if study_json is None:
        (root / "study.json").unlink()
    else:
        (root / "study.json").write_text(study_json)
    with pytest.raises(DataError) as info:
        load_study(root)
    assert message in str(info.value)


def test_no_dataset_folder(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "study.json").write_text('{"graph": "X -> Y"}')
    with pytest.raises(DataError, match="has no dataset: expected sub-folders with data.csv"):
        load_study(root)


# ----------------------------------------------------------------------------- images
IMG = {"X": {"kind": "categorical", "classes": 2}, "I": {"kind": "image", "shape": [1, 6, 6]}}


def image_study(tmp_path: Path, writer) -> Path:
    root = make_study(tmp_path / "s", "X -> I", {"obs": "X,I\n0,im/a.png\n1,im/b.png\n"}, IMG)
    png(root / "obs" / "im" / "a.png", np.zeros((6, 6)))
    writer(root / "obs" / "im" / "b.png")
    return root


@pytest.mark.parametrize(
    "writer,message",
    [
        (
            lambda p: png(p, np.zeros((6, 7))),
            "obs/data.csv: row 2, column 'I': image 'b.png' is 6x7 (HxW); expected 6x6",
        ),
        (
            lambda p: png(p, np.zeros((6, 6, 3))),
            "obs/data.csv: row 2, column 'I': image 'b.png' has "
            "mode 'RGB' (3 channel(s)); expected 1 channel(s) (L)",
        ),
        (
            lambda p: png(p, np.zeros((6, 6, 4)), "RGBA"),
            "image 'b.png' has mode 'RGBA'; use 'L' (grayscale) or 'RGB'",
        ),
        (
            lambda p: p.write_text("hello, I am text"),
            "obs/data.csv: row 2, column 'I': file 'b.png' is not a PNG image (it starts with text",
        ),
        (
            lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10),
            "obs/data.csv: row 2, column 'I': image 'b.png' cannot be read",
        ),
        (lambda p: None, "obs/data.csv: row 2, column 'I': image file"),
    ],
)
def test_image_errors(tmp_path, writer, message):
    root = image_study(tmp_path, writer)
    with pytest.raises(DataError) as info:
        load_study(root)
    assert message in str(info.value)


def test_image_path_must_stay_inside_dataset(tmp_path):
    root = make_study(tmp_path / "s", "X -> I", {"obs": "X,I\n0,../secret.png\n"}, IMG)
    png(root / "secret.png", np.zeros((6, 6)))
    with pytest.raises(
        DataError,
        match="row 1, column 'I': image path '../secret.png' must be "
        "relative to the dataset folder and stay inside it",
    ):
        load_study(root)
    (root / "obs" / "data.csv").write_text(f"X,I\n0,{root / 'secret.png'}\n")
    with pytest.raises(DataError, match="must be relative"):
        load_study(root)


def test_image_values_map_to_unit_interval(tmp_path):
    root = image_study(tmp_path, lambda p: png(p, np.full((6, 6), 255)))
    img = load_study(root).observational.columns["I"]
    assert img.shape == (2, 1, 6, 6) and img.dtype == np.float32
    assert img[0].max() == -1.0 and img[1].min() == 1.0


def test_decompression_bomb_limit(tmp_path):
    root = image_study(tmp_path, lambda p: png(p, np.zeros((300, 300))))
    with pytest.raises(
        DataError, match="image 'b.png' is 300x300 pixels, more than the limit of 10000"
    ):
        load_dataset(
            root / "obs", load_study_schema(root), limits=UploadLimits(max_image_pixels=10_000)
        )


def load_study_schema(root: Path) -> Schema:
    return Schema.from_json(json.loads((root / "study.json").read_text()))


# ----------------------------------------------------------------------------- in-memory checks
def test_study_validates_in_memory_datasets():
    schema = Schema(
        CausalGraph.parse("X -> Y"),
        (Variable("X", "categorical", classes=2), Variable("Y", "continuous", shape=(1,))),
    )
    good = {"X": np.array([0, 1]), "Y": np.zeros((2, 1), np.float32)}
    Study(schema, (Dataset("a", good),))
    with pytest.raises(DataError, match="variable 'Y' is in the graph but not in the data"):
        Study(schema, (Dataset("a", {"X": good["X"]}),))
    with pytest.raises(DataError, match="row 2, variable 'X': class 2 is out of range"):
        Study(schema, (Dataset("a", {**good, "X": np.array([0, 2])}),))
    with pytest.raises(DataError, match="row 1, variable 'Y': NaN or infinity"):
        Study(schema, (Dataset("a", {**good, "Y": np.array([[np.nan], [0]], np.float32)}),))
    with pytest.raises(DataError, match="intervention on unknown variable 'Q'"):
        Study(schema, (Dataset("a", good, {"Q": 1}),))
    with pytest.raises(DataError, match="two datasets named 'a'"):
        Study(schema, (Dataset("a", good), Dataset("a", good)))
    with pytest.raises(DataError, match="columns have different lengths"):
        Dataset("a", {"X": np.array([0]), "Y": np.zeros((2, 1))})
    with pytest.raises(DataError, match="the dataset is empty"):
        Study(
            schema,
            (Dataset("a", {"X": np.array([], np.int64), "Y": np.zeros((0, 1), np.float32)}),),
        )


# ----------------------------------------------------------------------------- real readers
def idx_files(
    tmp_path: Path, n=5, h=4, w=3, gz=False, img_magic=2051, lab_magic=2049, n_labels=None
):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    labels = rng.integers(0, 10, n if n_labels is None else n_labels, dtype=np.uint8)
    ib = b"".join(x.to_bytes(4, "big") for x in (img_magic, n, h, w)) + images.tobytes()
    lb = b"".join(x.to_bytes(4, "big") for x in (lab_magic, len(labels))) + labels.tobytes()
    op = gzip.compress if gz else (lambda b: b)
    (tmp_path / "i.idx").write_bytes(op(ib))
    (tmp_path / "l.idx").write_bytes(op(lb))
    return tmp_path / "i.idx", tmp_path / "l.idx", images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_read_mnist_idx(tmp_path, gz):
    ip, lp, images, labels = idx_files(tmp_path, gz=gz)
    got_i, got_l = read_mnist_idx(ip, lp)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)
    assert got_i.dtype == np.uint8 and got_l.dtype == np.int64


def test_read_mnist_idx_errors(tmp_path):
    ip, lp, *_ = idx_files(tmp_path, img_magic=2049)
    with pytest.raises(
        DataError, match="i.idx: not an idx image file \\(magic number 2049, expected 2051\\)"
    ):
        read_mnist_idx(ip, lp)
    ip, lp, *_ = idx_files(tmp_path, lab_magic=7)
    with pytest.raises(DataError, match="l.idx: not an idx label file"):
        read_mnist_idx(ip, lp)
    ip, lp, *_ = idx_files(tmp_path, n_labels=4)
    with pytest.raises(DataError, match="i.idx has 5 images but l.idx has 4 labels"):
        read_mnist_idx(ip, lp)
    ip, lp, *_ = idx_files(tmp_path)
    ip.write_bytes(ip.read_bytes()[:-3])
    with pytest.raises(DataError, match="header declares 5 images of 4x3"):
        read_mnist_idx(ip, lp)


def test_read_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    labels = rng.integers(0, 2, (6, 1))
    np.savez(
        tmp_path / "m.npz",
        train_images=images,
        train_labels=labels,
        test_images=images[:2],
        test_labels=labels[:2],
    )
    got_i, got_l = read_medmnist_npz(tmp_path / "m.npz")
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels[:, 0])
    assert read_medmnist_npz(tmp_path / "m.npz", "test")[0].shape == (2, 5, 5)
    with pytest.raises(DataError, match="m.npz: no 'val_images'/'val_labels' arrays"):
        read_medmnist_npz(tmp_path / "m.npz", "val")


def test_read_medmnist_npz_refuses_pickles_and_junk(tmp_path):
    np.savez(
        tmp_path / "p.npz",
        train_images=np.array([{"evil": 1}], dtype=object),
        train_labels=np.array([0]),
    )
    with pytest.raises(DataError, match="p.npz: cannot read without unpickling"):
        read_medmnist_npz(tmp_path / "p.npz")
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(DataError, match="t.npz"):
        read_medmnist_npz(tmp_path / "t.npz")
    np.savez(tmp_path / "f.npz", train_images=np.zeros((2, 3, 3)), train_labels=np.zeros(2))
    with pytest.raises(DataError, match="train_images must be uint8"):
        read_medmnist_npz(tmp_path / "f.npz")


def test_symlink_out_of_dataset_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    png(secret, np.zeros((6, 6)))
    root = make_study(tmp_path / "s", "X -> I", {"obs": "X,I\n0,link.png\n"}, IMG)
    (root / "obs" / "link.png").symlink_to(secret)
    with pytest.raises(
        DataError, match="row 1, column 'I': image path 'link.png' leaves the dataset folder"
    ):
        load_study(root)


def test_csv_size_limit(tmp_path):
    root = make_study(tmp_path / "s", "X -> Y", {"obs": "X,Y\n" + "0,1\n" * 100}, CAT2)
    with pytest.raises(DataError, match="obs/data.csv: 404 bytes, more than the limit of 100"):
        load_study(root, limits=UploadLimits(max_file_bytes=100))


def test_dataset_take_and_split():
    ds = Dataset("a", {"X": np.arange(10), "Y": np.arange(20.0).reshape(10, 2)}, {"X": 1})
    head = ds.take(slice(0, 3))
    assert head.n == 3 and dict(head.do) == {"X": 1}
    train, val = ds.split(0.8, seed=1)
    assert (train.n, val.n) == (8, 2)
    assert sorted(np.concatenate([train.columns["X"], val.columns["X"]])) == list(range(10))
    np.testing.assert_array_equal(train.columns["Y"][:, 0], 2 * train.columns["X"])


def test_per_row_intervention_keeps_column(tmp_path):
    root = make_study(
        tmp_path / "s", "X -> Y", {"rct": "X,Y\n0,1\n1,1\n"}, CAT2, do={"rct": {"X": None}}
    )
    ds = load_study(root).dataset("rct")
    assert ds.regime == frozenset({"X"}) and list(ds.columns["X"]) == [0, 1]
    (root / "rct" / "data.csv").write_text("Y\n1\n")
    with pytest.raises(DataError, match="missing column 'X' for variable 'X'"):
        load_study(root)


def test_zip_and_missing_study_paths(tmp_path):
    (tmp_path / "s.zip").write_bytes(b"PK")
    with pytest.raises(
        DataError, match="s.zip is a zip archive: extract it with safe_extract_zip first"
    ):
        load_study(tmp_path / "s.zip")
    with pytest.raises(DataError, match="does not exist"):
        load_study(tmp_path / "nope")
