"""Occlusion sensitivity (the paper's Fig. 7): a grey square slid over an image, the classifier's
probability of the true class and a feature's activity recorded at each position.

The occluded copies are made and run a batch at a time, so memory depends on the batch, not on the
number of positions. numpy only. Axis letters: C channels, H W height and width, R Q the occluder's
grid (rows, columns).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.core import ops
from zfcore.errors import ArgumentError, check_count, check_feature, check_index, check_layer, num_classes

SIZE_FRACTION = (3, 14)     # default square: 3/14 of the image's side (6 px of 28, 48 px of 224)
STRIDE_FRACTION = (1, 14)   # default step: 1/14 of the side (2 px of 28, 16 px of 224): 12 x 12 positions
BATCH_BYTES = 256 * 2**20   # default batch: about this much of layer outputs per forward pass ...
MAX_BATCH = 256             # ... and at most this many occluded copies
OCCLUDE_BYTES = 2**30       # ``occlude`` (every copy at once) refuses stacks larger than this


# --- occlusion sensitivity (the paper's Fig. 7) -------------------------------------------------------
@dataclass
class Occlusion:
    """A ``size`` x ``size`` occluder with its top-left corner at each grid position (``rows`` (R,),
    ``cols`` (Q,), input pixels): ``prob`` (R, Q) probability of ``target``; ``predicted`` (R, Q) the
    most probable class; ``feature_activity`` (R, Q) total activation of ``feature`` in ``layer`` (the
    paper's panel (b)), or None. ``stride``, ``fill`` and ``batch_size``: as run."""
    size: int
    rows: np.ndarray
    cols: np.ndarray
    prob: np.ndarray
    predicted: np.ndarray
    feature_activity: np.ndarray | None
    layer: str | None
    feature: int | None
    stride: int | None = None
    fill: float | None = None
    batch_size: int | None = None


def default_square(shape) -> tuple[int, int]:
    """(size, stride) of the default occluder for an image of ``shape`` (C, H, W) or (H, W):
    ``SIZE_FRACTION`` and ``STRIDE_FRACTION`` of the shorter side, rounded, at least 1 pixel. A
    square image of any side gets a grid of 12 x 12 positions; a 28-pixel one size 6, stride 2."""
    side = int(min(shape[-2:]))
    (a, b), (c, d) = SIZE_FRACTION, STRIDE_FRACTION
    return max(1, (2 * a * side + b) // (2 * b)), max(1, (2 * c * side + d) // (2 * d))


def occlusion_grid(shape, size: int, stride: int):
    """(row starts (R,), col starts (Q,)) of a ``size`` x ``size`` square's top-left corner on an image
    of ``shape`` (.., H, W): every ``stride``-th pixel, plus the square flush with the bottom and right
    borders. ``size`` must fit the shorter side (``size`` equal to it: one position per axis of that
    length); ``stride`` is 1..the longer side (any stride from H - size up gives the two borders)."""
    H, W = (int(v) for v in shape[-2:])
    size = check_count(size, "occluder size", 1, min(H, W))
    check_count(stride, "occluder stride", 1)
    stride = check_count(stride, "occluder stride", 1, max(H, W))
    rows = np.unique(np.r_[np.arange(0, H - size + 1, stride), H - size])
    cols = np.unique(np.r_[np.arange(0, W - size + 1, stride), W - size])
    return rows, cols


def check_fill(fill) -> float:
    """The occluder's value as a float, or ``ArgumentError`` if it is not a finite number."""
    try:
        v = float(fill)
    except (TypeError, ValueError):
        raise ArgumentError(f"the occluder's fill must be a finite number, got {fill!r}") from None
    if not np.isfinite(v):
        raise ArgumentError(f"the occluder's fill must be a finite number, got {fill}")
    return v


def occluded_batches(image, rows, cols, size: int, fill: float, batch_size: int):
    """Yield (first position, copies (B, C, H, W)) of ``image`` with the square of ``fill`` at the
    positions ``rows`` x ``cols`` (row-major), ``batch_size`` copies at a time (the last fewer)."""
    total, Q = len(rows) * len(cols), len(cols)
    for i in range(0, total, batch_size):
        stack = np.repeat(image[None], min(batch_size, total - i), axis=0)
        for n in range(len(stack)):
            r, c = int(rows[(i + n) // Q]), int(cols[(i + n) % Q])
            stack[n, :, r:r + size, c:c + size] = fill
        yield i, stack


def occlude(image, size: int, stride: int, fill: float = 0.0, max_bytes: int = OCCLUDE_BYTES):
    """All copies of ``image`` (C, H, W) with a ``size`` x ``size`` square set to ``fill``, the square's
    top-left corner on ``occlusion_grid``. Returns (stack (R*Q, C, H, W), row starts (R,), col starts
    (Q,)). A stack over ``max_bytes`` is refused before it is made (``occlusion`` runs any grid in
    batches)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    fill = check_fill(fill)
    rows, cols = occlusion_grid(image.shape, size, stride)
    n = len(rows) * len(cols)
    if n * image.nbytes > max_bytes:
        raise ArgumentError(f"occlude: {n} copies of a {'x'.join(map(str, image.shape))} image need "
                            f"{n * image.nbytes / 2**20:.0f} MiB, over max_bytes ({max_bytes / 2**20:.0f} "
                            "MiB); use a larger stride, or analysis.occlusion, which runs in batches")
    return next(occluded_batches(image, rows, cols, size, fill, n))[1], rows, cols


def default_batch(net, shape) -> int:
    """Occluded copies per forward pass: as many as keep the outputs of every layer for one image of
    ``shape`` (C, H, W), summed, within ``BATCH_BYTES`` (1..``MAX_BATCH``)."""
    shapes = net.shapes(tuple(shape))
    sizes = [int(np.prod(s)) for s in shapes[1:]]
    sizes.append(int(np.prod(net.layers[-1].output_shape(shapes[-1]))))
    per_image = sum(sizes) * np.dtype(net.dtype).itemsize
    return int(np.clip(BATCH_BYTES // max(per_image, 1), 1, MAX_BATCH))


def occlusion(net, image, target: int, size: int | None = None, stride: int | None = None,
              fill: float = 0.0, layer: str | None = None, feature: int | None = None,
              batch_size: int | None = None, progress=None) -> Occlusion:
    """Slide a square of ``fill`` over ``image`` (C, H, W) and record the classifier's probability of
    ``target``, its most probable class, and (if ``layer``/``feature`` are given) the total activation
    of that feature map, as functions of the square's position (``occlusion_grid``).

    size, stride: pixels; None: ``default_square`` (3/14 and 1/14 of the shorter side). batch_size:
    occluded copies per forward pass; None: ``default_batch`` (memory holds one batch, whatever the
    grid). progress: None, True (a tqdm bar on stderr) or a callable(n) called after each batch with
    its number of positions."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    target = check_index(target, num_classes(net, image.shape), "target class")
    if layer is not None or feature is not None:
        if layer is None or feature is None:
            raise ArgumentError("occlusion: give both layer and feature, or neither")
        feature = check_feature(net, check_layer(net, layer), feature, image.shape)
    d_size, d_stride = default_square(image.shape)
    size = check_count(d_size if size is None else size, "occluder size", 1, min(image.shape[1:]))
    rows, cols = occlusion_grid(image.shape, size, d_stride if stride is None else stride)
    stride = d_stride if stride is None else int(stride)
    batch_size = default_batch(net, image.shape) if batch_size is None else \
        check_count(batch_size, "batch_size", 1)
    fill = check_fill(fill)
    from zfcore.analysis.topk import progress_steps

    step, close = progress_steps(progress, len(rows) * len(cols), "occlusion")
    probs, best, acts = [], [], []
    try:
        for _, stack in occluded_batches(image, rows, cols, size, fill, batch_size):
            logits, kept = net.infer(stack, keep=() if layer is None else (layer,))
            p = ops.softmax(logits)
            probs.append(p[:, target])
            best.append(p.argmax(1))
            if layer is not None:
                a = kept[layer]
                acts.append(a[:, feature].reshape(len(a), -1).sum(axis=1))
            if step is not None:
                step(len(stack))
    finally:
        close()
    shape = (len(rows), len(cols))
    return Occlusion(size, rows, cols, np.concatenate(probs).reshape(shape),
                     np.concatenate(best).reshape(shape),
                     np.concatenate(acts).reshape(shape) if layer is not None else None, layer, feature,
                     stride, fill, batch_size)
