"""Threads over the images of a batch, for the dataset-scale analyses (``analysis.predict``,
``analysis.scan_maxima``, ``analysis.top_k``).

numpy releases the GIL in its copies, reductions and matrix products, so T Python threads, each
running the network on its own share of the images with a one-thread BLAS, keep T cores busy in the
im2col copies, pools and maxima as well as in the GEMMs; one BLAS call with T threads parallelises the
GEMMs alone. The BLAS is held to one thread per caller with ``threadpoolctl`` (imported here, lazily,
and only when more than one thread is asked for); without it the work runs in the calling thread.
Each image is computed by the same code whatever the number of threads, but a GEMM over a piece of the
batch has fewer columns than one over the whole batch, and a BLAS may round an image's values in the
last bit differently with that size (OpenBLAS's Haswell kernel does; with a multi-threaded BLAS the
sums run in another order too). Results then agree to float rounding, and a pooling switch at a
near-tie may flip (tests/test_parallel.py compares on a float64 network).

``threads``: None (every core this process may use, when threadpoolctl is installed; else 1) or a
positive integer.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

from zfcore.errors import ArgumentError, is_int


def cores() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _limiter():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits


def resolve(threads) -> int:
    """The number of threads to use for ``threads`` (see the module docstring)."""
    if threads is None:
        return cores() if _limiter() is not None else 1
    if not is_int(threads) or threads < 1:
        raise ArgumentError(f"threads must be a positive integer or None, got {threads!r}")
    if threads > 1 and _limiter() is None:
        raise ArgumentError(f"threads={threads} needs the package threadpoolctl (to hold each thread's "
                            "BLAS to one thread): pip install threadpoolctl, or use one thread "
                            "(--threads 1 on the command line, threads=1 in Python)")
    return int(threads)


@contextlib.contextmanager
def one_blas_thread(threads: int):
    """While T > 1 threads run numpy, hold the BLAS to one thread each (nothing for T == 1)."""
    if threads <= 1:
        yield
        return
    with _limiter()(limits=1, user_api="blas"):
        yield


def split(n: int, parts: int) -> list:
    """(lo, hi) bounds of ``parts`` near-equal consecutive pieces of range(n), none empty."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def map_parts(fn, n: int, threads: int) -> list:
    """[fn(lo, hi) for the pieces of range(n)], the pieces run in ``threads`` threads (in order)."""
    pieces = split(n, threads)
    if len(pieces) == 1:
        return [fn(*pieces[0])]
    with one_blas_thread(len(pieces)), ThreadPoolExecutor(len(pieces)) as pool:
        return list(pool.map(lambda p: fn(*p), pieces))


def map_items(fn, items, threads: int) -> list:
    """[fn(item) for the items], in ``threads`` threads; the items are handed out in order and the
    results come back in order. A network is shared as it is: its forward passes return records of
    their own."""
    items = list(items)
    threads = max(1, min(threads, len(items)))
    if threads == 1:
        return [fn(item) for item in items]
    with one_blas_thread(threads), ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))
