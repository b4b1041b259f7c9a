"""An exported classifier loaded for scoring, with what it carries: its class names and input framing.

A TorchScript file (``.pt``; MLflow's ``model.pth`` is one) or a torch.export file (``.pt2``), on the CPU in
channels-last memory, as the engine trains and evaluates there (oneDNN's NHWC convolution and pooling kernels:
LeNet scored 10,000 images in 2.1 CPU-seconds so, against 3.8 in the default layout, float32, torch 2.14).
A file exported before models carried their record (:mod:`digitflow.export.metadata`) is taken to be a
digit classifier framed with ``mnist-frame``, and says so (``ScoringModel.assumed``).
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from digitflow.errors import ConfigError, DigitflowError
from digitflow.export.exporters import PROGRAM_SUFFIX, torchscript_deprecation_silenced
from digitflow.export.metadata import PROGRAM_EXTRA_FILE, ModelMetadata, default_metadata, read
from digitflow.fileio import one_line


@dataclass(frozen=True)
class ScoringModel:
    """A loaded classifier: ``module`` maps float images (N, C, H, W) in [0, 1] to (N, classes) logits."""

    module: Callable[[torch.Tensor], torch.Tensor]
    metadata: ModelMetadata
    path: str  # the file it was loaded from
    assumed: bool = False  # True: the file carries no record; ``metadata`` is default_metadata's

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names by output index."""
        return self.metadata.classes


def load_scoring_model(path: str | Path) -> ScoringModel:
    """Load an exported classifier on the CPU, in eval mode, with its record; ConfigError (one line) for a
    missing file or one that is neither TorchScript nor torch.export.

    Only load files you trust: both formats can run code they contain.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no model file {path}; give an exported .pt or .pt2 file, or an MLflow model URI")
    kind = "a torch.export program" if path.suffix == PROGRAM_SUFFIX else "TorchScript"
    if not zipfile.is_zipfile(path):  # both formats are zip archives; torch's own error would be a page
        raise ConfigError(f"{path} is not {kind} (not a zip archive); give a file digitflow exported")
    try:
        with _quiet_torch_export():
            module, metadata = _load(path)
    except DigitflowError:  # a record this version cannot read: its own line
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load {path} as {kind} ({one_line(exc)}); give a file digitflow exported") from exc
    if isinstance(module, torch.nn.Module):  # a ScriptModule is one too
        module = module.to(memory_format=torch.channels_last)
    if metadata is not None:
        return ScoringModel(module, metadata, str(path))
    return ScoringModel(module, default_metadata(_outputs(module, path)), str(path), assumed=True)


def _load(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], ModelMetadata | None]:
    """The callable in ``path`` and the record it carries (None: none)."""
    if path.suffix == PROGRAM_SUFFIX:
        extra = {PROGRAM_EXTRA_FILE: ""}
        module: Callable[[torch.Tensor], torch.Tensor] = torch.export.load(str(path), extra_files=extra).module()
        text = extra[PROGRAM_EXTRA_FILE]
        return module, ModelMetadata.from_json(text, str(path)) if text else None
    with torchscript_deprecation_silenced():  # loading TorchScript is the point here
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    return scripted, read(scripted, str(path))


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """torch.export logs a traceback as a warning before it raises on a file it cannot read; the error says it."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _outputs(module: Callable[[torch.Tensor], torch.Tensor], path: Path) -> int:
    """How many classes a model without a record has: the width of its output for one blank image."""
    try:
        with torch.inference_mode():
            logits = module(torch.zeros(1, 1, 28, 28))
    except Exception as exc:
        raise ConfigError(f"{path} does not take (1, 1, 28, 28) images: {one_line(exc)}") from exc
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ConfigError(f"{path} returns {tuple(logits.shape)} for one image, not (1, classes) logits")
    return int(logits.shape[1])
