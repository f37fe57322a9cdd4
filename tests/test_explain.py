"""Words for people: variable labels and class names in study.json, the answer sentence, the
textbook criterion behind a formula (checked against textbook graphs and against the ID algorithm
on random graphs), and the out-of-range check for intervention images."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from mdcm.explain import (
    GLOSSARY,
    answer_sentence,
    class_label,
    criterion,
    do_phrase,
    percent,
    query_words,
    var_name,
)
from mdcm.graph import parse_graph, random_graph
from mdcm.identify import identify
from mdcm.variables import Schema, SchemaError, Variable


def _xray_schema() -> Schema:
    return Schema.from_json(
        {
            "graph": "C -> X -> N; C <-> N",
            "variables": {
                "C": {"kind": "categorical", "classes": 2, "label": "symptom",
                      "values": ["absent", "present"]},
                "X": {"kind": "image", "shape": [1, 16, 16], "label": "chest X-ray"},
                "N": {"kind": "categorical", "classes": 2, "label": "diagnosis",
                      "values": ["negative", "positive"]},
            },
        }
    )  # fmt: skip


# ---------------------------------------------------------------------- study.json words
def test_labels_round_trip_and_old_files_stay_valid(tmp_path):
    from mdcm.data import Dataset, Study, load_study, save_study

    schema = _xray_schema()
    assert schema["N"].value_name(1) == "positive" and schema["C"].label == "symptom"
    again = Schema.from_json(json.loads(json.dumps(schema.to_json())))
    assert again == schema
    bare = schema.to_json(descriptions=False)["variables"]
    assert bare["N"] == {"kind": "categorical", "classes": 2}
    assert Schema.from_json(schema.to_json(descriptions=False)).same_structure(schema)
    # an old study.json without any words is still valid and says nothing new
    old = Schema.from_json({"graph": "X -> Y", "variables": {"X": {"kind": "categorical",
                            "classes": 2}, "Y": {"kind": "continuous", "shape": [1]}}})  # fmt: skip
    assert old["X"].label is None and old.to_json()["variables"]["X"] == {
        "kind": "categorical",
        "classes": 2,
    }
    # a study folder keeps its words through save and load
    g = parse_graph("C -> N")
    s2 = Schema(g, (schema["C"], schema["N"]))
    study = Study(
        s2,
        (Dataset("observational", {"C": np.array([0, 1, 1]), "N": np.array([1, 0, 1])}, {}),),
    )
    save_study(study, tmp_path / "s")
    loaded = load_study(tmp_path / "s")
    assert loaded.schema["N"].values == ("negative", "positive")


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"kind": "categorical", "classes": 2, "values": ["only one"]}, "names 1 classes"),
        ({"kind": "categorical", "classes": 2, "values": ["a", "a"]}, "distinct"),
        ({"kind": "categorical", "classes": 2, "values": "ab"}, "list of class names"),
        ({"kind": "continuous", "shape": [1], "values": ["a"]}, "only a categorical"),
        ({"kind": "categorical", "classes": 2, "label": "two\nlines"}, "one line"),
        ({"kind": "categorical", "classes": 2, "label": 5}, "one line"),
        ({"kind": "image", "shape": [1, 8, 8], "description": "x" * 400}, "description"),
    ],
)
def test_bad_words_are_refused_naming_the_variable(spec, match):
    with pytest.raises(SchemaError, match=match) as err:
        Variable.from_json("N", spec)
    assert "'N'" in str(err.value)


def test_builtin_studies_have_words():
    from mdcm.examples import load_example

    ex = load_example("xray", size="cpu", n=50)
    s = ex.study.schema
    assert var_name(s["N"]) == "diagnosis N" and class_label(s["C"], 1) == "1 (present)"
    assert load_example("bow", n=50).study.schema["Y"].values == ("no", "yes")


# ---------------------------------------------------------------------- sentences
def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?%?", text)


def test_answer_sentence_says_the_numbers_in_the_studys_words():
    s = _xray_schema()
    probs = np.array([0.44, 0.56])
    ci = np.array([[0.42, 0.46], [0.54, 0.58]])
    text = answer_sentence(s, "N", {"C": 1}, probs=probs, ci=ci, naive=np.array([0.3, 0.7]))
    assert text.startswith("If symptom C were set to 1 (present) for everyone")
    assert "diagnosis N to be positive in 56% of cases (95% interval 54–58%)" in text
    assert "Among cases that simply had C=1 (present) in the data it was 70%" in text
    assert "confounding" in text and "cannot decide" not in text
    # close to the naive answer: no claim of confounding
    same = answer_sentence(s, "N", {"C": 1}, probs=probs, ci=ci, naive=np.array([0.45, 0.55]))
    assert "changes little" in same


def test_non_identifiable_sentence_carries_the_caveat_and_the_spread():
    s = Schema.from_json(
        {"graph": "X -> Y; X <-> Y", "variables": {
            "X": {"kind": "categorical", "classes": 2},
            "Y": {"kind": "categorical", "classes": 2, "label": "recovery",
                  "values": ["no", "yes"]}}}
    )  # fmt: skip
    probs, ci = np.array([0.212, 0.788]), np.array([[0.19, 0.23], [0.770, 0.806]])
    text = answer_sentence(s, "Y", {"X": 1}, probs=probs, ci=ci, identifiable=False)
    assert "79%" in text and "77–81% from sampling noise alone" in text
    assert "cannot decide" in text and "95% interval" not in text
    assert "train more models" in text
    text = answer_sentence(
        s, "Y", {"X": 1}, probs=probs, ci=ci, identifiable=False, spread=(0.5, 0.8, 3)
    )
    assert (
        "the 3 models trained on this study with different seeds answered between 50% and 80%"
        in text
    )


def test_other_outcome_kinds_and_words():
    s = Schema.from_json(
        {"graph": "Z -> X -> Y; W -> Y", "variables": {
            "Z": {"kind": "continuous", "shape": [1]},
            "X": {"kind": "categorical", "classes": 3},
            "W": {"kind": "categorical", "classes": 2, "values": ["off", "on"]},
            "Y": {"kind": "continuous", "shape": [1], "label": "blood pressure"}}}
    )  # fmt: skip
    text = answer_sentence(
        s, "Y", {"Z": [0.5]}, mean=np.array([1.234]), ci=np.array([[1.2, 1.27]]), given={"W": 1}
    )
    assert text.startswith("If Z were set to 0.50 for everyone, then among cases with W = 1 (on)")
    assert "blood pressure Y to average 1.23 (95% interval 1.20–1.27)" in text
    three = answer_sentence(s, "X", {"Z": [0.0]}, probs=np.array([0.2, 0.5, 0.3]))
    assert "X to be 0 in 20%, 1 in 50% and 2 in 30% of cases" in three
    assert do_phrase(s, {"Z": [1.0], "W": 0}) == "Z were set to 1.00 and W set to 0 (off)"
    assert percent(0.004) == "0.4%" and percent(0.5) == "50%"
    assert query_words(s, ["X"], "Y") == "what blood pressure Y would be if X were set"
    assert all(len(v) < 300 for v in GLOSSARY.values())


# ---------------------------------------------------------------------- criteria
@pytest.mark.parametrize(
    "graph, x, y, name, via",
    [
        ("Z -> X -> Y; Z -> Y", "X", "Y", "back-door", ("Z",)),
        ("C -> X -> N; C <-> N", "C", "N", "front-door", ("X",)),
        ("D -> I -> A; D <-> A", "D", "A", "front-door", ("I",)),
        ("X -> Y", "X", "Y", "no confounding", ()),
        # W is confounded with X but blocks both back-door paths: adjusting for W alone works
        ("Z -> X -> Y; Z -> W -> Y; W <-> X", "X", "Y", "back-door", ("W",)),
        ("Z -> X -> Y; Z <-> Y", "X", "Y", "back-door", ("Z",)),  # Z blocks X <- Z <-> Y
        ("Z -> X -> Y; Z <-> X; Z <-> Y", "X", "Y", None, None),  # not identifiable
        # M-structure around Z: {A} suffices ({Z, B} would do too)
        ("A -> Z -> X -> Y; A -> Y; B -> Z; B -> X", "X", "Y", "back-door", ("A",)),
        ("W -> Z -> X -> Y; W <-> X; W <-> Y", "X", "Y", None, None),  # napkin: only ID
        ("X -> Y; X <-> Y", "X", "Y", None, None),  # bow: not identifiable
    ],
)
def test_criterion_on_textbook_graphs(graph, x, y, name, via):
    c = criterion(parse_graph(graph), x, y)
    if name is None:
        assert c is None
    else:
        assert c is not None and c.name == name and set(c.via) == set(via)
        assert f"P({y} | do({x}))" in c.formula


def test_back_door_set_is_minimal_and_front_door_formula_reads_like_the_textbook():
    g = parse_graph("A -> Z -> X -> Y; A -> Y; B -> Z; B -> X; C -> X")
    c = criterion(g, "X", "Y")
    assert c.name == "back-door"
    for v in c.via:  # no variable can be left out
        rest = set(c.via) - {v}
        assert not g.remove_outgoing(["X"]).d_separated(["X"], ["Y"], rest)
    f = criterion(parse_graph("C -> X -> N; C <-> N"), "C", "N")
    assert f.formula == "P(N | do(C)) = Σ_{X} P(X | C) Σ_{C'} P(C') P(N | C', X)"
    assert f.title == "front-door criterion, through X"


def test_criterion_never_claims_a_non_identifiable_query():
    """Independent oracle: whenever a criterion is named, the ID algorithm identifies the query,
    and its d-separation conditions hold in the graph with explicit latents (networkx)."""
    named = 0
    for seed in range(150):
        g = random_graph(6, 7, 2, seed)
        order = g.topological_order()
        x, y = order[1], order[-1]
        if y not in g.descendants([x]):
            continue
        c = criterion(g, x, y)
        if c is None:
            continue
        named += 1
        assert identify(g, [x], [y]).identifiable, (str(g), c)
        if c.name == "back-door":
            assert not set(c.via) & g.descendants([x])
            assert g.remove_outgoing([x]).d_separated([x], [y], c.via)
    assert named >= 20


# ---------------------------------------------------------------------- out-of-range images
def _png(rgb, size=(300, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_out_of_range_check_flags_a_red_photo_not_real_xrays():
    from mdcm.examples import load_example
    from mdcm.novelty import check_image, image_reference
    from mdcm_app.plots import image_to_array

    data = load_example("xray", size="cpu", n=1500, seed=0).study.observational.columns["X"]
    ref = image_reference(data)
    red = check_image(ref, image_to_array(_png((255, 0, 0)), (1, 16, 16)))
    assert red.out_of_range and red.share_closer == 1.0
    assert "unlike every image in the training data" in red.message("Your image red.png")
    # a real X-ray of the data, and fresh X-rays from the same generator, are in range
    assert not check_image(ref, data[3]).out_of_range
    fresh = load_example("xray", size="cpu", n=100, seed=11).study.observational.columns["X"]
    flagged = sum(check_image(ref, f).out_of_range for f in fresh)
    assert flagged <= 1  # the max of 1500 nearest-neighbour distances: ~1/1500 per image
    assert check_image(ref, data[3]).message() == ""
    with pytest.raises(ValueError, match="differs"):
        check_image(ref, np.zeros((3, 16, 16), np.float32))


def test_out_of_range_check_with_a_fitted_coder():
    import torch

    from mdcm.coders import ImageCoder
    from mdcm.examples import load_example
    from mdcm.novelty import check_image, image_reference

    data = load_example("xray", size="cpu", n=600, seed=0).study.observational.columns["X"]
    torch.manual_seed(0)
    coder = ImageCoder((1, 16, 16), 8, hidden=64)
    coder.fit(torch.as_tensor(data), steps=200, seed=0)
    ref = image_reference(data, coder=coder)
    assert ref.coder_error is not None and len(ref.coder_error) == len(data)
    noise = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16)).astype(np.float32)
    got = check_image(ref, noise, coder=coder)
    assert got.coder_cannot_represent and got.out_of_range
    assert "image coder reconstructs it" in got.message()
    assert not check_image(ref, data[0], coder=coder).coder_cannot_represent


def test_uploaded_file_errors_name_the_users_file():
    from mdcm_app.plots import image_to_array

    with pytest.raises(ValueError) as err:
        image_to_array(b"patient,age\n1,34\n", (1, 16, 16), name="scan.png")
    msg = str(err.value)
    assert msg.startswith("scan.png is not a PNG or JPEG image (it holds text)")
    assert "BytesIO" not in msg and "/" not in msg
    with pytest.raises(ValueError, match="holds other data"):
        image_to_array(bytes(range(256)) * 4, (1, 16, 16), name="x.jpg")
    with pytest.raises(ValueError, match=r"^cut\.png could not be read.*damaged"):
        image_to_array(_png((0, 0, 0))[:60], (1, 16, 16), name="cut.png")
    with pytest.raises(ValueError, match="empty"):
        image_to_array(b"", (1, 16, 16), name="none.png")
