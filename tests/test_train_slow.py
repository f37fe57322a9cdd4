"""Slow end-to-end checks: a few minutes of CPU training recovers the exact causal answers of the
built-in front-door studies (run with ``pytest -m slow tests/test_train_slow.py``).

Oracles: the examples' exact P(outcome | do(treatment)) (enumeration of the generating model),
their exact image-feature distributions, and a probe classifier trained on the example's own
images and hidden features (never on model output)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mdcm.examples import load_example
from mdcm.model import DCM, ModelConfig
from mdcm.plan import make_plan
from mdcm.query import effect_table, fit_image_probe, overlap_warning, tvd
from mdcm.train import TrainConfig, train

pytestmark = pytest.mark.slow

CONFIG = TrainConfig(steps=4000, time_limit_s=150.0, seed=0)
IMAGES = {"colored_digits": "I", "xray": "X"}


@functools.cache
def trained(name: str):
    ex = load_example(name, size="cpu", n=4000, seed=0)
    torch.manual_seed(0)
    model = DCM(ex.study.schema, ModelConfig())
    res = train(model, make_plan(ex.study.graph), ex.study, CONFIG)
    return ex, model, res


@pytest.mark.parametrize("name", list(IMAGES))
def test_front_door_effect_matches_truth(name: str) -> None:
    ex, model, res = trained(name)
    x, y = ex.treatment, ex.outcome
    errs, naive_errs = [], []
    for v in range(model.schema[x].classes):
        s = model.sample(20000, {x: v}, seed=v)
        p = np.bincount(s[y].numpy(), minlength=model.schema[y].classes) / 20000
        truth = ex.truth(y, {x: v})
        errs.append(tvd(p, truth))
        naive_errs.append(tvd(ex.naive(y, {x: v}), truth))
    assert max(errs) < 0.05, (errs, res)
    assert max(naive_errs) > max(errs) + 0.03, (errs, naive_errs)  # naive is measurably worse
    eff = effect_table(model, ex.study, x, y, n=4000)
    assert eff.identification.identifiable and eff.overlap is None


@pytest.mark.parametrize("name", list(IMAGES))
def test_generated_images_have_the_right_features(name: str) -> None:
    ex, model, res = trained(name)
    image = IMAGES[name]
    cols, hidden = ex.sample(5000, seed=123)
    probe, acc = fit_image_probe(
        cols[image], {f: hidden[f] for f in ex.feature_names[image]}, ex.feature_classes, seed=0
    )
    assert min(acc.values()) > 0.95, acc  # the probe itself must be trustworthy
    worst = {}
    for v in range(model.schema[ex.treatment].classes):
        s = model.sample(4000, {ex.treatment: v}, seed=v)
        freq = probe.frequencies(s[image], ex.feature_classes)
        for f in ex.feature_names[image]:
            worst[f] = max(worst.get(f, 0.0), tvd(freq[f], ex.truth(f, {ex.treatment: v})))
    assert max(worst.values()) < 0.05, (worst, res)


def test_overlap_warning_on_reveal_variant() -> None:
    ex = load_example("colored_digits", size="cpu", n=3000, seed=0, variant="reveal")
    w = overlap_warning(ex.study, ex.study.graph, "D", "A")
    assert w is not None and "I (mediator" in w
    ok = load_example("colored_digits", size="cpu", n=3000, seed=0)
    assert overlap_warning(ok.study, ok.study.graph, "D", "A") is None
