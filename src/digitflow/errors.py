"""Errors the user can act on. Each carries a one-line message the CLI prints as-is."""

from __future__ import annotations


class DigitflowError(Exception):
    """Base class: a problem with the user's input or environment, not a bug.

    The message must be a single line that names the problem and, where possible, the fix.
    """


class DataError(DigitflowError):
    """Unknown dataset, malformed spec, missing/corrupt file, empty slice."""


class MissingDataError(DataError):
    """A file the requested split needs is not in the data dir (and, offline, was not downloaded).

    The message is ``"{problem}; {fix}"``. How to fix it depends on how the run was started (a
    command-line option, a deployment's parameter or worker environment), so whoever knows that can
    swap the fix with :meth:`with_fix`. ``short`` (the problem alone unless given) is for repeated
    mentions, such as retries and a failed run's final state, once the message was said in full.
    """

    def __init__(self, problem: str, fix: str, short: str | None = None) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix, self.short = problem, fix, short or problem

    def __reduce__(
        self,
    ) -> tuple[
        type[MissingDataError], tuple[str, str, str]
    ]:  # pickles (Prefect may persist a failed state's exception) with all three parts
        return type(self), (self.problem, self.fix, self.short)

    def with_fix(self, fix: str) -> MissingDataError:
        """The same error with another fix."""
        return type(self)(self.problem, fix, self.short)


class DownloadError(MissingDataError):
    """A missing file that no mirror could provide: the one data error worth retrying later."""


class ConfigError(DigitflowError):
    """An option value that cannot be used (unknown optimizer, bad kwargs, unknown device...)."""


class TrainingDivergedError(DigitflowError):
    """The loss became NaN or infinite; training stopped."""


class CheckpointError(DigitflowError):
    """A checkpoint file that is not a checkpoint, or was written for another model."""


class ExportError(DigitflowError):
    """An exported model that fails verification against the eager model."""
