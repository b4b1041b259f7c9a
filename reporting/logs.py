"""Expected errors in the log: one line each, and a retried error said in full only once.

Prefect logs a failing task's exception at every retry, again when retries are exhausted (with its
traceback), again as the task's and the flow's final state, and the flow engine adds its own
traceback. For a :class:`~digitflow.errors.DigitflowError` (bad input or environment: the message
says it all) :class:`OneLineErrors` drops the tracebacks, and for one that has a short form (a
missing file, a failed download) it logs that short form everywhere but once: the first error-level
mention keeps the full message (or none does, when the CLI prints it at the end). Bugs (any other
exception) keep their tracebacks. No Prefect import here: the CLI loads this before its options are
checked.
"""

from __future__ import annotations

import logging

from digitflow.errors import DigitflowError

# Loggers whose records mention a failed run's exception: the flow and task run loggers (each with
# Prefect's API handler, which feeds the UI) and the engine that runs a deployment's flow run.
PREFECT_LOGGERS = (
    "prefect.flow_runs",
    "prefect.task_runs",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
)

_installed: OneLineErrors | None = None


def _short_form(error: DigitflowError) -> str:
    """The error's short form (MissingDataError, DownloadError have one), else its message."""
    short = getattr(error, "short", None)
    return short if isinstance(short, str) else str(error)


class _Short:
    """Stands in for an exception in a log record's arguments: ``%r`` and ``%s`` give the short form."""

    def __init__(self, error: DigitflowError) -> None:
        self.text = f"{type(error).__name__}: {_short_form(error)}"

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


class OneLineErrors(logging.Filter):
    """Drop the traceback of DigitflowError records and of interruptions; shorten repeated mentions of errors that have
    a ``short`` form (MissingDataError, DownloadError), keeping the full message in the first error-level record
    when ``full_in_log`` (else in none: the caller prints it)."""

    def __init__(self, full_in_log: bool = True) -> None:
        super().__init__()
        self.full_in_log = full_in_log
        self._errors: list[DigitflowError] = []  # errors with a short form mentioned so far
        self._shown_in_full: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_digitflow_checked", False):  # the same record reaches several handlers
            return True
        record._digitflow_checked = True
        exc = record.exc_info[1] if record.exc_info else None
        # Interruptions (Ctrl-C; SIGTERM as Prefect's TerminationSignal) say it all in one line too.
        if isinstance(exc, (DigitflowError, KeyboardInterrupt)) or type(exc).__name__ == "TerminationSignal":
            record.exc_info = None
            record.exc_text = None
        args = record.args if isinstance(record.args, tuple) else ()
        for error in [exc, *args]:
            if isinstance(error, DigitflowError) and getattr(error, "short", None) and error not in self._errors:
                self._errors.append(error)
        for error in self._errors:
            self._shorten(record, error)
        return True

    def _shorten(self, record: logging.LogRecord, error: DigitflowError) -> None:
        in_args = isinstance(record.args, tuple) and any(a is error for a in record.args)
        message = "" if in_args else record.getMessage()
        full = str(error)
        # as %r / {!r} give it, then the bare message as is and as it appears inside a repr (a state's)
        spellings = [(repr(error), _Short(error).text)] + [(s, _short_form(error)) for s in (full, repr(full)[1:-1])]
        if not in_args and not any(s in message for s, _ in spellings):
            return  # the record does not mention this error
        if self.full_in_log and record.levelno >= logging.ERROR and id(error) not in self._shown_in_full:
            self._shown_in_full.add(id(error))
            return  # this record says it in full
        if in_args and isinstance(record.args, tuple):
            record.args = tuple(_Short(error) if a is error else a for a in record.args)
            return
        for spelling, short in spellings:
            message = message.replace(spelling, short)
        record.msg, record.args = message, ()


def quiet_expected_errors(full_in_log: bool = True) -> OneLineErrors:
    """Install :class:`OneLineErrors` on the handlers of the root logger and of Prefect's run and
    engine loggers, once per process (a second call, e.g. the flow after the CLI, keeps the first)."""
    global _installed
    if _installed is None:
        _installed = OneLineErrors(full_in_log=full_in_log)
    for logger in (logging.getLogger(), logging.getLogger("prefect"), *map(logging.getLogger, PREFECT_LOGGERS)):
        for handler in logger.handlers:
            if _installed not in handler.filters:
                handler.addFilter(_installed)
    return _installed
