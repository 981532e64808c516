"""Layer objects: each forward op of ``zfcore.ops`` paired with its deconvnet inverse.

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
``zfcore.network`` uses it to project a single activation through its receptive field only.

Axis letters: N batch, K projections in a batch, C channels, H W input size, Ho Wo output size,
F filters, KH KW kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import ops

RULES = ("deconvnet", "guided", "gradient")


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of ``RULES``, else raise a ValueError listing them."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: expected one of {', '.join(map(repr, RULES))}")
    return rule


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or an (H, W) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class Geometry(NamedTuple):
    """Spatial footprint of a windowed layer, per axis (H, W): output position i reads input
    positions ``[i*stride - padding, i*stride - padding + kernel)``."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


class Window(NamedTuple):
    """Where a batch of K projections lives, for ``Layer.inverse_window``.

    img (K,) int: each item's image in the forward batch (to read the cache);
    top_out (K, 2) int, size_out (h, w): the item's window in the layer's output;
    top_in (K, 2) int, size_in (h, w): the window wanted in the layer's input.
    For non-spatial (2-D) signals the tops and sizes are None.
    """
    img: np.ndarray
    top_out: np.ndarray | None
    size_out: tuple[int, int] | None
    top_in: np.ndarray | None
    size_in: tuple[int, int] | None


def gather_windows(a: np.ndarray, img: np.ndarray, top: np.ndarray, size) -> np.ndarray:
    """Windows of a batch of maps: ``out[k] = a[img[k], :, t:t+h, l:l+w]`` with ``(t, l) = top[k]``.

    a (N, C, H, W); img (K,); top (K, 2), each window inside the map; size (h, w) -> (K, C, h, w),
    a new array. One fancy-indexing copy of a ``sliding_window_view``.
    """
    h, w = size
    if a.shape[2] == h and a.shape[3] == w:
        return a[img]
    if len(img) == 1:
        t, l = int(top[0, 0]), int(top[0, 1])
        return a[int(img[0]), :, t:t + h, l:l + w][None].copy()
    v = np.lib.stride_tricks.sliding_window_view(a, (h, w), axis=(2, 3))
    return v[img, :, top[:, 0], top[:, 1]]


def rewindow(ext: np.ndarray, ext_top: np.ndarray, top: np.ndarray, size) -> np.ndarray:
    """Re-cut per-item windows: ``ext`` (K, C, mh, mw) holds item k's signal on the rectangle that
    starts at ``ext_top[k]``; return (K, C, h, w) on the rectangles starting at ``top[k]`` (zero where
    ``ext`` does not cover them). Coordinates are those of one map; ``size = (h, w)``."""
    K, C, mh, mw = ext.shape
    h, w = size
    off = np.asarray(top) - np.asarray(ext_top)          # (K, 2): where each wanted window starts in ext
    if (off == off[0]).all():
        dh, dw = int(off[0, 0]), int(off[0, 1])
        if dh == 0 and dw == 0 and (mh, mw) == (h, w):
            return ext
        if dh >= 0 and dw >= 0 and dh + h <= mh and dw + w <= mw:
            return ext[:, :, dh:dh + h, dw:dw + w]
        out = np.zeros((K, C, h, w), ext.dtype)
        sh0, sh1 = max(dh, 0), min(dh + h, mh)
        sw0, sw1 = max(dw, 0), min(dw + w, mw)
        if sh1 > sh0 and sw1 > sw0:
            out[:, :, sh0 - dh:sh1 - dh, sw0 - dw:sw1 - dw] = ext[:, :, sh0:sh1, sw0:sw1]
        return out
    # per-item offsets: pad ext so that every wanted window lies inside, then gather
    lo = np.maximum(-off.min(axis=0), 0)
    hi = np.maximum((off + [h, w]).max(axis=0) - [mh, mw], 0)
    if lo.any() or hi.any():
        ext = np.pad(ext, ((0, 0), (0, 0), (lo[0], hi[0]), (lo[1], hi[1])))
    return gather_windows(ext, np.arange(K), off + lo, size)


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
        return {}

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
class Conv2d(Layer):
    """Convolution. weight (F, C, KH, KW), bias (F,): x (N, C, H, W) -> y (N, F, Ho, Wo) with
    ``Ho = 1 + (H + 2*ph - KH) // sh``. Inverse: ``conv_transpose2d(r, weight)`` back to exactly
    (N, C, H, W), no bias."""
    kind = "conv"

    def __init__(self, name, weight, bias=None, stride=1, padding=0):
        super().__init__(name)
        self.weight = np.asarray(weight)
        if self.weight.ndim != 4:
            raise ValueError(f"layer {name!r}: conv weight must be (F, C, KH, KW), got {self.weight.shape}")
        self.bias = None if bias is None else np.asarray(bias)
        self.stride = _pair(stride, f"layer {name!r}: stride")
        self.padding = _pair(padding, f"layer {name!r}: padding")

    @property
    def params(self):
        p = {f"{self.name}.weight": self.weight}
        if self.bias is not None:
            p[f"{self.name}.bias"] = self.bias
        return p

    def forward(self, x):
        y = ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return y, {"input_shape": x.shape}

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
        self.kernel = _pair(kernel, f"layer {name!r}: kernel")
        self.stride = self.kernel if stride is None else _pair(stride, f"layer {name!r}: stride")
        self.padding = _pair(padding, f"layer {name!r}: padding")

    def forward(self, x):
        y, switches = ops.max_pool2d(x, self.kernel, self.stride, self.padding)
        return y, {"input_shape": x.shape, "switches": switches}

    def inverse(self, r, cache, rule="deconvnet"):
        return ops.max_unpool2d(r, cache["switches"], cache["input_shape"])

    def geometry(self, in_hw):
        return Geometry(self.kernel, self.stride, self.padding)

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (C, ops.conv_output_size(H, self.kernel[0], self.stride[0], self.padding[0]),
                ops.conv_output_size(W, self.kernel[1], self.stride[1], self.padding[1]))

    def inverse_window(self, r, cache, rule, win):
        # switches of the output window are flat indices into the whole input plane; every one lies
        # inside the input window (its pooling window does): move them into the window's coordinates
        sw = gather_windows(cache["switches"], win.img, win.top_out, win.size_out)
        W = cache["input_shape"][3]
        rows, cols = np.divmod(sw, W)
        rows -= win.top_in[:, 0, None, None, None]
        cols -= win.top_in[:, 1, None, None, None]
        h, w = win.size_in
        local = rows * w + cols
        # an output window shared by a batch may reach past an item's own input window; the signal is
        # zero there (it lies outside the item's receptive field), so those switches are parked at 0
        outside = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
        if outside.any():
            if np.any(r[outside]):
                raise AssertionError(f"layer {self.name!r}: non-zero signal outside the projection window")
            local[outside] = 0
        return ops.max_unpool2d(r, local, tuple(win.size_in))

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
        self.weight = np.asarray(weight)
        if self.weight.ndim != 2:
            raise ValueError(f"layer {name!r}: linear weight must be (out, in), got {self.weight.shape}")
        self.bias = None if bias is None else np.asarray(bias)

    @property
    def params(self):
        p = {f"{self.name}.weight": self.weight}
        if self.bias is not None:
            p[f"{self.name}.bias"] = self.bias
        return p

    def forward(self, x):
        if x.ndim != 2:
            raise ValueError(f"layer {self.name!r}: linear input must be (N, {self.weight.shape[1]}), "
                             f"got shape {x.shape} (add a flatten layer before it)")
        return ops.linear(x, self.weight, self.bias), {"input_shape": x.shape}

    def inverse(self, r, cache, rule="deconvnet"):
        return ops.linear_transpose(r, self.weight)

    def output_shape(self, in_shape):
        return (self.weight.shape[0],)

    def _describe(self):
        return f"{self.weight.shape[1]}->{self.weight.shape[0]}"


class Dropout(Layer):
    """Dropout: the identity at inference (the only mode used here); inverse: identity."""
    kind = "dropout"

    def __init__(self, name, p=0.5):
        super().__init__(name)
        self.p = float(p)

    def forward(self, x):
        return ops.dropout(x, self.p, training=False), {}

    def inverse(self, r, cache, rule="deconvnet"):
        return r

    def inverse_window(self, r, cache, rule, win):
        return r

    def _describe(self):
        return f"p={self.p}"


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels, as ``torch.nn.functional.local_response_norm``:

    x (N, C, ...) -> ``x / (k + alpha / size * sum_{c' in window(c)} x[c']**2) ** beta``, the window
    being channels ``[c - size//2, c + (size-1)//2]`` clipped to [0, C) (zeros beyond, still divided
    by ``size``).
    """
    x = np.asarray(x)
    C = x.shape[1]
    sq = x * x
    s = np.zeros_like(sq)
    lo, hi = size // 2, (size - 1) // 2
    for d in range(-lo, hi + 1):              # s[:, c] += sq[:, c + d] where 0 <= c + d < C
        if d < 0:
            s[:, -d:] += sq[:, :C + d]
        elif d > 0:
            s[:, :C - d] += sq[:, d:]
        else:
            s += sq
    div = (s * (alpha / size) + k) ** beta
    return x / div


class LocalResponseNorm(Layer):
    """Local response (contrast) normalisation across channels, torch's semantics
    (``local_response_norm``). Inverse: the identity, as Zeiler & Fergus (module docstring)."""
    kind = "lrn"

    def __init__(self, name, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__(name)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        if x.ndim < 3:
            raise ValueError(f"layer {self.name!r}: lrn input must be (N, C, ...), got shape {x.shape}")
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k).astype(x.dtype), {}

    def inverse(self, r, cache, rule="deconvnet"):
        return r

    def inverse_window(self, r, cache, rule, win):
        return r

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
        if len(o) != 2:
            raise ValueError(f"layer {name!r}: output_size must be an int or an (H, W) pair, got {output_size!r}")
        self.output_size = tuple(None if v is None else int(v) for v in o)

    def _blocks(self, in_hw):
        H, W = int(in_hw[0]), int(in_hw[1])
        oh = H if self.output_size[0] is None else self.output_size[0]
        ow = W if self.output_size[1] is None else self.output_size[1]
        if H % oh or W % ow:
            raise ValueError(f"layer {self.name!r}: adaptive average pooling of a {H}x{W} map to "
                             f"{oh}x{ow} is supported only when the output size divides the input size")
        return (oh, ow), (H // oh, W // ow)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"layer {self.name!r}: input must be (N, C, H, W), got shape {x.shape}")
        N, C, H, W = x.shape
        (oh, ow), (bh, bw) = self._blocks((H, W))
        if bh == 1 and bw == 1:
            return x, {"input_shape": x.shape}
        y = x.reshape(N, C, oh, bh, ow, bw).mean(axis=(3, 5), dtype=x.dtype)
        return y, {"input_shape": x.shape}

    def _spread(self, r, blocks):
        bh, bw = blocks
        if bh == 1 and bw == 1:
            return r
        K, C, oh, ow = r.shape
        r = r / (bh * bw)
        return np.broadcast_to(r[:, :, :, None, :, None], (K, C, oh, bh, ow, bw)).reshape(
            K, C, oh * bh, ow * bw)

    def inverse(self, r, cache, rule="deconvnet"):
        return self._spread(r, self._blocks(cache["input_shape"][2:])[1])

    def geometry(self, in_hw):
        _, b = self._blocks(in_hw)
        return Geometry(b, b, (0, 0))

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (C,) + self._blocks((H, W))[0]

    def inverse_window(self, r, cache, rule, win):
        blocks = self._blocks(cache["input_shape"][2:])[1]
        ext = self._spread(r, blocks)
        return rewindow(ext, win.top_out * np.asarray(blocks), win.top_in, win.size_in)

    def _describe(self):
        return f"output_size={self.output_size}"


def from_spec(name: str, kind: str, p: dict, params: dict | None = None) -> Layer:
    """One layer from a spec entry ``(name, kind, p)``; conv/linear weights from ``params``
    (``<name>.weight``, ``<name>.bias``)."""
    def get(key):
        if params is None or key not in params:
            raise ValueError(f"layer {name!r}: parameter {key!r} missing")
        return params[key]

    if kind == "conv":
        return Conv2d(name, get(f"{name}.weight"), get(f"{name}.bias"), p.get("stride", 1), p.get("padding", 0))
    if kind == "relu":
        return ReLU(name)
    if kind == "maxpool":
        return MaxPool2d(name, p["kernel"], p.get("stride"), p.get("padding", 0))
    if kind == "flatten":
        return Flatten(name)
    if kind == "linear":
        return Linear(name, get(f"{name}.weight"), get(f"{name}.bias"))
    if kind == "dropout":
        return Dropout(name, p.get("p", 0.5))
    if kind == "lrn":
        return LocalResponseNorm(name, p["size"], p.get("alpha", 1e-4), p.get("beta", 0.75), p.get("k", 1.0))
    if kind == "adaptive_avgpool":
        return AdaptiveAvgPool2d(name, p["output_size"])
    raise ValueError(f"layer {name!r}: unknown kind {kind!r} (known: conv, relu, maxpool, flatten, linear, "
                     "dropout, lrn, adaptive_avgpool)")
