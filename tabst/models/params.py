"""Parameter rules of the models: one declarative table per model, one checker for all.

Every model lists a rule for each of its parameters (``TabstModel.RULES``, plus
:data:`COMMON_RULES` for ``codec``, ``codec_k``, ``seed``, ``max_train_cells_per_group``); the
base class applies them at construction, so that ``tabst compare`` refuses a bad ``--set``
before fitting anything and the message names ``model.param``, the value and what is allowed.

A rule is the keyword arguments of :func:`check_param`, e.g.
``{"kind": "int", "low": 2}`` or ``{"kind": "word", "choices": ("auto", "float32")}``.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..errors import TabstError

KINDS = ("int", "float", "bool", "word", "floats", "words")
_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "floats": "a non-empty list of numbers", "words": "a name or a list of names"}

DEVICE_RULE = {"kind": "word", "choices": ("auto", "cpu", "cuda"),
               "pattern": (r"cuda:\d+", "'cuda:N'")}
COMMON_RULES = {
    "codec": {"kind": "word", "choices": ("identity", "pca"), "none_ok": True,
              "pattern": (r"pca[1-9]\d*", "'pcaK' (e.g. 'pca16')")},
    "codec_k": {"kind": "int", "low": 1},
    "seed": {"kind": "int", "low": 0},
    "max_train_cells_per_group": {"kind": "int", "low": 1, "none_ok": True},
}


class ParamError(TabstError):
    """A model parameter with a value the model cannot use.

    Attributes
    ----------
    model, param : str
        Registry key and parameter name (the message says ``model.param``).
    value : object
        The value given.
    allowed : str
        What is allowed, in words (e.g. ``"an integer >= 2"``).
    """

    def __init__(self, model: str, param: str, value, allowed: str):
        self.model, self.param, self.value, self.allowed = model, param, value, allowed
        super().__init__(f"{model}.{param} must be {allowed}, got {value!r}.")


def _range_words(low, high, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def allowed_words(kind: str, *, low=None, high=None, low_open: bool = False,
                  high_open: bool = False, choices=(), none_ok: bool = False,
                  pattern=None) -> str:
    """What a rule allows, in words: ``"'auto' or an integer >= 1"``."""
    alts = (["null"] if none_ok else []) + [repr(c) for c in choices] + (
        [pattern[1]] if pattern else [])
    if kind != "word":
        text = _KIND_WORDS[kind]
        rng = _range_words(low, high, low_open, high_open)
        if rng:
            text += f" {rng}" if kind != "floats" else f", each {rng}"
        alts.append(text)
    said = alts[0] if len(alts) == 1 else ", ".join(alts[:-1]) + " or " + alts[-1]
    return f"one of {said}" if kind == "word" and len(alts) > 1 else said

def _number_ok(v, integer: bool, low, high, low_open: bool, high_open: bool) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if not isinstance(v, types) or not math.isfinite(float(v)):
        return False
    if low is not None and (v <= low if low_open else v < low):
        return False
    return not (high is not None and (v >= high if high_open else v > high))


def _value_ok(kind: str, value, low, high, low_open, high_open) -> bool:
    if kind in ("int", "float"):
        return _number_ok(value, kind == "int", low, high, low_open, high_open)
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if kind == "floats":
        return (isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0
                and all(_number_ok(v, False, low, high, low_open, high_open) for v in value))
    if kind == "words":
        items = [value] if isinstance(value, str) else value
        return isinstance(items, (list, tuple)) and all(isinstance(v, str) and v for v in items)
    return False  # "word": only choices / pattern


def check_param(name: str, value, kind: str, *, low=None, high=None, low_open: bool = False,
                high_open: bool = False, choices=(), none_ok: bool = False, pattern=None) -> None:
    """Raise :class:`ParamError` unless ``value`` follows the rule.

    Parameters
    ----------
    name : str
        ``"model.param"``, e.g. ``"ridge.alphas"``.
    value : object
        The value to check.
    kind : {"int", "float", "bool", "word", "floats", "words"}
        ``int``: an integer (not a bool); ``float``: a finite number; ``floats``: a non-empty
        list of finite numbers (``low`` / ``high`` apply to each); ``words``: a name or a
        list of names (maybe empty); ``word``: one of ``choices`` (or ``pattern``).
    low, high : float, optional
        Bounds, inclusive unless ``low_open`` / ``high_open``.
    choices : sequence of str
        Words accepted as well (``"auto"``), or the only ones for ``kind="word"``.
    none_ok : bool
        Whether ``None`` (YAML ``null``) is accepted.
    pattern : (regex, words), optional
        Further words accepted, matched whole (``(r"cuda:\\d+", "'cuda:N'")``).

    Raises
    ------
    ParamError
        naming ``model.param``, the value and what is allowed.
    """
    if kind not in KINDS:
        raise ValueError(f"check_param: unknown kind {kind!r}")
    if value is None and none_ok:
        return
    if isinstance(value, str) and (value in choices
                                   or (pattern and re.fullmatch(pattern[0], value))):
        return
    if _value_ok(kind, value, low, high, low_open, high_open):
        return
    model, _, param = name.partition(".")
    raise ParamError(model, param, value, allowed_words(
        kind, low=low, high=high, low_open=low_open, high_open=high_open, choices=choices,
        none_ok=none_ok, pattern=pattern))
