"""The operations of the Zeiler & Fergus deconvnet, in numpy alone.

Every array is NCHW. Axis letters used throughout: N batch, C channels, H W height and width of a
layer's input, Ho Wo of its output, F filters, KH KW kernel height and width.

Forward ops and their deconvnet inverses (Zeiler & Fergus, ECCV 2014, section 2.1):

============================  ==============================================================
forward                       deconvnet inverse
============================  ==============================================================
``conv2d(x, w, b)``           ``conv_transpose2d(y, w)``: the same filters transposed, no bias
``relu(x)``                   ``unrelu(r)``: ReLU of the reconstruction signal
``max_pool2d(x, k)``          ``max_unpool2d(y, switches, x.shape)``: values back at the switches
``linear(x, w, b)``           ``linear_transpose(y, w)``: ``y @ w``, no bias
============================  ==============================================================

Output size of a convolution or pooling window, per spatial axis::

    H_out = 1 + (H + 2*padding - KH) // stride            (conv_output_size)

Each of conv2d, conv_transpose2d, max_pool2d and max_unpool2d has a naive twin (``*_naive``, same
signature): explicit loops over output positions that read like the paper. The fast versions are
im2col + one BLAS GEMM per band of output rows (conv; 3x3 stride-1 convs on 256 channels or more and
maps up to 40x40 use Winograd's F(2x2, 3x3) instead, 16 GEMMs with 2.25x fewer multiplications); one GEMM + col2im by
KH*KW slice-adds, or at stride 1 on large images a conv with the flipped filters (deconv); KH*KW
comparisons of contiguous window copies (pool); a scatter-add (unpool). Tests check
fast == naive == PyTorch.

Dtypes: float32 and float64 are preserved. When inputs mix dtypes the result is float64 if any input
is float64, else float32; any other real dtype (bool, integers, float16) is computed in float32.
Complex and non-numeric inputs raise ValueError. Bad shapes or parameters raise ValueError; nothing
is broadcast silently.
"""
import numpy as np

__all__ = [
    "conv_output_size",
    "conv2d", "conv2d_naive", "conv2d_winograd", "winograd_filters",
    "conv_transpose2d", "conv_transpose2d_naive",
    "relu", "unrelu",
    "max_pool2d", "max_pool2d_naive",
    "max_unpool2d", "max_unpool2d_naive",
    "linear", "linear_transpose",
    "flatten", "softmax", "dropout",
]

# A conv's GEMM runs in chunks (a band of output rows of one image, or several whole images) whose
# im2col columns + results take about this many bytes (they stay in cache, and memory is capped),
# but at least _MIN_COLS GEMM columns each (see _chunks).
_CHUNK_BYTES = 2 * 2**20
_MIN_COLS = 1024
# max-pooling works on chunks of planes whose KH*KW window copies take at most this many bytes
_POOL_CHUNK_BYTES = 2**20


# ----------------------------------------------------------------------------------------------
# argument checking
# ----------------------------------------------------------------------------------------------
def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(v, name):
    """An int or a pair of ints -> (h, w)."""
    if _is_int(v):
        return int(v), int(v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair (h, w) of ints, got {v!r}") from None
    if not (_is_int(a) and _is_int(b)):
        raise ValueError(f"{name} must be an int or a pair (h, w) of ints, got {v!r}")
    return int(a), int(b)


def _stride_padding(stride, padding):
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be positive, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {(ph, pw)}")
    return (sh, sw), (ph, pw)


def _floats(*arrays, names):
    """Convert to ndarrays of one float dtype (float64 if any input is float64, else float32)."""
    arrays = [np.asarray(a) for a in arrays]
    for a, name in zip(arrays, names):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    wide = any(a.dtype.kind == "f" and a.dtype.itemsize >= 8 for a in arrays)
    dt = np.dtype(np.float64 if wide else np.float32)
    return [a.astype(dt, copy=False) for a in arrays], dt


def _ndim(a, n, name, letters):
    if a.ndim != n:
        raise ValueError(f"{name} must be {n}-D {letters}, got shape {a.shape}")


def conv_output_size(size, kernel, stride=1, padding=0):
    """Output length of a conv/pool window along one axis: ``1 + (size + 2*padding - kernel) // stride``.

    Raises ValueError if the kernel is larger than the padded input, stride <= 0 or padding < 0.
    """
    for v, name in ((size, "size"), (kernel, "kernel"), (stride, "stride"), (padding, "padding")):
        if not _is_int(v):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if kernel <= 0:
        raise ValueError(f"kernel must be positive, got {kernel}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if kernel > size + 2 * padding:
        raise ValueError(f"kernel {kernel} is larger than the padded input {size} + 2*{padding}")
    return 1 + (size + 2 * padding - kernel) // stride


def _check_conv(x, w, b, stride, padding):
    names = ("x", "w") if b is None else ("x", "w", "b")
    arrays, dt = _floats(*((x, w) if b is None else (x, w, b)), names=names)
    x, w = arrays[0], arrays[1]
    b = arrays[2] if b is not None else None
    _ndim(x, 4, "x", "(N, C, H, W)")
    _ndim(w, 4, "w", "(F, C, KH, KW)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"channel mismatch: x has C={x.shape[1]} channels, w expects {w.shape[1]}"
                         f" (x {x.shape}, w {w.shape})")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"b must have shape (F,) = ({w.shape[0]},), got {b.shape}")
    (sh, sw), (ph, pw) = _stride_padding(stride, padding)
    Ho = conv_output_size(x.shape[2], w.shape[2], sh, ph)
    Wo = conv_output_size(x.shape[3], w.shape[3], sw, pw)
    return x, w, b, dt, (sh, sw), (ph, pw), (Ho, Wo)


def _check_conv_transpose(y, w, stride, padding, output_size):
    (y, w), dt = _floats(y, w, names=("y", "w"))
    _ndim(y, 4, "y", "(N, F, Ho, Wo)")
    _ndim(w, 4, "w", "(F, C, KH, KW)")
    if y.shape[1] != w.shape[0]:
        raise ValueError(f"channel mismatch: y has F={y.shape[1]} maps, w has {w.shape[0]} filters"
                         f" (y {y.shape}, w {w.shape})")
    (sh, sw), (ph, pw) = _stride_padding(stride, padding)
    N, F, Ho, Wo = y.shape
    _, C, KH, KW = w.shape
    if min(Ho, Wo, KH, KW) <= 0:
        raise ValueError(f"empty spatial size: y {y.shape}, w {w.shape}")
    Hmin, Wmin = (Ho - 1) * sh - 2 * ph + KH, (Wo - 1) * sw - 2 * pw + KW
    if max(Hmin, 1) >= Hmin + sh or max(Wmin, 1) >= Wmin + sw:
        raise ValueError(f"padding {(ph, pw)} too large: no input size >= 1 gives y's size {(Ho, Wo)}"
                         f" (kernel {(KH, KW)}, stride {(sh, sw)})")
    if output_size is None:
        H, W = max(Hmin, 1), max(Wmin, 1)
    else:
        size = tuple(output_size)
        if len(size) == 4:
            if size[:2] != (N, C):
                raise ValueError(f"output_size {size} does not match (N, C) = {(N, C)}")
            size = size[2:]
        H, W = _pair(size, "output_size")
        if not (max(Hmin, 1) <= H < Hmin + sh and max(Wmin, 1) <= W < Wmin + sw):
            raise ValueError(f"output_size {(H, W)} out of range: with y {y.shape}, kernel {(KH, KW)},"
                             f" stride {(sh, sw)}, padding {(ph, pw)} it must lie in"
                             f" [{max(Hmin, 1)}, {Hmin + sh - 1}] x [{max(Wmin, 1)}, {Wmin + sw - 1}]")
    return y, w, dt, (sh, sw), (ph, pw), (H, W)


def _check_pool(x, kernel, stride, padding):
    (x,), dt = _floats(x, names=("x",))
    _ndim(x, 4, "x", "(N, C, H, W)")
    kh, kw = _pair(kernel, "kernel")
    if kh <= 0 or kw <= 0:
        raise ValueError(f"kernel must be positive, got {(kh, kw)}")
    (sh, sw), (ph, pw) = _stride_padding((kh, kw) if stride is None else stride, padding)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {(ph, pw)} must be at most half the kernel {(kh, kw)}")
    Ho = conv_output_size(x.shape[2], kh, sh, ph)
    Wo = conv_output_size(x.shape[3], kw, sw, pw)
    return x, dt, (kh, kw), (sh, sw), (ph, pw), (Ho, Wo)


def _check_unpool(y, switches, input_shape):
    (y,), dt = _floats(y, names=("y",))
    _ndim(y, 4, "y", "(N, C, Ho, Wo)")
    s = np.asarray(switches)
    if s.dtype.kind not in "iu":
        raise ValueError(f"switches must be an integer array, got dtype {s.dtype}")
    if s.shape != y.shape:
        raise ValueError(f"switches shape {s.shape} does not match y shape {y.shape}")
    shape = tuple(int(v) for v in input_shape)
    N, C = y.shape[:2]
    if len(shape) == 4:
        if shape[:2] != (N, C):
            raise ValueError(f"input_shape {shape} does not match y's (N, C) = {(N, C)}")
        shape = shape[2:]
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"input_shape must be (N, C, H, W) or (H, W) with H, W > 0, got {input_shape!r}")
    H, W = shape
    if s.size and (s.min() < 0 or s.max() >= H * W):
        raise ValueError(f"switches must lie in [0, H*W) = [0, {H * W}), got range [{s.min()}, {s.max()}]")
    return y, s.astype(np.int64, copy=False), dt, (H, W)


def _chunks(N, Ho, row_cols, K, F, itemsize):
    """Split a conv's GEMM into chunks: (images per chunk, output rows per chunk).

    One output row of one image is ``row_cols`` GEMM columns, each needing K im2col values and F
    outputs. A chunk takes as many rows as keep (K + F) * columns * itemsize under _CHUNK_BYTES (so
    the column buffer and the GEMM result stay in cache), but at least _MIN_COLS columns (so the
    GEMM stays efficient when K is large); whole images are grouped when one image is smaller.
    """
    bytes_per_row = max((K + F) * row_cols * itemsize, 1)
    rows = max(_CHUNK_BYTES // bytes_per_row, -(-_MIN_COLS // max(row_cols, 1)), 1)
    if rows >= Ho:
        return max(1, min(N, rows // Ho)), Ho
    bands = -(-Ho // rows)
    return 1, -(-Ho // bands)          # equal bands: no small GEMM left over at the bottom


# ----------------------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------------------
def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation (as ``torch.nn.functional.conv2d``) with zero padding.

    x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> y (N, F, Ho, Wo), where
    ``Ho = 1 + (H + 2*ph - KH) // sh`` and ``Wo = 1 + (W + 2*pw - KW) // sw``;
    ``y[n, f, i, j] = b[f] + sum_{c,u,v} w[f, c, u, v] * xpad[n, c, i*sh + u, j*sw + v]``.

    im2col + one BLAS GEMM per chunk. The column matrix has rows (c, u, v) and columns = output
    positions, so it is filled by KH*KW copies of whole shifted slices and the GEMM ``w @ cols``
    writes (F, positions), already in NCHW order. With stride 1 the padded input is used flat, row
    width Wp = W + 2*pw: the window offset (u, v) is then one contiguous slice starting at
    ``u*Wp + v``; the GEMM also computes KW - 1 throw-away columns per output row, dropped when
    the result is copied out. The bias is one more GEMM column of w against a row of ones. The
    image is processed in bands of output rows that stay in cache (see _chunks).

    3x3 convolutions at stride 1 on many channels take Winograd's F(2x2, 3x3) instead
    (:func:`conv2d_winograd`): 2.25 times fewer multiplications, same result to rounding.
    """
    x, w, b, dt, (sh, sw), (ph, pw), (Ho, Wo) = _check_conv(x, w, b, stride, padding)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    if KH == KW == 3 and sh == sw == 1 and _winograd_pays(C, F, N * Ho * Wo):
        return _conv3x3_winograd(x, w, b, ph, pw, Ho, Wo)
    K = C * KH * KW
    Kb = K + (b is not None)             # the bias joins the GEMM: one more column of w, a row of ones
    wb = np.empty((F, Kb), dt)
    wb[:, :K] = w.reshape(F, K)
    if b is not None:
        wb[:, K] = b
    Hp, Wp = H + 2 * ph, W + 2 * pw
    flat = sh == 1 and sw == 1
    if flat:
        # flat padded planes, KW - 1 spare elements at the end for the last row's throw-away columns
        xp = _pad_flat(x, ph, pw, KW - 1)
        Wc = Wp                          # GEMM columns per output row
    else:
        xp = _pad(x, ph, pw, 0)
        Wc = Wo
    y = np.empty((N, F, Ho, Wo), dt)
    offsets = [(u, v) for u in range(KH) for v in range(KW)]
    nb, rb = _chunks(N, Ho, Wc, Kb, F, dt.itemsize)
    cols_buf = np.empty(Kb * nb * rb * Wc, dt)
    out_buf = np.empty(F * nb * rb * Wc, dt)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        for r0 in range(0, Ho, rb):
            r = min(rb, Ho - r0)
            L = m * r * Wc
            cols = cols_buf[:Kb * L].reshape(Kb, L)
            if b is not None:
                cols[K] = 1
            cols_k = cols[:K].reshape(C, KH * KW, m, r, Wc)
            for k, (u, v) in enumerate(offsets):
                if flat:
                    off = (r0 + u) * Wp + v
                    src = xp[n0:n0 + m, :, off:off + r * Wp].reshape(m, C, r, Wp)
                else:
                    h0 = r0 * sh + u
                    src = xp[n0:n0 + m, :, h0:h0 + sh * (r - 1) + 1:sh, v:v + sw * (Wo - 1) + 1:sw]
                cols_k[:, k] = src.transpose(1, 0, 2, 3)
            out = out_buf[:F * L].reshape(F, L)
            np.matmul(wb, cols, out=out)
            y[n0:n0 + m, :, r0:r0 + r] = out.reshape(F, m, r, Wc)[..., :Wo].transpose(1, 0, 2, 3)
    return y


# ----------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3): the fast path of conv2d for 3x3 filters at stride 1
# ----------------------------------------------------------------------------------------------
# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). A 2x2 block of
# outputs of a 3x3 filter g over a 4x4 input tile d is  Y = A^T [(G g G^T) * (B^T d B)] A  with
#   G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
# and * elementwise: 16 multiplications per tile instead of 36. Summed over channels, each of the 16
# tile positions (xi, nu) is one GEMM  M[xi,nu] (F x tiles) = U[xi,nu] (F x C) @ V[xi,nu] (C x tiles).
# B and A hold only 0 and +-1, so the input and output transforms are additions of strided views.
_WINO_BAND_BYTES = 4 * 2**20     # V + M of one band of tile rows (16 * (C + F) * tiles * itemsize)
_WINO_MIN_TILES = 512            # ... but at least this many tiles per GEMM
_WINO_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_WINO_GG = np.kron(_WINO_G, _WINO_G)     # (16, 9): GG[4a + b, 3u + v] = G[a, u] G[b, v]


def winograd_filters(w):
    """3x3 filters w (F, C, 3, 3) -> U (16, F, C), U[4*a + b] = (G w G^T)[a, b] (see above): one
    GEMM with the 16x9 Kronecker product G (x) G, since (G g G^T)[a, b] = sum_uv G[a, u] G[b, v] g[u, v]."""
    F, C, KH, KW = w.shape
    if (KH, KW) != (3, 3):
        raise ValueError(f"winograd_filters needs 3x3 filters, got {KH}x{KW}")
    return (_WINO_GG.astype(w.dtype) @ w.reshape(F * C, 9).T).reshape(16, F, C)


def _winograd_pays(C, F, positions):
    """Winograd's transforms move about 16 * (C + F) values per 2x2 tile (numpy, one core, memory
    bound); they pay off against the GEMM work they save (20 of 36 multiply-adds per output and
    channel pair) when C and F are large and the maps small enough for the transformed tiles to stay
    in cache. Measured on VGG16's layers (2 cores, float32, the two paths alternated call by call,
    median time ratio Winograd / im2col over 30 pairs): 256->512 and 512->512 at 28x28 0.77 and 0.72,
    512->512 at 14x14 0.92; but 256->256 at 56x56 1.11, 64->64 at 224x224 1.19; with 128 channels
    mixed (128->128 at 112x112 0.92, 128->256 at 56x56 1.03, in a slow spell of the VM), so left out."""
    return min(C, F) >= _WINO_MIN_CHANNELS and 16 <= positions <= _WINO_MAX_POSITIONS


_WINO_MAX_POSITIONS = 40 * 40
_WINO_MIN_CHANNELS = 256


def conv2d_winograd(x, w, b=None, padding=1):
    """:func:`conv2d` of 3x3 filters at stride 1 by Winograd's F(2x2, 3x3); any zero padding.

    Same arguments, shapes and result (to rounding: the transforms add a few float32 roundings, the
    tests hold it to the same tolerance against PyTorch) as ``conv2d(x, w, b, 1, padding)``."""
    x, w, b, dt, (sh, sw), (ph, pw), (Ho, Wo) = _check_conv(x, w, b, 1, padding)
    if w.shape[2:] != (3, 3):
        raise ValueError(f"conv2d_winograd needs 3x3 filters, got {w.shape[2]}x{w.shape[3]}")
    return _conv3x3_winograd(x, w, b, ph, pw, Ho, Wo)


def _conv3x3_winograd(x, w, b, ph, pw, Ho, Wo):
    N, C, H, W = x.shape
    F = w.shape[0]
    dt = x.dtype
    th, tw = -(-Ho // 2), -(-Wo // 2)                    # 2x2 output tiles
    # padded input, channels first: (C, N, 2*th + 2, 2*tw + 2) (one more zero row/column if odd)
    xp = np.zeros((C, N, 2 * th + 2, 2 * tw + 2), dt)
    xp[:, :, ph:ph + H, pw:pw + W] = x.transpose(1, 0, 2, 3)
    U = winograd_filters(w)
    per_row = 16 * (C + F) * N * tw * dt.itemsize
    rows = max(1, min(th, max(_WINO_BAND_BYTES // per_row, -(-_WINO_MIN_TILES // (N * tw)))))
    rows = -(-th // -(-th // rows))                      # equal bands
    y = np.empty((N, F, 2 * th, 2 * tw), dt)
    yt = y.transpose(1, 0, 2, 3)                         # (F, N, ...) view, written in place
    rbuf = np.empty((4, C, N, rows, 2 * tw + 2), dt)
    vbuf = np.empty(16 * C * N * rows * tw, dt)
    mbuf = np.empty(16 * F * N * rows * tw, dt)
    for i0 in range(0, th, rows):
        R = min(rows, th - i0)
        # B^T d: the four row phases of the band's tiles (tile row i covers input rows 2i .. 2i+3)
        d = [xp[:, :, 2 * i0 + k:2 * i0 + k + 2 * R:2] for k in range(4)]
        r = rbuf[:, :, :, :R]
        np.subtract(d[0], d[2], out=r[0])
        np.add(d[1], d[2], out=r[1])
        np.subtract(d[2], d[1], out=r[2])
        np.subtract(d[1], d[3], out=r[3])
        # (B^T d) B: the same on the column phases -> V (4, 4, C, tiles)
        P = N * R * tw
        V = vbuf[:16 * C * P].reshape(4, 4, C, N, R, tw)
        for a in range(4):
            e = [r[a][..., k:k + 2 * tw:2] for k in range(4)]
            np.subtract(e[0], e[2], out=V[a, 0])
            np.add(e[1], e[2], out=V[a, 1])
            np.subtract(e[2], e[1], out=V[a, 2])
            np.subtract(e[1], e[3], out=V[a, 3])
        M = mbuf[:16 * F * P].reshape(16, F, P)
        np.matmul(U, V.reshape(16, C, P), out=M)         # 16 GEMMs, summing over the channels
        M = M.reshape(4, 4, F, N, R, tw)
        # A^T M A: rows first, then columns, written at the tiles' four output phases
        t0 = M[0] + M[1]
        t0 += M[2]
        t1 = M[1] - M[2]
        t1 -= M[3]
        ys = yt[:, :, 2 * i0:2 * i0 + 2 * R]
        for a, t in enumerate((t0, t1)):
            o = ys[:, :, a::2, 0::2]
            np.add(t[0], t[1], out=o)
            o += t[2]
            o = ys[:, :, a::2, 1::2]
            np.subtract(t[1], t[2], out=o)
            o -= t[3]
    if b is not None:
        y += b[:, None, None]
    if (Ho, Wo) != (2 * th, 2 * tw):
        y = np.ascontiguousarray(y[:, :, :Ho, :Wo])
    return y


def _pad(x, ph, pw, value):
    """(N, C, H, W) -> (N, C, H + 2*ph, W + 2*pw) with ``value`` around x (x itself if no padding)."""
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xp = np.full((N, C, H + 2 * ph, W + 2 * pw), value, x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def _pad_flat(x, ph, pw, extra):
    """(N, C, H, W) -> zero-padded planes stored flat, (N, C, Hp*Wp + extra), zeros at the end too.

    Only the border is zeroed; the interior is written once.
    """
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


def conv2d_naive(x, w, b=None, stride=1, padding=0):
    """Loop twin of :func:`conv2d` (same signature, shapes and output size)."""
    x, w, b, dt, (sh, sw), (ph, pw), (Ho, Wo) = _check_conv(x, w, b, stride, padding)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dt)
    xpad[:, :, ph:ph + H, pw:pw + W] = x
    y = np.zeros((N, F, Ho, Wo), dt)
    for i in range(Ho):
        for j in range(Wo):
            patch = xpad[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW]      # (N, C, KH, KW)
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))  # (N, F)
    if b is not None:
        y += b[:, None, None]
    return y


def conv_transpose2d(y, w, stride=1, padding=0, output_size=None):
    """The deconv of Zeiler & Fergus: the adjoint of :func:`conv2d` with respect to its input.

    y (N, F, Ho, Wo), w (F, C, KH, KW) -- the forward conv's weight, as is (not flipped) ->
    x (N, C, H, W). No bias. Each y[n, f, i, j] adds ``y[n, f, i, j] * w[f]`` into the window of
    the padded input it was computed from; the padding is then cut off. Same result as
    ``torch.nn.functional.conv_transpose2d(y, w, stride=stride, padding=padding,
    output_padding=(H, W) - (Hmin, Wmin))``.

    The smallest consistent input size is ``Hmin = (Ho - 1)*sh - 2*ph + KH`` (likewise Wmin);
    with stride > 1 every H in [Hmin, Hmin + sh - 1] gives the same Ho, so ``output_size=(H, W)``
    (or the full (N, C, H, W)) selects it; without it, (Hmin, Wmin) is returned (or 1 where a
    large padding makes Hmin < 1).

    One GEMM ``w.T @ y`` gives the columns (c, u, v) x positions; col2im adds them back with
    KH*KW shifted slice-adds (the mirror of :func:`conv2d`'s im2col), in bands of output rows.
    With stride 1 on large images it is cheaper to run :func:`conv2d` on y with the flipped,
    transposed filters (padding K - 1 - p); _deconv_as_conv chooses by the memory traffic.
    """
    y, w, dt, (sh, sw), (ph, pw), (H, W) = _check_conv_transpose(y, w, stride, padding, output_size)
    N, F, Ho, Wo = y.shape
    _, C, KH, KW = w.shape
    K = C * KH * KW
    wT = np.ascontiguousarray(w.reshape(F, K)).T        # (K, F) view; BLAS handles the transpose
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if sh == 1 and sw == 1 and ph < KH and pw < KW and _deconv_as_conv(N * Ho * Wp, C, F):
        # stride 1: the transposed conv is a conv of y with the flipped filters, w[f, c, ::-1, ::-1]
        # seen as (C, F, KH, KW), padded by K - 1 - p. Its im2col copies F*KH*KW rows where col2im
        # adds C*KH*KW rows (an add moves 3 values, a copy 2); the price is one copy of w.
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        return conv2d(y, wt, None, 1, (KH - 1 - ph, KW - 1 - pw))
    flat = sh == 1 and sw == 1        # as in conv2d: flat padded planes, Wp columns per row
    Wc = Wp if flat else Wo
    xp = np.zeros((N, C, Hp * Wp + (KW - 1 if flat else 0)), dt)
    planes = xp[:, :, :Hp * Wp].reshape(N, C, Hp, Wp)
    offsets = [(u, v) for u in range(KH) for v in range(KW)]
    nb, rb = _chunks(N, Ho, Wc, K, F, dt.itemsize)
    cols_buf = np.empty(K * nb * rb * Wc, dt)
    y_buf = np.empty(F * nb * rb * Wc, dt)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        for r0 in range(0, Ho, rb):
            r = min(rb, Ho - r0)
            L = m * r * Wc
            yb = y_buf[:F * L].reshape(F, m, r, Wc)
            yb[..., :Wo] = y[n0:n0 + m, :, r0:r0 + r].transpose(1, 0, 2, 3)
            yb[..., Wo:] = 0                  # throw-away columns (flat layout) contribute nothing
            cols = cols_buf[:K * L].reshape(K, L)
            np.matmul(wT, yb.reshape(F, L), out=cols)
            cols_k = cols.reshape(C, KH * KW, m, r, Wc)
            for k, (u, v) in enumerate(offsets):
                if flat:
                    off = (r0 + u) * Wp + v
                    xp[n0:n0 + m, :, off:off + r * Wp] += cols_k[:, k].reshape(C, m, r * Wp).transpose(1, 0, 2)
                else:
                    h0 = r0 * sh + u
                    planes[n0:n0 + m, :, h0:h0 + sh * (r - 1) + 1:sh,
                           v:v + sw * (Wo - 1) + 1:sw] += cols_k[:, k].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(planes[:, :, ph:ph + H, pw:pw + W])


def _deconv_as_conv(positions, C, F):
    """Memory-traffic model (values moved per kernel offset): conv of y with flipped filters
    (copy F rows of im2col + copy w once) beats GEMM + col2im (add C rows) for large images."""
    return 2 * F * positions + 2 * F * C < 3 * C * positions


def conv_transpose2d_naive(y, w, stride=1, padding=0, output_size=None):
    """Loop twin of :func:`conv_transpose2d` (same signature, shapes and output size)."""
    y, w, dt, (sh, sw), (ph, pw), (H, W) = _check_conv_transpose(y, w, stride, padding, output_size)
    N, F, Ho, Wo = y.shape
    _, C, KH, KW = w.shape
    xpad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dt)
    for i in range(Ho):
        for j in range(Wo):
            # each output value sends its filter, scaled, back onto the window it came from
            xpad[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW] += np.tensordot(y[:, :, i, j], w, axes=(1, 0))
    return xpad[:, :, ph:ph + H, pw:pw + W].copy()


# ----------------------------------------------------------------------------------------------
# rectification
# ----------------------------------------------------------------------------------------------
def relu(x):
    """max(x, 0), elementwise; any shape. NaN propagates."""
    (x,), _ = _floats(x, names=("x",))
    return np.maximum(x, 0)


def unrelu(r):
    """The deconvnet's rectification: ReLU of the reconstruction signal ``r`` itself.

    Zeiler & Fergus pass the reconstruction through a ReLU so that it stays positive; it does not
    depend on the sign of the forward input (that would be the gradient, or guided backprop).
    """
    (r,), _ = _floats(r, names=("r",))
    return np.maximum(r, 0)


# ----------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------
def max_pool2d(x, kernel, stride=None, padding=0):
    """Max-pooling with switches, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    x (N, C, H, W) -> (y, switches), both (N, C, Ho, Wo) with ``Ho = 1 + (H + 2*ph - KH) // sh``
    (floor mode). ``stride`` defaults to ``kernel``; the padding is implicit -inf and must be at
    most half the kernel. ``switches`` (int64) holds, for each output, the flat index ``h*W + w``
    of the chosen input in its own (unpadded) H x W plane. Ties go to the first maximum in the
    window's row-major scan order; a NaN wins over numbers (the last NaN of a window, as torch).
    Overlapping windows (stride < kernel) are allowed.

    Fast path, in chunks of planes that stay in cache: the KH*KW strided views (one per window
    offset k = (u, v), in scan order) are first copied to contiguous arrays, then compared with
    the running maximum; offset k becomes the switch where it is strictly larger (so the first
    maximum is kept). As the winning offset only grows with k, the switch offset is a running
    ``maximum(sel, k * larger)``: no masked writes, all contiguous vector ops.
    """
    x, dt, (KH, KW), (sh, sw), (ph, pw), (Ho, Wo) = _check_pool(x, kernel, stride, padding)
    N, C, H, W = x.shape
    if ph or pw:
        xp = np.full((N, C, H + 2 * ph, W + 2 * pw), -np.inf, dt)
        xp[:, :, ph:ph + H, pw:pw + W] = x
    else:
        xp = x
    y, sel = _pool_offsets(xp.reshape(N * C, H + 2 * ph, W + 2 * pw), KH, KW, sh, sw, Ho, Wo, nan=False)
    if np.isnan(y).any():          # rare: redo with NaN winning comparisons, as torch does
        y, sel = _pool_offsets(xp.reshape(N * C, H + 2 * ph, W + 2 * pw), KH, KW, sh, sw, Ho, Wo, nan=True)
    top = np.arange(Ho)[:, None] * sh - ph        # window's first row, unpadded coordinates
    left = np.arange(Wo)[None, :] * sw - pw
    offset = np.array([u * W + v for u in range(KH) for v in range(KW)], np.int64)
    switches = np.take(offset, sel)
    switches += top * W + left
    if ph or pw:
        # a window whose real values are all -inf returns its first real position (as torch),
        # not a padding position
        lost = y == -np.inf
        if lost.any():
            switches = np.where(lost, np.maximum(top, 0) * W + np.maximum(left, 0), switches)
    return y.reshape(N, C, Ho, Wo), switches.reshape(N, C, Ho, Wo)


def _pool_offsets(xp, KH, KW, sh, sw, Ho, Wo, nan):
    """xp (M, Hp, Wp) padded planes -> max (M, Ho, Wo) and winning window offset (uint8) k = u*KW + v."""
    M, KK = xp.shape[0], KH * KW
    y = np.empty((M, Ho, Wo), xp.dtype)
    sel = np.zeros((M, Ho, Wo), np.uint8 if KK < 256 else np.int64)
    mb = max(1, min(M, _POOL_CHUNK_BYTES // (KK * Ho * Wo * xp.dtype.itemsize)))
    win = np.empty((KK, mb, Ho, Wo), xp.dtype)
    larger = np.empty((mb, Ho, Wo), bool)
    is_nan = np.empty((mb, Ho, Wo), bool)
    k_larger = np.empty((mb, Ho, Wo), sel.dtype)
    offsets = [(u, v) for u in range(KH) for v in range(KW)]
    for m0 in range(0, M, mb):
        m = min(mb, M - m0)
        for k, (u, v) in enumerate(offsets):
            win[k, :m] = xp[m0:m0 + m, u:u + sh * (Ho - 1) + 1:sh, v:v + sw * (Wo - 1) + 1:sw]
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


def max_pool2d_naive(x, kernel, stride=None, padding=0):
    """Loop twin of :func:`max_pool2d` (same signature and output; for NaN it keeps the first)."""
    x, dt, (KH, KW), (sh, sw), (ph, pw), (Ho, Wo) = _check_pool(x, kernel, stride, padding)
    N, C, H, W = x.shape
    y = np.empty((N, C, Ho, Wo), dt)
    switches = np.empty((N, C, Ho, Wo), np.int64)
    for i in range(Ho):
        for j in range(Wo):
            # the window, clipped to the real input (the padding is -inf, never the maximum)
            h0, h1 = max(i * sh - ph, 0), min(i * sh - ph + KH, H)
            w0, w1 = max(j * sw - pw, 0), min(j * sw - pw + KW, W)
            window = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            k = np.argmax(window, axis=2)                     # first maximum in scan order
            y[:, :, i, j] = np.take_along_axis(window, k[:, :, None], axis=2)[:, :, 0]
            dh, dw = np.divmod(k, w1 - w0)
            switches[:, :, i, j] = (h0 + dh) * W + (w0 + dw)
    return y, switches


def max_unpool2d(y, switches, input_shape):
    """The deconvnet's unpooling: each y value goes back to the input position its switch records.

    y (N, C, Ho, Wo), switches (N, C, Ho, Wo) flat indices ``h*W + w`` into each H x W plane
    (from :func:`max_pool2d`), input_shape (N, C, H, W) or (H, W) -> x (N, C, H, W), zero
    elsewhere. Where overlapping windows chose the same position their values ADD UP: this is
    the adjoint of max-pooling with fixed switches (its gradient). ``torch.nn.functional
    .max_unpool2d`` assigns instead (last write wins), which agrees only for non-overlapping pools.

    Fast path: one scatter-add over the global flat indices, ``np.add.at`` (unbuffered, so
    repeated indices accumulate; numpy >= 1.25 runs it as a fast 1-D loop, here faster than
    ``np.bincount``, which would also compute in float64).
    """
    y, s, dt, (H, W) = _check_unpool(y, switches, input_shape)
    N, C, Ho, Wo = y.shape
    flat = s.reshape(N * C, Ho * Wo) + (np.arange(N * C, dtype=np.int64) * (H * W))[:, None]
    x = np.zeros(N * C * H * W, dt)
    np.add.at(x, flat.ravel(), y.ravel())
    return x.reshape(N, C, H, W)


def max_unpool2d_naive(y, switches, input_shape):
    """Loop twin of :func:`max_unpool2d` (same signature and output)."""
    y, s, dt, (H, W) = _check_unpool(y, switches, input_shape)
    N, C, Ho, Wo = y.shape
    x = np.zeros((N, C, H * W), dt)
    n, c = np.ogrid[:N, :C]
    for i in range(Ho):
        for j in range(Wo):
            x[n, c, s[:, :, i, j]] += y[:, :, i, j]     # one position per (n, c): no collisions
    return x.reshape(N, C, H, W)


# ----------------------------------------------------------------------------------------------
# classifier pieces
# ----------------------------------------------------------------------------------------------
def linear(x, w, b=None):
    """Fully connected layer: x (N, in), w (out, in) (torch layout), b (out,) or None -> (N, out)."""
    arrays, _ = _floats(*((x, w) if b is None else (x, w, b)),
                        names=("x", "w") if b is None else ("x", "w", "b"))
    x, w = arrays[0], arrays[1]
    _ndim(x, 2, "x", "(N, in)")
    _ndim(w, 2, "w", "(out, in)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"feature mismatch: x has {x.shape[1]} features, w expects {w.shape[1]}")
    out = x @ w.T
    if b is not None:
        b = arrays[2]
        if b.shape != (w.shape[0],):
            raise ValueError(f"b must have shape (out,) = ({w.shape[0]},), got {b.shape}")
        out += b
    return out


def linear_transpose(y, w):
    """Deconv of a linear layer (its adjoint, no bias): y (N, out), w (out, in) -> ``y @ w`` (N, in)."""
    (y, w), _ = _floats(y, w, names=("y", "w"))
    _ndim(y, 2, "y", "(N, out)")
    _ndim(w, 2, "w", "(out, in)")
    if y.shape[1] != w.shape[0]:
        raise ValueError(f"feature mismatch: y has {y.shape[1]} features, w has {w.shape[0]} outputs")
    return y @ w


def flatten(x):
    """(N, ...) -> (N, prod(...)), C-order (as ``torch.flatten(x, 1)``)."""
    (x,), _ = _floats(x, names=("x",))
    if x.ndim < 2:
        raise ValueError(f"flatten needs at least 2 dimensions (N, ...), got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def softmax(z, axis=-1):
    """Numerically stable softmax along ``axis`` (the maximum is subtracted first); any shape."""
    (z,), _ = _floats(z, names=("z",))
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def dropout(x, p=0.5, training=False, rng=None):
    """Inverted dropout. At inference (``training=False``) the identity: returns x unchanged.

    When training, each element is zeroed with probability p and the survivors are scaled by
    1 / (1 - p), so the expectation is unchanged. ``rng``: a ``numpy.random.Generator``, an int
    seed or None (fresh entropy).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must lie in [0, 1], got {p}")
    (x,), _ = _floats(x, names=("x",))
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return np.zeros_like(x)
    rng = np.random.default_rng(rng)
    keep = rng.random(x.shape) >= p
    return np.where(keep, x / (1.0 - p), 0).astype(x.dtype, copy=False)
