"""The fast paths behind ``zfcore.core.ops`` (private): banded im2col + GEMM, col2im, Winograd F(2x2, 3x3),
max-pooling by window offsets. ops.py checks the arguments and calls these; the tests hold every
path to the naive loop twins and to PyTorch. The measurements behind the thresholds, and which
thresholds were not measured: docs/design.md ("Measurements behind the thresholds").

Axis letters: N, C, H, W input; F filters; KH, KW kernel; Ho, Wo output; (sy, sx) stride, (ph, pw)
padding along rows and columns.
"""
import numpy as np

from zfcore.core._tuning import TUNING
from zfcore.core._winograd import conv3x3_winograd, winograd_pays


def bands(N, Ho, nb, rb):
    """The chunks of a conv's output: (n0, m, r0, r) = images n0 .. n0 + m, output rows r0 .. r0 + r."""
    for n0 in range(0, N, nb):
        for r0 in range(0, Ho, rb):
            yield n0, min(nb, N - n0), r0, min(rb, Ho - r0)


def gemm_chunks(N, Ho, row_cols, K, F, itemsize):
    """Split a conv's GEMM into chunks: (images per chunk, output rows per chunk).

    One output row of one image is ``row_cols`` GEMM columns of K im2col values and F outputs. A chunk
    takes as many rows as keep (K + F) * columns * itemsize under ``chunk_bytes``, but at least
    ``min_cols`` columns; whole images are grouped when one image is smaller.
    """
    bytes_per_row = max((K + F) * row_cols * itemsize, 1)
    rows = max(TUNING.chunk_bytes // bytes_per_row, -(-TUNING.min_cols // max(row_cols, 1)), 1)
    if rows >= Ho:
        return max(1, min(N, rows // Ho)), Ho
    bands = -(-Ho // rows)
    return 1, -(-Ho // bands)          # equal bands: no small GEMM left over at the bottom


def pad(x, ph, pw, value=0):
    """(N, C, H, W) -> (N, C, H + 2*ph, W + 2*pw) with ``value`` around x (x itself if no padding)."""
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xp = np.full((N, C, H + 2 * ph, W + 2 * pw), value, x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def pad_flat(x, ph, pw, extra):
    """(N, C, H, W) -> zero-padded planes stored flat, (N, C, Hp*Wp + extra), zeros at the end too.
    Only the border is zeroed; the interior is written once."""
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xp = np.empty((N, C, Hp * Wp + extra), x.dtype)
    xp[:, :, Hp * Wp:] = 0
    planes = xp[:, :, :Hp * Wp].reshape(N, C, Hp, Wp)
    planes[:, :, :ph] = 0
    planes[:, :, ph + H:] = 0
    planes[:, :, ph:ph + H, :pw] = 0
    planes[:, :, ph:ph + H, pw + W:] = 0
    planes[:, :, ph:ph + H, pw:pw + W] = x
    return xp


# ----------------------------------------------------------------------------------------------
# im2col / col2im of one band: output rows r0 .. r0 + r of images n0 .. n0 + m
# ----------------------------------------------------------------------------------------------
# Two layouts of the padded input xp. Strided: xp (N, C, Hp, Wp), Wc = Wo columns per output row.
# Flat (stride 1 only): xp (N, C, Hp*Wp + KW - 1), planes stored flat, Wc = Wp columns per row: a
# window offset (u, v) is then one contiguous slice starting at u*Wp + v, and each row carries
# KW - 1 throw-away columns (dropped by the caller).
def window_slices(n0, m, r0, r, kernel, stride, Wp, Wo, flat):
    """For each kernel offset k = u*KW + v: k and the index of xp holding that offset's input for
    output rows r0 .. r0 + r of images n0 .. n0 + m (basic slices: a view)."""
    (KH, KW), (sy, sx) = kernel, stride
    for k in range(KH * KW):
        u, v = divmod(k, KW)
        if flat:
            off = (r0 + u) * Wp + v
            yield k, (slice(n0, n0 + m), slice(None), slice(off, off + r * Wp))
        else:
            h0 = r0 * sy + u
            yield k, (slice(n0, n0 + m), slice(None), slice(h0, h0 + sy * (r - 1) + 1, sy),
                      slice(v, v + sx * (Wo - 1) + 1, sx))


def im2col_band(cols_k, xp, n0, r0, kernel, stride, Wp, Wo, flat):
    """Fill cols_k (C, KH*KW, m, r, Wc) with the windows: cols_k[c, u*KW + v, n, i, j] =
    xp[n0 + n, c, (r0 + i)*sy + u, j*sx + v] (one copy of a shifted slice per offset (u, v))."""
    C, _, m, r, _ = cols_k.shape
    for k, idx in window_slices(n0, m, r0, r, kernel, stride, Wp, Wo, flat):
        src = xp[idx].reshape(m, C, r, Wp) if flat else xp[idx]
        cols_k[:, k] = src.transpose(1, 0, 2, 3)


def col2im_band(xp, cols_k, n0, r0, kernel, stride, Wp, Wo, flat):
    """The adjoint of :func:`im2col_band`: add each column back onto the window it came from."""
    C, _, m, r, _ = cols_k.shape
    for k, idx in window_slices(n0, m, r0, r, kernel, stride, Wp, Wo, flat):
        if flat:
            xp[idx] += cols_k[:, k].reshape(C, m, r * Wp).transpose(1, 0, 2)
        else:
            xp[idx] += cols_k[:, k].transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------------------------
# convolution: im2col + one GEMM per band
# ----------------------------------------------------------------------------------------------
# The flat layout computes KW - 1 throw-away columns per output row, (KW - 1) / (Wo + KW - 1) of the
# GEMM's columns, a share that grows as maps narrow; the strided layout copies runs of Wo values
# instead. The width of 32 is not measured (no A/B of the two layouts on narrow maps is recorded): it
# puts VGG16's 224- to 56-column maps on the flat layout and the embedded model's 28, 14 and 7 columns
# on the strided one, as would any value from 29 to 56.
FLAT_MIN_WIDTH = 32


def conv2d(x, w, b, stride, padding, out_hw):
    """y (N, F, Ho, Wo) = conv of checked float arrays; Winograd for large 3x3 stride-1 convs."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (sy, sx), (ph, pw), (Ho, Wo) = stride, padding, out_hw
    dt = x.dtype
    if KH == KW == 3 and sy == sx == 1 and winograd_pays(C, F, N * Ho * Wo):
        return conv3x3_winograd(x, w, b, ph, pw, Ho, Wo)
    K = C * KH * KW
    Kb = K + (b is not None)             # the bias joins the GEMM: one more column of w, a row of ones
    wb = np.empty((F, Kb), dt)
    wb[:, :K] = w.reshape(F, K)
    if b is not None:
        wb[:, K] = b
    Wp = W + 2 * pw
    flat = sy == 1 and sx == 1 and (TUNING.flat if TUNING.flat is not None else Wo >= FLAT_MIN_WIDTH)
    xp = pad_flat(x, ph, pw, KW - 1) if flat else pad(x, ph, pw)
    Wc = Wp if flat else Wo              # GEMM columns per output row
    y = np.empty((N, F, Ho, Wo), dt)
    nb, rb = gemm_chunks(N, Ho, Wc, Kb, F, dt.itemsize)
    cols_buf = np.empty(Kb * nb * rb * Wc, dt)
    out_buf = np.empty(F * nb * rb * Wc, dt)
    for n0, m, r0, r in bands(N, Ho, nb, rb):
        L = m * r * Wc
        cols = cols_buf[:Kb * L].reshape(Kb, L)
        if b is not None:
            cols[K] = 1
        im2col_band(cols[:K].reshape(C, KH * KW, m, r, Wc), xp, n0, r0, (KH, KW), (sy, sx), Wp, Wo, flat)
        out = out_buf[:F * L].reshape(F, L)
        np.matmul(wb, cols, out=out)
        y[n0:n0 + m, :, r0:r0 + r] = out.reshape(F, m, r, Wc)[..., :Wo].transpose(1, 0, 2, 3)
    return y


# ----------------------------------------------------------------------------------------------
# channels-last convolution and pooling (inference: Network.infer)
# ----------------------------------------------------------------------------------------------
# With the channels last, x (N, H, W, C), the KW*C values under one row of a window are contiguous,
# so im2col copies KH runs of KW*C values per output position (one strided view per kernel row)
# instead of KH*KW runs of Wo values; the GEMM cols (L, K) @ w (K, F) writes y (N, Ho, Wo, F)
# directly. On the embedded model's 14- and 7-column maps, at batch 500 (an ad-hoc measurement), conv4
# took 49 ms against 102 with the NCHW strided im2col, conv2 134 against 172.
def nhwc_pays(C, F, kernel, stride, N, Ho, Wo):
    """Network.infer's rule for a conv: channels last when the NCHW path would take the strided im2col
    (maps narrower than ``FLAT_MIN_WIDTH``, or any stride) and not Winograd, and the input has at least
    ``nhwc_min_channels`` channels (runs of KW*C values long enough). On VGG16 the 224..56-column
    maps take the flat NCHW layout and, at batches of 1 or 2, the 28- and 14-column ones Winograd:
    channels last on every VGG16 conv was slower (docs/design.md, "Measurements behind the
    thresholds"). Larger batches exceed Winograd's position limit (28 columns from 3 images, 14 from 9),
    and those convs run channels last here, a case not measured on its own."""
    if TUNING.nhwc is not None:
        return TUNING.nhwc
    if C < TUNING.nhwc_min_channels:
        return False
    flat = stride == (1, 1) and (TUNING.flat if TUNING.flat is not None else Wo >= FLAT_MIN_WIDTH)
    wino = tuple(kernel) == (3, 3) and stride == (1, 1) and winograd_pays(C, F, N * Ho * Wo)
    return not flat and not wino


def nhwc_filters(w):
    """w (F, C, KH, KW) -> (KH*KW*C, F), rows in (u, v, c) order: the im2col rows of channels-last x."""
    F, C, KH, KW = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(KH * KW * C, F))


def conv2d_nhwc(x, wk, b, kernel, stride, padding, out_hw):
    """y (N, Ho, Wo, F) = conv of the C-contiguous x (N, H, W, C); wk from :func:`nhwc_filters`."""
    (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    N, H, W, C = x.shape
    K, F = wk.shape
    dt = x.dtype
    xp = x
    if ph or pw:
        xp = np.zeros((N, H + 2 * ph, W + 2 * pw, C), dt)
        xp[:, ph:ph + H, pw:pw + W] = x
    y = np.empty((N, Ho, Wo, F), dt)
    row = Wo * K * dt.itemsize                          # the columns of one output row
    rows = max(TUNING.nhwc_chunk_bytes // max(row, 1), -(-TUNING.min_cols // max(Wo, 1)), 1)
    if rows >= Ho:
        nb, rb = max(1, min(N, rows // Ho)), Ho
    else:
        nb, rb = 1, -(-Ho // -(-Ho // rows))
    cols_buf = np.empty(nb * rb * Wo * K, dt)
    it = dt.itemsize                                     # xp is C-contiguous: its strides from its shape
    s3, s2, s1, s0 = it, xp.shape[3] * it, xp.shape[2] * xp.shape[3] * it, xp[0].size * it
    for n0, m, r0, r in bands(N, Ho, nb, rb):
        L = m * r * Wo
        cols = cols_buf[:K * L].reshape(m, r, Wo, KH, KW * C)
        for u in range(KH):
            # rows (r0 + i)*sy + u, columns j*sx .. j*sx + KW - 1, all channels: one run each
            src = np.lib.stride_tricks.as_strided(xp[n0:n0 + m, r0 * sy + u:], (m, r, Wo, KW * C),
                                                  (s0, s1 * sy, s2 * sx, s3), writeable=False)
            cols[:, :, :, u] = src
        out = y[n0:n0 + m, r0:r0 + r].reshape(L, F)     # contiguous: whole images, or rows of one
        np.matmul(cols.reshape(L, K), wk, out=out)
        if b is not None:
            out += b
    return y


def max_pool_values_nhwc(x, kernel, stride, padding, out_hw):
    """y (N, Ho, Wo, C) of x (N, H, W, C) without switches: as :func:`max_pool_values`, separable,
    the channels the contiguous inner axis; in chunks of images."""
    N, H, W, C = x.shape
    (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    y = np.empty((N, Ho, Wo, C), x.dtype)
    nb = max(1, TUNING.pool_chunk_bytes // max(1, H * Wo * C * x.dtype.itemsize))
    h = np.empty((min(nb, N), H, Wo, C), x.dtype)
    for n0 in range(0, N, nb):
        hm = h[:min(nb, N - n0)]
        _max_offsets(x[n0:n0 + nb], hm, KW, sx, pw, W, Wo, axis=2)
        _max_offsets(hm, y[n0:n0 + nb], KH, sy, ph, H, Ho, axis=1)
    return y


def conv_transpose2d(y, w, stride, padding, in_hw):
    """x (N, C, H, W) = transposed conv of checked float arrays: GEMM w.T @ y per band, then col2im;
    at stride 1 on large images a conv with the flipped filters instead (deconv_as_conv)."""
    N, F, Ho, Wo = y.shape
    _, C, KH, KW = w.shape
    (sy, sx), (ph, pw), (H, W) = stride, padding, in_hw
    dt = y.dtype
    K = C * KH * KW
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if sy == 1 and sx == 1 and ph < KH and pw < KW and deconv_as_conv(N * Ho * Wp, C, F):
        # the transposed conv is a conv of y with the flipped filters w[f, c, ::-1, ::-1] seen as
        # (C, F, KH, KW), padded by K - 1 - p
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        pt = (KH - 1 - ph, KW - 1 - pw)
        return conv2d(y, wt, None, (1, 1), pt, (H, W))
    wT = np.ascontiguousarray(w.reshape(F, K)).T        # (K, F) view; BLAS handles the transpose
    flat = sy == 1 and sx == 1        # as in conv2d: flat padded planes, Wp columns per row
    Wc = Wp if flat else Wo
    xp = np.zeros((N, C, Hp * Wp + (KW - 1 if flat else 0)), dt)
    planes = xp[:, :, :Hp * Wp].reshape(N, C, Hp, Wp)
    nb, rb = gemm_chunks(N, Ho, Wc, K, F, dt.itemsize)
    cols_buf = np.empty(K * nb * rb * Wc, dt)
    y_buf = np.empty(F * nb * rb * Wc, dt)
    for n0, m, r0, r in bands(N, Ho, nb, rb):
        L = m * r * Wc
        yb = y_buf[:F * L].reshape(F, m, r, Wc)
        yb[..., :Wo] = y[n0:n0 + m, :, r0:r0 + r].transpose(1, 0, 2, 3)
        yb[..., Wo:] = 0                  # throw-away columns (flat layout) contribute nothing
        cols = cols_buf[:K * L].reshape(K, L)
        np.matmul(wT, yb.reshape(F, L), out=cols)
        col2im_band(xp if flat else planes, cols.reshape(C, KH * KW, m, r, Wc), n0, r0, (KH, KW),
                    (sy, sx), Wp, Wo, flat)
    return np.ascontiguousarray(planes[:, :, ph:ph + H, pw:pw + W])


def deconv_as_conv(positions, C, F):
    """Stride-1 deconv as a conv with flipped filters when that moves fewer values (copy F rows of
    im2col + w once, against adding C rows in col2im)."""
    if TUNING.deconv_as_conv is not None:
        return TUNING.deconv_as_conv
    return 2 * F * positions + 2 * F * C < 3 * C * positions


# ----------------------------------------------------------------------------------------------
# max-pooling
# ----------------------------------------------------------------------------------------------
def max_pool2d(x, kernel, stride, padding, out_hw):
    """(y, switches) of checked x (N, C, H, W); see ops.max_pool2d for the rules."""
    N, C, H, W = x.shape
    (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    xp = pad(x, ph, pw, -np.inf).reshape(N * C, H + 2 * ph, W + 2 * pw)
    y, sel = pool_offsets(xp, KH, KW, sy, sx, Ho, Wo, nan=False)
    if np.isnan(y).any():          # rare: redo with NaN winning comparisons, as torch does
        y, sel = pool_offsets(xp, KH, KW, sy, sx, Ho, Wo, nan=True)
    top = np.arange(Ho)[:, None] * sy - ph        # window's first row, unpadded coordinates
    left = np.arange(Wo)[None, :] * sx - pw
    offset = np.array([u * W + v for u in range(KH) for v in range(KW)], np.int64)
    switches = np.take(offset, sel)
    switches += top * W + left
    if ph or pw:
        # a window whose real values are all -inf returns its first real position (as torch)
        lost = y == -np.inf
        if lost.any():
            switches = np.where(lost, np.maximum(top, 0) * W + np.maximum(left, 0), switches)
    return y.reshape(N, C, Ho, Wo), switches.reshape(N, C, Ho, Wo)


def max_pool_values(x, kernel, stride, padding, out_hw):
    """y (N, C, Ho, Wo) of checked x, without switches (inference): separable, rows of windows first
    (max over the KW column offsets -> (N*C, H, Wo)), then columns (max over the KH row offsets). The
    padding is never materialised: each offset updates only the outputs whose window it reaches.
    NaN propagates (np.maximum), as torch."""
    N, C, H, W = x.shape
    (KH, KW), (sy, sx), (ph, pw), (Ho, Wo) = kernel, stride, padding, out_hw
    if Wo < TUNING.pool_t_width:
        # narrow maps: numpy's inner loops would run over a handful of columns; put the planes last
        t = np.ascontiguousarray(x.reshape(N * C, H, W).transpose(1, 2, 0))        # (H, W, N*C)
        h = np.empty((H, Wo, N * C), x.dtype)
        y = np.empty((Ho, Wo, N * C), x.dtype)
        _max_offsets(t[None], h[None], KW, sx, pw, W, Wo, axis=2)
        _max_offsets(h[None], y[None], KH, sy, ph, H, Ho, axis=1)
        return np.ascontiguousarray(y.transpose(2, 0, 1)).reshape(N, C, Ho, Wo)
    planes = x.reshape(N * C, H, W)
    y = np.empty((N * C, Ho, Wo), x.dtype)
    mb = max(1, TUNING.pool_chunk_bytes // max(1, H * Wo * x.dtype.itemsize))
    h = np.empty((min(mb, N * C), H, Wo), x.dtype)
    for m0 in range(0, N * C, mb):
        src, hm, ym = planes[m0:m0 + mb], h[:min(mb, N * C - m0)], y[m0:m0 + mb]
        _max_offsets(src, hm, KW, sx, pw, W, Wo, axis=2)
        _max_offsets(hm, ym, KH, sy, ph, H, Ho, axis=1)
    return y.reshape(N, C, Ho, Wo)


def unpool_classes(y, s, hw, step):
    """x (N, C, H, W) = scatter-add of y (N, C, Ho, Wo) at the plane positions s (same shape), for
    switches inside their pooling windows: outputs (i, j) with the same (i mod py, j mod px), where
    ``step = (py, px)`` is ``ceil(kernel / stride)``, have disjoint windows, so each such class is one
    fancy-indexed assignment (the first) or addition (the others) without repeated indices."""
    N, C, Ho, Wo = y.shape
    H, W = hw
    py, px = step
    x = np.zeros(N * C * H * W, y.dtype)
    planes = (np.arange(N * C, dtype=np.int64) * (H * W)).reshape(N, C, 1, 1)
    for a in range(py):
        for b in range(px):
            idx = (s[:, :, a::py, b::px] + planes).ravel()
            if a == 0 and b == 0:
                x[idx] = y[:, :, a::py, b::px].ravel()
            else:
                x[idx] += y[:, :, a::py, b::px].ravel()
    return x.reshape(N, C, H, W)


def _max_offsets(src, dst, K, s, p, n_in, n_out, axis):
    """dst[..., j, ...] = max over k < K of src[..., j*s - p + k, ...] along ``axis`` (1 or 2), taking
    only the offsets inside 0 .. n_in - 1 (implicit -inf padding)."""
    def along(a, sl):
        return a[:, sl] if axis == 1 else a[:, :, sl]
    dst[...] = -np.inf
    for k in range(K):
        j0 = max(0, -(-(p - k) // s))                      # first output whose offset k is inside
        j1 = min(n_out, (n_in - 1 + p - k) // s + 1)       # one past the last
        if j1 > j0:
            i0 = j0 * s - p + k
            d = along(dst, slice(j0, j1))
            np.maximum(d, along(src, slice(i0, i0 + (j1 - j0 - 1) * s + 1, s)), out=d)


def pool_offsets(xp, KH, KW, sy, sx, Ho, Wo, nan):
    """xp (M, Hp, Wp) padded planes -> max (M, Ho, Wo) and winning window offset k = u*KW + v.

    In chunks of planes: the KH*KW strided views are copied to contiguous arrays, then compared with
    the running maximum; offset k wins where strictly larger (the first maximum is kept), so the
    switch offset is a running ``maximum(sel, k * larger)``: no masked writes.
    """
    M, KK = xp.shape[0], KH * KW
    y = np.empty((M, Ho, Wo), xp.dtype)
    sel = np.zeros((M, Ho, Wo), np.uint8 if KK < 256 else np.int64)
    mb = max(1, min(M, TUNING.pool_chunk_bytes // (KK * Ho * Wo * xp.dtype.itemsize)))
    win = np.empty((KK, mb, Ho, Wo), xp.dtype)
    larger = np.empty((mb, Ho, Wo), bool)
    is_nan = np.empty((mb, Ho, Wo), bool)
    k_larger = np.empty((mb, Ho, Wo), sel.dtype)
    for m0 in range(0, M, mb):
        m = min(mb, M - m0)
        for k in range(KK):
            u, v = divmod(k, KW)
            win[k, :m] = xp[m0:m0 + m, u:u + sy * (Ho - 1) + 1:sy, v:v + sx * (Wo - 1) + 1:sx]
        ym, sm, lg, kl = y[m0:m0 + m], sel[m0:m0 + m], larger[:m], k_larger[:m]
        ym[...] = win[0, :m]
        for k in range(1, KK):
            np.greater(win[k, :m], ym, out=lg)
            if nan:
                lg |= np.isnan(win[k, :m], out=is_nan[:m])
            np.maximum(ym, win[k, :m], out=ym)          # NaN propagates, as torch
            np.multiply(lg, sel.dtype.type(k), out=kl)
            np.maximum(sm, kl, out=sm)
    return y, sel
