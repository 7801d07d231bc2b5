"""Progress lines: a line each tenth of the way when the output is not a terminal."""

import logging
import sys

from data_modules.progress import Progress


def _lines(caplog, total, updates, **kw):
    kw.setdefault("quiet_s", 0.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_modules.progress"):
        with Progress(total, "work", unit="clips", **kw) as bar:
            for note in updates:
                bar.update(note=note)
    return [r.getMessage() for r in caplog.records]


def test_a_line_each_tenth_off_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    lines = _lines(caplog, 100, [""] * 100)
    assert len(lines) == 10
    assert lines[0].startswith("work: 10/100 clips (10%), ") and lines[-1].startswith(
        "work: 100/100 clips (100%)")
    # fewer units than tenths: each crossing once, the end always
    lines = _lines(caplog, 16, [f"s{i}" for i in range(16)])
    assert len(lines) == 10 and lines[-1].startswith("work: 16/16") and "[s15]" in lines[-1]
    # no total known: a line every `every` units
    assert len(_lines(caplog, None, [""] * 250, every=100)) == 2
    # a phase over within its first seconds says nothing
    assert _lines(caplog, 100, [""] * 100, quiet_s=60) == []


def test_a_terminal_gets_the_bar_and_no_log_lines(caplog, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert _lines(caplog, 50, [""] * 50) == []
