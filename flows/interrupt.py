"""Ctrl-C and SIGTERM during ``digitflow run``: end within seconds, say how to resume, leave no process.

What a signal does (:class:`RunSignals`):

1. The first SIGINT or SIGTERM unwinds the run as an exception (``KeyboardInterrupt``, or Prefect's
   ``TerminationSignal`` for SIGTERM): Prefect marks the task and flow runs Crashed, the MLflow runs
   end KILLED (``tracking.runs.tracked_run``), and ``digitflow`` prints one line (where training got
   to, and the command that continues it with ``--resume``) and exits 130 (SIGINT) or 143 (SIGTERM).
2. A signal that arrives while MLflow is writing (SQLAlchemy on SQLite, say) is held back until that
   call returns: an exception raised in the middle of it left the store locked for 20 s and the
   runs FAILED.
3. A second signal while the first is being handled ends the process at once (``os._exit``; the
   MLflow runs may stay RUNNING).
4. Once the exit hooks have run (Prefect's log drain, the local server's lease), the process ends without
   the interpreter's teardown, which takes seconds with torch, MLflow and Prefect loaded.

Prefect 3.9 behaviours this works around, kept here and nowhere else:

- During a flow run Prefect's own SIGTERM handler (``prefect.utilities.engine.capture_sigterm``)
  raises wherever the process is (MLflow's writes included), then restores the handler it found and
  sends SIGTERM again. With Python's default handler that killed the process on the spot, skipping
  the ``atexit`` hooks (Prefect's log drain among them). :class:`RunSignals` puts
  its own handler in place of Prefect's (same exception, held back during MLflow writes) and in
  front of it (where the re-sent SIGTERM lands, and is ignored).

The Prefect server a run uses is not its child (flows/local_server.py: a session of its own, so a
terminal's Ctrl-C, which signals the whole foreground group, does not stop it while the run records
its crash). ``kill -9`` cannot be caught: the MLflow runs of a killed process stay RUNNING, and its
Prefect flow run stays Running; its lease on the local server counts as released.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report it
HOLD_BACK_IN = {"mlflow", "sqlalchemy", "sqlite3", "alembic"}  # top-level packages: no exception raised inside


class RunSignals:
    """Context manager: SIGINT and SIGTERM interrupt the run once (see the module docstring).

    :attr:`signum` records the signal; :meth:`interrupted` tells ``main`` whether an exception that
    left the block was the interruption, :meth:`report` prints the one line, :attr:`exit_code` is
    130 or 143. After an interruption the handlers stay in place until the process exits, so the
    cleanup on the way out (MLflow, Prefect's log drain, stopping the server) cannot be broken into.
    """

    def __init__(
        self,
        argv: Sequence[str],
        epochs: int,
        where: Callable[[], str] | None = None,
        line: str | None = None,
    ):
        self.argv = list(argv)
        self.epochs = epochs
        self.where = where  # how far the flow got, if not by its training epochs (a sweep: its trials)
        self.line = line  # the whole line, for a flow with nothing to resume (predict, promote)
        self.signum: int | None = None
        self._held_back = False  # a signal waits for MLflow to return (re-delivered by _deliver_later)
        self._redelivery = False
        self._reported = False
        self._previous: dict[int, Any] = {}
        self._prefect_engine: Any = None
        self._prefect_handler: Any = None
        self._handler = self._on_signal  # one object: Prefect recognises its handler by identity

    def __enter__(self) -> RunSignals:
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handler)
        atexit.register(self._exit_now)  # before Prefect and MLflow register theirs, so it runs after them
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None and self._held_back:  # the run finished during the MLflow call a signal waited for
            self._held_back, self.signum = False, None
        if self.signum is None:  # not interrupted: put things back (main() may run inside a test)
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            if self._prefect_engine is not None:
                self._prefect_engine._prefect_sigterm_handler = self._prefect_handler
            atexit.unregister(self._exit_now)

    def _exit_now(self) -> None:
        """The last exit hook after an interruption: once Prefect has drained its logs and stopped its
        server, skip the interpreter's teardown of torch, MLflow and Prefect (3-7 s on a busy 2-core
        machine, longer than everything else after the signal)."""
        if self.signum is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(self.exit_code)

    def replace_prefect_sigterm_handler(self) -> None:
        """Make the flow engine install :meth:`_on_signal` as its SIGTERM handler instead of its own.

        ``capture_sigterm`` installs whatever ``prefect.utilities.engine._prefect_sigterm_handler``
        names when a flow run starts, and checks for it by identity; ours raises the same exception.
        """
        import prefect.utilities.engine as engine

        if not callable(getattr(engine, "_prefect_sigterm_handler", None)):
            return  # another Prefect: its own handler stays (an interrupted MLflow write may then FAIL the runs)
        self._prefect_engine, self._prefect_handler = engine, engine._prefect_sigterm_handler
        # Prefect types its handler as never returning; ours returns for a signal Prefect re-sends itself.
        engine._prefect_sigterm_handler = self._handler  # type: ignore[assignment]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if _resent_by_prefect(frame):  # its TerminationSignal is already on its way out: nothing to add
            return
        redelivery, self._redelivery = self._redelivery, False
        if self.signum is not None and not redelivery:  # a second signal: stop now
            self.report()
            os._exit(self.exit_code)
        self.signum = signum
        if _in_tracking_code(frame):
            if not self._held_back:
                self._held_back = True
                self._deliver_later(signum)
            return
        self._held_back = False
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        from prefect.exceptions import TerminationSignal

        raise TerminationSignal(signal=signum)

    def _deliver_later(self, signum: int) -> None:
        """Signal the main thread again once it has left MLflow's code (polled every 20 ms).

        A real signal (not ``_thread.interrupt_main``), so that a blocking call the main thread is in
        by then (a sleep, a lock, a socket) is interrupted too.
        """
        main = threading.main_thread().ident
        assert main is not None  # the main thread is running: it called this from its signal handler

        def watch() -> None:
            while (frame := sys._current_frames().get(main)) is not None and _in_tracking_code(frame):
                time.sleep(0.02)
            if not self._held_back:  # the block ended meanwhile (__exit__)
                return
            self._held_back = False
            self._redelivery = True
            if hasattr(signal, "pthread_kill"):
                signal.pthread_kill(main, signum)
            else:  # Windows: only wakes the main thread at its next bytecode
                _thread.interrupt_main(signal.Signals(signum))

        threading.Thread(target=watch, name="digitflow-signal", daemon=True).start()

    def interrupted(self, exc: BaseException) -> bool:
        """Whether ``exc``, coming out of the block, ends a run that a signal interrupted."""
        if self.signum is None:  # raised without our handler (say, by a handler Prefect kept)
            if isinstance(exc, KeyboardInterrupt):
                self.signum = signal.SIGINT
            elif type(exc).__name__ == "TerminationSignal":  # prefect.exceptions; maybe not imported yet
                self.signum = signal.SIGTERM
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 130 if self.signum is None else EXIT_CODES.get(self.signum, 130)

    def message(self) -> str:
        """One line: where training got to and the command that continues the run (or :attr:`line`)."""
        if self.line is not None:
            return self.line
        progress = _training_progress()
        epochs = self.epochs
        if self.where is not None:
            where = self.where()
        elif progress is None or progress.completed is None:
            where = "before training started"
        elif progress.completed >= epochs:
            where = f"after training (all {epochs} epochs)"
        elif progress.completed == 0:
            where = f"in epoch 1 of {epochs}, before any epoch completed"
        else:
            where = f"after epoch {progress.completed} of {epochs}"
        command = shlex.join(["digitflow", *self.argv, *([] if "--resume" in self.argv else ["--resume"])])
        return f"digitflow: interrupted {where}; continue with: {command}"

    def report(self) -> None:
        """Write :meth:`message` to stderr once (``os.write``: safe inside a signal handler too)."""
        if not self._reported:
            self._reported = True
            os.write(sys.stderr.fileno(), (self.message() + "\n").encode())


def _in_tracking_code(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).partition(".")[0] in HOLD_BACK_IN:
            return True
        frame = frame.f_back
    return False


def _resent_by_prefect(frame: FrameType | None) -> bool:
    """Whether this SIGTERM is the one ``capture_sigterm`` sends itself after handling the first."""
    engine = sys.modules.get("prefect.utilities.engine")
    capture = getattr(getattr(engine, "capture_sigterm", None), "__wrapped__", None)
    return frame is not None and capture is not None and frame.f_code is capture.__code__


def _training_progress() -> Any:
    # Not imported here: a signal may arrive before the tasks are (and importing in a handler is unwise).
    progress = sys.modules.get("reporting.progress")
    return getattr(progress, "training_progress", None)
