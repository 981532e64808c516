"""Top-k on dask.distributed (zfcore.analysis.distributed) against the single-process result (analysis.top_k): a
LocalCluster of 2 worker processes gives the same images, positions, boxes and patches, values to float64
rounding and projections within 1e-6. The network is float64 and the reference runs with one BLAS thread,
as the workers do: a float32 GEMM may round differently with the BLAS's threads and with the size of a
shard, so equality is defined for the same arithmetic. Skipped without dask."""
import multiprocessing
import os
import sys

import numpy as np
import pytest

from zfcore import analysis, models
from zfcore.data import sources
from zfcore.errors import ArgumentError, DataError, MissingDependencyError

FIELDS = ("features", "images", "positions", "values", "boxes", "patches")


@pytest.fixture(scope="module")
def net(embedded_float64):
    return embedded_float64


def single_process(net, src, layers, **kw):
    """analysis.top_k with one BLAS thread (the workers' arithmetic)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        return analysis.top_k(net, src, layers, **kw)


def assert_same(got, ref):
    for f in FIELDS:
        if f == "values":         # the workers' GEMMs see shards of other sizes: float64 rounding
            np.testing.assert_allclose(got.values, ref.values, rtol=1e-12, atol=0)
        else:
            np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    np.testing.assert_allclose(got.projections, ref.projections, rtol=0, atol=1e-6)


def test_without_dask_the_error_names_the_extra(net, monkeypatch):
    from zfcore.analysis import distributed
    monkeypatch.setitem(sys.modules, "distributed", None)                # import distributed -> ImportError
    with pytest.raises(MissingDependencyError, match=r"needs distributed.*pip install 'zfcore\[dask\]'"):
        distributed.top_k(net, np.zeros((2, 1, 28, 28), np.float32), "conv1", k=1, workers=1)


def test_shards_are_whole_batches():
    from zfcore.analysis import distributed
    assert distributed.shards(10, 3, 1, shard_size=6) == [(0, 6), (6, 10)]
    assert distributed.shards(1000, 150, 2) == [(i, min(i + 150, 1000)) for i in range(0, 1000, 150)]
    assert distributed.shards(10_000, 500, 2) == [(i, i + 500) for i in range(0, 10_000, 500)]
    assert distributed.shards(10_000, 100, 2) == [(i, min(i + 400, 10_000)) for i in range(0, 10_000, 400)]
    with pytest.raises(ArgumentError, match="shard_size 7 must be a multiple of batch_size 3"):
        distributed.shards(10, 3, 1, shard_size=7)


def test_local_cluster_equals_single_process(net):
    """workers=2 starts a LocalCluster (and shuts it down): 1,000 test images, conv1 and conv5, all
    32 + 128 features, k = 9, batches of 150 (not dividing N)."""
    pytest.importorskip("distributed")
    from zfcore.analysis import distributed
    src, layers = sources.TestSetSource(limit=1000), ["conv1", "conv5"]
    before = set(multiprocessing.active_children())
    got = distributed.top_k(net, src, layers, k=9, batch_size=150, workers=2, progress=None)
    assert set(multiprocessing.active_children()) <= before                 # the workers are gone
    ref = single_process(net, src, layers, k=9, batch_size=150)
    for layer in layers:
        assert_same(got[layer], ref[layer])


def test_local_cluster_shut_down_after_an_error(net, tmp_path):
    """A worker's DataError (a corrupt PNG) comes back as itself, and the cluster started for the call
    is gone afterwards."""
    pytest.importorskip("distributed")
    from PIL import Image

    from zfcore.analysis import distributed
    for i in range(4):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / f"i{i}.png")
    (tmp_path / "i2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    before = set(multiprocessing.active_children())
    with pytest.raises(DataError, match=r"i2.png: not a readable image"):
        distributed.top_k(net, sources.FolderSource(tmp_path, size=28, strict=True), "conv1", k=1, batch_size=2,
                          workers=1, progress=None)
    assert set(multiprocessing.active_children()) <= before


def test_open_client_blas_threads_tree_progress_and_errors(net, tmp_path, monkeypatch):
    """Through an open client: each worker runs one BLAS thread even when the parent's environment asks
    for two, and without distributed's MALLOC_TRIM_THRESHOLD_ (the parent's environment is left as it
    was); 7 shards merged in a tree; the progress
    callable sees every image; a corrupt file on a worker raises its DataError here."""
    pytest.importorskip("distributed")
    pytest.importorskip("threadpoolctl")
    from PIL import Image

    from zfcore.analysis import distributed
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with distributed.connect(workers=2) as client:
        assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and "MKL_NUM_THREADS" not in os.environ
        assert "MALLOC_TRIM_THRESHOLD_" not in os.environ                 # the nanny did not set it here
        envs = client.run(lambda: (os.environ.get("OPENBLAS_NUM_THREADS"), os.environ.get("MALLOC_TRIM_THRESHOLD_")))
        assert list(envs.values()) == [("1", None), ("1", None)]          # glibc's own trimming
        blas = client.run(distributed.blas_threads)                       # [(library, threads)]
        assert all(t and all(n == 1 for _, n in t) for t in blas.values()), blas
        src = sources.TestSetSource(limit=260)
        seen = []
        got = distributed.top_k(net, src, "conv3", k=5, features=[0, 3, 100], batch_size=40, shard_size=40,
                                client=client, progress=seen.append)
        assert sorted(seen) == sorted([40] * 6 + [20])
        assert_same(got, single_process(net, src, "conv3", k=5, features=[0, 3, 100], batch_size=40))
        x = (src.load(np.arange(6))[:, 0] * 255).astype(np.uint8)
        for i, a in enumerate(x):
            Image.fromarray(a).save(tmp_path / f"i{i}.png")
        (tmp_path / "i4.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        with pytest.raises(DataError, match=r"i4.png: not a readable image"):
            distributed.top_k(net, sources.FolderSource(tmp_path, size=28, strict=True), "conv1", k=2, batch_size=2,
                              client=client, progress=None)
        assert client.status == "running"                    # an open client stays open


def test_existing_scheduler(net):
    """scheduler=ADDRESS: a cluster started here (one worker thread in this process, so the same BLAS
    threads as this process)."""
    dist = pytest.importorskip("distributed")
    from zfcore.analysis import distributed
    src = sources.TestSetSource(limit=90)
    with dist.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        got = distributed.top_k(net, src, ["conv2", "conv4"], k=3, features=[1, 2], batch_size=25,
                                scheduler=cluster.scheduler_address, progress=None)
        assert list(cluster.scheduler.clients) == ["fire-and-forget"]    # our client is closed again
    ref = analysis.top_k(net, src, ["conv2", "conv4"], k=3, features=[1, 2], batch_size=25)
    for layer in ref:
        assert_same(got[layer], ref[layer])
    with pytest.raises(ArgumentError, match="scheduler notanaddress: cannot connect"):
        distributed.top_k(net, src, "conv1", k=1, scheduler="notanaddress")


def test_bad_arguments(net):
    pytest.importorskip("distributed")
    from zfcore.analysis import distributed
    x = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(ArgumentError, match="give one of workers, scheduler and client"):
        distributed.top_k(net, x, "conv1", k=1, workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ArgumentError, match="workers must be in 1..256, got 0"):
        distributed.top_k(net, x, "conv1", k=1, workers=0)
    with pytest.raises(ArgumentError, match="unknown layer 'conv9'"):
        distributed.top_k(net, x, "conv9", k=1, workers=1)
    bare = models.build(models.FMNIST_ZF)
    bare.spec = None
    with pytest.raises(ArgumentError, match="ships the network as its spec"):
        distributed.top_k(bare, x, "conv1", k=1, workers=1)
