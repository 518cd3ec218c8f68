"""Loading run-folder files without running code from them.

Run folders are shared between people, so nothing in them may execute code when it is loaded:
models and feature builders are JSON + ``.npz`` arrays (read with ``allow_pickle=False``),
XGBoost JSON, or torch state dicts read with ``weights_only=True``. A Python pickle
(``tree.pkl``, ``*.joblib`` of older run folders, or a pickle where an array file is expected)
is refused with one :class:`UnsafeFileError` that names the file, says why and what to do;
nothing in the file is read beyond its first bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import TabstError

#: File name endings of Python pickles (pickle, joblib, dill, cloudpickle).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill")
_REMEDY = ("Re-run `tabst compare` to rebuild the run folder: current versions save models and "
           "feature builders as JSON + arrays, which load without running code.")


class UnsafeFileError(TabstError):
    """A file in a run folder is a pickle (or holds pickled objects): refused, nothing run."""


def refuse(path, what: str = "a Python pickle") -> UnsafeFileError:
    """The error for file ``path`` (``what`` it is), ready to ``raise``.

    Parameters
    ----------
    path : the refused file.
    what : what the file is, e.g. ``"a Python pickle"``.

    Returns
    -------
    UnsafeFileError
    """
    return UnsafeFileError(
        f"{path}: refused to load {what}. Loading a pickle can run arbitrary code, and run "
        f"folders are shared between people, so tabst never loads one.\n  fix: {_REMEDY}")


def pickle_files(folder) -> list[Path]:
    """Files directly in ``folder`` whose names end like a pickle (sorted; [] if no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)


def check_no_pickles(folder) -> None:
    """Raise :class:`UnsafeFileError` if ``folder`` holds a pickle file (e.g. a legacy
    ``tree.pkl``): the model or builder saved there is refused as a whole."""
    found = pickle_files(folder)
    if found:
        raise refuse(found[0], "a Python pickle (a model file of an older tabst version)")


def check_legacy_file(path) -> None:
    """Raise :class:`UnsafeFileError` if ``path`` is missing but an older pickled twin
    (``path.joblib``, ``path.pkl``, ...) exists, e.g. ``features/fold_0.joblib``."""
    path = Path(path)
    if path.exists():
        return
    for suffix in PICKLE_SUFFIXES:
        twin = path.with_name(path.name + suffix)
        if twin.exists():
            raise refuse(twin, "a Python pickle (a feature builder of an older tabst version)")


def load_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read with ``allow_pickle=False``.

    Parameters
    ----------
    path : the ``.npz`` file.

    Returns
    -------
    dict name → array (read fully; the file is closed).

    Raises
    ------
    UnsafeFileError
        The file is a pickle, or one of its arrays holds pickled Python objects.
    TabstError
        The file is missing or not an array file.
    """
    path = Path(path)
    if not path.is_file():
        raise TabstError(f"{path}: missing (the saved state is incomplete).\n  fix: {_REMEDY}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise TabstError(f"{path}: a single .npy array, expected an .npz archive.\n"
                             f"  fix: {_REMEDY}")
        with z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # numpy: "... pickled data ..." / "Object arrays cannot be loaded"
        if "pickle" in str(e).lower():
            raise refuse(path, "pickled data where an array file is expected") from None
        raise TabstError(f"{path}: not a readable array file ({e}).\n  fix: {_REMEDY}") from None
    except (OSError, EOFError) as e:
        raise TabstError(f"{path}: not a readable array file ({e}).\n  fix: {_REMEDY}") from None
