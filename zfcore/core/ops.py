"""The operations of the Zeiler & Fergus deconvnet, in numpy alone: the teaching text of the package.

Every array is NCHW. Axis letters: N batch, C channels, H W height and width of a layer's input,
Ho Wo of its output, F filters, KH KW kernel height and width.

Forward ops, their deconvnet inverses (Zeiler & Fergus, ECCV 2014, section 2.1) and naive loop twins,
in this order below:

==========================  =============================================  ==========================
forward                     deconvnet inverse                              naive twins
==========================  =============================================  ==========================
``conv2d(x, w, b)``         ``conv_transpose2d(y, w)``: same filters,      ``conv2d_naive``,
                            transposed, no bias                            ``conv_transpose2d_naive``
``relu(x)``                 ``unrelu(r)``: ReLU of the reconstruction      (one line each)
``max_pool2d(x, k)``        ``max_unpool2d(y, switches, x.shape)``         ``max_pool2d_naive``,
                                                                           ``max_unpool2d_naive``
``local_response_norm(x)``  identity (the deconvnet passes it through)
``adaptive_avg_pool2d``     ``adaptive_avg_pool2d_transpose`` (adjoint)
``linear(x, w, b)``         ``linear_transpose(y, w)``: ``y @ w``, no bias
==========================  =============================================  ==========================

Output size of a convolution or pooling window, per spatial axis (:func:`conv_output_size`)::

    H_out = 1 + (H + 2*padding - KH) // stride

The method is written out in the functions below: a convolution is one :func:`im2col` and one matrix
product, its transpose one product and one :func:`col2im`, unpooling one scatter-add. Behind one switch,
``zfcore.core._tuning.TUNING.fast`` (on by default), the same computations run as fast kernels
(``zfcore.core._kernels``: bands of output rows that stay in cache, Winograd's F(2x2, 3x3) for large
3x3 stride-1 layers, unpooling by classes of disjoint windows); the tests hold both paths, the loop
twins and PyTorch to each other. For inference, where nothing is projected, :func:`max_pool2d_values`
pools without switches, and :func:`conv2d_nhwc` / :func:`max_pool2d_values_nhwc` take (N, H, W, C)
arrays. Argument checks live in ``zfcore.core._checks``.

Dtypes: float32 and float64 are preserved. When inputs mix dtypes the result is float64 if any input
is float64, else float32; any other real dtype (bool, integers, float16) is computed in float32.
Complex and non-numeric inputs, bad shapes and bad parameters raise ``zfcore.errors.ArgumentError`` (a
``ZfcoreError``, hence a ValueError) naming the argument; nothing is broadcast silently.
"""
import numpy as np

from zfcore.core import _checks as chk
from zfcore.core import _kernels as kern
from zfcore.core import _winograd as wino
from zfcore.core._tuning import TUNING
from zfcore.core._checks import adaptive_pool_size, conv_output_size, pair
from zfcore.errors import ArgumentError, check_count

__all__ = [
    "pair", "conv_output_size", "im2col", "col2im",
    "conv2d", "conv2d_nhwc", "conv2d_naive", "conv_transpose2d", "conv_transpose2d_naive",
    "conv2d_winograd", "winograd_filters",
    "relu", "unrelu",
    "max_pool2d", "max_pool2d_values", "max_pool2d_values_nhwc", "max_pool2d_naive",
    "max_unpool2d", "max_unpool2d_naive",
    "local_response_norm", "adaptive_pool_size", "adaptive_avg_pool2d", "adaptive_avg_pool2d_transpose",
    "linear", "linear_transpose", "flatten", "softmax", "dropout",
]


# ----------------------------------------------------------------------------------------------
# im2col and col2im: a convolution as one matrix product
# ----------------------------------------------------------------------------------------------
def im2col(x, kernel, stride=1, padding=0):
    """The windows of x as columns: x (N, C, H, W) -> cols (C*KH*KW, N*Ho*Wo).

    ``cols[(c, u, v), (n, i, j)] = xpad[n, c, i*stride_h + u, j*stride_w + v]`` (rows in C order
    (c, u, v), columns in (n, i, j) order, ``xpad`` x with zero padding), so that
    ``conv2d(x, w) == (w.reshape(F, -1) @ cols).reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)``.
    KH*KW copies of strided slices, one per kernel offset (u, v).
    """
    (x,), dt = chk.floats(x, names=("x",))
    chk.ndim(x, 4, "x", "(N, C, H, W)")
    N, C = x.shape[:2]
    (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = chk.check_window(x.shape, kernel, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((C, KH, KW, N, Ho, Wo), dt)
    for u in range(KH):
        for v in range(KW):            # offset (u, v) of every window: one strided slice of xp
            cols[:, u, v] = xp[:, :, u:u + sy * (Ho - 1) + 1:sy, v:v + sx * (Wo - 1) + 1:sx].transpose(1, 0, 2, 3)
    return cols.reshape(C * KH * KW, N * Ho * Wo)


def col2im(cols, x_shape, kernel, stride=1, padding=0):
    """The adjoint of :func:`im2col`: cols (C*KH*KW, N*Ho*Wo) -> x (N, C, H, W) = ``x_shape``.

    Each column is added back onto the window it was cut from (overlapping windows add up); the
    padding is cut off. KH*KW strided slice-adds, one per kernel offset (u, v).
    """
    cols, dt, (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = chk.check_cols(cols, x_shape, kernel, stride, padding)
    N, C, H, W = (int(v) for v in x_shape)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dt)
    c = cols.reshape(C, KH, KW, N, Ho, Wo)
    for u in range(KH):
        for v in range(KW):
            xp[:, :, u:u + sy * (Ho - 1) + 1:sy, v:v + sx * (Wo - 1) + 1:sx] += c[:, u, v].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W])


# ----------------------------------------------------------------------------------------------
# convolution and its inverse, the transposed convolution ("deconv")
# ----------------------------------------------------------------------------------------------
def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation (as ``torch.nn.functional.conv2d``) with zero padding.

    x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> y (N, F, Ho, Wo), with
    ``Ho = 1 + (H + 2*padding_h - KH) // stride_h`` (likewise Wo) and
    ``y[n, f, i, j] = b[f] + sum_{c,u,v} w[f, c, u, v] * xpad[n, c, i*stride_h + u, j*stride_w + v]``.

    The method is the four lines at the end: every window of x becomes a column (:func:`im2col`) and
    one matrix product applies every filter to every window. The fast path (``TUNING.fast``, the
    default; ``zfcore.core._kernels``) computes the same product in bands of output rows that stay in
    cache, with the bias as one more GEMM column, and 3x3 stride-1 convs on 256+ channels by Winograd
    (:func:`conv2d_winograd`); the tests hold both paths, the loop twin and PyTorch to each other.
    """
    x, w, b, _, stride, padding, (Ho, Wo) = chk.check_conv(x, w, b, stride, padding)
    if TUNING.fast:
        return kern.conv2d(x, w, b, stride, padding, (Ho, Wo))
    N, F = x.shape[0], w.shape[0]
    cols = im2col(x, w.shape[2:], stride, padding)              # (C*KH*KW, N*Ho*Wo)
    y = (w.reshape(F, -1) @ cols).reshape(F, N, Ho, Wo)         # every filter on every window
    y = np.ascontiguousarray(y.transpose(1, 0, 2, 3))           # (N, F, Ho, Wo)
    return y if b is None else y + b[:, None, None]


def conv2d_nhwc(x, w, b=None, stride=1, padding=0):
    """:func:`conv2d` with the channels last, for inference: x (N, H, W, C) -> y (N, Ho, Wo, F), the
    same values as ``conv2d(x.transpose(0, 3, 1, 2), w, b).transpose(0, 2, 3, 1)``; w (F, C, KH, KW)
    and b as in :func:`conv2d`. im2col copies one run of KW*C values per kernel row and output
    position, and one GEMM per chunk writes y; see ``_kernels.conv2d_nhwc``."""
    xv = np.asarray(x)
    if xv.ndim == 4:
        xv = xv.transpose(0, 3, 1, 2)
    xv, w, b, _, stride, padding, out_hw = chk.check_conv(xv, w, b, stride, padding)
    xin = np.ascontiguousarray(xv.transpose(0, 2, 3, 1))
    return kern.conv2d_nhwc(xin, kern.nhwc_filters(w), b, w.shape[2:], stride, padding, out_hw)


def conv2d_naive(x, w, b=None, stride=1, padding=0):
    """Loop twin of :func:`conv2d` (same signature, shapes and output size)."""
    x, w, b, dt, (sy, sx), (ph, pw), (Ho, Wo) = chk.check_conv(x, w, b, stride, padding)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dt)
    xpad[:, :, ph:ph + H, pw:pw + W] = x
    y = np.zeros((N, F, Ho, Wo), dt)
    for i in range(Ho):
        for j in range(Wo):
            patch = xpad[:, :, i * sy:i * sy + KH, j * sx:j * sx + KW]      # (N, C, KH, KW)
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))  # (N, F)
    if b is not None:
        y += b[:, None, None]
    return y


def conv_transpose2d(y, w, stride=1, padding=0, output_size=None):
    """The deconv of Zeiler & Fergus: the adjoint of :func:`conv2d` with respect to its input.

    y (N, F, Ho, Wo), w (F, C, KH, KW) -- the forward conv's weight, as is (not flipped) ->
    x (N, C, H, W). No bias. Each y[n, f, i, j] adds ``y[n, f, i, j] * w[f]`` into the window of
    the padded input it was computed from; the padding is then cut off. Same result as
    ``torch.nn.functional.conv_transpose2d`` with ``output_padding = (H, W) - (Hmin, Wmin)``.

    The smallest consistent input size is ``Hmin = (Ho - 1)*stride_h - 2*padding_h + KH`` (likewise
    Wmin); with stride > 1 every H in [Hmin, Hmin + stride_h - 1] gives the same Ho, so
    ``output_size=(H, W)`` (or (N, C, H, W)) selects it; default (Hmin, Wmin) (or 1 where Hmin < 1).

    The method is the three lines at the end, :func:`conv2d` read backwards: one matrix product gives
    every window's contribution as a column, and :func:`col2im` adds the columns back onto their
    windows. The fast path (``TUNING.fast``, the default) runs the same in bands of output rows, or at
    stride 1 on large images as :func:`conv2d` of y with the flipped, transposed filters (padding
    K - 1 - p).
    """
    y, w, _, stride, padding, in_hw = chk.check_conv_transpose(y, w, stride, padding, output_size)
    if TUNING.fast:
        return kern.conv_transpose2d(y, w, stride, padding, in_hw)
    N, F = y.shape[:2]
    cols = w.reshape(F, -1).T @ y.transpose(1, 0, 2, 3).reshape(F, -1)   # (C*KH*KW, N*Ho*Wo)
    return col2im(cols, (N, w.shape[1]) + tuple(in_hw), w.shape[2:], stride, padding)


def conv_transpose2d_naive(y, w, stride=1, padding=0, output_size=None):
    """Loop twin of :func:`conv_transpose2d` (same signature, shapes and output size)."""
    y, w, dt, (sy, sx), (ph, pw), (H, W) = chk.check_conv_transpose(y, w, stride, padding,
                                                                      output_size)
    N, F, Ho, Wo = y.shape
    _, C, KH, KW = w.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dt)
    for i in range(Ho):
        for j in range(Wo):
            # each output value sends its filter, scaled, back onto the window it came from
            back = np.tensordot(y[:, :, i, j], w, axes=(1, 0))             # (N, C, KH, KW)
            xpad[:, :, i * sy:i * sy + KH, j * sx:j * sx + KW] += back
    return xpad[:, :, ph:ph + H, pw:pw + W].copy()


def conv2d_winograd(x, w, b=None, padding=1):
    """:func:`conv2d` of 3x3 filters at stride 1 by Winograd's F(2x2, 3x3) (Lavin & Gray, CVPR 2016):
    16 multiplications per 2x2 output tile instead of 36. Same arguments, shapes and result (to
    rounding) as ``conv2d(x, w, b, 1, padding)``."""
    x, w, b, _, _, (ph, pw), (Ho, Wo) = chk.check_conv(x, w, b, 1, padding)
    if w.shape[2:] != (3, 3):
        raise ArgumentError(f"conv2d_winograd needs 3x3 filters, got {w.shape[2]}x{w.shape[3]}")
    return wino.conv3x3_winograd(x, w, b, ph, pw, Ho, Wo)


def winograd_filters(w):
    """3x3 filters w (F, C, 3, 3) -> U (16, F, C), ``U[4*a + b] = (G w G^T)[a, b]`` with Lavin & Gray's
    G (4, 3): one GEMM with the 16x9 Kronecker product G (x) G."""
    if np.shape(w)[2:] != (3, 3):
        raise ArgumentError(f"winograd_filters needs 3x3 filters, got {'x'.join(map(str, np.shape(w)[2:]))}")
    return wino.winograd_filters(np.asarray(w))


# ----------------------------------------------------------------------------------------------
# rectification and its inverse
# ----------------------------------------------------------------------------------------------
def relu(x):
    """max(x, 0), elementwise; any shape. NaN propagates."""
    (x,), _ = chk.floats(x, names=("x",))
    return np.maximum(x, 0)


def unrelu(r):
    """The deconvnet's rectification: ReLU of the reconstruction signal ``r`` itself.

    Zeiler & Fergus pass the reconstruction through a ReLU so that it stays positive; it does not
    depend on the sign of the forward input (that would be the gradient, or guided backprop).
    """
    (r,), _ = chk.floats(r, names=("r",))
    return np.maximum(r, 0)


# ----------------------------------------------------------------------------------------------
# max-pooling with switches, and unpooling
# ----------------------------------------------------------------------------------------------
def max_pool2d(x, kernel, stride=None, padding=0):
    """Max-pooling with switches, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    x (N, C, H, W) -> (y, switches), both (N, C, Ho, Wo), ``Ho = 1 + (H + 2*padding_h - KH) //
    stride_h`` (floor mode). ``stride`` defaults to ``kernel``; the padding is implicit -inf and at
    most half the kernel. ``switches`` (int64) holds, for each output, the flat index ``h*W + w`` of
    the chosen input in its own (unpadded) H x W plane. Ties go to the first maximum in the window's
    row-major scan order; a NaN wins over numbers (the last NaN of a window, as torch). Overlapping
    windows (stride < kernel) are allowed. Fast path: KH*KW comparisons of contiguous window copies.
    """
    x, _, kernel, stride, padding, out_hw = chk.check_pool(x, kernel, stride, padding)
    return kern.max_pool2d(x, kernel, stride, padding, out_hw)


def max_pool2d_values(x, kernel, stride=None, padding=0):
    """The values of :func:`max_pool2d` without the switches, as ``torch.nn.functional.max_pool2d``:
    for inference, where nothing will be projected. Separable (rows, then columns), no padded copy."""
    x, _, kernel, stride, padding, out_hw = chk.check_pool(x, kernel, stride, padding)
    return kern.max_pool_values(x, kernel, stride, padding, out_hw)


def max_pool2d_values_nhwc(x, kernel, stride=None, padding=0):
    """:func:`max_pool2d_values` with the channels last: x (N, H, W, C) -> (N, Ho, Wo, C)."""
    xv = np.asarray(x)
    xv, _, kernel, stride, padding, out_hw = chk.check_pool(
        xv.transpose(0, 3, 1, 2) if xv.ndim == 4 else xv, kernel, stride, padding)
    return kern.max_pool_values_nhwc(xv.transpose(0, 2, 3, 1), kernel, stride, padding, out_hw)


def max_pool2d_naive(x, kernel, stride=None, padding=0):
    """Loop twin of :func:`max_pool2d` (same signature and output; for NaN it keeps the first)."""
    x, dt, (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = chk.check_pool(x, kernel, stride, padding)
    N, C, H, W = x.shape
    y = np.empty((N, C, Ho, Wo), dt)
    switches = np.empty((N, C, Ho, Wo), np.int64)
    for i in range(Ho):
        for j in range(Wo):
            # the window, clipped to the real input (the padding is -inf, never the maximum)
            h0, h1 = max(i * sy - ph, 0), min(i * sy - ph + KH, H)
            w0, w1 = max(j * sx - pw, 0), min(j * sx - pw + KW, W)
            window = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            k = np.argmax(window, axis=2)                     # first maximum in scan order
            y[:, :, i, j] = np.take_along_axis(window, k[:, :, None], axis=2)[:, :, 0]
            dh, dw = np.divmod(k, w1 - w0)
            switches[:, :, i, j] = (h0 + dh) * W + (w0 + dw)
    return y, switches


def max_unpool2d(y, switches, input_shape, *, window=None):
    """The deconvnet's unpooling: each y value goes back to the input position its switch records.

    y (N, C, Ho, Wo), switches (N, C, Ho, Wo) flat indices ``h*W + w`` into each H x W plane
    (from :func:`max_pool2d`), input_shape (N, C, H, W) or (H, W) -> x (N, C, H, W), zero
    elsewhere. Where overlapping windows chose the same position their values ADD UP: this is
    the adjoint of max-pooling with fixed switches (its gradient). ``torch.nn.functional
    .max_unpool2d`` assigns instead (last write wins), which agrees only for non-overlapping pools.

    Any switches: one ``np.bincount`` over the global flat indices (a scatter-add; it sums in float64, then rounds once to the input's dtype, so a value that lands
    alone comes back exactly).

    ``window=(kernel, stride)`` of the pooling that recorded the switches (ints or pairs): a faster
    scatter for switches that lie inside their own pooling windows, as :func:`max_pool2d`'s always do.
    Outputs ``ceil(kernel / stride)`` apart along both axes then have disjoint windows, so each of the
    ``ceil(KH / sy) * ceil(KW / sx)`` classes of outputs (one class, a plain assignment, for
    non-overlapping pools) is written by one fancy-indexed assignment without collisions. That switches
    lie in their windows is assumed, not checked (as numpy's ``assume_unique``); where shared positions
    receive several values they are summed in the output's dtype, class by class, so they may differ from
    the default path in the last bit.
    """
    y, s, dt, (H, W) = chk.check_unpool(y, switches, input_shape)
    N, C, Ho, Wo = y.shape
    if window is not None:
        try:
            kernel, stride = window
        except (TypeError, ValueError):
            raise ArgumentError(f"window must be the pooling's (kernel, stride), got {window!r}") from None
        (KH, KW), (sy, sx) = pair(kernel, "window kernel", 1), pair(stride, "window stride", 1)
        if TUNING.fast:
            return kern.unpool_classes(y, s, (H, W), (-(-KH // sy), -(-KW // sx)))
    # the plain scatter-add: every value to its switch's position in the flat output, summed
    flat = s.reshape(N * C, Ho * Wo) + (np.arange(N * C, dtype=np.int64) * (H * W))[:, None]
    x = np.bincount(flat.ravel(), weights=y.ravel(), minlength=N * C * H * W).astype(dt, copy=False)
    return x.reshape(N, C, H, W)


def max_unpool2d_naive(y, switches, input_shape):
    """Loop twin of :func:`max_unpool2d` (same signature and output)."""
    y, s, dt, (H, W) = chk.check_unpool(y, switches, input_shape)
    N, C, Ho, Wo = y.shape
    x = np.zeros((N, C, H * W), dt)
    n, c = np.ogrid[:N, :C]
    for i in range(Ho):
        for j in range(Wo):
            x[n, c, s[:, :, i, j]] += y[:, :, i, j]     # one position per (n, c): no collisions
    return x.reshape(N, C, H, W)


# ----------------------------------------------------------------------------------------------
# normalisation and adaptive pooling (AlexNet, VGG16)
# ----------------------------------------------------------------------------------------------
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels, as ``torch.nn.functional.local_response_norm``.

    x (N, C, ...) -> ``x / (k + alpha / size * sum_{c' in window(c)} x[c']**2) ** beta``, the window
    being channels ``[c - size//2, c + (size-1)//2]`` clipped to [0, C) (zeros beyond, still divided
    by ``size``). The deconvnet passes it through unchanged (its inverse is the identity).
    """
    (x,), _ = chk.floats(x, names=("x",))
    if x.ndim < 2:
        raise ArgumentError(f"x must be (N, C, ...), got shape {x.shape}")
    size = check_count(size, "size", 1)
    C = x.shape[1]
    sq = x * x
    s = np.zeros_like(sq)
    lo, hi = size // 2, (size - 1) // 2
    for d in range(-lo, hi + 1):              # s[:, c] += sq[:, c + d] where 0 <= c + d < C
        if d < 0:
            s[:, -d:] += sq[:, :C + d]
        elif d > 0:
            s[:, :C - d] += sq[:, d:]
        else:
            s += sq
    div = (s * (alpha / size) + k) ** beta
    return x / div


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling, torch's semantics, where the windows tile the input: x (N, C, H, W)
    -> (N, C, h, w), each output the mean of its (H // h, W // w) block. ``output_size``: int or
    (h, w), None keeps that axis; h must divide H (and w W). Equal sizes return x itself."""
    x = np.asarray(x)
    chk.ndim(x, 4, "x", "(N, C, H, W)")
    N, C, H, W = x.shape
    (oh, ow), (bh, bw) = chk.adaptive_pool_size((H, W), output_size)
    if bh == 1 and bw == 1:
        return x
    return x.reshape(N, C, oh, bh, ow, bw).mean(axis=(3, 5), dtype=x.dtype)


def adaptive_avg_pool2d_transpose(r, input_size):
    """The adjoint of :func:`adaptive_avg_pool2d`: r (N, C, h, w) -> (N, C, H, W), ``input_size``
    = (H, W); each value divided by its block's area and copied over the block."""
    r = np.asarray(r)
    chk.ndim(r, 4, "r", "(N, C, h, w)")
    N, C, oh, ow = r.shape
    (_, _), (bh, bw) = chk.adaptive_pool_size(input_size, (oh, ow))
    if bh == 1 and bw == 1:
        return r
    r = r / (bh * bw)
    return np.broadcast_to(r[:, :, :, None, :, None], (N, C, oh, bh, ow, bw)).reshape(N, C, oh * bh, ow * bw)


# ----------------------------------------------------------------------------------------------
# classifier pieces
# ----------------------------------------------------------------------------------------------
def linear(x, w, b=None):
    """Fully connected layer: x (N, in), w (out, in) (torch layout), b (out,) or None -> (N, out)."""
    arrays, _ = chk.floats(*((x, w) if b is None else (x, w, b)),
                           names=("x", "w") if b is None else ("x", "w", "b"))
    x, w = arrays[0], arrays[1]
    chk.ndim(x, 2, "x", "(N, in)")
    chk.ndim(w, 2, "w", "(out, in)")
    if x.shape[1] != w.shape[1]:
        raise ArgumentError(f"feature mismatch: x has {x.shape[1]} features, w expects {w.shape[1]}")
    out = x @ w.T
    if b is not None:
        b = arrays[2]
        if b.shape != (w.shape[0],):
            raise ArgumentError(f"b must have shape (out,) = ({w.shape[0]},), got {b.shape}")
        out += b
    return out


def linear_transpose(y, w):
    """Deconv of a linear layer (its adjoint, no bias): y (N, out), w (out, in) -> ``y @ w`` (N, in)."""
    (y, w), _ = chk.floats(y, w, names=("y", "w"))
    chk.ndim(y, 2, "y", "(N, out)")
    chk.ndim(w, 2, "w", "(out, in)")
    if y.shape[1] != w.shape[0]:
        raise ArgumentError(f"feature mismatch: y has {y.shape[1]} features, w has {w.shape[0]} outputs")
    return y @ w


def flatten(x):
    """(N, ...) -> (N, prod(...)), C-order (as ``torch.flatten(x, 1)``)."""
    (x,), _ = chk.floats(x, names=("x",))
    if x.ndim < 2:
        raise ArgumentError(f"flatten needs at least 2 dimensions (N, ...), got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def softmax(z, axis=-1):
    """Numerically stable softmax along ``axis`` (the maximum is subtracted first); any shape."""
    (z,), _ = chk.floats(z, names=("z",))
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def dropout(x, p=0.5, training=False, rng=None):
    """Inverted dropout. At inference (``training=False``) the identity: returns x unchanged.

    When training, each element is zeroed with probability p and the survivors are scaled by
    1 / (1 - p), so the expectation is unchanged. ``rng``: a ``numpy.random.Generator``, an int
    seed or None (fresh entropy).
    """
    if not (isinstance(p, (int, float, np.integer, np.floating)) and 0.0 <= p <= 1.0):
        raise ArgumentError(f"dropout probability p must lie in [0, 1], got {p!r}")
    (x,), _ = chk.floats(x, names=("x",))
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return np.zeros_like(x)
    rng = np.random.default_rng(rng)
    keep = rng.random(x.shape) >= p
    return np.where(keep, x / (1.0 - p), 0).astype(x.dtype, copy=False)
