"""zfcore.core.ops against torch.nn.functional (skipped where torch is not installed).

conv2d, conv_transpose2d, max_pool2d with indices, max_unpool2d, autograd of max-pool, linear,
softmax, Winograd; property-based over random shapes with hypothesis, 1,000 configurations per op on
small shapes (marked slow), plus VGG16-sized layers (slow). Tolerances as in test_ops.py.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcases import (TOL, chunk_bytes, conv3x3_cases, conv_cases, conv_inputs, distinct_inputs, hyp, pool_cases,
                     rel_err, winograd_everywhere)

from zfcore.core import ops

torch = pytest.importorskip("torch")
TF = torch.nn.functional
torch.set_num_threads(1)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------------------------
# against torch (1,000 configurations per op)
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@hyp(1000)
@given(conv_cases())
def test_conv2d_matches_torch(c):
    _, x, w, b = conv_inputs(c)
    with chunk_bytes(c["chunk"]):
        y = ops.conv2d(x, w, b, stride=c["s"], padding=c["p"])
    ref = TF.conv2d(t(x), t(w), t(b), stride=c["s"], padding=c["p"]).numpy()
    assert y.dtype == c["dtype"] and y.shape == ref.shape
    assert rel_err(y, ref) <= TOL[c["dtype"]]


@pytest.mark.slow
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


@pytest.mark.slow
@hyp(1000)
@given(pool_cases())
def test_max_pool2d_values_matches_torch(c):
    _, x = distinct_inputs(c)
    with chunk_bytes(c["chunk"]):
        y = ops.max_pool2d_values(x, c["K"], c["s"], c["p"])
    np.testing.assert_array_equal(y, TF.max_pool2d(t(x), c["K"], c["s"], c["p"]).numpy())


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_softmax_and_linear_match_torch():
    z = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    assert rel_err(ops.softmax(z), torch.softmax(t(z), -1).numpy()) <= 1e-12
    assert rel_err(ops.softmax(z, axis=0), torch.softmax(t(z), 0).numpy()) <= 1e-12
    rng = np.random.default_rng(0)
    xi, w, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    assert rel_err(ops.linear(xi, w, b), TF.linear(t(xi), t(w), t(b)).numpy()) <= 1e-12
    assert rel_err(ops.linear(xi, w), TF.linear(t(xi), t(w)).numpy()) <= 1e-12
