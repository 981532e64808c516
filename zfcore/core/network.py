"""A sequential network of named layers, and the record of one forward pass through it.

    net = build(spec, params)                  # or zfcore.models.build_model / load_model
    rec = net.forward(images)                  # a Record: per layer its input shape, output, cache
    img = rec.project("conv5", feature=17)     # (C, H, W): the strongest activation of map 17, in pixels
    imgs = rec.project_batch("conv5", features=range(128))   # (128, C, H, W) in one pass
    logits = net(images)                       # inference alone: no record, no switches

A ``Record`` is a value: projections, receptive fields and strongest-feature queries are asked of it,
and later passes through the same network (an analysis over other images, a thread of its own) make
records of their own and leave it as it is. Projection (``project``, ``project_batch``, ``backward``)
is implemented in ``zfcore.core.projection``, receptive fields in ``zfcore.core.receptive``.

Axis letters: N images in the forward batch, K projections, C channels, H W height and width.
"""
from __future__ import annotations

import copy

import numpy as np

from zfcore.core import _kernels as _kern
from zfcore.core import layers as L
from zfcore.core import projection
from zfcore.core import receptive
from zfcore.core._checks import check_image_array
from zfcore.core.receptive import ReceptiveField
from zfcore.errors import ArgumentError, check_index, suggest

MODES = projection.MODES


class Record:
    """What one forward pass recorded, and the queries that read it.

    ``net``: the network; ``input``: the network input (N, C, H, W) as used (cast to the network's
    dtype); ``layers``: the layers run, in order (all, or up to ``upto``); ``names``: their names;
    ``input_shapes[i]``, ``outputs[i]``, ``caches[i]``: layer i's input shape, output (activation) and
    the cache its inverse needs (the switches of a pool, the input of a ReLU). A record that starts
    part-way (``Network.forward(x, start=...)``) holds the layers from there on.
    """

    def __init__(self, net, x, layers, input_shapes, outputs, caches):
        self.net = net
        self.input = x
        self.layers = list(layers)
        self.names = [l.name for l in self.layers]
        self.input_shapes = list(input_shapes)
        self.outputs = list(outputs)
        self.caches = list(caches)
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self):
        return len(self.names)

    def __contains__(self, name) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> np.ndarray:
        """The output (activation) of layer ``name``."""
        return self.outputs[self.index(name)]

    def __repr__(self):
        return f"Record({len(self.names)} layers {self.names[0]!r}..{self.names[-1]!r}, input {self.input.shape})"

    @property
    def output(self) -> np.ndarray:
        """The last recorded output (the logits of a whole pass)."""
        return self.outputs[-1]

    @property
    def dtype(self):
        return self.net.dtype

    def index(self, name: str) -> int:
        """Position of layer ``name`` in this record; ``ArgumentError`` if the pass did not run it."""
        if name not in self._index:
            self.net.index(name)                       # an unknown name: the network's own message
            raise ArgumentError(f"layer {name!r} is not in this record (it holds {self.names[0]!r} to "
                                f"{self.names[-1]!r}): run forward further (upto={name!r} or later)")
        return self._index[name]

    def activations(self, layer: str) -> np.ndarray:
        """The recorded output of ``layer``."""
        return self[layer]

    def layer_input(self, layer: str) -> np.ndarray:
        """The array ``layer`` received: the output of the layer before it, or the record's input."""
        i = self.index(layer)
        return self.input if i == 0 else self.outputs[i - 1]

    def switches(self, layer: str) -> np.ndarray:
        """The switches a max-pool ``layer`` recorded: (N, C, Ho, Wo) flat indices ``h*W + w`` into each
        input plane, the first maximum of each window in scan order."""
        cache = self.caches[self.index(layer)]
        if "switches" not in cache:
            raise ArgumentError(f"layer {layer!r} ({self.layers[self.index(layer)].kind}) records no switches")
        return cache["switches"]

    # --- features ------------------------------------------------------------------------------------
    def strongest(self, layer: str, feature: int, image: int = 0):
        """Position (row, col) of the largest activation of map ``feature`` of ``layer`` in ``image``
        (the first in row-major order on ties); for a non-spatial layer, None."""
        return projection.strongest(self, layer, feature, image)

    def map_maxima(self, layer: str) -> np.ndarray:
        """(N, F): the strongest activation of every feature map (or unit) of ``layer`` per image."""
        act = self[layer]
        return act.reshape(act.shape[0], act.shape[1], -1).max(axis=2)

    def top_features(self, layer: str, image: int = 0, k: int = 1):
        """The ``k`` feature maps of ``layer`` with the strongest activation in ``image``: (features
        (k,), values (k,)), strongest first (ties: the smaller index first). ``k=1`` gives "the
        strongest feature" of the image at that layer."""
        m = self.map_maxima(layer)
        image = check_index(image, m.shape[0], "image")
        order = np.argsort(-m[image], kind="stable")[:k]
        return order, m[image, order]

    # --- projection (zfcore.core.projection) -----------------------------------------------------------
    def project(self, layer: str, feature: int, image: int = 0, position=None, mode: str = "single",
                rule: str = "deconvnet", crop: bool = True) -> np.ndarray:
        """Project one feature of ``layer`` back to the input: returns (C_in, H, W), the input's shape.

        feature: the feature map (conv, relu, pool layers) or unit (linear layers) to keep.
        image: which image of the recorded batch.
        position: (row, col) in the feature map; default the strongest activation of that map in
            that image. Not applicable to non-spatial layers (must be None there) nor to mode "map".
        mode: ``"single"`` keeps one activation; ``"map"`` keeps the whole feature map (computed on
            whole maps: ``crop`` does not apply).
        rule: ``"deconvnet"``, ``"guided"`` or ``"gradient"`` (``zfcore.core.layers.RULES``).
        crop: compute through the receptive field only (default; equal to ``crop=False``).
        """
        return projection.project(self, layer, feature, image, position, mode, rule, crop)

    def project_batch(self, layer: str, features, images=None, positions=None, rule: str = "deconvnet",
                      crop: bool = True, max_bytes: int = projection.MAX_BYTES) -> np.ndarray:
        """Project K single activations of ``layer`` together along the batch axis -> (K, C_in, H, W).

        features: K feature indices (an int is repeated to match the other arguments);
        images: None (image 0), an int, or K image indices into the recorded batch;
        positions: None (each item's strongest activation), one (row, col) pair for all items, or K
            pairs (spatial layers only).
        Item k equals ``project(layer, features[k], images[k], positions[k], rule=rule, crop=crop)``.
        The batch splits into parts where its intermediate arrays would pass ``max_bytes`` (see
        ``zfcore.core.projection``); the whole-map path (``crop=False``) runs in chunks of that size.
        """
        return projection.project_batch(self, layer, features, images, positions, rule, crop, max_bytes)

    def backward(self, signal, layer: str | None = None, down_to: str | None = None, rule: str = "deconvnet",
                 images=None, stages: bool = False):
        """The deconvnet walk itself: apply the inverse of every recorded layer from ``layer`` (default:
        the last) down to ``down_to`` (inclusive; default: the first), to ``signal`` (K, ...) shaped as
        ``layer``'s output. ``images`` (K,): which recorded image each item belongs to (default: item
        k is image k). Returns the signal at ``down_to``'s input, and with ``stages`` also the list of
        (layer name, kind, signal) after each inverse. ``rule="gradient"`` gives the gradient of the
        recorded pass (LRN passed through, module ``zfcore.core.layers``)."""
        return projection.backward(self, signal, layer, down_to, rule, images, stages)

    # --- receptive fields ------------------------------------------------------------------------------
    def receptive_fields(self) -> dict[str, ReceptiveField]:
        """``ReceptiveField`` of every spatial layer's output, for this record's input size."""
        return self.net.receptive_fields(self.input.shape[1:])

    def receptive_field(self, layer: str) -> ReceptiveField:
        """``ReceptiveField`` (size, jump, offset) of the units of ``layer``."""
        return self.net.receptive_field(layer, self.input.shape[1:])

    def input_box(self, layer: str, position=None) -> tuple[int, int, int, int]:
        """Input pixels (top, left, bottom, right), inclusive, clipped to the image, that can influence
        unit ``position`` (row, col) of ``layer``; for a non-spatial layer (position None) the image."""
        return self.net.input_box(layer, position, self.input.shape[1:])


class Network:
    """A sequential network of named ``zfcore.core.layers`` layers. It holds the layers and their
    weights and nothing of any pass through it: ``forward`` returns a ``Record``. See the module
    docstring."""

    def __init__(self, layers, spec=None, dtype=np.float32, input_shape=None):
        self.layers = list(layers)
        names = [l.name for l in self.layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ArgumentError(f"duplicate layer names: {', '.join(dup)}")
        self._index = {n: i for i, n in enumerate(names)}
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)

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
        """Position of layer ``name``; ``ArgumentError`` naming the nearest valid names otherwise."""
        if not isinstance(name, str) or name not in self._index:
            names = self.layer_names
            raise ArgumentError(f"unknown layer {name!r}{suggest(str(name), names)} (layers: {', '.join(names)})")
        return self._index[name]

    def astype(self, dtype) -> "Network":
        """The same network computing in ``dtype`` (weights cast; the layers are copies)."""
        layers = []
        for layer in self.layers:
            layer = copy.copy(layer)
            for attr in ("weight", "bias"):
                if getattr(layer, attr, None) is not None:
                    setattr(layer, attr, getattr(layer, attr).astype(dtype))
            layers.append(layer)
        return Network(layers, self.spec, dtype, self.input_shape)

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, x, upto: str | None = None, start: str | None = None) -> Record:
        """Run x (N, C, H, W) through the layers (all, or up to and including ``upto``) and return the
        ``Record`` of the pass. The input is cast to the network's dtype. ``start``: the first layer to
        run (x is then that layer's input, of any shape it takes); the record holds the layers run."""
        first = 0 if start is None else self.index(start)
        x = self._checked_input(x, spatial=first == 0)
        last = len(self.layers) - 1 if upto is None else self.index(upto)
        if last < first:
            raise ArgumentError(f"upto={upto!r} comes before start={start!r}")
        x0, shapes, outputs, caches = x, [], [], []
        layers = self.layers[first:last + 1]
        for layer in layers:
            try:
                y, cache = layer.forward(x)
            except ValueError as e:
                raise ArgumentError(f"layer {layer.name!r} ({layer.kind}) on input {x.shape}: {e}") from None
            shapes.append(x.shape)
            outputs.append(y)
            caches.append(cache)
            x = y
        return Record(self, x0, layers, shapes, outputs, caches)

    def __call__(self, x, upto: str | None = None) -> np.ndarray:
        """The output of the network (or of layer ``upto``) for x: ``infer`` without a record."""
        return self.infer(x, upto)[0]

    def infer(self, x, upto: str | None = None, keep=()) -> tuple[np.ndarray, dict]:
        """Inference without a record: run x (N, C, H, W) up to ``upto`` (default: all layers) and return
        (last output, {name: output} for the layers named in ``keep``). Pools skip their switches, a
        ReLU followed by a max-pool runs after it (on the smaller map; the two commute) unless the ReLU
        is kept, and ReLUs rectify in place where the array is the network's own scratch (not the
        input, not kept). Same values as ``forward``.

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
                raise ArgumentError(f"keep: layer {name!r} comes after upto={self.layers[last].name!r}")
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
                raise ArgumentError(f"layer {layer.name!r} ({layer.kind}) on input {shape}: {e}") from None
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

    def _checked_input(self, x, spatial: bool = True) -> np.ndarray:
        """x as a contiguous (N, C, H, W) array of the network's dtype (``spatial``; else any (N, ...));
        ``ArgumentError`` otherwise."""
        x = check_image_array(x, "input")          # floats, finite: no uint8 on a 0-255 scale, no NaN
        if spatial and x.ndim != 4:
            raise ArgumentError(f"input must be 4-D (N, C, H, W), got shape {x.shape}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ArgumentError(f"input batch is empty: shape {x.shape}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    # --- receptive fields -----------------------------------------------------------------------------
    def _input_size(self, input_size):
        """(C, H, W) from ``input_size`` ((H, W) or (C, H, W)) or, if None, the network's own input shape."""
        if input_size is None:
            if self.input_shape is None:
                raise ArgumentError("no input size: pass input_size=(H, W), or ask the record of a forward "
                                    "pass (rec.receptive_field(layer))")
            return self.input_shape
        try:
            size = tuple(int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ArgumentError(f"input_size must be (H, W) or (C, H, W), got {input_size!r}") from None
        if len(size) == 2:
            first = next((l for l in self.layers if isinstance(l, L.Conv2d)), None)
            size = ((first.weight.shape[1] if first is not None else 1),) + size
        if len(size) != 3 or min(size) < 1:
            raise ArgumentError(f"input_size must be (H, W) or (C, H, W) of positive sizes, got {input_size!r}")
        return size

    def shapes(self, input_size=None) -> list[tuple]:
        """Input shape (C, H, W) (or (features,)) of every layer for an input of ``input_size``."""
        shape, shapes = self._input_size(input_size), []
        for layer in self.layers:
            shapes.append(tuple(shape))
            try:
                shape = layer.output_shape(tuple(shape))
            except (ValueError, TypeError) as e:
                raise ArgumentError(f"layer {layer.name!r} cannot take input {tuple(shape)}: {e}") from None
        return shapes

    def receptive_fields(self, input_size=None) -> dict[str, ReceptiveField]:
        """``ReceptiveField`` of every spatial layer's output (layers up to the first non-spatial one),
        for inputs of ``input_size`` ((H, W) or (C, H, W); default: the network's ``input_shape``)."""
        return receptive.receptive_fields(self.layers, self.shapes(input_size))

    def receptive_field(self, layer: str, input_size=None) -> ReceptiveField:
        """``ReceptiveField`` (size, jump, offset) of the units of ``layer``; ``ArgumentError`` for a
        fully connected layer (its field is the whole input)."""
        self.index(layer)
        rfs = self.receptive_fields(input_size)
        if layer not in rfs:
            raise ArgumentError(f"layer {layer!r} is not spatial: each of its units sees the whole input")
        return rfs[layer]

    def input_box(self, layer: str, position=None, input_size=None) -> tuple[int, int, int, int]:
        """Input pixels that can influence unit ``position`` (row, col) of ``layer``: (top, left, bottom,
        right), inclusive, clipped to the image. For a non-spatial layer (position None) the whole image."""
        shapes = self.shapes(input_size)
        li = self.index(layer)
        out_shape = self.layers[li].output_shape(shapes[li])
        return receptive.input_box(self.receptive_fields(input_size), layer, out_shape, shapes[0][1:], position)
