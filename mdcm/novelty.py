"""Is an image like the data? An out-of-range check for images given as interventions.

A trained DCM answers do(X = image) for any image, but its mechanisms have only seen images like
the study's data: for an image unlike all of them (a plain red photo given to an X-ray model) the
answer is an extrapolation by the networks, however tight its sampling interval. This module
measures how unusual an image is **against the data's own range** (novelty detection by
nearest-neighbour distance, e.g. Chandola, Banerjee & Kumar 2009, §5):

* distance: the root-mean-square pixel difference to the nearest data image (images pooled to at
  most 16×16, so pose noise matters less than content). Each data image's distance to its
  nearest *other* data image is the reference; an image farther from the data than every data
  image is from the rest is out of range;
* when the model has a fitted image coder (the autoencoder its children read, :mod:`mdcm.coders`),
  also the coder's reconstruction error against the errors of the data images: the model's own
  view of what it can represent.

Pure numpy, plus torch only to run a coder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ImageReference", "RangeCheck", "check_image", "image_features", "image_reference"]

POOL_SIDE = 16
MAX_REFERENCE = 2000


def image_features(images: np.ndarray, side: int = POOL_SIDE) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> (N, D) float32 features: block means down to at most
    ``side`` × ``side`` (edges padded by repetition), flattened."""
    a = np.asarray(images, dtype=np.float32)
    if a.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {a.shape}")
    n, c, h, w = a.shape
    fh, fw = -(-h // side), -(-w // side)
    if fh > 1 or fw > 1:
        ph, pw = (-h) % fh, (-w) % fw
        a = np.pad(a, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        a = a.reshape(n, c, a.shape[2] // fh, fh, a.shape[3] // fw, fw).mean(axis=(3, 5))
    return a.reshape(n, -1)


def _rms_distances(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(n, m) root-mean-square distances between rows of x and rows of ref."""
    d2 = (x * x).sum(1)[:, None] + (ref * ref).sum(1)[None, :] - 2.0 * x @ ref.T
    return np.sqrt(np.maximum(d2, 0.0) / x.shape[1])


@dataclass(frozen=True)
class ImageReference:
    """The data's own range: pooled reference images, each one's distance to its nearest other
    reference image, and (optionally) the coder's reconstruction error of each."""

    shape: tuple[int, ...]
    features: np.ndarray  # (m, D)
    nn_distance: np.ndarray  # (m,)
    coder_error: np.ndarray | None = None  # (m,) mean squared reconstruction error

    @property
    def limit(self) -> float:
        """The largest distance of a data image to the rest of the data."""
        return float(self.nn_distance.max())


def _coder_errors(coder: Any, images: np.ndarray, batch: int = 512) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.as_tensor(np.asarray(images[i : i + batch], dtype=np.float32))
            rec = coder.decode(coder.encode(x)).clamp(-1, 1)
            out.append(((rec - x) ** 2).flatten(1).mean(1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def image_reference(
    images: np.ndarray, *, coder: Any | None = None, max_images: int = MAX_REFERENCE, seed: int = 0
) -> ImageReference:
    """The reference range of ``images`` (the data of one image variable; at most
    ``max_images`` of them, drawn at random with ``seed``). Pass the model's fitted image coder
    (an :class:`mdcm.coders.ImageCoder`) to add its reconstruction errors."""
    n = len(images)
    if n < 2:
        raise ValueError("the out-of-range check needs at least two data images")
    if n > max_images:  # choose the rows first: an 8-bit image column converts only those
        images = images[np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))]
    a = np.asarray(images, dtype=np.float32)
    f = image_features(a)
    d = _rms_distances(f, f)
    np.fill_diagonal(d, np.inf)
    errs = _coder_errors(coder, a) if coder is not None else None
    return ImageReference(tuple(a.shape[1:]), f, d.min(1), errs)


@dataclass(frozen=True)
class RangeCheck:
    """How one image compares with the data's own range."""

    distance: float  # RMS distance to the nearest data image
    limit: float  # the largest nearest-neighbour distance among the data images
    typical: float  # their median
    share_closer: float  # fraction of data images that lie closer to the rest than this one
    coder_error: float | None = None
    coder_limit: float | None = None

    @property
    def far_from_data(self) -> bool:
        return self.distance > self.limit

    @property
    def coder_cannot_represent(self) -> bool:
        return (
            self.coder_error is not None
            and self.coder_limit is not None
            and self.coder_error > self.coder_limit
        )

    @property
    def out_of_range(self) -> bool:
        return self.far_from_data or self.coder_cannot_represent

    def message(self, what: str = "This image") -> str:
        """Plain words for the app; empty when the image is within the data's range."""
        if not self.out_of_range:
            return ""
        why = []
        if self.far_from_data:
            why.append(
                f"it lies {self.distance:.2f} from the nearest data image, while data images "
                f"lie at most {self.limit:.2f} (typically {self.typical:.2f}) from each other"
            )
        if self.coder_cannot_represent:
            why.append(
                f"the model's image coder reconstructs it with error {self.coder_error:.3f}, "
                f"more than for any data image (at most {self.coder_limit:.3f})"
            )
        return (
            f"{what} is unlike every image in the training data ({'; '.join(why)}). The "
            "answer below is an extrapolation by the networks, not something the data show."
        )


def check_image(ref: ImageReference, image: np.ndarray, *, coder: Any | None = None) -> RangeCheck:
    """Compare one (C, H, W) image (at the data's size, values in [-1, 1]) with ``ref``."""
    img = np.asarray(image, dtype=np.float32)
    if tuple(img.shape) != tuple(ref.shape):
        raise ValueError(f"image shape {list(img.shape)} differs from the data's {list(ref.shape)}")
    d = float(_rms_distances(image_features(img[None]), ref.features)[0].min())
    err = lim = None
    if coder is not None and ref.coder_error is not None and len(ref.coder_error):
        err = float(_coder_errors(coder, img[None])[0])
        lim = float(ref.coder_error.max())
    return RangeCheck(
        distance=d,
        limit=ref.limit,
        typical=float(np.median(ref.nn_distance)),
        share_closer=float((ref.nn_distance < d).mean()),
        coder_error=err,
        coder_limit=lim,
    )
