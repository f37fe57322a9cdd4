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


# ---------------------------------------------------------------------- fidelity figures
@pytest.fixture(scope="module")
def digits_fidelity():
    """Fidelity of three 'generators' of colored digits against the study's real images, with
    the labels drawn by the exact generating SCM: faithful (fresh draws of the true process),
    blurred (the same draws, box-blurred) and class-less (the same images, shuffled against
    their labels, so they no longer carry D or A)."""
    from mdcm.fidelity import image_fidelity

    ex = load_example("colored_digits", size="cpu", n=2400, seed=0)
    obs = ex.study.observational
    roles = {"D": "parent", "A": "child"}
    classes = {k: ex.schema[k].classes for k in roles}
    cols, _ = ex.sample(600, seed=5)
    x = torch.as_tensor(np.asarray(cols["I"]))
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False).numpy()
    shuffled = np.asarray(cols["I"])[np.random.default_rng(0).permutation(600)]
    out = {}
    for name, images in (("faithful", cols["I"]), ("blurred", blurred), ("class-less", shuffled)):
        out[name] = image_fidelity(
            "I",
            obs.columns["I"],
            {k: obs.columns[k] for k in roles},
            images,
            {k: cols[k] for k in roles},
            classes,
            roles,
            n_eval=600,
            probe_steps=250,
            seed=1,
        )
    return out


def test_fidelity_of_a_faithful_generator_sits_at_its_floors(digits_fidelity):
    f = digits_fidelity["faithful"]
    assert f.flags() == [], f.flags()
    assert f.n_real == f.n_generated == 600 and f.features == "probe"
    for a in f.agreement:  # the probe reads D and A off real images better than chance
        assert a.real_accuracy > 0.45 and a.agrees
    assert 0.8 < f.sharpness_floor < 1.25 and 0.8 < f.sharpness < 1.25


def test_fidelity_flags_blurred_and_class_less_images(digits_fidelity):
    blurred, classless = digits_fidelity["blurred"], digits_fidelity["class-less"]
    assert blurred.sharpness < 0.6 * blurred.sharpness_floor
    assert blurred.frechet > 4 * blurred.frechet_floor
    assert any("blurred" in p for p in blurred.flags())
    # shuffled images have the right look (marginal) but carry neither D nor A
    assert {a.label for a in classless.agreement if not a.agrees} == {"D", "A"}
    assert all(a.gap < -0.1 for a in classless.agreement)
    assert any("carry D more weakly" in p for p in classless.flags())


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (20000, 2))
    b = rng.normal(0.0, 1.0, (20000, 2)) * np.array([2.0, 1.0]) + np.array([1.0, 0.0])
    # N(0, I) vs N((1, 0), diag(4, 1)): |mu|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) = 1 + (1 + 4 - 4)
    from mdcm.fidelity import frechet_distance

    assert frechet_distance(a, b) == pytest.approx(2.0, abs=0.06)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def _run_cli(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from mdcm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_cli_check_prints_the_figures_with_their_floors(tmp_path):
    import json

    study = tmp_path / "xray"
    assert _run_cli("export-example", "xray", "--out", str(study), "--n", "400")[0] == 0
    quick = ["--steps", "4", "--batch-size", "16", "--device", "cpu", "--progress", "off"]
    quick += ["--set", "coder_steps=5", "--set", "check_samples=128", "--set", "mmd_batch=32"]
    rc, _, err = _run_cli("train", "--study", str(study), "--out", str(tmp_path / "m"), *quick)
    assert rc == 0, err
    rc, out, err = _run_cli(
        "check", "--model", str(tmp_path / "m"), "--study", str(study), "--images", "200"
    )
    assert rc == 0, err
    assert "image X (1x16x16)" in out and "probe accuracy: C (parent)" in out
    assert "probe accuracy: N (child)" in out and "Fréchet distance" in out
    assert "sharpness" in out and "problems:" in out
    rc, out, _ = _run_cli(
        "check",
        "--model",
        str(tmp_path / "m"),
        "--example",
        "xray",
        "--n",
        "400",
        "--json",
        "--images",
        "100",
    )
    figures = json.loads(out)["X"]
    assert figures["n_real"] == 100 and figures["frechet_floor"] >= 0
    assert {a["label"] for a in figures["agreement"]} == {"C", "N"}
    # bad input: one line, exit 2
    rc, _, err = _run_cli("check", "--model", str(tmp_path / "nope"), "--study", str(study))
    assert rc == 2 and "no such model folder" in err and err.count("\n") == 1
    rc, _, err = _run_cli("check", "--model", str(tmp_path / "m"), "--example", "napkin")
    assert rc == 2 and err.count("\n") == 1


# ---------------------------------------------------------------------- latent images
def test_children_of_a_latent_image_read_its_code_and_pixels_decode_when_read():
    """A generated latent image's child reads the code its mixture drew (oracle: the child's
    mechanism run by hand on that code with the same noise stream); a GIVEN image is read
    through the coder; pixels are decoded only when someone reads them."""
    from mdcm.graph import CausalGraph
    from mdcm.model import DCM, ModelConfig, NoiseStreams
    from mdcm.variables import Schema, Variable

    schema = Schema(
        CausalGraph.parse("C -> X -> N"),
        (
            Variable("C", "categorical", classes=2),
            Variable("X", "image", shape=(1, 8, 8)),
            Variable("N", "categorical", classes=3),
        ),
    )
    torch.manual_seed(0)
    m = DCM(schema, ModelConfig(code_dim=4, image_modes=3)).eval()
    coder = m.coders["X"]
    calls = {"n": 0}
    decode = coder.decode

    def counting(code):
        calls["n"] += 1
        return decode(code)

    coder.decode = counting
    c = m.encode("C", torch.tensor([0, 1, 1, 0, 1, 0]))
    with torch.no_grad():
        vals = m.forward_values(6, {"C": c}, ["X", "N"], noise_seed=11)
        assert calls["n"] == 0 and "X" in vals.codes  # nothing decoded so far
        streams = NoiseStreams(m, None, 11)
        code = m.generators["X"].code(c, c[:, :0], streams.own("X"))
        torch.testing.assert_close(vals.codes["X"], code)
        n_by_hand = m.generators["N"].sample(code, code[:, :0], streams.own("N"))
        torch.testing.assert_close(vals["N"], n_by_hand)
        assert calls["n"] == 0
        torch.testing.assert_close(vals["X"], decode(code))  # pixels on first read, once
        vals["X"]
        assert calls["n"] == 1 and list(vals) == ["C", "X", "N"]
        # do(X = image): the child reads the coder's encoding of the given pixels
        img = decode(code)
        given = m.forward_values(6, {"X": img}, ["N"], noise_seed=11)
        streams = NoiseStreams(m, None, 11)
        by_hand = m.generators["N"].sample(coder.encode(img), code[:, :0], streams.own("N"))
        torch.testing.assert_close(given["N"], by_hand)


def test_checks_page_shows_fidelity_with_floors_and_full_size_grids(tmp_path, monkeypatch):
    """The Checks page (AppTest): the fidelity figures appear on request, each with its
    real-vs-real floor, and the full-size grids download."""
    import test_app

    monkeypatch.setenv("MDCM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(test_app.REPO)
    sid = test_app._study("xray")
    test_app._fake_trained_run(sid)
    at = test_app._page("checks", sid).run(timeout=240)
    assert not at.exception
    at.button(key="fid_run").click().run(timeout=240)
    assert not at.exception and not at.error, [e.value for e in at.error]
    tables = [d.value for d in at.dataframe if "real vs real (floor)" in d.value.columns]
    assert tables, "no fidelity table"
    figures = list(tables[0]["figure"])
    assert "probe accuracy: C (parent)" in figures and "probe accuracy: N (child)" in figures
    assert any(f.startswith("Fréchet distance") for f in figures)
    assert any(f.startswith("sharpness") for f in figures)
    # an untrained model's images are noise: the figures say so
    assert any("generated X" in w.value for w in at.warning)
    keys = {b.key for b in at.get("download_button")}
    assert {"fid_grid_X_data", "fid_grid_X_model"} <= keys


def test_bf16_autocast_is_for_cuda_only_and_leaves_cpu_training_unchanged():
    """TrainConfig.amp: bf16 autocast on a CUDA device only; on a CPU the weights of a run with
    and without it are bit for bit the same (oracle: the run without it)."""
    import contextlib
    import dataclasses

    from test_train import FAST, _state, fresh, xray

    from mdcm.coders import autocast
    from mdcm.plan import make_plan
    from mdcm.train import train

    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(autocast(torch.device("cuda"), enabled=False), contextlib.nullcontext)
    ex = xray(200)
    plan = make_plan(ex.study.graph)
    states = []
    for amp in (True, False):
        m = fresh(ex.study)
        train(m, plan, ex.study, dataclasses.replace(FAST, amp=amp, steps=6))
        states.append(_state(m))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
