"""One lock per output: ``.NAME.lock`` beside it, held with ``flock`` while a run writes it.

The file holds the writer's pid, host, start time and command, so a second tabst process writing
the same output (or reading a store being written) stops at once with "being written by another
tabst process (pid ...)". The kernel drops the lock when its process dies, so a lock file left by
``kill -9`` is taken over with a note; so is one whose writer is dead but whose forked child (a
data-loader worker) still holds the file open. Without ``fcntl`` (Windows) the lock is an
``O_EXCL`` file checked by pid.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import OutputError, TabstError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL lock files only
    fcntl = None

_HELD: dict[str, list] = {}  # lock path -> [fd, depth] held by this process


def note(message: str) -> None:
    """One line on stderr (the channel every command uses for progress and notes)."""
    sys.stderr.write(f"note: {message}\n")
    sys.stderr.flush()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(path) -> Path:
    """The lock file ``.NAME.lock`` beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _read_record(lp: Path) -> dict | None:
    try:
        rec = json.loads(lp.read_text() or "null")
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def lock_holder(path) -> dict | None:
    """The record (pid, host, command, started_utc) of another live process holding the lock of
    ``path``, or None when nobody (or this process) holds it."""
    lp = lock_path(path)
    if str(lp) in _HELD or not lp.exists():
        return None
    if fcntl is None:  # pragma: no cover
        rec = _read_record(lp)
        return rec if rec and pid_alive(int(rec.get("pid", 0))) else None
    try:
        fd = os.open(lp, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_record(lp) or {"pid": "?"}
    finally:
        os.close(fd)
    return None


def held_message(path: Path, rec: dict, what: str) -> str:
    host = rec.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    since = f", since {rec['started_utc']}" if rec.get("started_utc") else ""
    cmd = f": {rec['command']}" if rec.get("command") else ""
    return (f"{path}: the {what} is being written by another tabst process (pid "
            f"{rec.get('pid', '?')}{where}{since}{cmd}). Wait for it to finish, or choose another "
            f"--out. If no such process is running, delete {lock_path(path)}.")


@contextmanager
def output_lock(path, what: str = "output"):
    """Hold the lock ``.NAME.lock`` of ``path`` while the body runs (re-entrant per process).

    Raises
    ------
    TabstError
        another live process holds it (the message names its pid and command).
    """
    lp = lock_path(path)
    key = str(lp)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield lp
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(Path(path), lp, what)
    _HELD[key] = [fd, 1]
    try:
        yield lp
    finally:
        del _HELD[key]
        _release(lp, fd)


@contextmanager
def lock_if_possible(path, what: str = "output"):
    """:func:`output_lock`, or no lock (with a note) where the folder cannot hold a lock file
    (a read-only or foreign folder holding a writable file)."""
    with ExitStack() as stack:
        try:
            stack.enter_context(output_lock(path, what))
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            note(f"cannot create the lock file {lock_path(path)} ({e.strerror}); going on "
                 "without it: do not run two tabst commands on it at once.")
        yield


def _acquire(path: Path, lp: Path, what: str) -> int:
    lp.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        return _acquire_excl(path, lp, what)
    for _ in range(20):
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            rec = _read_record(lp) or {}
            if not _orphaned(rec):
                raise OutputError(held_message(path, rec, what)) from None
            # its writer is dead; a forked child (e.g. a data-loader worker) still holds the
            # file open: give the lock a new inode
            note(f"took over {lp}, a stale lock of pid {rec['pid']} (no longer running).")
            lp.unlink(missing_ok=True)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(lp).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and flock: retry
            os.close(fd)
            continue
        old = _read_record(lp)
        if old and old.get("pid") != os.getpid():
            note(f"took over {lp}, a stale lock of pid {old.get('pid')} (no longer running).")
        _write_record(fd)
        return fd
    raise TabstError(f"{lp}: could not take the lock (it keeps changing); try again.")


def _orphaned(rec: dict) -> bool:
    """A lock record of this machine whose writer is no longer running."""
    pid = rec.get("pid")
    return (isinstance(pid, int) and rec.get("host") == socket.gethostname()
            and not pid_alive(pid))


def _write_record(fd: int) -> None:
    from .store import now_utc

    rec = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": now_utc(),
           "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(rec).encode(), 0)


def _acquire_excl(path: Path, lp: Path, what: str) -> int:  # pragma: no cover - no fcntl
    for _ in range(2):
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            rec = _read_record(lp)
            if rec and pid_alive(int(rec.get("pid", 0))):
                raise OutputError(held_message(path, rec, what)) from None
            note(f"took over {lp}, a stale lock (no running process).")
            lp.unlink(missing_ok=True)
            continue
        _write_record(fd)
        return fd
    raise TabstError(f"{lp}: could not take the lock; try again.")


def _release(lp: Path, fd: int) -> None:
    try:
        lp.unlink(missing_ok=True)  # while still locked: a waiting opener sees a new inode
    finally:
        os.close(fd)
