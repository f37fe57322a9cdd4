"""Built-in examples: exact ground truth against independent oracles.

Oracles: Monte-Carlo samples (tolerance 4.5 standard errors of the sample size), closed-form
identification formulas evaluated on the exact observational joint (front-door, napkin, back-door
adjustment), hand-written formulas for the bow and back-door truths, and simple feature detectors
on the rendered images.
"""

from __future__ import annotations

import numpy as np
import pytest

from mdcm.data import load_study
from mdcm.examples import EXAMPLES, export_example, load_example
from mdcm.examples.semi_synthetic import build_mnist_frontdoor, build_pneumonia_frontdoor

MC_N = 200_000


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def within(p_exact: np.ndarray, samples: np.ndarray, k: int) -> None:
    """Every class frequency lies within 4.5 standard errors of the exact probability."""
    n = len(samples)
    assert n > 500, "too few samples for a meaningful check"
    freq = np.bincount(samples, minlength=k) / n
    se = np.sqrt(np.maximum(p_exact * (1 - p_exact), 1e-4) / n)
    assert np.all(np.abs(freq - p_exact) <= 4.5 * se), (freq, p_exact, se)


@pytest.fixture(scope="module")
def examples():
    return {name: load_example(name, n=300, seed=0) for name in EXAMPLES}


def test_registry():
    assert set(EXAMPLES) == {
        "colored_digits",
        "xray",
        "napkin",
        "backdoor",
        "bow",
        "frontdoor_continuous",
        "experiment",
        "two_images",
    }
    with pytest.raises(ValueError, match="unknown example 'nope'"):
        load_example("nope")
    with pytest.raises(ValueError, match="unknown size"):
        load_example("bow", size="tpu")


@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - {"frontdoor_continuous"}))
def test_truth_and_naive_match_monte_carlo(examples, name):
    ex = examples[name]
    t, o = ex.treatment, ex.outcome
    k_t, k_o = ex.schema[t].classes, ex.schema[o].classes
    obs, _ = ex.sample(MC_N, seed=11, render=False)
    for x in range(k_t):
        truth = ex.truth(o, {t: x})
        assert truth.shape == (k_o,) and abs(truth.sum() - 1) < 1e-12
        cols, _ = ex.sample(MC_N, do={t: x}, seed=100 + x, render=False)
        assert np.all(cols[t] == x)
        within(truth, cols[o], k_o)
        naive = ex.naive(o, {t: x})
        within(naive, obs[o][obs[t] == x], k_o)


def test_truth_under_feature_intervention_matches_monte_carlo(examples):
    ex = examples["colored_digits"]
    p = ex.truth("A", {"I.color": 2, "I.digit": 0})
    cols, hidden = ex.sample(MC_N, do={"I.color": 2, "I.digit": 0}, seed=5, render=False)
    assert np.all(hidden["I.color"] == 2)
    within(p, cols["A"], 2)


def test_frontdoor_formula_on_exact_joint_gives_truth(examples):
    """Front-door adjustment (Pearl 1995) with the image features as the mediator, evaluated on the
    exact observational joint, equals the generator's interventional truth."""
    for name, t, o, feats in (
        ("colored_digits", "D", "A", ("I.color", "I.digit")),
        ("xray", "C", "N", ("X.opacity",)),
    ):
        ex = examples[name]
        vals, w = ex.scm.enumerate()
        m = np.ravel_multi_index([vals[f] for f in feats], [ex.feature_classes[f] for f in feats])
        kt, ko, km = ex.schema[t].classes, ex.schema[o].classes, int(m.max()) + 1
        joint = np.zeros((kt, km, ko))
        np.add.at(joint, (vals[t], m, vals[o]), w)
        p_t = joint.sum((1, 2))
        p_m_t = joint.sum(2) / p_t[:, None]
        p_o_mt = joint / joint.sum(2, keepdims=True)  # P(o | t, m)
        for x in range(kt):
            fd = np.einsum("m,tmo,t->o", p_m_t[x], p_o_mt, p_t)
            np.testing.assert_allclose(fd, ex.truth(o, {t: x}), atol=1e-12)


def test_napkin_formula_on_exact_joint_gives_truth(examples):
    """Napkin estimand: P(y | do(x)) = sum_w P(w) P(x, y | z, w) / sum_w P(w) P(x | z, w)."""
    ex = examples["napkin"]
    vals, w = ex.scm.enumerate()
    joint = np.zeros((2, 2, 2, 2))
    np.add.at(joint, (vals["W"], vals["Z"], vals["X"], vals["Y"]), w)
    p_w = joint.sum((1, 2, 3))
    p_xy_zw = joint / joint.sum((2, 3), keepdims=True)  # [w, z, x, y]
    for x in (0, 1):
        for z in (0, 1):
            num = np.einsum("w,wy->y", p_w, p_xy_zw[:, z, x, :])
            np.testing.assert_allclose(num / num.sum(), ex.truth("Y", {"X": x}), atol=1e-12)


def test_backdoor_and_bow_truth_closed_form(examples):
    z = np.linspace(-12, 12, 200_001)
    phi = np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
    dz = z[1] - z[0]
    ex = examples["backdoor"]
    for x in (0, 1):
        p1 = np.sum(phi * sigmoid(-0.6 + 1.0 * x + 1.6 * z)) * dz
        np.testing.assert_allclose(ex.truth("Y", {"X": x})[1], p1, atol=1e-9)
        px = sigmoid(0.2 + 1.8 * z) if x == 1 else 1 - sigmoid(0.2 + 1.8 * z)
        naive = np.sum(phi * px * sigmoid(-0.6 + x + 1.6 * z)) / np.sum(phi * px)
        np.testing.assert_allclose(ex.naive("Y", {"X": x})[1], naive, atol=1e-9)
    bow = examples["bow"]
    assert not bow.identifiable
    for x in (0, 1):
        p1 = 0.5 * sigmoid(-1.5 + x) + 0.5 * sigmoid(-1.5 + x + 2.5)
        np.testing.assert_allclose(bow.truth("Y", {"X": x})[1], p1, atol=1e-12)


@pytest.mark.parametrize("name,t,o", [("colored_digits", "D", "A"), ("xray", "C", "N")])
def test_confounding_is_strong(examples, name, t, o):
    ex = examples[name]
    tvd = [
        0.5 * np.abs(ex.truth(o, {t: x}) - ex.naive(o, {t: x})).sum()
        for x in range(ex.schema[t].classes)
    ]
    assert max(tvd) >= 0.1, tvd


def test_positivity_every_feature_under_every_treatment(examples):
    for name, t, feats in (
        ("colored_digits", "D", ("I.color", "I.digit")),
        ("xray", "C", ("X.opacity",)),
    ):
        ex = examples[name]
        cols, hidden = ex.sample(MC_N, seed=3, render=False)
        for x in range(ex.schema[t].classes):
            for f in feats:
                p = ex.naive(f, {t: x})
                assert p.min() >= 0.1, (name, f, x, p)
                within(p, hidden[f][cols[t] == x], ex.feature_classes[f])


def test_reveal_variant_breaks_positivity():
    ex = load_example("colored_digits", n=200, variant="reveal")
    cols, hidden = ex.sample(2000, seed=1, render=False)
    assert np.array_equal(hidden["I.color"], cols["D"])
    for d in range(3):
        assert ex.naive("I.color", {"D": d})[d] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown variant"):
        load_example("colored_digits", variant="hide")


@pytest.mark.parametrize(
    "name,var,size,shape",
    [
        ("colored_digits", "I", "cpu", (3, 14, 14)),
        ("colored_digits", "I", "gpu", (3, 28, 28)),
        ("xray", "X", "cpu", (1, 16, 16)),
        ("xray", "X", "gpu", (1, 28, 28)),
    ],
)
def test_images_shape_range_and_quantised(name, var, size, shape):
    ex = load_example(name, size=size, n=64, seed=2)
    assert ex.schema[var].shape == shape
    img = ex.study.observational.columns[var]
    assert img.shape == (64, *shape) and img.dtype == np.float32
    assert img.min() >= -1.0 and img.max() <= 1.0
    assert img.max() > 0.5 and img.std() > 0.1  # not blank
    px = (img + 1) * 127.5
    np.testing.assert_allclose(px, np.rint(px), atol=1e-3)  # on the PNG grid


def test_image_features_are_recoverable():
    ex = load_example("colored_digits", n=10)
    train, ht = ex.sample(3000, seed=1)
    test, hs = ex.sample(1000, seed=2)
    color = (test["I"] + 1).sum((2, 3)).argmax(1)
    assert np.mean(color == hs["I.color"]) == 1.0

    def ink(x):
        return ((x.max(1) + 1) / 2).reshape(len(x), -1)

    cent = np.stack([ink(train["I"])[ht["I.digit"] == j].mean(0) for j in range(3)])
    pred = ((ink(test["I"])[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    assert np.mean(pred == hs["I.digit"]) >= 0.9

    xr = load_example("xray", n=10)
    cols, hidden = xr.sample(2000, seed=4)
    bright = (cols["X"].reshape(2000, -1) > 0.6).mean(1)
    pred = np.digitize(bright, [0.002, 0.0145])
    assert np.mean(pred == hidden["X.opacity"]) >= 0.95


def test_determinism_with_seed():
    a = load_example("colored_digits", n=50, seed=7)
    b = load_example("colored_digits", n=50, seed=7)
    c = load_example("colored_digits", n=50, seed=8)
    for v in ("D", "I", "A"):
        assert np.array_equal(a.study.observational.columns[v], b.study.observational.columns[v])
    assert not np.array_equal(
        a.study.observational.columns["I"], c.study.observational.columns["I"]
    )
    x1, h1 = a.sample(100, seed=3, render=False)
    x2, h2 = a.sample(100, seed=3)
    assert np.array_equal(x1["A"], x2["A"]) and np.array_equal(h1["I.digit"], h2["I.digit"])


def test_default_sizes_and_query_validation(examples):
    assert load_example("bow").study.observational.n == 4000
    ex = examples["colored_digits"]
    with pytest.raises(ValueError, match="image"):
        ex.truth("A", {"I": 0})
    with pytest.raises(ValueError, match="class index"):
        ex.truth("A", {"D": 3})
    with pytest.raises(ValueError, match="hidden confounder"):
        ex.truth("A", {"U": 1})
    with pytest.raises(ValueError, match="unknown variable 'Q'"):
        ex.naive("A", {"Q": 1})
    with pytest.raises(ValueError, match="continuous"):
        examples["backdoor"].truth("Z", {"X": 1})


def test_export_round_trip(tmp_path):
    ex = load_example("xray", n=40, seed=1)
    path = export_example("xray", tmp_path / "xray", n=40, seed=1)
    study = load_study(path)
    assert study.schema == ex.schema and study.observational.n == 40
    for v in ex.schema.names:
        np.testing.assert_array_equal(
            study.observational.columns[v], ex.study.observational.columns[v]
        )


def _binary_pool(labels, h=28, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((len(labels), h, h)) < 0.3).astype(np.uint8) * 255
    return images, np.asarray(labels, np.int64)


def test_mnist_frontdoor_on_tiny_pool(tmp_path):
    images, labels = _binary_pool([0, 1, 7, 3] * 5)
    ex = build_mnist_frontdoor(images, labels, tmp_path / "mnist", n=60, seed=0, side=14)
    assert ex.schema["I"].shape == (3, 14, 14)
    assert load_study(tmp_path / "mnist").observational.n == 60
    ref = load_example("colored_digits", n=10)
    for d in range(3):
        np.testing.assert_allclose(ex.truth("A", {"D": d}), ref.truth("A", {"D": d}))
    ex28 = build_mnist_frontdoor(images, labels, tmp_path / "m28", n=30, seed=0)
    cols, hidden = ex28.sample(30, seed=2)
    digits = np.array([0, 1, 7])
    for img, j in zip(cols["I"], hidden["I.digit"], strict=True):
        mask = img.max(0) > -1.0  # inked pixels
        pool = images[labels == digits[j]] > 0
        assert any(np.array_equal(mask, p) for p in pool)  # a real image of that label
    with pytest.raises(Exception, match="no image with label 7"):
        build_mnist_frontdoor(images[labels != 7], labels[labels != 7], tmp_path / "x", n=5)


def test_pneumonia_frontdoor_on_tiny_pool(tmp_path):
    images, labels = _binary_pool([0, 1] * 6, h=16)
    ex = build_pneumonia_frontdoor(images, labels, tmp_path / "pn", n=50, seed=0)
    assert ex.schema["X"].shape == (1, 16, 16)
    assert load_study(tmp_path / "pn").schema == ex.schema
    cols, hidden = ex.sample(MC_N, seed=1, render=False)
    for c in (0, 1):
        within(ex.naive("N", {"C": c}), cols["N"][cols["C"] == c], 2)
        do_cols, _ = ex.sample(MC_N, do={"C": c}, seed=9 + c, render=False)
        within(ex.truth("N", {"C": c}), do_cols["N"], 2)
    assert max(abs(ex.truth("N", {"C": c})[1] - ex.naive("N", {"C": c})[1]) for c in (0, 1)) > 0.1
    cols, hidden = ex.sample(20, seed=3)
    for img, lab in zip(cols["X"], hidden["X.label"], strict=True):
        assert any(np.array_equal(img[0] > 0, p > 0) for p in images[labels == lab])


def test_interventional_datasets_follow_truth():
    ex = load_example("xray", n=50, seed=0, interventions=[{"C": 1}], n_interventional=5000)
    assert ex.study.interventions == [frozenset({"C"})]
    ds = ex.study.dataset("do_C=1")
    assert ds.n == 5000 and np.all(ds.columns["C"] == 1)
    within(ex.truth("N", {"C": 1}), ds.columns["N"], 2)


def test_image_outcome_is_refused(examples):
    with pytest.raises(
        ValueError, match="outcome 'X' is an image; ask about its features \\(X.opacity\\)"
    ):
        examples["xray"].truth("X", {"C": 0})


def test_documented_ground_truth_numbers(examples):
    """The table in mdcm/examples/__init__.py (guards against silent changes of the generators)."""
    table = {
        "colored_digits": ([0.3752, 0.5, 0.6248], [0.2539, 0.5, 0.7461]),
        "xray": ([0.4404, 0.5785], [0.3089, 0.7063]),
        "napkin": ([0.5316, 0.6651], [0.4183, 0.7369]),
        "backdoor": ([0.3984, 0.5681], [0.2285, 0.7228]),
        "bow": ([0.4567, 0.6292], [0.3131, 0.7748]),
    }
    for name, (truth, naive) in table.items():
        ex = examples[name]
        for x, (p, q) in enumerate(zip(truth, naive, strict=True)):
            assert ex.truth(ex.outcome, {ex.treatment: x})[1] == pytest.approx(p, abs=6e-5)
            assert ex.naive(ex.outcome, {ex.treatment: x})[1] == pytest.approx(q, abs=6e-5)
