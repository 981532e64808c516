"""Shared helpers of the ops tests (numpy only): hypothesis settings, strategies, tolerances, and
the kernels' test hook (``zfcore.core._tuning.tuning``) that forces small chunks or a given path."""
import contextlib

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from zfcore.core._tuning import tuning

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def hyp(n):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float64).tiny))


def chunk_bytes(n):
    """Force the fast convs and pools to split their work in bands/groups of images (n bytes per
    chunk; None: the defaults), through the kernels' test hook ``zfcore.core._tuning.tuning``."""
    if n is None:
        return contextlib.nullcontext()
    return tuning(chunk_bytes=n, pool_chunk_bytes=n, nhwc_chunk_bytes=n, min_cols=1)


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


def winograd_everywhere(band_bytes=None):
    """Send every 3x3 stride-1 conv through Winograd (it normally needs >= 256 channels), and
    optionally split it into bands of ``band_bytes`` (1: one tile row per band)."""
    if band_bytes is None:
        return tuning(winograd=True)
    return tuning(winograd=True, wino_band_bytes=band_bytes, wino_min_tiles=1)


@st.composite
def conv3x3_cases(draw):
    c = draw(conv_cases())
    c.update(K=(3, 3), s=(1, 1), H=max(c["H"], 3 - 2 * c["p"][0]), W=max(c["W"], 3 - 2 * c["p"][1]),
             C=draw(st.integers(1, 9)), F=draw(st.integers(1, 9)), band=draw(st.sampled_from([None, 1, 5000])))
    return c


X16 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
#   0  1  2  3
#   4  5  6  7
#   8  9 10 11
#  12 13 14 15
