"""Download progress as log lines: one per quarter of a file, and the end."""

import logging
from typing import Any

from tasks.data import DownloadLog


def test_logs_each_quarter_once(caplog):
    log = DownloadLog(logging.getLogger("test"))
    with caplog.at_level(logging.INFO, logger="test"):
        for done in range(0, 100_001, 5_000):
            log("https://mirror/x.gz", done, 100_000)
    percents = [r.getMessage().split("(")[-1] for r in caplog.records]
    assert percents == ["25%)", "50%)", "75%)", "100%)"]


def test_unknown_size_logs_every_10_mb(caplog):
    log = DownloadLog(logging.getLogger("test"))
    with caplog.at_level(logging.INFO, logger="test"):
        for done in range(1 << 20, 31 << 20, 1 << 20):
            log("https://mirror/y.gz", done, None)
    assert len(caplog.records) == 3


def test_tiny_files_do_not_break_it(caplog):
    log = DownloadLog(logging.getLogger("test"))
    with caplog.at_level(logging.INFO, logger="test"):
        log("https://mirror/z", 3, 3)
    assert caplog.records[-1].getMessage().endswith("(100%)")


# --- a failed download in the log: short at each retry, in full once ---------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(message)s").format(record))  # message + traceback if any


def test_a_failed_download_is_said_short_at_each_retry_and_in_full_once(
    tmp_path, monkeypatch, mlflow_store, prefect_server
):
    import reporting.logs
    import tasks.data
    from flows.pipeline import pipeline
    from tests.fakedata import fake_data_dir

    data_dir = fake_data_dir(tmp_path, monkeypatch, names=("usps",))
    (data_dir / "USPS" / "usps.t.bz2").unlink()  # its mirror is fake://, which urllib cannot reach
    fast = tasks.data.download_dataset.with_options(retry_delay_seconds=0, retry_jitter_factor=0.0)  # 0: no jitter
    monkeypatch.setattr(tasks.data, "download_dataset", fast)
    monkeypatch.setattr(reporting.logs, "_installed", None)  # the flow installs a fresh filter, as in a worker
    for logger in (
        logging.getLogger(),
        logging.getLogger("prefect"),
        *map(logging.getLogger, reporting.logs.PREFECT_LOGGERS),
    ):
        for handler in logger.handlers:  # and no filter an in-process `digitflow` command of another test left
            for old in [f for f in handler.filters if isinstance(f, reporting.logs.OneLineErrors)]:
                handler.removeFilter(old)
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        state: Any = pipeline(  # return_state=True: the flow run's final State
            train="usps:test",
            target=[],
            epochs=1,
            data_dir=str(data_dir),
            cache_dir=str(tmp_path / "cache"),
            output_dir=str(tmp_path / "out"),
            experiment="download-log",
            return_state=True,
        )
    finally:
        logging.getLogger().removeHandler(records)

    assert state.is_failed()
    full = "usps:test needs usps.t.bz2, not found in"
    short = (
        "DownloadError: usps:test needs usps.t.bz2: no mirror could provide it "
        "(URLError: <urlopen error unknown url type: fake>)"
    )
    text = "\n".join(records.lines)
    assert text.count(full) == 1, text
    assert [n for n in (1, 2, 3) if f"{short} - Retry {n}/3 will start" in text] == [1, 2, 3], text
    assert text.count(short) >= 4  # the retries, and the task's and the flow's final state
    assert "Traceback" not in text
    assert full in str(state.message) or short in str(state.message)


def test_full_message_left_to_the_caller():
    from digitflow.errors import DownloadError
    from reporting.logs import OneLineErrors

    error = DownloadError(
        "x:test needs f.gz, not found in /d and no mirror could provide it (u: boom)",
        "fix it",
        short="f.gz: no mirror could provide it (boom)",
    )
    quiet = OneLineErrors(full_in_log=False)
    retry = logging.LogRecord("prefect.task_runs", logging.INFO, "", 0, "failed: %r - Retry %s/%s", (error, 1, 3), None)
    final = logging.LogRecord(
        "prefect.task_runs",
        logging.ERROR,
        "",
        0,
        f"failed: {error!r} - Retries are exhausted",
        (),
        (DownloadError, error, None),
    )
    state = logging.LogRecord(
        "prefect.flow_runs", logging.INFO, "", 0, f"Finished in state Failed({f'DownloadError: {error}'!r})", (), None
    )
    for record in (retry, final, state):
        assert quiet.filter(record)
    assert retry.getMessage() == "failed: DownloadError: f.gz: no mirror could provide it (boom) - Retry 1/3"
    assert (
        final.getMessage() == "failed: DownloadError: f.gz: no mirror could provide it (boom) - Retries are exhausted"
    )
    assert final.exc_info is None
    assert state.getMessage() == "Finished in state Failed('DownloadError: f.gz: no mirror could provide it (boom)')"
