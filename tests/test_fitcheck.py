"""The stage fit check (mdcm/fitcheck.py): noise floor, continuous and image views, and the
downstream probe that sees what an image's children read (issue #10 point 4).

Oracles: two independent samples of one distribution (the floor is their expected TVD), and
images drawn by the built-in X-ray generator itself (a faithful image mechanism) against images
whose opacity — the feature the child N reads — has been removed."""

from __future__ import annotations

import numpy as np
import torch

from mdcm.coders import ImageCoder
from mdcm.examples import load_example
from mdcm.fitcheck import DownstreamProbe, FitCheck, table_floor, table_tvd


def test_floor_is_the_expected_tvd_of_two_samples_of_one_distribution():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(30))
    n = 4000
    draws = [table_tvd([rng.choice(30, n, p=p)], [rng.choice(30, n, p=p)], 0) for _ in range(200)]
    floor = table_floor([rng.choice(30, n, p=p)], 0)
    assert abs(np.mean(draws) - floor) < 0.15 * floor, (np.mean(draws), floor)


def _onehot(x: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(x), k).float()


def test_image_check_fails_when_the_feature_the_child_reads_is_dropped():
    ex = load_example("xray", n=200, seed=0)
    cols, _ = ex.sample(6000, seed=1)
    img = torch.as_tensor(np.asarray(cols["X"], np.float32))
    c, n_lab = cols["C"], cols["N"]
    coder = ImageCoder(img.shape[1:], 8)
    torch.manual_seed(0)
    with torch.enable_grad():
        coder.fit(img[:3000], steps=300)
    encode = lambda v, x: coder.encode(x)  # noqa: E731
    check, train = slice(0, 3000), slice(3000, 6000)
    probe = DownstreamProbe(img[train], {"N": n_lab[train]}, {"N": 2}, seed=0)
    real = {"C": _onehot(c[check], 2), "X": img[check]}
    fit = FitCheck(
        ["C"],
        ["X"],
        {"C": "categorical", "X": "image"},
        real,
        encode,
        np.random.RandomState(0),
        {"X": probe},
    )
    # a faithful image mechanism: fresh images from the generator itself, given the same C
    same, _ = ex.sample(3000, do={"C": 0}, seed=5)
    other, _ = ex.sample(3000, do={"C": 1}, seed=6)
    faithful = np.where(c[check][:, None, None, None] == 0, same["X"], other["X"])
    good = fit.tvd(real, {"C": real["C"], "X": torch.as_tensor(faithful, dtype=torch.float32)})
    # an image mechanism that drops the opacity (what N reads): X-rays without any opacity
    clear = ex.sample(3000, do={"C": 0, "X.opacity": 0}, seed=7)[0]["X"]
    dropped = torch.as_tensor(np.asarray(clear, np.float32))
    bad = fit.tvd(real, {"C": real["C"], "X": dropped})
    assert good <= 0.03 + fit.floor, (good, fit.floor)
    assert bad > 0.03 + fit.floor, (bad, fit.floor)
    # the downstream probe alone sees it
    assert fit.downstream(real, {"C": real["C"], "X": dropped}) > 0.03
