"""Small shared helpers: hashing, memory, timing, progress bars."""
from __future__ import annotations

import hashlib
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .outputs import prepare_output  # noqa: F401 - re-exported: every writer checks with it


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Reads ``VmHWM`` from /proc (reset at exec, so a subprocess reports its own peak); falls back
    to ``getrusage`` where /proc is missing (that one survives exec: a child started from a large
    parent would report the parent's peak).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)


def current_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / (1024.0 * 1024.0)


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t()`` gives elapsed seconds."""
    t0 = time.perf_counter()
    end = [None]
    yield lambda: (end[0] if end[0] is not None else time.perf_counter()) - t0
    end[0] = time.perf_counter()


def progress(transient: bool = False, unit: str = "items"):
    """A rich progress bar with rate and ETA; use as ``with progress() as p: t = p.add_task(...)``.

    Writes to stderr so that stdout stays clean for ``--json`` output. When stderr is not a
    terminal (CI logs, ``| tee``) it prints occasional plain lines instead
    (:class:`tabst.plain_progress.PlainProgress`).
    """
    from rich.console import Console

    if not Console(stderr=True).is_terminal:
        from .plain_progress import PlainProgress

        return PlainProgress(unit=unit)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text(f"? {unit}/s", style="progress.data.speed")
            return Text(f"{speed:,.0f} {unit}/s", style="progress.data.speed")

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )


def relpath_from(target, base_dir) -> str:
    """Path of ``target`` relative to ``base_dir`` (POSIX separators), for portable stores."""
    return Path(os.path.relpath(Path(target).resolve(), Path(base_dir).resolve())).as_posix()


@contextmanager
def atomic_dir(path, *, force: bool = True):
    """Build a folder atomically: yields a hidden temp folder beside ``path``, renamed to
    ``path`` at the end; on any error the temp folder is removed and ``path`` is left as it was.

    Checks, lock and final rename are :func:`tabst.outputs.atomic_output`'s. ``force=True`` (the
    default, for folders inside a run being built, e.g. a model's) replaces an existing ``path``;
    ``force=False`` refuses one that exists at the start or appears while the body runs.
    """
    from .outputs import atomic_output

    with atomic_output(path, "dir", force=force) as tmp:
        yield tmp


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars/arrays (anything else becomes its str)."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
