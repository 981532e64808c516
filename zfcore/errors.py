"""zfcore's exception family: every bad input the library recognises raises a ``ZfcoreError`` (a
``ValueError``) whose message names the input and the problem. The command line prints that message
as one line and exits with status 2; the Python API raises the same exception.

Missing files and refused overwrites keep Python's own ``FileNotFoundError`` / ``FileExistsError``
(the command line reports those the same way).
"""
from __future__ import annotations

import difflib
import operator


class ZfcoreError(ValueError):
    """Bad input to zfcore: the message names the input and the problem."""


class DataError(ZfcoreError):
    """A dataset or image file is missing, unreadable or malformed."""


class WeightsError(ZfcoreError):
    """A weights file is unreadable, too large, or does not fit the architecture; or bad save options."""


class ArgumentError(ZfcoreError):
    """An argument is out of range or of the wrong type (an index, a count, a layer name ...)."""


class TrainingError(ZfcoreError):
    """Training cannot start or cannot go on (e.g. the loss is no longer finite)."""


class MissingDependencyError(ZfcoreError, ImportError):
    """An optional dependency (torch, Pillow, matplotlib ...) is not installed; the message says how to
    install it."""


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise ``MissingDependencyError`` with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'zfcore[{extra}]'") from None


def suggest(name: str, choices, n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the closest ``choices`` to ``name`` (difflib), or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_index(value, n: int, what: str) -> int:
    """``value`` as an int in 0..n-1, or ``ArgumentError`` naming ``what`` (no wrap-around of -1)."""
    if isinstance(value, bool):
        raise ArgumentError(f"{what} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ArgumentError(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= v < n:
        raise ArgumentError(f"{what} {v} out of range 0..{n - 1}")
    return v
