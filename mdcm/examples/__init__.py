"""Built-in example studies, generated on the fly with a seed, each with exact ground truth.

>>> ex = load_example("colored_digits", size="cpu", n=500, seed=0)
>>> ex.truth("A", {"D": 0}), ex.naive("A", {"D": 0})     # exact P(A | do(D=0)) vs P(A | D=0)

Names (design.md §4): ``colored_digits`` and ``xray`` (front-door with an image mediator),
``napkin``, ``backdoor`` (continuous confounder) and ``bow`` (not identifiable). The
semi-synthetic builders :func:`build_mnist_frontdoor` and :func:`build_pneumonia_frontdoor` wrap
real images (for benchmarks) in the same kind of known mechanism.

Exact ground truth of the default queries, P(outcome=1 | do(t)) vs the naive P(outcome=1 | t):

==============  =========  ==================  ==================  ==================
example         query      t=0                 t=1                 t=2
==============  =========  ==================  ==================  ==================
colored_digits  A | D      0.3752 vs 0.2539    0.5000 vs 0.5000    0.6248 vs 0.7461
xray            N | C      0.4404 vs 0.3089    0.5785 vs 0.7063
napkin          Y | X      0.5316 vs 0.4183    0.6651 vs 0.7369
backdoor        Y | X      0.3984 vs 0.2285    0.5681 vs 0.7228
bow             Y | X      0.4567 vs 0.3131    0.6292 vs 0.7748    (not identifiable)
==============  =========  ==================  ==================  ==================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from . import (
    backdoor,
    bow,
    colored_digits,
    experiment,
    frontdoor_continuous,
    napkin,
    two_images,
    xray,
)
from ._scm import SCM, Example, Node
from .semi_synthetic import build_mnist_frontdoor, build_pneumonia_frontdoor

__all__ = [
    "EXAMPLES",
    "SIZES",
    "DEFAULT_ROWS",
    "default_rows",
    "Example",
    "Node",
    "SCM",
    "load_example",
    "export_example",
    "build_mnist_frontdoor",
    "build_pneumonia_frontdoor",
]

_MODULES = {
    m.NAME: m
    for m in (
        colored_digits,
        xray,
        napkin,
        backdoor,
        bow,
        frontdoor_continuous,
        experiment,
        two_images,
    )
}
EXAMPLES: dict[str, str] = {name: m.DESCRIPTION for name, m in _MODULES.items()}
#: the size ladder of the image examples: "cpu" (colored digits 3x14x14, X-ray 1x16x16), then
#: side lengths 64, 128 and 256 px, each rendered at that size (never upscaled), with the same
#: generating SCM and so the same exact truth; "gpu" (28 px) is kept for older scripts and runs.
SIZES = ("cpu", "64", "128", "256", "gpu")
#: default observational rows per size (image examples; label-only examples: 4000, "gpu" 20000)
DEFAULT_ROWS = {"cpu": 4000, "64": 8000, "128": 8000, "256": 4000, "gpu": 20000}
IMAGE_EXAMPLES = ("colored_digits", "xray")


def default_rows(name: str, size: str) -> int:
    """The default ``n`` of :func:`load_example` for example ``name`` at ``size``."""
    if name in IMAGE_EXAMPLES:
        return DEFAULT_ROWS[size]
    return 20000 if size == "gpu" else 4000


def load_example(
    name: str,
    size: str = "cpu",
    n: int | None = None,
    seed: int = 0,
    *,
    variant: str | None = None,
    interventions: Sequence[Mapping[str, int]] = (),
    n_interventional: int | None = None,
) -> Example:
    """Generate the built-in study ``name`` (``n`` observational rows drawn with ``seed``).

    ``size="cpu"`` uses small images (colored digits 3x14x14, X-ray 1x16x16); ``"64"``,
    ``"128"`` and ``"256"`` render the same study at that side length, ``"gpu"`` at 28x28 (see
    :data:`SIZES`; the default ``n`` is :func:`default_rows`). ``interventions=[{"X": 1}]`` adds
    interventional datasets (``do_X=1``) of ``n_interventional`` rows (default ``n``).
    ``variant="reveal"`` (colored_digits only) makes the image reveal the treatment.
    """
    if name not in _MODULES:
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
    size = str(size)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {', '.join(SIZES)}")
    return _MODULES[name].build(
        size=size,
        n=n if n is not None else default_rows(name, size),
        seed=seed,
        variant=variant,
        interventions=interventions,
        n_interventional=n_interventional,
    )


def export_example(
    name: str,
    out_dir: Path | str,
    size: str = "cpu",
    n: int | None = None,
    seed: int = 0,
    *,
    variant: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a built-in example as a study folder (``mdcm export-example NAME --out DIR``)."""
    return load_example(name, size=size, n=n, seed=seed, variant=variant).export(
        out_dir, overwrite=overwrite
    )
