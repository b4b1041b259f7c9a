"""``flows.cli.options.run_flow``, the tail every command shares: where the flow runs, its heartbeats, the lines it
prints, the one line of an interruption, and the garbage collector around the imports (no real flow: ``load``
returns a plain function)."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

from flows.cli import options
from flows.interrupt import RunSignals


class FakeServer:
    def wait_ready(self) -> None:
        pass


def heartbeat_frequency() -> object:
    return PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()


@pytest.mark.parametrize(("server", "expected"), [(FakeServer(), None), (None, 180)])
def test_heartbeats_are_off_on_the_local_server_only(monkeypatch, capsys, server, expected):
    monkeypatch.setattr(options, "use_local_server", lambda: server)
    monkeypatch.setattr(options, "exit_unless_prefect_lets_us_in", lambda: None)
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    code = options.run_flow(
        ["predict"],
        0,
        lambda: heartbeat_frequency,
        finished=lambda seen: f"heartbeat every {seen} s",
        summary_lines=lambda seen: ["a line"],
    )
    assert code == 0
    # the local server has no automation watching them; a configured one (a team's) may mark lost runs crashed
    assert capsys.readouterr().out.split("\n")[1:3] == [f"heartbeat every {expected} s", "  a line"]


def test_a_flow_with_nothing_to_resume_says_its_own_line():
    assert RunSignals(["predict", "--input", "csv:x.csv"], 0, line="digitflow: interrupted; files whole").message() == (
        "digitflow: interrupted; files whole"
    )


@pytest.fixture
def collector_restored():
    """The test process's garbage collector as it was, frozen objects included."""
    import gc

    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_the_console_scripts_collector_is_off_for_the_imports_and_on_for_the_flow(
    monkeypatch, capsys, collector_restored
):
    import gc

    from flows.cli import startup

    monkeypatch.setattr(options, "use_local_server", lambda: FakeServer())
    seen = {}

    def load():
        seen["during imports"] = gc.isenabled()
        return lambda: seen.setdefault("during the flow", gc.isenabled())

    startup.pause()  # as flows.cli.command does first
    frozen_before = gc.get_freeze_count()
    code = options.run_flow(["run"], 0, load, finished="done", summary_lines=lambda _: [])
    assert code == 0
    assert seen == {"during imports": False, "during the flow": True}
    assert gc.get_freeze_count() > frozen_before  # what the imports allocated: never traversed again
    startup.imports_done()  # a second call, or one without pause(), changes nothing
    assert gc.isenabled()


def test_without_pause_the_collector_is_left_as_it_was(collector_restored):
    import gc

    from flows.cli import startup

    gc.disable()  # someone else's choice (a process that embeds digitflow)
    frozen_before = gc.get_freeze_count()
    startup.imports_done()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen_before
