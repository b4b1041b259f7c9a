"""The promotion rule: does a candidate model replace the champion? Pure: figures in, decision out.

Where the figures come from (MLflow runs and registered model versions) and where the decision goes
(the ``champion`` alias, model-version tags, a Prefect artifact) is the orchestration layer's business
(``tasks/promotion.py``, ``flows/promote.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from digitflow.config import PromotionConfig

Verdict = Literal["better", "worse", "tied", "new", "missing", "other data"]


@dataclass(frozen=True)
class FigureComparison:
    """One figure both ways: the candidate's value, the champion's, and what the difference means.

    ``new``: only the candidate has it (a target the champion was not tested on; it cannot block).
    ``missing``: only the champion has it (the candidate was not tested on it; it blocks promotion).
    ``other data``: both have it, measured on different images (another test split or target: the
    datasets' digests differ); the two numbers do not compare, so it blocks promotion.
    """

    name: str
    candidate: float | None
    champion: float | None
    verdict: Verdict

    def line(self) -> str:
        """``test/accuracy: 0.9950 vs 0.9931 (+0.0019, better)``."""
        cand = "none" if self.candidate is None else f"{self.candidate:.4f}"
        champ = "none" if self.champion is None else f"{self.champion:.4f}"
        delta = ""
        if self.candidate is not None and self.champion is not None:
            delta = f"{self.candidate - self.champion:+.4f}, "
        return f"{self.name}: {cand} vs {champ} ({delta}{self.verdict})"


@dataclass(frozen=True)
class Decision:
    """What the rule decided, why (one line), and every figure compared."""

    promote: bool
    reason: str
    figures: tuple[FigureComparison, ...]

    @property
    def word(self) -> str:
        """``promoted`` or ``kept`` (the champion stays)."""
        return "promoted" if self.promote else "kept"


def select_figures(metrics: Mapping[str, float], patterns: tuple[str, ...]) -> dict[str, float]:
    """The metrics whose names match one of ``patterns`` (``fnmatch``, case-sensitive), sorted by name."""
    return {name: metrics[name] for name in sorted(metrics) if any(fnmatchcase(name, p) for p in patterns)}


def dataset_of(figure: str) -> str:
    """The dataset a figure was measured on, as the run's digest tag names it: ``test/*`` and ``robust/*``
    the held-out split (``dataset.test.digest``), ``cross/<target>/*`` that target
    (``dataset.target.<target>.digest``)."""
    kind, _, rest = figure.partition("/")
    if kind == "cross":
        return f"dataset.target.{rest.partition('/')[0]}.digest"
    return "dataset.test.digest"


def compare_figures(
    candidate: Mapping[str, float],
    champion: Mapping[str, float],
    config: PromotionConfig,
    datasets: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),
) -> tuple[FigureComparison, ...]:
    """Every figure either model has, compared with ``config.margin`` (see :class:`FigureComparison`).
    ``datasets``: the candidate's and the champion's dataset digests (their runs' ``dataset.*.digest``
    tags); a figure whose dataset both name, with different digests, is ``other data``."""
    ours = select_figures(candidate, config.figures)
    theirs = select_figures(champion, config.figures)
    out = []
    for name in sorted(set(ours) | set(theirs)):
        cand, champ = ours.get(name), theirs.get(name)
        ours_data, theirs_data = (d.get(dataset_of(name)) for d in datasets)
        verdict: Verdict
        if champ is None:
            verdict = "new"
        elif cand is None:
            verdict = "missing"
        elif ours_data and theirs_data and ours_data != theirs_data:
            verdict = "other data"
        elif cand - champ > config.margin:
            verdict = "better"
        elif champ - cand > config.margin:
            verdict = "worse"
        else:
            verdict = "tied"
        out.append(FigureComparison(name, cand, champ, verdict))
    return tuple(out)


def decide(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    config: PromotionConfig,
    *,
    export_verified: bool = True,
    datasets: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),
) -> Decision:
    """Whether the candidate takes the champion's place.

    - A candidate whose export verification did not pass is never promoted.
    - A candidate with none of the figures is never promoted (nothing to judge it by).
    - With no champion yet (``champion`` None), the candidate becomes the first one.
    - A figure measured on other images than the champion's (``datasets``: the two runs' dataset digests)
      does not compare: the champion stays, and the reason says so (move the alias by hand if it should not).
    - Otherwise it is promoted when no figure is worse (or missing) and at least one is better, each
      by more than ``config.margin``.
    """
    if config.margin < 0:
        raise ValueError(f"the promotion margin must be >= 0, got {config.margin}")
    figures = compare_figures(candidate, champion or {}, config, datasets)
    if not export_verified:
        return Decision(False, "its export verification did not pass", figures)
    if not select_figures(candidate, config.figures):
        wanted = ", ".join(config.figures)
        return Decision(False, f"it has none of the figures compared ({wanted})", figures)
    if champion is None:
        return Decision(True, "there is no champion yet: the first model becomes champion", figures)
    other = [f.name for f in figures if f.verdict == "other data"]
    if other:
        return Decision(
            False,
            f"measured on other data than the champion ({', '.join(other)}): the figures do not compare",
            figures,
        )
    worse = [f.name for f in figures if f.verdict in ("worse", "missing")]
    better = [f.name for f in figures if f.verdict == "better"]
    margin = f"{config.margin:g}"
    if worse:
        return Decision(False, f"worse than the champion by more than {margin} on {', '.join(worse)}", figures)
    if not better:
        return Decision(False, f"not better than the champion by more than {margin} on any figure", figures)
    return Decision(True, f"better than the champion by more than {margin} on {', '.join(better)}", figures)
