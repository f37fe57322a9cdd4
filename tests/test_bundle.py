"""mdcm.bundle and its command-line flags (issue #14): sampled datasets that load back as their
regime, model bundles that are refused unless they load for the study's schema, and reused
mechanisms (``mdcm train --pretrained``) that fill a plain-conditional stage with the donor's
exact weights and are refused, with the reason, otherwise."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from study_files import make_study

from mdcm.bundle import (
    export_samples,
    fillable_stages,
    import_model_bundle,
    mechanism_mismatch,
    model_bundle_bytes,
)
from mdcm.cli import main
from mdcm.data import DataError, load_study
from mdcm.graph import parse_graph
from mdcm.model import DCM, ModelConfig, ModelFileError, load_model, read_model_json, save_model
from mdcm.plan import make_plan
from mdcm.variables import Schema

DIGITS = Schema.from_json(
    {
        "graph": "D -> I -> A; D <-> A",
        "variables": {
            "D": {"kind": "categorical", "classes": 3},
            "I": {"kind": "image", "shape": [3, 8, 8]},
            "A": {"kind": "categorical", "classes": 2},
        },
    }
)


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _model(schema: Schema, folder: Path, seed: int = 0, **cfg) -> Path:
    torch.manual_seed(seed)
    save_model(DCM(schema, ModelConfig(**cfg)), folder)
    return folder


def _np(cols) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in cols.items()}


# ---------------------------------------------------------------------- sampled datasets
def test_exported_samples_load_back_as_their_regime(tmp_path):
    model = DCM(DIGITS)
    cols = _np(model.sample(40, do={"D": 2}, seed=3))
    ds = export_samples(DIGITS, cols, {"D": 2}, tmp_path / "do_D2")
    study = load_study(tmp_path / "do_D2")
    (back,) = study.datasets
    assert back.name == "do_D2" and back.do == {"D": 2}
    assert study.interventions == [frozenset({"D"})] and study.observational is None
    assert study.schema.same_structure(DIGITS)
    assert (back.columns["D"] == 2).all()
    np.testing.assert_array_equal(back.columns["A"], cols["A"])
    # images are 8-bit PNGs: the dataset returned holds exactly the pixels written
    np.testing.assert_array_equal(np.asarray(back.columns["I"]), np.asarray(ds.columns["I"]))
    assert np.abs(np.asarray(ds.columns["I"]) - cols["I"]).max() <= 1 / 255 + 1e-6


def test_exported_image_intervention_and_continuous_values(tmp_path):
    img = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    cols = _np(DCM(DIGITS).sample(10, do={"I": img}, seed=0))
    export_samples(DIGITS, cols, {"I": img}, tmp_path / "do_I")
    (back,) = load_study(tmp_path / "do_I").datasets
    assert back.do == {"I": "do_I.png"}
    from mdcm.readers import read_png

    png = read_png(tmp_path / "do_I" / "do_I.png", where="test", expect=(3, 8, 8))
    assert np.abs(png - img).max() <= 1 / 255 + 1e-6
    # continuous vectors survive exactly (float32 written with 9 significant digits)
    schema = Schema.from_json(
        {
            "graph": "X -> Y",
            "variables": {
                "X": {"kind": "categorical", "classes": 2},
                "Y": {"kind": "continuous", "shape": [2]},
            },
        }
    )
    y = np.random.default_rng(0).normal(size=(25, 2)).astype(np.float32)
    export_samples(schema, {"X": np.ones(25, np.int64), "Y": y}, {"X": 1}, tmp_path / "c")
    (back,) = load_study(tmp_path / "c").datasets
    np.testing.assert_array_equal(back.columns["Y"], y)
    assert back.do == {"X": 1}


def test_export_refuses_an_existing_name_and_missing_columns(tmp_path):
    cols = _np(DCM(DIGITS).sample(5, seed=0))
    export_samples(DIGITS, cols, {}, tmp_path / "obs")
    before = sorted(p.name for p in (tmp_path / "obs").rglob("*"))
    with pytest.raises(DataError, match="already exists"):
        export_samples(DIGITS, cols, {}, tmp_path / "obs")
    assert sorted(p.name for p in (tmp_path / "obs").rglob("*")) == before  # untouched
    with pytest.raises(DataError, match="no column for variable 'A'"):
        export_samples(DIGITS, {"D": cols["D"], "I": cols["I"]}, {}, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["obs"]  # no staging folder left


def test_cli_sample_as_dataset(tmp_path):
    model = _model(DIGITS, tmp_path / "m")
    rc, out, err = run_main(
        "sample",
        "--model",
        str(model),
        "--do",
        "D=1",
        "-n",
        "30",
        "--as-dataset",
        str(tmp_path / "d"),
    )
    assert rc == 0, err
    assert "do(D=1)" in out
    (back,) = load_study(tmp_path / "d").datasets
    assert back.do == {"D": 1} and back.n == 30
    rc, _, err = run_main(
        "sample",
        "--model",
        str(model),
        "--do",
        "D=1",
        "-n",
        "3",
        "--as-dataset",
        str(tmp_path / "d"),
    )
    assert rc == 2 and "already exists" in err
    rc, _, err = run_main(
        "sample",
        "--model",
        str(model),
        "--given",
        "A=1",
        "-n",
        "3",
        "--as-dataset",
        str(tmp_path / "e"),
    )
    assert rc == 2 and "--given" in err and not (tmp_path / "e").exists()
    rc, _, err = run_main("sample", "--model", str(model), "-n", "3")
    assert rc == 2 and "--as-dataset" in err


# ---------------------------------------------------------------------- model bundles
def test_model_bundle_round_trip(tmp_path):
    src = _model(DIGITS, tmp_path / "m", seed=1)
    blob = model_bundle_bytes(src, source={"run": "r1"})
    zpath = tmp_path / "b.zip"
    zpath.write_bytes(blob)
    with zipfile.ZipFile(zpath) as z:
        assert sorted(z.namelist()) == ["bundle.json", "model.json", "model.safetensors"]
        assert json.loads(z.read("bundle.json"))["source"] == {"run": "r1"}
    dest = import_model_bundle(zpath, tmp_path / "imported", DIGITS)
    a, b = load_model(src), load_model(dest)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_bad_model_bundles_are_refused(tmp_path):
    src = _model(DIGITS, tmp_path / "m")
    good = {"model.json": (src / "model.json").read_bytes()}
    weights = (src / "model.safetensors").read_bytes()
    cases = {
        "not a zip": (tmp_path / "a.zip", None, "not a valid zip"),
        "no model": (_zip(tmp_path / "b.zip", {"x.txt": b"hi"}), None, "no model.json"),
        "truncated": (
            _zip(tmp_path / "c.zip", {**good, "model.safetensors": weights[:100]}),
            None,
            "safetensors|sha256",
        ),
        "pickle": (
            _zip(tmp_path / "d.zip", {**good, "model.safetensors": b"\x80\x04pickle"}),
            None,
            "pickle",
        ),
        "traversal": (_zip(tmp_path / "e.zip", {"../evil": b"x"}), None, "traversal"),
    }
    (tmp_path / "a.zip").write_bytes(b"PK\x03\x04 broken")
    for name, (zpath, _, message) in cases.items():
        with pytest.raises((DataError, ModelFileError), match=message):
            import_model_bundle(zpath, tmp_path / f"out-{name}", DIGITS)
        assert not (tmp_path / f"out-{name}").exists(), name
    # a bundle of another study: refused, naming both graphs
    bow = Schema.from_json(
        {
            "graph": "X -> Y; X <-> Y",
            "variables": {
                "X": {"kind": "categorical", "classes": 2},
                "Y": {"kind": "categorical", "classes": 2},
            },
        }
    )
    zpath = tmp_path / "ok.zip"
    zpath.write_bytes(model_bundle_bytes(src))
    with pytest.raises(
        ModelFileError, match="trained for graph .*D -> I.*study has graph .*X -> Y"
    ):
        import_model_bundle(zpath, tmp_path / "wrong", bow)
    assert not (tmp_path / "wrong").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle-")]


# ---------------------------------------------------------------------- reused mechanisms
def test_mechanism_mismatch_names_the_reason(tmp_path):
    meta = read_model_json(_model(DIGITS, tmp_path / "m"))
    cfg = ModelConfig()
    assert mechanism_mismatch(meta, "I", DIGITS, cfg) is None
    # the same P(I | D) in another graph can be reused: I reads D alone in both
    chain = Schema.from_json({"graph": "D -> I -> A", "variables": DIGITS.to_json()["variables"]})
    assert mechanism_mismatch(meta, "I", chain, cfg) is None
    variants = {
        "D has 10 classes": (
            {"D": {"kind": "categorical", "classes": 10}},
            "its parent D is categorical, 3 classes; here it is categorical, 10 classes",
        ),
        "I is 1x8x8": (
            {"I": {"kind": "image", "shape": [1, 8, 8]}},
            "its I is image [3, 8, 8]; this study's is image [1, 8, 8]",
        ),
    }
    for what, (change, reason) in variants.items():
        v = dict(DIGITS.to_json()["variables"], **change)
        other = Schema.from_json({"graph": "D -> I -> A", "variables": v})
        assert mechanism_mismatch(meta, "I", other, cfg) == reason, what
    reparent = Schema.from_json(
        {
            "graph": "D -> I -> A; W -> I",
            "variables": dict(
                DIGITS.to_json()["variables"], W={"kind": "categorical", "classes": 2}
            ),
        }
    )
    assert "here I has parents (D, W)" in mechanism_mismatch(meta, "I", reparent, cfg)
    assert "image_hidden=256, this model uses image_hidden=64" in mechanism_mismatch(
        meta, "I", DIGITS, ModelConfig(image_hidden=64)
    )
    assert "D shares a hidden confounder with A" in mechanism_mismatch(meta, "D", DIGITS, cfg)
    # only the sizes of the variable's own kind of network matter
    chain_meta = read_model_json(_model(chain, tmp_path / "chain"))
    assert mechanism_mismatch(chain_meta, "D", chain, ModelConfig(image_hidden=64)) is None
    assert mechanism_mismatch(chain_meta, "D", chain, ModelConfig(hidden=32)) == (
        "it was built with hidden=64, this model uses hidden=32"
    )
    assert "through I's image code" in mechanism_mismatch(meta, "A", chain, cfg)
    assert "this study has no variable 'Q'" in mechanism_mismatch(meta, "Q", DIGITS, cfg)
    assert "it has no variable 'W'" in mechanism_mismatch(meta, "W", reparent, cfg)


def test_fillable_stages_are_the_plain_conditionals():
    assert list(fillable_stages(make_plan(DIGITS.graph))) == ["I"]
    chain = make_plan(parse_graph("X -> Y -> W"))
    assert sorted(fillable_stages(chain)) == ["W", "X", "Y"]
    assert fillable_stages(make_plan(DIGITS.graph, joint=True)) == {}


CHAIN_CSV = "X,Y\n" + "".join(f"{i % 2},{(i // 2) % 2}\n" for i in range(64))


def test_cli_train_pretrained_fills_the_stage_with_the_donor(tmp_path):
    cat = {"kind": "categorical", "classes": 2}
    donor_study = make_study(
        tmp_path / "s1", "X -> Y", {"obs": CHAIN_CSV}, variables={"X": cat, "Y": cat}
    )
    rc, _, err = run_main(
        "train", "--study", str(donor_study), "--out", str(tmp_path / "donor"), "--steps", "20"
    )
    assert rc == 0, err
    csv3 = "X,Y,W\n" + "".join(f"{i % 2},{(i // 2) % 2},{(i // 4) % 2}\n" for i in range(64))
    target = make_study(
        tmp_path / "s2", "X -> Y -> W", {"obs": csv3}, variables={"X": cat, "Y": cat, "W": cat}
    )
    rc, _, err = run_main(
        "train",
        "--study",
        str(target),
        "--out",
        str(tmp_path / "m2"),
        "--steps",
        "20",
        "--pretrained",
        f"Y={tmp_path / 'donor'}",
    )
    assert rc == 0, err
    assert "(Y): 0 steps" in err and "ended by pretrained" in err
    assert err.count("ended by pretrained") == 1  # X and W were trained
    donor, got = load_model(tmp_path / "donor"), load_model(tmp_path / "m2")
    for k, v in donor.generators["Y"].state_dict().items():
        assert torch.equal(v, got.generators["Y"].state_dict()[k])
    extra = read_model_json(tmp_path / "m2")["extra"]
    assert extra["pretrained"] == {"Y": {"model": str((tmp_path / "donor").resolve()), "run": None}}


def test_cli_train_pretrained_refusals(tmp_path):
    cat = {"kind": "categorical", "classes": 2}
    bow = make_study(
        tmp_path / "bow", "X -> Y; X <-> Y", {"obs": CHAIN_CSV}, variables={"X": cat, "Y": cat}
    )
    three = Schema.from_json(
        {"graph": "X -> Y", "variables": {"X": {"kind": "categorical", "classes": 3}, "Y": cat}}
    )
    donor = _model(three, tmp_path / "donor3")
    chain = make_study(
        tmp_path / "chain", "X -> Y", {"obs": CHAIN_CSV}, variables={"X": cat, "Y": cat}
    )
    cases = [
        (bow, f"Y={donor}", "stage 0 trains X, Y; only a stage that learns the plain conditional"),
        (
            chain,
            f"Y={donor}",
            "parent X is categorical, 3 classes; here it is categorical, 2 classes",
        ),
        (chain, f"Q={donor}", "unknown variable; the study has X, Y"),
        (chain, f"Y={tmp_path}", "no model.json there"),
        (chain, "Y", "expected NAME=VALUE"),
    ]
    for study, arg, message in cases:
        rc, _, err = run_main(
            "train", "--study", str(study), "--out", str(tmp_path / "o"), "--pretrained", arg
        )
        assert rc == 2 and message in err, (arg, err)
        assert not (tmp_path / "o").exists()
