"""Dataset spec strings: ``NAME:SPLIT[START:STOP]`` picks a dataset, a split and a slice of it.

Bounds are sample indices (``mnist:test[:8000]``, negative counts from the end as in Python) or
percentages of the split (``usps:test[:50%]``). Percentages resolve to ``floor(p * N / 100)``,
computed exactly, so ``[:p%]`` and ``[p%:]`` always partition the split.

A user's own files are ``KIND:PATH[?KEY=VALUE,...][START:STOP]`` with KIND ``idx`` (a folder with an
IDX image and label file), ``folder`` (one sub-folder per class) or ``csv`` (Kaggle's Digit Recognizer
layout). Their split is ``all`` unless ``split=train`` or ``split=test`` picks a side of a seeded
hold-out (``holdout`` percent of the images, drawn with ``seed``); other keys are the reading options
of :data:`OWN_OPTIONS`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from digitflow.data import registry
from digitflow.errors import DataError

FORMAT_HINT = (
    "spec format NAME:SPLIT[START:STOP], e.g. mnist:test[:8000] or usps:test[:50%], "
    "or your own files: idx:DIR, folder:DIR, csv:FILE"
)
OWN_KINDS = ("idx", "folder", "csv")  # spec names that read a user's own files, not a registered dataset
OWN_SPLITS = ("all", "train", "test")
DEFAULT_HOLDOUT = Decimal(10)  # percent of an own dataset held out as its test split when --test is not given
FRAMES = ("mnist-frame", "resize")  # digitflow.data.framing.PREPROCESSORS' keys (not imported: it imports cache)
# The reading options of each kind (the split's are common to all): name -> (default, allowed values or
# None for a check in _check_option). Defaults are left out of the canonical text.
OWN_OPTIONS: dict[str, dict[str, tuple[str, tuple[str, ...] | None]]] = {
    "folder": {"frame": ("mnist-frame", FRAMES), "invert": ("auto", ("auto", "yes", "no"))},
    "idx": {"classes": ("10", None), "prefix": ("", None)},
    "csv": {"classes": ("10", None)},
}
_SPLIT_KEYS = ("split", "holdout", "seed")

_SPEC_RE = re.compile(r"^(?P<name>[^:\[\]\s]+):(?P<split>[^:\[\]\s]+)(?:\[(?P<slice>[^\[\]]*)\])?$")
_INT_RE = re.compile(r"^-?\d+$")
_PERCENT_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)%$")
_OWN_RE = re.compile(r"^(?P<kind>[A-Za-z]+):(?P<body>[^\[\]]+?)(?:\[(?P<slice>[^\[\]]*)\])?$")


@dataclass(frozen=True)
class Percent:
    """A slice bound given as a percentage of the split, 0 to 100."""

    value: Decimal

    def __str__(self) -> str:
        # normalize() drops trailing zeros ("12.50" -> "12.5"); "f" avoids "1E+1" for whole numbers.
        return f"{self.value.normalize():f}%"

    def index(self, n: int) -> int:
        """The sample index this percentage of ``n`` samples falls on (rounded down, exactly)."""
        return math.floor(Fraction(self.value) * n / 100)


Bound = int | Percent | None


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec: dataset name, split, and slice bounds (None = open end).

    For a user's own files (``name`` in :data:`OWN_KINDS`), ``path`` is the file or folder as given,
    ``split`` one of :data:`OWN_SPLITS` and ``options`` the other settings that differ from their
    defaults, sorted by key (``holdout`` and ``seed`` always, when ``split`` is not ``all``).
    """

    name: str
    split: str
    start: Bound = None
    stop: Bound = None
    path: str = ""
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        """Canonical text; ``parse_spec(str(spec)) == spec``."""
        if self.is_own:
            settings = ([("split", self.split)] if self.split != "all" else []) + list(self.options)
            head = self.path + ("?" + ",".join(f"{k}={v}" for k, v in settings) if settings else "")
            head = f"{self.name}:{head}"
        else:
            head = f"{self.name}:{self.split}"
        if self.start is None and self.stop is None:
            return head
        start = "" if self.start is None else str(self.start)
        stop = "" if self.stop is None else str(self.stop)
        return f"{head}[{start}:{stop}]"

    @property
    def is_own(self) -> bool:
        """Whether the spec reads a user's own files (``idx:``, ``folder:``, ``csv:``)."""
        return self.name in OWN_KINDS

    def option(self, key: str) -> str:
        """An own spec's setting ``key``, its default when not given."""
        given = dict(self.options)
        if key in given:
            return given[key]
        if key == "holdout":
            return f"{DEFAULT_HOLDOUT.normalize():f}"
        if key == "seed":
            return "0"
        return OWN_OPTIONS[self.name][key][0]

    def with_split(self, split: str) -> DatasetSpec:
        """This own spec (split ``all``) with the given side of its default hold-out, slice kept."""
        options = dict(self.options)
        if split != "all":
            options = {"holdout": self.option("holdout"), "seed": self.option("seed"), **options}
        return DatasetSpec(self.name, split, self.start, self.stop, self.path, tuple(sorted(options.items())))

    def resolve(self, n: int) -> tuple[int, int]:
        """Concrete ``(start, stop)`` indices for a split of ``n`` samples.

        Raises DataError when an index bound lies outside the split or the slice selects nothing.
        """
        start = 0 if self.start is None else self._index(self.start, n)
        stop = n if self.stop is None else self._index(self.stop, n)
        if stop <= start:
            raise DataError(
                f"spec '{self}' selects no samples: split '{self.split}' of {self.name} has "
                f"{n} samples and the slice resolves to [{start}:{stop}]"
            )
        return start, stop

    def _index(self, bound: int | Percent, n: int) -> int:
        if isinstance(bound, Percent):
            return bound.index(n)
        if not -n <= bound <= n:
            raise DataError(
                f"index {bound} in spec '{self}' is out of range: split '{self.split}' of {self.name} has {n} samples"
            )
        return bound + n if bound < 0 else bound


def parse_spec(text: str | DatasetSpec) -> DatasetSpec:
    """Parse ``NAME:SPLIT[START:STOP]`` against the registry; DataError (one line) if invalid."""
    if isinstance(text, DatasetSpec):
        return text
    raw = str(text).strip()
    kind = raw.partition(":")[0].lower()
    if kind in OWN_KINDS:
        return _parse_own(raw)
    match = _SPEC_RE.match(raw)
    if match is None:
        raise DataError(f"malformed dataset spec '{raw}'; {FORMAT_HINT}; {_valid_datasets()}")
    name, split = match["name"].lower(), match["split"].lower()
    info = registry.DATASETS.get(name)
    if info is None:
        raise DataError(f"unknown dataset '{match['name']}' in spec '{raw}'; {_valid_datasets()}; {FORMAT_HINT}")
    if split not in info.splits:
        raise DataError(
            f"unknown split '{match['split']}' in spec '{raw}'; valid splits of {name}: "
            f"{', '.join(sorted(info.splits))}; {FORMAT_HINT}"
        )
    start = stop = None
    if match["slice"] is not None:
        start, stop = _parse_slice(match["slice"], raw)
    return DatasetSpec(name, split, start, stop)


def _parse_own(raw: str) -> DatasetSpec:
    """``KIND:PATH[?KEY=VALUE,...][START:STOP]`` -> a DatasetSpec of a user's own files."""
    match = _OWN_RE.match(raw)
    if match is None:
        raise DataError(f"malformed dataset spec '{raw}'; {FORMAT_HINT}")
    kind = match["kind"].lower()
    path, _, settings = match["body"].partition("?")
    if not path.strip():
        raise DataError(f"spec '{raw}' names no {'file' if kind == 'csv' else 'folder'}; e.g. {kind}:my/digits")
    options: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in settings.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        valid = [*_SPLIT_KEYS, *OWN_OPTIONS[kind]]
        if not sep or key not in valid:
            raise DataError(f"unknown setting '{item}' in spec '{raw}'; {kind}: takes {', '.join(valid)} (KEY=VALUE)")
        options[key] = _check_option(kind, key, value, raw)
    split = options.pop("split", "all")
    if split == "all" and ("holdout" in options or "seed" in options):
        raise DataError(f"holdout and seed in spec '{raw}' need split=train or split=test")
    defaults = {k: d for k, (d, _) in OWN_OPTIONS[kind].items()}
    kept = {k: v for k, v in options.items() if defaults.get(k) != v}
    start = stop = None
    if match["slice"] is not None:
        start, stop = _parse_slice(match["slice"], raw)
    spec = DatasetSpec(kind, "all", start, stop, path.strip(), tuple(sorted(kept.items())))
    return spec.with_split(split)


def _check_option(kind: str, key: str, value: str, raw: str) -> str:
    """A setting's value, normalized; DataError (one line) if it is not one the key takes."""
    allowed = {"split": OWN_SPLITS}.get(key) or (OWN_OPTIONS[kind][key][1] if key in OWN_OPTIONS[kind] else None)
    if allowed is not None:
        if value.lower() not in allowed:
            raise DataError(f"{key}={value} in spec '{raw}': {key} takes {', '.join(allowed)}")
        return value.lower()
    if key == "holdout":
        number = _PERCENT_RE.match(value if value.endswith("%") else value + "%")
        if number is None or not 0 < Decimal(number["num"]) < 100:
            raise DataError(f"holdout={value} in spec '{raw}': give a percentage between 0 and 100, e.g. holdout=10")
        return f"{Decimal(number['num']).normalize():f}"
    if key in ("seed", "classes"):
        lowest = 0 if key == "seed" else 2
        if not value.isdigit() or int(value) < lowest:
            raise DataError(f"{key}={value} in spec '{raw}': {key} takes a whole number of at least {lowest}")
        return str(int(value))
    return value  # prefix: any text


def _parse_slice(text: str, raw: str) -> tuple[Bound, Bound]:
    parts = text.split(":")
    if len(parts) != 2:
        raise DataError(f"malformed slice '[{text}]' in spec '{raw}'; {FORMAT_HINT}")
    return _parse_bound(parts[0], raw), _parse_bound(parts[1], raw)


def _parse_bound(text: str, raw: str) -> Bound:
    text = text.strip()
    if not text:
        return None
    if _INT_RE.match(text):
        return int(text)
    match = _PERCENT_RE.match(text)
    if match:
        value = Decimal(match["num"])
        if value > 100:
            raise DataError(f"percentage {text} in spec '{raw}' is over 100%; {FORMAT_HINT}")
        return Percent(value)
    raise DataError(
        f"malformed slice bound '{text}' in spec '{raw}': use a sample index (e.g. 8000, -500) "
        f"or a percentage (e.g. 50%); {FORMAT_HINT}"
    )


def _valid_datasets() -> str:
    return f"valid datasets: {', '.join(sorted(registry.DATASETS))}"
