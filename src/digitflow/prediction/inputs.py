"""The input of a prediction as a dataset spec read the way the model needs it."""

from __future__ import annotations

import dataclasses

from digitflow.data.spec import parse_spec
from digitflow.export.metadata import ModelMetadata


def input_spec(text: str, metadata: ModelMetadata) -> str:
    """``text`` (any dataset spec) as the spec to read for a model with ``metadata``: a ``folder:`` spec
    without a ``frame`` setting of its own takes the model's framing (its images are framed as they are
    read); any other spec is unchanged (its images are framed when scored). DataError for a bad spec."""
    spec = parse_spec(text)
    if spec.name == "folder" and "frame" not in dict(spec.options) and spec.option("frame") != metadata.frame:
        options = tuple(sorted({**dict(spec.options), "frame": metadata.frame}.items()))
        spec = dataclasses.replace(spec, options=options)
    return str(spec)
