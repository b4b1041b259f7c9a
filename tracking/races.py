"""MLflow store writes that two runs can race on: tried again when the other run wrote the same row first.

MLflow's store looks a row up, then inserts it when it is not there (a dataset a run logs as its input, the
alias a new model version takes), so two runs doing that at the same moment on one database both find nothing
and both insert: on PostgreSQL (the team setup) one gets ``UniqueViolation ... duplicate key value violates
unique constraint "<table>_pk"``, a 400 from the tracking server; on SQLite ``UNIQUE constraint failed``. Tried
again, the call finds the other run's row and links or moves it instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import mlflow

T = TypeVar("T")


def raced(exc: BaseException, table: str) -> bool:
    """Whether ``exc`` is MLflow's store refusing a row of ``table`` that another run inserted first."""
    text = str(exc)
    return table in text and ("duplicate key" in text or "UNIQUE constraint failed" in text)


def retried_on_race(call: Callable[[], T], table: str, attempts: int = 3) -> T:
    """``call()``, tried up to ``attempts`` times while it fails because another run inserted the same row of
    ``table`` (a few tenths of a second apart); any other error, or the last one, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except mlflow.MlflowException as exc:
            if not raced(exc, table) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")
