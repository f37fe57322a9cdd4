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

from collections.abc import Mapping, Sequence

import numpy as np
import torch

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


class FitCheck:
    """The discrete view of one target's rows that the stage's fit check compares.

    ``given``/``matches`` are the target's B and A; ``kinds`` the variable kinds; ``trains`` the
    mechanisms the stage trains (only their continuous variables are binned: a frozen continuous
    variable was checked by its own stage); ``real`` the real rows the check uses (encoded).
    ``encode(v, x)`` maps an image to its standardised code.
    """

    def __init__(
        self,
        given: Sequence[str],
        matches: Sequence[str],
        kinds: Mapping[str, str],
        trains: Sequence[str],
        real: Mapping[str, torch.Tensor],
        encode: object,
        rng: np.random.RandomState,
    ) -> None:
        self.given = [v for v in given if kinds[v] == "categorical"]
        self.labels_of = [v for v in matches if kinds[v] == "categorical"]
        # Images in A (trained or frozen) enter as k-means clusters of their code: without them a
        # label stage could match P(D, A) while getting A's dependence on the image wrong.
        self.cluster_vars = [v for v in matches if kinds[v] == "image"]
        # Continuous variables trained here: quantile bins (first 2 dimensions) of the real data,
        # so label-free stages get a fit check and an early stop too.
        self.bin_vars = [v for v in matches if kinds[v] == "continuous" and v in trains]
        self.encode = encode
        q = torch.tensor(QUANTILES)
        self.bin_edges = {
            v: [
                torch.quantile(real[v][:, j], q.to(real[v].device))
                for j in range(min(2, real[v].shape[1]))
            ]
            for v in self.bin_vars
        }
        self.centroids = {}
        for v in self.cluster_vars:
            with torch.no_grad():
                codes = encode(v, real[v])  # type: ignore[operator]
            self.centroids[v] = kmeans(codes, CLUSTERS, rng)

    @property
    def empty(self) -> bool:
        """Nothing to compare (a stage whose A holds no variable the check can read)."""
        return not (self.labels_of or self.cluster_vars or self.bin_vars)

    def labels(self, vals: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
        """The label columns of encoded rows: given first, then A's."""
        out = [vals[v].argmax(1).cpu().numpy() for v in self.given + self.labels_of]
        for v in self.cluster_vars:
            codes = self.encode(v, vals[v].clamp(-1, 1))  # type: ignore[operator]
            out.append(torch.cdist(codes, self.centroids[v]).argmin(1).cpu().numpy())
        for v in self.bin_vars:
            for j, edges in enumerate(self.bin_edges[v]):
                out.append(torch.bucketize(vals[v][:, j].contiguous(), edges).cpu().numpy())
        return out

    def tvd(self, real: Mapping[str, torch.Tensor], fake: Mapping[str, torch.Tensor]) -> float:
        """The check's value: conditional TVD of the label tables of real vs fake rows."""
        return table_tvd(self.labels(real), self.labels(fake), len(self.given))
