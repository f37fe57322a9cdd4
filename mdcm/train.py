"""Stage-wise training of a DCM along a plan (Modular-DCM, Rahman & Kocaoglu 2024, Alg. 1).

For each stage (in plan order) the mechanisms ``H = stage.trains`` are trainable and every other
generator is frozen (``requires_grad`` False; gradients still flow THROUGH frozen generators to
trainable ones upstream). For every target (one per data regime) a batch of real rows ``(b, a)``
from that regime's dataset is compared with fake rows ``(b, G(do(B=b)))``: the DCM is sampled with
the do-parents ``B`` set to the SAME real values (per-sample do). The stage loss is the sum over
its targets.

Objectives behind one interface (``TrainConfig.objective``):

* ``"wgan"``: WGAN-GP (Gulrajani et al. 2017; λ=10, Adam 2e-4 (0.5, 0.9), 2 critic steps), a
  packed critic per target (PacGAN), pixels plus code for images being trained, image codes
  otherwise; the generator loss adds ``mmd_weight`` × the MMD below (on the flat part and pooled
  pixels), which in bench runs halved the steps the image stage needed to match its fit check;
* ``"mmd"``: a kernel two-sample loss (MMD, Gretton et al. 2012; Li et al. 2015) over one-hot
  labels, standardised continuous values and the image code of a small autoencoder fitted on the
  study's real images — non-adversarial, no critic to balance (design.md §7);
* ``"mle"`` (chosen by ``"auto"`` only): maximum likelihood of the real images' codes under a
  latent image mechanism (:class:`mdcm.nets.LatentMixture`), for stages whose targets are the
  plain conditional P(V | pa(V)) — any consistent conditional estimator is a valid mechanism
  there (Rahman & Kocaoglu 2024 fill such stages with pre-trained models);
* ``"auto"``: ``wgan`` for stages that train a pixel image mechanism, ``mle`` for plain-
  conditional latent image stages, ``mmd`` otherwise (labels, vectors, latent images trained
  jointly with others). Chosen by bench/train_quality.py.

A fit check every ``check_every`` steps measures the TVD between model and data frequencies of the
stage's categorical variables (plus k-means clusters of the codes of its images and quantile
bins of trained continuous variables) given its categorical do-parents, on EMA weights; a stage
stops early once ``stable_checks`` consecutive checks are within ``tolerance``, otherwise at the
step or time limit, or after ``patience`` checks without a new best ("plateau"), and keeps the EMA
weights of its best check.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .model import (
    DCM,
    ModelFileError,
    _atomic_write,
    plain_file_name,
    read_safetensors,
    replace_with_versioned,
    state_bytes,
)
from .nets import Critic, gradient_penalty, mmd2

__all__ = ["TrainConfig", "Event", "StageSummary", "TrainResult", "TrainingError", "pick_device",
           "train", "stage_objective"]

CKPT_WEIGHTS = "checkpoint.safetensors"
CKPT_OPTIM = "optim.pt"
CKPT_STATE = "checkpoint.json"


class TrainingError(RuntimeError):
    """Training cannot go on: divergence (NaN/inf), out of memory, a plan that does not fit the
    model or the data, or an unusable pre-trained mechanism. The message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000                 # max generator steps per stage
    batch_size: int = 64              # WGAN batch (a multiple of the packing, 4)
    objective: str = "auto"           # "wgan" | "mmd" | "auto"
    seed: int = 0
    device: str = "auto"              # "auto" | "cpu" | "cuda"
    time_limit_s: float | None = None  # per stage
    check_every: int = 200
    tolerance: float = 0.03           # fit-check TVD for early stop
    checkpoint_every: int = 1000
    stable_checks: int = 3            # consecutive checks within tolerance to stop early
    min_steps: int = 0                # never stop early before this many steps
    patience: int = 8                 # stop ("plateau") after this many checks without a new
                                      # best fit (0 = never)
    lr: float = 2e-4                  # WGAN generator and critic
    betas: tuple[float, float] = (0.5, 0.9)
    critic_steps: int = 2
    gp_weight: float = 10.0
    mmd_weight: float = 10.0          # WGAN stages: + weight * MMD(real, fake) in the G loss
    mmd_batch: int = 256
    mmd_lr: float = 1e-3
    ema: float = 0.995
    tau: float = 1.0                  # Gumbel-softmax temperature (straight-through, hard)
    check_samples: int = 4096
    coder_steps: int = 2000           # autoencoder fit for image codes (600 lost 6% of the
                                      # digit identities in reconstructions, 2000 about 2%)
    log_every: int = 50
    keep_best: bool = True            # end a stage on the EMA weights of its best fit check
    threads: int = 1                  # CPU intra-op threads while training (0 = torch default).
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
    kind: str  # "stage_start"|"step"|"check"|"stage_end"|"checkpoint"|"done"|"error"
    stage: int
    step: int
    elapsed_s: float
    losses: Mapping[str, float] = field(default_factory=dict)
    quality: float | None = None
    message: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "stage": self.stage, "step": self.step,
                "elapsed_s": round(self.elapsed_s, 3), "losses": dict(self.losses),
                "quality": self.quality, "message": self.message}


@dataclass(frozen=True)
class StageSummary:
    stage: int
    trains: tuple[str, ...]
    objective: str
    steps: int
    seconds: float
    quality: float | None
    stopped_by: str  # "tolerance"|"plateau"|"steps"|"time"|"stop"|"pretrained"|"no data"

    def to_json(self) -> dict:
        d = asdict(self)
        d["trains"] = list(self.trains)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StageSummary:
        return cls(d["stage"], tuple(d["trains"]), d["objective"], d["steps"], d["seconds"],
                   d["quality"], d["stopped_by"])


@dataclass(frozen=True)
class TrainResult:
    stages: list[StageSummary]
    device: str
    seconds: float
    stopped: bool = False     # should_stop() ended training before the plan was finished

    def to_json(self) -> dict:
        return {"stages": [s.to_json() for s in self.stages], "device": self.device,
                "seconds": self.seconds, "stopped": self.stopped}


def pick_device(name: str = "auto") -> torch.device:
    """The training device, decided once: "auto" = cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available; "
                            "use device='cpu' or 'auto'")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TrainingError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


def stage_objective(model: DCM, stage: Any, objective: str) -> str:
    """The objective a stage trains with: ``objective`` unless "auto", then WGAN-GP for stages
    that train a pixel image mechanism, maximum likelihood for a latent image mechanism whose
    targets are the plain conditional P(V | pa(V)), and MMD otherwise."""
    if objective != "auto":
        return objective
    schema = model.schema
    if any(schema[v].kind == "image" and not model.latent_image(v) for v in stage.trains):
        return "wgan"
    if all(model.latent_image(v) for v in stage.trains) and stage.targets and \
            all(t.is_conditional for t in stage.targets):
        return "mle"
    return "mmd"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _stage_seed(seed: int, stage_id: int) -> int:
    return (seed * 1_000_003 + 7919 * (stage_id + 1)) % (2 ** 62)


# ---------------------------------------------------------------------- data
class _RegimeData:
    """A regime's real rows, encoded on the device (categorical one-hot, images float)."""

    def __init__(self, model: DCM, datasets: Sequence[Any], device: torch.device) -> None:
        names = model.schema.names
        self.cols: dict[str, torch.Tensor] = {}
        self.labels: dict[str, np.ndarray] = {}
        for v in names:
            parts = [np.asarray(d.columns[v]) for d in datasets if v in d.columns]
            if len(parts) != len(datasets):
                continue
            arr = np.concatenate(parts) if len(parts) > 1 else parts[0]
            var = model.schema[v]
            if var.kind == "categorical":
                self.labels[v] = arr.astype(np.int64)
                self.cols[v] = torch.nn.functional.one_hot(
                    torch.as_tensor(arr, dtype=torch.long), var.classes).float().to(device)
            else:
                t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
                if var.kind == "continuous":
                    t = t.reshape(len(arr), -1)
                self.cols[v] = t.to(device)
        self.n = sum(d.n for d in datasets)

    def rows(self, idx: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return {v: self.cols[v][idx] for v in names}


# ---------------------------------------------------------------------- per-target machinery
class _Target:
    """Everything one target of one stage needs: row layout, critic, feature scaling, fit check."""

    def __init__(self, model: DCM, stage: Any, target: Any, data: _RegimeData, objective: str,
                 config: TrainConfig, device: torch.device, rng: np.random.RandomState) -> None:
        self.t = target
        self.data = data
        schema = model.schema
        trains = set(stage.trains)
        self.given = tuple(target.given)
        self.matches = tuple(target.matches)
        self.rows = self.given + self.matches
        missing = [v for v in self.rows if v not in data.cols]
        if missing:
            raise TrainingError(f"stage {stage.id}: the {target.regime.label} data have no "
                                f"column(s) {', '.join(missing)}")
        # Row layout: flat part (labels, continuous, codes of images not trained here) + pixels.
        # Trained images: pixels (WGAN: conv critic input; MMD: pooled pixels) plus their code;
        # other images (frozen or given): only their code.
        self.trained_images = [v for v in self.rows if schema[v].kind == "image" and v in trains]
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
        self.model = model
        self.objective = objective
        self.critic: Critic | None = None
        if objective == "wgan":
            flat_dim = self._flat_dim()
            self.critic = Critic(flat_dim, [schema[v].shape for v in self.pixel_vars],
                                 hidden=max(model.config.hidden, 64),
                                 channels=model.config.image_channels).to(device)
        # Fit check: categorical vars in matches + image clusters, given categorical B.
        self.check_given = [v for v in self.given if schema[v].kind == "categorical"]
        self.check_vars = [v for v in self.matches if schema[v].kind == "categorical"]
        # Images in A (trained or frozen) enter as k-means clusters of their code: without them a
        # label stage could match P(D, A) while getting A's dependence on the image wrong.
        self.cluster_vars = [v for v in self.matches if schema[v].kind == "image"]
        self.centroids: dict[str, torch.Tensor] = {}
        n_check = min(config.check_samples, data.n)
        self.check_idx = torch.as_tensor(np.sort(rng.choice(data.n, n_check, replace=False)),
                                         device=device)
        # Continuous variables trained here: quantile bins (5 per dimension, first 2 dimensions)
        # of the real data, so label-free stages get a fit check and an early stop too.
        self.bin_vars = [v for v in self.matches if schema[v].kind == "continuous" and v in trains]
        self.bin_edges: dict[str, list[torch.Tensor]] = {}
        for v in self.bin_vars:
            x = data.cols[v][self.check_idx]
            q = torch.tensor([0.2, 0.4, 0.6, 0.8], device=x.device)
            self.bin_edges[v] = [torch.quantile(x[:, j], q) for j in range(min(2, x.shape[1]))]
        for v in self.cluster_vars:
            with torch.no_grad():
                codes = model.coders[v].encode(data.cols[v][self.check_idx])
            self.centroids[v] = _kmeans(codes, k=8, rng=rng)

    def _flat_dim(self) -> int:
        schema = self.model.schema
        return (sum(schema[v].width for v in self.flat_vars)
                + self.model.config.code_dim * len(self.code_vars))  # (pooled pixels: MMD only)

    def flat(self, vals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for v in self.flat_vars:
            x = vals[v]
            if v in self.scale:
                mu, sd = self.scale[v]
                x = (x - mu) / sd
            parts.append(x)
        k = math.sqrt(self.model.config.code_dim)
        for v in self.code_vars:
            parts.append(self.model.coders[v].encode(vals[v]) / k)
        for v in self.pool_vars:
            x = vals[v]
            h, w = x.shape[2:]
            x = torch.nn.functional.adaptive_avg_pool2d(x, (min(h, 7), min(w, 7))).flatten(1)
            parts.append(x / math.sqrt(x.shape[1]))
        return torch.cat(parts, dim=1)

    def mmd_features(self, vals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Kernel features: the flat part plus pooled pixels of trained images."""
        if self.objective != "wgan" or not self.pixel_vars:
            return self.flat(vals)
        pooled = []
        for v in self.pixel_vars:
            x = vals[v]
            h, w = x.shape[2:]
            x = torch.nn.functional.adaptive_avg_pool2d(x, (min(h, 7), min(w, 7))).flatten(1)
            pooled.append(x / math.sqrt(x.shape[1]))
        return torch.cat([self.flat(vals)] + pooled, dim=1)

    def real(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.data.rows(idx, self.rows)

    def fake(self, real: Mapping[str, torch.Tensor], gen: torch.Generator, tau: float,
             grad: bool) -> dict[str, torch.Tensor]:
        fixed = {v: real[v] for v in self.given}
        with torch.set_grad_enabled(grad):
            return self.model.forward_values(next(iter(real.values())).shape[0], fixed,
                                             self.matches, gen=gen, tau=tau,
                                             straight_through=grad)

    # -- fit check
    def _labels(self, vals: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
        out = [vals[v].argmax(1).cpu().numpy() for v in self.check_given + self.check_vars]
        for v in self.cluster_vars:
            codes = self.model.coders[v].encode(vals[v].clamp(-1, 1))
            out.append(torch.cdist(codes, self.centroids[v]).argmin(1).cpu().numpy())
        for v in self.bin_vars:
            for j, edges in enumerate(self.bin_edges[v]):
                out.append(torch.bucketize(vals[v][:, j].contiguous(), edges).cpu().numpy())
        return out

    def check(self, gen: torch.Generator, tau: float) -> float | None:
        if not self.check_vars and not self.cluster_vars and not self.bin_vars:
            return None
        real = self.real(self.check_idx)
        with torch.no_grad():
            fake = self.fake(real, gen, tau, grad=False)
        return _table_tvd(self._labels(real), self._labels(fake), len(self.check_given))


def _kmeans(x: torch.Tensor, k: int, rng: np.random.RandomState, iters: int = 25) -> torch.Tensor:
    k = min(k, x.shape[0])
    c = x[torch.as_tensor(rng.choice(x.shape[0], k, replace=False), device=x.device)].clone()
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        for j in range(k):
            m = a == j
            if bool(m.any()):
                c[j] = x[m].mean(0)
    return c


def _table_tvd(real: list[np.ndarray], fake: list[np.ndarray], n_given: int) -> float:
    """TVD between the joint frequency tables of the label columns (same conditioning rows in both,
    so this is the data-weighted conditional TVD given the first ``n_given`` columns). Falls back to
    the mean per-variable TVD when the joint table is too sparse."""
    def tvd(cols_r: list[np.ndarray], cols_f: list[np.ndarray]) -> float:
        keys_r = np.stack(cols_r, 1) if cols_r else np.zeros((len(real[0]), 0), np.int64)
        keys_f = np.stack(cols_f, 1) if cols_f else np.zeros((len(fake[0]), 0), np.int64)
        allk = np.concatenate([keys_r, keys_f])
        _, inv = np.unique(allk, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        m = inv.max() + 1
        pr = np.bincount(inv[: len(keys_r)], minlength=m) / len(keys_r)
        pf = np.bincount(inv[len(keys_r):], minlength=m) / len(keys_f)
        return float(0.5 * np.abs(pr - pf).sum())

    n = len(real[0])
    cells = 1
    for c in real:
        cells *= int(c.max()) + 1
    if cells * 10 <= n:
        return tvd(real, fake)
    given_r, given_f = real[:n_given], fake[:n_given]
    per = [tvd(given_r + [r], given_f + [f]) for r, f in zip(real[n_given:], fake[n_given:],
                                                               strict=True)]
    return float(np.mean(per)) if per else 0.0


# ---------------------------------------------------------------------- EMA
class _EMA:
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


class _Swap:
    """Context manager: temporarily load ``state`` into ``params``."""

    def __init__(self, params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor]):
        self.params, self.state = params, state

    def __enter__(self) -> None:
        self.saved = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.state[k])

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.saved[k])


# ---------------------------------------------------------------------- checkpoints
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_checkpoint(ckdir: Path, tensors: Mapping[str, torch.Tensor], optim: dict,
                     state: dict) -> None:
    """Weights (safetensors), optimizer/RNG state (torch.save, read back weights_only) and the
    json state (both hashes and file names). New files are written under versioned names that a
    new checkpoint.json points to before they replace the fixed names
    (:func:`mdcm.model.replace_with_versioned`), so a failed write never spoils the last good
    checkpoint."""
    ckdir.mkdir(parents=True, exist_ok=True)
    blob = state_bytes(tensors)
    import io
    buf = io.BytesIO()
    torch.save(optim, buf)
    state = dict(state, weights_sha256=hashlib.sha256(blob).hexdigest(),
                 optim_sha256=hashlib.sha256(buf.getvalue()).hexdigest())

    def write_state(names: Mapping[str, str]) -> None:
        _atomic_write(ckdir / CKPT_STATE, json.dumps(
            dict(state, weights_file=names[CKPT_WEIGHTS], optim_file=names[CKPT_OPTIM]),
            indent=1).encode())

    replace_with_versioned(ckdir, {CKPT_WEIGHTS: blob, CKPT_OPTIM: buf.getvalue()}, write_state)


def _load_checkpoint(ckdir: Path) -> tuple[dict[str, torch.Tensor], dict, dict] | None:
    spath = ckdir / CKPT_STATE
    if not spath.exists():
        return None
    try:
        state = json.loads(spath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainingError(f"checkpoint {spath} is not valid JSON ({exc}); "
                            "start again without resume") from None
    except RecursionError:
        raise TrainingError(f"checkpoint {spath} is nested too deeply to be a checkpoint; "
                            "start again without resume") from None
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {spath} is not a JSON object; "
                            "start again without resume")
    paths = {}
    for fixed, key, name_key in ((CKPT_WEIGHTS, "weights_sha256", "weights_file"),
                                 (CKPT_OPTIM, "optim_sha256", "optim_file")):
        p = ckdir / (plain_file_name(state.get(name_key), ckdir) or fixed)
        if not p.exists() or _sha(p) != state.get(key):
            raise TrainingError(f"checkpoint file {p} is missing or does not match "
                                f"{CKPT_STATE}; start again without resume")
        paths[fixed] = p
    try:
        tensors = read_safetensors(paths[CKPT_WEIGHTS], "checkpoint")
    except ModelFileError as exc:
        raise TrainingError(f"{exc}; start again without resume") from None
    try:
        optim = torch.load(paths[CKPT_OPTIM], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip errors, ...
        raise TrainingError(
            f"checkpoint file {paths[CKPT_OPTIM]} is unreadable or was refused as unsafe "
            f"({type(exc).__name__}); start again without resume") from None
    return tensors, optim, state


# ---------------------------------------------------------------------- pre-trained mechanisms
def _install_pretrained(model: DCM, v: str, source: Any) -> None:
    target = model.generators[v]
    if isinstance(source, DCM):
        if v not in source.generators:
            raise TrainingError(f"pre-trained model has no mechanism for {v!r}")
        if source.specs.get(v) != model.specs[v]:
            raise TrainingError(f"pre-trained mechanism for {v!r} was built for "
                                f"{source.specs.get(v)}, the study has {model.specs[v]}")
        if [source.schema[p].kind for p in source.parents[v]] != \
                [model.schema[p].kind for p in model.parents[v]]:
            raise TrainingError(f"pre-trained mechanism for {v!r} reads parents "
                                f"{list(source.parents[v])}, the study's graph gives "
                                f"{list(model.parents[v])}")
        source = source.generators[v]
    if not isinstance(source, nn.Module):
        raise TrainingError(f"pretrained[{v!r}] must be a DCM or a torch module, "
                            f"not {type(source).__name__}")
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise TrainingError(f"pre-trained mechanism for {v!r} does not fit this model's "
                            f"generator ({type(target).__name__}): {str(exc)[:300]}") from None


# ---------------------------------------------------------------------- the trainer
def train(model: DCM, plan: Any, study: Any, config: TrainConfig = TrainConfig(),
          on_event: Callable[[Event], None] = lambda e: None,
          should_stop: Callable[[], bool] = lambda: False,
          checkpoint_dir: Path | None = None, resume: bool = False,
          pretrained: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model`` along ``plan`` on ``study`` (see the module docstring).

    Emits :class:`Event` s through ``on_event``; ``should_stop()`` is polled every step (a
    checkpoint is written before returning when ``checkpoint_dir`` is set). With ``resume`` the
    run continues from ``checkpoint_dir``'s last checkpoint and is step-for-step identical to an
    uninterrupted run on the same device. ``pretrained={"V": dcm_or_module}`` fills the stage of
    V when its targets are the plain conditional P(V | pa(V)).
    """
    return _Trainer(model, plan, study, config, on_event, should_stop,
                    Path(checkpoint_dir) if checkpoint_dir is not None else None,
                    resume, dict(pretrained or {})).run()


class _Trainer:
    def __init__(self, model: DCM, plan: Any, study: Any, config: TrainConfig,
                 on_event: Callable[[Event], None], should_stop: Callable[[], bool],
                 ckdir: Path | None, resume: bool, pretrained: dict[str, Any]) -> None:
        self.model, self.plan, self.study, self.cfg = model, plan, study, config
        self.on_event, self.should_stop = on_event, should_stop
        self.ckdir, self.resume, self.pretrained = ckdir, resume, pretrained
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
        if set(pg.nodes) != set(m.parents) or pg.directed != m.schema.graph.directed or \
                pg.bidirected != m.schema.graph.bidirected:
            raise TrainingError("the plan was made for another graph than the model's "
                                f"('{pg}' vs '{m.schema.graph}'); make a new plan")
        trained = [v for s in plan.stages for v in s.trains]
        if sorted(trained) != sorted(m.parents):
            raise TrainingError(f"the plan trains {sorted(trained)}, the model has "
                                f"{sorted(m.parents)}")
        for v in self.pretrained:
            if v not in m.parents:
                raise TrainingError(f"pretrained mechanism for unknown variable {v!r}")

    def emit(self, kind: str, stage: int, step: int, **kw: Any) -> None:
        self.on_event(Event(kind, stage, step, time.monotonic() - self.t0, **kw))

    # -- main loop
    def run(self) -> TrainResult:
        prev = torch.get_num_threads()
        if self.cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads)
        try:
            return self._run()
        except TrainingError as exc:
            self.emit("error", -1, 0, message=str(exc))
            raise
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            # CUDA OOM, or torch's CPU allocator failing (a plain RuntimeError): same advice
            cpu = not isinstance(exc, torch.cuda.OutOfMemoryError)
            if cpu and not _is_cpu_oom(exc):
                raise
            msg = (f"out of {'CPU' if cpu else 'GPU'} memory at batch_size="
                   f"{self.cfg.batch_size} (mmd_batch={self.cfg.mmd_batch}); try a smaller "
                   f"batch, e.g. batch_size={max(4, self.cfg.batch_size // 2)}")
            self.emit("error", -1, 0, message=msg)
            raise TrainingError(msg) from None
        finally:
            torch.set_num_threads(prev)

    def _run(self) -> TrainResult:
        cfg, model = self.cfg, self.model
        _seed_all(cfg.seed)
        model.to(self.device)
        regimes: dict[frozenset[str], list[Any]] = {}
        for d in self.study.datasets:
            regimes.setdefault(frozenset(d.do), []).append(d)
        self.data = {k: _RegimeData(model, v, self.device) for k, v in regimes.items()}
        summaries: list[StageSummary] = []
        start_stage, ck = 0, None
        if self.resume:
            if self.ckdir is None:
                raise TrainingError("resume=True needs a checkpoint_dir")
            ck = _load_checkpoint(self.ckdir)
            if ck is not None:
                tensors, _, state = ck
                if state.get("plan") != _plan_json(self.plan):
                    raise TrainingError(f"checkpoint in {self.ckdir} was made for another plan")
                model.load_state_dict({k[6:]: v for k, v in tensors.items()
                                       if k.startswith("model.")})
                start_stage = state["stage_index"]
                summaries = [StageSummary.from_json(s) for s in state["summaries"]]
        self._pretrained_coders()
        self._fit_coders()
        stopped = False
        for si in range(start_stage, len(self.plan.stages)):
            summary = self._stage(si, summaries, ck if (ck and si == start_stage) else None)
            summaries.append(summary)
            if summary.stopped_by == "stop":
                stopped = True
                break
            if self.ckdir is not None:
                self._checkpoint(si + 1, 0, summaries, None)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        result = TrainResult(summaries, str(self.device), time.monotonic() - self.t0, stopped)
        self.emit("done", len(self.plan.stages) - 1, 0,
                  message="stopped" if stopped else "finished",
                  quality=max((s.quality for s in summaries if s.quality is not None),
                              default=None))
        return result

    def _pretrained_coders(self) -> None:
        """A latent image mechanism emits codes of ITS autoencoder: reusing it means reusing that
        coder too (installed before any stage, so every child reads the same code)."""
        for v, source in self.pretrained.items():
            if not self.model.latent_image(v):
                continue
            if not isinstance(source, DCM) or not source.latent_image(v):
                raise TrainingError(
                    f"pre-trained mechanism for image {v!r}: this model's image mechanisms are "
                    "latent (they emit codes of the study's image autoencoder), so pass the "
                    "trained DCM whose latent mechanism you want to reuse, not "
                    f"{'a pixel-image DCM' if isinstance(source, DCM) else type(source).__name__}")
            if not bool(source.coders[v].fitted):
                raise TrainingError(f"pre-trained mechanism for image {v!r}: its model's image "
                                    "coder was never fitted (the model is untrained)")
            if source.config.code_dim != self.model.config.code_dim:
                raise TrainingError(f"pre-trained mechanism for image {v!r}: its model has "
                                    f"code_dim={source.config.code_dim}, this model "
                                    f"code_dim={self.model.config.code_dim}")
            try:
                self.model.coders[v].load_state_dict(source.coders[v].state_dict())
            except RuntimeError as exc:
                raise TrainingError(f"pre-trained image coder for {v!r} does not fit this "
                                    f"model's: {str(exc)[:300]}") from None
            for p in self.model.coders[v].parameters():
                p.requires_grad_(False)

    def _fit_coders(self) -> None:
        for v, coder in self.model.coders.items():
            if bool(coder.fitted):
                continue
            ims = [d.cols[v] for d in self.data.values() if v in d.cols]
            if not ims:
                continue
            x = torch.cat(ims)
            with torch.enable_grad():
                for p in coder.parameters():
                    p.requires_grad_(True)
                mse = coder.fit(x, steps=self.cfg.coder_steps, seed=self.cfg.seed)
            self.emit("step", -1, self.cfg.coder_steps, losses={f"coder_{v}_mse": mse},
                      message=f"fitted the image code of {v} (reconstruction MSE {mse:.4f})")

    def _checkpoint(self, stage_index: int, step: int, summaries: list[StageSummary],
                    live: dict | None) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim: dict = {}
        state = {"stage_index": stage_index, "step": step, "plan": _plan_json(self.plan),
                 "config": self.cfg.to_json(), "summaries": [s.to_json() for s in summaries]}
        if live is not None:
            for k, v in live["ema"].shadow.items():
                tensors[f"ema.{k}"] = v
            for k, v in (live.get("best") or {}).items():
                tensors[f"best.{k}"] = v
            for i, t in enumerate(live["targets"]):
                if t.critic is not None:
                    for k, v in t.critic.state_dict().items():
                        tensors[f"critic{i}.{k}"] = v
            optim = {"gen_opt": live["gen_opt"].state_dict(),
                     "critic_opt": live["critic_opt"].state_dict() if live["critic_opt"] else {},
                     "rng": live["gen"].get_state()}
            state.update(ema_updates=live["ema"].updates, history=live["history"],
                         best_quality=live["best_quality"], stage_seconds=live["seconds"])
        _save_checkpoint(self.ckdir, tensors, optim, state)
        self.emit("checkpoint", stage_index if live is None else stage_index, step,
                  message=str(self.ckdir))

    # -- one stage
    def _stage(self, si: int, summaries: list[StageSummary], ck: tuple | None) -> StageSummary:
        cfg, model = self.cfg, self.model
        stage = self.plan.stages[si]
        trains = tuple(stage.trains)
        objective = stage_objective(model, stage, cfg.objective)
        seed = _stage_seed(cfg.seed, stage.id)
        _seed_all(seed)
        t_start = time.monotonic()
        self.emit("stage_start", stage.id, 0, message=f"stage {stage.id}: trains "
                  f"{', '.join(trains)} with {objective}")
        # Pre-trained mechanism?
        pre = [v for v in trains if v in self.pretrained]
        if pre:
            if len(trains) != 1 or not stage.targets or \
                    not all(t.is_conditional for t in stage.targets):
                raise TrainingError(
                    f"stage {stage.id} trains {', '.join(trains)}; a pre-trained mechanism can "
                    "only fill a stage whose target is a plain conditional P(V | pa(V))")
            _install_pretrained(model, trains[0], self.pretrained[trains[0]])
            for p in model.generators[trains[0]].parameters():
                p.requires_grad_(False)
            summ = StageSummary(stage.id, trains, "pretrained", 0,
                                time.monotonic() - t_start, None, "pretrained")
            self.emit("stage_end", stage.id, 0, message="filled by a pre-trained mechanism")
            return summ
        targets_spec = [t for t in stage.targets if frozenset(t.regime.do) in self.data]
        if not targets_spec:
            self.emit("stage_end", stage.id, 0, message="no dataset can train this stage")
            return StageSummary(stage.id, trains, objective, 0, 0.0, None, "no data")
        # Freeze everything, unfreeze H.
        for p in model.parameters():
            p.requires_grad_(False)
        params = {f"{v}.{k}": p for v in trains for k, p in model.generators[v].named_parameters()}
        for p in params.values():
            p.requires_grad_(True)
        rng = np.random.RandomState(seed % (2 ** 32))
        targets = [_Target(model, stage, t, self.data[frozenset(t.regime.do)], objective, cfg,
                           self.device, rng) for t in targets_spec]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        lr = cfg.lr if objective == "wgan" else cfg.mmd_lr
        gen_opt = torch.optim.Adam(params.values(), lr=lr, betas=cfg.betas)
        critics = [p for t in targets if t.critic is not None for p in t.critic.parameters()]
        critic_opt = torch.optim.Adam(critics, lr=cfg.lr, betas=cfg.betas) if critics else None
        ema = _EMA(params, cfg.ema)
        live: dict[str, Any] = {"ema": ema, "targets": targets, "gen_opt": gen_opt,
                                "critic_opt": critic_opt, "gen": gen, "history": [],
                                "best_quality": None, "best": None, "seconds": 0.0}
        step = 0
        if ck is not None and ck[2]["step"] > 0:
            tensors, optim, state = ck
            step = state["step"]
            for k in ema.shadow:
                ema.shadow[k].copy_(tensors[f"ema.{k}"])
            ema.updates = state["ema_updates"]
            if any(k.startswith("best.") for k in tensors):
                live["best"] = {k[5:]: v.to(self.device) for k, v in tensors.items()
                                if k.startswith("best.")}
            for i, t in enumerate(targets):
                if t.critic is not None:
                    t.critic.load_state_dict({k[len(f"critic{i}."):]: v for k, v in
                                              tensors.items() if k.startswith(f"critic{i}.")})
            gen_opt.load_state_dict(optim["gen_opt"])
            if critic_opt is not None:
                critic_opt.load_state_dict(optim["critic_opt"])
            gen.set_state(optim["rng"])
            live["history"] = list(state["history"])
            live["best_quality"] = state["best_quality"]
            t_start -= state.get("stage_seconds", 0.0)
        bs = cfg.batch_size if objective == "wgan" else cfg.mmd_batch
        bs = max(4, bs - bs % 4)
        stopped_by = "steps"
        losses: dict[str, float] = {}
        check_gen = torch.Generator(device=self.device)
        while step < cfg.steps:
            if self.should_stop():
                stopped_by = "stop"
                break
            if cfg.time_limit_s is not None and time.monotonic() - t_start > cfg.time_limit_s:
                stopped_by = "time"
                break
            if objective == "wgan":
                for _ in range(cfg.critic_steps):
                    losses = self._critic_step(targets, gen, bs, critic_opt, stage.id, step)
            losses.update(self._gen_step(targets, gen, bs, gen_opt, objective, stage.id, step))
            ema.update(params)
            step += 1
            if step % cfg.log_every == 0:
                self.emit("step", stage.id, step, losses=dict(losses))
            if step % cfg.check_every == 0 or step == cfg.steps:
                q = self._check(targets, params, ema, check_gen, seed)
                live["history"].append(q)
                if q is not None and (live["best_quality"] is None or q <= live["best_quality"]):
                    live["best_quality"] = q
                    live["best"] = {k: v.clone() for k, v in ema.shadow.items()}
                self.emit("check", stage.id, step, quality=q, losses=dict(losses))
                hist = [h for h in live["history"][-cfg.stable_checks:] if h is not None]
                if (len(hist) == cfg.stable_checks and max(hist) <= cfg.tolerance
                        and step >= cfg.min_steps):
                    stopped_by = "tolerance"
                    break
                if cfg.patience and step >= cfg.min_steps and _plateau(live["history"],
                                                                       cfg.patience):
                    stopped_by = "plateau"
                    break
            if self.ckdir is not None and cfg.checkpoint_every and \
                    step % cfg.checkpoint_every == 0 and step < cfg.steps:
                live["seconds"] = time.monotonic() - t_start
                self._checkpoint(si, step, summaries, live)
        if stopped_by == "stop":
            if self.ckdir is not None:
                live["seconds"] = time.monotonic() - t_start
                self._checkpoint(si, step, summaries, live)
            return StageSummary(stage.id, trains, objective, step, time.monotonic() - t_start,
                                live["best_quality"], "stop")
        # Finish on the EMA weights (of the best fit check when asked).
        final = ema.shadow
        if cfg.keep_best and live["best"] is not None and stopped_by != "tolerance":
            final = live["best"]
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(final[k])
        for p in params.values():
            p.requires_grad_(False)
        quality = self._check(targets, params, None, check_gen, seed) if step else None
        secs = time.monotonic() - t_start
        note = self._leakage(targets[0], trains) if step else ""
        self.emit("stage_end", stage.id, step, quality=quality,
                  message=f"stopped by {stopped_by} after {step} steps, {secs:.1f} s{note}")
        return StageSummary(stage.id, trains, objective, step, secs, quality, stopped_by)

    def _leakage(self, t: _Target, trains: tuple[str, ...]) -> str:
        """Warn when generated images reveal a categorical do-parent much better than real images
        do (balanced accuracy of a linear probe). A child reading such images can infer the
        parent from artefacts, which pulls front-door answers towards the naive P(Y | X)."""
        from .query import predictability

        notes = []
        for v in (v for v in trains if self.model.schema[v].kind == "image"):
            for b in t.check_given:
                if b not in self.model.parents[v]:
                    continue
                idx = t.check_idx[:2000]
                real = t.data.rows(idx, (b, v))
                with torch.no_grad():
                    fake = t.fake(real, torch.Generator(device=self.device).manual_seed(7),
                                  self.cfg.tau, grad=False)
                lab = real[b].argmax(1).cpu().numpy()
                r = predictability(lab, real[v].cpu().numpy(), "image")
                f = predictability(lab, fake[v].clamp(-1, 1).cpu().numpy(), "image")
                if f > r + 0.15:
                    notes.append(f"; warning: generated {v} reveals {b} (linear probe balanced "
                                 f"accuracy {f:.2f}) much more than real {v} does ({r:.2f}); "
                                 f"answers that pass through {v} may drift towards the naive "
                                 "conditional — train this stage longer or with a larger model")
        return "".join(notes)

    def _batch(self, t: _Target, gen: torch.Generator, bs: int) -> torch.Tensor:
        return torch.randint(0, t.data.n, (bs,), generator=gen, device=self.device)

    def _critic_step(self, targets: list[_Target], gen: torch.Generator, bs: int,
                     opt: torch.optim.Optimizer, stage: int = -1,
                     step: int = -1) -> dict[str, float]:
        total = 0.0
        loss = torch.zeros((), device=self.device)
        for t in targets:
            real = t.real(self._batch(t, gen, bs))
            fake = t.fake(real, gen, self.cfg.tau, grad=False)
            rf, ri = t.flat(real), [real[v] for v in t.pixel_vars]
            ff, fi = t.flat(fake).detach(), [fake[v].detach() for v in t.pixel_vars]
            d_real, d_fake = t.critic(rf, ri).mean(), t.critic(ff, fi).mean()
            gp = gradient_penalty(t.critic, (rf, ri), (ff, fi), gen)
            loss = loss + d_fake - d_real + self.cfg.gp_weight * gp
            total += (d_real - d_fake).detach().item()
        _finite(loss, f"critic (stage {stage}, step {step + 1})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"wasserstein": total}

    def _gen_step(self, targets: list[_Target], gen: torch.Generator, bs: int,
                  opt: torch.optim.Optimizer, objective: str, stage: int,
                  step: int) -> dict[str, float]:
        loss = torch.zeros((), device=self.device)
        for t in targets:
            real = t.real(self._batch(t, gen, bs))
            if objective == "mle":
                loss = loss + self._nll(t, real)
                continue
            fake = t.fake(real, gen, self.cfg.tau, grad=True)
            if objective == "wgan":
                ff = t.flat(fake)
                loss = loss - t.critic(ff, [fake[v] for v in t.pixel_vars]).mean()
                if self.cfg.mmd_weight:
                    loss = loss + self.cfg.mmd_weight * mmd2(t.mmd_features(real),
                                                             t.mmd_features(fake))
            else:
                loss = loss + mmd2(t.flat(real), t.flat(fake))
        _finite(loss, f"generator (stage {stage}, step {step + 1})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"generator": loss.detach().item()}

    def _nll(self, t: _Target, real: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the real images' codes under their latent mixture
        mechanism given the real parents (plain-conditional stages: no confounder noise)."""
        out = torch.zeros((), device=self.device)
        for v in t.trained_images:
            n = real[v].shape[0]
            code = self.model.coders[v].encode(real[v]).detach()
            cond = self.model.condition(v, real, n)
            out = out - self.model.generators[v].log_prob(cond, cond[:, :0], code).mean()
        return out

    def _check(self, targets: list[_Target], params: Mapping[str, nn.Parameter],
               ema: _EMA | None, check_gen: torch.Generator, seed: int) -> float | None:
        was = self.model.training
        self.model.eval()
        qs = []
        try:
            ctx = _Swap(params, ema.shadow) if ema is not None else None
            if ctx is not None:
                ctx.__enter__()
            try:
                for t in targets:
                    check_gen.manual_seed(seed + 1)
                    qs.append(t.check(check_gen, self.cfg.tau))
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
        finally:
            self.model.train(was)
        qs = [q for q in qs if q is not None]
        return float(max(qs)) if qs else None


def _plateau(history: list[float | None], patience: int) -> bool:
    """No new best fit (by more than 0.002) in the last ``patience`` checks."""
    h = [q for q in history if q is not None]
    if len(h) <= patience:
        return False
    return min(h[-patience:]) > min(h[:-patience]) - 0.002


def _is_cpu_oom(exc: BaseException) -> bool:
    """torch reports exhausted host RAM as a plain RuntimeError from its CPU allocator."""
    text = str(exc)
    return "DefaultCPUAllocator" in text or "can't allocate memory" in text


def _finite(loss: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(loss)):
        value = loss.detach().item()
        raise TrainingError(f"the {what} loss became {value} (training diverged); nothing "
                            "was saved over the last good checkpoint. Try a lower learning rate, "
                            "another objective, or resume from the last checkpoint")


def _plan_json(plan: Any) -> Any:
    return json.loads(json.dumps(plan.to_json() if hasattr(plan, "to_json") else repr(plan),
                                 default=str))

