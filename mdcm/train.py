"""Stage-wise training of a DCM along a plan (Modular-DCM, Rahman & Kocaoglu 2024, Alg. 1).

For each stage (in plan order) the mechanisms ``H = stage.trains`` are trainable and every other
generator is frozen (``requires_grad`` False; gradients still flow THROUGH frozen generators to
trainable ones upstream). For every target (one per data regime) a batch of real rows ``(b, a)``
from that regime's dataset is compared with fake rows ``(b, G(do(B=b)))``: the DCM is sampled with
the do-parents ``B`` set to the SAME real values (per-sample do). The stage loss is the sum over
its targets, so every regime informs every stage it has a target in.

Objectives behind one interface (``TrainConfig.objective``):

* ``"wgan"``: WGAN-GP (Gulrajani et al. 2017; λ=10, Adam 2e-4 (0.5, 0.9), 2 critic steps), a
  packed critic per target (PacGAN), pixels plus code for images being trained, image codes
  otherwise; the generator loss adds ``mmd_weight`` × the MMD below (on the flat part and pooled
  pixels), which in bench runs halved the steps the image stage needed to match its fit check;
* ``"mmd"``: a kernel two-sample loss (MMD, Gretton et al. 2012; Li et al. 2015) over one-hot
  labels, standardised continuous values and the image code of a small autoencoder fitted on the
  study's real images — non-adversarial, no critic to balance (design.md §7);
* ``"mle"`` (chosen by ``"auto"`` only): maximum likelihood of the real values under mechanisms
  that have a likelihood (:meth:`mdcm.nets.Mechanism.log_prob`: categorical and latent image
  mechanisms), for stages whose targets are the plain conditional P(V | pa(V)) — any
  consistent conditional estimator is a valid mechanism there (Rahman & Kocaoglu 2024 fill such
  stages with pre-trained models);
* ``"auto"``: ``wgan`` for stages that train a pixel image mechanism, ``mle`` for plain-
  conditional stages of mechanisms with a likelihood, ``mmd`` otherwise. Chosen by
  bench/train_quality.py.

The loop (:meth:`_Trainer.stage`) reads like a training loop: set up a :class:`StageState`, step,
check the fit every ``check_every`` steps (:mod:`mdcm.fitcheck`), stop on
:func:`mdcm.fitcheck.stop_reason`, a step/time limit or a stop request, finish on the EMA weights
of the best check. Progress goes out through ``on_event`` callbacks only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _callable_module, checkpoints
from .coders import as_float_images, as_uint8_images, autocast
from .data import Dataset, ImageArray, Study
from .fidelity import pooled
from .fitcheck import (
    CLUSTERS,
    QUANTILES,
    DownstreamProbe,
    FitCheck,
    allowed_fit,
    kmeans,
    stop_reason,
)
from .model import DCM, SampledValues
from .nets import Critic, gradient_penalty, has_log_prob, mmd2
from .plan import Plan, Stage, Target

__all__ = [
    "TrainConfig",
    "Event",
    "StageState",
    "StageSummary",
    "TrainResult",
    "TrainingError",
    "pick_device",
    "train",
    "stage_objective",
    "StageResult",
    "prepare_stages",
    "train_stage",
]


class TrainingError(RuntimeError):
    """Training cannot go on: divergence (NaN/inf), out of memory, a plan that does not fit the
    model or the data, or an unusable pre-trained mechanism. The message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000  # max generator steps per stage
    batch_size: int = 64  # WGAN batch (a multiple of the packing, 4)
    objective: str = "auto"  # "wgan" | "mmd" | "auto"
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    time_limit_s: float | None = None  # per stage
    check_every: int = 200
    tolerance: float = 0.03  # fit-check TVD for early stop
    checkpoint_every: int = 1000
    stable_checks: int = 3  # consecutive checks within tolerance to stop early
    min_steps: int = 0  # never stop early before this many steps
    min_steps_continuous: int = 2000  # ... in a stage that trains a continuous variable: its
    # fit check reads it through 5 quantile bins, blind to a mean shift inside a bin
    # (frontdoor_continuous: stopped at 600-800 steps, E[Y | do(x)] kept 0.03-0.05 SD of the
    # confounding bias and the effect on the treated 0.17 SD; 2000 steps: 0.025 and 0.06)
    min_steps_confounded: int = 3000  # ... in a stage that trains two mechanisms joined by a
    # hidden confounder: its fit check (the observed joint, at a noise floor of 0.03-0.05 TVD)
    # cannot see how the shared noise is used, which is what interventional answers read
    # (napkin, seeds 0/1/2: stopped at 1,400-2,200 steps 0.044/0.009/0.004, 3,000 steps
    # 0.029/0.009/0.003)
    patience: int = 8  # stop ("plateau") after this many checks without a new
    # best fit (0 = never)
    lr: float = 2e-4  # WGAN generator and critic
    betas: tuple[float, float] = (0.5, 0.9)
    critic_steps: int = 2
    gp_weight: float = 10.0
    mmd_weight: float = 10.0  # WGAN stages: + weight * MMD(real, fake) in the G loss
    mmd_batch: int = 256
    mmd_lr: float = 1e-3
    ema: float = 0.995
    tau: float = 1.0  # Gumbel-softmax temperature (straight-through, hard)
    check_samples: int = 4096
    coder_steps: int = 2000  # autoencoder fit for image codes (600 lost 6% of the
    # digit identities in reconstructions, 2000 about 2%)
    log_every: int = 50
    keep_best: bool = True  # end a stage on the EMA weights of its best fit check
    amp: bool = True  # bf16 autocast of the forward passes on CUDA (no effect on a CPU)
    threads: int = 1  # CPU intra-op threads while training (0 = torch default).
    # Small networks gain nothing from more threads, and on a shared 2-core machine OpenMP
    # oversubscription made steps ~10x slower; the caller's setting is restored afterwards.

    def __post_init__(self) -> None:
        if self.objective not in ("wgan", "mmd", "auto"):
            raise ValueError(f"objective must be 'wgan', 'mmd' or 'auto', not {self.objective!r}")
        if self.steps < 0 or self.batch_size < 4 or self.check_every < 1:
            raise ValueError("steps >= 0, batch_size >= 4 and check_every >= 1 are required")
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_json(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Event:
    """One progress report. ``fits`` holds the fit check per regime (label -> TVD or None)."""

    kind: str  # "coder"|"stage_start"|"step"|"check"|"stage_end"|"checkpoint"|"done"|"error"
    stage: int
    step: int
    elapsed_s: float
    losses: Mapping[str, float] = field(default_factory=dict)
    quality: float | None = None
    message: str = ""
    fits: Mapping[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {
            "kind": self.kind,
            "stage": self.stage,
            "step": self.step,
            "elapsed_s": round(self.elapsed_s, 3),
            "losses": dict(self.losses),
            "quality": self.quality,
            "message": self.message,
        }
        if self.fits:
            out["fits"] = dict(self.fits)
        return out


@dataclass(frozen=True)
class StageSummary:
    stage: int
    trains: tuple[str, ...]
    objective: str
    steps: int
    seconds: float
    quality: float | None
    stopped_by: str  # "tolerance"|"plateau"|"steps"|"time"|"stop"|"pretrained"|"no data"
    fits: Mapping[str, float | None] = field(default_factory=dict)  # final fit per regime
    floor: float = 0.0  # the fit a perfect model would read (sampling noise of the check)

    def to_json(self) -> dict:
        d = asdict(self)
        d["trains"] = list(self.trains)
        d["fits"] = dict(self.fits)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StageSummary:
        return cls(
            d["stage"],
            tuple(d["trains"]),
            d["objective"],
            d["steps"],
            d["seconds"],
            d["quality"],
            d["stopped_by"],
            dict(d.get("fits") or {}),
            float(d.get("floor") or 0.0),
        )


@dataclass(frozen=True)
class TrainResult:
    stages: list[StageSummary]
    device: str
    seconds: float
    stopped: bool = False  # should_stop() ended training before the plan was finished

    def to_json(self) -> dict:
        return {
            "stages": [s.to_json() for s in self.stages],
            "device": self.device,
            "seconds": self.seconds,
            "stopped": self.stopped,
        }


def pick_device(name: str = "auto") -> torch.device:
    """The training device, decided once: "auto" = cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'"
        )
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TrainingError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


def stage_objective(model: DCM, stage: Stage, objective: str) -> str:
    """The objective a stage trains with: ``objective`` unless "auto", then WGAN-GP for stages
    that train a pixel image mechanism, maximum likelihood for mechanisms with a likelihood whose
    targets are all the plain conditional P(V | pa(V)), and MMD otherwise."""
    if objective != "auto":
        return objective
    schema = model.schema
    if any(schema[v].kind == "image" and not model.latent_image(v) for v in stage.trains):
        return "wgan"
    if stage.is_conditional and has_log_prob(model.generators[stage.trains[0]]):
        return "mle"
    return "mmd"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _stage_seed(seed: int, stage_id: int) -> int:
    return (seed * 1_000_003 + 7919 * (stage_id + 1)) % (2**62)


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """An image batch average-pooled to at most 7x7, flattened and scaled to unit norm per pixel
    count (the kernel loss's view of pixels being trained)."""
    h, w = x.shape[2:]
    x = torch.nn.functional.adaptive_avg_pool2d(x, (min(h, 7), min(w, 7))).flatten(1)
    return x / math.sqrt(x.shape[1])


# ---------------------------------------------------------------------- data
class _RegimeData:
    """A regime's real rows, encoded on the device: categorical one-hot, continuous float, images
    as stored (the 8-bit pixels of an :class:`mdcm.data.ImageArray` stay uint8, shared with the
    dataset on a CPU: a quarter of the memory of floats) and converted to float in [-1, 1] one
    batch at a time by :meth:`rows`."""

    def __init__(self, model: DCM, datasets: Sequence[Dataset], device: torch.device) -> None:
        self.model = model
        self.cols: dict[str, torch.Tensor] = {}
        self.images: set[str] = set()
        self._codes: dict[str, torch.Tensor] = {}
        for v in model.schema.names:
            cols = [d.columns[v] for d in datasets if v in d.columns]
            if len(cols) != len(datasets):
                continue
            var = model.schema[v]
            if var.kind == "image":
                if all(isinstance(c, ImageArray) for c in cols):
                    ts = [torch.from_numpy(np.ascontiguousarray(c.pixels)) for c in cols]
                else:
                    ts = [torch.as_tensor(np.asarray(c, dtype=np.float32)) for c in cols]
                self.cols[v] = (torch.cat(ts) if len(ts) > 1 else ts[0]).to(device)
                self.images.add(v)
                continue
            parts = [np.asarray(c) for c in cols]
            arr = np.concatenate(parts) if len(parts) > 1 else parts[0]
            if var.kind == "categorical":
                t = torch.as_tensor(arr, dtype=torch.long)
                self.cols[v] = torch.nn.functional.one_hot(t, var.classes).float().to(device)
            else:
                t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
                if var.kind == "continuous":
                    t = t.reshape(len(arr), -1)
                self.cols[v] = t.to(device)
        self.n = sum(d.n for d in datasets)

    def codes(self, v: str) -> torch.Tensor | None:
        """The standardised codes of every real image of ``v`` (encoded once, in chunks, the
        first time they are asked for after the coder was fitted; the coder is frozen from
        then on), or None before the fit."""
        coder = self.model.coders[v]
        if v not in self._codes and bool(coder.fitted):
            x = self.cols[v]
            with torch.no_grad():
                self._codes[v] = torch.cat(
                    [coder.encode(as_float_images(x[i : i + 512])) for i in range(0, len(x), 512)]
                )
        return self._codes.get(v)

    def rows(self, idx: torch.Tensor, names: Sequence[str], *, raw: bool = False) -> SampledValues:
        """The rows ``idx`` of ``names``. Images carry their cached codes (what children, losses
        and fit checks read: no encoder pass per step) and their pixels, as float in [-1, 1]
        converted only when read, or as stored with ``raw`` (uint8 for 8-bit columns)."""
        plain = [v for v in names if v not in self.images or raw]
        out = SampledValues({v: self.cols[v][idx] for v in plain})
        for v in names:
            if v not in self.images:
                continue
            codes = self.codes(v)
            if raw:
                if codes is not None:
                    out.codes[v] = codes[idx]
                continue
            pixels = functools.partial(_float_rows, self.cols[v], idx)
            if codes is not None:
                out.set_latent(v, codes[idx], pixels)
            else:
                out.set(v, pixels())
        return out


def _float_rows(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return as_float_images(images[idx])


# ---------------------------------------------------------------------- one target's matcher
class _Matcher:
    """Matches one target of one stage: the row layout (flat labels/values/codes plus pixels), the
    critic (WGAN), the feature scaling, real and fake rows, and the target's fit check."""

    def __init__(
        self,
        model: DCM,
        stage: Stage,
        target: Target,
        data: _RegimeData,
        objective: str,
        config: TrainConfig,
        device: torch.device,
        rng: np.random.RandomState,
    ) -> None:
        self.target = target
        self.data = data
        self.model = model
        self.objective = objective
        schema = model.schema
        trains = set(stage.trains)
        self.given = tuple(target.given)
        self.matches = tuple(target.matches)
        self.rows = self.given + self.matches
        missing = [v for v in self.rows if v not in data.cols]
        if missing:
            raise TrainingError(
                f"stage {stage.id}: the {target.regime.label} data have no "
                f"column(s) {', '.join(missing)}"
            )
        # Row layout: flat part (labels, continuous, codes of images not trained here) + pixels.
        # Trained images: pixels (WGAN: conv critic input; MMD: pooled pixels) plus their code;
        # other images (frozen or given): only their code.
        # (an intervened image of the stage sits in `given` in that regime: not trained there)
        self.trained_images = [v for v in self.matches if schema[v].kind == "image" and v in trains]
        self.pixel_vars = self.trained_images if objective == "wgan" else []
        self.pool_vars = self.trained_images if objective == "mmd" else []
        self.code_vars = [v for v in self.rows if schema[v].kind == "image"]
        self.flat_vars = [v for v in self.rows if schema[v].kind != "image"]
        # Continuous standardisation from the real data (so kernels and critics see unit scale).
        self.scale: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for v in self.flat_vars:
            if schema[v].kind == "continuous":
                x = data.cols[v]
                self.scale[v] = (x.mean(0), x.std(0).clamp_min(1e-3) * math.sqrt(x.shape[1]))
        self.readers = self._readers(stage)
        self.critic: Critic | None = None
        if objective == "wgan":
            flat_dim = sum(schema[v].width for v in self.flat_vars)
            flat_dim += model.config.code_dim * len(self.code_vars)
            flat_dim += sum(len(r.mean) for r in self.readers.values())
            self.critic = Critic(
                flat_dim,
                [schema[v].shape for v in self.pixel_vars],
                hidden=max(model.config.hidden, 64),
                channels=model.config.image_channels,
            ).to(device)
        graph = model.schema.graph
        probed = any(c in data.cols for v in self.trained_images for c in graph.children(v))
        # rows kept out of the check to fit the downstream probes on (a third, at most 4096)
        n_probe = min(4096, data.n // 3) if probed else 0
        n_check = min(config.check_samples, data.n - n_probe)
        self.check_idx = torch.as_tensor(
            np.sort(rng.choice(data.n, n_check, replace=False)), device=device
        )
        self.fit = FitCheck(
            self.given,
            self.matches,
            {v: schema[v].kind for v in self.rows},
            self.data.rows(self.check_idx, self.rows, raw=True),
            lambda v, x: model.coders[v].encode(x),
            rng,
            self._probes(stage, rng),
        )

    def _probes(self, stage: Stage, rng: np.random.RandomState) -> dict[str, DownstreamProbe]:
        """Probes of what the children of each image trained here read (fitted on real rows
        the fit check does not use): the image stage's downstream fit (issue #10.4)."""
        graph = self.model.schema.graph
        free = np.setdiff1d(np.arange(self.data.n), self.check_idx.cpu().numpy())
        idx = torch.as_tensor(rng.permutation(free)[:4096], device=self.check_idx.device)
        out = {}
        for v in self.trained_images:
            kids = [c for c in graph.children(v) if c in self.data.cols]
            if len(idx) < 200 or not kids:
                continue
            probe = self._child_probe(v, kids, idx, rng, stage.id)
            if probe is not None:
                out[v] = probe
        return out

    def _child_probe(
        self, v: str, kids: Sequence[str], idx: torch.Tensor, rng: np.random.RandomState, seed: int
    ) -> DownstreamProbe | None:
        """A probe from image ``v``'s code to each child in ``kids`` (their classes, quintiles
        or code clusters), fitted on the real rows ``idx``; None when nothing can be read."""
        targets, classes = {}, {}
        for c in kids:  # an image child is read through its cached codes (no encoder pass)
            x = self.data.codes(c) if c in self.data.images else self.data.cols[c]
            if x is None:
                continue
            y, k = _probe_target(self.model, c, x[idx], rng)
            if k > 1:
                targets[c], classes[c] = y, k
        codes = self.data.codes(v)  # None only without a fitted coder: nothing to read
        if not targets or codes is None:
            return None
        return DownstreamProbe(codes[idx], targets, classes, seed=seed)

    def _readers(self, stage: Stage) -> dict[str, _Reader]:
        """Kernel features for what the mechanisms trained here read from an image (issue #11).

        The children's dependence on an image is one direction of its code among ``code_dim``;
        the kernel on the code alone barely saw it, so a child learned to read the image weakly
        (real PneumoniaMNIST front-door, seed 0: the model's P(N=1 | do(X=x)) differed by 0.25
        between pneumonia and normal X-rays against 0.36 in truth, and the front-door answer
        inherits that attenuation). A probe from the code to each trained child, fitted on real
        rows, adds that direction as its own feature: a fixed function of the code, so the kernel
        still compares the same joint distribution, now with weight where the children look."""
        graph, schema, data = self.model.schema.graph, self.model.schema, self.data
        trains = set(stage.trains)
        rng = np.random.RandomState(7919 + stage.id)  # own stream: other rows' draws unchanged
        out: dict[str, _Reader] = {}
        for v in self.code_vars:
            kids = [
                c
                for c in graph.children(v)
                if c in trains and c in self.matches and schema[c].kind != "image"
            ]
            if not kids or data.n < 200:
                continue
            idx = torch.as_tensor(
                np.sort(rng.choice(data.n, min(data.n, 4096), replace=False)),
                device=data.cols[kids[0]].device,
            )
            probe = self._child_probe(v, kids, idx, rng, stage.id)
            if probe is not None:
                out[v] = _Reader.fit(probe, data.codes(v)[idx])
        return out

    @property
    def label(self) -> str:
        return self.target.regime.label

    def flat(self, vals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The flat features of rows: standardised labels/values, scaled codes, pooled pixels."""
        parts = []
        for v in self.flat_vars:
            x = vals[v]
            if v in self.scale:
                mu, sd = self.scale[v]
                x = (x - mu) / sd
            parts.append(x)
        k = math.sqrt(self.model.config.code_dim)
        codes = {v: self.model.code(v, vals) for v in self.code_vars}
        parts += [codes[v] / k for v in self.code_vars]
        parts += [r(codes[v]) for v, r in self.readers.items()]
        parts += [_pooled(vals[v]) for v in self.pool_vars]
        return torch.cat(parts, dim=1)

    def mmd_features(self, vals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Kernel features of WGAN stages: the flat part plus pooled pixels of trained images."""
        return torch.cat([self.flat(vals)] + [_pooled(vals[v]) for v in self.pixel_vars], dim=1)

    def real(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.data.rows(idx, self.rows)

    def fake(
        self, real: Mapping[str, torch.Tensor], gen: torch.Generator, tau: float, grad: bool
    ) -> dict[str, torch.Tensor]:
        """Rows (b, G(do(B=b))): A generated with the do-parents set to the real rows' b."""
        if isinstance(real, SampledValues):  # given images keep their codes, pixels unread
            fixed: Mapping[str, torch.Tensor] = real.select(self.given)
        else:
            fixed = {v: real[v] for v in self.given}
        with torch.set_grad_enabled(grad):
            return self.model.forward_values(
                next(iter(real.values())).shape[0],
                fixed,
                self.matches,
                gen=gen,
                tau=tau,
                straight_through=grad,
            )

    def fake_rows(
        self, real: Mapping[str, torch.Tensor], gen: torch.Generator, tau: float
    ) -> Mapping[str, torch.Tensor]:
        """:meth:`fake` without gradients for many rows, in chunks small enough for large images
        (:func:`_chunk_rows`); with more than one chunk, generated images are kept as 8-bit
        pixels like the data's, and latent images keep their codes and are decoded (chunk by
        chunk) only if read."""
        n = len(next(iter(real.values())))
        step = _chunk_rows(self.model)
        with torch.no_grad():
            if step >= n:
                return self.fake(real, gen, tau, grad=False)
            parts = []
            for i in range(0, n, step):
                self._poll()
                rows = (
                    real.take(slice(i, i + step))
                    if isinstance(real, SampledValues)
                    else {v: x[i : i + step] for v, x in real.items()}
                )
                parts.append(self.fake(rows, gen, tau, grad=False))
        codes = {v: torch.cat([p.codes[v] for p in parts]) for v in parts[0].codes}

        def pixels(v: str) -> torch.Tensor:
            out = []
            with torch.no_grad():
                for i in range(0, n, step):
                    self._poll()
                    out.append(as_uint8_images(self.model.coders[v].decode(codes[v][i : i + step])))
            return torch.cat(out)

        images = {v for v in parts[0] if self.model.schema[v].kind == "image"}
        plain = {
            v: torch.cat([as_uint8_images(p[v]) if v in images else p[v] for p in parts])
            for v in parts[0]
            if v not in codes
        }
        return SampledValues(plain, codes, {v: functools.partial(pixels, v) for v in codes})

    #: polled between the chunks of long no-grad passes (the trainer sets its should_stop)
    should_stop: Callable[[], bool] = staticmethod(lambda: False)

    def _poll(self) -> None:
        if self.should_stop():
            raise _StopRequested

    def check(self, gen: torch.Generator, tau: float) -> float | None:
        """The fit check on the held check rows (None when it has nothing to read)."""
        if self.fit.empty:
            return None
        real = self.data.rows(self.check_idx, self.rows, raw=True)
        return self.fit.tvd(real, self.fake_rows(real, gen, tau))


@dataclass(frozen=True)
class _Reader:
    """A frozen probe's centred logits for an image's trained children, standardised on real
    rows (unit variance per child, like a one-hot label): see :meth:`_Matcher._readers`."""

    probe: DownstreamProbe
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    @torch.no_grad()
    def fit(cls, probe: DownstreamProbe, codes: torch.Tensor) -> _Reader:
        """Standardise ``probe``'s centred logits on the real ``codes``; a child of k classes
        spreads its unit variance over its k columns."""
        z = cls.centred(probe, codes)
        ks = [head[-1].out_features for head in probe.heads.values()]
        width = torch.cat([torch.full((k,), math.sqrt(k)) for k in ks])
        return cls(probe, z.mean(0), z.std(0).clamp_min(1e-3) * width.to(z.device))

    @staticmethod
    def centred(probe: DownstreamProbe, codes: torch.Tensor) -> torch.Tensor:
        z = [x - x.mean(1, keepdim=True) for x in probe.logits(codes).values()]
        return torch.cat(z, dim=1)

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        return (self.centred(self.probe, codes) - self.mean) / self.std


class _StopRequested(Exception):
    """A stop request seen between the chunks of a fit check: the stage stops as it would
    between two steps (with a checkpoint), instead of finishing a check of large images."""


#: image values (pixels x rows) generated at once outside training steps (fit checks, warnings)
CHUNK_VALUES = 2**21


def _chunk_rows(model: DCM) -> int:
    """Rows per chunk when generating outside a training step: all at once for small images,
    about :data:`CHUNK_VALUES` image values per chunk for large ones (at least 64)."""
    sizes = [math.prod(v.shape) for v in model.schema.variables if v.kind == "image"]
    return max(64, CHUNK_VALUES // max(sizes, default=1))


def _probe_target(
    model: DCM, child: str, x: torch.Tensor, rng: np.random.RandomState
) -> tuple[np.ndarray, int]:
    """A child's values ``x`` as classes for a downstream probe: categorical as they are,
    continuous as quintiles of the first dimension, images (``x``: their codes) as k-means
    clusters."""
    kind = model.schema[child].kind
    if kind == "categorical":
        return x.argmax(1).cpu().numpy(), x.shape[1]
    if kind == "continuous":
        edges = torch.quantile(x[:, 0], torch.tensor(QUANTILES, device=x.device))
        return torch.bucketize(x[:, 0].contiguous(), edges).cpu().numpy(), len(QUANTILES) + 1
    centroids = kmeans(x, CLUSTERS, rng)
    return torch.cdist(x, centroids).argmin(1).cpu().numpy(), len(centroids)


# ---------------------------------------------------------------------- stage state
class _EMA:
    """Exponential moving average of the trained weights (design.md §7: steadier estimates)."""

    def __init__(self, params: Mapping[str, nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, params: Mapping[str, nn.Parameter]) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in params.items():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1 - d)


@contextlib.contextmanager
def _swapped(params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor]) -> Iterator:
    """Temporarily load ``state`` into ``params``."""
    saved = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


@dataclass
class StageState:
    """Everything a stage's loop carries from step to step, and what its checkpoint holds."""

    stage: Stage
    objective: str
    seed: int
    params: dict[str, nn.Parameter]
    matchers: list[_Matcher]
    gen_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer | None
    gen: torch.Generator
    ema: _EMA
    batch: int
    floor: float = 0.0  # the fit check's sampling-noise floor (worst target): a perfect model's
    step: int = 0
    history: list[float | None] = field(default_factory=list)
    best_quality: float | None = None
    best: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0  # spent in earlier attempts (resume)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict, dict]:
        """(tensors, optimiser/RNG state, JSON state) of a mid-stage checkpoint."""
        tensors = {f"ema.{k}": v for k, v in self.ema.shadow.items()}
        tensors |= {f"best.{k}": v for k, v in (self.best or {}).items()}
        for i, m in enumerate(self.matchers):
            if m.critic is not None:
                tensors |= {f"critic{i}.{k}": v for k, v in m.critic.state_dict().items()}
        optim = {
            "gen_opt": self.gen_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict() if self.critic_opt else {},
            "rng": self.gen.get_state(),
        }
        state = {
            "step": self.step,
            "ema_updates": self.ema.updates,
            "history": self.history,
            "best_quality": self.best_quality,
            "stage_seconds": self.seconds,
        }
        return tensors, optim, state

    def load_state_dict(
        self, tensors: Mapping[str, torch.Tensor], optim: dict, state: dict
    ) -> None:
        device = self.gen.device
        for k, v in _strip(tensors, "ema.").items():
            self.ema.shadow[k].copy_(v)
        self.ema.updates = state["ema_updates"]
        best = _strip(tensors, "best.")
        self.best = {k: v.to(device) for k, v in best.items()} if best else None
        for i, m in enumerate(self.matchers):
            if m.critic is not None:
                m.critic.load_state_dict(_strip(tensors, f"critic{i}."))
        self.gen_opt.load_state_dict(optim["gen_opt"])
        if self.critic_opt is not None:
            self.critic_opt.load_state_dict(optim["critic_opt"])
        self.gen.set_state(optim["rng"])
        self.step = state["step"]
        self.history = list(state["history"])
        self.best_quality = state["best_quality"]
        self.seconds = state.get("stage_seconds", 0.0)


# ---------------------------------------------------------------------- pre-trained mechanisms
def _continuous_columns(study: Study, model: DCM) -> dict[str, np.ndarray]:
    """Each continuous variable's values over every dataset that records it (its scale)."""
    out = {}
    for v in model.scales:
        parts = [np.asarray(d.columns[v], np.float32) for d in study.datasets if v in d.columns]
        if parts:
            out[v] = np.concatenate([p.reshape(len(p), -1) for p in parts])
    return out


def _install_pretrained(model: DCM, v: str, source: DCM | nn.Module) -> None:
    target = model.generators[v]
    if isinstance(source, DCM) and v in model.scales and v in source.scales:
        model.scales[v].load_state_dict(source.scales[v].state_dict())  # its output's units
    if isinstance(source, DCM):
        if v not in source.generators:
            raise TrainingError(f"pre-trained model has no mechanism for {v!r}")
        if source.specs.get(v) != model.specs[v]:
            raise TrainingError(
                f"pre-trained mechanism for {v!r} was built for "
                f"{source.specs.get(v)}, the study has {model.specs[v]}"
            )
        if [source.schema[p].kind for p in source.parents[v]] != [
            model.schema[p].kind for p in model.parents[v]
        ]:
            raise TrainingError(
                f"pre-trained mechanism for {v!r} reads parents "
                f"{list(source.parents[v])}, the study's graph gives "
                f"{list(model.parents[v])}"
            )
        source = source.generators[v]
    if not isinstance(source, nn.Module):
        raise TrainingError(
            f"pretrained[{v!r}] must be a DCM or a torch module, not {type(source).__name__}"
        )
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise TrainingError(
            f"pre-trained mechanism for {v!r} does not fit this model's "
            f"generator ({type(target).__name__}): {str(exc)[:300]}"
        ) from None


# ---------------------------------------------------------------------- the trainer
def train(
    model: DCM,
    plan: Plan,
    study: Study,
    config: TrainConfig = TrainConfig(),
    on_event: Callable[[Event], None] = lambda e: None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    pretrained: Mapping[str, DCM | nn.Module] | None = None,
) -> TrainResult:
    """Train ``model`` along ``plan`` on ``study`` (see the module docstring).

    Emits :class:`Event` s through ``on_event``; ``should_stop()`` is polled every step and during
    the image coders' fit (a checkpoint is written before returning when ``checkpoint_dir`` is
    set). With ``resume`` the run continues from ``checkpoint_dir``'s last checkpoint and is
    step-for-step identical to an uninterrupted run on the same device.
    ``pretrained={"V": dcm_or_module}`` fills the stage of V when its targets are the plain
    conditional P(V | pa(V)).
    """
    trainer = _Trainer(
        model,
        plan,
        study,
        config,
        on_event,
        should_stop,
        Path(checkpoint_dir) if checkpoint_dir is not None else None,
        dict(pretrained or {}),
    )
    return trainer.run(resume)


# ---------------------------------------------------------------------- one stage at a time
@dataclass(frozen=True)
class StageResult:
    """What :func:`train_stage` trained: the stage's summary and the state of its variables
    (the model's state-dict entries ``<part>.V.…`` of V in ``stage.trains``: ``generators``,
    ``scales``, ``coders``; on the CPU), ready to be merged into another copy of the model."""

    summary: StageSummary
    state: dict[str, torch.Tensor]


def prepare_stages(
    model: DCM,
    plan: Plan,
    study: Study,
    config: TrainConfig = TrainConfig(),
    on_event: Callable[[Event], None] = lambda e: None,
    should_stop: Callable[[], bool] = lambda: False,
    pretrained: Mapping[str, DCM | nn.Module] | None = None,
) -> bool:
    """Do what :func:`train` does before its first stage, exactly (same seed, same order): the
    continuous variables' data scales, the pre-trained image coders, the fit of the others on
    the study's real images. False when a stop request ended a fit. For schedulers that train
    the stages one by one (:func:`train_stage`, :mod:`mdcm.scheduler`)."""
    trainer = _Trainer(
        model, plan, study, config, on_event, should_stop, None, dict(pretrained or {})
    )

    def work() -> bool:
        trainer._prepare()
        return trainer._before_stages()

    return trainer._guarded(work)


def train_stage(
    model: DCM,
    plan: Plan,
    study: Study,
    stage_id: int,
    config: TrainConfig = TrainConfig(),
    on_event: Callable[[Event], None] = lambda e: None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    pretrained: Mapping[str, DCM | nn.Module] | None = None,
) -> StageResult:
    """Train ONE stage of ``plan`` on ``model``, exactly as :func:`train` trains it.

    The stage's result depends only on the weights of the mechanisms it runs frozen (those of
    the stages it depends on, which must be trained already), its own seed and the data, so
    independent stages can be trained in separate processes and merged back
    (:mod:`mdcm.scheduler`). :func:`prepare_stages` must have run on the model first.
    ``checkpoint_dir`` receives this stage's mid-stage checkpoints; ``resume`` continues from
    the one there (step for step as if never interrupted)."""
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    trainer = _Trainer(
        model, plan, study, config, on_event, should_stop, ckdir, dict(pretrained or {})
    )
    return trainer._guarded(lambda: trainer._one_stage(stage_id, resume))


class _Trainer:
    def __init__(
        self,
        model: DCM,
        plan: Plan,
        study: Study,
        config: TrainConfig,
        on_event: Callable[[Event], None],
        should_stop: Callable[[], bool],
        ckdir: Path | None,
        pretrained: dict[str, DCM | nn.Module],
    ) -> None:
        self.model, self.plan, self.study, self.cfg = model, plan, study, config
        self.on_event, self.should_stop = on_event, should_stop
        self.ckdir, self.pretrained = ckdir, pretrained
        self.device = pick_device(config.device)
        self.t0 = time.monotonic()
        self._check_inputs()

    # -- validation
    def _check_inputs(self) -> None:
        m, plan = self.model, self.plan
        try:
            m.check_schema(self.study.schema)
        except ValueError as exc:
            raise TrainingError(f"the model does not fit the study: {exc}") from None
        pg = plan.graph
        if (
            set(pg.nodes) != set(m.parents)
            or pg.directed != m.schema.graph.directed
            or pg.bidirected != m.schema.graph.bidirected
        ):
            raise TrainingError(
                "the plan was made for another graph than the model's "
                f"('{pg}' vs '{m.schema.graph}'); make a new plan"
            )
        trained = [v for s in plan.stages for v in s.trains]
        if sorted(trained) != sorted(m.parents):
            raise TrainingError(
                f"the plan trains {sorted(trained)}, the model has {sorted(m.parents)}"
            )
        for v in self.pretrained:
            if v not in m.parents:
                raise TrainingError(f"pretrained mechanism for unknown variable {v!r}")

    def emit(self, kind: str, stage: int, step: int, **kw: Any) -> None:
        self.on_event(Event(kind, stage, step, time.monotonic() - self.t0, **kw))

    # -- the whole plan
    def run(self, resume: bool) -> TrainResult:
        return self._guarded(lambda: self._run(resume))

    def _guarded(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` with the training thread count; errors become events (and memory
        errors an actionable TrainingError)."""
        prev = torch.get_num_threads()
        if self.cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads)
        try:
            return work()
        except TrainingError as exc:
            self.emit("error", -1, 0, message=str(exc))
            raise
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            # CUDA OOM, or torch's CPU allocator failing (a plain RuntimeError): same advice
            cpu = not isinstance(exc, torch.cuda.OutOfMemoryError)
            if cpu and not _is_cpu_oom(exc):
                raise
            msg = (
                f"out of {'CPU' if cpu else 'GPU'} memory at batch_size="
                f"{self.cfg.batch_size} (mmd_batch={self.cfg.mmd_batch}); try a smaller "
                f"batch, e.g. batch_size={max(4, self.cfg.batch_size // 2)}"
            )
            self.emit("error", -1, 0, message=msg)
            raise TrainingError(msg) from None
        finally:
            torch.set_num_threads(prev)

    def _prepare(self) -> None:
        """Seed, move the model to the device and encode each regime's data (the start of
        :func:`train`, :func:`fit_coders` and :func:`train_stage`)."""
        _seed_all(self.cfg.seed)
        self.model.to(self.device)
        regimes: dict[frozenset[str], list[Dataset]] = {}
        for d in self.study.datasets:
            regimes.setdefault(frozenset(d.do), []).append(d)
        self.data = {k: _RegimeData(self.model, v, self.device) for k, v in regimes.items()}

    def _run(self, resume: bool) -> TrainResult:
        model = self.model
        self._prepare()
        summaries: list[StageSummary] = []
        start_stage, ck = 0, None
        if resume:
            if self.ckdir is None:
                raise TrainingError("resume=True needs a checkpoint_dir")
            ck = self._load_checkpoint()
            if ck is not None:
                tensors, _, state = ck
                model.load_state_dict(_strip(tensors, "model."))
                start_stage = state["stage_index"]
                summaries = [StageSummary.from_json(s) for s in state["summaries"]]
        stopped = not self._before_stages()
        for si in range(start_stage, len(self.plan.stages)):
            if stopped:
                break
            summary = self.stage(si, summaries, ck if (ck and si == start_stage) else None)
            summaries.append(summary)
            if summary.stopped_by == "stop":
                stopped = True
                break
            if self.ckdir is not None:
                self._checkpoint(si + 1, summaries, None)
        if stopped and self.ckdir is not None and not summaries[start_stage:]:
            self._checkpoint(start_stage, summaries, None)  # stopped during the coder fit
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        result = TrainResult(summaries, str(self.device), time.monotonic() - self.t0, stopped)
        self.emit(
            "done",
            len(self.plan.stages) - 1,
            0,
            message="stopped" if stopped else "finished",
            quality=max((s.quality for s in summaries if s.quality is not None), default=None),
        )
        return result

    def _one_stage(self, stage_id: int, resume: bool) -> StageResult:
        """:func:`train_stage`: prepare, resume the stage's checkpoint, train, hand back."""
        index = {s.id: i for i, s in enumerate(self.plan.stages)}
        if stage_id not in index:
            raise TrainingError(f"the plan has no stage {stage_id}; its stages are {list(index)}")
        si, stage = index[stage_id], self.plan.stages[index[stage_id]]
        self._prepare()
        unfitted = [
            v
            for v, part in (*self.model.coders.items(), *self.model.scales.items())
            if not bool(part.fitted) and any(v in d.cols for d in self.data.values())
        ]
        if unfitted:
            raise TrainingError(
                f"the image code or data scale of {', '.join(unfitted)} is not fitted; "
                "run mdcm.train.prepare_stages before training single stages"
            )

        def own(key: str) -> bool:  # <part>.V.… of V in H
            parts = key.split(".")
            return len(parts) > 2 and parts[1] in stage.trains

        ck = None
        if resume:
            if self.ckdir is None:
                raise TrainingError("resume=True needs a checkpoint_dir")
            ck = self._load_checkpoint()
            if ck is not None:
                if ck[2].get("stage_index") != si:
                    raise TrainingError(
                        f"checkpoint in {self.ckdir} belongs to stage index "
                        f"{ck[2].get('stage_index')}, not to stage {stage_id}"
                    )
                mine = {k: v for k, v in _strip(ck[0], "model.").items() if own(k)}
                self.model.load_state_dict(mine, strict=False)
        summary = self.stage(si, [], ck)
        for p in self.model.parameters():
            p.requires_grad_(False)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items() if own(k)}
        return StageResult(summary, state)

    def _before_stages(self) -> bool:
        """What every run does before its first stage: the continuous variables' data scales,
        the pre-trained image coders, the fit of the others (False when a stop ended it)."""
        self.model.fit_scales(_continuous_columns(self.study, self.model))
        self._pretrained_coders()
        return self._fit_coders()

    def _pretrained_coders(self) -> None:
        """A latent image mechanism emits codes of ITS autoencoder: reusing it means reusing that
        coder too (installed before any stage, so every child reads the same code)."""
        for v, source in self.pretrained.items():
            if not self.model.latent_image(v):
                continue
            if not isinstance(source, DCM) or not source.latent_image(v):
                what = "a pixel-image DCM" if isinstance(source, DCM) else type(source).__name__
                raise TrainingError(
                    f"pre-trained mechanism for image {v!r}: this model's image mechanisms are "
                    "latent (they emit codes of the study's image autoencoder), so pass the "
                    f"trained DCM whose latent mechanism you want to reuse, not {what}"
                )
            if not bool(source.coders[v].fitted):
                raise TrainingError(
                    f"pre-trained mechanism for image {v!r}: its model's image "
                    "coder was never fitted (the model is untrained)"
                )
            if source.config.code_dim != self.model.config.code_dim:
                raise TrainingError(
                    f"pre-trained mechanism for image {v!r}: its model has "
                    f"code_dim={source.config.code_dim}, this model "
                    f"code_dim={self.model.config.code_dim}"
                )
            try:
                self.model.coders[v].load_state_dict(source.coders[v].state_dict())
            except RuntimeError as exc:
                raise TrainingError(
                    f"pre-trained image coder for {v!r} does not fit this model's: {str(exc)[:300]}"
                ) from None
            for p in self.model.coders[v].parameters():
                p.requires_grad_(False)

    def _fit_coders(self) -> bool:
        """Fit every unfitted image coder on the real images of all regimes; False when a stop
        request ended a fit (the coder stays unfitted, so a resume fits it again)."""
        for v, coder in self.model.coders.items():
            if bool(coder.fitted):
                continue
            ims = [d.cols[v] for d in self.data.values() if v in d.cols]
            if not ims:
                continue
            if len({x.dtype for x in ims}) > 1:  # 8-bit and float regimes: all float
                ims = [as_float_images(x) for x in ims]
            total = self.cfg.coder_steps
            self.emit("coder", -1, 0, message=f"fitting the image code of {v} ({total} steps)")

            def progress(step: int, mse: float, v: str = v) -> None:
                self.emit("coder", -1, step, losses={f"coder_{v}_mse": mse})

            with torch.enable_grad():
                for p in coder.parameters():
                    p.requires_grad_(True)
                mse = coder.fit(
                    torch.cat(ims),
                    steps=total,
                    seed=self.cfg.seed,
                    on_progress=progress,
                    should_stop=self.should_stop,
                    amp=self.cfg.amp,
                )
            if mse is None:
                self.emit("coder", -1, 0, message=f"stopped while fitting the image code of {v}")
                return False
            self.emit(
                "coder",
                -1,
                total,
                losses={f"coder_{v}_mse": mse},
                message=f"fitted the image code of {v} (reconstruction MSE {mse:.4f})",
            )
        return True

    # -- checkpoints
    def _load_checkpoint(self) -> checkpoints.Checkpoint | None:
        assert self.ckdir is not None
        try:
            ck = checkpoints.load(self.ckdir)
        except checkpoints.CheckpointError as exc:
            raise TrainingError(f"{exc}; start again without resume") from None
        if ck is not None and ck[2].get("plan") != _plan_json(self.plan):
            raise TrainingError(f"checkpoint in {self.ckdir} was made for another plan")
        if ck is not None and ck[2].get("scheduler"):
            raise TrainingError(
                f"checkpoint in {self.ckdir} was written by a parallel run (mdcm.scheduler); "
                "resume it with workers (mdcm train --resume --workers N or --ray-address)"
            )
        return ck

    def _checkpoint(
        self, stage_index: int, summaries: list[StageSummary], st: StageState | None
    ) -> None:
        assert self.ckdir is not None
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim: dict = {}
        state: dict[str, Any] = {"step": 0}
        if st is not None:
            extra, optim, state = st.state_dict()
            tensors |= extra
        state |= {
            "stage_index": stage_index,
            "plan": _plan_json(self.plan),
            "config": self.cfg.to_json(),
            "summaries": [s.to_json() for s in summaries],
        }
        checkpoints.save(self.ckdir, tensors, optim, state)
        self.emit("checkpoint", stage_index, state["step"], message=str(self.ckdir))

    # -- one stage: setup, loop, finish
    def stage(
        self, si: int, summaries: list[StageSummary], ck: checkpoints.Checkpoint | None = None
    ) -> StageSummary:
        """Train stage ``si`` of the plan (resuming from ``ck`` when it holds this stage)."""
        stage = self.plan.stages[si]
        objective = stage_objective(self.model, stage, self.cfg.objective)
        t_start = time.monotonic()
        start = (
            f"stage {stage.id}: training the model of {_and(stage.trains)} "
            f"({_OBJECTIVE_WORDS[objective]}; objective {objective})"
        )
        specs = [t for t in stage.targets if frozenset(t.regime.do) in self.data]
        if any(v in self.pretrained for v in stage.trains):
            names = ", ".join(stage.trains)
            msg = f"stage {stage.id}: {names} comes from a mechanism trained elsewhere"
            self.emit("stage_start", stage.id, 0, message=msg)
            return self._fill_pretrained(stage, t_start)
        if not specs:
            self.emit("stage_start", stage.id, 0, message=start)
            self.emit("stage_end", stage.id, 0, message="no dataset can train this stage")
            return StageSummary(stage.id, stage.trains, objective, 0, 0.0, None, "no data")
        st = self._setup(stage, objective, specs)
        if st.floor:
            m = self._min_steps(stage)
            start += (
                f"; a perfect model's fit check would read about {st.floor:.3f} (sampling noise)"
            )
            if m >= self.cfg.steps:
                start += (
                    f"; it trains all its {self.cfg.steps} steps (a stage like this one may not "
                    f"stop early before step {m})"
                )
            else:
                start += (
                    f", so it stops early at {allowed_fit(self.cfg.tolerance, st.floor):.3f} "
                    f"(tolerance {self.cfg.tolerance} and that noise together)"
                    + (f", after step {m} at the earliest" if m else "")
                )
        self.emit("stage_start", stage.id, 0, message=start)
        if ck is not None and ck[2]["step"] > 0:
            st.load_state_dict(*ck)
        t_start -= st.seconds
        try:
            stopped_by = self._loop(si, st, summaries, t_start)
        except _StopRequested:  # during a fit check: the step it followed is complete
            stopped_by = "stop"
        if stopped_by == "stop":
            if self.ckdir is not None:
                st.seconds = time.monotonic() - t_start
                self._checkpoint(si, summaries, st)
            return StageSummary(
                stage.id,
                stage.trains,
                objective,
                st.step,
                time.monotonic() - t_start,
                st.best_quality,
                "stop",
            )
        return self._finish(st, stopped_by, t_start)

    def _fill_pretrained(self, stage: Stage, t_start: float) -> StageSummary:
        trains = stage.trains
        if not stage.is_conditional:
            raise TrainingError(
                f"stage {stage.id} trains {', '.join(trains)}; a pre-trained mechanism can "
                "only fill a stage whose target is a plain conditional P(V | pa(V))"
            )
        _install_pretrained(self.model, trains[0], self.pretrained[trains[0]])
        for p in self.model.generators[trains[0]].parameters():
            p.requires_grad_(False)
        self.emit("stage_end", stage.id, 0, message="filled by a pre-trained mechanism")
        return StageSummary(
            stage.id, trains, "pretrained", 0, time.monotonic() - t_start, None, "pretrained"
        )

    def _setup(self, stage: Stage, objective: str, specs: list[Target]) -> StageState:
        cfg, model = self.cfg, self.model
        seed = _stage_seed(cfg.seed, stage.id)
        _seed_all(seed)
        for p in model.parameters():  # freeze everything, unfreeze H
            p.requires_grad_(False)
        params = {
            f"{v}.{k}": p for v in stage.trains for k, p in model.generators[v].named_parameters()
        }
        for p in params.values():
            p.requires_grad_(True)
        rng = np.random.RandomState(seed % (2**32))
        matchers = [
            _Matcher(
                model,
                stage,
                t,
                self.data[frozenset(t.regime.do)],
                objective,
                cfg,
                self.device,
                rng,
            )
            for t in specs
        ]
        for m in matchers:  # fit checks of large images poll between their chunks
            m.should_stop = self.should_stop
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        lr = cfg.lr if objective == "wgan" else cfg.mmd_lr
        gen_opt = torch.optim.Adam(params.values(), lr=lr, betas=cfg.betas)
        critics = [p for m in matchers if m.critic is not None for p in m.critic.parameters()]
        critic_opt = torch.optim.Adam(critics, lr=cfg.lr, betas=cfg.betas) if critics else None
        bs = cfg.batch_size if objective == "wgan" else cfg.mmd_batch
        floor = max(m.fit.floor for m in matchers)
        return StageState(
            stage,
            objective,
            seed,
            params,
            matchers,
            gen_opt,
            critic_opt,
            gen,
            _EMA(params, cfg.ema),
            max(4, bs - bs % 4),
            floor,
        )

    def _min_steps(self, stage: Stage) -> int:
        """Steps a stage trains before it may stop early: longer for continuous variables and
        for mechanisms joined by a hidden confounder (see :class:`TrainConfig`)."""
        cfg = self.cfg
        out = cfg.min_steps
        if any(self.model.schema[v].kind == "continuous" for v in stage.trains):
            out = max(out, cfg.min_steps_continuous)
        trains = set(stage.trains)
        if any(a in trains and b in trains for a, b in self.model.confounders):
            out = max(out, cfg.min_steps_confounded)
        return out

    def _loop(self, si: int, st: StageState, summaries: list[StageSummary], t_start: float) -> str:
        """Step until a stop reason; returns it ("steps", "time", "stop", "tolerance", ...)."""
        cfg = self.cfg
        sid = st.stage.id
        check_gen = torch.Generator(device=self.device)
        min_steps = self._min_steps(st.stage)
        losses: dict[str, float] = {}
        while st.step < cfg.steps:
            if self.should_stop():
                return "stop"
            if cfg.time_limit_s is not None and time.monotonic() - t_start > cfg.time_limit_s:
                return "time"
            if st.objective == "wgan":
                for _ in range(cfg.critic_steps):
                    losses = self._critic_step(st)
            losses.update(self._gen_step(st))
            st.ema.update(st.params)
            st.step += 1
            if st.step % cfg.log_every == 0:
                self.emit("step", sid, st.step, losses=dict(losses))
            if st.step % cfg.check_every == 0 or st.step == cfg.steps:
                fits = self._check(st, check_gen, use_ema=True)
                q = _worst(fits)
                st.history.append(q)
                if q is not None and (st.best_quality is None or q <= st.best_quality):
                    st.best_quality = q
                    st.best = {k: v.clone() for k, v in st.ema.shadow.items()}
                self.emit("check", sid, st.step, quality=q, losses=dict(losses), fits=fits)
                reason = stop_reason(
                    st.history,
                    st.step,
                    tolerance=allowed_fit(cfg.tolerance, st.floor),
                    stable_checks=cfg.stable_checks,
                    patience=cfg.patience,
                    min_steps=min_steps,
                )
                if reason is not None:
                    return reason
            if (
                self.ckdir is not None
                and cfg.checkpoint_every
                and st.step % cfg.checkpoint_every == 0
                and st.step < cfg.steps
            ):
                st.seconds = time.monotonic() - t_start
                self._checkpoint(si, summaries, st)
        return "steps"

    def _finish(self, st: StageState, stopped_by: str, t_start: float) -> StageSummary:
        """End on the EMA weights (of the best fit check when asked) and check them once more
        (to the end: the stage's training is over, a stop request waits for the next stage)."""
        for m in st.matchers:
            m.should_stop = _Matcher.should_stop
        final = st.ema.shadow
        if self.cfg.keep_best and st.best is not None and stopped_by != "tolerance":
            final = st.best
        with torch.no_grad():
            for k, p in st.params.items():
                p.copy_(final[k])
        for p in st.params.values():
            p.requires_grad_(False)
        fits = (
            self._check(st, torch.Generator(device=self.device), use_ema=False) if st.step else {}
        )
        quality = _worst(fits)
        secs = time.monotonic() - t_start
        note = self._leakage(st.matchers[0], st.stage.trains) if st.step else ""
        self.emit(
            "stage_end",
            st.stage.id,
            st.step,
            quality=quality,
            fits=fits,
            message=f"stage {st.stage.id} done after {st.step} steps, {secs:.1f} s: "
            f"{_STOP_WORDS.get(stopped_by, stopped_by)}{note}",
        )
        return StageSummary(
            st.stage.id,
            st.stage.trains,
            st.objective,
            st.step,
            secs,
            quality,
            stopped_by,
            fits,
            st.floor,
        )

    def _leakage(self, m: _Matcher, trains: tuple[str, ...]) -> str:
        """Warn when generated images reveal a categorical do-parent much better than real images
        do (balanced accuracy of a linear probe). A child reading such images can infer the
        parent from artefacts, which pulls front-door answers towards the naive P(Y | X)."""
        from .query import predictability

        notes = []
        for v in (v for v in trains if self.model.schema[v].kind == "image"):
            for b in (b for b in m.fit.given if m.fit.kinds[b] == "categorical"):
                if b not in self.model.parents[v]:
                    continue
                real = m.data.rows(m.check_idx[:2000], m.rows, raw=True)
                fake = m.fake_rows(
                    real, torch.Generator(device=self.device).manual_seed(7), self.cfg.tau
                )
                lab = real[b].argmax(1).cpu().numpy()
                # predictability reads images pooled to 8x8: pool chunk by chunk first
                r = predictability(lab, pooled(real[v], 8), "image")
                f = predictability(lab, pooled(fake[v], 8), "image")
                if f > r + 0.15:
                    notes.append(
                        f"; warning: generated {v} reveals {b} (linear probe balanced "
                        f"accuracy {f:.2f}) much more than real {v} does ({r:.2f}); "
                        f"answers that pass through {v} may drift towards the naive "
                        "conditional — train this stage longer or with a larger model"
                    )
        return "".join(notes)

    # -- steps
    def _batch(self, m: _Matcher, st: StageState) -> torch.Tensor:
        return torch.randint(0, m.data.n, (st.batch,), generator=st.gen, device=self.device)

    def _critic_step(self, st: StageState) -> dict[str, float]:
        total = 0.0
        loss = torch.zeros((), device=self.device)
        with autocast(self.device, self.cfg.amp):
            for m in st.matchers:
                assert m.critic is not None
                real = m.real(self._batch(m, st))
                fake = m.fake(real, st.gen, self.cfg.tau, grad=False)
                rf, ri = m.flat(real), [real[v] for v in m.pixel_vars]
                ff, fi = m.flat(fake).detach(), [fake[v].detach() for v in m.pixel_vars]
                d_real, d_fake = m.critic(rf, ri).mean(), m.critic(ff, fi).mean()
                gp = gradient_penalty(m.critic, (rf, ri), (ff, fi), st.gen)
                loss = loss + d_fake - d_real + self.cfg.gp_weight * gp
                total += (d_real - d_fake).detach().item()
        loss = loss.float()
        _finite(loss, f"critic (stage {st.stage.id}, step {st.step + 1})")
        assert st.critic_opt is not None
        st.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        st.critic_opt.step()
        return {"wasserstein": total}

    def _gen_step(self, st: StageState) -> dict[str, float]:
        loss = torch.zeros((), device=self.device)
        with autocast(self.device, self.cfg.amp):  # bf16 matmuls/convs on CUDA only
            for m in st.matchers:
                real = m.real(self._batch(m, st))
                if st.objective == "mle":
                    loss = loss + self._nll(m, real, st.gen)
                    continue
                fake = m.fake(real, st.gen, self.cfg.tau, grad=True)
                if st.objective == "wgan":
                    assert m.critic is not None
                    loss = loss - m.critic(m.flat(fake), [fake[v] for v in m.pixel_vars]).mean()
                    if self.cfg.mmd_weight:
                        loss = loss + self.cfg.mmd_weight * mmd2(
                            m.mmd_features(real), m.mmd_features(fake)
                        )
                else:
                    loss = loss + mmd2(m.flat(real), m.flat(fake))
        loss = loss.float()
        _finite(loss, f"generator (stage {st.stage.id}, step {st.step + 1})")
        st.gen_opt.zero_grad(set_to_none=True)
        loss.backward()
        st.gen_opt.step()
        return {"generator": loss.detach().item()}

    def _nll(
        self, m: _Matcher, real: Mapping[str, torch.Tensor], gen: torch.Generator
    ) -> torch.Tensor:
        """Mean negative log-likelihood of the real values of the trained mechanisms given their
        real parents (plain-conditional stages: no confounder noise)."""
        out = torch.zeros((), device=self.device)
        for v in m.matches:
            mech = self.model.generators[v]
            if self.model.latent_image(v):  # the cached code of the real image
                code = self.model.code(v, real)
                cond = self.model.condition(v, real, code.shape[0])
                out = out - mech.code_log_prob(cond, cond[:, :0], code.detach()).mean()
                continue
            n = real[v].shape[0]
            cond = self.model.condition(v, real, n)
            out = out - mech.log_prob(cond, cond[:, :0], real[v], gen).mean()
        return out

    def _check(
        self, st: StageState, check_gen: torch.Generator, *, use_ema: bool
    ) -> dict[str, float | None]:
        """The fit check of every target (regime label -> TVD or None), on the EMA weights when
        ``use_ema``."""
        was = self.model.training
        self.model.eval()
        fits: dict[str, float | None] = {}
        swap = _swapped(st.params, st.ema.shadow) if use_ema else contextlib.nullcontext()
        try:
            with swap:
                for m in st.matchers:
                    check_gen.manual_seed(st.seed + 1)
                    fits[m.label] = m.check(check_gen, self.cfg.tau)
                    if m.fit.last_downstream is not None:  # reported on its own too (#10.4)
                        kids = ", ".join(m.fit.probes)
                        fits[f"{m.label}, what the children of {kids} read"] = m.fit.last_downstream
        finally:
            self.model.train(was)
        return fits


#: the objectives and the stop reasons in plain words (the Train page and the CLI show them)
_OBJECTIVE_WORDS = {
    "mle": "fitting the likelihood of the data",
    "mmd": "matching the data's distribution",
    "wgan": "adversarial training against a critic",
}
_STOP_WORDS = {
    "tolerance": "it matches the data as closely as the check can tell",
    "plateau": "the fit stopped improving",
    "steps": "the step limit was reached",
    "time": "the time limit was reached",
}


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _worst(fits: Mapping[str, float | None]) -> float | None:
    """The stage's fit: the worst of its regimes' checks (None when none could be read)."""
    qs = [q for q in fits.values() if q is not None]
    return float(max(qs)) if qs else None


def _is_cpu_oom(exc: BaseException) -> bool:
    """torch reports exhausted host RAM as a plain RuntimeError from its CPU allocator."""
    text = str(exc)
    return "DefaultCPUAllocator" in text or "can't allocate memory" in text


def _finite(loss: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(loss)):
        value = loss.detach().item()
        raise TrainingError(
            f"the {what} loss became {value} (training diverged); nothing "
            "was saved over the last good checkpoint. Try a lower learning rate, "
            "another objective, or resume from the last checkpoint"
        )


def _plan_json(plan: Plan) -> Any:
    """The plan as it reads back from a checkpoint's JSON (lists, not tuples)."""
    return json.loads(json.dumps(plan.to_json()))


_callable_module(__name__)  # mdcm.train(...) works whether mdcm.train is the module or not
