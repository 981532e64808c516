"""zfcore.core.ops against torch-free references (runs with numpy, pytest and hypothesis alone).

* the adjoint identities <A x, y> == <x, A^T y> for conv/deconv, im2col/col2im and pool/unpool
  with fixed switches;
* the naive loop twins against the fast versions (every kernel path, forced where needed through
  the kernels' test hook ``zfcore.core._tuning.tuning``);
* small fixtures whose answers are written out by hand;
* every ArgumentError (a ZfcoreError, hence a ValueError) the API promises.
The comparisons with torch.nn.functional are in test_ops_torch.py.

Relative error = max|a - b| / max(max|b|, tiny); float32 <= 1e-5, float64 <= 1e-10.
Hypothesis runs derandomized (reproducible in CI) with no deadline.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcases import (TOL, X16, chunk_bytes, conv3x3_cases, conv_cases, conv_inputs, distinct_inputs, hyp,
                     pool_cases, rel_err, winograd_everywhere)

from zfcore.core import ops
from zfcore.core._tuning import tuning
from zfcore.errors import ArgumentError


# ----------------------------------------------------------------------------------------------
# adjoint identities (torch-free)
# ----------------------------------------------------------------------------------------------
@hyp(300)
@given(conv_cases(), st.data())
def test_conv_transpose2d_is_the_adjoint_of_conv2d(c, data):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for every valid input size."""
    rng = np.random.default_rng(c["seed"])
    KH, KW = c["K"]
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
@given(conv_cases(), st.sampled_from([None, True, False]))
def test_conv2d_fast_equals_naive(c, flat):
    _, x, w, b = conv_inputs(c)
    with chunk_bytes(c["chunk"]), tuning(flat=flat):     # both im2col layouts at stride 1
        fast = ops.conv2d(x, w, b, c["s"], c["p"])
    naive = ops.conv2d_naive(x, w, b, c["s"], c["p"])
    assert naive.dtype == fast.dtype == c["dtype"]
    assert rel_err(fast, naive) <= TOL[c["dtype"]]


@hyp(100)
@given(conv_cases(), pool_cases(), st.data())
def test_plain_paths_equal_naive(c, pc, data):
    """``TUNING.fast=False``: the bodies written out in ops (one im2col + GEMM, col2im of one GEMM, one
    scatter-add) give the loop twins' results."""
    _, x, w, b = conv_inputs(c)
    size = (c["H"], c["W"]) if data.draw(st.booleans()) else None
    with tuning(fast=False):
        y = ops.conv2d(x, w, b, c["s"], c["p"])
        back = ops.conv_transpose2d(y, w, c["s"], c["p"], output_size=size)
    assert y.dtype == back.dtype == c["dtype"]
    assert rel_err(y, ops.conv2d_naive(x, w, b, c["s"], c["p"])) <= TOL[c["dtype"]]
    assert rel_err(back, ops.conv_transpose2d_naive(y, w, c["s"], c["p"], output_size=size)) <= TOL[c["dtype"]]
    rng, xp = distinct_inputs(pc)
    _, sw = ops.max_pool2d(xp, pc["K"], pc["s"], pc["p"])
    g = rng.standard_normal(sw.shape).astype(pc["dtype"])
    with tuning(fast=False):
        un = ops.max_unpool2d(g, sw, xp.shape, window=(pc["K"], pc["s"]))
    assert un.dtype == pc["dtype"] and rel_err(un, ops.max_unpool2d_naive(g, sw, xp.shape)) <= TOL[pc["dtype"]]


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
@given(pool_cases(), st.booleans(), st.sampled_from([1, 8, 100]))
def test_max_pool2d_values_equals_the_pool_with_switches(c, with_ties, t_width):
    """The inference pool (separable, no padded copy; planes last below ``pool_t_width`` output
    columns) gives exactly the values of the pool with switches."""
    rng, x = distinct_inputs(c)
    if with_ties:
        x = rng.integers(0, 3, x.shape).astype(c["dtype"])
    with chunk_bytes(c["chunk"]), tuning(pool_t_width=t_width):
        y = ops.max_pool2d_values(x, c["K"], c["s"], c["p"])
    assert y.dtype == c["dtype"]
    np.testing.assert_array_equal(y, ops.max_pool2d_naive(x, c["K"], c["s"], c["p"])[0])


@hyp(200)
@given(conv_cases())
def test_conv2d_nhwc_equals_naive(c):
    """The channels-last conv of inference (one run of KW*C values per kernel row) against the loop
    twin, any stride and padding, in chunks of rows or of images."""
    _, x, w, b = conv_inputs(c)
    with chunk_bytes(c["chunk"]):
        fast = ops.conv2d_nhwc(x.transpose(0, 2, 3, 1), w, b if c["seed"] % 2 else None, c["s"], c["p"])
    naive = ops.conv2d_naive(x, w, b if c["seed"] % 2 else None, c["s"], c["p"])
    assert fast.dtype == c["dtype"] and fast.shape == naive.transpose(0, 2, 3, 1).shape
    assert rel_err(fast.transpose(0, 3, 1, 2), naive) <= TOL[c["dtype"]]


@hyp(200)
@given(pool_cases(), st.booleans())
def test_max_pool2d_values_nhwc_equals_naive(c, with_ties):
    rng, x = distinct_inputs(c)
    if with_ties:
        x = rng.integers(0, 3, x.shape).astype(c["dtype"])
    with chunk_bytes(c["chunk"]):
        y = ops.max_pool2d_values_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), c["K"], c["s"], c["p"])
    assert y.dtype == c["dtype"]
    np.testing.assert_array_equal(y.transpose(0, 3, 1, 2), ops.max_pool2d_naive(x, c["K"], c["s"], c["p"])[0])


def test_channels_last_ops_check_their_input():
    x = np.zeros((2, 5, 6, 3), np.float32)                    # (N, H, W, C) with C = 3
    with pytest.raises(ArgumentError, match="channel mismatch"):
        ops.conv2d_nhwc(x, np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(ArgumentError, match="4-D"):
        ops.conv2d_nhwc(x[0], np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(ArgumentError, match="padding"):
        ops.max_pool2d_values_nhwc(x, 2, 2, 2)


@hyp(200)
@given(pool_cases())
def test_max_unpool2d_fast_equals_naive(c):
    rng, x = distinct_inputs(c)
    _, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    g = rng.standard_normal(s.shape).astype(c["dtype"])
    fast, naive = ops.max_unpool2d(g, s, x.shape), ops.max_unpool2d_naive(g, s, x.shape)
    assert fast.dtype == naive.dtype == c["dtype"]
    assert rel_err(fast, naive) <= TOL[c["dtype"]]


@hyp(200)
@given(pool_cases())
def test_max_unpool2d_by_window_classes_equals_naive(c):
    """window=(kernel, stride): the scatter by classes of outputs with disjoint windows (one class for
    non-overlapping pools, up to ceil(K/s)^2 with overlaps) equals the loop twin."""
    rng, x = distinct_inputs(c)
    _, s = ops.max_pool2d(x, c["K"], c["s"], c["p"])
    g = rng.standard_normal(s.shape).astype(c["dtype"])
    fast = ops.max_unpool2d(g, s, x.shape, window=(c["K"], c["s"]))
    naive = ops.max_unpool2d_naive(g, s, x.shape)
    assert fast.dtype == naive.dtype == c["dtype"]
    assert rel_err(fast, naive) <= TOL[c["dtype"]]


def test_max_unpool2d_window_fixture():
    """Overlapping 3x3 stride-2 windows, by hand: outputs (0, 0) and (0, 1) share column 2, so their
    switches may coincide; the classes (0, 0) and (0, 1) add them."""
    s = np.array([[[[2, 2], [12, 24]]]])                 # 5x5 plane: (0, 2) twice, (2, 2), (4, 4)
    y = np.array([[[[1., 2.], [3., 4.]]]])
    x = ops.max_unpool2d(y, s, (5, 5), window=(3, 2))
    assert x[0, 0, 0, 2] == 3.0 and x[0, 0, 2, 2] == 3.0 and x[0, 0, 4, 4] == 4.0 and x.sum() == 10.0
    np.testing.assert_array_equal(x, ops.max_unpool2d(y, s, (5, 5)))


@pytest.mark.parametrize("window, match", [((2,), "kernel, stride"), (3, "kernel, stride"),
                                           ((0, 2), r"window kernel must be >= 1, got 0"),
                                           ((2, (1, 0)), r"window stride must be >= 1, got \(1, 0\)"),
                                           ((2.5, 2), "window kernel")])
def test_max_unpool2d_window_is_checked(window, match):
    y, s = ops.max_pool2d(np.arange(16.).reshape(1, 1, 4, 4), 2)
    with pytest.raises(ArgumentError, match=match):
        ops.max_unpool2d(y, s, (4, 4), window=window)


@pytest.mark.parametrize("as_conv", [False, True])
def test_conv_transpose2d_both_stride1_strategies(as_conv):
    """Stride 1 runs either GEMM + col2im or a conv with flipped filters (chosen by a cost
    model): force each on cases that would otherwise take the other; the loop twin is the reference."""
    rng = np.random.default_rng(5)
    for (N, C, F, H, W, K, p) in [(2, 3, 5, 9, 7, 3, 1), (1, 4, 2, 6, 8, (3, 2), (2, 0)), (3, 2, 2, 5, 5, 1, 0),
                                 (1, 2, 3, 4, 6, 5, 2)]:
        KH, KW = (K, K) if isinstance(K, int) else K
        ph, pw = (p, p) if isinstance(p, int) else p
        w = rng.standard_normal((F, C, KH, KW)).astype(np.float32)
        y = rng.standard_normal((N, F, H + 2 * ph - KH + 1, W + 2 * pw - KW + 1)).astype(np.float32)
        ref = ops.conv_transpose2d_naive(y, w, padding=(ph, pw))
        with tuning(deconv_as_conv=as_conv):
            assert rel_err(ops.conv_transpose2d(y, w, padding=(ph, pw)), ref) <= 1e-5


def test_chunking_covers_bands_and_groups_of_images():
    """A VGG-like layer forced through many row bands and through groups of images."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6, 13, 17)).astype(np.float32)
    w = rng.standard_normal((7, 6, 3, 3)).astype(np.float32)
    ref = ops.conv2d_naive(x, w, padding=1)
    ref2 = ops.conv2d_naive(x, w, stride=2, padding=1)
    yref = rng.standard_normal(ref.shape).astype(np.float32)
    ref_t = ops.conv_transpose2d_naive(yref, w, padding=1)
    row = (6 * 9 + 7) * 19 * 4           # bytes of one output row: (K + F) * Wp * itemsize
    for n in (1, 2 * row, 3 * row, 2 * 13 * row, 2**30):   # 1 row, 2 rows, 3 rows, 2 images, all
        with chunk_bytes(n):
            assert rel_err(ops.conv2d(x, w, padding=1), ref) <= 1e-5
            assert rel_err(ops.conv_transpose2d(yref, w, padding=1), ref_t) <= 1e-5
            assert rel_err(ops.conv2d(x, w, stride=2, padding=1), ref2) <= 1e-5


# ----------------------------------------------------------------------------------------------
# im2col and col2im
# ----------------------------------------------------------------------------------------------
@hyp(200)
@given(conv_cases())
def test_im2col_gemm_is_the_naive_conv_and_col2im_its_adjoint(c):
    """w @ im2col(x) reshaped == conv2d_naive(x, w); <im2col(x), Y> == <x, col2im(Y)>."""
    rng, x, w, _ = conv_inputs(c)
    cols = ops.im2col(x, c["K"], c["s"], c["p"])
    ref = ops.conv2d_naive(x, w, None, c["s"], c["p"])
    N, F, Ho, Wo = ref.shape
    assert cols.shape == (c["C"] * c["K"][0] * c["K"][1], N * Ho * Wo) and cols.dtype == c["dtype"]
    y = (w.reshape(F, -1) @ cols).reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)
    assert rel_err(y, ref) <= TOL[c["dtype"]]
    Y = rng.standard_normal(cols.shape)
    back = ops.col2im(Y, x.shape, c["K"], c["s"], c["p"])
    assert back.shape == x.shape
    x64 = x.astype(np.float64)
    lhs, rhs = np.vdot(ops.im2col(x64, c["K"], c["s"], c["p"]), Y), np.vdot(x64, back)
    assert abs(lhs - rhs) <= 1e-10 * (np.abs(cols).sum() * np.abs(Y).max() + 1e-300)


def test_im2col_col2im_by_hand():
    """X16 (values 0..15), 2x2 windows at stride 2: each column is one window, row-major."""
    cols = ops.im2col(X16, 2, 2)
    assert cols.tolist() == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]
    # 3x3 windows, padding 1, stride 2 on ones: col2im counts how many windows cover each pixel
    ones = ops.im2col(np.ones((1, 1, 4, 4)), 3, 2, 1)
    assert ops.col2im(ones, (1, 1, 4, 4), 3, 2, 1)[0, 0].tolist() == [[1, 2, 1, 1], [2, 4, 2, 2],
                                                                     [1, 2, 1, 1], [1, 2, 1, 1]]
    with pytest.raises(ArgumentError, match="cols must have shape"):
        ops.col2im(np.zeros((4, 3)), (1, 1, 4, 4), 2, 2)


# ----------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3): conv2d's path for 3x3 stride-1 convs on many channels
# ----------------------------------------------------------------------------------------------
@hyp(200)
@given(conv3x3_cases())
def test_conv2d_winograd_equals_naive(c):
    """Winograd forced on small 3x3 stride-1 convs (and split into bands) against the loop twin."""
    _, x, w, b = conv_inputs(c)
    ref = ops.conv2d_naive(x, w, b, padding=c["p"])
    with winograd_everywhere(c["band"]):
        y = ops.conv2d(x, w, b, padding=c["p"])
    assert y.dtype == c["dtype"] and y.shape == ref.shape and y.flags.c_contiguous
    assert rel_err(y, ref) <= TOL[c["dtype"]]
    assert rel_err(ops.conv2d_winograd(x, w, b, padding=c["p"]), ref) <= TOL[c["dtype"]]


def test_winograd_filters_by_hand():
    """U = G g G^T for one filter, written out by hand from Lavin & Gray's G."""
    g = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3) - 3.0
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(ops.winograd_filters(g).reshape(4, 4), G @ g[0, 0] @ G.T, rtol=0, atol=1e-15)
    with pytest.raises(ArgumentError, match="3x3"):
        ops.winograd_filters(np.zeros((1, 1, 5, 5)))
    with pytest.raises(ArgumentError, match="3x3"):
        ops.conv2d_winograd(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2)))


def test_tie_fixture_by_hand():
    # a 4x4 plane of zeros after ReLU, 2x2 pool: each window's switch is its top-left position
    _, s = ops.max_pool2d(np.zeros((1, 1, 4, 4)), 2)
    assert s[0, 0].tolist() == [[0, 2], [8, 10]]
    # padding 1, 3x3 stride 2 on zeros: the first *real* position of each window
    _, s = ops.max_pool2d(np.zeros((1, 1, 4, 4)), 3, 2, 1)
    assert s[0, 0].tolist() == [[0, 1], [4, 5]]


# ----------------------------------------------------------------------------------------------
# hand-checked fixtures
# ----------------------------------------------------------------------------------------------
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
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(p[0], np.exp([-2.0, -1.0, 0.0]) / np.exp([-2.0, -1.0, 0.0]).sum(), rtol=1e-15)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 6))
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
    with pytest.raises(ArgumentError, match="real numeric"):
        ops.conv2d(x64.astype(np.complex128), w64)


# ----------------------------------------------------------------------------------------------
# bad input: one clear ArgumentError (a ZfcoreError, hence a ValueError) each
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
    "conv stride 0": (lambda: ops.conv2d(_x, _w, stride=0), "stride must be >= 1, got 0"),
    "conv stride -1": (lambda: ops.conv2d(_x, _w, stride=(1, -1)), r"stride must be >= 1, got \(1, -1\)"),
    "conv padding": (lambda: ops.conv2d(_x, _w, padding=-1), "padding must be >= 0, got -1"),
    "conv stride type": (lambda: ops.conv2d(_x, _w, stride=1.5), "integer or a pair"),
    "conv stride triple": (lambda: ops.conv2d(_x, _w, stride=(1, 1, 1)), "integer or a pair"),
    "conv bool padding": (lambda: ops.conv2d(_x, _w, padding=True), "integer or a pair"),
    "naive conv channels": (lambda: ops.conv2d_naive(_x, np.zeros((3, 4, 3, 3))), "channel mismatch"),
    "deconv y ndim": (lambda: ops.conv_transpose2d(np.zeros((3, 3, 3)), _w), "4-D"),
    "deconv channels": (lambda: ops.conv_transpose2d(np.zeros((1, 2, 3, 3)), _w), "channel mismatch"),
    "deconv stride": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, stride=0), "stride must be >= 1, got 0"),
    "deconv padding": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, padding=-2), "padding must be >= 0, got -2"),
    "deconv output_size small": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, 2, 1, output_size=(4, 5)), "out of range"),
    "deconv output_size big": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, 2, 1, output_size=(7, 5)), "out of range"),
    "deconv output_size stride 1": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, output_size=(6, 5)), "out of range"),
    "deconv output_size NC": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), _w, output_size=(1, 3, 5, 5)), "does not match"),
    "deconv padding too big": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 1, 1)), _w, padding=2), "too large"),
    "deconv size < 1": (lambda: ops.conv_transpose2d(np.zeros((1, 3, 1, 1)), _w, 3, 2, output_size=(0, 1)), "out of range"),
    "pool ndim": (lambda: ops.max_pool2d(_x[0], 2), "4-D"),
    "pool kernel too big": (lambda: ops.max_pool2d(_x, 6), "larger than the padded"),
    "pool kernel 0": (lambda: ops.max_pool2d(_x, 0), "kernel must be >= 1, got 0"),
    "pool stride 0": (lambda: ops.max_pool2d(_x, 2, 0), "stride must be >= 1, got 0"),
    "pool padding negative": (lambda: ops.max_pool2d(_x, 2, 2, -1), "padding must be >= 0, got -1"),
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
    "output size stride": (lambda: ops.conv_output_size(4, 3, 0), "stride must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_argument_error(case):
    fn, msg = BAD[case]
    with pytest.raises(ArgumentError, match=msg):
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
    code = ("import sys, zfcore.core.ops as o; o.conv2d(o.np.zeros((1,1,3,3)), o.np.zeros((1,1,2,2)));"
            " bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'));"
            " print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
