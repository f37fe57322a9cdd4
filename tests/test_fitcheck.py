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
    with torch.no_grad():  # the probe reads the image's code, as the child's mechanism does
        probe = DownstreamProbe(coder.encode(img[train]), {"N": n_lab[train]}, {"N": 2}, seed=0)
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
    # ... and decoded by the coder (what a latent mechanism outputs: smoother than real images)
    with torch.no_grad():
        decoded = coder.decode(coder.encode(torch.as_tensor(faithful, dtype=torch.float32)))
    smooth = fit.tvd(real, {"C": real["C"], "X": decoded})
    assert smooth <= 0.03 + fit.floor, (smooth, fit.floor)
    # an image mechanism that drops the opacity (what N reads): X-rays without any opacity
    clear = ex.sample(3000, do={"C": 0, "X.opacity": 0}, seed=7)[0]["X"]
    dropped = torch.as_tensor(np.asarray(clear, np.float32))
    bad = fit.tvd(real, {"C": real["C"], "X": dropped})
    assert good <= 0.03 + fit.floor, (good, fit.floor)
    assert bad > 0.03 + fit.floor, (bad, fit.floor)
    # the downstream probe alone sees it
    assert fit.downstream(real, {"C": real["C"], "X": dropped}) > 0.03


def test_downstream_probe_passes_decoded_images_that_carry_what_the_child_reads():
    """two_images: J's k-means cluster depends on I only through I's color. Images decoded from
    the codes of real I (a perfect latent mechanism's output) lose fine pixel detail but keep
    the color; the probe reads the code, so the check passes them (a probe on pixels read that
    detail: 0.43 on every trained model, against a floor of 0.04)."""
    from mdcm.fitcheck import CLUSTERS, kmeans

    ex = load_example("two_images", n=200, seed=0)
    cols, hidden = ex.sample(6000, seed=2)
    imgs = {v: torch.as_tensor(np.asarray(cols[v], np.float32)) for v in ("I", "J")}
    coders = {v: ImageCoder(x.shape[1:], 8) for v, x in imgs.items()}
    torch.manual_seed(0)
    with torch.enable_grad():
        for v, coder in coders.items():
            coder.fit(imgs[v][:3000], steps=300)
    with torch.no_grad():
        codes = {v: coders[v].encode(x) for v, x in imgs.items()}
    rng = np.random.RandomState(0)
    cent = kmeans(codes["J"][3000:], CLUSTERS, rng)
    j_cluster = torch.cdist(codes["J"], cent).argmin(1).numpy()
    check, train = slice(0, 3000), slice(3000, 6000)
    probe = DownstreamProbe(codes["I"][train], {"J": j_cluster[train]}, {"J": len(cent)})
    x = _onehot(cols["X"][check], 2)
    real = {"X": x, "I": imgs["I"][check]}
    fit = FitCheck(
        ["X"],
        ["I"],
        {"X": "categorical", "I": "image"},
        real,
        lambda v, im: coders[v].encode(im),
        rng,
        {"I": probe},
    )
    with torch.no_grad():
        decoded = coders["I"].decode(codes["I"][check])
    assert fit.downstream(real, {"X": x, "I": decoded}) <= 0.03
    # images whose color ignores X (I drawn under the other treatment) are still caught
    flipped, _ = ex.sample(3000, do={"X": 1}, seed=3)
    other = torch.as_tensor(np.asarray(flipped["I"], np.float32))
    assert fit.downstream(real, {"X": x, "I": other}) > 0.03
