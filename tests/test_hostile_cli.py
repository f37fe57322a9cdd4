"""Hostile input: random and malformed graph text, intervention sets and command lines.

The library may only raise its documented error types (GraphError, PlanError,
IdentificationError); the command line must answer every bad invocation with exit status 2 and
exactly one line ``mdcm: error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdcm.cli import main
from mdcm.graph import GraphError, parse_graph
from mdcm.identify import IdentificationError, identify
from mdcm.plan import PlanError, make_plan

NAMES = ["X", "Y", "Z", "W", "M", "C", "N", "_a", "x1", "A_B"]
BAD_NAMES = ["1X", "X-Y", "é", "X.Y", "", " ", "a" * 70, "X;Y", "<->", "->", "--", "#"]
TOKENS = (
    NAMES
    + BAD_NAMES
    + [
        "->",
        "<-",
        "<->",
        "--",
        ";",
        "\n",
        "#c",
        " ",
        ",",
        "(",
        ")",
        "<",
        ">",
        "-",
        "=",
        "\t",
        "\x00",
        "✓",
    ]
)

graph_text = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join),
    st.lists(st.sampled_from(TOKENS), max_size=25).map("".join),
    st.text(max_size=60),
)
name_sets = st.lists(st.frozensets(st.sampled_from(NAMES + BAD_NAMES[:4]), max_size=3), max_size=3)
DOCUMENTED = (GraphError, PlanError, IdentificationError)
SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(text=graph_text, regimes=name_sets, joint=st.booleans())
def test_parse_and_plan_raise_only_documented_errors(text: str, regimes: list, joint: bool):
    try:
        graph = parse_graph(text)
    except GraphError:
        return
    try:
        plan = make_plan(graph, [sorted(r) for r in regimes], joint=joint)
    except DOCUMENTED:
        return
    trained = [v for s in plan.stages for v in s.trains]
    assert sorted(trained) == sorted(graph.nodes)  # every mechanism trained exactly once


@SETTINGS
@given(
    text=graph_text,
    x=st.frozensets(st.sampled_from(NAMES), max_size=2),
    y=st.frozensets(st.sampled_from(NAMES), max_size=2),
    z=st.frozensets(st.sampled_from(NAMES), max_size=2),
    regimes=name_sets,
)
def test_identify_raises_only_documented_errors(text, x, y, z, regimes):
    try:
        graph = parse_graph(text)
    except GraphError:
        return
    try:
        result = identify(
            graph, sorted(x), sorted(y), given=sorted(z), interventions=[sorted(r) for r in regimes]
        )
    except DOCUMENTED:
        return
    payload = result.to_json()
    assert isinstance(payload["identifiable"], bool)
    assert (payload["estimand"] is None) != payload["identifiable"]


# ---------------------------------------------------------------------- the command line
def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process, in a scratch folder (relative paths land there, not in the repo)."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(_TMP)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # main() should return, but accept an exit too
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(here)
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, err: str, argv: list[str]) -> None:
    assert rc == 2, (argv, rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("mdcm: error: "), (argv, err)
    assert "Traceback" not in err


_TMP = Path(tempfile.mkdtemp(prefix="mdcm-hostile-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch():
    yield
    shutil.rmtree(_TMP, ignore_errors=True)


MISSING = str(_TMP / "no-such-dir")
VALUES = (
    NAMES
    + BAD_NAMES
    + [
        "X=1",
        "X=",
        "=1",
        "X==1",
        "X=a",
        "X=1,2",
        "Y=999999",
        "C -> X -> N; C <-> N",
        "X -> Y; X <-> Y",
        "-1",
        "0",
        "1e999",
        "nan",
        "--",
        MISSING,
        "@" + MISSING,
        "napkin_typo",
        "cpu",
        "gpu",
    ]
)
FLAGS = [
    "--graph",
    "--intervention",
    "--joint",
    "--json",
    "--treatment",
    "--outcome",
    "--given",
    "--do",
    "-n",
    "--out",
    "--model",
    "--seed",
    "--steps",
    "--size",
    "--n",
    "--root",
    "--bogus",
    "-x",
    "--plan",
    "--device",
    "--study",
    "--run-dir",
    "--resume",
]
COMMANDS = ["plan", "identify", "sample", "export-example", "runs", "bogus", "", "train"]


def _is_harmless(argv: list[str]) -> bool:
    """Leave out invocations that would legitimately start work (training on a real source)."""
    if argv and argv[0] == "train":
        return "--study" not in argv or MISSING in argv
    return True


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    argv=st.tuples(
        st.sampled_from(COMMANDS),
        st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES)), max_size=8),
    )
    .map(lambda t: [t[0], *t[1]])
    .filter(_is_harmless)
)
def test_cli_random_arguments(argv: list[str]):
    rc, out, err = run_cli(argv)
    if rc == 0:  # a random but valid plan/identify/runs call: fine, and quiet on stderr
        assert "error" not in err
        return
    assert_one_line_error(rc, err, argv)


BAD_CALLS = [
    [],
    ["plan"],
    ["plan", "--graph", "X -> -> Y"],
    ["plan", "--graph", "X -> Y; Y -> X"],  # a directed cycle
    ["plan", "--graph", "X -> Y", "--intervention", "Q"],  # unknown variable
    ["plan", "--graph", "X -> Y", "--intervention", "X,,Y"],
    ["plan", "--graph", ""],
    ["plan", "--graph", "@" + MISSING],
    ["identify", "--graph", "X -> Y", "--treatment", "X"],
    ["identify", "--graph", "X -> Y", "--treatment", "X", "--outcome", "X"],
    ["identify", "--graph", "X -> Y", "--treatment", "Q", "--outcome", "Y"],
    ["identify", "--graph", "X -> Y", "--treatment", "X", "--outcome", "Y", "--given", "Y"],
    ["sample", "--model", MISSING, "-n", "5", "--out", str(_TMP / "s")],
    ["sample", "--model", MISSING, "-n", "0", "--out", str(_TMP / "s")],
    ["sample", "--model", MISSING, "-n", "x", "--out", str(_TMP / "s")],
    ["sample", "--model", str(_TMP), "-n", "3", "--out", str(_TMP / "s")],  # not a model
    ["export-example", "no_such_example", "--out", str(_TMP / "e")],
    ["export-example", "napkin", "--out", str(_TMP / "e"), "--size", "huge"],
    ["train", "--example", "napkin"],  # no --out
    ["train", "--out", str(_TMP / "m")],  # no source
    ["train", "--study", MISSING, "--out", str(_TMP / "m")],
    ["train", "--example", "napkin", "--out", str(_TMP / "m"), "--steps", "-3"],
    ["train", "--example", "napkin", "--out", str(_TMP / "m"), "--time-limit", "nan"],
    ["train", "--run-dir", str(_TMP / "empty_run")],
    ["runs", "show", "../../etc", "--root", str(_TMP)],
    ["runs", "show", "nope", "--root", str(_TMP)],
    ["runs", "frobnicate"],
    ["runs", "stop", "--root", str(_TMP)],
]


@pytest.mark.parametrize("argv", BAD_CALLS, ids=lambda a: " ".join(a)[:60] or "empty")
def test_cli_bad_calls_are_one_line_exit_2(argv: list[str]):
    rc, out, err = run_cli(argv)
    assert_one_line_error(rc, err, argv)
