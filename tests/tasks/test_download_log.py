"""Download progress as log lines: one per quarter of a file, and the end."""

import logging

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
