"""Window arithmetic shared by the layers' cropped inverses and by ``zfcore.core.projection``.

A *window* is a rectangle of a layer's map, per batch item: a top-left corner (K, 2) and a size
(h, w). ``Geometry`` says which input positions one output position reads; ``Window`` says where a
batch of K projections lives at one layer; ``gather_windows`` cuts windows out of whole maps and
``rewindow`` moves a signal from one set of windows to another.

Axis letters: N images, K projections, C channels, H W map size.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Geometry(NamedTuple):
    """Spatial footprint of a windowed layer, per axis (H, W): output position i reads input
    positions ``[i*stride - padding, i*stride - padding + kernel)``."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


class Window(NamedTuple):
    """Where a batch of K projections lives, for ``Layer.inverse_window``.

    img (K,) int: each item's image in the forward batch (to read the cache);
    top_out (K, 2) int, size_out (h, w): the item's window in the layer's output;
    top_in (K, 2) int, size_in (h, w): the window wanted in the layer's input.
    For non-spatial (2-D) signals the tops and sizes are None.
    """
    img: np.ndarray
    top_out: np.ndarray | None
    size_out: tuple[int, int] | None
    top_in: np.ndarray | None
    size_in: tuple[int, int] | None


def gather_windows(a: np.ndarray, img: np.ndarray, top: np.ndarray, size) -> np.ndarray:
    """Windows of a batch of maps: ``out[k] = a[img[k], :, t:t+h, l:l+w]`` with ``(t, l) = top[k]``.

    a (N, C, H, W); img (K,); top (K, 2), each window inside the map; size (h, w) -> (K, C, h, w),
    a new array. One fancy-indexing copy of a ``sliding_window_view``.
    """
    h, w = size
    if a.shape[2] == h and a.shape[3] == w:
        return a[img]
    if len(img) == 1:
        t, l = int(top[0, 0]), int(top[0, 1])
        return a[int(img[0]), :, t:t + h, l:l + w][None].copy()
    v = np.lib.stride_tricks.sliding_window_view(a, (h, w), axis=(2, 3))
    return v[img, :, top[:, 0], top[:, 1]]


def rewindow(ext: np.ndarray, ext_top: np.ndarray, top: np.ndarray, size) -> np.ndarray:
    """Re-cut per-item windows: ``ext`` (K, C, mh, mw) holds item k's signal on the rectangle that
    starts at ``ext_top[k]``; return (K, C, h, w) on the rectangles starting at ``top[k]`` (zero where
    ``ext`` does not cover them). Coordinates are those of one map; ``size = (h, w)``."""
    K, C, mh, mw = ext.shape
    h, w = size
    off = np.asarray(top) - np.asarray(ext_top)          # (K, 2): where each wanted window starts in ext
    if (off == off[0]).all():
        dh, dw = int(off[0, 0]), int(off[0, 1])
        if dh == 0 and dw == 0 and (mh, mw) == (h, w):
            return ext
        if dh >= 0 and dw >= 0 and dh + h <= mh and dw + w <= mw:
            return ext[:, :, dh:dh + h, dw:dw + w]
        out = np.zeros((K, C, h, w), ext.dtype)
        sh0, sh1 = max(dh, 0), min(dh + h, mh)
        sw0, sw1 = max(dw, 0), min(dw + w, mw)
        if sh1 > sh0 and sw1 > sw0:
            out[:, :, sh0 - dh:sh1 - dh, sw0 - dw:sw1 - dw] = ext[:, :, sh0:sh1, sw0:sw1]
        return out
    # per-item offsets: pad ext so that every wanted window lies inside, then gather
    lo = np.maximum(-off.min(axis=0), 0)
    hi = np.maximum((off + [h, w]).max(axis=0) - [mh, mw], 0)
    if lo.any() or hi.any():
        ext = np.pad(ext, ((0, 0), (0, 0), (lo[0], hi[0]), (lo[1], hi[1])))
    return gather_windows(ext, np.arange(K), off + lo, size)
