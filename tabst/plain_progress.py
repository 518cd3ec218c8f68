"""Progress for a non-terminal (CI logs, ``| tee``, files): occasional plain lines.

:func:`tabst.util.progress` returns a rich bar on a terminal and a :class:`PlainProgress`
otherwise, with the subset of rich's ``Progress`` API tabst uses (``add_task``, ``advance``,
``update``, ``start``, ``stop``, ``console``, context manager). It prints one line per task
when it starts, at most one every ``interval`` seconds while it runs
(``TABST_PROGRESS_INTERVAL``, default 30 s), and one when it completes -- never carriage
returns or redraws.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)
    done: bool = False


class PlainProgress:
    """Plain-line progress reporting with rich ``Progress``'s calling conventions."""

    def __init__(self, unit: str = "items", interval: float | None = None, file=None):
        from rich.console import Console

        self.unit = unit
        env = os.environ.get("TABST_PROGRESS_INTERVAL", "")
        self.interval = float(interval if interval is not None else (env or 30.0))
        self.file = file if file is not None else sys.stderr
        self.console = Console(file=self.file, soft_wrap=True, highlight=False)
        self._tasks: dict[int, _Task] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for t in self._tasks.values():
            if not t.done and t.completed:
                self._line(t, "stopped")
                t.done = True

    def add_task(self, description: str, total=None, **_kw) -> int:
        k = len(self._tasks)
        self._tasks[k] = _Task(str(description), None if total is None else float(total))
        self._line(self._tasks[k], "started")
        return k

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, completed=None, advance=None, description=None, total=None,
               **_kw) -> None:
        t = self._tasks[task]
        if description is not None:
            t.description = str(description)
        if total is not None:
            t.total = float(total)
        if completed is not None:
            t.completed = float(completed)
        if advance:
            t.completed += float(advance)
        now = time.monotonic()
        if t.total is not None and t.completed >= t.total and not t.done:
            t.done = True
            self._line(t, "done")
        elif not t.done and now - t.last_print >= self.interval:
            self._line(t)

    def _line(self, t: _Task, state: str = "") -> None:
        t.last_print = now = time.monotonic()
        secs = now - t.started
        of = f"/{t.total:,.0f}" if t.total is not None else ""
        pct = f" ({100 * t.completed / t.total:.0f} %)" if t.total else ""
        rate = f", {t.completed / secs:,.0f} {self.unit}/s" if secs > 0 and t.completed else ""
        tail = f" -- {state}" if state else ""
        print(f"{t.description}: {t.completed:,.0f}{of} {self.unit}{pct}{rate}, "
              f"{secs:,.0f} s{tail}", file=self.file, flush=True)
