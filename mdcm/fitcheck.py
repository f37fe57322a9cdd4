"""The fit check of a training stage: how far the model's P(A | do(B)) is from the data's.

A stage matches, per regime, the distribution of its variables A given its do-parents B. The check
turns both real and generated rows into discrete labels — categorical values as they are, images as
k-means clusters of their code, continuous variables as quantile bins — and measures the TVD of
their joint frequency tables given the categorical do-parents (the same conditioning rows for real
and fake, so it is the data-weighted conditional TVD). The trainer stops a stage early once the
check is within tolerance (:func:`stop_reason`). Pure functions over tensors and arrays; no
training state lives here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .coders import as_float_images

__all__ = ["FitCheck", "kmeans", "plateau", "stop_reason", "table_tvd"]

#: quantile edges of the bins a continuous variable is read through (5 bins per dimension)
QUANTILES = (0.2, 0.4, 0.6, 0.8)
#: k-means clusters an image's code is read through
CLUSTERS = 8


def kmeans(x: torch.Tensor, k: int, rng: np.random.RandomState, iters: int = 25) -> torch.Tensor:
    """Centroids ``(k, d)`` of Lloyd's k-means on the rows of ``x``, started at random rows."""
    k = min(k, x.shape[0])
    c = x[torch.as_tensor(rng.choice(x.shape[0], k, replace=False), device=x.device)].clone()
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        for j in range(k):
            m = a == j
            if bool(m.any()):
                c[j] = x[m].mean(0)
    return c


def _tvd_of_keys(
    cols_r: Sequence[np.ndarray], cols_f: Sequence[np.ndarray], nr: int, nf: int
) -> float:
    keys_r = np.stack(cols_r, 1) if cols_r else np.zeros((nr, 0), np.int64)
    keys_f = np.stack(cols_f, 1) if cols_f else np.zeros((nf, 0), np.int64)
    _, inv = np.unique(np.concatenate([keys_r, keys_f]), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    m = inv.max() + 1
    pr = np.bincount(inv[:nr], minlength=m) / nr
    pf = np.bincount(inv[nr:], minlength=m) / nf
    return float(0.5 * np.abs(pr - pf).sum())


def _floor_of_keys(cols: Sequence[np.ndarray], n: int) -> float:
    """The expected TVD between the frequency tables of two independent samples of ``n`` rows
    from the distribution the columns' table estimates: what a perfect model scores."""
    keys = np.stack(cols, 1) if cols else np.zeros((n, 0), np.int64)
    _, counts = np.unique(keys, axis=0, return_counts=True)
    p = counts / n
    # each cell's difference of two multinomial frequencies ~ N(0, 2 p (1 - p) / n)
    return float(0.5 * np.sum(np.sqrt(4.0 * p * (1.0 - p) / (np.pi * n))))


def table_floor(real: Sequence[np.ndarray], n_given: int) -> float:
    """The sampling-noise floor of :func:`table_tvd` on tables like ``real`` (same fallback)."""
    n = len(real[0])
    cells = 1
    for c in real:
        cells *= int(c.max()) + 1
    if cells * 10 <= n:
        return _floor_of_keys(real, n)
    given = list(real[:n_given])
    per = [_floor_of_keys(given + [r], n) for r in real[n_given:]]
    return float(np.mean(per)) if per else 0.0


def table_tvd(real: Sequence[np.ndarray], fake: Sequence[np.ndarray], n_given: int) -> float:
    """TVD between the joint frequency tables of the label columns (same conditioning rows in both,
    so this is the data-weighted conditional TVD given the first ``n_given`` columns). Falls back to
    the mean per-variable TVD (each with the given columns) when the joint table is too sparse."""
    nr, nf = len(real[0]), len(fake[0])
    cells = 1
    for c in real:
        cells *= int(c.max()) + 1
    if cells * 10 <= nr:
        return _tvd_of_keys(real, fake, nr, nf)
    given_r, given_f = list(real[:n_given]), list(fake[:n_given])
    per = [
        _tvd_of_keys(given_r + [r], given_f + [f], nr, nf)
        for r, f in zip(real[n_given:], fake[n_given:], strict=True)
    ]
    return float(np.mean(per)) if per else 0.0


def plateau(history: Sequence[float | None], patience: int) -> bool:
    """No new best fit (by more than 0.002) in the last ``patience`` checks."""
    h = [q for q in history if q is not None]
    if len(h) <= patience:
        return False
    return min(h[-patience:]) > min(h[:-patience]) - 0.002


def allowed_fit(tolerance: float, floor: float) -> float:
    """The fit a stage may stop at: ``tolerance`` of real misfit on top of the check's own
    sampling noise ``floor``; independent errors add in quadrature. (The trainer's early stop
    and :func:`mdcm.query.regime_fit_warning` both use it.)"""
    return math.hypot(tolerance, floor)


def stop_reason(
    history: Sequence[float | None],
    step: int,
    *,
    tolerance: float,
    stable_checks: int,
    patience: int,
    min_steps: int,
) -> str | None:
    """Why a stage should stop after a fit check, or None to go on: ``"tolerance"`` when the last
    ``stable_checks`` checks are all within ``tolerance``, ``"plateau"`` after ``patience`` checks
    without a new best; neither before ``min_steps`` steps."""
    if step < min_steps:
        return None
    last = [h for h in history[-stable_checks:] if h is not None]
    if len(last) == stable_checks and max(last) <= tolerance:
        return "tolerance"
    if patience and plateau(history, patience):
        return "plateau"
    return None


#: images encoded at once by the fit check (bounded memory for large images)
ENCODE_CHUNK = 512


def _encoded(encode: object, v: str, x: torch.Tensor) -> torch.Tensor:
    """Codes of images (float or 8-bit pixels, clamped to [-1, 1]), encoded chunk by chunk."""
    return torch.cat(
        [
            encode(v, as_float_images(x[i : i + ENCODE_CHUNK]).clamp(-1, 1))  # type: ignore[operator]
            for i in range(0, len(x), ENCODE_CHUNK)
        ]
    )


class DownstreamProbe:
    """What an image's children read, as seen by probes trained on real images (issue #10.4).

    One small classifier per child, from the image's standardised code (what the children's
    mechanisms read: the code a latent image drew, or the encoding of generated pixels) to the
    child's value (its class; a quantile bin of a continuous child; a k-means cluster of an
    image child's code), fitted on real rows that the check does not use. An image generator
    that keeps the k-means clusters of the code but drops the feature a child depends on gives
    other probe outputs on generated images than on real ones, and so fails the check. Read in
    code space, the probe compares like with like: a probe on pixels read fine detail of real
    images that no decoded image has (two_images: TVD 0.30 between real images and their own
    reconstructions, so every image stage "failed" at 0.43 and stopped on a plateau).
    """

    def __init__(
        self,
        codes: torch.Tensor,
        targets: Mapping[str, np.ndarray],
        classes: Mapping[str, int],
        seed: int = 0,
        steps: int = 300,
    ) -> None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        x = codes.detach().float()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-3)
        x = (x - self.mean) / self.std
        self.heads: dict[str, torch.nn.Module] = {}
        for child, y in targets.items():
            k = int(classes[child])
            head = torch.nn.Sequential(
                torch.nn.Linear(x.shape[1], 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, k)
            ).to(x.device)
            for p in head.parameters():  # deterministic init from the probe's own stream
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen).to(p.device) * 0.1)
            yt = torch.as_tensor(y, dtype=torch.long, device=x.device)
            opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
            with torch.enable_grad():
                for _ in range(steps):
                    idx = torch.randint(0, len(x), (min(256, len(x)),), generator=gen)
                    loss = torch.nn.functional.cross_entropy(head(x[idx.to(x.device)]), yt[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            for p in head.parameters():
                p.requires_grad_(False)
            self.heads[child] = head.eval()

    @torch.no_grad()
    def probs(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each child's predicted class probabilities ``(n, k)`` for a batch of image codes."""
        return {c: torch.softmax(z, dim=1) for c, z in self.logits(codes).items()}

    def logits(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each child's class logits ``(n, k)``; differentiable in ``codes`` (the heads are
        frozen), so a generated image's code can be trained through them."""
        x = (codes.float() - self.mean) / self.std
        return {c: h(x) for c, h in self.heads.items()}


def cell_tvd(cells: np.ndarray, p_real: torch.Tensor, p_fake: torch.Tensor) -> float:
    """Data-weighted TVD between the mean predicted distributions of real and fake rows within
    each conditioning cell (the rows are aligned: row i of both has the same do-parents)."""
    _, inv = np.unique(cells, axis=0, return_inverse=True)
    inv = torch.as_tensor(inv.reshape(-1), device=p_real.device)
    m = int(inv.max()) + 1
    k = p_real.shape[1]
    sum_r = torch.zeros(m, k, device=p_real.device).index_add_(0, inv, p_real)
    sum_f = torch.zeros(m, k, device=p_real.device).index_add_(0, inv, p_fake)
    counts = torch.bincount(inv, minlength=m).clamp_min(1)[:, None]
    per = 0.5 * (sum_r / counts - sum_f / counts).abs().sum(1)
    weights = counts[:, 0] / counts.sum()
    return float((per * weights).sum())


class FitCheck:
    """The discrete view of one target's rows that the stage's fit check compares.

    ``given``/``matches`` are the target's B and A; ``kinds`` the variable kinds; ``real`` the real
    rows the check uses (encoded); ``encode(v, x)`` maps an image to its standardised code.
    Categorical values are read as they are, images as k-means clusters of their code and
    continuous values as quantile bins (first two dimensions) of the real data — in B as well as
    in A, frozen or trained, so the check sees how A depends on every do-parent and on every
    variable it matches (a continuous outcome checked only by its marginal bins let a stage keep
    half of the confounding bias). ``probes`` (image -> :class:`DownstreamProbe`) add what the
    children of each image being trained read.
    """

    def __init__(
        self,
        given: Sequence[str],
        matches: Sequence[str],
        kinds: Mapping[str, str],
        real: Mapping[str, torch.Tensor],
        encode: object,
        rng: np.random.RandomState,
        probes: Mapping[str, DownstreamProbe] | None = None,
    ) -> None:
        self.kinds = dict(kinds)
        self.given = list(given)
        self.matches = list(matches)
        self.encode = encode
        self.probes = dict(probes or {})
        q = torch.tensor(QUANTILES)
        self.bin_edges = {
            v: [
                torch.quantile(real[v][:, j], q.to(real[v].device))
                for j in range(min(2, real[v].shape[1]))
            ]
            for v in self.given + self.matches
            if kinds[v] == "continuous"
        }
        self.centroids = {}
        for v in self.given + self.matches:
            if kinds[v] == "image":
                with torch.no_grad():
                    known = getattr(real, "codes", {})  # codes the caller already has
                    codes = known[v] if v in known else _encoded(encode, v, real[v])
                self.centroids[v] = kmeans(codes, CLUSTERS, rng)
        # the conditioning columns of the probe comparison: discrete and binned do-parents
        self.cell_vars = [v for v in self.given if kinds[v] != "image"]
        #: the downstream probe TVD of the last :meth:`tvd` (None without probes)
        self.last_downstream: float | None = None
        #: what a perfect model scores on these rows (sampling noise of two tables of this size)
        self.floor = table_floor(*self.labels(real)) if self.matches else 0.0

    @property
    def empty(self) -> bool:
        """Nothing to compare (a stage whose A holds no variable the check can read)."""
        return not self.matches and not self.probes

    def _columns(
        self, v: str, x: torch.Tensor, code: torch.Tensor | None = None
    ) -> list[np.ndarray]:
        kind = self.kinds[v]
        if kind == "categorical":
            return [x.argmax(1).cpu().numpy()]
        if kind == "image":
            codes = code if code is not None else _encoded(self.encode, v, x)
            return [torch.cdist(codes, self.centroids[v]).argmin(1).cpu().numpy()]
        return [
            torch.bucketize(x[:, j].contiguous(), edges).cpu().numpy()
            for j, edges in enumerate(self.bin_edges[v])
        ]

    def labels(self, vals: Mapping[str, torch.Tensor]) -> tuple[list[np.ndarray], int]:
        """(the label columns of encoded rows, given first, then A's; how many are given)."""
        given = [c for v in self.given for c in self._read(v, vals)]
        return given + [c for v in self.matches for c in self._read(v, vals)], len(given)

    def _codes(self, v: str, vals: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The codes of image ``v`` in ``vals``: those its mechanism drew (or the cached codes of
        real images) when known, else the encoding of its pixels."""
        codes = getattr(vals, "codes", {})
        if v in codes:
            return codes[v]
        with torch.no_grad():
            return _encoded(self.encode, v, vals[v])

    def _read(self, v: str, vals: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
        """The label columns of ``v``; a generated latent image is read through the code its
        mechanism drew (what its children read, :class:`mdcm.model.SampledValues`), without
        decoding it."""
        codes = getattr(vals, "codes", {})
        if v in codes:
            return self._columns(v, None, codes[v])  # type: ignore[arg-type]
        return self._columns(v, vals[v])

    def table(self, real: Mapping[str, torch.Tensor], fake: Mapping[str, torch.Tensor]) -> float:
        """Conditional TVD of the label tables of real vs fake rows."""
        (r, n_given), (f, _) = self.labels(real), self.labels(fake)
        return table_tvd(r, f, n_given)

    def downstream(
        self, real: Mapping[str, torch.Tensor], fake: Mapping[str, torch.Tensor]
    ) -> float | None:
        """The worst probe TVD over the children of the trained images (None without probes)."""
        if not self.probes:
            return None
        n = len(next(iter(real.values())))
        cols = [c for v in self.cell_vars for c in self._columns(v, real[v])]
        cells = np.stack(cols, 1) if cols else np.zeros((n, 1), np.int64)
        out = 0.0
        for v, probe in self.probes.items():
            pr, pf = probe.probs(self._codes(v, real)), probe.probs(self._codes(v, fake))
            out = max([out] + [cell_tvd(cells, pr[c], pf[c]) for c in pr])
        return out

    def tvd(self, real: Mapping[str, torch.Tensor], fake: Mapping[str, torch.Tensor]) -> float:
        """The check's value: the worse of the label-table TVD and the downstream probe TVD."""
        parts = [self.table(real, fake)] if self.matches else []
        down = self.last_downstream = self.downstream(real, fake)
        return max(parts + ([down] if down is not None else []))
