"""Layer objects: each forward op of ``zfcore.core.ops`` paired with its deconvnet inverse.

CS231n style: ``forward(x) -> (y, cache)`` and ``inverse(r, cache, rule) -> r_in``, where ``r`` is the
reconstruction signal arriving from above (the shape of ``y``) and ``r_in`` the signal passed below (the
shape of ``x``). The cache holds exactly what the inverse needs: the input shape, the pooling switches,
the input of a ReLU. Switches are stored by the forward pass, never recomputed.

Deconvnet inverses (Zeiler & Fergus, ECCV 2014, sec. 2.1):

=====================  =============================================================================
layer                  inverse
=====================  =============================================================================
Conv2d                 ``conv_transpose2d`` with the same weights. **No bias** is added: the
                       deconvnet maps a signal, not an activation (Zeiler & Fergus; captum's
                       Deconvolution and autograd agree), and no use for adding one was found.
ReLU                   depends on ``rule`` (below): the one place where the three methods differ.
MaxPool2d              ``max_unpool2d`` with the recorded switches; overlapping windows add up.
Linear                 ``linear_transpose`` (``r @ w``), no bias.
Flatten                reshape back to (N, C, H, W).
Dropout                identity (inference).
LocalResponseNorm      identity. Zeiler & Fergus pass contrast normalisation through: their
                       reconstructions invert only unpooling, rectification and filtering. This
                       holds under all three rules, so on a net with LRN ``rule="gradient"`` is the
                       gradient of the network with its LRN layers treated as the identity.
AdaptiveAvgPool2d      its adjoint: each output value spread evenly over its input block (only
                       output sizes that divide the input evenly are supported; equal sizes give
                       the identity, as VGG16's 7x7 and AlexNet's 6x6 at 224x224).
=====================  =============================================================================

One mechanism, three rules, at ReLU layers only (x is the ReLU's forward input, r the signal):

- ``"deconvnet"`` (Zeiler & Fergus): ``relu(r)``, independent of the forward pass;
- ``"guided"`` (guided backprop, Springenberg et al. 2015): ``relu(r) * (x > 0)``;
- ``"gradient"`` (plain backprop, Simonyan et al. 2014): ``r * (x > 0)``.

Cropped inverses. Besides ``inverse`` on whole maps each layer has ``inverse_window``, which works on
*windows*: per batch item k a rectangle of the layer's output, ``[top_out[k], top_out[k] + size_out)``,
and returns the signal on a rectangle of its input, ``[top_in[k], top_in[k] + size_in)``, that the
caller chose to contain everything the output window can reach (``geometry`` gives the footprint).
Because every inverse is local (a transposed conv spreads a value over its kernel window, unpooling
places it at a switch inside its pooling window, the rest act pointwise), this is exact.
``zfcore.core.projection`` uses it to project a single activation through its receptive field only; the
window records and their arithmetic (``Window``, ``Geometry``, ``rewindow``) live in ``zfcore.core.windows``.

Axis letters: N batch, K projections in a batch, C channels, H W input size, Ho Wo output size,
F filters, KH KW kernel.
"""
from __future__ import annotations

import numpy as np

from zfcore.core import ops
from zfcore.core.ops import pair
from zfcore.core.windows import Geometry, Window, gather_windows, rewindow  # noqa: F401  (re-exported)
from zfcore.errors import ArgumentError, WeightsError, check_choice, check_count, is_int

RULES = ("deconvnet", "guided", "gradient")


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of ``RULES``, else raise an ``ArgumentError`` listing them."""
    return check_choice(rule, RULES, "rule")


class Layer:
    """Base class. Subclasses set ``kind`` and implement ``forward`` and ``inverse``.

    ``params`` maps parameter names (``<layer>.weight`` / ``<layer>.bias``) to arrays; ``geometry``
    returns the spatial footprint (None: pointwise, the window is unchanged); ``spatial`` is False for
    layers that work on (N, features) arrays.
    """
    kind = "layer"
    spatial = True

    def __init__(self, name: str):
        self.name = name

    # --- interface ------------------------------------------------------------------------------
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def infer(self, x):
        """The output of ``forward`` alone, for inference: layers that can skip work the inverse would
        need (the switches of a pool) override it."""
        return self.forward(x)[0]

    def inverse(self, r, cache, rule="deconvnet"):  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse_window(self, r, cache, rule, win: Window):
        """Cropped inverse (module docstring). Pointwise layers: the whole-map inverse on the window."""
        return self.inverse(r, self.take_window(cache, win), rule)

    def geometry(self, in_hw) -> Geometry | None:
        """Spatial footprint for an input of size ``in_hw``; None for pointwise layers."""
        return None

    def output_shape(self, in_shape: tuple) -> tuple:
        """Output shape (without N) for an input of shape ``in_shape`` (without N)."""
        return tuple(in_shape)

    @property
    def params(self) -> dict:
        """``<layer>.weight`` / ``<layer>.bias`` -> array, for the layers that have them."""
        return {f"{self.name}.{k}": getattr(self, k) for k in ("weight", "bias")
                if getattr(self, k, None) is not None}

    # --- caches ---------------------------------------------------------------------------------
    # A cache is a dict. Keys: "input_shape" (N, ...); "switches" and "x" hold arrays with a batch axis.
    _batched = ("switches", "x")

    def take(self, cache: dict, idx) -> dict:
        """The cache restricted to batch items ``idx`` (an int array; repeats allowed)."""
        out = {}
        for k, v in cache.items():
            if k in self._batched:
                out[k] = v[idx]
            elif k == "input_shape":
                out[k] = (len(idx),) + tuple(v[1:])
            else:
                out[k] = v
        return out

    def take_window(self, cache: dict, win: Window) -> dict:
        """The cache restricted to the items of ``win`` and cropped to their output windows (equal to
        the input windows for a pointwise layer)."""
        out = {}
        for k, v in cache.items():
            if k in self._batched:
                out[k] = v[win.img] if win.top_out is None else gather_windows(v, win.img, win.top_out,
                                                                             win.size_out)
            elif k == "input_shape":
                size = v[2:] if win.size_in is None else tuple(win.size_in)
                out[k] = (len(win.img),) + tuple(v[1:len(v) - len(size)]) + tuple(size)
            else:
                out[k] = v
        return out

    def __repr__(self):
        extra = self._describe()
        return f"{type(self).__name__}({self.name!r}{', ' + extra if extra else ''})"

    def _describe(self) -> str:
        return ""


# ------------------------------------------------------------------------------------------------
def _weights(name, kind, weight, bias, w_axes, b_axes):
    """(weight, bias) as arrays, the weight with one axis per letter group of ``w_axes`` and the bias
    (or None) of the weight's first axis; ``ArgumentError`` naming the layer otherwise."""
    weight = np.asarray(weight)
    if weight.ndim != w_axes.count(",") + 1:
        raise ArgumentError(f"layer {name!r}: {kind} weight must be {w_axes}, got {weight.shape}")
    bias = None if bias is None else np.asarray(bias)
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ArgumentError(f"layer {name!r}: {kind} bias must be {b_axes} = {weight.shape[:1]}, got {bias.shape}")
    return weight, bias


class Conv2d(Layer):
    """Convolution. weight (F, C, KH, KW), bias (F,): x (N, C, H, W) -> y (N, F, Ho, Wo) with
    ``Ho = 1 + (H + 2*ph - KH) // sh``. Inverse: ``conv_transpose2d(r, weight)`` back to exactly
    (N, C, H, W), no bias."""
    kind = "conv"

    def __init__(self, name, weight, bias=None, stride=1, padding=0):
        super().__init__(name)
        self.weight, self.bias = _weights(name, "conv", weight, bias, "(F, C, KH, KW)", "(F,)")
        self.stride = pair(stride, f"layer {name!r}: stride", 1)
        self.padding = pair(padding, f"layer {name!r}: padding", 0)

    def forward(self, x):
        y = ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return y, {"input_shape": x.shape}

    def infer_nhwc(self, x):
        """Inference with the channels last: x (N, H, W, C) -> (N, Ho, Wo, F)."""
        return ops.conv2d_nhwc(x, self.weight, self.bias, self.stride, self.padding)

    def inverse(self, r, cache, rule="deconvnet"):
        return ops.conv_transpose2d(r, self.weight, self.stride, self.padding,
                                    output_size=cache["input_shape"][2:])

    def geometry(self, in_hw):
        return Geometry(tuple(self.weight.shape[2:]), self.stride, self.padding)

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (self.weight.shape[0],
                ops.conv_output_size(H, self.weight.shape[2], self.stride[0], self.padding[0]),
                ops.conv_output_size(W, self.weight.shape[3], self.stride[1], self.padding[1]))

    def inverse_window(self, r, cache, rule, win):
        # the transposed conv of the output window, unpadded, covers [top_out*s - p, ... + (n-1)*s + k)
        ext = ops.conv_transpose2d(r, self.weight, self.stride, 0)
        ext_top = win.top_out * self.stride - np.asarray(self.padding)
        return rewindow(ext, ext_top, win.top_in, win.size_in)

    def _describe(self):
        F, C, KH, KW = self.weight.shape
        return f"{C}->{F}, kernel={(KH, KW)}, stride={self.stride}, padding={self.padding}"


class ReLU(Layer):
    """Rectification, any shape. Inverse by ``rule``: deconvnet ``relu(r)``, guided
    ``relu(r) * (x > 0)``, gradient ``r * (x > 0)`` (x: the forward input, kept in the cache)."""
    kind = "relu"

    def forward(self, x):
        return ops.relu(x), {"x": x}

    def inverse(self, r, cache, rule="deconvnet"):
        check_rule(rule)
        if rule == "deconvnet":
            return ops.unrelu(r)
        mask = cache["x"] > 0
        if rule == "guided":
            return ops.unrelu(r) * mask
        return r * mask

    def inverse_window(self, r, cache, rule, win):
        """Cropped inverse; may overwrite ``r`` (the projection's own intermediate signal)."""
        check_rule(rule)
        if rule == "deconvnet":                   # needs nothing from the forward pass
            return np.maximum(r, 0, out=r) if r.flags.writeable and r.flags.owndata else ops.unrelu(r)
        return self.inverse(r, self.take_window(cache, win), rule)


class MaxPool2d(Layer):
    """Max-pooling with switches: x (N, C, H, W) -> y (N, C, Ho, Wo); ``switches`` (N, C, Ho, Wo)
    int64 flat indices ``h*W + w`` into each input plane (first maximum in scan order). Inverse:
    ``max_unpool2d`` at the stored switches; values of overlapping windows add up."""
    kind = "maxpool"

    def __init__(self, name, kernel, stride=None, padding=0):
        super().__init__(name)
        self.kernel = pair(kernel, f"layer {name!r}: kernel", 1)
        self.stride = self.kernel if stride is None else pair(stride, f"layer {name!r}: stride", 1)
        self.padding = pair(padding, f"layer {name!r}: padding", 0)
        if 2 * self.padding[0] > self.kernel[0] or 2 * self.padding[1] > self.kernel[1]:
            raise ArgumentError(f"layer {name!r}: padding {self.padding} must be at most half the kernel "
                                f"{self.kernel}")

    def forward(self, x):
        y, switches = ops.max_pool2d(x, self.kernel, self.stride, self.padding)
        return y, {"input_shape": x.shape, "switches": switches}

    def infer(self, x):
        return ops.max_pool2d_values(x, self.kernel, self.stride, self.padding)

    def infer_nhwc(self, x):
        """Inference with the channels last: x (N, H, W, C) -> (N, Ho, Wo, C)."""
        return ops.max_pool2d_values_nhwc(x, self.kernel, self.stride, self.padding)

    def inverse(self, r, cache, rule="deconvnet"):
        return ops.max_unpool2d(r, cache["switches"], cache["input_shape"], window=(self.kernel, self.stride))

    def geometry(self, in_hw):
        return Geometry(self.kernel, self.stride, self.padding)

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (C, ops.conv_output_size(H, self.kernel[0], self.stride[0], self.padding[0]),
                ops.conv_output_size(W, self.kernel[1], self.stride[1], self.padding[1]))

    def inverse_window(self, r, cache, rule, win):
        # switches of the output window are flat indices into the whole input plane; every one lies
        # inside the input window (its pooling window does): move them into the window's coordinates
        switches = gather_windows(cache["switches"], win.img, win.top_out, win.size_out)
        H, W = cache["input_shape"][2:]
        if H * W < 2 ** 31:                 # int32: numpy divides it by a scalar several times faster
            switches = switches.astype(np.int32)
        rows = switches // W
        cols = switches - rows * W
        rows -= win.top_in[:, 0, None, None, None]
        cols -= win.top_in[:, 1, None, None, None]
        h, w = win.size_in
        local = rows * w + cols
        # an output window shared by a batch may reach past an item's own input window; the signal is
        # zero there (it lies outside the item's receptive field), so those switches are parked at 0
        if rows.min() < 0 or rows.max() >= h or cols.min() < 0 or cols.max() >= w:
            outside = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
            if np.any(r[outside]):
                raise RuntimeError(f"layer {self.name!r}: non-zero signal outside the projection window "
                                   "(a bug in the window arithmetic)")
            local[outside] = 0
            # parked switches may repeat a real one: only the default scatter-add takes any switches
            return ops.max_unpool2d(r, local, tuple(win.size_in))
        return ops.max_unpool2d(r, local, tuple(win.size_in), window=(self.kernel, self.stride))

    def _describe(self):
        return f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), C order. Inverse: reshape back."""
    kind = "flatten"

    def forward(self, x):
        return ops.flatten(x), {"input_shape": x.shape}

    def inverse(self, r, cache, rule="deconvnet"):
        return r.reshape((r.shape[0],) + tuple(cache["input_shape"][1:]))

    def inverse_window(self, r, cache, rule, win):
        return self.inverse(r, cache, rule)

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)


class Linear(Layer):
    """Fully connected: weight (out, in), bias (out,): x (N, in) -> (N, out). Inverse: ``r @ weight``."""
    kind = "linear"
    spatial = False

    def __init__(self, name, weight, bias=None):
        super().__init__(name)
        self.weight, self.bias = _weights(name, "linear", weight, bias, "(out, in)", "(out,)")

    def forward(self, x):
        if x.ndim != 2:
            raise ArgumentError(f"layer {self.name!r}: linear input must be (N, {self.weight.shape[1]}), "
                                f"got shape {x.shape} (add a flatten layer before it)")
        return ops.linear(x, self.weight, self.bias), {"input_shape": x.shape}

    def inverse(self, r, cache, rule="deconvnet"):
        return ops.linear_transpose(r, self.weight)

    def output_shape(self, in_shape):
        return (self.weight.shape[0],)

    def _describe(self):
        return f"{self.weight.shape[1]}->{self.weight.shape[0]}"


class _PassThrough(Layer):
    """A layer the deconvnet passes the signal through unchanged (dropout at inference, LRN)."""

    def inverse(self, r, cache, rule="deconvnet"):
        return r

    def inverse_window(self, r, cache, rule, win):
        return r


class Dropout(_PassThrough):
    """Dropout: the identity at inference (the only mode used here); inverse: identity."""
    kind = "dropout"

    def __init__(self, name, p=0.5):
        super().__init__(name)
        if not (isinstance(p, (int, float, np.integer, np.floating)) and 0.0 <= p <= 1.0):
            raise ArgumentError(f"layer {name!r}: dropout probability p must lie in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x):
        return ops.dropout(x, self.p, training=False), {}

    def _describe(self):
        return f"p={self.p}"


class LocalResponseNorm(_PassThrough):
    """Local response (contrast) normalisation across channels, torch's semantics
    (``local_response_norm``). Inverse: the identity, as Zeiler & Fergus (module docstring)."""
    kind = "lrn"

    def __init__(self, name, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__(name)
        self.size = check_count(size, f"layer {name!r}: size", 1)
        try:
            self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        except (TypeError, ValueError):
            raise ArgumentError(f"layer {name!r}: alpha, beta and k must be numbers, got "
                                f"{(alpha, beta, k)!r}") from None

    def forward(self, x):
        if x.ndim < 3:
            raise ArgumentError(f"layer {self.name!r}: lrn input must be (N, C, ...), got shape {x.shape}")
        return ops.local_response_norm(x, self.size, self.alpha, self.beta, self.k).astype(x.dtype), {}

    def _describe(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class AdaptiveAvgPool2d(Layer):
    """Adaptive average pooling to ``output_size`` (int, (h, w), None entries keep that axis), torch's
    semantics, for the sizes where its windows tile the input: H divisible by h (block ``H // h``);
    equal sizes are the identity. x (N, C, H, W) -> (N, C, h, w). Inverse: the adjoint, each value
    divided by the block area and copied over its block."""
    kind = "adaptive_avgpool"

    def __init__(self, name, output_size):
        super().__init__(name)
        o = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(o) != 2 or not all(v is None or (is_int(v) and v >= 1) for v in o):
            raise ArgumentError(f"layer {name!r}: output_size must be an integer >= 1 or an (H, W) pair of "
                                f"them (None keeps an axis), got {output_size!r}")
        self.output_size = tuple(None if v is None else int(v) for v in o)

    def _blocks(self, in_hw):
        try:
            return ops.adaptive_pool_size(in_hw, self.output_size)
        except ArgumentError as e:
            raise ArgumentError(f"layer {self.name!r}: {e}") from None

    def forward(self, x):
        if x.ndim != 4:
            raise ArgumentError(f"layer {self.name!r}: input must be (N, C, H, W), got shape {x.shape}")
        self._blocks(x.shape[2:])
        return ops.adaptive_avg_pool2d(x, self.output_size), {"input_shape": x.shape}

    def inverse(self, r, cache, rule="deconvnet"):
        return ops.adaptive_avg_pool2d_transpose(r, cache["input_shape"][2:])

    def geometry(self, in_hw):
        _, b = self._blocks(in_hw)
        return Geometry(b, b, (0, 0))

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (C,) + self._blocks((H, W))[0]

    def inverse_window(self, r, cache, rule, win):
        blocks = self._blocks(cache["input_shape"][2:])[1]
        ext = ops.adaptive_avg_pool2d_transpose(r, (r.shape[2] * blocks[0], r.shape[3] * blocks[1]))
        return rewindow(ext, win.top_out * np.asarray(blocks), win.top_in, win.size_in)

    def _describe(self):
        return f"output_size={self.output_size}"


KINDS = ("conv", "relu", "maxpool", "flatten", "linear", "dropout", "lrn", "adaptive_avgpool")


def from_spec(name: str, kind: str, p: dict, params: dict | None = None) -> Layer:
    """One layer from a spec entry ``(name, kind, p)``; conv/linear weights from ``params``
    (``<name>.weight``, ``<name>.bias``). A bad entry raises ``ArgumentError`` naming the layer."""
    try:
        check_choice(kind, KINDS, "kind")
    except ArgumentError as e:
        raise ArgumentError(f"layer {name!r}: {e}") from None
    if not isinstance(p, dict):
        raise ArgumentError(f"layer {name!r}: spec parameters must be a dict, got {p!r}")

    def get(key):
        if params is None or key not in params:
            raise WeightsError(f"layer {name!r}: parameter {key!r} missing")
        return params[key]

    def need(key):
        if key not in p:
            raise ArgumentError(f"layer {name!r}: a {kind} layer needs {key!r} in its spec parameters")
        return p[key]

    if kind == "conv":
        return Conv2d(name, get(f"{name}.weight"), get(f"{name}.bias"), p.get("stride", 1), p.get("padding", 0))
    if kind == "maxpool":
        return MaxPool2d(name, need("kernel"), p.get("stride"), p.get("padding", 0))
    if kind == "linear":
        return Linear(name, get(f"{name}.weight"), get(f"{name}.bias"))
    if kind == "dropout":
        return Dropout(name, p.get("p", 0.5))
    if kind == "lrn":
        return LocalResponseNorm(name, need("size"), p.get("alpha", 1e-4), p.get("beta", 0.75), p.get("k", 1.0))
    if kind == "adaptive_avgpool":
        return AdaptiveAvgPool2d(name, need("output_size"))
    return ReLU(name) if kind == "relu" else Flatten(name)
