"""Threads over the images of a batch (zfcore.analysis.parallel): scan_maxima and top_k give the same
images and positions with 2 or 3 threads as in one thread whose BLAS also runs one thread, the maxima
and predict to float64 rounding, the projections within 1e-6 of their largest magnitude (a GEMM may
round differently with the size of the piece it multiplies); the pieces cover the work once; a bad
thread count, or threads without threadpoolctl, is one clear error."""
import sys

import numpy as np
import pytest

from zfcore import analysis, data
from zfcore.analysis import parallel, topk
from zfcore.data import sources
from zfcore.errors import ArgumentError

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(scope="module")
def net(embedded_float64):
    return embedded_float64


@pytest.fixture(scope="module")
def images():
    return data.load_dataset("test", limit=600)[0]


def one_blas_thread():
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


@pytest.mark.parametrize("threads", [2, 3])
def test_predict_and_scan_maxima_do_not_depend_on_threads(net, images, threads):
    layers = ["conv1", "conv3", "conv5"]
    with one_blas_thread():
        ref_logits = analysis.predict(net, images, batch_size=250, threads=1)
        ref = analysis.scan_maxima(net, images, layers, batch_size=250, threads=1)
    logits = analysis.predict(net, images, batch_size=250, threads=threads)
    # every GEMM has as many columns as the piece has images, and OpenBLAS may then round differently in
    # the last bit: values agree to float64 rounding, the positions of the maxima exactly
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-6 * np.abs(ref_logits).max())
    np.testing.assert_array_equal(logits.argmax(1), ref_logits.argmax(1))
    got = analysis.scan_maxima(net, images, layers, batch_size=250, threads=threads)
    for name in layers:
        np.testing.assert_allclose(got[name][0], ref[name][0], rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_array_equal(got[name][1], ref[name][1], err_msg=name)
    assert (ref_logits.argmax(1) == data.load_dataset("test", limit=600)[1]).mean() > 0.85


def test_top_k_does_not_depend_on_threads(net):
    src = sources.TestSetSource(limit=600)
    feats = {"conv2": np.arange(0, 64, 7), "conv5": np.arange(0, 128, 9)}
    with one_blas_thread():
        ref = analysis.top_k(net, src, list(feats), k=5, features=feats, batch_size=200, threads=1)
    rec = net.forward(data.load_dataset("test", limit=1)[0])
    mine = rec.project("conv5", 3)
    got = analysis.top_k(net, src, list(feats), k=5, features=feats, batch_size=200, threads=2)
    np.testing.assert_array_equal(rec.project("conv5", 3), mine)     # as with one thread: the record is kept
    for name in feats:
        for f in ("features", "images", "positions", "boxes", "patches"):
            np.testing.assert_array_equal(getattr(got[name], f), getattr(ref[name], f), err_msg=f)
        np.testing.assert_allclose(got[name].values, ref[name].values, rtol=1e-12, atol=0)
        np.testing.assert_allclose(got[name].projections, ref[name].projections, rtol=0,
                                   atol=1e-6 * np.abs(ref[name].projections).max())


def test_pieces_cover_the_work_once():
    for n in (1, 2, 7, 500):
        for parts in (1, 2, 3, 16):
            pieces = parallel.split(n, parts)
            assert len(pieces) == min(n, parts) and pieces[0][0] == 0 and pieces[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
            assert all(hi > lo for lo, hi in pieces)
    ids = np.arange(2145)
    for size, threads in ((500, 1), (500, 2), (358, 3), (5000, 4)):
        pieces = topk.id_chunks(ids, size, threads)
        assert len(pieces) % threads == 0 and max(map(len, pieces)) <= size
        np.testing.assert_array_equal(np.concatenate(pieces), ids)
    assert topk.id_chunks(ids[:0], 10, 2) == []
    assert parallel.map_items(lambda x: x * x, range(7), 3) == [x * x for x in range(7)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts(bad):
    with pytest.raises(ArgumentError, match="threads must be a positive integer"):
        parallel.resolve(bad)


def test_without_threadpoolctl_one_thread(monkeypatch, net, images):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)           # import threadpoolctl -> ImportError
    assert parallel.resolve(None) == 1 and parallel.resolve(1) == 1
    with pytest.raises(ArgumentError, match="threads=2 needs the package threadpoolctl"):
        analysis.predict(net, images[:10], threads=2)
    assert analysis.predict(net, images[:10]).shape == (10, 10)
