"""Top-k activations across a collection of images (the paper's Fig. 2): one ``top_k`` for an in-memory
array and for a collection of any size, built from pieces that merge, so that
``zfcore.analysis.distributed`` runs the same computation on Dask.

    from zfcore.analysis import top_k
    from zfcore.data import sources
    t = top_k(net, images, "conv3", k=9)                  # images (N, C, H, W) -> one TopK
    src = sources.open_folder("photos/", size=224, mode="RGB", imagenet=True)   # or TestSetSource() ...
    tops = top_k(net, src, ["conv3", "conv5"], k=9)       # dict layer -> TopK (one scan for both)

Pass 1 (``scan``) runs the images forward in batches (one pass per batch serves all the layers), takes
each image's maximum of every feature map (``scan_maxima``) and keeps, per layer and feature, the k
best (value, image id, position) in a ``TopState``; memory is one batch's activations plus F*k
entries, whatever the number of images. Pass 2 (``project_winners``) loads only the winning images,
in chunks (``id_chunks``), runs each chunk forward once and projects its entries (batched, cropped);
``assemble`` adds the receptive-field boxes and gives one ``TopK`` per layer.

Ties are broken by image id (the smaller id first): the order of ``np.argsort(-values,
kind="stable")`` over all images. ``merge`` is associative and commutative, so the states of
disjoint shards of the images merge in any order and grouping to the same state. Every forward pass
here makes a record of its own: a user's records are left as they are. numpy only.

Axis letters: N images, F features (F' the chosen ones), K the k kept per feature, C H W an image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.analysis import parallel
from zfcore.core.layers import RULES
from zfcore.data.sources import ArraySource
from zfcore.errors import ArgumentError, check_choice, check_count, check_layer

BATCH_BYTES = 512 * 2**20        # the default batch holds about this much of forward record


@dataclass
class TopK:
    """Per feature, the k images of a collection where it fires most, and what the deconvnet shows.

    layer; features (F',) int64; images (F', K) image ids (indices into the array or source);
    positions (F', K, 2) in the layer's map; values (F', K); projections (F', K, C, H, W) in pixel
    space; boxes (F', K, 4) input boxes (top, left, bottom, right) of the receptive fields; patches
    (F', K, C, h, w) the image patches under them (zero-padded where the field hangs over the border,
    so all patches share the field's size)."""
    layer: str
    features: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    projections: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray


# --- the maxima of every feature map ------------------------------------------------------------------
def scan_maxima(net, images, layer, batch_size: int = 500, threads=None):
    """For every image of ``images`` (N, C, H, W) and feature map of ``layer``: the map's maximum and
    its position (the first in row-major order where the maximum repeats). Returns (values (N, F),
    positions (N, F, 2)). ``layer`` may be a list of layers: then one forward pass (up to the deepest
    of them) serves all, and the result is a dict layer -> (values, positions). Each batch is split
    over ``threads`` threads (``zfcore.analysis.parallel``; None: every core)."""
    layers = [layer] if isinstance(layer, str) else list(layer)
    if not layers:
        raise ArgumentError("scan_maxima needs at least one layer")
    for name in layers:
        check_layer(net, name)
    batch_size = check_count(batch_size, "batch_size", 1)
    deepest = max(layers, key=net.index)
    threads = parallel.resolve(threads)
    vals = {name: [] for name in layers}
    poss = {name: [] for name in layers}

    def part(batch):
        _, acts = net.infer(batch, upto=deepest, keep=layers)
        res = {}
        for name in layers:
            act = acts[name]
            if act.ndim != 4:
                raise ArgumentError(f"layer {name!r} is not spatial (output {act.shape[1:]})")
            flat = act.reshape(act.shape[0], act.shape[1], -1)                 # (n, F, H*W)
            arg = flat.argmax(axis=2)
            res[name] = (np.take_along_axis(flat, arg[..., None], axis=2)[..., 0],
                         np.stack(np.divmod(arg, act.shape[3]), axis=-1))
        return res

    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        for res in parallel.map_parts(lambda lo, hi: part(batch[lo:hi]), len(batch), threads):
            for name in layers:
                vals[name].append(res[name][0])
                poss[name].append(res[name][1])
    out = {name: (np.concatenate(vals[name]), np.concatenate(poss[name])) for name in layers}
    return out[layer] if isinstance(layer, str) else out


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
        strongest activation per feature (``scan_maxima``), ``ids`` (n,) the images' ids."""
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


# --- planning: the source, layers, features, batch size -----------------------------------------------
def as_source(source):
    """``source`` itself if it is an image source (it has ``load``, see ``zfcore.data.sources``), else
    an ``ArraySource`` of ``source`` as an (N, C, H, W) array."""
    if hasattr(source, "load"):
        return source
    images = np.asarray(source)
    if images.ndim != 4 or len(images) == 0:
        raise ArgumentError(f"top_k needs a non-empty (N, C, H, W) image set, got shape {images.shape}")
    return ArraySource(images)


def _record_bytes(rec) -> int:
    seen, total = set(), 0
    for arrays in ([rec.input], rec.outputs, *(list(c.values()) for c in rec.caches if isinstance(c, dict))):
        for a in arrays:
            if isinstance(a, np.ndarray) and id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
    return total


def _check_features(features, name: str, width: int) -> np.ndarray:
    f = np.arange(width) if features is None else np.atleast_1d(np.asarray(features))
    if f.size == 0 or f.dtype.kind not in "iu" or f.min() < 0 or f.max() >= width \
            or len(np.unique(f)) != f.size:
        raise ArgumentError(f"features must be distinct integers in 0..{width - 1} for layer {name!r}, "
                            f"got {f.tolist()}")
    return f.astype(np.int64)


def plan(net, source, layers, k: int, features=None, batch_size: int | None = None,
         rule: str = "deconvnet"):
    """Check the arguments of ``top_k`` and fix the work: (layer list, dict layer -> feature indices
    (F',), batch size, k). ``features``: None (all), indices for every layer, or a dict layer ->
    indices. ``batch_size`` None: as many images as fit about ``BATCH_BYTES`` of forward record
    (1..500)."""
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
    check_choice(rule, RULES, "rule")
    rec = net.forward(np.zeros((1,) + tuple(source.shape), net.dtype), upto=max(names, key=net.index))
    feats = {}
    for name in names:
        act = rec[name]
        if act.ndim != 4:
            raise ArgumentError(f"layer {name!r} is not spatial (output {act.shape[1:]})")
        f = features.get(name) if isinstance(features, dict) else features
        feats[name] = _check_features(f, name, act.shape[1])
    if batch_size is None:
        batch_size = int(np.clip(BATCH_BYTES // max(_record_bytes(rec), 1), 1, 500))
    return names, feats, check_count(batch_size, "batch_size", 1), k


# --- pass 1: the scan ---------------------------------------------------------------------------------
def scan(net, source, layers, features, k: int, batch_size: int, start: int = 0, stop: int | None = None,
         progress=None, threads=1) -> dict:
    """Pass 1 over the images with ids ``start``..``stop``-1: dict layer -> ``TopState`` of the features
    ``features[layer]``. Batches start at ``start`` and hold ``batch_size`` images (the last fewer),
    each split over ``threads`` threads (``zfcore.analysis.parallel``); ``progress(n)`` is called after
    each batch with its number of images. A source with ``load_readable`` (a folder) gives the images it
    could read and their ids: the others take no part."""
    stop = len(source) if stop is None else stop
    threads = parallel.resolve(threads)
    states = {name: TopState.empty(len(features[name]), k, net.dtype) for name in layers}
    readable = getattr(source, "load_readable", None)     # a folder's unreadable files: skipped
    for lo in range(start, stop, batch_size):
        ids = np.arange(lo, min(lo + batch_size, stop))
        x, ok = readable(ids) if readable is not None else (source.load(ids), ids)
        if len(ok):
            maxima = scan_maxima(net, x, list(layers), batch_size=len(ok), threads=threads)
            for name in layers:
                vals, poss = maxima[name]
                f = features[name]
                states[name] = states[name].update(vals[:, f], poss[:, f], ok)
        if progress is not None:
            progress(len(ids))
    return states


# --- pass 2: project the winners ----------------------------------------------------------------------
def winners(states: dict) -> np.ndarray:
    """The ids of all images that made a top-k, sorted (M,)."""
    return np.unique(np.concatenate([s.ids.ravel() for s in states.values()]))


def id_chunks(ids, size: int, threads: int = 1) -> list:
    """Image ids ``ids`` cut into consecutive pieces of at most ``size``, as equal as they can be and
    as many as a multiple of ``threads`` (so that each thread gets the same share)."""
    n = len(ids)
    pieces = threads * -(-n // (threads * size)) if n else 0
    return [ids[n * i // pieces:n * (i + 1) // pieces] for i in range(pieces)]


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


def assemble(net, source, states: dict, features: dict, parts) -> dict:
    """dict layer -> ``TopK`` from the scan's ``states`` and the ``project_winners`` results ``parts``
    (which together cover every entry once)."""
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
        tops[name] = TopK(name, features[name], s.ids, s.positions, s.values, proj, boxes, patches)
    return tops


def progress_steps(progress, total: int, desc: str):
    """(callable taking a count of images, closer) from ``progress``: None/False (nothing), True (a
    tqdm bar of ``total`` on stderr, if tqdm is installed) or a callable."""
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


# --- the whole computation ----------------------------------------------------------------------------
def top_k(net, source, layers, k: int = 9, features=None, batch_size: int | None = None,
          rule: str = "deconvnet", progress=None, threads=None):
    """The paper's Fig. 2: for each feature of each layer, the ``k`` images with the strongest
    activation of that map (one per image: its maximum; ties to the smaller image id), each projected
    to pixels on its own (all other activations of the layer set to zero), with the receptive-field
    boxes and the image patches under them.

    source: an (N, C, H, W) array, or a ``zfcore.data.sources`` source of any size (only one batch
    and the winners are in memory at a time). layers: a layer name (returns one ``TopK``) or a list of
    names (returns dict layer -> ``TopK``; one scan serves them all). features: None (all), indices
    for every layer, or dict layer -> indices. batch_size: images per forward pass (None: from
    ``BATCH_BYTES``, 1..500). rule: ``zfcore.core.layers.RULES``. progress: None, True (a tqdm bar)
    or a callable(n). threads: None (every core) or a count: each scanned batch is split over them,
    and pass 2 hands its chunks of winners to them (``zfcore.analysis.parallel``: each runs a
    one-thread BLAS; values and projections agree with one thread's to float rounding, which may
    reorder near-ties)."""
    source = as_source(source)
    names, feats, batch_size, k = plan(net, source, layers, k, features, batch_size, rule)
    threads = parallel.resolve(threads)
    step, close = progress_steps(progress, len(source), "scan")
    try:
        states = scan(net, source, names, feats, k, batch_size, progress=step, threads=threads)
    finally:
        close()
    parts = parallel.map_items(lambda ids: project_winners(net, source, states, feats, ids, rule),
                               id_chunks(winners(states), batch_size, threads), threads)
    tops = assemble(net, source, states, feats, parts)
    return tops[layers] if isinstance(layers, str) else tops
