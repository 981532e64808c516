"""zfcore's one error family and the argument checks that raise it.

Every bad input the library recognises raises a ``ZfcoreError`` (a ``ValueError``) whose message names
the input and the problem. The command line prints that message as one line and exits with status 2;
the Python API raises the same exception with the same words. Missing files and refused overwrites keep
Python's own ``FileNotFoundError`` / ``FileExistsError`` (the command line reports those the same way).

The checks (one wording each, shared by the core, the analyses and the command line):

- ``check_int`` / ``is_int``: an integer (Python or numpy, not a bool): "x must be an integer, got 1.5";
- ``check_count``: an integer in a range: "k must be >= 1, got 0", "k must be in 1..5, got 6";
- ``check_index``: an index in 0..n-1: "target class 10 out of range 0..9";
- ``check_choice``: one of a few names: "unknown rule 'x'; did you mean ...? (expected one of ...)";
- ``check_layer``, ``check_feature``, ``layer_width``, ``num_classes``: names and widths of a network's
  layers (any object with ``layer_names``, ``spec``, ``index``, ``layers``, ``shapes`` and
  ``input_shape``, as ``zfcore.core.Network``).

numpy only; this module imports nothing else of zfcore.
"""
from __future__ import annotations

import difflib
import operator

import numpy as np


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


# --- integers, counts, indices, names -------------------------------------------------------------
def is_int(value) -> bool:
    """True for an integer (``int``, a numpy integer, anything with ``__index__``) that is not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_int(value, what: str) -> int:
    """``value`` as an ``int``, or ``ArgumentError``: "<what> must be an integer, got <value>"."""
    if not is_int(value):
        raise ArgumentError(f"{what} must be an integer, got {value!r}")
    return operator.index(value)


def bounds_error(what: str, value, low: int, high: int | None = None) -> ArgumentError:
    """The error of a value outside low..high (high None: no upper bound), in the one wording:
    "<what> must be >= <low>, got <value>" or "<what> must be in <low>..<high>, got <value>"."""
    rng = f"in {low}..{high}" if high is not None else f">= {low}"
    return ArgumentError(f"{what} must be {rng}, got {value!r}")


def check_count(value, what: str, low: int = 1, high: int | None = None) -> int:
    """An integer ``value`` in low..high (high None: no upper bound), else ``ArgumentError``."""
    v = check_int(value, what)
    if v < low or (high is not None and v > high):
        raise bounds_error(what, v, low, high)
    return v


def check_index(value, n: int, what: str) -> int:
    """``value`` as an int in 0..n-1, or ``ArgumentError`` naming ``what`` (no wrap-around of -1):
    "<what> <value> out of range 0..<n-1>"."""
    v = check_int(value, what)
    if not 0 <= v < n:
        raise ArgumentError(f"{what} {v} out of range 0..{n - 1}")
    return v


def check_choice(value, choices, what: str):
    """``value`` if it is one of ``choices``; else ``ArgumentError``: "unknown <what> 'x'; did you mean
    'y'? (expected one of 'a', 'b')"."""
    try:
        ok = value in choices
    except (TypeError, ValueError):   # an unhashable value, or an array compared with each choice
        ok = False
    if not ok:
        raise ArgumentError(f"unknown {what} {value!r}{suggest(str(value), choices)} "
                            f"(expected one of {', '.join(map(repr, choices))})")
    return value


# --- layers and features of a network -------------------------------------------------------------
def check_layer(net, layer) -> str:
    """``layer`` if ``net`` has it; otherwise ``ArgumentError`` suggesting the nearest names:
    "unknown layer 'conv55'; did you mean 'conv5'? (layers: conv1, relu1, ...)"."""
    names = net.layer_names
    if not isinstance(layer, str) or layer not in names:
        raise ArgumentError(f"unknown layer {layer!r}{suggest(str(layer), names)} "
                            f"(layers: {', '.join(names)})")
    return layer


def layer_width(net, layer: str, input_shape=None) -> int:
    """Number of feature maps (conv, relu, pool ...) or units (linear) ``layer`` outputs, read from the
    network's spec; without a spec, from the layers' output shapes for an input of ``input_shape``
    (C, H, W; default the network's own)."""
    check_layer(net, layer)
    if net.spec is not None:
        width = None
        for name, kind, p in net.spec:
            width = None if kind == "flatten" else p.get("out_channels", p.get("out_features", width))
            if name == layer:
                break
        if width is not None:
            return int(width)
    if input_shape is None and net.input_shape is None:
        raise ArgumentError(f"cannot tell the width of layer {layer!r} without an input shape")
    i = net.index(layer)
    return int(net.layers[i].output_shape(net.shapes(input_shape)[i])[0])


def num_classes(net, input_shape=None) -> int:
    """Width of the network's last layer (the classes)."""
    return layer_width(net, net.layer_names[-1], input_shape)


def check_feature(net, layer: str, feature, input_shape=None) -> int:
    """``feature`` as an int in 0..width-1 of ``layer`` (``layer_width``), else ``ArgumentError``:
    "feature of layer 'conv5' 128 out of range 0..127"."""
    return check_index(feature, layer_width(net, layer, input_shape), f"feature of layer {layer!r}")
