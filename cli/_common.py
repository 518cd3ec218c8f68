"""Shared CLI plumbing: error handling and consoles."""
from __future__ import annotations

import functools

import typer
from rich.console import Console

from tabst.errors import TabstError

console = Console(soft_wrap=True)  # long paths stay on one line (copyable, greppable)
err_console = Console(stderr=True, soft_wrap=True)


def user_errors(fn):
    """Decorator for command functions: a TabstError prints one message and exits with code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TabstError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper
