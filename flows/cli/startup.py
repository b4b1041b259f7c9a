"""The ``digitflow`` process's start: its imports without Python's cyclic garbage collector.

A command imports about a million objects (torch, torch._dynamo, MLflow, Prefect, SQLAlchemy) before its flow
starts, and almost none of them is ever garbage. The collector does not know that: as the heap grows it runs
its full collections again and again, each traversing everything allocated so far (one full collection of
that heap takes 0.6 s on the 2-core machine). Importing what a run imports took 5.3-6.0 s with the collector
on, 4.1-4.4 s with it off. So the console script pauses the collector first (:func:`pause`), and once the
flow's modules are imported :func:`imports_done` moves everything allocated until then into the
collector's permanent generation (``gc.freeze``: never traversed again, so the run's own full collections
stay cheap too) and turns it back on. Reference counting frees objects as before all along; only cycles
wait for the collector.

Only the console script (:func:`flows.cli.command`) pauses it: ``flows.cli.main`` called inside a long-lived
process (a test session, a notebook) leaves that process's collector alone.
"""

from __future__ import annotations

import gc

_paused = False  # whether pause() turned the collector off and imports_done() has not yet turned it on


def pause() -> None:
    """Turn the cyclic garbage collector off for the imports of this process's start (it was on)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def imports_done() -> None:
    """After the flow's imports: freeze what they allocated and turn the collector back on, if :func:`pause`
    turned it off; otherwise nothing."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False
