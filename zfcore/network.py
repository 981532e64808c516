"""A sequential network of named layers: forward records what projection needs; ``project`` maps a
feature back to pixels (Zeiler & Fergus, ECCV 2014); receptive-field arithmetic; cropped projection.

    net = build(spec, params)              # or zfcore.models.build_model / load_model
    net.forward(images)                    # records per layer: input shape, output, cache (switches...)
    rec = net.project("conv5", feature=17) # (C, H, W): the strongest activation of map 17, in pixels
    recs = net.project_batch("conv5", features=range(128))   # (128, C, H, W) in one pass

Projection (``project``, ``project_batch``, ``strongest``) is implemented in ``zfcore.projection``;
the methods here delegate to it. Receptive fields: ``receptive_field(s)``, ``ReceptiveField.box`` and
``input_box``.

Axis letters: N images in the forward batch, K projections, C channels, H W height and width.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _kernels as _kern
from . import layers as L
from . import projection
from .projection import MODES  # noqa: F401  (re-exported)


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

    def box(self, r: int, c: int, clip=None) -> tuple[int, int, int, int]:
        """Input pixels seen by unit (r, c): (top, left, bottom, right), inclusive; ``clip=(H, W)``
        clips the box to an H x W image (without it the box may reach into the padding)."""
        top, left = self.offset[0] + r * self.jump[0], self.offset[1] + c * self.jump[1]
        bottom, right = top + self.size[0] - 1, left + self.size[1] - 1
        if clip is None:
            return (top, left, bottom, right)
        H, W = clip
        return (max(top, 0), max(left, 0), min(bottom, H - 1), min(right, W - 1))


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
        x = self._checked_input(x)
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

    def infer(self, x, upto: str | None = None, keep=()) -> tuple[np.ndarray, dict]:
        """Inference without a trace: run x (N, C, H, W) up to ``upto`` (default: all layers) and return
        (last output, {name: output} for the layers named in ``keep``). Records nothing, so ``self.trace``
        is left as it was; pools skip their switches, a ReLU followed by a max-pool runs after it (on
        the smaller map; the two commute) unless the ReLU is kept, and ReLUs rectify in place where the
        array is the network's own scratch (not the input, not kept). Same values as ``forward``.

        Convs where ``_kernels.nhwc_pays`` (at least 16 input channels, and the NCHW path would take its
        strided im2col, i.e. a stride above 1 or fewer than 32 output columns, and not Winograd) run
        with the channels last (``ops.conv2d_nhwc``), and so do the ReLUs and max-pools after them
        (``ops.max_pool2d_values_nhwc``); kept outputs of such layers are returned as (N, C, H, W)
        views of the channels-last arrays (not contiguous), and the run goes back to NCHW before any
        other layer and at the end."""
        x = self._checked_input(x)
        keep = [keep] if isinstance(keep, str) else list(keep)
        last = len(self.layers) - 1 if upto is None else self.index(upto)
        for name in keep:
            if self.index(name) > last:
                raise ValueError(f"keep: layer {name!r} comes after upto={self.layers[last].name!r}")
        kept, own = {}, False                # own: x is an array this pass made and nobody else sees
        cl = False                           # x is (N, H, W, C)
        layers = self.layers[:last + 1]
        i = 0
        while i < len(layers):
            layer = layers[i]
            try:
                want = self._channels_last(layer, x, cl)
                if want != cl:
                    x = np.ascontiguousarray(x.transpose((0, 2, 3, 1) if want else (0, 3, 1, 2)))
                    cl, own = want, True
                if layer.kind == "relu" and i + 1 < len(layers) and layers[i + 1].kind == "maxpool" \
                        and layer.name not in keep:
                    # relu(maxpool(x)) == maxpool(relu(x)) (both monotone): rectify the 4x smaller output
                    i += 1
                    layer = layers[i]
                    y = layer.infer_nhwc(x) if cl else layer.infer(x)
                    np.maximum(y, 0, out=y)
                elif layer.kind == "relu" and own and x.base is None:
                    y = np.maximum(x, 0, out=x)
                elif cl and layer.kind in ("conv", "maxpool"):
                    y = layer.infer_nhwc(x)
                else:
                    y = layer.infer(x)
            except ValueError as e:
                shape = (x.shape[0], x.shape[3], *x.shape[1:3]) if cl else x.shape
                raise ValueError(f"layer {layer.name!r} ({layer.kind}) on input {shape}: {e}") from None
            own = y is not x and y.base is None
            if layer.name in keep:
                kept[layer.name] = y.transpose(0, 3, 1, 2) if cl else y
                own = False
            x = y
            i += 1
        if cl:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x, kept

    @staticmethod
    def _channels_last(layer, x, cl: bool) -> bool:
        """Whether ``infer`` runs ``layer`` on x with the channels last (x is so already when ``cl``)."""
        if layer.kind != "conv":
            return cl and layer.kind in ("relu", "maxpool")
        if x.ndim != 4:
            return False                         # the layer's own check reports it
        F, C = layer.weight.shape[:2]
        N, H, W = (x.shape[0], x.shape[1], x.shape[2]) if cl else (x.shape[0], x.shape[2], x.shape[3])
        Ho, Wo = layer.output_shape((C, H, W))[1:]
        return _kern.nhwc_pays(C, F, layer.weight.shape[2:], layer.stride, N, Ho, Wo)

    def _checked_input(self, x) -> np.ndarray:
        """x as a contiguous (N, C, H, W) array of the network's dtype; ValueError otherwise."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise ValueError(f"input must be a real numeric array, got dtype {x.dtype}")
        if x.ndim != 4:
            raise ValueError(f"input must be 4-D (N, C, H, W), got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"input batch is empty: shape {x.shape}")
        return np.ascontiguousarray(x, dtype=self.dtype)

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

    # --- projection (zfcore.projection) -------------------------------------------------------------
    def strongest(self, layer: str, feature: int, image: int = 0):
        """Position (row, col) of the largest activation of map ``feature`` of ``layer`` in ``image``
        (the first in row-major order on ties); for a non-spatial layer, None."""
        return projection.strongest(self, layer, feature, image)

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
        return projection.project(self, layer, feature, image, position, mode, rule, crop)

    def project_batch(self, layer: str, features, images=None, positions=None, rule: str = "deconvnet",
                      crop: bool = True, max_bytes: int = 256 * 2**20) -> np.ndarray:
        """Project K single activations of ``layer`` together along the batch axis -> (K, C_in, H, W).

        features: K feature indices (an int is repeated to match the other arguments);
        images: None (image 0), an int, or K image indices into the last forward batch;
        positions: None (each item's strongest activation), one (row, col) pair for all items, or K
            pairs (spatial layers only).
        Item k equals ``project(layer, features[k], images[k], positions[k], rule=rule, crop=crop)``.
        The batch splits into parts where its intermediate arrays would pass ``max_bytes`` (see
        ``zfcore.projection``); the whole-map path (``crop=False``) runs in chunks of that size.
        """
        return projection.project_batch(self, layer, features, images, positions, rule, crop, max_bytes)

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
        return rfs[layer].box(r, c, clip=(H, W))

