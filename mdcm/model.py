"""The deep causal generative model (DCM): one generator per variable, one topological sampler.

``V := G_V(pa(V), Z_V, U_e for each bidirected edge e touching V)`` (Kocaoglu et al. 2018;
Rahman & Kocaoglu 2024, §3). Each bidirected edge ``A <-> B`` owns ONE noise vector per sample that
is handed to both ``G_A`` and ``G_B``. ``do(X=x)`` replaces X's value before any child reads it
(ancestral sampling in the mutilated graph); X's own generator is not run.

Model files are folders with ``model.safetensors`` (weights, no pickle) and ``model.json`` (graph,
schema, model config, plan, versions, sha256 and file name of the weights); both are written
atomically, in an order that never leaves a replaced model unloadable.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .coders import ImageCoder
from .files import (
    MAX_JSON_BYTES,
    JsonFileError,
    atomic_write,
    plain_file_name,
    read_json_file,
    replace_with_versioned,
)
from .nets import ConvImageGenerator, LatentMixture, MLPGenerator, MLPImageGenerator
from .variables import Schema, SchemaError, Variable

if TYPE_CHECKING:
    from .plan import Plan

__all__ = [
    "ModelConfig",
    "DCM",
    "ModelFileError",
    "StaleModelError",
    "save_model",
    "load_model",
    "MODEL_FORMAT",
    "NoiseStreams",
    "SampledValues",
]

MODEL_FORMAT = "mdcm-model/2"
#: formats read and migrated by :func:`_migrate` (1: before image_net and coder_mlp_max were saved)
OLD_FORMATS = ("mdcm-model/1",)
#: image values (rows x pixels x channels) sampled per chunk by :meth:`DCM.sample`
SAMPLE_IMAGE_VALUES = 2**22
IMAGE_NETS = ("auto", "latent", "mlp", "conv")


class ModelFileError(ValueError):
    """A model file that cannot be used: missing, tampered, truncated, not safetensors, or made
    for another graph/schema."""


class StaleModelError(ValueError):
    """The model's generators were built for other parents or variable kinds than its schema now
    says (the graph or schema changed after training)."""


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes. Defaults are the CPU size (2 cores); raise them on a GPU.

    Image mechanisms (``image_net``): ``"latent"`` (the default) is a mixture over the code of
    the study's image autoencoder (:class:`mdcm.nets.LatentMixture`), decoded by its frozen
    decoder; a plain-conditional image stage then trains by maximum likelihood in seconds, and
    on CPU it reached the causal and image-feature bars that pixel GANs missed
    (bench/train_quality.py: the pixel generators let the parent leak into the images,
    design.md §7). ``"mlp"`` and ``"conv"`` emit pixels and train with WGAN-GP as in the
    paper; they can give sharper images with a GPU and time."""

    noise_dim: int = 8  # Z_V of label/continuous mechanisms
    image_noise_dim: int = 32  # Z_V of image mechanisms (Gaussian part)
    image_modes: int = 64  # latent mechanisms: mixture components (64 vs 32: colored
    # digits feature error lower on 3 of 4 seeds, worst 0.042 vs
    # 0.064); pixel ones: + a uniform one-hot latent (0 = none)
    confounder_dim: int = 4  # U per bidirected edge
    hidden: int = 64  # MLP width of label mechanisms and critics
    image_hidden: int = 256  # MLP width of latent/tiny-image mechanisms and coders
    image_channels: int = 32  # base width of conv image mechanisms / critics
    image_net: str = "auto"  # "latent" | "mlp" | "conv" | "auto" (= "latent"), see below
    code_dim: int = 16  # image code seen by label mechanisms and label-stage losses. 8 dims
    # kept too little of what children read: real PneumoniaMNIST X-rays' codes told the
    # pneumonia label at 0.92/0.91/- (seeds 0/1/2), 16 dims at 0.93/0.94/0.93, and a front-door
    # answer through a blurred mediator is biased (about 0.03 at 8% misread)
    coder_mlp_max: int = 12288  # image coders: MLP for images of at most this many values
    # (3x64x64): at 64 px the MLP coder fitted 12x faster per step than the conv one on a CPU
    # and, at equal CPU time, its reconstructions kept more of what a probe reads
    # (bench/image_coders.py: X-ray opacity 0.93 vs 0.82, real images 0.97); conv above

    def __post_init__(self) -> None:
        if self.image_net not in IMAGE_NETS:
            raise ValueError(
                f"image_net must be one of {', '.join(IMAGE_NETS)}, not {self.image_net!r}"
            )
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and v < (0 if f.name == "image_modes" else 1):
                raise ValueError(f"ModelConfig.{f.name} must be positive, got {v}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def image_kind(self) -> str:
        """The image mechanism kind: ``image_net`` with "auto" resolved ("latent")."""
        return "latent" if self.image_net == "auto" else self.image_net


class Scale(nn.Module):
    """Location and scale of a continuous variable, from the data (:meth:`DCM.fit_scales`);
    identity until fitted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, x: torch.Tensor) -> None:
        self.loc.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(self.dim))
        self.fitted.fill_(True)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale

    def restore(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.loc


class SampledValues(Mapping[str, torch.Tensor]):
    """The encoded values of one forward pass (:meth:`DCM.forward_values`), by variable.

    A latent image generated in the pass keeps the code its mixture drew (``codes``); its pixels
    are decoded only when someone reads ``values[v]``. The image's children, the label stages'
    losses and the fit checks read the code (:meth:`DCM.code`), so a label stage over 64-256 px
    images never pays for a decoder and an encoder per step, and a child reads exactly the
    feature its parent's mechanism drew rather than a re-encoding of decoded (smoothed) pixels.
    """

    def __init__(
        self,
        values: Mapping[str, torch.Tensor] | None = None,
        codes: Mapping[str, torch.Tensor] | None = None,
        decode: Mapping[str, Callable[[], torch.Tensor]] | None = None,
    ) -> None:
        self._values: dict[str, torch.Tensor] = dict(values or {})
        self._pending: dict[str, Callable[[], torch.Tensor]] = dict(decode or {})
        self.codes: dict[str, torch.Tensor] = dict(codes or {})
        self._keys = list(self._values) + [k for k in self._pending if k not in self._values]

    def set(self, name: str, value: torch.Tensor) -> None:
        if name not in self._values and name not in self._pending:
            self._keys.append(name)
        self._values[name] = value

    def set_latent(self, name: str, code: torch.Tensor, decode: Callable[[], torch.Tensor]) -> None:
        """A latent image: its code now, its pixels (``decode()``) when first read."""
        if name not in self._values and name not in self._pending:
            self._keys.append(name)
        self.codes[name] = code
        self._pending[name] = decode

    def select(self, names: Iterable[str]) -> SampledValues:
        """The entries ``names`` (values, codes and pending pixels), nothing decoded."""
        names = [k for k in names if k in self]
        out = SampledValues(
            {k: self._values[k] for k in names if k in self._values},
            {k: self.codes[k] for k in names if k in self.codes},
            {k: self._pending[k] for k in names if k in self._pending},
        )
        out._keys = names
        return out

    def take(self, index: Any) -> SampledValues:
        """Every entry indexed by ``index`` (rows); pending pixels stay pending."""
        pending = {k: functools.partial(_take, f, index) for k, f in self._pending.items()}
        out = SampledValues(
            {k: v[index] for k, v in self._values.items()},
            {k: c[index] for k, c in self.codes.items()},
            pending,
        )
        out._keys = list(self._keys)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._values and name in self._pending:
            self._values[name] = self._pending.pop(name)()
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values or name in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _take(decode: Callable[[], torch.Tensor], index: Any) -> torch.Tensor:
    return decode()[index]


class NoiseStreams:
    """Per-variable and per-confounder random streams of one forward pass (see
    :meth:`DCM.forward_values`): stream ``i`` is a generator seeded with ``base + i``."""

    def __init__(self, model: DCM, gen: torch.Generator | None, base: int | None) -> None:
        self.model = model
        self.dev = model.device
        if base is None:
            base = int(
                torch.randint(
                    0, 2**62, (1,), generator=gen, device=gen.device if gen is not None else "cpu"
                )
            )
        self.base = int(base)
        self._u: dict[int, torch.Tensor] = {}

    def _gen(self, index: int) -> torch.Generator:
        g = torch.Generator(device=self.dev)
        g.manual_seed((self.base + 7919 * (index + 1)) % 2**63)
        return g

    def own(self, v: str) -> torch.Generator:
        """The generator ``Z_V`` of variable ``v`` is drawn from."""
        return self._gen(self.model.order.index(v))

    def u(self, v: str, n: int) -> torch.Tensor:
        """The noise of the bidirected edges touching ``v``, ``(n, k * confounder_dim)``."""
        k = self.model.config.confounder_dim
        parts = []
        for i in self.model._touching[v]:
            if i not in self._u:
                g = self._gen(len(self.model.order) + i)
                self._u[i] = torch.randn(n, k, generator=g, device=self.dev)
            parts.append(self._u[i])
        return torch.cat(parts, dim=1) if parts else torch.zeros(n, 0, device=self.dev)


def _spec(v: Variable) -> tuple:
    return (v.kind, tuple(v.shape))


class DCM(nn.Module):
    """Generators keyed by variable, wired like ``schema.graph``.

    ``parents[v]`` records the parents each generator was built with (declaration order);
    ``confounders`` the bidirected edges, each one shared noise vector.
    """

    def __init__(self, schema: Schema, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.schema = schema
        self.config = config
        #: how the model was trained (``model.json``'s "extra": stage fits per regime, sources)
        self.record: dict = {}
        g = schema.graph
        self.parents: dict[str, tuple[str, ...]] = {v: tuple(g.parents(v)) for v in g.nodes}
        self.confounders: tuple[tuple[str, str], ...] = tuple(
            sorted(g.bidirected, key=lambda e: (g.nodes.index(e[0]), g.nodes.index(e[1])))
        )
        self.specs: dict[str, tuple] = {v.name: _spec(v) for v in schema.variables}
        self.order: tuple[str, ...] = tuple(g.topological_order())
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # tracks the device
        self._touching = {v: [i for i, e in enumerate(self.confounders) if v in e] for v in g.nodes}
        self.coders = nn.ModuleDict(
            {
                v.name: ImageCoder(
                    v.shape, config.code_dim, config.image_hidden, config.coder_mlp_max
                )
                for v in schema.variables
                if v.kind == "image"
            }
        )
        self.scales = nn.ModuleDict(
            {v.name: Scale(v.width) for v in schema.variables if v.kind == "continuous"}
        )
        self.generators = nn.ModuleDict({v: self._build(v) for v in g.nodes})

    # ------------------------------------------------------------------ construction
    def input_width(self, name: str) -> int:
        """Width of a variable as a parent input (one-hot, vector, or image code)."""
        var = self.schema[name]
        return self.config.code_dim if var.kind == "image" else var.width

    def _build(self, name: str) -> nn.Module:
        """The mechanism of ``name`` (see :class:`mdcm.nets.Mechanism`)."""
        var = self.schema[name]
        cfg = self.config
        cond = sum(self.input_width(p) for p in self.parents[name])
        conf = cfg.confounder_dim * len(self._touching[name])
        if var.kind != "image":
            categorical = var.kind == "categorical"
            return MLPGenerator(cond, cfg.noise_dim, conf, var.width, cfg.hidden, categorical)
        kind = cfg.image_kind()
        if kind == "latent":
            modes = max(1, cfg.image_modes)
            return LatentMixture(
                cond, conf, cfg.code_dim, modes, cfg.image_hidden, self.coders[name]
            )
        z, modes = cfg.image_noise_dim, cfg.image_modes
        if kind == "mlp":
            return MLPImageGenerator(
                cond, z + modes + conf, var.shape, cfg.image_hidden, z_dim=z, modes=modes
            )
        return ConvImageGenerator(
            cond, z + modes + conf, var.shape, cfg.image_channels, z_dim=z, modes=modes
        )

    def latent_image(self, name: str) -> bool:
        """Whether ``name`` is an image whose mechanism emits a code of ``coders[name]``."""
        return self.schema[name].kind == "image" and self.config.image_kind() == "latent"

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    # ------------------------------------------------------------------ freshness
    def check_schema(self, schema: Schema | None = None) -> None:
        """Raise :class:`StaleModelError` when ``schema`` (default: ``self.schema``) no longer
        matches the parents and variable kinds the generators were built with."""
        schema = schema or self.schema
        g = schema.graph
        problems = []
        if set(g.nodes) != set(self.parents):
            problems.append(f"variables {sorted(self.parents)} vs now {sorted(g.nodes)}")
        else:
            for v in g.nodes:
                if tuple(g.parents(v)) != self.parents[v]:
                    problems.append(
                        f"{v}: built with parents {list(self.parents[v])}, "
                        f"the graph now says {g.parents(v)}"
                    )
                try:
                    spec = _spec(schema[v])
                except SchemaError:
                    spec = None
                if spec != self.specs[v]:
                    problems.append(f"{v}: built as {self.specs[v]}, the schema now says {spec}")
            if set(g.bidirected) != set(self.confounders):
                problems.append(
                    f"confounders {sorted(self.confounders)} vs now {sorted(g.bidirected)}"
                )
        if problems:
            raise StaleModelError("the model is stale (retrain it): " + "; ".join(problems))

    # ------------------------------------------------------------------ values
    def encode(self, name: str, value: Any, n: int | None = None) -> torch.Tensor:
        """Encode a do() value or a data column as the generator/critic input format.

        Categorical: int or int array (n,) -> one-hot; continuous: float/sequence (d,) or (n, d);
        image: (C,H,W) or (n,C,H,W) in [-1, 1]. A single value is broadcast to ``n`` rows.
        """
        var = self.schema[name]
        dev = self.device
        if var.kind == "categorical":
            t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
            if t.is_floating_point():
                if not torch.equal(t, t.round()):
                    raise ValueError(f"do({name}=…): a categorical value must be an integer")
                t = t.long()
            t = t.long().to(dev)
            if t.ndim == 0:
                t = t.expand(n if n is not None else 1)
            if t.ndim != 1:
                raise ValueError(f"do({name}=…): expected an integer or a 1-d array of integers")
            if bool(((t < 0) | (t >= var.classes)).any()):
                raise ValueError(f"do({name}=…): class must be in 0..{var.classes - 1}")
            return torch.nn.functional.one_hot(t, var.classes).float()
        t = (
            torch.as_tensor(
                np.asarray(value, dtype=np.float32) if not torch.is_tensor(value) else value
            )
            .float()
            .to(dev)
        )
        shape = tuple(var.shape)
        if tuple(t.shape) == shape or (var.kind == "continuous" and t.ndim == 0):
            t = t.reshape(1, *shape).expand(n if n is not None else 1, *shape)
        elif var.kind == "continuous" and t.ndim == 1 and shape == (1,):
            t = t.reshape(-1, 1)
        if tuple(t.shape[1:]) != shape:
            raise ValueError(
                f"do({name}=…): expected shape {list(shape)} or [n, {list(shape)}], "
                f"got {list(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"do({name}=…): value contains NaN or inf")
        if var.kind == "image" and bool((t.abs() > 1.0 + 1e-4).any()):
            raise ValueError(f"do({name}=…): image values must lie in [-1, 1]")
        return t

    def decode(self, name: str, enc: torch.Tensor, hard: bool = True) -> torch.Tensor:
        kind = self.schema[name].kind
        if kind == "categorical":
            return enc.argmax(1) if hard else enc
        if kind == "image":
            return enc.clamp(-1.0, 1.0)
        return enc

    def features(self, name: str, enc: torch.Tensor) -> torch.Tensor:
        """Flat input a child generator sees (image -> standardised coder code, continuous ->
        standardised by the data's scale, categorical -> one-hot)."""
        kind = self.schema[name].kind
        if kind == "image":
            return self.coders[name].encode(enc)
        if kind == "continuous":
            return self.scales[name].standardise(enc)
        return enc

    def fit_scales(self, columns: Mapping[str, Any]) -> None:
        """Set each continuous variable's location and scale from real data (once; a fitted
        scale is kept, e.g. on resume): mechanisms then read standardised continuous parents and
        emit standardised values, so studies in any units train alike."""
        for v, sc in self.scales.items():
            if not bool(sc.fitted) and v in columns:
                sc.fit(torch.as_tensor(np.asarray(columns[v], np.float32)).reshape(-1, sc.dim))

    def code(self, name: str, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The standardised code of image ``name`` in ``values``: the code its latent mechanism
        drew when it was generated in that pass (:class:`SampledValues`), else its coder's
        encoding of the given pixels (data rows, do(X = image))."""
        codes = getattr(values, "codes", {})
        return codes[name] if name in codes else self.coders[name].encode(values[name])

    def condition(self, name: str, values: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        codes = getattr(values, "codes", {})
        parts = [
            codes[p] if p in codes else self.features(p, values[p]) for p in self.parents[name]
        ]
        if not parts:
            return torch.zeros(n, 0, device=self.device)
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ the sampler
    def forward_values(
        self,
        n: int,
        fixed: Mapping[str, torch.Tensor],
        needed: Iterable[str] | None = None,
        *,
        gen: torch.Generator | None = None,
        tau: float = 1.0,
        straight_through: bool = False,
        noise_seed: int | None = None,
    ) -> SampledValues:
        """ONE topological sampling loop over encoded values.

        ``fixed`` holds encoded values (n rows) that override mechanisms (do-values, or the real
        do-parents B of a training stage). ``needed`` limits which mechanisms run (default: all);
        their parents must be in ``fixed`` or ``needed``. Each mechanism draws its own noise and
        applies its own head (:class:`mdcm.nets.Mechanism`); image outputs stay linear (the
        prototype's tanh saturated) and are clamped by :meth:`decode`.

        Every variable's noise ``Z_V`` and every confounder's ``U`` come from their own stream,
        seeded from ``noise_seed`` (default: one draw from ``gen``): two calls with the same
        ``noise_seed`` share all exogenous noise, whichever mechanisms are overridden, which is
        what a twin network needs (design.md §5a).

        A latent image's children read the code its mixture drew, and its pixels are decoded
        only when read (:class:`SampledValues`); given images are read through their coder.
        """
        need = set(self.order if needed is None else needed) - set(fixed)
        values = fixed.select(fixed) if isinstance(fixed, SampledValues) else SampledValues(fixed)
        streams = NoiseStreams(self, gen, noise_seed)
        for v in self.order:
            if v not in need:
                continue
            missing = [p for p in self.parents[v] if p not in values]
            if missing:
                raise ValueError(
                    f"cannot generate {v}: parent(s) {', '.join(missing)} are neither "
                    "generated nor given"
                )
            mech, args = self.generators[v], (self.condition(v, values, n), streams.u(v, n))
            if self.latent_image(v):
                code = mech.code(*args, streams.own(v), tau=tau, straight_through=straight_through)
                values.set_latent(v, code, functools.partial(self.coders[v].decode, code))
                continue
            out = mech.sample(*args, streams.own(v), tau=tau, straight_through=straight_through)
            values.set(v, self.scales[v].restore(out) if v in self.scales else out)
        return values

    @torch.no_grad()
    def sample(
        self,
        n: int,
        do: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
        hard: bool = True,
        chunk: int = 8192,
    ) -> dict[str, torch.Tensor]:
        """``n`` samples of every variable from P(V) or P(V | do(...)).

        ``do`` values: int (categorical), float or sequence (continuous), image (C,H,W) in
        [-1, 1], or per-sample arrays/tensors of length ``n``. Returns categorical int64 (n,)
        (or probabilities-free one-hot when ``hard`` is False), continuous (n, d), image
        (n, C, H, W) clamped to [-1, 1]. Rows are drawn ``chunk`` at a time, fewer for large
        images (about :data:`SAMPLE_IMAGE_VALUES` image values per chunk: a decoder's
        activations for 4,000 images of 128x128 at once would need several GB).
        """
        self.check_schema()
        sizes = [int(np.prod(v.shape)) for v in self.schema.variables if v.kind == "image"]
        if sizes:
            chunk = min(chunk, max(64, SAMPLE_IMAGE_VALUES // max(sizes)))
        do = dict(do or {})
        for k in do:
            if k not in self.specs:
                raise ValueError(
                    f"do({k}=…): unknown variable; the model has {', '.join(self.order)}"
                )
        if n < 1:
            raise ValueError("n must be at least 1")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
        enc_do = {k: self.encode(k, v, n) for k, v in do.items()}
        for k, t in enc_do.items():
            if t.shape[0] != n:
                raise ValueError(f"do({k}=…): {t.shape[0]} per-sample values for n={n}")
        was = self.training
        self.eval()
        out: dict[str, list[torch.Tensor]] = {v: [] for v in self.order}
        try:
            for s in range(0, n, chunk):
                m = min(chunk, n - s)
                vals = self.forward_values(m, {k: t[s : s + m] for k, t in enc_do.items()}, gen=gen)
                for v in self.order:
                    out[v].append(self.decode(v, vals[v], hard))
        finally:
            self.train(was)
        return {v: torch.cat(out[v]) for v in self.order}


# ---------------------------------------------------------------------- model files
def _versions() -> dict:
    import safetensors

    from . import __version__

    return {
        "mdcm": __version__,
        "torch": torch.__version__,
        "safetensors": getattr(safetensors, "__version__", "?"),
    }


def state_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise tensors with safetensors (contiguous CPU copies; no pickle)."""
    from safetensors.torch import save

    return save(
        {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
        metadata=dict(metadata or {}),
    )


def read_safetensors(path: Path, what: str = "model") -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking it is one (refuses pickles, zips, truncation)."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{what} file {path}: cannot read ({exc})") from None
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    looks_ok = header_len > 0 and 8 + header_len <= len(data) and data[8:9] == b"{"
    if not looks_ok and (data[:1] == b"\x80" or data[:2] == b"PK"):
        raise ModelFileError(
            f"{what} file {path} is a pickle/torch.save payload, not safetensors; "
            "refusing to load it (pickles can run code)"
        )
    if len(data) < 8:
        raise ModelFileError(f"{what} file {path} is truncated ({len(data)} bytes)")
    if not looks_ok:
        raise ModelFileError(
            f"{what} file {path} is not a valid safetensors file (bad or truncated header)"
        )
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{what} file {path} is not a valid safetensors file: {exc}") from None


def save_model(
    model: DCM, path: Path, *, plan: Plan | None = None, extra: dict | None = None
) -> Path:
    """Write ``path/model.safetensors`` and ``path/model.json`` so that replacing a model can
    never leave the folder unloadable: the new weights go under a versioned name recorded in a
    new model.json first, and are only then renamed over ``model.safetensors``
    (:func:`replace_with_versioned`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    blob = state_bytes(model.state_dict(), {"format": MODEL_FORMAT})
    meta = {
        "format": MODEL_FORMAT,
        "graph": model.schema.graph.to_text(),
        "graph_json": model.schema.graph.to_json(),
        "schema": model.schema.to_json(),
        # "auto" written resolved: a later default cannot change what the weights mean
        "config": dict(model.config.to_json(), image_net=model.config.image_kind()),
        "parents": {v: list(p) for v, p in model.parents.items()},
        "plan": plan.to_json() if plan is not None else None,
        "versions": _versions(),
        "weights": "model.safetensors",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "extra": extra or {},
    }

    def write_json(names: Mapping[str, str]) -> None:
        atomic_write(
            path / "model.json",
            json.dumps(
                dict(meta, weights=names["model.safetensors"]), indent=1, default=str
            ).encode(),
        )

    replace_with_versioned(path, {"model.safetensors": blob}, write_json)
    return path


def read_model_json(path: Path) -> dict:
    """The model.json of a model folder, checked for format and migrated to the current one."""
    path = Path(path)
    jpath = path / "model.json" if path.is_dir() else path
    if not jpath.exists():
        raise ModelFileError(f"no model.json in {path}: not a saved mdcm model")
    if jpath.stat().st_size > MAX_JSON_BYTES:
        raise ModelFileError(f"{jpath} is too large to be a model description")
    try:
        meta = read_json_file(jpath)
    except JsonFileError as exc:
        raise ModelFileError(f"{jpath} {exc}") from None
    fmt = meta.get("format")
    if fmt in OLD_FORMATS:
        meta = _migrate(meta)
    elif fmt != MODEL_FORMAT:
        raise ModelFileError(f"{jpath}: unknown model format {fmt!r} (expected {MODEL_FORMAT})")
    return meta


def _migrate(meta: dict) -> dict:
    """A ``mdcm-model/1`` description in today's terms. Format 1 did not record
    ``coder_mlp_max`` (coders were MLPs up to 1024 values then), and wrote ``image_net="auto"``
    when "auto" meant pixel generators: MLP for images of at most 1024 values, conv above."""
    config = dict(meta.get("config") or {})
    config.setdefault("coder_mlp_max", 1024)
    if config.get("image_net", "auto") == "auto":
        try:
            schema = Schema.from_json(meta["schema"])
        except (KeyError, TypeError, ValueError):
            schema = None
        sizes = {
            "mlp" if int(np.prod(v.shape)) <= 1024 else "conv"
            for v in (schema.variables if schema else ())
            if v.kind == "image"
        }
        config["image_net"] = sizes.pop() if len(sizes) == 1 else "mlp"
    return dict(meta, format=MODEL_FORMAT, config=config)


def _same_schema(a: Schema, b: Schema) -> bool:
    return (
        (a.graph.nodes == b.graph.nodes or set(a.graph.nodes) == set(b.graph.nodes))
        and a.graph.directed == b.graph.directed
        and a.graph.bidirected == b.graph.bidirected
        and {v.name: _spec(v) for v in a.variables} == {v.name: _spec(v) for v in b.variables}
    )


def load_model(path: Path, *, expect_schema: Schema | None = None) -> DCM:
    """Load a model folder; refuses another graph/schema, tampered or truncated weights and
    non-safetensors payloads with :class:`ModelFileError`."""
    path = Path(path)
    meta = read_model_json(path)
    folder = path if path.is_dir() else path.parent
    try:
        schema = Schema.from_json(meta["schema"])
        config = ModelConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{folder}/model.json: bad schema or config ({exc})") from None
    if expect_schema is not None and not _same_schema(schema, expect_schema):
        raise ModelFileError(
            f"model in {folder} was trained for graph '{schema.graph}' with variables "
            f"{ {v.name: v.to_json() for v in schema.variables} }, but the study has graph "
            f"'{expect_schema.graph}' with variables "
            f"{ {v.name: v.to_json() for v in expect_schema.variables} }; retrain for this study"
        )
    # the weights file model.json names (a versioned name while a save is in progress), else the
    # fixed name; the name must be a plain file inside the folder
    wpath = folder / (plain_file_name(meta.get("weights"), folder) or "model.safetensors")
    if not wpath.exists():
        raise ModelFileError(f"{wpath} is missing")
    digest = hashlib.sha256(wpath.read_bytes()).hexdigest()
    tensors = read_safetensors(wpath)
    if digest != meta.get("sha256"):
        raise ModelFileError(
            f"{wpath} does not match the sha256 recorded in model.json "
            "(the file was modified, truncated or replaced)"
        )
    model = DCM(schema, config)
    missing = set(model.state_dict()) - set(tensors)
    unexpected = set(tensors) - set(model.state_dict())
    if missing or unexpected:
        raise ModelFileError(
            f"{wpath}: weights do not fit the recorded schema "
            f"(missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ModelFileError(f"{wpath}: weights do not fit the recorded schema ({exc})") from None
    for coder in model.coders.values():
        for p in coder.parameters():
            p.requires_grad_(False)
    model.record = dict(meta.get("extra") or {})  # how it was trained (stage fits per regime)
    model.eval()
    return model
