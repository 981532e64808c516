"""zfcore.ops against independent references.

* torch.nn.functional (conv2d, conv_transpose2d, max_pool2d with indices, max_unpool2d, autograd
  of max-pool, linear, softmax), property-based over random shapes with hypothesis;
* torch-free identities: the adjoint identities <A x, y> == <x, A^T y> for conv/deconv and
  pool/unpool with fixed switches;
* the naive loop twins against the fast versions;
* small fixtures whose answers are written out by hand;
* every ValueError the API promises.

Relative error = max|a - b| / max(max|b|, tiny); float32 <= 1e-5, float64 <= 1e-10.
Hypothesis runs derandomized (reproducible in CI) with no deadline; the torch comparisons run
1,000 configurations per op, on small shapes.
"""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfcore import ops

torch.set_num_threads(1)

TOL = {np.float32: 1e-5, np.float64: 1e-10}
TORCH_DT = {np.float32: torch.float32, np.float64: torch.float64}


def hyp(n):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float64).tiny))


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@contextlib.contextmanager
def chunk_bytes(n):
    """Force the fast convs to split their work in bands/groups of images (n bytes per chunk)."""
    old = ops._CHUNK_BYTES, ops._POOL_CHUNK_BYTES, ops._MIN_COLS
    if n is not None:
        ops._CHUNK_BYTES = ops._POOL_CHUNK_BYTES = n
        ops._MIN_COLS = 1
    try:
        yield
    finally:
        ops._CHUNK_BYTES, ops._POOL_CHUNK_BYTES, ops._MIN_COLS = old


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------
dtypes = st.sampled_from([np.float32, np.float64])
# None: the default chunk (one chunk at these sizes); 1: one output row per chunk; 3000: a few rows
# or a few images per chunk
chunks = st.sampled_from([None, 1, 3000])


@st.composite
def conv_cases(draw):
    N, C, F = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, KH - 2 * ph), max(1, KH - 2 * ph) + 9))
    W = draw(st.integers(max(1, KW - 2 * pw), max(1, KW - 2 * pw) + 9))
    return dict(N=N, C=C, F=F, H=H, W=W, K=(KH, KW), s=(sh, sw), p=(ph, pw),
                dtype=draw(dtypes), seed=draw(st.integers(0, 2**32 - 1)), chunk=draw(chunks))


@st.composite
def pool_cases(draw, overlapping=None):
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if overlapping is False:
        sh, sw = draw(st.integers(KH, KH + 2)), draw(st.integers(KW, KW + 2))
        ph = pw = 0
    else:
        sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        ph, pw = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    H = draw(st.integers(max(1, KH - 2 * ph), max(1, KH - 2 * ph) + 9))
    W = draw(st.integers(max(1, KW - 2 * pw), max(1, KW - 2 * pw) + 9))
    return dict(N=N, C=C, H=H, W=W, K=(KH, KW), s=(sh, sw), p=(ph, pw),
                dtype=draw(dtypes), seed=draw(st.integers(0, 2**32 - 1)), chunk=draw(chunks))


def conv_inputs(c):
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(c["dtype"])
    w = rng.standard_normal((c["F"], c["C"]) + c["K"]).astype(c["dtype"])
    b = rng.standard_normal(c["F"]).astype(c["dtype"])
    return rng, x, w, b


def distinct_inputs(c):
    """Random input whose values are all distinct (no ties), so the max is unique."""
    rng = np.random.default_rng(c["seed"])
    shape = (c["N"], c["C"], c["H"], c["W"])
    x = rng.permutation(int(np.prod(shape))).reshape(shape) - 0.5 * np.prod(shape)
    return rng, (x / 7.0).astype(c["dtype"])


# ----------------------------------------------------------------------------------------------
# against torch (1,000 configurations per op)
# ----------------------------------------------------------------------------------------------
@hyp(1000)
@given(conv_cases())
def test_conv2d_matches_torch(c):
    _, x, w, b = conv_inputs(c)
    with chunk_bytes(c["chunk"]):
        y = ops.conv2d(x, w, b, stride=c["s"], padding=c["p"])
    ref = TF.conv2d(t(x), t(w), t(b), stride=c["s"], padding=c["p"]).numpy()
    assert y.dtype == c["dtype"] and y.shape == ref.shape
    assert rel_err(y, ref) <= TOL[c["dtype"]]


@hyp(1000)
@given(conv_cases(), st.data())
def test_conv_transpose2d_matches_torch(c, data):
    rng, x, w, _ = conv_inputs(c)
    (sh, sw), (ph, pw), (KH, KW) = c["s"], c["p"], c["K"]
    Ho = ops.conv_output_size(c["H"], KH, sh, ph)
    Wo = ops.conv_output_size(c["W"], KW, sw, pw)
    y = rng.standard_normal((c["N"], c["F"], Ho, Wo)).astype(c["dtype"])
    # every input size that maps to (Ho, Wo): output_padding 0 .. stride-1 (sizes >= 1)
    Hmin, Wmin = (Ho - 1) * sh - 2 * ph + KH, (Wo - 1) * sw - 2 * pw + KW
    oph = data.draw(st.integers(max(0, 1 - Hmin), sh - 1))
    opw = data.draw(st.integers(max(0, 1 - Wmin), sw - 1))
    size = (Hmin + oph, Wmin + opw)
    with chunk_bytes(c["chunk"]):
        x_rec = ops.conv_transpose2d(y, w, stride=c["s"], padding=c["p"], output_size=size)
    ref = TF.conv_transpose2d(t(y), t(w), stride=c["s"], padding=c["p"], output_padding=(oph, opw)).numpy()
    assert x_rec.dtype == c["dtype"] and x_rec.shape == ref.shape == (c["N"], c["C"]) + size
    assert rel_err(x_rec, ref) <= TOL[c["dtype"]]
    if oph == 0 and opw == 0:   # the default is the smallest size
        assert ops.conv_transpose2d(y, w, stride=c["s"], padding=c["p"]).shape == ref.shape


@hyp(1000)
@given(pool_cases())
def test_max_pool2d_matches_torch_values_and_switches(c):
    _, x = distinct_inputs(c)
    with chunk_bytes(c["chunk"]):
        y, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    ref_y, ref_s = TF.max_pool2d(t(x), c["K"], c["s"], c["p"], return_indices=True)
    assert y.dtype == c["dtype"] and s.dtype == np.int64
    np.testing.assert_array_equal(y, ref_y.numpy())
    np.testing.assert_array_equal(s, ref_s.numpy())


@hyp(1000)
@given(pool_cases())
def test_max_unpool2d_is_the_gradient_of_max_pool(c):
    """Overlapping windows and padding included: the gradient accumulates, so must unpool."""
    rng, x = distinct_inputs(c)
    xt = t(x).requires_grad_(True)
    yt, st_ = TF.max_pool2d(xt, c["K"], c["s"], c["p"], return_indices=True)
    g = rng.standard_normal(yt.shape).astype(c["dtype"])
    yt.backward(t(g))
    x_rec = ops.max_unpool2d(g, st_.numpy(), x.shape)
    assert x_rec.dtype == c["dtype"] and x_rec.shape == x.shape
    assert rel_err(x_rec, xt.grad.numpy()) <= TOL[c["dtype"]]


@hyp(300)
@given(pool_cases(overlapping=False))
def test_max_unpool2d_matches_torch_unpool_without_overlap(c):
    rng, x = distinct_inputs(c)
    y, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    g = rng.standard_normal(y.shape).astype(c["dtype"])
    ref = TF.max_unpool2d(t(g), t(s), c["K"], c["s"], c["p"], output_size=x.shape[2:]).numpy()
    np.testing.assert_array_equal(ops.max_unpool2d(g, s, x.shape[2:]), ref)


def test_unpool_differs_from_torch_where_windows_overlap():
    """PyTorch's max_unpool2d assigns (last write wins); ours adds, as the gradient does."""
    x = np.array([[[[0., 0., 0.], [0., 9., 0.], [0., 0., 0.]]]])
    y, s = ops.max_pool2d(x, 2, 1)                 # every 2x2 window picks the centre (index 4)
    assert (s == 4).all()
    g = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    ours = ops.max_unpool2d(g, s, x.shape)
    assert ours[0, 0, 1, 1] == 10.0 and ours.sum() == 10.0
    theirs = TF.max_unpool2d(t(g), t(s), 2, 1, output_size=(3, 3)).numpy()
    assert theirs[0, 0, 1, 1] != 10.0


# ----------------------------------------------------------------------------------------------
# adjoint identities (torch-free)
# ----------------------------------------------------------------------------------------------
@hyp(300)
@given(conv_cases(), st.data())
def test_conv_transpose2d_is_the_adjoint_of_conv2d(c, data):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for every valid input size."""
    rng = np.random.default_rng(c["seed"])
    (sh, sw), (ph, pw), (KH, KW) = c["s"], c["p"], c["K"]
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"]))
    w = rng.standard_normal((c["F"], c["C"], KH, KW))
    with chunk_bytes(c["chunk"]):
        Ax = ops.conv2d(x, w, stride=c["s"], padding=c["p"])
        y = rng.standard_normal(Ax.shape)
        ATy = ops.conv_transpose2d(y, w, stride=c["s"], padding=c["p"], output_size=x.shape[2:])
    lhs, rhs = np.vdot(Ax, y), np.vdot(x, ATy)
    assert abs(lhs - rhs) <= 1e-10 * (np.abs(Ax).sum() * np.abs(y).max() + 1e-300)


@hyp(300)
@given(pool_cases())
def test_max_unpool2d_is_the_adjoint_of_gathering_at_the_switches(c):
    """With the switches S fixed, pooling is the linear map x -> x.flat[S] (per plane);
    <gather(x, S), y> == <x, max_unpool2d(y, S)>, for any x, including overlapping windows."""
    rng, x0 = distinct_inputs(c)
    _, S = ops.max_pool2d(x0, c["K"], c["s"], c["p"])
    x = rng.standard_normal(x0.shape)
    y = rng.standard_normal(S.shape)
    N, C, H, W = x.shape
    gathered = np.take_along_axis(x.reshape(N, C, H * W), S.reshape(N, C, -1), axis=2).reshape(S.shape)
    lhs, rhs = np.vdot(gathered, y), np.vdot(x, ops.max_unpool2d(y, S, x.shape))
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(gathered).sum() * np.abs(y).max() + 1e-300)
    # and the values max_pool2d returns are exactly that gather
    y0, _ = ops.max_pool2d(x0, c["K"], c["s"], c["p"])
    g0 = np.take_along_axis(x0.reshape(N, C, H * W), S.reshape(N, C, -1), axis=2).reshape(S.shape)
    np.testing.assert_array_equal(y0, g0)


def test_linear_transpose_is_the_adjoint_of_linear():
    rng = np.random.default_rng(1)
    x, w, y = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal((5, 3))
    assert np.isclose(np.vdot(ops.linear(x, w), y), np.vdot(x, ops.linear_transpose(y, w)), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# fast versions against their naive loop twins
# ----------------------------------------------------------------------------------------------
@hyp(200)
@given(conv_cases())
def test_conv2d_fast_equals_naive(c):
    _, x, w, b = conv_inputs(c)
    with chunk_bytes(c["chunk"]):
        fast = ops.conv2d(x, w, b, c["s"], c["p"])
    naive = ops.conv2d_naive(x, w, b, c["s"], c["p"])
    assert naive.dtype == fast.dtype == c["dtype"]
    assert rel_err(fast, naive) <= TOL[c["dtype"]]


@hyp(200)
@given(conv_cases(), st.data())
def test_conv_transpose2d_fast_equals_naive(c, data):
    rng, x, w, _ = conv_inputs(c)
    y = ops.conv2d_naive(x, w, None, c["s"], c["p"])
    size = (c["H"], c["W"]) if data.draw(st.booleans()) else None
    with chunk_bytes(c["chunk"]):
        fast = ops.conv_transpose2d(y, w, c["s"], c["p"], output_size=size)
    naive = ops.conv_transpose2d_naive(y, w, c["s"], c["p"], output_size=size)
    assert naive.dtype == fast.dtype == c["dtype"]
    assert rel_err(fast, naive) <= TOL[c["dtype"]]


@hyp(200)
@given(pool_cases(), st.booleans())
def test_max_pool2d_fast_equals_naive(c, with_ties):
    rng, x = distinct_inputs(c)
    if with_ties:                       # few distinct values: many ties, first max must win
        x = rng.integers(0, 3, x.shape).astype(c["dtype"])
    with chunk_bytes(c["chunk"]):
        y, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    yn, sn = ops.max_pool2d_naive(x, c["K"], c["s"], c["p"])
    np.testing.assert_array_equal(y, yn)
    np.testing.assert_array_equal(s, sn)


@hyp(200)
@given(pool_cases())
def test_max_unpool2d_fast_equals_naive(c):
    rng, x = distinct_inputs(c)
    _, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    g = rng.standard_normal(s.shape).astype(c["dtype"])
    fast, naive = ops.max_unpool2d(g, s, x.shape), ops.max_unpool2d_naive(g, s, x.shape)
    assert fast.dtype == naive.dtype == c["dtype"]
    assert rel_err(fast, naive) <= TOL[c["dtype"]]


@pytest.mark.parametrize("as_conv", [False, True])
def test_conv_transpose2d_both_stride1_strategies(as_conv, monkeypatch):
    """Stride 1 runs either GEMM + col2im or a conv with flipped filters (chosen by a cost
    model): force each on cases that would otherwise take the other."""
    monkeypatch.setattr(ops, "_deconv_as_conv", lambda *a: as_conv)
    rng = np.random.default_rng(5)
    for (N, C, F, H, W, K, p) in [(2, 3, 5, 9, 7, 3, 1), (1, 4, 2, 6, 8, (3, 2), (2, 0)), (3, 2, 2, 5, 5, 1, 0),
                                 (1, 2, 3, 4, 6, 5, 2)]:
        KH, KW = (K, K) if isinstance(K, int) else K
        ph, pw = (p, p) if isinstance(p, int) else p
        w = rng.standard_normal((F, C, KH, KW)).astype(np.float32)
        y = rng.standard_normal((N, F, H + 2 * ph - KH + 1, W + 2 * pw - KW + 1)).astype(np.float32)
        ref = TF.conv_transpose2d(t(y), t(w), padding=(ph, pw)).numpy()
        assert rel_err(ops.conv_transpose2d(y, w, padding=(ph, pw)), ref) <= 1e-5


def test_chunking_covers_bands_and_groups_of_images():
    """A VGG-like layer forced through many row bands and through groups of images."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6, 13, 17)).astype(np.float32)
    w = rng.standard_normal((7, 6, 3, 3)).astype(np.float32)
    ref = TF.conv2d(t(x), t(w), padding=1).numpy()
    yref = rng.standard_normal(ref.shape).astype(np.float32)
    ref_t = TF.conv_transpose2d(t(yref), t(w), padding=1).numpy()
    row = (6 * 9 + 7) * 19 * 4           # bytes of one output row: (K + F) * Wp * itemsize
    for n in (1, 2 * row, 3 * row, 2 * 13 * row, 2**30):   # 1 row, 2 rows, 3 rows, 2 images, all
        with chunk_bytes(n):
            assert rel_err(ops.conv2d(x, w, padding=1), ref) <= 1e-5
            assert rel_err(ops.conv_transpose2d(yref, w, padding=1), ref_t) <= 1e-5
            assert rel_err(ops.conv2d(x, w, stride=2, padding=1),
                           TF.conv2d(t(x), t(w), stride=2, padding=1).numpy()) <= 1e-5


# ----------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3): conv2d's path for 3x3 stride-1 convs on many channels
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def winograd_everywhere(band_bytes=None):
    """Send every 3x3 stride-1 conv through Winograd (it normally needs >= 256 channels), and
    optionally split it into bands of ``band_bytes`` (1: one tile row per band)."""
    old = ops._winograd_pays, ops._WINO_BAND_BYTES, ops._WINO_MIN_TILES
    ops._winograd_pays = lambda C, F, positions: True
    if band_bytes is not None:
        ops._WINO_BAND_BYTES, ops._WINO_MIN_TILES = band_bytes, 1
    try:
        yield
    finally:
        ops._winograd_pays, ops._WINO_BAND_BYTES, ops._WINO_MIN_TILES = old


@st.composite
def conv3x3_cases(draw):
    c = draw(conv_cases())
    c.update(K=(3, 3), s=(1, 1), H=max(c["H"], 3 - 2 * c["p"][0]), W=max(c["W"], 3 - 2 * c["p"][1]),
             C=draw(st.integers(1, 9)), F=draw(st.integers(1, 9)), band=draw(st.sampled_from([None, 1, 5000])))
    return c


@hyp(1000)
@given(conv3x3_cases())
def test_conv2d_winograd_matches_torch(c):
    _, x, w, b = conv_inputs(c)
    ref = TF.conv2d(t(x), t(w), t(b), padding=c["p"]).numpy()
    with winograd_everywhere(c["band"]):
        y = ops.conv2d(x, w, b, padding=c["p"])
        y2 = ops.conv2d_winograd(x, w, None, padding=c["p"])
    assert y.dtype == c["dtype"] and y.shape == ref.shape and y.flags.c_contiguous
    assert rel_err(y, ref) <= TOL[c["dtype"]]
    assert rel_err(y2, ref - b[:, None, None]) <= TOL[c["dtype"]]


@pytest.mark.parametrize("C,F,H", [(128, 128, 112), (256, 256, 56), (512, 512, 28), (512, 512, 14),
                                   (128, 64, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_on_vgg16_sized_layers(C, F, H, dtype):
    """VGG16-sized layers on the path conv2d picks by itself (Winograd for 512 channels at 28x28 and
    14x14, im2col for the others), against torch, forward and transposed."""
    rng = np.random.default_rng(C + H)
    x = rng.standard_normal((1, C, H, H)).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    assert rel_err(ops.conv2d(x, w, b, padding=1), TF.conv2d(t(x), t(w), t(b), padding=1).numpy()) <= TOL[dtype]
    yr = rng.standard_normal((1, F, H, H)).astype(dtype)
    assert rel_err(ops.conv_transpose2d(yr, w, padding=1),
                   TF.conv_transpose2d(t(yr), t(w), padding=1).numpy()) <= TOL[dtype]


def test_winograd_filters_by_hand():
    """U = G g G^T for one filter, written out by hand from Lavin & Gray's G."""
    g = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3) - 3.0
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(ops.winograd_filters(g).reshape(4, 4), G @ g[0, 0] @ G.T, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="3x3"):
        ops.winograd_filters(np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match="3x3"):
        ops.conv2d_winograd(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2)))


# ----------------------------------------------------------------------------------------------
# ties: first maximum in scan order, exactly as torch
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 2, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 1))])
@pytest.mark.parametrize("fill", [0.0, -2.5])
def test_ties_pick_the_first_maximum_like_torch(kernel, stride, padding, fill):
    x = np.full((2, 3, 7, 8), fill, np.float32)        # every window is all ties
    x[0, 0, 3, 3] = fill + 1.0                          # and one window-crossing maximum
    for fn in (ops.max_pool2d, ops.max_pool2d_naive):
        y, s = fn(x, kernel, stride, padding)
        ry, rs = TF.max_pool2d(t(x), kernel, stride, padding, return_indices=True)
        np.testing.assert_array_equal(y, ry.numpy())
        np.testing.assert_array_equal(s, rs.numpy())


def test_tie_fixture_by_hand():
    # a 4x4 plane of zeros after ReLU, 2x2 pool: each window's switch is its top-left position
    _, s = ops.max_pool2d(np.zeros((1, 1, 4, 4)), 2)
    assert s[0, 0].tolist() == [[0, 2], [8, 10]]
    # padding 1, 3x3 stride 2 on zeros: the first *real* position of each window
    _, s = ops.max_pool2d(np.zeros((1, 1, 4, 4)), 3, 2, 1)
    assert s[0, 0].tolist() == [[0, 1], [4, 5]]


@hyp(300)
@given(pool_cases())
def test_max_pool2d_with_nan_and_infinities_matches_torch(c):
    """Sprinkled NaN (torch: a NaN wins, the last one of a window) and -inf (all -inf windows
    return their first real position, never a padding position)."""
    rng, x = distinct_inputs(c)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.3] = -np.inf
    with chunk_bytes(c["chunk"]):
        y, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    ref_y, ref_s = TF.max_pool2d(t(x), c["K"], c["s"], c["p"], return_indices=True)
    np.testing.assert_array_equal(y, ref_y.numpy())       # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(s, ref_s.numpy())


def test_pool_with_infinities_and_nan_like_torch():
    x = np.full((1, 1, 4, 5), -np.inf, np.float32)
    x[0, 0, 2, 3] = 1.0
    x[0, 0, 0, 4] = np.nan
    for args in [(2, 2, 0), (3, 2, 1), (2, 1, 1)]:
        y, s = ops.max_pool2d(x, *args)
        ry, rs = TF.max_pool2d(t(x), *args, return_indices=True)
        np.testing.assert_array_equal(y, ry.numpy())
        np.testing.assert_array_equal(s, rs.numpy())


# ----------------------------------------------------------------------------------------------
# hand-checked fixtures
# ----------------------------------------------------------------------------------------------
X16 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
#   0  1  2  3
#   4  5  6  7
#   8  9 10 11
#  12 13 14 15


@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.max_pool2d_naive])
def test_pool_fixture(pool):
    y, s = pool(X16, 2)
    assert y[0, 0].tolist() == [[5, 7], [13, 15]]
    assert s[0, 0].tolist() == [[5, 7], [13, 15]]           # value == its own flat index here
    y, s = pool(X16, 3, 1)                                   # overlapping 3x3 stride 1
    assert y[0, 0].tolist() == [[10, 11], [14, 15]] and s[0, 0].tolist() == [[10, 11], [14, 15]]
    y, s = pool(X16[:, :, ::-1, ::-1], 3, 2, 1)              # 15..0, padding 1: windows rows/cols {-1,0,1}, {1,2,3}
    assert y[0, 0].tolist() == [[15, 14], [11, 10]] and s[0, 0].tolist() == [[0, 1], [4, 5]]


@pytest.mark.parametrize("unpool", [ops.max_unpool2d, ops.max_unpool2d_naive])
def test_unpool_fixture(unpool):
    _, s = ops.max_pool2d(X16, 2)
    x = unpool(np.array([[[[1., 2.], [3., 4.]]]]), s, (4, 4))
    assert x[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0], [0, 3, 0, 4]]
    # overlapping 3x3/1: the four windows pick 10, 11, 14, 15; sharing a position adds up
    s = np.array([[[[10, 10], [10, 15]]]])
    x = unpool(np.array([[[[1., 2.], [3., 4.]]]]), s, (1, 1, 4, 4))
    assert x[0, 0, 2, 2] == 6.0 and x[0, 0, 3, 3] == 4.0 and x.sum() == 10.0


K3 = np.array([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]], np.float32).reshape(1, 1, 3, 3)  # Laplacian


@pytest.mark.parametrize("conv", [ops.conv2d, ops.conv2d_naive])
def test_conv_fixture(conv):
    # valid: centre pixels 5, 6, 9, 10; the Laplacian of a linear ramp is 0
    assert conv(X16, K3)[0, 0].tolist() == [[0, 0], [0, 0]]
    # padding 1: corner (0,0): 1 + 4 - 4*0 = 5; (0,1): 0 + 2 + 5 - 4*1 = 3; (3,3): 11 + 14 - 4*15 = -35
    y = conv(X16, K3, padding=1)[0, 0]
    assert y.tolist() == [[5, 3, 2, -3], [-3, 0, 0, -8], [-7, 0, 0, -12], [-27, -17, -18, -35]]
    # stride 2, box kernel, bias 1: 1 + window sums centred on (0,0): 0+1+4+5, (0,2): 1+2+3+5+6+7,
    # (2,0): 4+5+8+9+12+13, (2,2): 5+6+7+9+10+11+13+14+15
    y = conv(X16, np.ones((1, 1, 3, 3), np.float32), np.array([1.], np.float32), stride=2, padding=1)[0, 0]
    assert y.tolist() == [[1 + 10, 1 + 24], [1 + 51, 1 + 90]]


@pytest.mark.parametrize("deconv", [ops.conv_transpose2d, ops.conv_transpose2d_naive])
def test_conv_transpose_fixture(deconv):
    # one unit impulse in y puts a copy of the kernel back where its window was
    y = np.zeros((1, 1, 2, 2), np.float32)
    y[0, 0, 1, 0] = 1.0
    w = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    x = deconv(y, w)
    assert x.shape == (1, 1, 4, 4)
    assert x[0, 0].tolist() == [[0, 0, 0, 0], [1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 9, 0]]
    # stride 2 padding 1: y (2x2) -> 3x3 by default, 4x4 with output_size; windows overlap at row/col 1
    x = deconv(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 3, 3), np.float32), 2, 1)
    assert x[0, 0].tolist() == [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    x = deconv(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 3, 3), np.float32), 2, 1, output_size=(4, 4))
    assert x[0, 0].tolist() == [[1, 2, 1, 1], [2, 4, 2, 2], [1, 2, 1, 1], [1, 2, 1, 1]]


def test_relu_unrelu_and_classifier_pieces():
    x = np.array([[-1.5, 0.0, 2.0]], np.float32)
    assert ops.relu(x).tolist() == [[0, 0, 2]] and ops.relu(x).dtype == np.float32
    assert ops.unrelu(x).tolist() == [[0, 0, 2]]
    # unrelu depends only on its own argument: no mask from a forward pass
    assert ops.unrelu(-x).tolist() == [[1.5, 0, 0]]
    assert ops.flatten(np.zeros((2, 3, 4, 5))).shape == (2, 60)
    np.testing.assert_array_equal(ops.flatten(X16), X16.reshape(1, 16))
    z = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    p = ops.softmax(z)
    assert np.isfinite(p).all() and rel_err(p, torch.softmax(t(z), -1).numpy()) <= 1e-12
    assert rel_err(ops.softmax(z, axis=0), torch.softmax(t(z), 0).numpy()) <= 1e-12
    rng = np.random.default_rng(0)
    xi, w, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    assert rel_err(ops.linear(xi, w, b), TF.linear(t(xi), t(w), t(b)).numpy()) <= 1e-12
    assert rel_err(ops.linear(xi, w), TF.linear(t(xi), t(w)).numpy()) <= 1e-12
    yi = rng.standard_normal((4, 3))
    assert rel_err(ops.linear_transpose(yi, w), yi @ w) == 0.0


def test_dropout():
    x = np.ones((200, 100), np.float32)
    assert ops.dropout(x) is x and ops.dropout(x, 0.9, training=False) is x
    d = ops.dropout(x, 0.25, training=True, rng=0)
    assert d.dtype == np.float32
    kept = d != 0
    assert abs(kept.mean() - 0.75) < 0.02                        # 20,000 draws
    np.testing.assert_allclose(d[kept], 1 / 0.75, rtol=1e-6)     # inverted dropout: survivors scaled
    np.testing.assert_array_equal(d, ops.dropout(x, 0.25, training=True, rng=0))   # seeded
    assert (ops.dropout(x, 1.0, training=True) == 0).all()


# ----------------------------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------------------------
def test_dtypes():
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((1, 2, 5, 5))
    w64 = rng.standard_normal((3, 2, 3, 3))
    x32, w32 = x64.astype(np.float32), w64.astype(np.float32)
    assert ops.conv2d(x32, w32).dtype == np.float32
    assert ops.conv2d(x64, w64).dtype == np.float64
    assert ops.conv2d(x32, w64).dtype == np.float64                # mixed -> float64
    assert ops.conv2d(x64.astype(np.float16), w32).dtype == np.float32
    xi = np.arange(50).reshape(1, 2, 5, 5)
    assert ops.conv2d(xi, w32).dtype == np.float32                # integers -> float32
    assert rel_err(ops.conv2d(xi, w64), ops.conv2d(xi.astype(np.float64), w64)) == 0
    y, s = ops.max_pool2d(xi, 2)
    assert y.dtype == np.float32 and s.dtype == np.int64
    assert ops.conv_transpose2d(ops.conv2d(x32, w32), w32).dtype == np.float32
    assert ops.max_unpool2d(y.astype(np.float64), s, xi.shape).dtype == np.float64
    with pytest.raises(ValueError, match="real numeric"):
        ops.conv2d(x64.astype(np.complex128), w64)


# ----------------------------------------------------------------------------------------------
# bad input: one clear ValueError each
# ----------------------------------------------------------------------------------------------
_x = np.zeros((1, 2, 5, 5), np.float32)
_w = np.zeros((3, 2, 3, 3), np.float32)
_y, _s = ops.max_pool2d(np.arange(50, dtype=np.float32).reshape(1, 2, 5, 5), 2)

BAD = {
    "conv x ndim": (lambda: ops.conv2d(_x[0], _w), "4-D"),
    "conv w ndim": (lambda: ops.conv2d(_x, _w[0]), "4-D"),
    "conv channels": (lambda: ops.conv2d(_x, np.zeros((3, 4, 3, 3))), "channel mismatch"),
    "conv bias shape": (lambda: ops.conv2d(_x, _w, np.zeros(4)), "b must have shape"),
    "conv bias 2d": (lambda: ops.conv2d(_x, _w, np.zeros((3, 1))), "b must have shape"),
    "conv kernel too big": (lambda: ops.conv2d(_x, np.zeros((3, 2, 6, 3))), "larger than the padded"),
    "conv kernel too big w": (lambda: ops.conv2d(_x, np.zeros((3, 2, 3, 8)), padding=1), "larger than the padded"),
    "conv stride 0": (lambda: ops.conv2d(_x, _w, stride=0), "stride must be positive"),
    "conv stride -1": (lambda: ops.conv2d(_x, _w, stride=(1, -1)), "stride must be positive"),
    "conv padding": (lambda: ops.conv2d(_x, _w, padding=-1), "padding must be non-negative"),
    "conv stride type": (lambda: ops.conv2d(_x, _w, stride=1.5), "int or a pair"),
    "conv stride triple": (lambda: ops.conv2d(_x, _w, stride=(1, 1, 1)), "int or a pair"),
    "conv bool padding": (lambda: ops.conv2d(_x, _w, padding=True), "int or a pair"),
    "naive conv channels": (lambda: ops.conv2d_naive(_x, np.zeros((3, 4, 3, 3))), "channel mismatch"),
    "deconv y ndim": (lambda: ops.conv_transpose2d(np.zeros((3, 3, 3)), _w), "4-D"),
    "deconv channels": (lambda: ops.conv_transpose2d(np.zeros((1, 2, 3, 3)), _w), "channel mismatch"),
    "deconv stride": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, stride=0), "stride must be positive"),
    "deconv padding": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, padding=-2), "padding must be non-negative"),
    "deconv output_size small": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, 2, 1, output_size=(4, 5)), "out of range"),
    "deconv output_size big": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, 2, 1, output_size=(7, 5)), "out of range"),
    "deconv output_size stride 1": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, output_size=(6, 5)), "out of range"),
    "deconv output_size NC": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, output_size=(1, 3, 5, 5)), "does not match"),
    "deconv padding too big": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 1, 1)), _w, padding=2), "too large"),
    "deconv size < 1": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 1, 1)), _w, 3, 2, output_size=(0, 1)), "out of range"),
    "pool ndim": (lambda: ops.max_pool2d(_x[0], 2), "4-D"),
    "pool kernel too big": (lambda: ops.max_pool2d(_x, 6), "larger than the padded"),
    "pool kernel 0": (lambda: ops.max_pool2d(_x, 0), "kernel must be positive"),
    "pool stride 0": (lambda: ops.max_pool2d(_x, 2, 0), "stride must be positive"),
    "pool padding negative": (lambda: ops.max_pool2d(_x, 2, 2, -1), "padding must be non-negative"),
    "pool padding > kernel/2": (lambda: ops.max_pool2d(_x, 3, 2, 2), "at most half"),
    "pool padding > kernel/2 h only": (lambda: ops.max_pool2d(_x, 3, 2, (2, 0)), "at most half"),
    "pool padding > kernel/2 w only": (lambda: ops.max_pool2d(_x, 3, 2, (0, 2)), "at most half"),
    "pool padding > kernel/2 w": (lambda: ops.max_pool2d(_x, (4, 2), 2, (2, 2)), "at most half"),
    "naive pool padding": (lambda: ops.max_pool2d_naive(_x, 3, 2, 2), "at most half"),
    "unpool switches shape": (lambda: ops.max_unpool2d(_y, _s[:, :, :1], (5, 5)), "does not match y shape"),
    "unpool switches dtype": (lambda: ops.max_unpool2d(_y, _s.astype(np.float64), (5, 5)), "integer"),
    "unpool switch too big": (lambda: ops.max_unpool2d(_y, _s + 25, (5, 5)), "must lie in"),
    "unpool switch negative": (lambda: ops.max_unpool2d(_y, _s - 100, (5, 5)), "must lie in"),
    "unpool plane too small": (lambda: ops.max_unpool2d(_y, _s, (4, 4)), "must lie in"),
    "unpool input_shape NC": (lambda: ops.max_unpool2d(_y, _s, (1, 3, 5, 5)), "does not match"),
    "unpool input_shape len": (lambda: ops.max_unpool2d(_y, _s, (5,)), "input_shape"),
    "unpool y ndim": (lambda: ops.max_unpool2d(_y[0], _s[0], (5, 5)), "4-D"),
    "naive unpool switches": (lambda: ops.max_unpool2d_naive(_y, _s + 25, (5, 5)), "must lie in"),
    "linear ndim": (lambda: ops.linear(np.zeros(3), np.zeros((2, 3))), "2-D"),
    "linear features": (lambda: ops.linear(np.zeros((1, 3)), np.zeros((2, 4))), "feature mismatch"),
    "linear bias": (lambda: ops.linear(np.zeros((1, 3)), np.zeros((2, 3)), np.zeros(3)), "b must have shape"),
    "linear_transpose": (lambda: ops.linear_transpose(np.zeros((1, 3)), np.zeros((2, 4))), "feature mismatch"),
    "flatten ndim": (lambda: ops.flatten(np.zeros(3)), "at least 2"),
    "dropout p": (lambda: ops.dropout(_x, 1.5), "probability"),
    "output size": (lambda: ops.conv_output_size(4, 5), "larger than the padded"),
    "output size stride": (lambda: ops.conv_output_size(4, 3, 0), "stride must be positive"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    fn, msg = BAD[case]
    with pytest.raises(ValueError, match=msg):
        fn()


def test_output_size_formula():
    assert ops.conv_output_size(224, 3, 1, 1) == 224
    assert ops.conv_output_size(224, 7, 2, 1) == 110           # ZFNet conv1: 1 + (224 + 2 - 7)//2
    assert ops.conv_output_size(227, 11, 4, 0) == 55           # AlexNet conv1
    assert ops.conv_output_size(110, 3, 2, 0) == 54            # 3x3 stride 2 pool, floor mode
    assert ops.conv_output_size(5, 5) == 1


# ----------------------------------------------------------------------------------------------
# numpy only
# ----------------------------------------------------------------------------------------------
def test_importing_ops_does_not_import_torch():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, zfcore.ops as o; o.conv2d(o.np.zeros((1,1,3,3)), o.np.zeros((1,1,2,2)));"
            " bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'));"
            " print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
