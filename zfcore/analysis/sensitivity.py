"""Occlusion sensitivity (the paper's Fig. 7): a grey square slid over an image, the classifier's
probability of the true class and a feature's activity recorded at each position.

numpy only. Axis letters: C channels, H W height and width, R Q the occluder's grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.core import ops
from zfcore.errors import ArgumentError, check_count, check_feature, check_index, check_layer, num_classes


# --- occlusion sensitivity (the paper's Fig. 7) -------------------------------------------------------
@dataclass
class Occlusion:
    """A ``size`` x ``size`` occluder with its top-left corner at each grid position (rows, cols):
    ``prob`` (R, Q) probability of ``target``; ``predicted`` (R, Q) the most probable class;
    ``feature_activity`` (R, Q) total activation of ``feature`` in ``layer`` (the paper's panel (b)),
    or None."""
    size: int
    rows: np.ndarray
    cols: np.ndarray
    prob: np.ndarray
    predicted: np.ndarray
    feature_activity: np.ndarray | None
    layer: str | None
    feature: int | None


def occlude(image, size: int, stride: int, fill: float = 0.0):
    """All copies of ``image`` (C, H, W) with a ``size`` x ``size`` square set to ``fill``, the square's
    top-left corner on a grid of step ``stride`` (covering the image, last square flush with the
    border). Returns (stack (R*Q, C, H, W), row starts (R,), col starts (Q,))."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    C, H, W = image.shape
    if not np.isfinite(fill):
        raise ArgumentError(f"the occluder's fill must be a finite number, got {fill}")
    size = check_count(size, "occluder size", 1, min(H, W))
    stride = check_count(stride, "occluder stride", 1)
    rows = np.unique(np.r_[np.arange(0, H - size + 1, stride), H - size])
    cols = np.unique(np.r_[np.arange(0, W - size + 1, stride), W - size])
    stack = np.repeat(image[None], len(rows) * len(cols), axis=0)
    for n, (r, c) in enumerate((r, c) for r in rows for c in cols):
        stack[n, :, r:r + size, c:c + size] = fill
    return stack, rows, cols


def occlusion(net, image, target: int, size: int = 6, stride: int = 2, fill: float = 0.0,
              layer: str | None = None, feature: int | None = None, batch_size: int = 256) -> Occlusion:
    """Slide a grey square over ``image`` (C, H, W) and record the classifier's probability of
    ``target``, its most probable class, and (if ``layer``/``feature`` are given) the total activation
    of that feature map, as functions of the square's position."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    target = check_index(target, num_classes(net, image.shape), "target class")
    if layer is not None or feature is not None:
        if layer is None or feature is None:
            raise ArgumentError("occlusion: give both layer and feature, or neither")
        feature = check_feature(net, check_layer(net, layer), feature, image.shape)
    check_count(size, "occluder size", 1, min(image.shape[1:]))
    check_count(stride, "occluder stride", 1)
    batch_size = check_count(batch_size, "batch_size", 1)
    stack, rows, cols = occlude(image, size, stride, fill)
    probs, acts = [], []
    for i in range(0, len(stack), batch_size):
        logits, kept = net.infer(stack[i:i + batch_size], keep=() if layer is None else (layer,))
        probs.append(ops.softmax(logits))
        if layer is not None:
            a = kept[layer]
            acts.append(a[:, feature].reshape(len(a), -1).sum(axis=1))
    probs = np.concatenate(probs)
    shape = (len(rows), len(cols))
    return Occlusion(size, rows, cols, probs[:, target].reshape(shape), probs.argmax(1).reshape(shape),
                     np.concatenate(acts).reshape(shape) if layer is not None else None, layer, feature)
