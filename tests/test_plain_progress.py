"""Progress in a non-terminal: a few plain lines, never carriage returns or redraws."""
from __future__ import annotations

import io

from tabst.plain_progress import PlainProgress
from tabst.util import progress


def test_non_terminal_gets_plain_lines_only(capsys):
    p = progress(unit="cells")  # pytest's stderr is not a terminal
    assert isinstance(p, PlainProgress)
    with p:
        t = p.add_task("embed", total=10_000)
        for _ in range(1000):
            p.advance(t, 10)
        p.console.print("a message")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and "\x1b[" not in err
    assert lines[0].startswith("embed: 0/10,000 cells") and "started" in lines[0]
    assert lines[-2].startswith("embed: 10,000/10,000 cells (100 %)") and "done" in lines[-2]
    assert lines[-1] == "a message" and len(lines) == 3  # 1000 updates, no redraw lines


def test_interval_lines_update_and_stop():
    buf = io.StringIO()
    with PlainProgress(unit="tiles", interval=0.0, file=buf) as p:
        t = p.add_task("centroids", total=None)
        p.update(t, advance=3, description="centroids S1")
        p.update(t, completed=7)
    lines = buf.getvalue().splitlines()
    assert lines[1].startswith("centroids S1: 3 tiles") and lines[2].startswith("centroids S1: 7")
    assert lines[-1].endswith("-- stopped") and len(lines) == 4
