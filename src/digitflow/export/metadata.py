"""What an exported classifier carries beside its weights: its class names and the framing its inputs need.

A model file then predicts on its own (``digitflow predict``): nothing else is looked up. The record is
JSON text, so any reader gets it without this project:

* in a TorchScript file (``.pt``, and the file MLflow logs and registers from it), the module's string
  attribute ``digitflow_metadata`` (``torch.jit.load(path).digitflow_metadata``; in C++,
  ``module.attr("digitflow_metadata").toStringRef()``). An attribute, not an ``_extra_files`` entry:
  MLflow saves a ScriptModule again when it logs it, which keeps the module's attributes and drops
  extra files;
* in a torch.export file (``.pt2``), the extra file ``digitflow_metadata.json``
  (``torch.export.load(path, extra_files={"digitflow_metadata.json": ""})``).

Files exported before the record existed have none: :func:`default_metadata` says what they are taken to be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from digitflow.config import DataConfig
from digitflow.data.framing import MODEL_SIZE, PREPROCESSORS
from digitflow.data.own import classes_of
from digitflow.data.registry import DIGIT_CLASSES
from digitflow.data.spec import parse_spec
from digitflow.errors import ExportError

ATTRIBUTE = "digitflow_metadata"  # the TorchScript module's str attribute holding the JSON record
PROGRAM_EXTRA_FILE = "digitflow_metadata.json"  # the torch.export file's extra file holding it
FORMAT = 1  # bumped when a field changes meaning; readers refuse a newer format


@dataclass(frozen=True)
class ModelMetadata:
    """An exported classifier's record.

    ``classes``: the class names by output index (the training set's, e.g. the digits' ``0 - zero``, ...);
    ``frame``: how images that are not ``input_shape``'s size are brought to it (a key of
    :data:`digitflow.data.framing.PREPROCESSORS`, the framing the model's training and targets used);
    ``input_shape``: the (C, H, W) of float images in [0, 1], bright ink on a dark background, that the
    model takes (its normalization is inside it).
    """

    classes: tuple[str, ...]
    frame: str = "mnist-frame"
    input_shape: tuple[int, int, int] = (1, MODEL_SIZE, MODEL_SIZE)

    def to_json(self) -> str:
        """The record as one line of JSON (with its ``format``)."""
        shape = list(self.input_shape)
        return json.dumps({"format": FORMAT, "classes": list(self.classes), "frame": self.frame, "input_shape": shape})

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelMetadata:
        """Parse a record; ExportError (one line, naming ``where``) if it is not one this version reads."""
        try:
            data: Any = json.loads(text)
            version = int(data.get("format", 0))
            classes = tuple(str(c) for c in data["classes"])
            frame = str(data["frame"])
            channels, height, width = (int(d) for d in data["input_shape"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ExportError(f"{where}: unreadable {ATTRIBUTE} record ({type(exc).__name__}: {exc})") from None
        if version > FORMAT:
            raise ExportError(
                f"{where}: its {ATTRIBUTE} record has format {version}; this digitflow reads format {FORMAT} "
                "(update digitflow)"
            )
        if not classes or frame not in PREPROCESSORS:
            raise ExportError(f"{where}: its {ATTRIBUTE} record names no classes or an unknown frame {frame!r}")
        return cls(classes, frame, (channels, height, width))


def run_metadata(data: DataConfig) -> ModelMetadata:
    """The record of a model a run trained on ``data``: the training set's classes, and its framing: the
    training folder's own ``frame`` setting when it trains on ``folder:`` images, else the run's
    ``target_preprocess`` (how its other-sized training, test and target images were framed)."""
    spec = parse_spec(data.train)
    frame = spec.option("frame") if spec.name == "folder" else data.target_preprocess
    return ModelMetadata(classes_of(spec), frame)


def default_metadata(num_outputs: int) -> ModelMetadata:
    """What a file exported without a record is taken to be: a digit classifier (``0 - zero``, ...) when it
    has 10 outputs, else classes ``0`` to ``N-1``; framed with ``mnist-frame``, 28x28 inputs."""
    classes = DIGIT_CLASSES if num_outputs == len(DIGIT_CLASSES) else tuple(str(i) for i in range(num_outputs))
    return ModelMetadata(classes)


def attach(module: torch.jit.ScriptModule, metadata: ModelMetadata) -> None:
    """Give a scripted or traced module the record as its ``digitflow_metadata`` attribute (saved with it).

    A traced module keeps no Python attributes of the model it recorded, so the attribute is added to the
    compiled module's type itself (TorchScript's own way of adding one, as ``torch.jit.script`` does).
    """
    module._c._register_attribute(ATTRIBUTE, torch._C.StringType.get(), metadata.to_json())


def read(module: Any, where: str) -> ModelMetadata | None:
    """The record a loaded TorchScript module carries, None if it has none (exported before it existed)."""
    text = getattr(module, ATTRIBUTE, None)
    return None if text is None else ModelMetadata.from_json(str(text), where)
