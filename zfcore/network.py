"""A sequential network of named layers: forward records what projection needs; ``project`` maps a
feature back to pixels (Zeiler & Fergus, ECCV 2014); receptive-field arithmetic; cropped projection.

    net = build(spec, params)              # or zfcore.models.build_model / load_model
    net.forward(images)                    # records per layer: input shape, output, cache (switches...)
    rec = net.project("conv5", feature=17) # (C, H, W): the strongest activation of map 17, in pixels
    recs = net.project_batch("conv5", features=range(128))   # (128, C, H, W) in one pass

Projection keeps one activation of one feature map (or, ``mode="map"``, the whole map), sets the rest of
the layer to zero, starts from the activation's own value and walks the recorded layers in reverse,
applying each layer's inverse (``zfcore.layers``): unpool at the recorded switches, rectify the signal
(the ``rule``), transposed conv without bias, down to the input. Which inverse follows which is read
from the trace of the forward pass, never from a hand-written index map.

Cropped projection (the default). A single activation reaches only its receptive field, so the signal
below it is zero outside a window that grows layer by layer (``receptive_field``). The cropped path
computes each inverse on that window alone (``Layer.inverse_window``): transposed convs on the crop,
switches moved into the crop's coordinates, ReLU masks cut to it; the result is placed into a zero
image. It equals the whole-map projection (``crop=False``) up to float rounding, and costs a fraction
of it, the more so the lower the layer (at VGG16's conv5_3 about half: its fields span most of the
image). A batch of projections shares one window size per layer (the largest of the batch, each item
over its own window) while windows are small, so the upper layers run as one GEMM per layer for the
whole batch; where sharing would waste work (items clipped at different borders) or memory, the batch
splits, down to one item at a time at the bottom, where one item's GEMMs are large already.

Axis letters: N images in the forward batch, K projections, C channels, H W height and width.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import layers as L

MODES = ("single", "map")


class ReceptiveField(NamedTuple):
    """Receptive field of the units of one layer, per axis (H, W), in input pixels.

    Unit ``(i, j)`` sees input rows ``offset[0] + i*jump[0]`` to ``offset[0] + i*jump[0] + size[0] - 1``
    (likewise columns). ``offset`` is where unit (0, 0)'s field starts; it is negative when the field
    reaches into the zero padding. Recurrence over a layer of kernel k, stride s, padding p:
    ``size += (k - 1) * jump``, ``offset -= p * jump``, ``jump *= s``.
    """
    size: tuple[int, int]
    jump: tuple[int, int]
    offset: tuple[int, int]


class Trace:
    """What one forward pass recorded.

    ``input``: the network input (N, C, H, W) as used (cast to the network's dtype);
    ``names``: the layers run, in order (all, or up to ``upto``);
    ``input_shapes[i]``, ``outputs[i]``, ``caches[i]``: layer i's input shape, output (activation) and
    the cache its inverse needs (switches of pools, inputs of ReLUs).
    """

    def __init__(self, x):
        self.input = x
        self.names: list[str] = []
        self.input_shapes: list[tuple] = []
        self.outputs: list[np.ndarray] = []
        self.caches: list[dict] = []

    def __len__(self):
        return len(self.names)

    def __getitem__(self, name: str) -> np.ndarray:
        """The output (activation) of layer ``name``."""
        return self.outputs[self.names.index(name)]

    def __repr__(self):
        return f"Trace({len(self.names)} layers, input {self.input.shape})"


class Network:
    """A sequential network of named ``zfcore.layers`` layers. See the module docstring."""

    def __init__(self, layers, spec=None, dtype=np.float32):
        self.layers = list(layers)
        names = [l.name for l in self.layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate layer names: {', '.join(dup)}")
        self._index = {n: i for i, n in enumerate(names)}
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.trace: Trace | None = None

    # --- container ----------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``<layer>.weight`` / ``<layer>.bias`` -> array, torch layout."""
        out = {}
        for l in self.layers:
            out.update(l.params)
        return out

    def __getitem__(self, name: str) -> L.Layer:
        return self.layers[self.index(name)]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        body = "\n".join(f"  {l!r}" for l in self.layers)
        return f"Network(\n{body}\n)"

    def index(self, name: str) -> int:
        """Position of layer ``name``; ValueError listing the valid names otherwise."""
        if not isinstance(name, str) or name not in self._index:
            raise ValueError(f"unknown layer {name!r}; valid layer names: {', '.join(self.layer_names)}")
        return self._index[name]

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, x, upto: str | None = None) -> np.ndarray:
        """Run x (N, C, H, W) through the layers (all, or up to and including ``upto``) and return the
        last output. Records a ``Trace`` in ``self.trace`` (replacing the previous one). The input is
        cast to the network's dtype."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise ValueError(f"input must be a real numeric array, got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(f"input must be 4-D (N, C, H, W), got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"input batch is empty: shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        last = len(self.layers) - 1 if upto is None else self.index(upto)
        trace = Trace(x)
        self.trace = None                       # no half-recorded trace if a layer raises
        for layer in self.layers[:last + 1]:
            try:
                y, cache = layer.forward(x)
            except ValueError as e:
                raise ValueError(f"layer {layer.name!r} ({layer.kind}) on input {x.shape}: {e}") from None
            trace.names.append(layer.name)
            trace.input_shapes.append(x.shape)
            trace.outputs.append(y)
            trace.caches.append(cache)
            x = y
        self.trace = trace
        return x

    __call__ = forward

    def activations(self, layer: str) -> np.ndarray:
        """The recorded output of ``layer`` from the last forward pass."""
        return self._trace_upto(self.index(layer)).outputs[self.index(layer)]

    def _trace_upto(self, i: int) -> Trace:
        if self.trace is None:
            raise ValueError("no forward pass recorded: call net.forward(x) before projecting")
        if i >= len(self.trace):
            raise ValueError(f"the last forward pass stopped at {self.trace.names[-1]!r}, before "
                             f"{self.layers[i].name!r}: run forward further (upto={self.layers[i].name!r} or later)")
        return self.trace

    # --- projection -----------------------------------------------------------------------------------
    def strongest(self, layer: str, feature: int, image: int = 0):
        """Position (row, col) of the largest activation of map ``feature`` of ``layer`` in ``image``
        (the first in row-major order on ties); for a non-spatial layer, None."""
        items = self._resolve(layer, [feature], [image], None, "single")
        return None if items["pos"] is None else tuple(int(v) for v in items["pos"][0])

    def project(self, layer: str, feature: int, image: int = 0, position=None, mode: str = "single",
                rule: str = "deconvnet", crop: bool = True) -> np.ndarray:
        """Project one feature of ``layer`` back to the input: returns (C_in, H, W), the input's shape.

        feature: the feature map (conv, relu, pool layers) or unit (linear layers) to keep.
        image: which image of the last forward batch.
        position: (row, col) in the feature map; default the strongest activation of that map in
            that image. Not applicable to non-spatial layers (must be None there) nor to mode "map".
        mode: ``"single"`` keeps one activation; ``"map"`` keeps the whole feature map (computed on
            whole maps: ``crop`` does not apply).
        rule: ``"deconvnet"``, ``"guided"`` or ``"gradient"`` (see ``zfcore.layers``).
        crop: compute through the receptive field only (default; equal to ``crop=False``).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(map(repr, MODES))}")
        if mode == "map":
            if position is not None:
                raise ValueError("position does not apply to mode='map' (the whole feature map is kept)")
            items = self._resolve(layer, [feature], [image], None, "map")
            return self._project_full(items, rule, whole_map=True)[0]
        positions = None if position is None else [position]
        return self.project_batch(layer, [feature], [image], positions, rule=rule, crop=crop)[0]

    def project_batch(self, layer: str, features, images=None, positions=None, rule: str = "deconvnet",
                      crop: bool = True, max_bytes: int = 256 * 2**20) -> np.ndarray:
        """Project K single activations of ``layer`` together along the batch axis -> (K, C_in, H, W).

        features: K feature indices (an int is repeated to match the other arguments);
        images: None (image 0), an int, or K image indices into the last forward batch;
        positions: None (each item's strongest activation), one (row, col) pair for all items, or K
            pairs (spatial layers only).
        Item k equals ``project(layer, features[k], images[k], positions[k], rule=rule, crop=crop)``.
        The batch splits into parts where its intermediate arrays would pass ``max_bytes`` (see the
        module docstring); the whole-map path (``crop=False``) runs in chunks of that size.
        """
        L.check_rule(rule)
        items = self._resolve(layer, features, images, positions, "single")
        K = len(items["img"])
        if not crop:
            chunk = max(1, int(max_bytes // max(1, self._bytes_per_item_full(items["layer"]))))
            return np.concatenate([self._project_full(self._slice(items, s, s + chunk), rule)
                                   for s in range(0, K, chunk)])
        return self._project_cropped(items, rule, max_bytes)

    # --- projection internals -------------------------------------------------------------------------
    def _resolve(self, layer, features, images, positions, mode):
        """Validate a projection request; returns dict(layer index, img (K,), feat (K,), pos (K, 2) or
        None, val (K,) starting values)."""
        li = self.index(layer)
        trace = self._trace_upto(li)
        act = trace.outputs[li]
        N = act.shape[0]
        spatial = act.ndim == 4
        feats = np.atleast_1d(np.asarray(features))
        if feats.ndim != 1 or feats.dtype.kind not in "iu" or feats.size == 0:
            raise ValueError(f"features must be an int or a non-empty 1-D sequence of ints, got {features!r}")
        imgs = np.atleast_1d(np.asarray(0 if images is None else images))
        if imgs.ndim != 1 or imgs.dtype.kind not in "iu" or imgs.size == 0:
            raise ValueError(f"images must be an int or a non-empty 1-D sequence of ints, got {images!r}")
        npos = 1
        if positions is not None and spatial and mode == "single":
            p = np.asarray(positions)
            npos = p.shape[0] if p.ndim == 2 else 1
        K = max(len(feats), len(imgs), npos)
        if any(n not in (1, K) for n in (len(feats), len(imgs), npos)):
            raise ValueError(f"features, images and positions need one entry per item or a single one; got "
                             f"{len(feats)} features, {len(imgs)} images, {npos} positions")
        if len(feats) == 1:
            feats = np.repeat(feats, K)
        if len(imgs) == 1:
            imgs = np.repeat(imgs, K)
        nfeat = act.shape[1]
        what = "feature maps" if spatial else "units"
        bad = (feats < 0) | (feats >= nfeat)
        if bad.any():
            raise ValueError(f"feature {int(feats[bad][0])} out of range: layer {layer!r} has {nfeat} {what} "
                             f"(0 to {nfeat - 1})")
        bad = (imgs < 0) | (imgs >= N)
        if bad.any():
            raise ValueError(f"image {int(imgs[bad][0])} out of range: the last forward batch has {N} "
                             f"image{'s' if N != 1 else ''} (0 to {N - 1})")
        feats, imgs = feats.astype(np.intp), imgs.astype(np.intp)
        pos = None
        if not spatial:
            if positions is not None:
                raise ValueError(f"layer {layer!r} is not spatial (output {act.shape[1:]}): position does not "
                                 "apply; the unit is the feature index")
            val = act[imgs, feats]
        elif mode == "map":
            val = None
        else:
            H, W = act.shape[2:]
            if positions is None:
                flat = act[imgs, feats].reshape(K, -1).argmax(axis=1)
                pos = np.stack(np.divmod(flat, W), axis=1)
            else:
                pos = np.asarray(positions)
                if pos.shape == (2,):
                    pos = pos[None]
                if pos.ndim == 2 and pos.shape[0] == 1 and K > 1:
                    pos = np.repeat(pos, K, axis=0)
                if pos.shape != (K, 2) or pos.dtype.kind not in "iu":
                    raise ValueError(f"positions must be (row, col) pairs of ints, one per item ({K}), "
                                     f"got {positions!r}")
                bad = (pos[:, 0] < 0) | (pos[:, 0] >= H) | (pos[:, 1] < 0) | (pos[:, 1] >= W)
                if bad.any():
                    r, c = pos[bad][0]
                    raise ValueError(f"position {(int(r), int(c))} out of range: layer {layer!r} maps are "
                                     f"{H}x{W} (rows 0 to {H - 1}, columns 0 to {W - 1})")
            pos = pos.astype(np.intp)
            val = act[imgs, feats, pos[:, 0], pos[:, 1]]
        return dict(layer=li, img=imgs, feat=feats, pos=pos, val=val)

    @staticmethod
    def _slice(items, a, b=None):
        sel = slice(a, b) if b is not None else a
        return {k: (v[sel] if isinstance(v, np.ndarray) else v) for k, v in items.items()}

    def _project_full(self, items, rule, whole_map=False):
        """Whole-map projection: start signal of the layer's full output shape, each layer's ``inverse``."""
        L.check_rule(rule)
        li, img, feat = items["layer"], items["img"], items["feat"]
        trace = self.trace
        act = trace.outputs[li]
        K = len(img)
        r = np.zeros((K,) + act.shape[1:], act.dtype)
        k = np.arange(K)
        if whole_map:
            r[k, feat] = act[img, feat]
        elif act.ndim == 4:
            r[k, feat, items["pos"][:, 0], items["pos"][:, 1]] = items["val"]
        else:
            r[k, feat] = items["val"]
        for i in range(li, -1, -1):
            layer = self.layers[i]
            r = layer.inverse(r, layer.take(trace.caches[i], img), rule)
        return r

    def _own_windows(self, li, pos, K):
        """Each item's minimal windows, layer by layer from ``li`` down to 0: a list of (lo, size) per
        layer, the window of the layer's *input* that the item's signal can reach: lo (K, 2) and size
        (K, 2) int arrays, or None where the input is not spatial. ``pos`` (K, 2): the items' positions
        in layer ``li``'s output, or None for a non-spatial layer (then every spatial window is the whole
        map). The input window of a windowed layer is the union of the kernel footprints of the output
        window, clipped to the map; a pointwise layer keeps its window."""
        trace = self.trace
        lo, size = (pos, np.ones_like(pos)) if pos is not None else (None, None)
        out = []
        for i in range(li, -1, -1):
            in_shape = trace.input_shapes[i]
            if len(in_shape) != 4:
                lo = size = None
            else:
                HW = np.asarray(in_shape[2:])
                if lo is None:                                   # below a non-spatial layer: whole map
                    lo, size = np.zeros((K, 2), np.intp), np.tile(HW, (K, 1))
                else:
                    g = self.layers[i].geometry(in_shape[2:])
                    if g is not None:
                        k, st, p = (np.asarray(v) for v in g)
                        a = np.maximum(lo * st - p, 0)
                        b = np.minimum((lo + size - 1) * st - p + k, HW)
                        lo, size = a, b - a
            out.append((lo, size))
        return out

    def _bytes_per_item_full(self, li):
        itemsize = self.dtype.itemsize
        return 3 * itemsize * max(int(np.prod(s[1:])) for s in self.trace.input_shapes[:li + 1])

    # A group of projections shares one window size per layer (the largest of the group), each item
    # placed over its own minimal window (shifted back inside the map where the shared size overhangs):
    # one GEMM per layer for the group where windows are small (the top of the network). The group is
    # split, at the layer where it happens, when that wastes more than WASTE times the work of the
    # items' own windows (items clipped at different borders), or when its arrays would pass max_bytes;
    # each part then continues with windows fitted to its own items.
    WASTE = 1.25
    # ... and split into single items once one item's window holds this many values (C * h * w): from
    # there on one item's transposed convolution is a large GEMM already, and sharing a window size
    # would only add work.
    ALONE = 2 ** 16

    def _project_cropped(self, items, rule, max_bytes=256 * 2**20):
        """Cropped projection of a batch -> (K, C_in, H, W)."""
        li, img, feat = items["layer"], items["img"], items["feat"]
        trace = self.trace
        act = trace.outputs[li]
        K = len(img)
        k = np.arange(K)
        pos = items["pos"] if act.ndim == 4 else None
        if pos is not None:
            r = np.zeros((K, act.shape[1], 1, 1), act.dtype)
            r[k, feat, 0, 0] = items["val"]
        else:
            r = np.zeros((K,) + act.shape[1:], act.dtype)
            r[k, feat] = items["val"]
        own = self._own_windows(li, pos, K)
        out = np.zeros((K,) + tuple(trace.input.shape[1:]), self.dtype)
        size = None if pos is None else (1, 1)
        self._walk(k, r, 0, pos, size, own, rule, max_bytes, out, img)
        return out

    def _walk(self, g, r, j0, top, size, own, rule, max_bytes, out, img):
        """Apply the inverses from step j0 (layer ``li - j0``) down for the items ``g`` (indices into the
        batch), whose signal ``r`` lives on output windows ``top`` (|g|, 2) of ``size``; write the
        results into ``out``."""
        li = len(own) - 1
        trace = self.trace
        itemsize = self.dtype.itemsize
        for j in range(j0, li + 1):
            i = li - j
            lo, sz = own[j]
            if lo is None:
                t_in = s_in = None
            else:
                lo, sz = lo[g], sz[g]
                in_shape = trace.input_shapes[i]
                s_in = tuple(int(v) for v in sz.max(axis=0))
                t_in = np.minimum(lo, np.asarray(in_shape[2:]) - s_in)
                if len(g) > 1:
                    area = s_in[0] * s_in[1]
                    if in_shape[1] * area >= self.ALONE:            # big enough alone: one by one
                        parts = [[q] for q in range(len(g))]
                    else:
                        waste = len(g) * area / max(1, int((sz[:, 0] * sz[:, 1]).sum()))
                        nbytes = 3 * itemsize * len(g) * in_shape[1] * area
                        parts = []
                        if waste > self.WASTE or nbytes > max_bytes:
                            order = np.lexsort((sz[:, 1], sz[:, 0]))   # by window height, then width
                            parts = [order[:len(g) // 2], order[len(g) // 2:]]
                    if parts:
                        for part in parts:
                            part = np.asarray(part)
                            self._walk(g[part], r[part], j, None if top is None else top[part], size,
                                       own, rule, max_bytes, out, img)
                        return
            layer = self.layers[i]
            if t_in is not None and top is not None and layer.geometry(trace.input_shapes[i][2:]) is None \
                    and (s_in != tuple(size) or (t_in != top).any()):
                # a pointwise layer keeps the window: re-cut the signal to this group's windows first
                r, top, size = L.rewindow(r, top, t_in, s_in), t_in, s_in
            win = L.Window(img[g], top, size, t_in, s_in)
            r = layer.inverse_window(r, trace.caches[i], rule, win)
            top, size = t_in, s_in
        h, w = size
        if len(g) == 1 or (top == top[0]).all():
            out[g, :, top[0, 0]:top[0, 0] + h, top[0, 1]:top[0, 1] + w] = r
        else:
            for q, kk in enumerate(g):
                out[kk, :, top[q, 0]:top[q, 0] + h, top[q, 1]:top[q, 1] + w] = r[q]

    # --- receptive fields -----------------------------------------------------------------------------
    def _spatial_shapes(self, input_size=None):
        """Input shape (C, H, W) of every layer, from the trace or from ``input_size`` (C, H, W) / (H, W)."""
        if input_size is None:
            if self.trace is None:
                raise ValueError("no input size: pass input_size=(H, W) or run forward first")
            shapes = [s[1:] for s in self.trace.input_shapes]
            if len(shapes) < len(self.layers):          # forward stopped early: continue symbolically
                last = self.layers[len(shapes) - 1].output_shape(shapes[-1])
                shapes += self._shapes_from(last, len(shapes))
            return shapes
        size = tuple(int(v) for v in input_size)
        if len(size) == 2:
            first = next((l for l in self.layers if isinstance(l, L.Conv2d)), None)
            size = ((first.weight.shape[1] if first is not None else 1),) + size
        return self._shapes_from(size, 0)

    def _shapes_from(self, shape, start):
        shapes = []
        for layer in self.layers[start:]:
            shapes.append(tuple(shape))
            try:
                shape = layer.output_shape(tuple(shape))
            except (ValueError, TypeError) as e:
                raise ValueError(f"layer {layer.name!r} cannot take input {tuple(shape)}: {e}") from None
        return shapes

    def receptive_fields(self, input_size=None) -> dict[str, ReceptiveField]:
        """``ReceptiveField`` of every spatial layer's output (layers up to the first non-spatial one).
        Shapes come from the last forward pass, or from ``input_size`` ((H, W) or (C, H, W))."""
        shapes = self._spatial_shapes(input_size)
        size, jump, off = np.array([1, 1]), np.array([1, 1]), np.array([0, 0])
        out = {}
        for layer, shape in zip(self.layers, shapes):
            if len(shape) != 3 or len(layer.output_shape(shape)) != 3:
                break
            g = layer.geometry(shape[1:])
            if g is not None:
                k, s, p = (np.asarray(v) for v in g)
                size = size + (k - 1) * jump
                off = off - p * jump
                jump = jump * s
            out[layer.name] = ReceptiveField(tuple(int(v) for v in size), tuple(int(v) for v in jump),
                                             tuple(int(v) for v in off))
        return out

    def receptive_field(self, layer: str, input_size=None) -> ReceptiveField:
        """``ReceptiveField`` (size, jump, offset) of the units of ``layer``; ValueError for a
        fully connected layer (its field is the whole input)."""
        self.index(layer)
        rfs = self.receptive_fields(input_size)
        if layer not in rfs:
            raise ValueError(f"layer {layer!r} is not spatial: each of its units sees the whole input")
        return rfs[layer]

    def input_box(self, layer: str, position=None, input_size=None) -> tuple[int, int, int, int]:
        """Input pixels that can influence unit ``position`` (row, col) of ``layer``: (top, left, bottom,
        right), inclusive, clipped to the image. For a non-spatial layer (position None) the whole image."""
        shapes = self._spatial_shapes(input_size)
        H, W = shapes[0][1:]
        li = self.index(layer)
        rfs = self.receptive_fields(input_size)
        if layer not in rfs:
            if position is not None:
                raise ValueError(f"layer {layer!r} is not spatial: position does not apply")
            return (0, 0, H - 1, W - 1)
        out_shape = self.layers[li].output_shape(shapes[li])
        try:
            r, c = (int(v) for v in position)
        except (TypeError, ValueError):
            raise ValueError(f"position must be a (row, col) pair, got {position!r}") from None
        if not (0 <= r < out_shape[1] and 0 <= c < out_shape[2]):
            raise ValueError(f"position {(r, c)} out of range: layer {layer!r} maps are "
                             f"{out_shape[1]}x{out_shape[2]}")
        rf = rfs[layer]
        top, left = rf.offset[0] + r * rf.jump[0], rf.offset[1] + c * rf.jump[1]
        bottom, right = top + rf.size[0] - 1, left + rf.size[1] - 1
        return (max(top, 0), max(left, 0), min(bottom, H - 1), min(right, W - 1))


# Building networks from specs lives in ``zfcore.models`` (the spec vocabulary), which imports this
# module; these two names stay here for existing callers and import it only when called.

def kaiming_params(spec, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Seeded random weights for a spec: ``zfcore.models.kaiming_params``."""
    from .models import kaiming_params

    return kaiming_params(spec, seed, dtype)


def build(spec, params: dict | None = None, seed: int = 0, dtype=np.float32) -> Network:
    """A ``Network`` from a spec: ``zfcore.models.build``."""
    from .models import build

    return build(spec, params, seed, dtype)
