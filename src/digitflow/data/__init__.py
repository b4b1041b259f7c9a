"""The data layer: named datasets, spec strings, verified raw files, cached tensors.

Pure PyTorch: functions take explicit arguments, return values, and never print or log. Typical use::

    ds = load_dataset("mnist:test[:8000]", data_dir="data", cache_dir=".cache/digitflow")
    ds.images  # uint8 (N, 28, 28); ds.labels  # int64 (N,)
"""

from digitflow.data.cache import (
    DigitDataset,
    PreparedDataset,
    files_digest,
    load,
    load_dataset,
    prepare,
    transform,
)
from digitflow.data.files import Downloader, fetch, locate, verify
from digitflow.data.registry import DATASETS, DatasetInfo, FileInfo
from digitflow.data.spec import DatasetSpec, Percent, parse_spec

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetSpec",
    "DigitDataset",
    "Downloader",
    "FileInfo",
    "Percent",
    "PreparedDataset",
    "fetch",
    "files_digest",
    "load",
    "load_dataset",
    "locate",
    "parse_spec",
    "prepare",
    "transform",
    "verify",
]
