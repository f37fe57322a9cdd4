"""DCM wiring, sampling under do(), model files (mdcm/model.py, mdcm/nets.py).

Oracles: generators set by hand (so the exact output of every mechanism is known), safetensors'
own header format, and sha256 of the written bytes."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from mechanisms import HandSet

from mdcm.graph import CausalGraph
from mdcm.model import (
    DCM,
    ModelConfig,
    ModelFileError,
    NoiseStreams,
    StaleModelError,
    load_model,
    save_model,
)
from mdcm.nets import Critic, gradient_penalty, mmd2
from mdcm.variables import Schema, Variable

SMALL = ModelConfig(
    noise_dim=4,
    image_noise_dim=8,
    confounder_dim=3,
    hidden=16,
    image_hidden=32,
    image_channels=8,
    code_dim=4,
)


def schema_of(text: str, **kinds: Variable) -> Schema:
    g = CausalGraph.parse(text)
    return Schema(g, tuple(kinds.get(v, Variable(v, "categorical", classes=2)) for v in g.nodes))


class NoiseSlice(HandSet):
    """Hand-set mechanism: outputs columns [a, b) of its noise input (scaled)."""

    def __init__(self, a: int, b: int, scale: float = 1.0) -> None:
        super().__init__(SMALL.noise_dim)
        self.a, self.b, self.scale = a, b, scale

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.scale * noise[:, self.a : self.b]


class Const(HandSet):
    """Hand-set categorical mechanism: always class ``k`` (logits +-30); counts its calls."""

    categorical = True

    def __init__(self, k: int, classes: int) -> None:
        super().__init__(SMALL.noise_dim)
        self.k, self.classes, self.calls = k, classes, 0

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = torch.full((cond.shape[0], self.classes), -30.0)
        out[:, self.k] = 30.0
        return out


class Copy(HandSet):
    """Hand-set categorical mechanism: copies its (one-hot) parent."""

    categorical = True

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return 60.0 * cond - 30.0


def test_shapes_and_kinds() -> None:
    s = schema_of(
        "C -> I -> Y; C -> Z -> Y; C <-> Y",
        I=Variable("I", "image", shape=(3, 8, 8)),
        Z=Variable("Z", "continuous", shape=(2,)),
        C=Variable("C", "categorical", classes=3),
    )
    torch.manual_seed(0)
    m = DCM(s, SMALL)
    assert m.parents == {"C": (), "I": ("C",), "Z": ("C",), "Y": ("I", "Z")}
    out = m.sample(10, seed=0)
    assert out["C"].dtype == torch.int64 and out["C"].shape == (10,)
    assert set(out["C"].tolist()) <= {0, 1, 2}
    assert out["Z"].shape == (10, 2) and out["I"].shape == (10, 3, 8, 8)
    assert float(out["I"].abs().max()) <= 1.0
    # same seed -> same samples; other seed -> different
    again = m.sample(10, seed=0)
    assert all(torch.equal(out[v], again[v]) for v in out)
    assert not torch.equal(out["Z"], m.sample(10, seed=1)["Z"])


def test_latent_image_mechanism_decodes_its_code() -> None:
    """The default image mechanism samples a standardised code from its mixture; the image is
    the coder's decoding of that code."""
    s = schema_of("C -> I", I=Variable("I", "image", shape=(3, 8, 8)))
    m = DCM(s, ModelConfig(code_dim=4, image_modes=5))
    assert m.latent_image("I") and type(m.generators["I"]).__name__ == "LatentMixture"
    with torch.no_grad():
        m.coders["I"].mean.fill_(0.5)
        m.coders["I"].std.fill_(2.0)
    cond = m.encode("C", 1, 6)
    vals = m.forward_values(6, {"C": cond}, ["I"], noise_seed=5)
    gen = NoiseStreams(m, None, 5).own("I")  # the stream forward_values gave I
    eps = torch.randn(6, 4, generator=gen)
    code = m.generators["I"].sample_code(cond, cond[:, :0], eps, gen)
    assert code.shape == (6, 4)
    assert torch.allclose(vals["I"], m.coders["I"].decode_raw(code * 2.0 + 0.5), atol=1e-6)


def test_latent_mixture_log_prob_and_sampling_match_torch_distributions() -> None:
    """Oracle: torch.distributions' MixtureSameFamily with the same parameters."""
    from torch import distributions as dist

    from mdcm.nets import LatentMixture

    torch.manual_seed(0)
    mix = LatentMixture(cond_dim=2, conf_dim=1, code_dim=3, components=4, hidden=16)
    cond, conf = torch.randn(5, 2), torch.randn(5, 1)
    logits, mu, log_s = mix.params(cond, conf)
    ref = dist.MixtureSameFamily(
        dist.Categorical(logits=logits), dist.Independent(dist.Normal(mu, log_s.exp()), 1)
    )
    x = torch.randn(5, 3)
    assert torch.allclose(mix.log_prob(cond, conf, x), ref.log_prob(x), atol=1e-5)
    # sampling: component frequencies follow softmax(logits) (20k draws, 4 sigma)
    n = 20000
    c1, f1 = cond[:1].expand(n, -1), conf[:1].expand(n, -1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = mix.sample_code(c1, f1, torch.zeros(n, 3), gen)  # eps = 0: the component means
    hits = (z[:, None, :] - mu[0][None]).abs().sum(-1).argmin(1)
    p = torch.softmax(logits[0], 0)
    freq = torch.bincount(hits, minlength=4).float() / n
    assert torch.all((freq - p).abs() <= 4 * torch.sqrt(p * (1 - p) / n) + 1e-3), (freq, p)


def test_conv_image_generator_shapes() -> None:
    s = schema_of("C -> I", I=Variable("I", "image", shape=(1, 14, 14)))
    m = DCM(s, ModelConfig(image_net="conv", image_channels=8, code_dim=4))
    assert type(m.generators["I"]).__name__ == "ConvImageGenerator"
    assert m.sample(5, seed=0)["I"].shape == (5, 1, 14, 14)


def test_shared_confounder_noise_is_shared() -> None:
    # A <-> B shares U1; B <-> C shares U2 (a different edge). A and B read U1, C reads U2.
    cont = {v: Variable(v, "continuous", shape=(1,)) for v in "ABC"}
    s = schema_of("A <-> B; B <-> C", **cont)
    m = DCM(s, SMALL)
    z, u = SMALL.noise_dim, SMALL.confounder_dim
    # noise layout: [Z_V, U of each touching edge in edge order]; edges: (A,B), (B,C)
    m.generators["A"] = NoiseSlice(z, z + 1)  # U_AB
    m.generators["B"] = NoiseSlice(z, z + 1)  # U_AB (first edge of B)
    m.generators["C"] = NoiseSlice(z, z + 1)  # U_BC
    out = m.sample(4000, seed=0)
    a, b, c = (out[v][:, 0].numpy() for v in "ABC")
    assert np.array_equal(a, b)  # the SAME U sample reached both ends
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.06  # another edge's U is independent
    # B's second edge U_BC equals what C reads
    m.generators["B"] = NoiseSlice(z + u, z + u + 1)
    out = m.sample(4000, seed=0)
    assert np.array_equal(out["B"][:, 0].numpy(), out["C"][:, 0].numpy())
    # own noise Z is not shared
    m.generators["A"] = NoiseSlice(0, 1)
    m.generators["C"] = NoiseSlice(0, 1)
    out = m.sample(4000, seed=0)
    assert abs(np.corrcoef(out["A"][:, 0].numpy(), out["C"][:, 0].numpy())[0, 1]) < 0.06


def test_do_cuts_parents_and_children_read_the_value() -> None:
    m = DCM(schema_of("X -> Y"), SMALL)
    gx = Const(0, 2)
    m.generators["X"] = gx
    m.generators["Y"] = Copy()
    obs = m.sample(100, seed=0)
    assert obs["X"].eq(0).all() and obs["Y"].eq(0).all()
    calls = gx.calls
    out = m.sample(100, {"X": 1}, seed=0)
    assert out["X"].eq(1).all() and out["Y"].eq(1).all()
    assert gx.calls == calls  # X's mechanism was not run
    per = torch.tensor([0, 1] * 50)
    out = m.sample(100, {"X": per}, seed=0)  # per-sample do
    assert torch.equal(out["Y"], per) and torch.equal(out["X"], per)
    with pytest.raises(ValueError, match="class must be in 0..1"):
        m.sample(10, {"X": 2})
    with pytest.raises(ValueError, match="unknown variable"):
        m.sample(10, {"Q": 0})
    with pytest.raises(ValueError, match="per-sample"):
        m.sample(10, {"X": torch.zeros(3, dtype=torch.long)})


def test_do_with_an_image_value() -> None:
    s = schema_of("C -> I -> A", I=Variable("I", "image", shape=(1, 6, 6)))
    m = DCM(s, SMALL)
    img = torch.linspace(-1, 1, 36).reshape(1, 6, 6)
    out = m.sample(7, {"I": img}, seed=0)
    assert torch.equal(out["I"], img.expand(7, 1, 6, 6))
    many = torch.rand(7, 1, 6, 6) * 2 - 1
    assert torch.equal(m.sample(7, {"I": many.numpy()}, seed=0)["I"], many)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        m.sample(3, {"I": img * 3})
    with pytest.raises(ValueError, match="shape"):
        m.sample(3, {"I": torch.zeros(1, 5, 5)})


def test_categorical_samples_follow_softmax() -> None:
    m = DCM(schema_of("X", X=Variable("X", "categorical", classes=3)), SMALL)

    class Fixed(HandSet):
        categorical = True

        def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            return torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(noise.shape[0], 3)

    m.generators["X"] = Fixed()
    x = m.sample(40000, seed=3)["X"].numpy()
    freq = np.bincount(x, minlength=3) / len(x)
    assert np.allclose(freq, [0.2, 0.5, 0.3], atol=0.012)


def test_stale_model_is_refused() -> None:
    m = DCM(schema_of("X -> Y; Z"), SMALL)
    m.sample(5, seed=0)
    m.schema = schema_of("X -> Y; Z -> Y")  # the graph changed after building
    with pytest.raises(StaleModelError, match="Y: built with parents \\['X'\\]"):
        m.sample(5, seed=0)
    m.schema = schema_of("X -> Y; Z", Z=Variable("Z", "continuous", shape=(1,)))
    with pytest.raises(StaleModelError, match="Z: built as"):
        m.sample(5, seed=0)


# ---------------------------------------------------------------------- model files
@pytest.fixture()
def saved(tmp_path):
    s = schema_of("C -> I -> A; C <-> A", I=Variable("I", "image", shape=(1, 6, 6)))
    torch.manual_seed(1)
    m = DCM(s, SMALL)
    path = save_model(m, tmp_path / "model", extra={"note": "x"})
    return m, path


def test_save_load_round_trip(saved) -> None:
    m, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["graph"] == m.schema.graph.to_text()
    assert meta["parents"]["A"] == ["I"]
    m2 = load_model(path, expect_schema=m.schema)
    a, b = m.sample(50, {"C": 1}, seed=5), m2.sample(50, {"C": 1}, seed=5)
    assert all(torch.equal(a[v], b[v]) for v in a)
    assert m2.config == dataclasses.replace(m.config, image_net="latent")  # "auto" resolved
    # no temp files left behind
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]


def test_load_reads_files_from_when_auto_meant_pixel_generators(tmp_path) -> None:
    s = schema_of("C -> I", I=Variable("I", "image", shape=(1, 6, 6)))
    torch.manual_seed(2)
    m = DCM(s, dataclasses.replace(SMALL, image_net="mlp"))
    path = save_model(m, tmp_path / "old")
    meta = json.loads((path / "model.json").read_text())
    meta["format"] = "mdcm-model/1"  # as written before the latent default
    meta["config"]["image_net"] = "auto"
    del meta["config"]["coder_mlp_max"]
    (path / "model.json").write_text(json.dumps(meta))
    old = load_model(path)
    assert type(old.generators["I"]).__name__ == "MLPImageGenerator"
    assert torch.equal(old.sample(4, seed=1)["I"], m.sample(4, seed=1)["I"])


def test_load_refuses_other_graph(saved) -> None:
    m, path = saved
    other = schema_of("C -> I -> A", I=Variable("I", "image", shape=(1, 6, 6)))
    with pytest.raises(ModelFileError, match="trained for graph"):
        load_model(path, expect_schema=other)
    kinds = schema_of("C -> I -> A; C <-> A", I=Variable("I", "image", shape=(1, 8, 8)))
    with pytest.raises(ModelFileError, match="retrain"):
        load_model(path, expect_schema=kinds)


def test_load_refuses_tampered_weights(saved) -> None:
    _, path = saved
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # flip a byte inside a tensor
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(path)


def test_load_refuses_truncated_weights(saved) -> None:
    _, path = saved
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="truncated|not a valid safetensors"):
        load_model(path)


def test_load_refuses_pickle_payload(saved) -> None:
    m, path = saved
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    (path / "model.safetensors").write_bytes(buf.getvalue())
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)
    (path / "model.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(path)


def test_load_refuses_missing_or_bad_json(saved, tmp_path) -> None:
    _, path = saved
    with pytest.raises(ModelFileError, match="no model.json"):
        load_model(tmp_path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    (path / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelFileError, match="unknown model format"):
        load_model(path)


# ---------------------------------------------------------------------- nets
def test_mmd_is_small_for_same_and_large_for_different() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g)
    y = torch.randn(300, 3, generator=g)
    z = torch.randn(300, 3, generator=g) + 1.0
    assert abs(float(mmd2(x, y))) < 0.02
    assert float(mmd2(x, z)) > 0.1


def test_critic_packing_and_gradient_penalty() -> None:
    c = Critic(5, [(3, 8, 8)], hidden=16, channels=8, pack=4)
    flat, ims = torch.randn(16, 5), [torch.randn(16, 3, 8, 8)]
    out = c(flat, ims)
    assert out.shape == (4,)
    gp = gradient_penalty(c, (flat, ims), (torch.randn(16, 5), [torch.randn(16, 3, 8, 8)]), None)
    assert gp.ndim == 0 and torch.isfinite(gp)


def test_continuous_values_are_standardised_for_mechanisms_and_restored() -> None:
    """Mechanisms read standardised continuous parents and emit standardised values, so a study
    in any units trains alike: with X ~ (1000, 50) and Y ~ (-3, 2) in the data, a mechanism
    Y := standardised X gives Y = -3 + 2 * (x - 1000) / 50."""
    cont = {v: Variable(v, "continuous", shape=(1,)) for v in "XY"}
    m = DCM(schema_of("X -> Y", **cont), SMALL)

    class Pass(HandSet):
        def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            return cond[:, :1]

    m.generators["Y"] = Pass(SMALL.noise_dim)
    rng = np.random.default_rng(0)
    x = 1000 + 50 * rng.standard_normal(5000)
    y = -3 + 2 * rng.standard_normal(5000)
    m.fit_scales({"X": x, "Y": y})
    assert abs(float(m.scales["X"].loc) - x.mean()) < 1e-3
    out = m.sample(3, {"X": 1050.0}, seed=0)["Y"]
    expect = y.mean() + y.std(ddof=1) * (1050.0 - x.mean()) / x.std(ddof=1)
    assert torch.allclose(out, torch.full((3, 1), expect, dtype=torch.float32), atol=1e-3)
    m.fit_scales({"X": x * 0, "Y": y * 0})  # fitted scales are kept (resume)
    assert abs(float(m.scales["X"].loc) - x.mean()) < 1e-3
