"""User-facing errors.

Every problem a user can fix (bad input file, wrong column, missing weights...) is raised as a
:class:`TabstError`. The CLI prints its message and exits with code 1; nothing else is printed.
"""
from __future__ import annotations


class TabstError(Exception):
    """An error the user can act on. ``str(err)`` is the whole message shown to them."""


class InputError(TabstError):
    """Bad input data: names the file, the row and/or column, and what to do about it.

    Rows are reported 1-based as a person counts data lines in the file (header excluded).
    """

    def __init__(self, message: str, *, file=None, row=None, column=None, fix: str | None = None):
        self.file, self.row, self.column, self.fix = file, row, column, fix
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        text = (": ".join([", ".join(where), message]) if where else message)
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class StoreError(TabstError):
    """The store file is missing, of another schema version, or lacks what a command needs."""


class OutputError(TabstError):
    """An output cannot be written: exists, wrong kind, not writable, disk full, or created by
    another process meanwhile. Fatal for a whole run (never recorded as one model's failure)."""
