"""Argument checks of ``zfcore.core.ops``: one clear ``ArgumentError`` (a ``ZfcoreError``, hence a
ValueError) per bad input, nothing broadcast silently.

Kept out of ops.py so that the operations read first. Each ``check_*`` returns the inputs converted
to one float dtype together with the sizes the operation needs. Integers and their bounds are checked
by ``zfcore.errors`` (``is_int``, ``check_count``), in the wording the rest of zfcore uses:
"stride must be >= 1, got 0".
"""
import numpy as np

from zfcore.errors import ArgumentError, bounds_error, check_count, is_int


def pair(v, name, low=None):
    """An int or a pair of ints -> (h, w), each >= ``low`` when given; ``ArgumentError`` naming
    ``name`` otherwise."""
    if is_int(v):
        a = b = v
    else:
        try:
            a, b = v
        except (TypeError, ValueError):
            raise ArgumentError(f"{name} must be an integer or a pair (h, w) of integers, got {v!r}") from None
        if not (is_int(a) and is_int(b)):
            raise ArgumentError(f"{name} must be an integer or a pair (h, w) of integers, got {v!r}")
    a, b = int(a), int(b)
    if low is not None and min(a, b) < low:
        raise bounds_error(name, v if is_int(v) else (a, b), low)
    return a, b


def conv_output_size(size, kernel, stride=1, padding=0):
    """Output length of a conv/pool window along one axis: ``1 + (size + 2*padding - kernel) // stride``.

    Raises ``ArgumentError`` if the kernel is larger than the padded input, a size, kernel or stride is
    below 1 or the padding below 0.
    """
    size, kernel = check_count(size, "size", 1), check_count(kernel, "kernel", 1)
    stride, padding = check_count(stride, "stride", 1), check_count(padding, "padding", 0)
    if kernel > size + 2 * padding:
        raise ArgumentError(f"kernel {kernel} is larger than the padded input {size} + 2*{padding}")
    return 1 + (size + 2 * padding - kernel) // stride


def stride_padding(stride, padding):
    """-> (sy, sx) >= 1, (ph, pw) >= 0."""
    return pair(stride, "stride", 1), pair(padding, "padding", 0)


def floats(*arrays, names):
    """Convert to ndarrays of one float dtype (float64 if any input is float64, else float32)."""
    arrays = [np.asarray(a) for a in arrays]
    for a, name in zip(arrays, names):
        if a.dtype.kind not in "biuf":
            raise ArgumentError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    wide = any(a.dtype.kind == "f" and a.dtype.itemsize >= 8 for a in arrays)
    dt = np.dtype(np.float64 if wide else np.float32)
    return [a.astype(dt, copy=False) for a in arrays], dt


def check_image_array(x, what: str = "input") -> np.ndarray:
    """``x`` as an ndarray of floats (or bools) with finite values; ``ArgumentError`` otherwise. An
    integer array is refused with the conversion to use (images are floats in [0, 1]: a uint8 array
    taken as it is would be read on a 0-255 scale), and so is any NaN or infinite value (they would
    give NaN outputs, silently). Reductions only (min, max): no temporary array of x's size."""
    x = np.asarray(x)
    if x.dtype.kind in "iu":
        raise ArgumentError(f"{what} is an integer array ({x.dtype}): images are floats in [0, 1]; convert "
                            "8-bit images with x.astype(np.float32) / 255 (16-bit ones: / 65535)")
    if x.dtype.kind not in "bf":
        raise ArgumentError(f"{what} must be a real numeric array, got dtype {x.dtype}")
    if x.size and x.dtype.kind == "f" and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        bad = np.argwhere(~np.isfinite(x))
        raise ArgumentError(f"{what} holds {len(bad)} NaN or infinite values (the first at index "
                            f"{tuple(int(v) for v in bad[0])}); images must be finite")
    return x


def ndim(a, n, name, letters):
    if a.ndim != n:
        raise ArgumentError(f"{name} must be {n}-D {letters}, got shape {a.shape}")


def check_conv(x, w, b, stride, padding):
    """-> x, w, b, dtype, (sy, sx), (ph, pw), (Ho, Wo)."""
    names = ("x", "w") if b is None else ("x", "w", "b")
    arrays, dt = floats(*((x, w) if b is None else (x, w, b)), names=names)
    x, w = arrays[0], arrays[1]
    b = arrays[2] if b is not None else None
    ndim(x, 4, "x", "(N, C, H, W)")
    ndim(w, 4, "w", "(F, C, KH, KW)")
    if x.shape[1] != w.shape[1]:
        raise ArgumentError(f"channel mismatch: x has C={x.shape[1]} channels, w expects {w.shape[1]}"
                            f" (x {x.shape}, w {w.shape})")
    if b is not None and b.shape != (w.shape[0],):
        raise ArgumentError(f"b must have shape (F,) = ({w.shape[0]},), got {b.shape}")
    (sy, sx), (ph, pw) = stride_padding(stride, padding)
    Ho = conv_output_size(x.shape[2], w.shape[2], sy, ph)
    Wo = conv_output_size(x.shape[3], w.shape[3], sx, pw)
    return x, w, b, dt, (sy, sx), (ph, pw), (Ho, Wo)


def check_conv_transpose(y, w, stride, padding, output_size):
    """-> y, w, dtype, (sy, sx), (ph, pw), (H, W): the input size chosen (see conv_transpose2d)."""
    (y, w), dt = floats(y, w, names=("y", "w"))
    ndim(y, 4, "y", "(N, F, Ho, Wo)")
    ndim(w, 4, "w", "(F, C, KH, KW)")
    if y.shape[1] != w.shape[0]:
        raise ArgumentError(f"channel mismatch: y has F={y.shape[1]} maps, w has {w.shape[0]} filters"
                            f" (y {y.shape}, w {w.shape})")
    (sy, sx), (ph, pw) = stride_padding(stride, padding)
    N, F, Ho, Wo = y.shape
    _, C, KH, KW = w.shape
    if min(Ho, Wo, KH, KW) <= 0:
        raise ArgumentError(f"empty spatial size: y {y.shape}, w {w.shape}")
    Hmin, Wmin = (Ho - 1) * sy - 2 * ph + KH, (Wo - 1) * sx - 2 * pw + KW
    if max(Hmin, 1) >= Hmin + sy or max(Wmin, 1) >= Wmin + sx:
        raise ArgumentError(f"padding {(ph, pw)} too large: no input size >= 1 gives y's size {(Ho, Wo)}"
                            f" (kernel {(KH, KW)}, stride {(sy, sx)})")
    if output_size is None:
        return y, w, dt, (sy, sx), (ph, pw), (max(Hmin, 1), max(Wmin, 1))
    size = tuple(output_size)
    if len(size) == 4:
        if size[:2] != (N, C):
            raise ArgumentError(f"output_size {size} does not match (N, C) = {(N, C)}")
        size = size[2:]
    H, W = pair(size, "output_size")
    if not (max(Hmin, 1) <= H < Hmin + sy and max(Wmin, 1) <= W < Wmin + sx):
        raise ArgumentError(f"output_size {(H, W)} out of range: with y {y.shape}, kernel {(KH, KW)},"
                            f" stride {(sy, sx)}, padding {(ph, pw)} it must lie in"
                            f" [{max(Hmin, 1)}, {Hmin + sy - 1}] x [{max(Wmin, 1)}, {Wmin + sx - 1}]")
    return y, w, dt, (sy, sx), (ph, pw), (H, W)


def check_window(x_shape, kernel, stride, padding):
    """Kernel, stride, padding of a window op on an (N, C, H, W) input -> (KH, KW), (sy, sx), (ph, pw), (Ho, Wo)."""
    kh, kw = pair(kernel, "kernel", 1)
    (sy, sx), (ph, pw) = stride_padding((kh, kw) if stride is None else stride, padding)
    Ho = conv_output_size(int(x_shape[2]), kh, sy, ph)
    Wo = conv_output_size(int(x_shape[3]), kw, sx, pw)
    return (kh, kw), (sy, sx), (ph, pw), (Ho, Wo)


def check_pool(x, kernel, stride, padding):
    """-> x, dtype, (KH, KW), (sy, sx), (ph, pw), (Ho, Wo); the padding at most half the kernel."""
    (x,), dt = floats(x, names=("x",))
    ndim(x, 4, "x", "(N, C, H, W)")
    kh, kw = pair(kernel, "kernel", 1)
    (sy, sx), (ph, pw) = stride_padding((kh, kw) if stride is None else stride, padding)
    if 2 * ph > kh or 2 * pw > kw:
        raise ArgumentError(f"padding {(ph, pw)} must be at most half the kernel {(kh, kw)}")
    return (x, dt) + check_window(x.shape, (kh, kw), (sy, sx), (ph, pw))


def check_unpool(y, switches, input_shape):
    """-> y, switches (int64), dtype, (H, W)."""
    (y,), dt = floats(y, names=("y",))
    ndim(y, 4, "y", "(N, C, Ho, Wo)")
    s = np.asarray(switches)
    if s.dtype.kind not in "iu":
        raise ArgumentError(f"switches must be an integer array, got dtype {s.dtype}")
    if s.shape != y.shape:
        raise ArgumentError(f"switches shape {s.shape} does not match y shape {y.shape}")
    H, W = spatial_size(input_shape, y.shape[:2], "input_shape")
    if s.size and (s.min() < 0 or s.max() >= H * W):
        raise ArgumentError(f"switches must lie in [0, H*W) = [0, {H * W}), got range [{s.min()}, {s.max()}]")
    return y, s.astype(np.int64, copy=False), dt, (H, W)


def spatial_size(shape, NC, name):
    """(N, C, H, W) or (H, W) -> (H, W), both > 0; N, C must equal ``NC`` when given."""
    shape = tuple(shape) if isinstance(shape, (tuple, list, np.ndarray)) else (shape,)
    if not all(is_int(v) for v in shape):
        raise ArgumentError(f"{name} must be (N, C, H, W) or (H, W) of integers, got {shape!r}")
    shape = tuple(int(v) for v in shape)
    if len(shape) == 4:
        if shape[:2] != tuple(NC):
            raise ArgumentError(f"{name} {shape} does not match y's (N, C) = {tuple(NC)}")
        shape = shape[2:]
    if len(shape) != 2 or min(shape) <= 0:
        raise ArgumentError(f"{name} must be (N, C, H, W) or (H, W) with H, W > 0, got {shape!r}")
    return shape


def check_cols(cols, x_shape, kernel, stride, padding):
    """col2im's arguments -> cols, dtype, (KH, KW), (sy, sx), (ph, pw), (Ho, Wo)."""
    (cols,), dt = floats(cols, names=("cols",))
    ndim(cols, 2, "cols", "(C*KH*KW, N*Ho*Wo)")
    if len(tuple(x_shape)) != 4:
        raise ArgumentError(f"x_shape must be (N, C, H, W), got {tuple(x_shape)!r}")
    N, C, H, W = (int(v) for v in x_shape)
    (KH, KW), st, pd, (Ho, Wo) = check_window((N, C, H, W), kernel, stride, padding)
    if cols.shape != (C * KH * KW, N * Ho * Wo):
        raise ArgumentError(f"cols must have shape (C*KH*KW, N*Ho*Wo) = {(C * KH * KW, N * Ho * Wo)}, "
                            f"got {cols.shape}")
    return cols, dt, (KH, KW), st, pd, (Ho, Wo)


def adaptive_pool_size(in_hw, output_size):
    """Input (H, W) and an adaptive pool's output size (int or pair; None keeps the axis) ->
    ((h, w), (H // h, W // w)); only sizes that divide the input are supported."""
    o = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(o) != 2 or not all(v is None or is_int(v) for v in o):
        raise ArgumentError(f"output_size must be an integer or an (H, W) pair of integers (None keeps "
                            f"an axis), got {output_size!r}")
    H, W = int(in_hw[0]), int(in_hw[1])
    oh, ow = (H if o[0] is None else int(o[0])), (W if o[1] is None else int(o[1]))
    if oh <= 0 or ow <= 0 or H % oh or W % ow:
        raise ArgumentError(f"adaptive average pooling of a {H}x{W} map to {oh}x{ow} is supported only "
                            "when the output size divides the input size")
    return (oh, ow), (H // oh, W // ow)
