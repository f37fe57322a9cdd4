"""bench/data_error.py (the data's own error): on many rows the plug-in formula must land on
the exact truth (the oracle: enumeration of the generating SCM), on few rows it must not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from data_error import ett_plug_in_error, plug_in_error  # noqa: E402

from mdcm.examples import load_example  # noqa: E402


@pytest.mark.parametrize("name", ["napkin", "backdoor", "xray", "experiment"])
def test_plug_in_converges_to_the_exact_answer(name: str) -> None:
    # 100,000 rows: the plug-in's sampling error is about 0.003 TVD
    big = plug_in_error(load_example(name, n=100_000, seed=3), 3)
    assert big is not None and big < 0.015, big
    small = plug_in_error(load_example(name, n=200, seed=3), 3)
    assert small is not None and small > big


@pytest.mark.parametrize("name", ["napkin", "backdoor", "frontdoor_continuous"])
def test_effect_on_the_treated_plug_in_converges_to_the_exact_answer(name: str) -> None:
    # the oracle: Example.counterfactual_truth, enumeration of the generating mechanisms' noise
    big = ett_plug_in_error(load_example(name, n=100_000, seed=3), 3)
    assert big is not None and big < 0.02, big
    small = ett_plug_in_error(load_example(name, n=300, seed=3), 3)
    assert small is not None and small > big
