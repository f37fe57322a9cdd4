"""Images at every size of the ladder (issue 11): rendering, exact truth, memory-light storage.

Oracles: the generating SCM's exact enumeration (the truth must not depend on the size), simple
pixel statistics that read the hidden features off the drawings, and block-averaging (an
upscaled picture would be reproduced by averaging and re-expanding it; a picture drawn at its size
is not).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdcm.cli import EXAMPLE_SIZES
from mdcm.examples import DEFAULT_ROWS, SIZES, load_example
from mdcm.examples import colored_digits as cd_module
from mdcm.examples import xray as xray_module


def _image(ex):
    v = next(v.name for v in ex.schema.variables if v.kind == "image")
    return v, np.asarray(ex.study.observational.columns[v])


def test_ladder_names_are_shared_by_the_cli_and_every_size_has_a_shape():
    assert tuple(EXAMPLE_SIZES) == tuple(SIZES)
    assert set(DEFAULT_ROWS) == set(SIZES)
    for module in (cd_module, xray_module):
        assert set(module.SHAPES) == set(SIZES)
    with pytest.raises(ValueError, match="unknown size '512'"):
        load_example("xray", size="512")


@pytest.mark.parametrize("name", ["xray", "colored_digits"])
@pytest.mark.parametrize("size", ["64", "128"])
def test_drawn_at_size_with_the_same_truth(name, size):
    small = load_example(name, size="cpu", n=16, seed=3)
    ex = load_example(name, size=size, n=48, seed=3)
    side = int(size)
    v, img = _image(ex)
    assert img.shape[1:] == (ex.schema[v].shape[0], side, side)
    assert img.min() >= -1.0 and img.max() <= 1.0 and img.std() > 0.1
    px = (img + 1) * 127.5
    np.testing.assert_allclose(px, np.rint(px), atol=1e-3)  # on the PNG grid
    # the same SCM, so the same exact answers and the same labels for the same seed
    t = ex.treatment
    for x in range(ex.schema[t].classes):
        np.testing.assert_array_equal(ex.truth(ex.outcome, {t: x}), small.truth(ex.outcome, {t: x}))
    # drawn at its size, not upscaled: a nearest-neighbour upscale is reproduced exactly by its
    # 2x2 block means, a smooth (bilinear) one has far less energy in the top frequency octave
    blocks = img.reshape(*img.shape[:2], side // 2, 2, side // 2, 2).mean((3, 5))
    assert np.abs(img - blocks.repeat(2, axis=2).repeat(2, axis=3)).mean() > 0.005
    half = torch.nn.functional.interpolate(torch.as_tensor(img), scale_factor=0.5, mode="area")
    smooth = torch.nn.functional.interpolate(half, scale_factor=2, mode="bilinear").numpy()
    assert _top_octave_share(img) > 1.5 * _top_octave_share(smooth)


def _top_octave_share(img: np.ndarray) -> float:
    """Share of the (mean-removed) spectral energy above half the Nyquist frequency."""
    f = np.abs(np.fft.fft2(img - img.mean((2, 3), keepdims=True))) ** 2
    k = np.abs(np.fft.fftfreq(img.shape[-1]))
    return float(f[..., np.maximum(k[:, None], k[None, :]) > 0.25].sum() / f.sum())


def test_features_readable_at_64_px():
    ex = load_example("colored_digits", size="64", n=10)
    cols, hidden = ex.sample(300, seed=1)
    color = (cols["I"] + 1).sum((2, 3)).argmax(1)
    assert np.mean(color == hidden["I.color"]) == 1.0
    xr = load_example("xray", size="64", n=10)
    cols, hidden = xr.sample(600, seed=4)
    bright = (cols["X"].reshape(600, -1) > 0.6).mean(1)
    # opacity class from the bright area, thresholds learned on half, scored on the other half
    means = [np.median(bright[:300][hidden["X.opacity"][:300] == k]) for k in range(3)]
    cuts = [(means[0] + means[1]) / 2, (means[1] + means[2]) / 2]
    pred = np.digitize(bright[300:], cuts)
    assert np.mean(pred == hidden["X.opacity"][300:]) >= 0.95
