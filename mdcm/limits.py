"""Limits on what users upload, and the error every bad input becomes (:class:`DataError`).

Shared by the study format (:mod:`mdcm.data`), the file readers (:mod:`mdcm.readers`) and the
safe zip extraction (:mod:`mdcm.safezip`). The README's "Limits and safety" lists every limit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["DEFAULT_LIMITS", "DataError", "UploadLimits"]


class DataError(ValueError):
    """Bad data: the message names the file, row, column and variable at fault."""


@dataclass(frozen=True)
class UploadLimits:
    """Hard limits for user-supplied files (zip uploads, CSV rows, images).

    ``max_ratio`` is checked for members larger than ``ratio_min_bytes`` only (tiny files may
    compress very well legitimately). ``max_nesting`` is how many levels of zip-inside-zip are
    extracted; deeper archives are refused.
    """

    max_files: int = 100_000
    max_total_bytes: int = 1 << 30  # 1 GiB uncompressed, all members together
    max_file_bytes: int = 256 << 20  # 256 MiB for one member
    max_ratio: float = 200.0  # uncompressed / compressed
    ratio_min_bytes: int = 1 << 20
    max_image_pixels: int = 1 << 20  # H * W of one image (decompression bombs)
    max_rows: int = 1_000_000
    max_nesting: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UploadLimits:
        """Defaults overridden by ``MDCM_LIMIT_<FIELD>`` variables (e.g. ``MDCM_LIMIT_MAX_ROWS``),
        so the app and the command line can be configured without code."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = env.get(f"MDCM_LIMIT_{f.name.upper()}")
            if raw is None:
                continue
            try:
                value = float(raw) if f.type in (float, "float") else int(raw)
            except ValueError:
                raise DataError(f"MDCM_LIMIT_{f.name.upper()}={raw!r} is not a number") from None
            if value < 0:
                raise DataError(f"MDCM_LIMIT_{f.name.upper()} must not be negative")
            values[f.name] = value
        return cls(**values)


DEFAULT_LIMITS = UploadLimits.from_env(os.environ)
