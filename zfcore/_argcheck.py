"""Argument checks shared by the analyses and the command line: layer names (with the nearest names
suggested), feature and class indices against a network's widths. numpy only."""
from __future__ import annotations

import numpy as np

from zfcore.errors import ArgumentError, check_index, suggest


def check_layer(net, layer) -> str:
    """``layer`` if ``net`` has it; otherwise ``ArgumentError`` suggesting the nearest names."""
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
    return check_index(feature, layer_width(net, layer, input_shape), f"feature of layer {layer!r}")


def check_count(value, what: str, low: int = 1, high: int | None = None) -> int:
    """An integer ``value`` in low..high (high None: no upper bound), else ``ArgumentError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ArgumentError(f"{what} must be {rng}, got {value}")
    return int(value)
