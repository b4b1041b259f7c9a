"""Checkpoints: everything needed to resume training exactly, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from digitflow.errors import CheckpointError
from digitflow.fileio import atomic_write, one_line

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file, then rename) so a crash never leaves half a checkpoint.

    ``state`` holds only tensors, numbers, strings, lists and dicts: what ``weights_only`` loads.
    """
    return atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp))


def load_checkpoint(path: str | Path, *, model_name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Raises CheckpointError (one line) for a missing file, a file that is not a checkpoint, or one
    written for a different model than ``model_name``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - foreign bytes make torch.load raise KeyError, IndexError, ... too
        raise CheckpointError(f"{path} is not a digitflow checkpoint ({one_line(exc, limit=160)})") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a digitflow checkpoint (no model state or format version)")
    if model_name is not None and state.get("model_name") != model_name:
        raise CheckpointError(f"{path} was written for model {state.get('model_name')!r}, not {model_name!r}")
    return state


def load_model_state(model: torch.nn.Module, weights: dict[str, Any]) -> None:
    """Load a state dict into ``model``, turning a shape/key mismatch into a one-line CheckpointError."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"the weights do not fit {type(model).__name__}: {detail}") from None
