"""Which image of its source files each image of a prepared dataset is: the id a prediction is reported by.

The tensor cache keeps images and labels only; an image's id follows from the prepared slice (its bounds,
and for a side of a seeded hold-out, the draw, made again) and the source:

- ``folder:``: the image file's path (as the spec names the folder: ``digits/7/scan-012.png``);
- ``csv:``: the row number, 1 for the first image (line 2): Kaggle's ``ImageId``;
- ``idx:`` and the registered datasets: the index in the file, 0 for the first image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from digitflow.data.cache import PreparedDataset, prepare
from digitflow.data.own import holdout_indices
from digitflow.data.spec import DatasetSpec, parse_spec


def source_positions(prepared: PreparedDataset) -> torch.Tensor:
    """(num_samples,) int64: each image's position among all the images of its source files (0-based)."""
    spec = parse_spec(prepared.spec)
    positions = torch.arange(prepared.start, prepared.stop, dtype=torch.int64)
    if spec.is_own and spec.split != "all":
        # A side of a hold-out: the draw depends on the whole dataset's size, which its (cached) whole gives.
        reading = tuple((k, v) for k, v in spec.options if k not in ("holdout", "seed"))
        whole_spec = DatasetSpec(spec.name, "all", path=spec.path, options=reading)
        whole = prepare(whole_spec, "", Path(prepared.cache_path).parent)
        side = holdout_indices(whole.num_samples, spec.option("holdout"), spec.option("seed"), spec.split)
        positions = side[positions]
    return positions


def image_ids(prepared: PreparedDataset) -> list[str]:
    """The id of each image of ``prepared``, in order (see the module's docstring)."""
    positions = source_positions(prepared).tolist()
    name = parse_spec(prepared.spec).name
    if name == "folder":
        return [prepared.files[i] for i in positions]  # every image file, in reading order
    if name == "csv":
        return [str(i + 1) for i in positions]
    return [str(i) for i in positions]
