"""Dataset spec strings: ``NAME:SPLIT[START:STOP]`` picks a dataset, a split and a slice of it.

Bounds are sample indices (``mnist:test[:8000]``, negative counts from the end as in Python) or
percentages of the split (``usps:test[:50%]``). Percentages resolve to ``floor(p * N / 100)``,
computed exactly, so ``[:p%]`` and ``[p%:]`` always partition the split.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from digitflow.data import registry
from digitflow.errors import DataError

FORMAT_HINT = "spec format NAME:SPLIT[START:STOP], e.g. mnist:test[:8000] or usps:test[:50%]"

_SPEC_RE = re.compile(r"^(?P<name>[^:\[\]\s]+):(?P<split>[^:\[\]\s]+)(?:\[(?P<slice>[^\[\]]*)\])?$")
_INT_RE = re.compile(r"^-?\d+$")
_PERCENT_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?)%$")


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
    """A parsed spec: dataset name, split, and slice bounds (None = open end)."""

    name: str
    split: str
    start: Bound = None
    stop: Bound = None

    def __str__(self) -> str:
        """Canonical text; ``parse_spec(str(spec)) == spec``."""
        if self.start is None and self.stop is None:
            return f"{self.name}:{self.split}"
        start = "" if self.start is None else str(self.start)
        stop = "" if self.stop is None else str(self.stop)
        return f"{self.name}:{self.split}[{start}:{stop}]"

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
