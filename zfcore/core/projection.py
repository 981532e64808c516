"""Projection of one feature back to pixels (Zeiler & Fergus, ECCV 2014, sec. 2.1), on the ``Record`` of a
forward pass (``zfcore.core.network``).

    req = request(rec, "conv5", features=[17])     # which activations: layer, images, positions
    project_full(rec, req)                         # the deconvnet on whole maps: (K, C, H, W)
    project_cropped(rec, req)                      # the same through the receptive fields only

Projection keeps one activation of one feature map (or, ``mode="map"``, the whole map), sets the rest of
the layer to zero, starts from the activation's own value and walks the recorded layers in reverse,
applying each layer's inverse (``zfcore.core.layers``): unpool at the recorded switches, rectify the signal
(the ``rule``), transposed conv without bias, down to the input. Which inverse follows which is read
from the record of the forward pass, never from a hand-written index map.

Cropped projection (the default of ``Record.project``). A single activation reaches only its
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

from zfcore.core import layers as L
from zfcore.core.windows import Window, rewindow
from zfcore.errors import ArgumentError

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
        raise ArgumentError(f"{name} must be an int or a non-empty 1-D sequence of ints, got {v!r}")
    return a


def _in_range(idx, n, what):
    """idx as intp if every entry is in 0..n-1; else ``ArgumentError`` in ``zfcore.errors.check_index``'s
    words for the first bad one: "<what> <value> out of range 0..<n-1>"."""
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ArgumentError(f"{what} {int(idx[bad][0])} out of range 0..{n - 1}")
    return idx.astype(np.intp)


def request(rec, layer: str, features, images=None, positions=None, mode: str = "single") -> Request:
    """Validate a projection request against the record ``rec`` (see ``Record.project_batch``)."""
    li = rec.index(layer)
    act = rec[layer]
    spatial = act.ndim == 4
    feats, imgs = _indices(features, "features"), _indices(images, "images", 0)
    npos = 1
    if positions is not None and spatial and mode == "single":
        p = np.asarray(positions)
        npos = p.shape[0] if p.ndim == 2 else 1
    K = max(len(feats), len(imgs), npos)
    if any(n not in (1, K) for n in (len(feats), len(imgs), npos)):
        raise ArgumentError(f"features, images and positions need one entry per item or a single one; got "
                         f"{len(feats)} features, {len(imgs)} images, {npos} positions")
    feats, imgs = np.resize(feats, K), np.resize(imgs, K)
    feats = _in_range(feats, act.shape[1], f"feature of layer {layer!r}")
    imgs = _in_range(imgs, act.shape[0], "image")
    if not spatial:
        if positions is not None:
            raise ArgumentError(f"layer {layer!r} is not spatial (output {act.shape[1:]}): position does not "
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
        raise ArgumentError(f"positions must be (row, col) pairs of ints, one per item ({K}), got {positions!r}")
    bad = (pos[:, 0] < 0) | (pos[:, 0] >= H) | (pos[:, 1] < 0) | (pos[:, 1] >= W)
    if bad.any():
        r, c = pos[bad][0]
        raise ArgumentError(f"position {(int(r), int(c))} out of range: layer {layer!r} maps are "
                         f"{H}x{W} (rows 0 to {H - 1}, columns 0 to {W - 1})")
    return pos.astype(np.intp)


# ------------------------------------------------------------------------------------------------
# entry points (Record.strongest / project / project_batch / backward call these)
# ------------------------------------------------------------------------------------------------
def strongest(rec, layer: str, feature: int, image: int = 0):
    """Position (row, col) of the largest activation of map ``feature`` of ``layer`` in ``image``
    (the first in row-major order on ties); None for a non-spatial layer."""
    req = request(rec, layer, [feature], [image])
    return None if req.pos is None else tuple(int(v) for v in req.pos[0])


def project(rec, layer: str, feature: int, image: int = 0, position=None, mode: str = "single",
            rule: str = "deconvnet", crop: bool = True) -> np.ndarray:
    """One projection -> (C_in, H, W); see ``Record.project``."""
    if mode not in MODES:
        raise ArgumentError(f"unknown mode {mode!r}: expected one of {', '.join(map(repr, MODES))}")
    if mode == "map":
        if position is not None:
            raise ArgumentError("position does not apply to mode='map' (the whole feature map is kept)")
        return project_full(rec, request(rec, layer, [feature], [image], None, "map"), rule)[0]
    positions = None if position is None else [position]
    return project_batch(rec, layer, [feature], [image], positions, rule=rule, crop=crop)[0]


def project_batch(rec, layer: str, features, images=None, positions=None, rule: str = "deconvnet",
                  crop: bool = True, max_bytes: int = MAX_BYTES, alone: int = ALONE,
                  waste: float = WASTE) -> np.ndarray:
    """K projections in one pass -> (K, C_in, H, W); see ``Record.project_batch``. ``alone`` and
    ``waste``: when the cropped walk splits a batch (module docstring)."""
    L.check_rule(rule)
    req = request(rec, layer, features, images, positions)
    if crop:
        return project_cropped(rec, req, rule, max_bytes, alone, waste)
    itemsize = rec.dtype.itemsize
    per_item = 3 * itemsize * max(int(np.prod(s[1:])) for s in rec.input_shapes[:req.layer + 1])
    chunk = max(1, int(max_bytes // max(1, per_item)))
    return np.concatenate([project_full(rec, req.part(s, s + chunk), rule) for s in range(0, len(req), chunk)])


# ------------------------------------------------------------------------------------------------
# the deconvnet on whole maps
# ------------------------------------------------------------------------------------------------
def backward(rec, signal, layer=None, down_to=None, rule: str = "deconvnet", images=None, stages: bool = False):
    """The one deconvnet walk (``Record.backward``): each recorded layer's ``inverse``, from ``layer``
    (default: the last recorded) down to ``down_to`` (inclusive; default: the first), applied to
    ``signal`` (K, ...) of ``layer``'s output shape; item k belongs to recorded image ``images[k]``
    (default: k). Returns the signal at ``down_to``'s input, and with ``stages`` also [(layer name,
    kind, signal after its inverse)] from the top down."""
    L.check_rule(rule)
    hi = len(rec) - 1 if layer is None else rec.index(layer)
    lo = 0 if down_to is None else rec.index(down_to)
    if lo > hi:
        raise ArgumentError(f"down_to={down_to!r} lies above layer={layer!r}")
    r = np.asarray(signal)
    want = (r.shape[0],) + tuple(rec.outputs[hi].shape[1:])
    if r.ndim == 0 or r.shape != want:
        raise ArgumentError(f"signal must be (K, ...) shaped as layer {rec.names[hi]!r}'s output "
                            f"{tuple(rec.outputs[hi].shape[1:])}, got {r.shape}")
    img = np.arange(len(r)) if images is None else np.asarray(images, np.intp)
    if img.shape != (len(r),) or (len(img) and (img.min() < 0 or img.max() >= len(rec.input))):
        raise ArgumentError(f"images must be {len(r)} indices into the recorded batch of {len(rec.input)}")
    out = []
    for i in range(hi, lo - 1, -1):
        layer_i = rec.layers[i]
        r = layer_i.inverse(r, layer_i.take(rec.caches[i], img), rule)
        if stages:
            out.append((layer_i.name, layer_i.kind, r))
    return (r, out) if stages else r


def project_full(rec, req: Request, rule: str = "deconvnet") -> np.ndarray:
    """Start from a zero signal of the layer's output shape holding the kept activations (or whole
    maps if ``req.val`` is None), and walk it down to the input (``backward``): (K, C, H, W)."""
    act = rec.outputs[req.layer]
    k = np.arange(len(req))
    r = np.zeros((len(req),) + act.shape[1:], act.dtype)
    if req.val is None:
        r[k, req.feat] = act[req.img, req.feat]
    elif req.pos is not None:
        r[k, req.feat, req.pos[:, 0], req.pos[:, 1]] = req.val
    else:
        r[k, req.feat] = req.val
    return backward(rec, r, rec.names[req.layer], None, rule, req.img)


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
    rec: object
    own: list
    img: np.ndarray
    rule: str
    out: np.ndarray
    max_bytes: int = MAX_BYTES
    alone: int = ALONE
    waste: float = WASTE


def own_windows(rec, li, pos, K):
    """Each item's minimal windows from layer ``li`` down to 0: per layer (lo (K, 2), size (K, 2)), the
    window of the layer's *input* that the item's signal can reach, or (None, None) where the input is
    not spatial. ``pos`` (K, 2): positions in layer ``li``'s output, or None (non-spatial layer: every
    spatial window below is the whole map). A windowed layer's input window is the union of the kernel
    footprints of its output window, clipped to the map; a pointwise layer keeps its window."""
    lo, size = (pos, np.ones_like(pos)) if pos is not None else (None, None)
    out = []
    for i in range(li, -1, -1):
        in_shape = rec.input_shapes[i]
        if len(in_shape) != 4:
            lo = size = None
        elif lo is None:                                   # below a non-spatial layer: whole map
            lo, size = np.zeros((K, 2), np.intp), np.tile(np.asarray(in_shape[2:]), (K, 1))
        else:
            g = rec.layers[i].geometry(in_shape[2:])
            if g is not None:
                k, st, p = (np.asarray(v) for v in g)
                a = np.maximum(lo * st - p, 0)
                b = np.minimum((lo + size - 1) * st - p + k, np.asarray(in_shape[2:]))
                lo, size = a, b - a
        out.append((lo, size))
    return out


def project_cropped(rec, req: Request, rule: str = "deconvnet", max_bytes: int = MAX_BYTES,
                    alone: int = ALONE, waste: float = WASTE) -> np.ndarray:
    """Cropped projection of a request -> (K, C_in, H, W), equal to :func:`project_full`."""
    act = rec.outputs[req.layer]
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
    out = np.zeros((K,) + tuple(rec.input.shape[1:]), rec.dtype)
    walk = Walk(rec, own_windows(rec, req.layer, req.pos, K), req.img, rule, out, max_bytes, alone, waste)
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
    nbytes = 3 * walk.rec.dtype.itemsize * n_items * channels * area
    if wasted > walk.waste or nbytes > walk.max_bytes:
        order = np.lexsort((sz[:, 1], sz[:, 0]))           # by window height, then width
        return [order[:n_items // 2], order[n_items // 2:]]
    return []


def _walk(walk: Walk, grp: Group):
    """Apply the inverses from step ``grp.step`` down for the group's items; write them into ``walk.out``."""
    rec, li = walk.rec, len(walk.own) - 1
    for j in range(grp.step, li + 1):
        i = li - j
        lo, sz = walk.own[j]
        t_in = s_in = None
        if lo is not None:
            lo, sz = lo[grp.items], sz[grp.items]
            in_shape = rec.input_shapes[i]
            s_in = tuple(int(v) for v in sz.max(axis=0))
            t_in = np.minimum(lo, np.asarray(in_shape[2:]) - s_in)
            parts = _split(walk, len(grp.items), sz, s_in[0] * s_in[1], in_shape[1])
            if parts:
                for part in parts:
                    sub = grp.part(np.asarray(part))
                    sub.step = j
                    _walk(walk, sub)
                return
        layer = walk.rec.layers[i]
        r, top, size = grp.r, grp.top, grp.size
        if t_in is not None and top is not None and layer.geometry(rec.input_shapes[i][2:]) is None \
                and (s_in != tuple(size) or (t_in != top).any()):
            # a pointwise layer keeps the window: re-cut the signal to this group's windows first
            r, top, size = rewindow(r, top, t_in, s_in), t_in, s_in
        grp.r = layer.inverse_window(r, rec.caches[i], walk.rule, Window(walk.img[grp.items], top, size, t_in, s_in))
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
