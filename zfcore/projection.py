"""Projection of one feature back to pixels (Zeiler & Fergus, ECCV 2014, sec. 2.1), on a ``Network``
whose forward pass has been recorded.

    req = request(net, "conv5", features=[17])     # which activations: layer, images, positions
    project_full(net, req)                         # the deconvnet on whole maps: (K, C, H, W)
    project_cropped(net, req)                      # the same through the receptive fields only

Projection keeps one activation of one feature map (or, ``mode="map"``, the whole map), sets the rest of
the layer to zero, starts from the activation's own value and walks the recorded layers in reverse,
applying each layer's inverse (``zfcore.layers``): unpool at the recorded switches, rectify the signal
(the ``rule``), transposed conv without bias, down to the input. Which inverse follows which is read
from the trace of the forward pass, never from a hand-written index map.

Cropped projection (the default of ``Network.project``). A single activation reaches only its
receptive field, so the signal below it is zero outside a window that grows layer by layer. The cropped
walk computes each inverse on that window alone (``Layer.inverse_window``) and places the result into a
zero image: equal to the whole-map projection up to float rounding, at a fraction of its cost. A batch
shares one window size per layer (the largest of the batch, each item over its own window) while windows
are small, so the upper layers run as one GEMM per layer for the whole batch; where sharing would waste
work (``waste``) or memory (``max_bytes``), the batch splits, down to one item at a time once an item's
window holds ``alone`` values.

Axis letters: N images in the forward batch, K projections, C channels, H W height and width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import layers as L
from .windows import Window, rewindow

MODES = ("single", "map")
MAX_BYTES = 256 * 2**20
# A group is split at a layer where sharing one window size costs more than WASTE times the work of
# the items' own windows, or where its arrays would pass max_bytes ...
WASTE = 1.25
# ... and into single items once one item's window holds ALONE values (C * h * w): one item's
# transposed convolution is then a large GEMM already.
ALONE = 2 ** 16


# ------------------------------------------------------------------------------------------------
# requests
# ------------------------------------------------------------------------------------------------
@dataclass
class Request:
    """K validated projections of layer number ``layer``: images ``img`` (K,), features ``feat``
    (K,), positions ``pos`` (K, 2) in the layer's map (None: non-spatial layer or whole-map mode),
    starting values ``val`` (K,) (None in whole-map mode)."""
    layer: int
    img: np.ndarray
    feat: np.ndarray
    pos: np.ndarray | None
    val: np.ndarray | None

    def __len__(self):
        return len(self.img)

    def part(self, a, b) -> Request:
        cut = (lambda v: None if v is None else v[a:b])
        return Request(self.layer, self.img[a:b], self.feat[a:b], cut(self.pos), cut(self.val))


def _indices(v, name, default=None):
    a = np.atleast_1d(np.asarray(default if v is None else v))
    if a.ndim != 1 or a.dtype.kind not in "iu" or a.size == 0:
        raise ValueError(f"{name} must be an int or a non-empty 1-D sequence of ints, got {v!r}")
    return a


def _in_range(idx, n, what):
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ValueError(f"{what(int(idx[bad][0]))} (0 to {n - 1})")
    return idx.astype(np.intp)


def request(net, layer: str, features, images=None, positions=None, mode: str = "single") -> Request:
    """Validate a projection request against the last forward pass (see ``Network.project_batch``)."""
    li = net.index(layer)
    act = net.activations(layer)
    spatial = act.ndim == 4
    feats, imgs = _indices(features, "features"), _indices(images, "images", 0)
    npos = 1
    if positions is not None and spatial and mode == "single":
        p = np.asarray(positions)
        npos = p.shape[0] if p.ndim == 2 else 1
    K = max(len(feats), len(imgs), npos)
    if any(n not in (1, K) for n in (len(feats), len(imgs), npos)):
        raise ValueError(f"features, images and positions need one entry per item or a single one; got "
                         f"{len(feats)} features, {len(imgs)} images, {npos} positions")
    feats, imgs = np.resize(feats, K), np.resize(imgs, K)
    what = "feature maps" if spatial else "units"
    feats = _in_range(feats, act.shape[1], lambda f: f"feature {f} out of range: layer {layer!r} has "
                                                     f"{act.shape[1]} {what}")
    N = act.shape[0]
    imgs = _in_range(imgs, N, lambda i: f"image {i} out of range: the last forward batch has {N} "
                                        f"image{'s' if N != 1 else ''}")
    if not spatial:
        if positions is not None:
            raise ValueError(f"layer {layer!r} is not spatial (output {act.shape[1:]}): position does not "
                             "apply; the unit is the feature index")
        return Request(li, imgs, feats, None, act[imgs, feats])
    if mode == "map":
        return Request(li, imgs, feats, None, None)
    pos = _positions(act, layer, imgs, feats, positions)
    return Request(li, imgs, feats, pos, act[imgs, feats, pos[:, 0], pos[:, 1]])


def _positions(act, layer, imgs, feats, positions):
    """(K, 2) positions: each item's strongest activation (first in row-major order), or the given ones."""
    K = len(imgs)
    H, W = act.shape[2:]
    if positions is None:
        flat = act[imgs, feats].reshape(K, -1).argmax(axis=1)
        return np.stack(np.divmod(flat, W), axis=1).astype(np.intp)
    pos = np.asarray(positions)
    if pos.shape == (2,):
        pos = pos[None]
    if pos.ndim == 2 and pos.shape[0] == 1 and K > 1:
        pos = np.repeat(pos, K, axis=0)
    if pos.shape != (K, 2) or pos.dtype.kind not in "iu":
        raise ValueError(f"positions must be (row, col) pairs of ints, one per item ({K}), got {positions!r}")
    bad = (pos[:, 0] < 0) | (pos[:, 0] >= H) | (pos[:, 1] < 0) | (pos[:, 1] >= W)
    if bad.any():
        r, c = pos[bad][0]
        raise ValueError(f"position {(int(r), int(c))} out of range: layer {layer!r} maps are "
                         f"{H}x{W} (rows 0 to {H - 1}, columns 0 to {W - 1})")
    return pos.astype(np.intp)


# ------------------------------------------------------------------------------------------------
# entry points (Network.strongest / project / project_batch call these)
# ------------------------------------------------------------------------------------------------
def strongest(net, layer: str, feature: int, image: int = 0):
    """Position (row, col) of the largest activation of map ``feature`` of ``layer`` in ``image``
    (the first in row-major order on ties); None for a non-spatial layer."""
    req = request(net, layer, [feature], [image])
    return None if req.pos is None else tuple(int(v) for v in req.pos[0])


def project(net, layer: str, feature: int, image: int = 0, position=None, mode: str = "single",
            rule: str = "deconvnet", crop: bool = True) -> np.ndarray:
    """One projection -> (C_in, H, W); see ``Network.project``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(map(repr, MODES))}")
    if mode == "map":
        if position is not None:
            raise ValueError("position does not apply to mode='map' (the whole feature map is kept)")
        return project_full(net, request(net, layer, [feature], [image], None, "map"), rule)[0]
    positions = None if position is None else [position]
    return project_batch(net, layer, [feature], [image], positions, rule=rule, crop=crop)[0]


def project_batch(net, layer: str, features, images=None, positions=None, rule: str = "deconvnet",
                  crop: bool = True, max_bytes: int = MAX_BYTES, alone: int = ALONE,
                  waste: float = WASTE) -> np.ndarray:
    """K projections in one pass -> (K, C_in, H, W); see ``Network.project_batch``. ``alone`` and
    ``waste``: when the cropped walk splits a batch (module docstring)."""
    L.check_rule(rule)
    req = request(net, layer, features, images, positions)
    if crop:
        return project_cropped(net, req, rule, max_bytes, alone, waste)
    itemsize = net.dtype.itemsize
    per_item = 3 * itemsize * max(int(np.prod(s[1:])) for s in net.trace.input_shapes[:req.layer + 1])
    chunk = max(1, int(max_bytes // max(1, per_item)))
    return np.concatenate([project_full(net, req.part(s, s + chunk), rule) for s in range(0, len(req), chunk)])


# ------------------------------------------------------------------------------------------------
# the deconvnet on whole maps
# ------------------------------------------------------------------------------------------------
def project_full(net, req: Request, rule: str = "deconvnet") -> np.ndarray:
    """Start from a zero signal of the layer's output shape holding the kept activations (or whole
    maps if ``req.val`` is None), apply every layer's ``inverse`` from the layer down: (K, C, H, W)."""
    L.check_rule(rule)
    trace = net.trace
    act = trace.outputs[req.layer]
    k = np.arange(len(req))
    r = np.zeros((len(req),) + act.shape[1:], act.dtype)
    if req.val is None:
        r[k, req.feat] = act[req.img, req.feat]
    elif req.pos is not None:
        r[k, req.feat, req.pos[:, 0], req.pos[:, 1]] = req.val
    else:
        r[k, req.feat] = req.val
    for i in range(req.layer, -1, -1):
        layer = net.layers[i]
        r = layer.inverse(r, layer.take(trace.caches[i], req.img), rule)
    return r


# ------------------------------------------------------------------------------------------------
# the cropped walk
# ------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """Projections that walk down together: ``items`` (G,) indices into the request; their signal
    ``r`` (G, C, h, w) lives on output windows ``top`` (G, 2) of ``size`` (h, w) (None: non-spatial)
    of the layer ``step`` steps below the projected one."""
    items: np.ndarray
    r: np.ndarray
    top: np.ndarray | None
    size: tuple[int, int] | None
    step: int

    def part(self, sel) -> Group:
        return Group(self.items[sel], self.r[sel], None if self.top is None else self.top[sel],
                     self.size, self.step)


@dataclass
class Walk:
    """What stays fixed during one cropped projection: the network, each step's minimal windows per
    item (``own``, from :func:`own_windows`), the rule, the limits, the output image batch."""
    net: object
    own: list
    img: np.ndarray
    rule: str
    out: np.ndarray
    max_bytes: int = MAX_BYTES
    alone: int = ALONE
    waste: float = WASTE


def own_windows(net, li, pos, K):
    """Each item's minimal windows from layer ``li`` down to 0: per layer (lo (K, 2), size (K, 2)), the
    window of the layer's *input* that the item's signal can reach, or (None, None) where the input is
    not spatial. ``pos`` (K, 2): positions in layer ``li``'s output, or None (non-spatial layer: every
    spatial window below is the whole map). A windowed layer's input window is the union of the kernel
    footprints of its output window, clipped to the map; a pointwise layer keeps its window."""
    trace = net.trace
    lo, size = (pos, np.ones_like(pos)) if pos is not None else (None, None)
    out = []
    for i in range(li, -1, -1):
        in_shape = trace.input_shapes[i]
        if len(in_shape) != 4:
            lo = size = None
        elif lo is None:                                   # below a non-spatial layer: whole map
            lo, size = np.zeros((K, 2), np.intp), np.tile(np.asarray(in_shape[2:]), (K, 1))
        else:
            g = net.layers[i].geometry(in_shape[2:])
            if g is not None:
                k, st, p = (np.asarray(v) for v in g)
                a = np.maximum(lo * st - p, 0)
                b = np.minimum((lo + size - 1) * st - p + k, np.asarray(in_shape[2:]))
                lo, size = a, b - a
        out.append((lo, size))
    return out


def project_cropped(net, req: Request, rule: str = "deconvnet", max_bytes: int = MAX_BYTES,
                    alone: int = ALONE, waste: float = WASTE) -> np.ndarray:
    """Cropped projection of a request -> (K, C_in, H, W), equal to :func:`project_full`."""
    act = net.trace.outputs[req.layer]
    K = len(req)
    k = np.arange(K)
    if req.pos is not None:
        r = np.zeros((K, act.shape[1], 1, 1), act.dtype)
        r[k, req.feat, 0, 0] = req.val
        group = Group(k, r, req.pos, (1, 1), 0)
    else:
        r = np.zeros((K,) + act.shape[1:], act.dtype)
        r[k, req.feat] = req.val
        group = Group(k, r, None, None, 0)
    out = np.zeros((K,) + tuple(net.trace.input.shape[1:]), net.dtype)
    walk = Walk(net, own_windows(net, req.layer, req.pos, K), req.img, rule, out, max_bytes, alone, waste)
    _walk(walk, group)
    return out


def _split(walk: Walk, n_items: int, sz, area: int, channels: int):
    """How to split a group whose items' own windows have sizes ``sz`` (G, 2) and share ``area``:
    [] (keep together), halves by window size, or single items."""
    if n_items == 1:
        return []
    if channels * area >= walk.alone:                      # big enough alone: one by one
        return [[q] for q in range(n_items)]
    wasted = n_items * area / max(1, int((sz[:, 0] * sz[:, 1]).sum()))
    nbytes = 3 * walk.net.dtype.itemsize * n_items * channels * area
    if wasted > walk.waste or nbytes > walk.max_bytes:
        order = np.lexsort((sz[:, 1], sz[:, 0]))           # by window height, then width
        return [order[:n_items // 2], order[n_items // 2:]]
    return []


def _walk(walk: Walk, grp: Group):
    """Apply the inverses from step ``grp.step`` down for the group's items; write them into ``walk.out``."""
    trace, li = walk.net.trace, len(walk.own) - 1
    for j in range(grp.step, li + 1):
        i = li - j
        lo, sz = walk.own[j]
        t_in = s_in = None
        if lo is not None:
            lo, sz = lo[grp.items], sz[grp.items]
            in_shape = trace.input_shapes[i]
            s_in = tuple(int(v) for v in sz.max(axis=0))
            t_in = np.minimum(lo, np.asarray(in_shape[2:]) - s_in)
            parts = _split(walk, len(grp.items), sz, s_in[0] * s_in[1], in_shape[1])
            if parts:
                for part in parts:
                    sub = grp.part(np.asarray(part))
                    sub.step = j
                    _walk(walk, sub)
                return
        layer = walk.net.layers[i]
        r, top, size = grp.r, grp.top, grp.size
        if t_in is not None and top is not None and layer.geometry(trace.input_shapes[i][2:]) is None \
                and (s_in != tuple(size) or (t_in != top).any()):
            # a pointwise layer keeps the window: re-cut the signal to this group's windows first
            r, top, size = rewindow(r, top, t_in, s_in), t_in, s_in
        grp.r = layer.inverse_window(r, trace.caches[i], walk.rule, Window(walk.img[grp.items], top, size, t_in, s_in))
        grp.top, grp.size = t_in, s_in
    _place(walk.out, grp)


def _place(out, grp: Group):
    """Write the group's input-level windows into the zero images ``out``."""
    (h, w), top, g = grp.size, grp.top, grp.items
    if len(g) == 1 or (top == top[0]).all():
        out[g, :, top[0, 0]:top[0, 0] + h, top[0, 1]:top[0, 1] + w] = grp.r
    else:
        for q, kk in enumerate(g):
            out[kk, :, top[q, 0]:top[q, 0] + h, top[q, 1]:top[q, 1] + w] = grp.r[q]
