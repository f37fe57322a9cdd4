"""The counterfactual command line: ``mdcm identify --do/--evidence`` (ID*/IDC* verdicts) and
``mdcm counterfactual`` (units of the twin network written as samples.csv + PNGs +
summary.json); bad input is one line and exit status 2."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mdcm.cli import main

REPO = Path(__file__).resolve().parent.parent
BACKDOOR = "Z -> X -> Y; Z -> Y"
BOW = "X -> Y; X <-> Y"
NAPKIN = "W -> Z; Z -> X; X -> Y; W <-> X; W <-> Y"


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------- identify --do
def test_identify_counterfactual_text_and_json():
    rc, out, err = run_main(
        "identify", "--graph", BACKDOOR, "--outcome", "Y", "--do", "X=1", "--evidence", "X=0"
    )
    assert rc == 0, err
    assert out.startswith("P(Y_{X=1} | X=0) is identifiable from P(V).")
    assert "P(Y | do(Z, X)) = P(Y | Z, X)" in out
    rc, out, _ = run_main(
        "identify", "--graph", BOW, "--outcome", "Y=1", "--do", "X=1", "--evidence", "X=0", "--json"
    )
    data = json.loads(out)
    assert rc == 0 and data["identifiable"] is False and data["query"] == "P(Y_{X=1}=1 | X=0)"
    assert "needs X at 0 and at 1" in data["reason"]
    rc, out, _ = run_main(
        "identify", "--graph", BOW, "--outcome", "Y", "--do", "X=1", "--evidence", "X=0"
    )
    assert "couples the noise across the two worlds" in out
    # the binary-treatment identity needs the classes; with them the napkin ETT is identified
    argv = ["identify", "--graph", NAPKIN, "--outcome", "Y", "--do", "X=1", "--evidence", "X=0"]
    assert "NOT identifiable" in run_main(*argv)[1]
    classes = [a for v in "WZXY" for a in ("--classes", f"{v}=2")]
    assert "is identifiable" in run_main(*argv, *classes)[1]


def test_identify_treatment_form_is_unchanged():
    rc, out, _ = run_main("identify", "--graph", BOW, "--treatment", "X", "--outcome", "Y")
    assert rc == 0 and out.startswith("P(Y | do(X)) is NOT identifiable from P(V).")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--outcome", "Y"], "give --treatment X for P(Y | do(X)), or --do X=x"),
        (["--outcome", "Y", "--evidence", "X=0"], "--evidence needs --do X=x"),
        (["--outcome", "Y", "--do", "X=1", "--treatment", "X"], "use one form"),
        (["--outcome", "Y", "--do", "X"], "bad --do 'X': expected NAME=VALUE"),
        (["--outcome", "Y", "--do", "X=a"], "bad --do X=a: give a class index"),
        (["--outcome", "Y", "--do", "X=-1"], "bad --do X=-1: give a class index"),
        (["--outcome", "Q", "--do", "X=1"], "unknown variable 'Q' in --outcome"),
        (["--outcome", "Y", "--do", "X=1", "--evidence", "R=0"], "unknown variable 'R'"),
        (["--outcome", "Y=", "--do", "X=1"], "bad --outcome 'Y='"),
        (["--outcome", "X", "--do", "X=1"], "X is both intervened on and an outcome"),
        (
            ["--outcome", "Y", "--do", "X=1", "--evidence", "X=2", "--classes", "X=2"],
            "evidence X=2: out of range",
        ),
    ],
)
def test_identify_counterfactual_bad_input_one_line(argv, needle):
    rc, out, err = run_main("identify", "--graph", BACKDOOR, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith("mdcm: error: ") and needle in err, err


def test_identify_counterfactual_does_not_import_torch():
    code = (
        "import sys, io, contextlib\n"
        "from mdcm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['identify', '--graph', {BACKDOOR!r}, '--outcome', 'Y',"
        " '--do', 'X=1', '--evidence', 'X=0']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas')))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------- counterfactual
@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    from mdcm.examples import load_example
    from mdcm.model import DCM, ModelConfig, save_model

    ex = load_example("colored_digits", n=50, seed=0)
    path = tmp_path_factory.mktemp("cf") / "model"
    save_model(DCM(ex.schema, ModelConfig(hidden=16, image_hidden=32)), path)  # untrained
    return path


def _csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_counterfactual_writes_both_worlds(image_model, tmp_path):
    from PIL import Image

    out = tmp_path / "cf"
    rc, text, err = run_main(
        "counterfactual",
        "--model",
        str(image_model),
        "--evidence",
        "D=0",
        "--do",
        "D=2",
        "-n",
        "12",
        "--out",
        str(out),
        "--seed",
        "3",
    )
    assert rc == 0, err
    assert "wrote 12 units (D=0; acceptance" in text and "P(A_{D=2} | D=0): identifiable" in text
    header, rows = _csv(out / "samples.csv")
    assert header == ["D", "I", "A", "factual.D", "factual.I", "factual.A"]
    assert len(rows) == 12
    col = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    assert set(col["D"]) == {"2"} and set(col["factual.D"]) == {"0"}
    for rel_cf, rel_f in zip(col["I"], col["factual.I"], strict=True):
        assert rel_f.startswith("factual/images/I/") and rel_cf.startswith("images/I/")
        with Image.open(out / rel_cf) as a, Image.open(out / rel_f) as b:
            assert a.size == b.size == (14, 14)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 12 and 0 < summary["acceptance_rate"] <= 1
    assert summary["evidence"] == {"D": 0} and summary["do"] == {"D": 2}
    a = summary["outcomes"]["A"]
    assert a["identifiable"] is True and a["estimand"] and len(a["counterfactual"]) == 2
    assert np.isclose(sum(a["factual"]), 1.0)
    assert "I" in summary["outcomes"]  # the image's verdict, too


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--evidence", "I=0", "--do", "D=1"], "conditioning on an image is not supported"),
        (["--evidence", "D=5", "--do", "D=1"], "class out of range 0..2"),
        (["--evidence", "Q=0", "--do", "D=1"], "--evidence: unknown variable 'Q'"),
        (["--evidence", "D=0"], "give at least one --do X=VALUE"),
        (["--do", "D=x"], "D is categorical, give a class 0..2"),
        (["--do", "D=1", "--evidence", "D=0", "--evidence", "D=1"], "sets 'D' twice"),
    ],
)
def test_counterfactual_bad_input_one_line(image_model, tmp_path, extra, needle):
    rc, out, err = run_main(
        "counterfactual",
        "--model",
        str(image_model),
        "-n",
        "5",
        "--out",
        str(tmp_path / "o"),
        *extra,
    )
    assert rc == 2 and err.count("\n") == 1 and err.startswith("mdcm: error: "), err
    assert needle in err, err


def test_counterfactual_refuses_a_non_empty_out_folder(image_model, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    rc, _, err = run_main(
        "counterfactual",
        "--model",
        str(image_model),
        "--do",
        "D=1",
        "-n",
        "5",
        "--out",
        str(tmp_path / "o"),
    )
    assert rc == 2 and "exists and is not empty" in err
