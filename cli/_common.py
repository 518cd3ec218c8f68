"""Shared CLI plumbing: error handling and consoles."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape

from tabst.errors import TabstError
from tabst.outputs import is_fatal_io

console = Console(soft_wrap=True)  # long paths stay on one line (copyable, greppable)
err_console = Console(stderr=True, soft_wrap=True)

DEBUG_ENV = "TABST_DEBUG"  # set to 1 to see the traceback of a file-system error

_WHAT = {
    errno.ENOSPC: ("disk full", "Free some space (or choose another --out on another disk) and "
                                "re-run."),
    errno.EDQUOT: ("disk quota exceeded", "Free some space or choose another --out, then re-run."),
    errno.EACCES: ("permission denied", "Choose a path you can write to (another --out)."),
    errno.EPERM: ("operation not permitted", "Choose a path you can write to (another --out)."),
    errno.EROFS: ("read-only file system", "Choose another --out on a writable disk."),
    errno.ENOENT: ("no such file or folder", "Check the path."),
    errno.ENOTDIR: ("a path component is a file, not a folder", "Check the path."),
    errno.EISDIR: ("is a folder, not a file", "Give a file path."),
    errno.EIO: ("input/output error", "Check the disk, then re-run."),
}


def _h5_errno(text: str) -> int | None:
    m = re.search(r"errno = (\d+)", text)
    return int(m.group(1)) if m else None


def _h5_name(text: str) -> str | None:
    m = re.search(r"(?:file)?name = '([^']*)'", text)
    return m.group(1) if m else None


def os_error_message(e: BaseException) -> str:
    """One line for a file-system error (``OSError`` or an HDF5 write failure): what happened,
    to which path, and what to do."""
    from tabst.outputs import current_output

    text = str(e)
    code = getattr(e, "errno", None) or _h5_errno(text)
    path = getattr(e, "filename", None) or _h5_name(text) or current_output()
    if path is not None:  # a hidden temp file/folder of an output: name the output asked for
        path = re.sub(r"(^|/)\.([^/]+)\.(?:tmp|old)-\d+(?=/|$)", r"\1\2", str(path))
    what, fix = _WHAT.get(code, (None, None))
    if what is None:
        detail = getattr(e, "strerror", None) or text or type(e).__name__
        where = f" ({path})" if path else ""
        return (f"file system error{where}: {detail}. Set {DEBUG_ENV}=1 for the full "
                "traceback.")
    if what == "disk full" and path is not None:
        return f"disk full: {path} (no space left on device). {fix}"
    return f"{what}: {path}. {fix}" if path else f"{what}. {fix}"


def _is_h5py_failure(e: BaseException) -> bool:
    """An h5py RuntimeError / ValueError from a failed write, create, flush or close (e.g.
    "file write failed ... errno = 28"): raised inside h5py and naming an OS errno."""
    if not isinstance(e, (RuntimeError, ValueError)) or _h5_errno(str(e)) is None:
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "h5py" in tb.tb_frame.f_code.co_filename


def user_errors(fn):
    """Decorator for command functions: a TabstError, an OSError (disk full, permission denied,
    read-only file system, ...) or an HDF5 write failure prints one message and exits with
    code 1. Other exceptions (bugs) keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _quiet_h5py_cleanup():  # also while the failed command's objects are freed
            try:
                return fn(*args, **kwargs)
            except TabstError as e:
                message = str(e)
            except (OSError, RuntimeError, ValueError) as e:
                if os.environ.get(DEBUG_ENV) or not (isinstance(e, OSError)
                                                     or _is_h5py_failure(e)):
                    raise
                message = os_error_message(e)
        _fail(message)

    return wrapper


@contextlib.contextmanager
def _quiet_h5py_cleanup():
    """Drop the "Exception ignored in h5py ... __dealloc__" reports that follow a failed HDF5
    write (disk full): h5py retries the write while freeing objects; the command reports the
    error once."""
    prev, prev_except = sys.unraisablehook, sys.excepthook

    def hook(u):
        where = f"{u.object!r} {u.err_msg or ''}"
        if not ("h5py" in where and is_fatal_io(u.exc_value)):
            prev(u)

    def except_hook(kind, value, tb):  # Cython prints the traceback of such an error this way
        last = tb
        while last is not None and last.tb_next is not None:
            last = last.tb_next
        if not (last is not None and "h5py" in last.tb_frame.f_code.co_filename
                and is_fatal_io(value)):
            prev_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = hook, except_hook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = prev, prev_except


def _fail(message: str):
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False,
                      soft_wrap=True)
    raise typer.Exit(1) from None
