"""Top-k (``zfcore.analysis.topk``) on ``dask.distributed``: the same computation and the same result, spread
over worker processes.

    from zfcore.analysis import distributed
    from zfcore.data import sources
    tops = distributed.top_k(net, sources.TestSetSource(), ["conv1", "conv5"], k=9, workers=2)
    tops = distributed.top_k(net, src, "conv5", scheduler="tcp://10.0.0.1:8786")   # an existing cluster

1. The network (spec and parameters) and the image source are scattered to every worker once; each
   worker process builds the network on first use and keeps it (one per thread).
2. The ids are cut into shards (whole batches, so every batch is the one a single process would run);
   each shard is scanned on a worker into per-feature ``topk.TopState`` s, and the states are merged
   pairwise in a tree (``topk.merge_all`` tasks) into one state per layer.
3. The winning images are cut into chunks; each task loads its images, runs them forward once and
   projects its entries (``topk.project_winners``); the client assembles the ``topk.TopK`` s.

``workers=N`` starts a ``LocalCluster`` of N processes with one thread each and one BLAS thread each
(OPENBLAS/OMP/MKL_NUM_THREADS=1 in the workers' environment, whatever the parent's environment says),
and shuts it down at the end, also on error. dask and distributed are imported here only, inside the
functions: ``pip install 'zfcore[dask]'``.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import uuid

from zfcore.analysis import topk
from zfcore.errors import ArgumentError, check_count, require

BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CONNECT_TIMEOUT = 20             # seconds to reach a scheduler
_NETS: dict = {}                 # in each worker process: (token, thread id) -> Network
_LOCK = threading.Lock()


def _distributed():
    return require("distributed", "dask", "top-k on Dask")


@contextlib.contextmanager
def _blas_env_one():
    """Set the BLAS thread counts to 1 in this process's environment while worker processes are
    spawned (distributed's nanny copies ``os.environ`` values over its own pre-spawn defaults), and
    restore them afterwards."""
    old = {v: os.environ.get(v) for v in BLAS_VARS}
    os.environ.update({v: "1" for v in BLAS_VARS})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, client=None):
    """A ``distributed.Client``: ``client`` itself if given (left open); one connected to
    ``scheduler`` (an address such as "tcp://host:8786"; closed at the end); or one on a new
    ``LocalCluster`` of ``workers`` processes (default: the machine's cores), one thread and one BLAS
    thread each, shut down at the end, also on error."""
    dist = _distributed()
    if sum(v is not None for v in (workers, scheduler, client)) > 1:
        raise ArgumentError("give one of workers, scheduler and client")
    if client is not None:
        yield client
        return
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise ArgumentError(f"scheduler must be an address such as 'tcp://host:8786', got {scheduler!r}")
        try:
            c = dist.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError, TypeError) as e:     # refused, timed out, not an address
            raise ArgumentError(f"scheduler {scheduler}: cannot connect ({e})") from None
        with contextlib.closing(c):
            yield c
        return
    n = (os.cpu_count() or 1) if workers is None else check_count(workers, "workers", 1, 256)
    # distributed's nanny spawns workers with MALLOC_TRIM_THRESHOLD_=65536, so glibc hands every freed
    # batch of activations back to the kernel and the next batch faults its pages in again (4.4x the
    # page faults and 6-9% slower scans in an ad-hoc measurement, docs/design.md "Measurements behind the
    # thresholds"); unset it (None) for the workers we start, unless the calling environment sets it
    import dask

    with _blas_env_one(), dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = dist.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
    try:
        with contextlib.closing(dist.Client(cluster)) as c:
            yield c
    finally:
        cluster.close()


# --- the tasks (run on the workers) -------------------------------------------------------------------
def _net(shipped):
    """The network of ``shipped`` = (token, spec, params, dtype), built once per worker thread."""
    token, spec, params, dtype = shipped
    key = (token, threading.get_ident())
    with _LOCK:
        net = _NETS.get(key)
    if net is None:
        from zfcore.models.specs import build

        net = build(spec, params, dtype=dtype)
        with _LOCK:
            for old in [k for k in _NETS if k[0] != token]:     # keep the current network only
                del _NETS[old]
            _NETS[key] = net
    return net


def _scan_task(shipped, source, lo, hi, layers, features, k, batch_size):
    return topk.scan(_net(shipped), source, layers, features, k, batch_size, start=lo, stop=hi)


def _project_task(shipped, source, states, features, ids, rule):
    return topk.project_winners(_net(shipped), source, states, features, ids, rule)


def _skipped_here(dask_worker, key) -> dict:
    """The entries the worker's copy of the shipped source skipped (a folder's unreadable files)."""
    return dict(getattr(dask_worker.data.get(key), "skipped", None) or {})


def blas_threads() -> list:
    """The BLAS libraries this process has loaded and their thread counts (threadpoolctl; [] without it)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [(d.get("internal_api"), d.get("num_threads")) for d in threadpool_info()
            if d.get("user_api") == "blas"]


# --- the client side ----------------------------------------------------------------------------------
def shards(n: int, batch_size: int, n_workers: int, shard_size: int | None = None) -> list:
    """(lo, hi) id ranges covering 0..n-1; each a whole number of batches, so that every batch is the one
    a single process would run. Default: one batch per shard, or as many as make about 16 shards per
    worker (small shards keep the workers evenly loaded; each costs only a state of F*k entries)."""
    if shard_size is None:
        shard_size = batch_size * max(1, math.ceil(n / (batch_size * max(n_workers, 1) * 16)))
    shard_size = check_count(shard_size, "shard_size", 1)
    if shard_size % batch_size:
        raise ArgumentError(f"shard_size {shard_size} must be a multiple of batch_size {batch_size}")
    return [(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]


def _tree_merge(client, futures):
    """Merge futures of state dicts pairwise, level by level, into one future."""
    while len(futures) > 1:
        nxt = [client.submit(topk.merge_all, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
        futures = nxt + (futures[-1:] if len(futures) % 2 else [])
    return futures[0]


def _check_spec(net):
    if net.spec is None:
        raise ArgumentError("distributed.top_k ships the network as its spec and parameters: build it "
                            "with zfcore.models.build / load_model")


def ship(client, net, source):
    """Scatter the network (a fresh token, its spec and parameters) and the source to every worker:
    (network future, source future)."""
    _check_spec(net)
    shipped = client.scatter([(uuid.uuid4().hex, net.spec, net.params, net.dtype)], broadcast=True)[0]
    return shipped, client.scatter([source], broadcast=True)[0]


def scan(client, shipped, source, n: int, layers, features, k: int, batch_size: int,
         shard_size: int | None = None, progress=None) -> dict:
    """Pass 1 on the workers: the ``n`` images of the shipped ``source`` in shards (``shards``), each
    scanned by a task, the states merged in a tree. Returns dict layer -> ``topk.TopState``."""
    dist = _distributed()
    n_workers = len(client.scheduler_info().get("workers", {}))
    spans = shards(n, batch_size, n_workers, shard_size)
    futs = [client.submit(_scan_task, shipped, source, lo, hi, layers, features, k, batch_size, pure=False)
            for lo, hi in spans]
    total = _tree_merge(client, futs)
    step, close = topk.progress_steps(progress, n, "scan")
    try:
        if step is not None:
            size = {f.key: hi - lo for f, (lo, hi) in zip(futs, spans)}
            for f in dist.as_completed(futs):
                f.result()                       # raises a worker's error here
                step(size[f.key])
        return total.result()
    finally:
        close()


def top_k(net, source, layers, k: int = 9, features=None, batch_size: int | None = None,
          rule: str = "deconvnet", workers: int | None = None, scheduler: str | None = None, client=None,
          shard_size: int | None = None, progress=True):
    """``topk.top_k`` on Dask: same arguments and the same result (images, positions, values, boxes
    and patches identical; projections to rounding). Runs on a new ``LocalCluster`` of ``workers``
    processes (default: one per core), on the cluster of ``scheduler`` (an address), or through an
    open ``client``. ``shard_size``: images per scan task (a multiple of the batch size; default: see
    ``shards``). ``progress``: True (a tqdm bar of the images scanned), None or a callable."""
    _distributed()
    source = topk.as_source(source)
    _check_spec(net)                             # before any cluster starts
    names, feats, batch_size, k = topk.plan(net, source, layers, k, features, batch_size, rule)
    with connect(workers, scheduler, client) as c:
        shipped, src = ship(c, net, source)
        states = scan(c, shipped, src, len(source), names, feats, k, batch_size, shard_size, progress)
        if isinstance(getattr(source, "skipped", None), dict):        # skipped on the workers: counted here
            for found in c.run(_skipped_here, key=src.key).values():
                for path, why in found.items():
                    source.skipped.setdefault(path, why)
        st = c.scatter([states], broadcast=True)[0]
        n_workers = max(1, len(c.scheduler_info().get("workers", {})))    # as many chunks as a multiple
        futs = [c.submit(_project_task, shipped, src, st, feats, ids, rule, pure=False)   # of the workers
                for ids in topk.id_chunks(topk.winners(states), batch_size, n_workers)]
        parts = c.gather(futs)
    tops = topk.assemble(net, source, states, feats, parts)
    return tops[layers] if isinstance(layers, str) else tops
