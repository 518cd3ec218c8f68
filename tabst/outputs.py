"""Writing outputs safely: one up-front check, one lock per output, a no-replace final rename.

Every writer (stores, run folders, reports, submissions) goes through these helpers:

- :func:`prepare_output` checks the target before any work (exists? a file or a folder as
  expected? parent writable? free space?) and raises one :class:`~tabst.errors.TabstError`;
  it also removes hidden leftovers of killed runs (``.NAME.tmp-PID``) whose process is gone.
- :func:`tabst.locks.output_lock` holds ``.NAME.lock`` while a run writes ``NAME``, so a
  second tabst process writing the same output stops at once with "being written by another
  tabst process (pid ...)" (see :mod:`tabst.locks`).
- :func:`publish` moves the finished temp file/folder into place without replacing anything
  that appeared meanwhile (``renameat2(RENAME_NOREPLACE)``, else ``link``/``rename``); the
  results are then kept beside it and the error says where. ``force=True`` replaces.
- :func:`atomic_output` combines the three for one file or folder.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .errors import OutputError
from .locks import (  # noqa: F401 - re-exported: one import place for writers
    held_message,
    lock_holder,
    lock_if_possible,
    lock_path,
    note,
    output_lock,
    pid_alive,
)

MIN_FREE_BYTES = 1 << 20  # refuse to start on a disk with less than 1 MiB free
_RECENT: list[Path] = []  # outputs prepared by this process, newest last (for error messages)


def mark_writing(path) -> None:
    """Record ``path`` as the output this process is writing (named by disk-full messages)."""
    _RECENT.append(Path(path))
    del _RECENT[:-8]


def current_output() -> Path | None:
    """The output this process prepared last (named by disk-full messages), or None."""
    return _RECENT[-1] if _RECENT else None


def temp_path(path, tag: str = "tmp") -> Path:
    """Hidden sibling ``.NAME.<tag>-PID`` of ``path`` for this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


# ---------------------------------------------------------------------------------------------
# up-front check
# ---------------------------------------------------------------------------------------------
def prepare_output(path, kind: str = "file", *, force: bool = False, expected_bytes=None,
                   what: str = "--out", exist_ok: bool = False) -> Path:
    """Check an output path before any work; returns it as a Path.

    Parameters
    ----------
    path : the file or folder to be written.
    kind : ``"file"`` or ``"dir"``: what ``path`` must be if it exists.
    force : an existing ``path`` (of the right kind) will be replaced.
    expected_bytes : rough size of the output; refused if the disk has less free space.
    what : the option that named ``path``, used in messages.
    exist_ok : an existing ``path`` of the right kind is written into (e.g. a demo folder).

    Raises
    ------
    TabstError
        ``path`` exists (without ``force``), is a folder where a file is expected or the reverse,
        lies under a file, its folder is not writable, or the disk is (nearly) full.
    """
    path = Path(path)
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    if path.is_dir() and kind == "file":
        raise OutputError(f"{path} is a folder, but {what} must be a file path (e.g. "
                         f"{path / 'out.h5'} or another name).")
    if path.exists() and not path.is_dir() and kind == "dir":
        raise OutputError(f"{path} is a file, but {what} must be a folder. Choose another {what} "
                         "(--force does not replace a file by a folder).")
    if path.exists() and not (force or exist_ok):
        raise OutputError(f"{path} already exists. Pass --force to replace it, or choose another "
                         f"{what}.")
    if inside_own_temp(path):  # part of an output this process is building: checked already
        return path
    base = _existing_ancestor(path.parent, path, what)
    check_writable(base)
    if path.is_dir() and exist_ok:
        check_writable(path)
    check_free_space(base, expected_bytes, path)
    if lock_holder(path) is None:
        clean_stale(path)
    mark_writing(path)
    return path


def inside_own_temp(path) -> bool:
    """Whether ``path`` lies in a temp folder (``.NAME.tmp-PID``) of this process, e.g. a model
    folder inside a run folder being built: its run was checked, locked and will be published
    as a whole."""
    pat = re.compile(rf"\..+\.tmp-{os.getpid()}")
    return any(pat.fullmatch(part) for part in Path(path).parent.parts)


def is_fatal_io(e: BaseException) -> bool:
    """An error that stops a whole run rather than one model: an :class:`OutputError`, or a
    file-system error (disk full, quota, read-only, I/O error), also as h5py reports one."""
    if isinstance(e, OutputError):
        return True
    if not isinstance(e, (OSError, RuntimeError, ValueError)):  # h5py raises all three
        return False
    code = getattr(e, "errno", None)
    if code is None:
        m = re.search(r"errno = (\d+)", str(e))
        code = int(m.group(1)) if m else None
    return code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _existing_ancestor(parent: Path, path: Path, what: str) -> Path:
    p = parent if str(parent) else Path(".")
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OutputError(f"cannot create {path}: {p} is a file, not a folder. Choose another "
                         f"{what}.")
    return p


def check_writable(folder) -> None:
    """Raise :class:`TabstError` unless files can be created in ``folder`` (checked with
    ``os.access`` and by creating and removing a hidden probe file)."""
    folder = Path(folder)
    why = None
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "permission denied"
        try:
            if os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1):
                why = "read-only file system"
        except OSError:
            pass
    else:
        probe = folder / f".tabst-probe-{os.getpid()}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except FileExistsError:
            pass
        except OSError as e:
            why = (e.strerror or str(e)).lower()
    if why:
        raise OutputError(f"cannot write to {folder}: {why}. Choose another --out (a folder you "
                         "can write to).")


def check_free_space(folder, expected_bytes=None, path=None) -> None:
    """Raise :class:`TabstError` if ``folder``'s disk has less than ``expected_bytes`` (and
    at least 1 MiB) free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    need = max(int(expected_bytes or 0), MIN_FREE_BYTES)
    if free < need:
        raise OutputError(f"not enough free space for {path or folder}: about {_mb(need)} needed, "
                         f"{_mb(free)} free on {folder}. Free some space, or write to another disk.")


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# leftovers of killed runs
# ---------------------------------------------------------------------------------------------
def clean_stale(path) -> list[Path]:
    """Remove hidden temp files/folders of ``path`` left by dead processes; returns them.

    Matches ``.NAME.tmp-PID`` and ``.NAME.old-PID`` (removed only when process PID is not
    running) and ``.NAME.tmp`` (written by older versions, no pid; the caller checked that no
    live tabst process holds the output's lock). Each removal is reported on stderr.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    pat = re.compile(r"\.(?:tmp|old)-(\d+)")
    prefix = f".{path.name}."
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        tail = name[len(prefix) - 1:]
        m = pat.fullmatch(tail)
        if not (tail == ".tmp" or (m and not pid_alive(int(m.group(1))))):
            continue
        p = folder / name
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            continue
        who = f"process {m.group(1)} is not running" if m else "left by an interrupted run"
        note(f"removed {p} ({who}).")
        removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# final rename
# ---------------------------------------------------------------------------------------------
def _renameat2_noreplace(src: Path, dst: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)``; False when the system or file system lacks it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), 1) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    if err in (errno.EEXIST, errno.ENOTEMPTY):
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:  # pragma: no cover
            _LIBC.append(None)
    return _LIBC[0]


def rename_noreplace(src, dst) -> None:
    """Rename ``src`` to ``dst``; raises FileExistsError if ``dst`` exists (never replaces it).

    Atomic with ``renameat2(RENAME_NOREPLACE)`` (Linux) or, for files, ``link`` + ``unlink``;
    elsewhere a check just before ``rename`` (the output's lock keeps other tabst processes out).
    """
    src, dst = Path(src), Path(dst)
    if sys.platform.startswith("linux") and _renameat2_noreplace(src, dst):
        return
    if src.is_dir():
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
            raise
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network / FUSE file systems)
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def publish(tmp, path, *, force: bool = False) -> Path:
    """Move the finished ``tmp`` (file or folder) to ``path``.

    ``force`` replaces whatever is at ``path``. Otherwise nothing is replaced: if ``path``
    appeared while this run worked, ``tmp`` is kept as ``NAME.conflict-PID`` beside it and a
    :class:`TabstError` says so.
    """
    tmp, path = Path(tmp), Path(path)
    if force:
        _replace(tmp, path)
        return path
    try:
        rename_noreplace(tmp, path)
    except FileExistsError:
        kept = _keep(tmp, path)
        where = (f"This run's results are in {kept}: rename it, or re-run" if kept else
                 "This run's results were not written; re-run")
        raise OutputError(f"{path} was created by another process while this run was working; it "
                         f"was not replaced. {where} with --force or another --out.") from None
    return path


def _keep(tmp: Path, path: Path) -> Path | None:
    """Move a finished ``tmp`` that lost the race to a visible ``NAME.conflict-PID``."""
    stem, suffix = (path.stem, path.suffix) if tmp.is_file() else (path.name, "")
    kept = path.with_name(f"{stem}.conflict-{os.getpid()}{suffix}")
    try:
        rename_noreplace(tmp, kept)
    except OSError:
        return None
    return kept


def _replace(tmp: Path, path: Path) -> None:
    if not tmp.is_dir() or not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        os.rename(tmp, path)
        return
    old = temp_path(path, "old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove(p: Path) -> None:
    """Remove a file or folder if present (errors ignored)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def atomic_output(path, kind: str = "file", *, force: bool = False, expected_bytes=None,
                  what: str = "output"):
    """Write ``path`` atomically: check it, lock it, yield a hidden temp path, publish at the end.

    For ``kind="dir"`` the temp folder exists when the body starts; for ``"file"`` the body
    creates the temp file. If the body raises, the temp path is removed and ``path`` is left as
    it was. See :func:`prepare_output` and :func:`publish` for the checks and the final rename.
    """
    path = prepare_output(path, kind, force=force, expected_bytes=expected_bytes)
    with nullcontext() if inside_own_temp(path) else output_lock(path, what):
        if os.path.lexists(path) and not force:  # finished meanwhile by a process that just left
            raise OutputError(f"{path} already exists. Pass --force to replace it, or choose "
                             "another --out.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        remove(tmp)
        if kind == "dir":
            tmp.mkdir()
        try:
            yield tmp
            publish(tmp, path, force=force)
        except BaseException:
            remove(tmp)
            raise
