"""Streaming top-k (the paper's Fig. 2) over an image collection of any size, in one process.

    from zfcore.analysis import stream
    from zfcore.data import sources
    src = sources.open_folder("photos/", size=224, mode="RGB", imagenet=True)   # or TestSetSource() ...
    tops = stream.top_k(net, src, ["conv3", "conv5"], k=9)     # dict layer -> analysis.TopK

Pass 1 scans the images in batches (one forward pass per batch serves all the layers) and keeps, per
layer and feature, the k best (value, image id, position) in a ``TopState``; memory is one batch's
forward record plus F*k entries, whatever the number of images. Pass 2 loads only the winning images,
again in batches, and projects them (batched, cropped), with their receptive-field boxes and patches.

Ties are broken by image id (the smaller id first), i.e. the order of ``np.argsort(-values,
kind="stable")`` over all images, which is ``analysis.top_k``'s order. Because ``merge`` is
associative and commutative, the states of disjoint shards of the images can be merged in any order
and grouping (``zfcore.analysis.distributed`` does so on Dask) and give the same result. numpy only.

Axis letters: N images, F features, K the k kept per feature, C H W an image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.analysis import topk as analysis
from zfcore.analysis import parallel
from zfcore._argcheck import check_count, check_layer
from zfcore.errors import ArgumentError
from zfcore.data.sources import ArraySource

BATCH_BYTES = 512 * 2**20        # the default batch holds about this much of forward record


# --- the mergeable per-feature state ------------------------------------------------------------------
@dataclass
class TopState:
    """Per feature, the best m <= k (value, image id, position) seen so far, best first (largest value;
    on equal values the smaller image id). values (F, m); ids (F, m) int64; positions (F, m, 2) int64."""
    k: int
    values: np.ndarray
    ids: np.ndarray
    positions: np.ndarray

    @classmethod
    def empty(cls, n_features: int, k: int, dtype=np.float32) -> "TopState":
        return cls(int(k), np.zeros((n_features, 0), dtype), np.zeros((n_features, 0), np.int64),
                   np.zeros((n_features, 0, 2), np.int64))

    @classmethod
    def from_batch(cls, values, positions, ids, k: int) -> "TopState":
        """The state of one batch: ``values`` (n, F) and ``positions`` (n, F, 2) of each image's
        strongest activation per feature (``analysis.scan_maxima``), ``ids`` (n,) the images' ids."""
        values, positions = np.asarray(values), np.asarray(positions)
        ids = np.asarray(ids, np.int64)
        if values.ndim != 2 or positions.shape != values.shape + (2,) or ids.shape != values.shape[:1]:
            raise ArgumentError(f"from_batch: values (n, F), positions (n, F, 2), ids (n,) expected, "
                                f"got {values.shape}, {positions.shape}, {ids.shape}")
        F, k = values.shape[1], int(k)
        cand = (values.T, np.broadcast_to(ids, (F, len(ids))),
                positions.transpose(1, 0, 2).astype(np.int64, copy=False))
        return _best(cls, k, *(_candidates(*cand, k) if len(ids) > k else cand))

    def update(self, values, positions, ids) -> "TopState":
        """This state with one more batch (see ``from_batch``) taken in; a new object."""
        return merge(self, TopState.from_batch(values, positions, ids, self.k))

    @property
    def n_features(self) -> int:
        return self.values.shape[0]


def _candidates(values, ids, positions, k):
    """Per row of (F, n) entries, those that can be among the k best: values >= the row's k-th largest,
    all ties kept (a row whose k-th largest is NaN keeps everything). Padded to the longest row with NaN
    values and the largest id, which sort after every real entry. Saves sorting whole batches."""
    neg = -values
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]
    keep = (neg <= kth) | np.isnan(kth)
    counts = keep.sum(axis=1)
    rows, cols = np.nonzero(keep)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    shape = (values.shape[0], int(counts.max()))
    v, i = np.full(shape, np.nan, values.dtype), np.full(shape, np.iinfo(np.int64).max)
    p = np.zeros(shape + (2,), np.int64)
    v[rows, slot], i[rows, slot], p[rows, slot] = values[rows, cols], ids[rows, cols], positions[rows, cols]
    return v, i, p


def _best(cls, k, values, ids, positions):
    """The k best columns of each row of (F, m) candidates: by value descending, then id ascending."""
    order = np.lexsort((ids, -values), axis=-1)[:, :k]
    return cls(k, np.take_along_axis(values, order, 1), np.take_along_axis(ids, order, 1),
               np.take_along_axis(positions, order[..., None], 1))


def merge(a: TopState, b: TopState) -> TopState:
    """The state of the union of two disjoint sets of images (associative and commutative)."""
    if a.k != b.k or a.n_features != b.n_features:
        raise ArgumentError(f"merge: states differ (k {a.k} and {b.k}, features {a.n_features} and "
                            f"{b.n_features})")
    return _best(TopState, a.k, np.concatenate([a.values, b.values], 1), np.concatenate([a.ids, b.ids], 1),
                 np.concatenate([a.positions, b.positions], 1))


def merge_all(states: dict, others: dict) -> dict:
    """``merge`` layer by layer: two dicts layer -> TopState."""
    return {name: merge(states[name], others[name]) for name in states}


# --- planning: layers, features, batch size -----------------------------------------------------------
def _record_bytes(rec) -> int:
    seen, total = set(), 0
    for arrays in ([rec.input], rec.outputs, *(list(c.values()) for c in rec.caches if isinstance(c, dict))):
        for a in arrays:
            if isinstance(a, np.ndarray) and id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
    return total


def plan(net, source, layers, k: int, features=None, batch_size: int | None = None):
    """Check the arguments and fix the work: (layer list, dict layer -> feature indices (F',),
    batch size). ``features``: None (all), indices for every layer, or a dict layer -> indices.
    ``batch_size`` None: as many images as fit about ``BATCH_BYTES`` of forward record (1..500)."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ArgumentError("top_k needs at least one layer")
    if len(set(names)) != len(names):
        raise ArgumentError(f"layers listed twice: {names}")
    for name in names:
        check_layer(net, name)
    if len(source) == 0:
        raise ArgumentError("top_k needs a non-empty image collection")
    k = check_count(k, "k", 1, len(source))
    deepest = max(names, key=net.index)
    rec = net.forward(np.zeros((1,) + tuple(source.shape), net.dtype), upto=deepest)
    feats = {}
    for name in names:
        act = rec[name]
        if act.ndim != 4:
            raise ArgumentError(f"layer {name!r} is not spatial (output {act.shape[1:]})")
        f = features.get(name) if isinstance(features, dict) else features
        f = np.arange(act.shape[1]) if f is None else np.atleast_1d(np.asarray(f))
        if f.size == 0 or f.dtype.kind not in "iu" or f.min() < 0 or f.max() >= act.shape[1] \
                or len(np.unique(f)) != f.size:
            raise ArgumentError(f"features must be distinct integers in 0..{act.shape[1] - 1} for "
                                f"layer {name!r}, got {f.tolist()}")
        feats[name] = f.astype(np.int64)
    if batch_size is None:
        batch_size = int(np.clip(BATCH_BYTES // max(_record_bytes(rec), 1), 1, 500))
    return names, feats, check_count(batch_size, "batch_size", 1), k


# --- pass 1: the scan ---------------------------------------------------------------------------------
def scan(net, source, layers, features, k: int, batch_size: int, start: int = 0, stop: int | None = None,
         progress=None, threads=1) -> dict:
    """Pass 1 over the images with ids ``start``..``stop``-1: dict layer -> ``TopState`` of the features
    ``features[layer]``. Batches start at ``start`` and hold ``batch_size`` images (the last fewer),
    each split over ``threads`` threads (``zfcore.analysis.parallel``); ``progress(n)`` is called after each
    batch with its number of images."""
    stop = len(source) if stop is None else stop
    threads = parallel.resolve(threads)
    states = {name: TopState.empty(len(features[name]), k, net.dtype) for name in layers}
    for lo in range(start, stop, batch_size):
        ids = np.arange(lo, min(lo + batch_size, stop))
        maxima = analysis.scan_maxima(net, source.load(ids), list(layers), batch_size=len(ids),
                                      threads=threads)
        for name in layers:
            vals, poss = maxima[name]
            f = features[name]
            states[name] = states[name].update(vals[:, f], poss[:, f], ids)
        if progress is not None:
            progress(len(ids))
    return states


# --- pass 2: project the winners ----------------------------------------------------------------------
def winners(states: dict) -> np.ndarray:
    """The ids of all images that made a top-k, sorted (M,)."""
    return np.unique(np.concatenate([s.ids.ravel() for s in states.values()]))


def project_winners(net, source, states: dict, features: dict, ids, rule: str = "deconvnet") -> dict:
    """Load the images ``ids`` (sorted; some of the winners), run them forward once and project every
    top-k entry whose image is among them. Returns dict layer -> (mask (F', K) of the entries done,
    projections (E, C, H, W), patches (E, C, h, w)), E = mask.sum(), entries in row-major order."""
    ids = np.asarray(ids, np.int64)
    todo = {name: np.isin(s.ids, ids) for name, s in states.items()}
    layers = [name for name in states if todo[name].any()]
    out = {name: (todo[name], None, None) for name in states if name not in layers}
    if not layers:
        return out
    images = source.load(ids)
    rec = net.forward(images, upto=max(layers, key=net.index))
    rfs = rec.receptive_fields()
    for name in layers:
        mask, s = todo[name], states[name]
        feats = np.broadcast_to(features[name][:, None], s.ids.shape)[mask]
        local = np.searchsorted(ids, s.ids[mask])
        pos = s.positions[mask]
        proj = rec.project_batch(name, feats, images=local, positions=pos, rule=rule)
        out[name] = (mask, proj, rfs[name].patches(images, local, pos))
    return out


def chunks(ids, size: int, threads: int = 1) -> list:
    """``ids`` cut into consecutive pieces of at most ``size``, as equal as they can be and as many as a
    multiple of ``threads`` (so that each thread gets the same share)."""
    n = len(ids)
    pieces = threads * -(-n // (threads * size)) if n else 0
    return [ids[n * i // pieces:n * (i + 1) // pieces] for i in range(pieces)]


def assemble(net, source, states: dict, features: dict, parts) -> dict:
    """dict layer -> ``analysis.TopK`` from the scan's ``states`` and the ``project_winners`` results
    ``parts`` (which together cover every entry once)."""
    H, W = source.shape[1:]
    tops = {}
    for name, s in states.items():
        proj = patches = None
        for part in parts:
            mask, p, q = part[name]
            if p is None:
                continue
            if proj is None:
                proj = np.zeros(s.ids.shape + p.shape[1:], p.dtype)
                patches = np.zeros(s.ids.shape + q.shape[1:], q.dtype)
            proj[mask], patches[mask] = p, q
        rf = net.receptive_field(name, input_size=source.shape)
        boxes = rf.boxes(s.positions, clip=(H, W))
        tops[name] = analysis.TopK(name, features[name], s.ids, s.positions, s.values, proj, boxes, patches)
    return tops


def _progress_fn(progress, total: int, desc: str):
    """(callable taking a count, closer) from ``progress``: None/False (nothing), True (a tqdm bar on
    stderr, if tqdm is installed) or a callable."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=1.0, delay=1.0)
    return bar.update, bar.close


def top_k(net, source, layers, k: int = 9, features=None, batch_size: int | None = None,
          rule: str = "deconvnet", progress=None, threads=None):
    """The paper's Fig. 2 over an image collection of any size, in one process: for each feature of
    each layer, the ``k`` images with the strongest activation (one per image: its map's maximum), each
    projected to pixels on its own, with receptive-field boxes and patches, as ``analysis.top_k`` gives
    them for an in-memory array (same images, positions and values, same order).

    source: a ``zfcore.data.sources`` source, or an (N, C, H, W) array. layers: a layer name (returns one
    ``analysis.TopK``) or a list of names (returns dict layer -> TopK; one scan serves them all).
    features: None (all), indices for every layer, or dict layer -> indices. batch_size: images per
    forward pass (default: from ``BATCH_BYTES``). progress: None, True (tqdm bar) or a callable(n).
    threads: None (every core) or a count: each scanned batch is split over them, and pass 2 hands
    its chunks of winners to them (``zfcore.analysis.parallel``: each runs a one-thread BLAS, so images,
    positions and values equal those of one thread with a one-thread BLAS, projections to rounding)."""
    source = source if hasattr(source, "load") else ArraySource(source)
    names, feats, batch_size, k = plan(net, source, layers, k, features, batch_size)
    if rule not in ("deconvnet", "guided", "gradient"):
        raise ArgumentError(f"rule {rule!r}: expected deconvnet, guided or gradient")
    threads = parallel.resolve(threads)
    step, close = _progress_fn(progress, len(source), "scan")
    try:
        states = scan(net, source, names, feats, k, batch_size, progress=step, threads=threads)
    finally:
        close()
    parts = parallel.map_items(lambda ids: project_winners(net, source, states, feats, ids, rule),
                               chunks(winners(states), batch_size, threads), threads)
    tops = assemble(net, source, states, feats, parts)
    return tops[layers] if isinstance(layers, str) else tops
