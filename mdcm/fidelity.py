"""Image fidelity per image variable, measured without downloaded weights (issue 11).

A causal answer that passes through an image is only as good as the features the generated images
carry. Three figures compare a model's generated images with the study's real ones, each next to
its **real-vs-real floor** (the same figure between two disjoint halves of the held-out real
images), so that a reader sees what "as good as real" means for this study:

* **feature agreement**: a probe (a small conv classifier, :class:`mdcm.query.ImageProbe`)
  trained on the study's real images reads each categorical neighbour of the image (its parents
  and children) off held-out real images and off generated ones; per class, the share of images
  the probe assigns to their own label (recall), generated next to real. Images that lost a
  feature read at chance; images that reveal a parent more than real ones do (design.md §7)
  read above the real accuracy.
* **Fréchet distance** (FID's statistic, Heusel et al. 2017) between Gaussian fits of the probe's
  penultimate features of real and generated images. The feature net is trained on this study's
  own images, not downloaded; without a categorical neighbour it is a seeded random conv net
  (random-feature Fréchet distances still separate blurred from sharp images).
* **sharpness ratio**: the share of spectral energy above half the Nyquist frequency (the top
  octave, where edges and texture live), generated over real. Blurred images fall well below 1.

The probe and the feature net read images average-pooled to at most :data:`PROBE_SIDE` pixels
(fast on a CPU at any size); the sharpness ratio reads full resolution. Everything here is a
pure function of arrays and a seed; :func:`model_fidelity` is the one function that samples a
model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch stays out of `import mdcm.fidelity` until a figure is computed
    from .data import Study
    from .model import DCM

__all__ = [
    "AGREEMENT_TOL",
    "PROBE_SIDE",
    "ClassAgreement",
    "ImageFidelity",
    "LabelAgreement",
    "format_report",
    "frechet_distance",
    "image_fidelity",
    "model_fidelity",
    "neighbour_labels",
    "pooled",
    "top_octave_share",
]

#: side (pixels) the probe and the feature net read images at
PROBE_SIDE = 32
#: generated-vs-real probe accuracy gap that counts as agreement (the issue-11 bar); a gap is
#: flagged only when it is also beyond 3 standard errors of the two accuracies
AGREEMENT_TOL = 0.05
#: a Fréchet distance above this many times the real-vs-real floor is flagged
FRECHET_RATIO_FLAG = 4.0
#: sharpness ratios outside this band (relative to the real-vs-real floor) are flagged
SHARPNESS_BAND = (0.6, 1.6)
#: held-out real images per half (A and B) and generated images compared with them
EVAL_IMAGES = 1000
#: real images the probe trains on (at most)
PROBE_TRAIN_IMAGES = 4000
PROBE_STEPS = 300


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class ClassAgreement:
    """One class of one label: the probe's recall on real and generated images of that class."""

    value: int
    real_recall: float | None
    generated_recall: float | None
    real_n: int
    generated_n: int


@dataclass(frozen=True)
class LabelAgreement:
    """How well a probe trained on real images reads ``label`` off real vs generated images."""

    label: str
    role: str  # "parent" | "child"
    real_accuracy: float
    generated_accuracy: float
    classes: tuple[ClassAgreement, ...] = ()

    n: int = 0  # images per accuracy (for the standard error)

    @property
    def gap(self) -> float:
        """generated minus real accuracy (negative: the feature is carried more weakly)."""
        return self.generated_accuracy - self.real_accuracy

    @property
    def agrees(self) -> bool:
        """Within :data:`AGREEMENT_TOL`, or within 3 standard errors of sampling noise."""
        r, g = self.real_accuracy, self.generated_accuracy
        se = math.sqrt((r * (1 - r) + g * (1 - g)) / max(self.n, 1))
        return abs(self.gap) <= max(AGREEMENT_TOL, 3.0 * se)


@dataclass(frozen=True)
class ImageFidelity:
    """The fidelity figures of one image variable, each with its real-vs-real floor."""

    variable: str
    shape: tuple[int, ...]
    n_real: int  # held-out real images per half
    n_generated: int
    agreement: tuple[LabelAgreement, ...]
    frechet: float
    frechet_floor: float
    sharpness: float
    sharpness_floor: float
    features: str  # "probe" (trained on the study's images) | "random" (no categorical label)
    notes: tuple[str, ...] = field(default=())

    def flags(self) -> list[str]:
        """Plain-language problems the figures show (empty: as good as the floors allow)."""
        out = []
        for a in self.agreement:
            if not a.agrees:
                how = "more weakly than" if a.gap < 0 else "more strongly than"
                out.append(
                    f"generated {self.variable} carry {a.label} {how} real ones (probe accuracy "
                    f"{a.generated_accuracy:.2f} vs {a.real_accuracy:.2f} on real images)"
                )
        if not self.frechet_ok:
            out.append(
                f"generated {self.variable} look unlike real ones (Fréchet distance "
                f"{self.frechet:.2f}, real vs real {self.frechet_floor:.2f})"
            )
        lo, hi = SHARPNESS_BAND
        floor = self.sharpness_floor or 1.0
        if self.sharpness < lo * floor:
            out.append(
                f"generated {self.variable} are blurred (sharpness {self.sharpness:.2f} of "
                f"real; real vs real {self.sharpness_floor:.2f})"
            )
        elif self.sharpness > hi * floor:
            out.append(
                f"generated {self.variable} are noisier than real ones (sharpness "
                f"{self.sharpness:.2f} of real; real vs real {self.sharpness_floor:.2f})"
            )
        return out

    @property
    def frechet_ok(self) -> bool:
        return self.frechet <= FRECHET_RATIO_FLAG * max(self.frechet_floor, 1e-9)

    @property
    def agreement_gap(self) -> float | None:
        """The largest |generated - real| probe accuracy over the labels (None: no label)."""
        return max((abs(a.gap) for a in self.agreement), default=None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["flags"] = self.flags()
        d["agreement_gap"] = self.agreement_gap
        return d

    def summary(self) -> dict[str, Any]:
        """The figures in short (benchmark tables): [generated, floor] pairs and the flags."""
        return {
            "agreement": {
                a.label: [round(a.generated_accuracy, 3), round(a.real_accuracy, 3)]
                for a in self.agreement
            },
            "frechet": [round(self.frechet, 3), round(self.frechet_floor, 3)],
            "sharpness": [round(self.sharpness, 3), round(self.sharpness_floor, 3)],
            "flags": self.flags(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One table row per figure (CLI table, Checks page)."""
        out = []
        for a in self.agreement:
            out.append(
                {
                    "figure": f"probe accuracy: {a.label} ({a.role})",
                    "generated": round(a.generated_accuracy, 3),
                    "real (floor)": round(a.real_accuracy, 3),
                    "ok": a.agrees,
                }
            )
        out.append(
            {
                "figure": f"Fréchet distance ({self.features} features)",
                "generated": round(self.frechet, 3),
                "real (floor)": round(self.frechet_floor, 3),
                "ok": self.frechet_ok,
            }
        )
        lo, hi = SHARPNESS_BAND
        floor = self.sharpness_floor or 1.0
        out.append(
            {
                "figure": "sharpness (top-octave energy, / real)",
                "generated": round(self.sharpness, 3),
                "real (floor)": round(self.sharpness_floor, 3),
                "ok": lo * floor <= self.sharpness <= hi * floor,
            }
        )
        return out


# ---------------------------------------------------------------------- pure figures
def _chunks(images: Any, chunk: int) -> Iterable[np.ndarray]:
    """float32 chunks in [-1, 1] of an image array (any array-like: ndarray, tensor, 8-bit
    image column; uint8 pixels 0 … 255 are converted)."""
    for lo in range(0, len(images), chunk):
        part = images[lo : lo + chunk]
        if hasattr(part, "detach"):
            part = part.detach().cpu().numpy()
        part = np.asarray(part)
        if part.dtype == np.uint8:
            yield (part.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
        else:
            yield part.astype(np.float32, copy=False)


def pooled(images: Any, side: int = PROBE_SIDE, chunk: int = 256) -> np.ndarray:
    """Images ``(n, C, H, W)`` average-pooled to at most ``side`` x ``side`` (float32)."""
    import torch

    out = []
    for part in _chunks(images, chunk):
        t = torch.from_numpy(part)
        h, w = t.shape[2:]
        if max(h, w) > side:
            t = torch.nn.functional.adaptive_avg_pool2d(t, (min(h, side), min(w, side)))
        out.append(t.numpy())
    if not out:
        return np.zeros((0,), np.float32)
    return np.concatenate(out)


def top_octave_share(images: Any, chunk: int = 64) -> float:
    """Mean over images of the share of spectral energy (per channel, image mean removed) at
    frequencies above half the Nyquist frequency in x or y."""
    import torch

    total, count = 0.0, 0
    mask = None
    for part in _chunks(images, chunk):
        t = torch.from_numpy(part).double()
        t = t - t.mean(dim=(2, 3), keepdim=True)
        p = torch.fft.fft2(t).abs().pow(2)
        if mask is None:
            fy = torch.fft.fftfreq(t.shape[2]).abs()
            fx = torch.fft.fftfreq(t.shape[3]).abs()
            mask = torch.maximum(fy[:, None], fx[None, :]) > 0.25
        energy = p.sum(dim=(1, 2, 3)).clamp_min(1e-12)
        total += float((p[:, :, mask].sum(dim=(1, 2)) / energy).sum())
        count += t.shape[0]
    return total / max(count, 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of the rows of ``a`` and ``b``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (Dowson & Landau 1982)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ sb @ root_a)
    tr = np.trace(sa) + np.trace(sb) - 2.0 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(mu @ mu + max(tr, 0.0))


def _recalls(pred: np.ndarray, truth: np.ndarray, k: int) -> tuple[list[float | None], list[int]]:
    rec, ns = [], []
    for c in range(k):
        m = truth == c
        ns.append(int(m.sum()))
        rec.append(float((pred[m] == c).mean()) if m.any() else None)
    return rec, ns


def image_fidelity(
    variable: str,
    real_images: Any,
    real_labels: Mapping[str, np.ndarray],
    generated_images: Any,
    generated_labels: Mapping[str, np.ndarray],
    classes: Mapping[str, int],
    roles: Mapping[str, str] | None = None,
    *,
    n_eval: int = EVAL_IMAGES,
    probe_steps: int = PROBE_STEPS,
    seed: int = 0,
) -> ImageFidelity:
    """The three fidelity figures of one image variable.

    ``real_images`` (N, C, H, W) in [-1, 1] with their categorical labels ``real_labels`` (the
    image's parents and children, ``classes`` per label, ``roles`` "parent"/"child");
    ``generated_images`` with the labels generated with them (a joint sample of the model). The
    real rows are split at random into a probe-training part and two disjoint held-out halves A
    and B of ``m = min(n_eval, N // 4, n_generated)`` rows; generated figures compare with A,
    floors are B vs A.
    """
    import torch

    from .query import ImageProbe, fit_image_probe

    n_real, n_gen = len(real_images), len(generated_images)
    m = min(n_eval, n_real // 4, n_gen)
    if m < 20:
        raise ValueError(
            f"{variable}: fidelity needs at least 80 real and 20 generated images "
            f"(got {n_real} and {n_gen})"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_real)
    idx_a, idx_b = np.sort(perm[:m]), np.sort(perm[m : 2 * m])
    idx_tr = np.sort(perm[2 * m : 2 * m + PROBE_TRAIN_IMAGES])
    gen_idx = np.sort(rng.permutation(n_gen)[:m])
    labels = [k for k in real_labels if k in generated_labels]
    roles = dict(roles or {})

    def take(images: Any, idx: np.ndarray) -> np.ndarray:
        return pooled(_Rows(images, idx))

    real_tr, real_a, real_b = (take(real_images, i) for i in (idx_tr, idx_a, idx_b))
    fake = take(generated_images, gen_idx)
    notes: list[str] = []
    if labels:
        probe, _ = fit_image_probe(
            real_tr,
            {k: np.asarray(real_labels[k])[idx_tr] for k in labels},
            {k: int(classes[k]) for k in labels},
            steps=probe_steps,
            seed=seed,
        )
        kind = "probe"
    else:
        torch.manual_seed(seed)
        probe = ImageProbe(tuple(real_a.shape[1:]), {})
        kind = "random"
        notes.append("no categorical parent or child: Fréchet features are a random conv net")
    probe.eval()

    @torch.no_grad()
    def feats(x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [probe.body(torch.from_numpy(x[i : i + 512])).numpy() for i in range(0, len(x), 512)]
        )

    agreement = []
    if labels:
        pr_a, pr_g = probe.predict(real_a), probe.predict(fake)
        for k in labels:
            ya = np.asarray(real_labels[k])[idx_a]
            yg = np.asarray(generated_labels[k])[gen_idx]
            ra, na = _recalls(pr_a[k], ya, int(classes[k]))
            rg, ng = _recalls(pr_g[k], yg, int(classes[k]))
            agreement.append(
                LabelAgreement(
                    k,
                    roles.get(k, "parent"),
                    float((pr_a[k] == ya).mean()),
                    float((pr_g[k] == yg).mean()),
                    tuple(
                        ClassAgreement(c, ra[c], rg[c], na[c], ng[c])
                        for c in range(int(classes[k]))
                    ),
                    m,
                )
            )
    fa, fb, fg = feats(real_a), feats(real_b), feats(fake)
    sharp_a = top_octave_share(_Rows(real_images, idx_a))
    sharp_b = top_octave_share(_Rows(real_images, idx_b))
    sharp_g = top_octave_share(_Rows(generated_images, gen_idx))
    return ImageFidelity(
        variable=variable,
        shape=_shape(real_images)[1:],
        n_real=m,
        n_generated=m,
        agreement=tuple(agreement),
        frechet=frechet_distance(fa, fg),
        frechet_floor=frechet_distance(fa, fb),
        sharpness=sharp_g / max(sharp_a, 1e-12),
        sharpness_floor=sharp_b / max(sharp_a, 1e-12),
        features=kind,
        notes=tuple(notes),
    )


def _shape(images: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in images.shape)


class _Rows:
    """A row selection of an image array that is read chunk by chunk (never copied whole)."""

    def __init__(self, images: Any, idx: np.ndarray) -> None:
        self.images, self.idx = images, np.asarray(idx, np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> Any:
        rows = self.idx[s]
        if hasattr(self.images, "detach"):
            import torch

            return self.images[torch.as_tensor(rows, device=self.images.device)]
        return self.images[rows]


# ---------------------------------------------------------------------- a model vs a study
def neighbour_labels(schema: Any, variable: str) -> dict[str, str]:
    """The categorical parents and children of an image variable: label -> "parent"/"child"."""
    g = schema.graph
    out = {p: "parent" for p in g.parents(variable) if schema[p].kind == "categorical"}
    for c in g.children(variable):
        if schema[c].kind == "categorical":
            out.setdefault(c, "child")
    return out


def model_fidelity(
    model: DCM,
    study: Study,
    *,
    variables: Sequence[str] | None = None,
    n: int = EVAL_IMAGES,
    seed: int = 0,
    probe_steps: int = PROBE_STEPS,
    chunk: int = 256,
) -> dict[str, ImageFidelity]:
    """Fidelity of every image variable (or ``variables``) of ``model`` against the study's
    observational data: ``n`` generated rows from the model's observational joint (sampled in
    chunks of ``chunk``) vs held-out real rows."""
    obs = study.observational
    if obs is None:
        raise ValueError("fidelity compares with observational data; the study has none")
    schema = model.schema
    names = list(variables) if variables is not None else schema.of_kind("image")
    for v in names:
        if v not in schema.names or schema[v].kind != "image":
            raise ValueError(f"{v!r} is not an image variable of the model")
    if not names:
        return {}
    need = sorted({lab for v in names for lab in neighbour_labels(schema, v)})
    gen: dict[str, list[np.ndarray]] = {v: [] for v in (*names, *need)}
    for i, lo in enumerate(range(0, n, chunk)):
        s = model.sample(min(chunk, n - lo), seed=seed * 1_000_003 + 17 * (i + 1))
        for v in gen:
            gen[v].append(s[v].cpu().numpy())
    generated = {v: np.concatenate(parts) for v, parts in gen.items()}
    out = {}
    for v in names:
        roles = neighbour_labels(schema, v)
        out[v] = image_fidelity(
            v,
            obs.columns[v],
            {k: np.asarray(obs.columns[k]) for k in roles},
            generated[v],
            {k: generated[k] for k in roles},
            {k: schema[k].classes for k in roles},
            roles,
            n_eval=n,
            probe_steps=probe_steps,
            seed=seed,
        )
    return out


def format_report(fid: ImageFidelity) -> str:
    """A plain-text table of one image variable's figures and their floors (``mdcm check``)."""
    shape = "x".join(str(s) for s in fid.shape)
    lines = [
        f"image {fid.variable} ({shape}): {fid.n_generated} generated vs {fid.n_real} "
        "held-out real images (floor: real vs real)",
        f"  {'figure':44} {'generated':>10} {'floor':>8}  ok",
    ]
    for r in fid.rows():
        ok = "yes" if r["ok"] else "NO"
        lines.append(f"  {r['figure']:44} {r['generated']:10.3f} {r['real (floor)']:8.3f}  {ok}")
    for a in fid.agreement:
        per = ", ".join(
            f"{c.value}: {_pct(c.generated_recall)} vs {_pct(c.real_recall)}" for c in a.classes
        )
        lines.append(f"    {a.label} per class (generated vs real recall): {per}")
    problems = fid.flags()
    lines.append("  problems: " + ("none" if not problems else ""))
    lines += [f"    - {p}" for p in problems]
    lines += [f"  note: {n}" for n in fid.notes]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
