"""Fixtures shared by several test files: the test networks of the projection tests (built once per
session; none of the tests runs a new forward pass on them): ``fmnist_net``, ``alexnet_net``,
``zfnet_net``, ``vgg16_net``; ``embedded_float64``; and ``out``, a command's output folder already holding a file of the
user's.

Under pytest-xdist (``make test`` runs the tests and the notebooks on one worker per core) each worker
is held to its own share of the cores before any test runs: its BLAS, its threads
(``zfcore.analysis.parallel``), torch and the notebook kernels it starts (which inherit the affinity)
then use that share, and two workers do not fight over the same cores."""
import os

import numpy as np
import pytest
from projcases import make


def pytest_configure(config):
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus, n = sorted(os.sched_getaffinity(0)), int(count)
    if n < 2 or len(cpus) < n:
        return
    mine = set(cpus[int(worker.removeprefix("gw")) % n::n])
    os.sched_setaffinity(0, mine)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(mine))           # read by torch and by the kernels' BLAS at start
    from threadpoolctl import threadpool_limits

    threadpool_limits(len(mine))                   # numpy's BLAS, loaded before the affinity was set


def _net_fixture(name):
    @pytest.fixture(scope="session", name=f"{name}_net")
    def fixture():
        return make(name)
    return fixture


fmnist_net, alexnet_net, zfnet_net, vgg16_net = (_net_fixture(n) for n in ("fmnist", "alexnet", "zfnet", "vgg16"))


@pytest.fixture
def out(tmp_path):
    """An output folder holding a file of the user's."""
    o = tmp_path / "out"
    o.mkdir()
    (o / "keep.txt").write_text("the user's file")
    return o


@pytest.fixture(scope="session")
def embedded_float64():
    """The embedded network in float64, for tests that split a scan into pieces (threads, Dask workers)
    and compare with one piece: a float32 GEMM may round an image's values differently with the number
    of images it multiplies at once (OpenBLAS's Haswell kernel does), which can flip a pooling switch at
    a near-tie. In float64 that is 2^29 times rarer, so the comparisons test the splitting and merging,
    not the BLAS."""
    from zfcore import models
    return models.load_model().astype(np.float64)
