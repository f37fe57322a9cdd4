"""Training checkpoints: weights (safetensors), optimiser and RNG state, and a JSON state with the
sha256 of both, replaced crash-safely (:func:`mdcm.files.replace_with_versioned`).

The one ``torch.save`` file mdcm writes is ``optim.pt``; it is read back only when its sha256
matches ``checkpoint.json`` and then with ``weights_only=True``, so it can never run code.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from .files import (
    JsonFileError,
    atomic_write,
    plain_file_name,
    read_json_file,
    replace_with_versioned,
    sha256_file,
)
from .model import ModelFileError, read_safetensors, state_bytes

__all__ = ["CKPT_OPTIM", "CKPT_STATE", "CKPT_WEIGHTS", "Checkpoint", "load", "save"]

CKPT_WEIGHTS = "checkpoint.safetensors"
CKPT_OPTIM = "optim.pt"
CKPT_STATE = "checkpoint.json"

#: (tensors, optimiser/RNG state, JSON state)
Checkpoint = tuple[dict[str, torch.Tensor], dict, dict]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing file, hash mismatch, unsafe payload). The trainer
    turns it into a TrainingError that says to start again without resume."""


def save(ckdir: Path, tensors: Mapping[str, torch.Tensor], optim: dict, state: dict) -> None:
    """Write a checkpoint. New files go under versioned names that a new checkpoint.json points to
    before they replace the fixed names, so a failed write never spoils the last good one."""

    ckdir.mkdir(parents=True, exist_ok=True)
    blob = state_bytes(tensors)
    buf = io.BytesIO()
    torch.save(optim, buf)
    state = dict(
        state,
        weights_sha256=hashlib.sha256(blob).hexdigest(),
        optim_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
    )

    def write_state(names: Mapping[str, str]) -> None:
        pointer = dict(state, weights_file=names[CKPT_WEIGHTS], optim_file=names[CKPT_OPTIM])
        atomic_write(ckdir / CKPT_STATE, json.dumps(pointer, indent=1))

    replace_with_versioned(ckdir, {CKPT_WEIGHTS: blob, CKPT_OPTIM: buf.getvalue()}, write_state)


def load(ckdir: Path) -> Checkpoint | None:
    """The checkpoint in ``ckdir``, or None when there is none; :class:`CheckpointError` when it
    is spoiled (never half-loaded)."""
    spath = ckdir / CKPT_STATE
    if not spath.exists():
        return None
    try:
        state = read_json_file(spath)
    except JsonFileError as exc:
        raise CheckpointError(f"checkpoint {spath} {exc}") from None
    paths = {}
    for fixed, key, name_key in (
        (CKPT_WEIGHTS, "weights_sha256", "weights_file"),
        (CKPT_OPTIM, "optim_sha256", "optim_file"),
    ):
        p = ckdir / (plain_file_name(state.get(name_key), ckdir) or fixed)
        if not p.exists() or sha256_file(p) != state.get(key):
            raise CheckpointError(f"checkpoint file {p} is missing or does not match {CKPT_STATE}")
        paths[fixed] = p
    try:
        tensors = read_safetensors(paths[CKPT_WEIGHTS], "checkpoint")
    except ModelFileError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        optim = torch.load(paths[CKPT_OPTIM], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip errors, ...
        raise CheckpointError(
            f"checkpoint file {paths[CKPT_OPTIM]} is unreadable or was refused as unsafe "
            f"({type(exc).__name__})"
        ) from None
    return tensors, optim, state
