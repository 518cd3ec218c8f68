"""The `tabst` command line. Each `cmd_*.py` module in this package registers its commands.

Commands only parse arguments and call the library (``tabst.*``); user errors
(:class:`tabst.errors.TabstError`) become one red message and exit code 1.
"""
from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="tabst: H&E histology + spatial gene expression -> honest, explained "
                       "model comparison.")
ingest_app = typer.Typer(no_args_is_help=True, help="Bring raw data into a tabst store (HDF5).")
app.add_typer(ingest_app, name="ingest")


def _register_all() -> None:
    import tabst_cli

    for mod in sorted(m.name for m in pkgutil.iter_modules(tabst_cli.__path__)):
        if mod.startswith("cmd_"):
            importlib.import_module(f"tabst_cli.{mod}").register(app, ingest_app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
