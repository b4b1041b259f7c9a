"""What a sweep searches: parsing ``KEY=VALUES`` items into a search space, and the trials of a grid.

Pure Python: the sweep flow (``flows/sweep.py``) hands the space to Optuna, which keeps the trials
(grid points are enqueued, random samples and Optuna's own suggestions drawn from the ranges).

Syntax, one item per swept option:

- ``lr=0.02,0.05,0.1``: the listed values (a grid axis, or a choice for random and Optuna search);
- ``lr=0.001:0.1``: a float drawn uniformly from the range; ``lr=log:0.001:0.1`` log-uniformly;
- ``batch_size=int:32:256``: an integer from the range (``int:log:16:512`` log-uniformly).

Values are Python literals where they parse as one (``0.05``, ``6``, ``None``, ``True``), else
strings (``optimizer=SGD,Adam``). Keys are ``digitflow run`` options with ``_`` or ``-``
(``batch-size``), ``lr`` for the learning rate, ``opt.NAME`` for an optimizer option and
``sched.NAME`` for a scheduler option (:func:`trial_parameters` maps them onto the flow's keywords).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from digitflow.errors import ConfigError

# Options of a run that a sweep keeps fixed: the data are prepared once for all trials, and the
# trials share the sweep's device, folders and tracking.
NOT_SWEEPABLE = frozenset(
    {"train", "test", "target", "data_dir", "cache_dir", "offline", "device", "output_dir", "checkpoint", "resume"}
)


@dataclass(frozen=True)
class Choice:
    """One of the listed values."""

    values: tuple[Any, ...]

    def __str__(self) -> str:
        return ",".join(map(str, self.values))


@dataclass(frozen=True)
class Range:
    """A number from ``[low, high]``: float or integer, uniform or log-uniform."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __str__(self) -> str:
        flags = [*(["int"] if self.integer else []), *(["log"] if self.log else [])]
        return ":".join([*flags, f"{self.low:g}", f"{self.high:g}"])


Dimension = Choice | Range


def literal(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"6"`` -> 6, ``"None"`` -> None; anything else stays a string."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def normalise_key(key: str) -> str:
    """``batch-size`` -> ``batch_size``; ``opt.weight_decay`` and ``sched.T_max`` keep their option name."""
    key = key.strip()
    head, dot, rest = key.partition(".")
    return f"{head.replace('-', '_')}{dot}{rest}" if dot else key.replace("-", "_")


def parse_dimension(key: str, text: str) -> Dimension:
    """One item's values: a list (``a,b,c``) or a range (``[int:][log:]LOW:HIGH``)."""
    parts = text.split(":")
    if ":" not in text or "," in text:
        values = tuple(literal(v) for v in text.split(",") if v.strip())
        if not values:
            raise ConfigError(f"sweep: {key}= has no values (e.g. {key}=0.02,0.05)")
        return Choice(values)
    flags = set(parts[:-2])
    unknown = flags - {"int", "log"}
    if len(parts) < 2 or unknown or len(flags) != len(parts) - 2:
        raise ConfigError(f"sweep: {key}={text}: a range is LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH or int:log:LOW:HIGH")
    low, high = literal(parts[-2]), literal(parts[-1])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"sweep: {key}={text}: the bounds of a range must be numbers")
    if low >= high:
        raise ConfigError(f"sweep: {key}={text}: the low bound must be below the high one")
    if "log" in flags and low <= 0:
        raise ConfigError(f"sweep: {key}={text}: a log range needs a positive low bound")
    if "int" in flags and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"sweep: {key}={text}: an int range needs whole bounds")
    return Range(float(low), float(high), log="log" in flags, integer="int" in flags)


def parse_space(items: Iterable[str], valid_keys: Iterable[str] | None = None) -> dict[str, Dimension]:
    """``["lr=0.02,0.05", "epochs=3,6"]`` -> ``{"lr": Choice((0.02, 0.05)), "epochs": Choice((3, 6))}``.

    ``valid_keys`` are the keywords of the flow a trial runs (with ``lr``, ``opt.*``, ``sched.*`` always
    allowed); an unknown or fixed-by-the-sweep key is a one-line ConfigError naming them.
    """
    space: dict[str, Dimension] = {}
    valid = set(valid_keys) if valid_keys is not None else None
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sweep: {item!r} is not KEY=VALUES (e.g. lr=0.02,0.05 or lr=log:0.001:0.1)")
        key = normalise_key(key)
        if key in NOT_SWEEPABLE:
            raise ConfigError(
                f"sweep: {key} cannot be swept: the data are prepared once and the trials share the device "
                "and folders; give it as an option of the sweep instead"
            )
        if valid is not None and not _known(key, valid):
            names = ", ".join(sorted(valid - NOT_SWEEPABLE - {"optimizer_kwargs", "scheduler_kwargs", "experiment"}))
            raise ConfigError(f"sweep: unknown option {key!r}; sweepable: lr, opt.NAME, sched.NAME, {names}")
        if key in space:
            raise ConfigError(f"sweep: {key} is given twice")
        space[key] = parse_dimension(key, text.strip())
    return space


def _known(key: str, valid: set[str]) -> bool:
    head, dot, rest = key.partition(".")
    if dot:
        return head in ("opt", "sched") and bool(rest)
    return key == "lr" or key in valid


def grid(space: Mapping[str, Dimension]) -> list[dict[str, Any]]:
    """Every combination of the listed values, the first key varying slowest; ranges are refused."""
    ranges = [k for k, d in space.items() if isinstance(d, Range)]
    if ranges:
        raise ConfigError(
            f"sweep: a grid takes listed values, not ranges ({', '.join(ranges)}); use --random N or --optuna N"
        )
    keys = list(space)
    axes = [d.values for d in space.values() if isinstance(d, Choice)]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


def trial_parameters(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flow keywords of one trial: ``base`` with the trial's ``values`` on top (``lr`` and
    ``opt.*`` into ``optimizer_kwargs``, ``sched.*`` into ``scheduler_kwargs``)."""
    params = dict(base)
    optimizer_kwargs = dict(params.get("optimizer_kwargs") or {})
    scheduler_kwargs = dict(params.get("scheduler_kwargs") or {})
    for key, value in values.items():
        if key == "lr":
            optimizer_kwargs["lr"] = value
        elif key.startswith("opt."):
            optimizer_kwargs[key.removeprefix("opt.")] = value
        elif key.startswith("sched."):
            scheduler_kwargs[key.removeprefix("sched.")] = value
        else:
            params[key] = value
    params["optimizer_kwargs"] = optimizer_kwargs or None
    params["scheduler_kwargs"] = scheduler_kwargs or None
    return params


def describe(values: Mapping[str, Any]) -> str:
    """``{"lr": 0.05, "epochs": 6}`` -> ``lr=0.05 epochs=6`` (a trial's name)."""
    return " ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(_short, value)) or "none"
    return str(value)


def workers_and_threads(cores: int, trials: int, workers: int | None = None) -> tuple[int, int]:
    """How many trials run at once and how many torch threads each gets, so that together they use
    ``cores`` without oversubscribing: ``workers`` (default: one per core, at most one per trial) and
    ``cores // workers`` threads each (at least 1)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"sweep: --workers must be at least 1, got {workers}")
    workers = workers or max(1, min(cores, trials))
    return workers, max(1, cores // workers)


def check_direction(direction: str) -> str:
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"sweep: --direction is maximize or minimize, got {direction!r}")
    return direction


def default_direction(metric: str) -> str:
    """``maximize`` for accuracies, ``minimize`` for losses and anything else."""
    return "maximize" if metric.endswith("accuracy") else "minimize"


def keys_of(spaces: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys of several spaces or trials, in first-seen order."""
    return list(dict.fromkeys(k for s in spaces for k in s))
