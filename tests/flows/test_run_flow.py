"""``flows.cli.options.run_flow``, the tail every command shares: where the flow runs, its heartbeats, the lines it
prints, and the one line of an interruption (no real flow: ``load`` returns a plain function)."""

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
