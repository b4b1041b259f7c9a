"""Progress output for long work: a live bar on a terminal, plain log lines everywhere else."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.theme import Theme

PROGRESS_THEME = Theme({k: v for k, v in DEFAULT_STYLES.items() if k.startswith(("bar.", "progress."))})


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run; a plain logger elsewhere (``task.fn(...)`` in a
    notebook or a test), so a task body runs the same with or without orchestration."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("digitflow")


@dataclass
class TrainingProgress:
    """How far training got in this process: the last epoch completed (and checkpointed) of ``epochs``;
    ``completed`` is None until the first batch. The CLI reads it when a run is interrupted, to say
    where ``--resume`` continues from."""

    epochs: int = 0
    completed: int | None = None


training_progress = TrainingProgress()  # kept up to date by EpochProgress


class EpochProgress:
    """Feeds the engine's ``on_batch`` / ``on_epoch`` callbacks.

    On a terminal it shows one bar per epoch (batches done, running loss, time left); otherwise
    (CI, worker logs, a file) it stays quiet per batch and logs one line per epoch.
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, epochs: int, interactive: bool | None = None):
        self.logger = logger
        self.epochs = epochs
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        training_progress.epochs, training_progress.completed = epochs, None

    @contextlib.contextmanager
    def running(self) -> Iterator[EpochProgress]:
        """Context in which the bar is live (no-op when not interactive)."""
        if not self.interactive:
            yield self
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=_log_console(),
            transient=False,
        )
        console = self._progress.console
        console.push_theme(PROGRESS_THEME)  # Prefect's console theme lacks rich's bar/progress styles
        try:
            with self._progress:
                yield self
        finally:
            console.pop_theme()
            self._progress = None

    def on_batch(self, epoch: int, done: int, total: int, loss: float | None) -> None:
        """Engine callback after every batch; ``loss`` is a float only on check intervals."""
        training_progress.completed = epoch - 1
        if self._progress is None:
            return
        if self._task is None or done == 1:
            self._task = self._progress.add_task(f"epoch {epoch}/{self.epochs}", total=total, loss="-")
        fields: dict[str, Any] = {"loss": f"{loss:.4f}"} if loss is not None else {}
        self._progress.update(self._task, completed=done, **fields)

    def on_epoch(self, record: dict[str, float]) -> None:
        """Engine callback after every epoch: one log line with the epoch's figures."""
        self._task = None
        training_progress.completed = int(record["epoch"])
        self.logger.info(
            "epoch %d/%d  loss %.4f  accuracy %.4f  %.0f images/s  %.1f s",
            record["epoch"],
            self.epochs,
            record["loss"],
            record["accuracy"],
            record["images_per_sec"],
            record["seconds"],
        )


def _log_console() -> Console | None:
    """The rich Console that Prefect's console log handler prints to, if there is one.

    Sharing it lets rich print log lines above the live bars instead of through them.
    """
    loggers = [logging.getLogger()] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("prefect") and isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            console = getattr(handler, "console", None)
            if isinstance(console, Console):
                return console
    return None
