"""Errors the user can act on. Each carries a one-line message the CLI prints as-is."""


class DigitflowError(Exception):
    """Base class: a problem with the user's input or environment, not a bug.

    The message must be a single line that names the problem and, where possible, the fix.
    """


class DataError(DigitflowError):
    """Unknown dataset, malformed spec, missing/corrupt file, empty slice."""


class DownloadError(DataError):
    """A missing file that no mirror could provide: the one data error worth retrying later."""


class ConfigError(DigitflowError):
    """An option value that cannot be used (unknown optimizer, bad kwargs, unknown device...)."""


class TrainingDivergedError(DigitflowError):
    """The loss became NaN or infinite; training stopped."""


class CheckpointError(DigitflowError):
    """A checkpoint file that is not a checkpoint, or was written for another model."""


class ExportError(DigitflowError):
    """An exported model that fails verification against the eager model."""
