"""Winograd's F(2x2, 3x3) convolution (Lavin & Gray, CVPR 2016), one of the fast kernels behind
``zfcore.core.ops.conv2d`` (private; ``ops.conv2d_winograd`` is its public form). Tests hold it to the
naive loop twin and to PyTorch.

Axis letters: N, C, H, W input; F filters; Ho, Wo output; (ph, pw) padding.
"""
import numpy as np

from zfcore.core._tuning import TUNING


# ----------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3) (Lavin & Gray, CVPR 2016)
# ----------------------------------------------------------------------------------------------
# A 2x2 block of outputs of a 3x3 filter g over a 4x4 input tile d is  Y = A^T [(G g G^T) * (B^T d B)] A
#   G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
# with * elementwise: 16 multiplications per tile instead of 36. Summed over channels, each of the 16
# tile positions (xi, nu) is one GEMM  M[xi,nu] (F x tiles) = U[xi,nu] (F x C) @ V[xi,nu] (C x tiles).
# B and A hold only 0 and +-1, so the input and output transforms are additions of strided views.
WINO_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
WINO_GG = np.kron(WINO_G, WINO_G)     # (16, 9): GG[4a + b, 3u + v] = G[a, u] G[b, v]
WINO_MAX_POSITIONS = 40 * 40
WINO_MIN_CHANNELS = 256


def winograd_filters(w):
    """w (F, C, 3, 3) -> U (16, F, C), U[4a + b] = (G w G^T)[a, b]: one GEMM with G (x) G."""
    F, C = w.shape[:2]
    return (WINO_GG.astype(w.dtype) @ w.reshape(F * C, 9).T).reshape(16, F, C)


def winograd_pays(C, F, positions):
    """Winograd when C and F are both >= 256 and the batch's maps hold 16 to 40*40 positions in all
    (A/B against im2col in docs/design.md, "Measurements behind the thresholds"; the lower bound of 16
    positions is not measured)."""
    if TUNING.winograd is not None:
        return TUNING.winograd
    return min(C, F) >= WINO_MIN_CHANNELS and 16 <= positions <= WINO_MAX_POSITIONS


def conv3x3_winograd(x, w, b, ph, pw, Ho, Wo):
    """y (N, F, Ho, Wo) = 3x3 stride-1 conv of x (N, C, H, W) by F(2x2, 3x3), in bands of tile rows."""
    N, C, H, W = x.shape
    F = w.shape[0]
    dt = x.dtype
    th, tw = -(-Ho // 2), -(-Wo // 2)                    # 2x2 output tiles
    # padded input, channels first: (C, N, 2*th + 2, 2*tw + 2) (one more zero row/column if odd)
    xp = np.zeros((C, N, 2 * th + 2, 2 * tw + 2), dt)
    xp[:, :, ph:ph + H, pw:pw + W] = x.transpose(1, 0, 2, 3)
    U = winograd_filters(w)
    per_row = 16 * (C + F) * N * tw * dt.itemsize
    rows = max(1, min(th, max(TUNING.wino_band_bytes // per_row, -(-TUNING.wino_min_tiles // (N * tw)))))
    rows = -(-th // -(-th // rows))                      # equal bands
    y = np.empty((N, F, 2 * th, 2 * tw), dt)
    yt = y.transpose(1, 0, 2, 3)                         # (F, N, ...) view, written in place
    rbuf = np.empty((4, C, N, rows, 2 * tw + 2), dt)
    vbuf = np.empty(16 * C * N * rows * tw, dt)
    mbuf = np.empty(16 * F * N * rows * tw, dt)
    for i0 in range(0, th, rows):
        R = min(rows, th - i0)
        P = N * R * tw
        V = vbuf[:16 * C * P].reshape(4, 4, C, N, R, tw)
        _winograd_input(xp[:, :, 2 * i0:2 * i0 + 2 * R + 2], rbuf[:, :, :, :R], V, R, tw)
        M = mbuf[:16 * F * P].reshape(16, F, P)
        np.matmul(U, V.reshape(16, C, P), out=M)         # 16 GEMMs, summing over the channels
        _winograd_output(M.reshape(4, 4, F, N, R, tw), yt[:, :, 2 * i0:2 * i0 + 2 * R])
    if b is not None:
        y += b[:, None, None]
    if (Ho, Wo) != (2 * th, 2 * tw):
        y = np.ascontiguousarray(y[:, :, :Ho, :Wo])
    return y


def _winograd_input(band, r, V, R, tw):
    """B^T d B of a band's tiles: rows first (into r (4, C, N, R, 2*tw + 2)), then columns -> V (4, 4, C, N, R, tw)."""
    d = [band[:, :, k:k + 2 * R:2] for k in range(4)]     # tile row i covers input rows 2i .. 2i+3
    np.subtract(d[0], d[2], out=r[0])
    np.add(d[1], d[2], out=r[1])
    np.subtract(d[2], d[1], out=r[2])
    np.subtract(d[1], d[3], out=r[3])
    for a in range(4):
        e = [r[a][..., k:k + 2 * tw:2] for k in range(4)]
        np.subtract(e[0], e[2], out=V[a, 0])
        np.add(e[1], e[2], out=V[a, 1])
        np.subtract(e[2], e[1], out=V[a, 2])
        np.subtract(e[1], e[3], out=V[a, 3])


def _winograd_output(M, ys):
    """A^T M A: M (4, 4, F, N, R, tw) -> the tiles' four output phases of ys (F, N, 2R, 2*tw)."""
    t0 = M[0] + M[1]
    t0 += M[2]
    t1 = M[1] - M[2]
    t1 -= M[3]
    for a, t in enumerate((t0, t1)):
        o = ys[:, :, a::2, 0::2]
        np.add(t[0], t[1], out=o)
        o += t[2]
        o = ys[:, :, a::2, 1::2]
        np.subtract(t[1], t[2], out=o)
        o -= t[3]
