"""zfcore side by side with huybery/VisualizingCNN and captum (notebook 06, ``benchmarks/bench_compare.py``).

github.com/huybery/VisualizingCNN is the PyTorch deconvnet the report compares against. It cannot be
vendored, so :class:`Recreation` re-computes what it does, in our own code, with its quirks as options:

* **Forward** (its ``Vgg16Conv``): VGG16 as an ``nn.Sequential`` called ``features`` in torchvision's
  index layout (conv, ReLU *not* in place, ``MaxPool2d(return_indices=True)``), then the classifier.
  A forward hook on every ``features`` module stores its output, so the map stored for a conv layer is
  its output *before* ReLU, and a pool's switches are stored next to its output.
* **Selection** (its ``vis_layer``): the feature map with the largest maximum (the first such map),
  inside it every position whose value *equals* that maximum (ties keep several), everything else zero.
* **Mirror** (its ``Vgg16Deconv``): the ``features`` list reversed, each ``MaxPool2d`` becoming
  ``MaxUnpool2d`` (fed the stored switches), each ReLU a ReLU, each conv a ``ConvTranspose2d`` that shares
  the conv's weight tensor. The walk starts at the transposed conv of the chosen layer. The original
  writes the two index maps by hand (conv -> deconv index ``{0: 30, 2: 28, ...}``, unpool -> pool index
  ``{26: 4, ...}``); here they are derived (``deconv index = len(features) - 1 - forward index``), and
  ``Recreation.conv2deconv`` / ``unpool2pool`` equal the hand-written ones for VGG16 (tested).
* **Deconv biases**: the original's ``ConvTranspose2d`` layers keep PyTorch's default ``bias=True`` and
  their random initialisation, because its bias-copy line is commented out (that line could not have
  worked anyway: a conv's bias has one entry per *output* channel of the conv, its transposed conv needs
  one per *input* channel). ``deconv_bias="random"`` reproduces this (seeded by ``bias_seed``; the
  original draws new biases on every run), ``"zero"`` is the deconvnet of the paper.
* **Input** (its ``load_images``): OpenCV's ``imread`` gives **BGR** channel order, ``resize`` to
  224 x 224 (bilinear, aspect ratio not kept), ``ToTensor`` (/255) and ``Normalize`` with the **RGB**
  ImageNet mean and std, so the blue channel is normalised with the red channel's statistics.
  :func:`resize_bilinear` + :func:`prepare_input` (``order="BGR"`` or ``"RGB"``).
* **Output**: min-max scaled over all pixels and channels to [0, 255] and truncated to uint8
  (:func:`minmax_uint8`), shown with ``plt.imshow`` in the net's channel order (so the original's figure
  shows BGR data as if it were RGB, photo included).

Two deliberate differences, neither changing a VGG16 result at 224 x 224: the re-creation works for any
sequential spec of conv / relu / maxpool layers (zfcore's embedded net too), and it passes each
``MaxUnpool2d`` / ``ConvTranspose2d`` the recorded input size (the original relies on the default size,
which is wrong for odd sizes and padded pools).

Everything else in this module builds the comparison tables from one run: :func:`relative_error`,
:func:`support` (share of pixels touched), :func:`agreement`, :func:`bias_effect`,
:func:`channel_order`, :func:`median_time`, :func:`format_table`. torch is imported inside functions
only; importing this module needs numpy alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import models
from .data import IMAGENET_MEAN, IMAGENET_STD

# The layers of the original's demo figure, as ``features`` indices of VGG16: conv3_3, conv4_1, conv4_2,
# conv4_3, conv5_1, conv5_2, conv5_3 (huybery/VisualizingCNN, main.py).
DEMO_LAYERS = (14, 17, 19, 21, 24, 26, 28)


# ------------------------------------------------------------------------------------------------
# input and output as the original handles them

def resize_bilinear(img: np.ndarray, size) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) uint8 image to ``size = (H_out, W_out)``, bilinear, aspect ratio not kept.

    Half-pixel centres and no antialiasing, as OpenCV's ``cv2.resize(..., INTER_LINEAR)`` which the
    original uses: source coordinate ``(i + 0.5) * H / H_out - 0.5``, clamped to the image. OpenCV
    computes in fixed point, so values may differ from it by one grey level. Returns uint8, rounded.
    """
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) uint8 image, got {a.ndim}-d {a.dtype}")
    ho, wo = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    h, w = a.shape[:2]

    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, fy = axis(ho, h)
    x0, x1, fx = axis(wo, w)
    f = a.astype(np.float32)
    if f.ndim == 2:
        f = f[:, :, None]
    fx = fx[None, :, None]
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bot = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    out = top * (1 - fy[:, None, None]) + bot * fy[:, None, None]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[:, :, 0] if a.ndim == 2 else out


def prepare_input(img: np.ndarray, order: str = "BGR") -> np.ndarray:
    """An RGB (H, W, 3) or grey (H, W) uint8 image -> the network input (1, 3, H, W) float32.

    ``order="BGR"`` reverses the channels first, as OpenCV's ``imread`` delivers them to the original;
    ``"RGB"`` keeps them. Either way the channels are then scaled to [0, 1] and normalised with the RGB
    ImageNet mean and std *in that order*, as the original's ``Normalize`` does: with BGR input the
    blue channel gets the red statistics and vice versa. A grey image is replicated to three channels
    (what ``imread`` does with a grey file), so the order makes no difference to it.
    """
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 image, got shape {a.shape} {a.dtype}")
    if order not in ("BGR", "RGB"):
        raise ValueError(f"order must be 'BGR' or 'RGB', got {order!r}")
    if order == "BGR":
        a = a[:, :, ::-1]
    x = a.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    x = (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return np.ascontiguousarray(x[None], dtype=np.float32)


def minmax_uint8(img: np.ndarray) -> np.ndarray:
    """The original's output scaling: a (C, H, W) projection -> (H, W, C) uint8.

    ``(x - min) / (max - min) * 255`` over all pixels *and channels* together, truncated (not rounded)
    to uint8. A constant image (where the original would divide by zero) gives zeros.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {a.shape}")
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape[1:] + a.shape[:1], dtype=np.uint8)
    return ((a - lo) / (hi - lo) * 255.0).astype(np.uint8).transpose(1, 2, 0)


# ------------------------------------------------------------------------------------------------
# the re-creation

@dataclass
class Selection:
    """What the original's selection kept: ``feature``, the kept ``positions`` [(i, j), ...] (several
    when the maximum is tied) and their ``value`` (the stored map's value there)."""
    feature: int
    positions: list = field(default_factory=list)
    value: float = 0.0

    @property
    def unique(self) -> bool:
        return len(self.positions) == 1


def _unpool_add(y, switches, size):
    """Unpooling that adds the values of windows sharing a switch (the gradient of max-pooling, and
    zfcore's rule): (N, C, Ho, Wo) values and switches -> (N, C, H, W) tensor."""
    import torch

    N, C = y.shape[:2]
    out = torch.zeros((N, C, size[0] * size[1]), dtype=y.dtype)
    out.scatter_add_(2, switches.reshape(N, C, -1), y.reshape(N, C, -1))
    return out.reshape(N, C, *size)


def _features_layers(spec) -> list[tuple[str, str, dict]]:
    """The (name, kind, params) of the spec's ``features`` section, in torchvision's index order."""
    names = models.torchvision_names(spec)
    out = []
    for name, kind, p in spec:
        if names.get(name, "").startswith("features."):
            out.append((name, kind, p))
    for i, (name, _, _) in enumerate(out):
        assert names[name] == f"features.{i}"
    return out


class Recreation:
    """huybery/VisualizingCNN's deconvnet pipeline, re-created in PyTorch for any conv/relu/maxpool net.

    ``spec``: an architecture name or a zfcore spec; ``params``: zfcore parameters (numpy arrays under
    zfcore names, e.g. ``net.params``; shared with torch, not copied). ``deconv_bias``: ``"random"`` (the
    original: PyTorch's default ``ConvTranspose2d`` initialisation, seeded here by ``bias_seed``) or
    ``"zero"`` (the paper). ``dtype``: ``"float32"`` (the original) or ``"float64"``. ``unpool``:
    ``"assign"`` (the original's ``MaxUnpool2d``: where overlapping pooling windows share a switch, one
    of their values is kept, which one being up to the kernel's loop order) or ``"add"`` (their values
    add up, as in zfcore and in the gradient of max-pooling; the two agree for non-overlapping pools
    such as VGG16's). See the module docstring for the rest.

    Attributes: ``features`` / ``classifier`` (``nn.Sequential``, eval mode), ``deconv`` (the mirror),
    ``names`` (zfcore name of each ``features`` index), ``index`` (the reverse), ``conv2deconv`` and
    ``unpool2pool`` (the index maps), and after :meth:`forward`: ``feature_maps`` and ``pool_locs``
    (dicts keyed by ``features`` index, filled by forward hooks as in the original).
    """

    def __init__(self, spec, params: dict, deconv_bias: str = "random", bias_seed: int = 0,
                 dtype: str = "float32", unpool: str = "assign"):
        import torch
        from torch import nn

        if deconv_bias not in ("random", "zero"):
            raise ValueError(f"deconv_bias must be 'random' or 'zero', got {deconv_bias!r}")
        if unpool not in ("assign", "add"):
            raise ValueError(f"unpool must be 'assign' or 'add', got {unpool!r}")
        self.unpool = unpool
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        spec = models.get_spec(spec) if isinstance(spec, str) else spec
        self.deconv_bias, self.bias_seed, self.dtype = deconv_bias, bias_seed, dtype
        tdt = getattr(torch, dtype)
        tensor = lambda k: torch.from_numpy(np.ascontiguousarray(params[k], dtype=dtype))  # noqa: E731

        feats = _features_layers(spec)
        self.names = [name for name, _, _ in feats]
        self.index = {name: i for i, name in enumerate(self.names)}
        mods = []
        for name, kind, p in feats:
            if kind == "conv":
                m = nn.Conv2d(p["in_channels"], p["out_channels"], p["kernel"], p["stride"], p["padding"],
                              dtype=tdt)
                m.weight.data, m.bias.data = tensor(f"{name}.weight"), tensor(f"{name}.bias")
            elif kind == "relu":
                m = nn.ReLU()  # not in place: the hook on the conv before it keeps the pre-ReLU map
            elif kind == "maxpool":
                m = nn.MaxPool2d(p["kernel"], p["stride"], p["padding"], return_indices=True)
            else:
                raise ValueError(f"layer {name!r}: the re-creation handles conv, relu and maxpool "
                                 f"feature layers, not {kind!r}")
            mods.append(m)
        self.features = nn.Sequential(*mods).eval()

        head = []
        names = models.torchvision_names(spec)
        for name, kind, p in spec:
            if names.get(name, "").startswith("features."):
                continue
            if kind == "adaptive_avgpool":
                o = p["output_size"]
                head.append(nn.AdaptiveAvgPool2d(tuple(o) if isinstance(o, (list, tuple)) else o))
            elif kind == "flatten":
                head.append(nn.Flatten())
            elif kind == "linear":
                m = nn.Linear(p["in_features"], p["out_features"], dtype=tdt)
                m.weight.data, m.bias.data = tensor(f"{name}.weight"), tensor(f"{name}.bias")
                head.append(m)
            elif kind == "relu":
                head.append(nn.ReLU())
            elif kind == "dropout":
                head.append(nn.Dropout(p["p"]))
            else:
                raise ValueError(f"layer {name!r}: unknown classifier layer kind {kind!r}")
        self.classifier = nn.Sequential(*head).eval()

        # The mirror: features reversed, deconv index = n - 1 - forward index.
        n = len(mods)
        deconv = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(bias_seed)
            for m in reversed(mods):
                if isinstance(m, nn.Conv2d):
                    d = nn.ConvTranspose2d(m.out_channels, m.in_channels, m.kernel_size, m.stride, m.padding,
                                           bias=(deconv_bias == "random"), dtype=tdt)
                    d.weight.data = m.weight.data  # shared, as in the original
                elif isinstance(m, nn.ReLU):
                    d = nn.ReLU()
                else:
                    d = nn.MaxUnpool2d(m.kernel_size, m.stride, m.padding)
                deconv.append(d)
        self.deconv = nn.Sequential(*deconv).eval()
        self.conv2deconv = {i: n - 1 - i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)}
        self.unpool2pool = {n - 1 - i: i for i, m in enumerate(mods) if isinstance(m, nn.MaxPool2d)}

        self.feature_maps, self.pool_locs, self._in_sizes = {}, {}, {}
        for i, m in enumerate(mods):
            m.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, inputs, output):
            self._in_sizes[i] = tuple(inputs[0].shape[-2:])
            if isinstance(output, tuple):  # a pool: (output, switches)
                self.feature_maps[i], self.pool_locs[i] = output
            else:
                self.feature_maps[i] = output
        return hook

    def _index(self, layer) -> int:
        i = self.index[layer] if isinstance(layer, str) else int(layer)
        if not 0 <= i < len(self.names):
            raise ValueError(f"no features layer {layer!r}")
        return i

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x):
        """Run one image (1, C, H, W) (numpy or tensor) through features and classifier, storing maps and
        switches through the hooks; returns the classifier output (logits; the original's classifier
        ends in a softmax) as a tensor."""
        import torch

        x = x.to(getattr(torch, self.dtype)) if torch.is_tensor(x) else torch.from_numpy(
            np.ascontiguousarray(x, dtype=self.dtype))
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"the original works on one image (1, C, H, W), got shape {tuple(x.shape)}")
        self.feature_maps.clear()
        self.pool_locs.clear()
        with torch.no_grad():
            for m in self.features:
                x = m(x)
                if isinstance(x, tuple):
                    x = x[0]
            return self.classifier(x) if len(self.classifier) else x

    # -- selection and projection ----------------------------------------------------------------
    def select(self, layer, feature=None, position=None):
        """The original's selection at ``layer`` (a ``features`` index or zfcore name) -> (start map
        (1, C, H, W) tensor, :class:`Selection`).

        ``feature=None``: the map with the largest maximum (the first of equal ones). ``position=None``:
        every position equal to that map's maximum is kept (ties keep several); an ``(i, j)`` keeps that
        single position, which makes the result comparable with a single-activation projection.
        """
        import torch

        i = self._index(layer)
        fmap = self.feature_maps[i]
        maps = fmap[0]
        if feature is None:
            feature = int(np.argmax(maps.flatten(1).max(dim=1).values.numpy()))
        chosen = maps[feature]
        if position is None:
            value = chosen.max()
            keep = chosen == value
        else:
            keep = torch.zeros_like(chosen, dtype=torch.bool)
            keep[tuple(position)] = True
            value = chosen[tuple(position)]
        start = torch.zeros_like(fmap)
        start[0, feature] = torch.where(keep, chosen, torch.zeros_like(chosen))
        positions = [tuple(int(v) for v in p) for p in keep.nonzero().tolist()]
        return start, Selection(int(feature), positions, float(value))

    def deconv_from(self, start, layer):
        """Walk the mirror from the transposed conv (or unpool / ReLU) of ``layer`` down to the input:
        (1, C_layer, H, W) tensor -> (1, C_in, H_in, W_in) tensor."""
        import torch
        from torch import nn

        i = self._index(layer)
        x = start
        with torch.no_grad():
            for d in range(len(self.names) - 1 - i, len(self.deconv)):
                m, fwd = self.deconv[d], len(self.names) - 1 - d
                if isinstance(m, nn.MaxUnpool2d) and self.unpool == "add":
                    x = _unpool_add(x, self.pool_locs[self.unpool2pool[d]], self._in_sizes[fwd])
                elif isinstance(m, nn.MaxUnpool2d):
                    x = m(x, self.pool_locs[self.unpool2pool[d]], output_size=self._in_sizes[fwd])
                elif isinstance(m, nn.ConvTranspose2d):
                    x = m(x, output_size=self._in_sizes[fwd])
                else:
                    x = m(x)
        return x

    def project(self, layer, feature=None, position=None, scale: str | None = None):
        """Selection + mirror at ``layer`` -> (projection, :class:`Selection`).

        The projection is (C_in, H, W) float32 numpy, or with ``scale="uint8"`` the original's displayed
        image: (H, W, C_in) uint8, min-max scaled (:func:`minmax_uint8`). Call :meth:`forward` first.
        """
        start, sel = self.select(layer, feature, position)
        out = self.deconv_from(start, layer)[0].numpy()
        if scale == "uint8":
            out = minmax_uint8(out)
        elif scale is not None:
            raise ValueError(f"scale must be None or 'uint8', got {scale!r}")
        return out, sel

    def figure(self, x, layers=DEMO_LAYERS):
        """The original's demo figure: forward, then for each layer its selection, mirror and min-max
        uint8 scaling. Returns a list of ((H, W, C) uint8, Selection)."""
        self.forward(x)
        return [self.project(layer, scale="uint8") for layer in layers]


# ------------------------------------------------------------------------------------------------
# measures and tables

def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` (Frobenius, float64); 0 when both are zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    num, den = np.linalg.norm(a - b), np.linalg.norm(b)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def support_mask(img, atol: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (H, W) bool: the pixels where any channel's magnitude exceeds ``atol``."""
    a = np.abs(np.asarray(img, dtype=np.float64))
    if a.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {a.shape}")
    return a.max(axis=0) > atol


def support(img, atol: float = 0.0) -> float:
    """Share of pixels a (C, H, W) projection touches (any channel nonzero, or above ``atol``)."""
    return float(support_mask(img, atol).mean())


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _fmt(v, spec=None):
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if v != v:
            return "n/a"
        if spec:
            return format(float(v), spec)
        return f"{float(v):.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{float(v):.3g}"
    if isinstance(v, (tuple, list)):
        return " ".join(_fmt(u) for u in v) if len(v) > 2 or not all(isinstance(u, int) for u in v) \
            else f"({v[0]}, {v[1]})"
    return str(v)


def format_table(rows: list[dict], columns=None, formats: dict | None = None) -> str:
    """A Markdown table of ``rows`` (dicts); ``columns`` picks and orders keys (default: the first row's),
    ``formats`` maps a key to a format spec (e.g. ``".3f"``)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, ""), formats.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the comparison runs

def features_only(spec, params: dict | None = None):
    """The part of ``spec`` up to its last conv / relu / maxpool layer before the classifier (VGG16: up
    to pool5), and the params of those layers. Projections from conv layers need nothing more, and the
    torch references build much faster without VGG16's 120M classifier weights."""
    spec = models.get_spec(spec) if isinstance(spec, str) else spec
    keep = [entry for entry in _features_layers(spec)]
    names = {name for name, _, _ in keep}
    if params is None:
        return keep
    return keep, {k: v for k, v in params.items() if k.rsplit(".", 1)[0] in names}


def layer_names(spec, layers=DEMO_LAYERS) -> list[str]:
    """zfcore names of ``features`` indices (VGG16's demo layers by default: conv3_3 ... conv5_3)."""
    names = [name for name, _, _ in _features_layers(models.get_spec(spec) if isinstance(spec, str) else spec)]
    return [names[i] if not isinstance(i, str) else i for i in layers]


def conv_layers(spec) -> list[str]:
    """Names of the conv layers of a spec's ``features`` section."""
    spec = models.get_spec(spec) if isinstance(spec, str) else spec
    return [name for name, kind, _ in _features_layers(spec) if kind == "conv"]


def strongest_feature(act: np.ndarray) -> int:
    """The original's choice of map in a (C, H, W) activation: the one with the largest maximum (the
    first of equal ones)."""
    a = np.asarray(act)
    return int(np.argmax(a.reshape(a.shape[0], -1).max(axis=1)))


def duplicate_switches(switches) -> int:
    """How many pooled outputs share their argmax with an earlier output of the same map: ``count -
    distinct`` of the flat switch indices per (image, channel). Zero for non-overlapping windows; with
    overlapping ones each such pair is a place where ``MaxUnpool2d`` keeps one of the values (which one
    depends on its kernel's loop order: on torch 2.14's CPU kernel neither always the first nor always
    the last in scan order) while the gradient of max-pooling (zfcore, captum) adds them."""
    s = np.asarray(switches.numpy() if hasattr(switches, "numpy") else switches)
    s = s.reshape(-1, s.shape[-2] * s.shape[-1])
    return int(sum(len(row) - len(np.unique(row)) for row in s))


def zfcore_figure(net, x, layers, scale: bool = True):
    """zfcore's version of the original's figure: forward, then per layer the strongest map's strongest
    activation (first in row-major order on ties), projected (cropped path), optionally min-max uint8.
    Returns a list of (image, feature, position)."""
    net.forward(x)
    out = []
    for name in layers:
        f = strongest_feature(net.activations(name)[0])
        pos = net.strongest(name, f)
        rec = net.project(name, feature=f, position=pos)
        out.append((minmax_uint8(rec) if scale else rec, f, pos))
    return out


def switch_flips(net, rec) -> dict[str, int]:
    """Per pool layer, how many switches of zfcore's last forward pass differ from the re-creation's.

    Both pick the first maximum of each window, so they differ only where the two forward passes round
    a window's two largest values in opposite orders (a near-tie at float rounding level: a few windows
    in millions in float32, none seen in float64). Such a flipped switch moves a projection's value by one
    pixel in that pool's input when the projection passes through that window."""
    out = {}
    for i, sw in rec.pool_locs.items():
        name = rec.names[i]
        mine = net.trace.caches[net.index(name)]["switches"]
        out[name] = int((np.asarray(mine) != sw.numpy()).sum())
    return out


def agreement(net, x, layers, captum: bool = True, unpool: str = "assign") -> tuple[list[dict], dict]:
    """zfcore vs the re-creation with zero deconv biases vs captum, per layer, on one image (1, C, H, W).

    For each layer the original's selection is made on the re-creation; its first kept position (the
    only one unless the maximum is tied: column ``ties``) is then projected by all three as a single
    activation. Relative errors are ``||zfcore - other|| / ||other||``; supports are shares of pixels
    touched. Diagnostic columns: ``flipped switches below`` (see :func:`switch_flips`) and ``zfcore vs
    re-creation on zfcore's switches`` (the re-creation's unpooling fed zfcore's switches instead of its
    own: what is left of the difference when the forward passes' near-ties are taken out);
    ``duplicate switches below`` (see :func:`duplicate_switches`: where ``MaxUnpool2d`` and zfcore
    differ by construction). ``unpool`` is passed to :class:`Recreation`.

    Returns (rows, projections: layer -> dict(zfcore=, recreation=, captum=, selection=)).
    """
    import torch

    from . import reference

    spec, params = features_only(net.spec, net.params)
    dtype = str(np.dtype(net.dtype))
    rec = Recreation(spec, params, deconv_bias="zero", dtype=dtype, unpool=unpool)
    rec.forward(x)
    net.forward(x)
    flips = switch_flips(net, rec)
    own = dict(rec.pool_locs)
    theirs = {i: torch.from_numpy(np.ascontiguousarray(net.trace.caches[net.index(rec.names[i])]["switches"]))
              for i in own}
    rows, projs = [], {}
    for layer in layers:
        name = layer_names(spec, [layer])[0]
        _, sel = rec.select(name)
        pos = sel.positions[0]
        r, _ = rec.project(name, sel.feature, pos)
        below = [i for i in own if i < rec.index[name]]
        r_sw = r                                   # the same switches below: the same computation
        if any(flips[rec.names[i]] for i in below):
            rec.pool_locs.update(theirs)
            try:
                r_sw, _ = rec.project(name, sel.feature, pos)
            finally:
                rec.pool_locs.update(own)
        z = net.project(name, feature=sel.feature, position=pos)
        row = dict(layer=name, feature=sel.feature, position=pos, ties=len(sel.positions), value=sel.value)
        row["zfcore vs re-creation"] = relative_error(z, r)
        c = None
        if captum:
            c = reference.captum_deconvolution(spec, params, x, name, sel.feature, position=pos, dtype=dtype)
            row["zfcore vs captum"] = relative_error(z, c)
            row["re-creation vs captum"] = relative_error(r, c)
        row["flipped switches below"] = sum(flips[rec.names[i]] for i in below)
        row["zfcore vs re-creation on zfcore's switches"] = relative_error(z, r_sw)
        row["duplicate switches below"] = sum(duplicate_switches(own[i]) for i in below)
        row.update({"support zfcore": support(z), "support re-creation": support(r)})
        if captum:
            row["support captum"] = support(c)
        rows.append(row)
        projs[name] = dict(zfcore=z, recreation=r, recreation_zfcore_switches=r_sw, captum=c, selection=sel)
    return rows, projs


def bias_effect(spec, params, x, layers, bias_seed: int = 0, net=None) -> list[dict]:
    """The original's random deconv biases against zero biases, same input and selection (the
    original's, ties included), per layer: relative difference of the projections, mean absolute
    difference of their min-max uint8 displays (grey levels of 255), support of each, how much of the
    random-bias support lies outside the receptive field (needs ``net`` for ``input_box``), and how much
    the selected activation changes the random-bias output at all (``||out - out from an all-zero
    start|| / ||out from an all-zero start||``)."""
    import torch

    spec, params = features_only(spec, params)
    zero = Recreation(spec, params, deconv_bias="zero")
    rand = Recreation(spec, params, deconv_bias="random", bias_seed=bias_seed)
    zero.forward(x)
    rand.forward(x)
    rows = []
    for layer in layers:
        name = layer_names(spec, [layer])[0]
        z, sel = zero.project(name)
        r, _ = rand.project(name)
        start, _ = rand.select(name)
        blank = rand.deconv_from(torch.zeros_like(start), name)[0].numpy()
        row = dict(layer=name, feature=sel.feature, ties=len(sel.positions),
                   **{"random vs zero": relative_error(r, z),
                      "displayed: mean grey-level difference": float(np.abs(
                          minmax_uint8(r).astype(np.float64) - minmax_uint8(z)).mean()),
                      "support random": support(r), "support zero": support(z)})
        if net is not None:
            inside = np.zeros(z.shape[1:], bool)
            for pos in sel.positions:
                t, l, b, rr = net.input_box(name, pos, input_size=x.shape[1:])
                inside[t:b + 1, l:rr + 1] = True
            row["zero-bias support inside box"] = bool(not (support_mask(z) & ~inside).any())
            row["random-bias support outside box"] = float((support_mask(r) & ~inside).mean())
        row["selection's effect on random-bias output"] = relative_error(r, blank)
        rows.append(row)
    return rows


def channel_order(spec, params, img_uint8, layers) -> list[dict]:
    """BGR input (the original) against RGB input, zero deconv biases, each with its own selection
    (the original's rule). Two comparisons of the projections: ``as displayed`` (channels in the order
    fed, which is how the original shows them: ``imshow`` takes its BGR-ordered result for RGB) and ``in
    RGB order`` (the BGR run's channels flipped back, i.e. the colours it attributes to the photo)."""
    spec, params = features_only(spec, params)
    rec = Recreation(spec, params, deconv_bias="zero")
    outs = {}
    for order in ("BGR", "RGB"):
        rec.forward(prepare_input(img_uint8, order))
        outs[order] = [rec.project(layer_names(spec, [layer])[0]) for layer in layers]
    rows = []
    for layer, (b, sb), (r, sr) in zip(layers, outs["BGR"], outs["RGB"]):
        rows.append({"layer": layer_names(spec, [layer])[0], "feature BGR": sb.feature, "feature RGB": sr.feature,
                     "value BGR": sb.value, "value RGB": sr.value,
                     "BGR vs RGB as displayed": relative_error(b, r),
                     "BGR vs RGB in RGB order": relative_error(b[::-1], r)})
    return rows


# ------------------------------------------------------------------------------------------------
# timings

def time_zfcore(net, x, layers, figure_layers=None, repeat: int = 5) -> dict:
    """Median seconds: ``forward`` (with switches), ``project <layer>`` for each of ``layers`` (the
    strongest map's strongest activation, cropped projection, after one forward) and, when
    ``figure_layers`` is given, ``figure`` (forward + those layers projected + min-max uint8)."""
    out = {"forward": median_time(lambda: net.forward(x), repeat)}
    net.forward(x)
    for name in layers:
        def one(name=name):
            f = strongest_feature(net.activations(name)[0])
            return net.project(name, feature=f)
        out[f"project {name}"] = median_time(one, repeat)
    if figure_layers is not None:
        out["figure"] = median_time(lambda: zfcore_figure(net, x, figure_layers), repeat)
    return out


def time_recreation(rec, x, layers, figure_layers=None, repeat: int = 5) -> dict:
    """The same measures for a :class:`Recreation` (its forward runs the classifier too, as the
    original's does, when the spec has one; its projections are dense, as the original's)."""
    out = {"forward": median_time(lambda: rec.forward(x), repeat)}
    rec.forward(x)
    for name in layers:
        out[f"project {name}"] = median_time(lambda name=name: rec.project(name), repeat)
    if figure_layers is not None:
        out["figure"] = median_time(lambda: rec.figure(x, figure_layers), repeat)
    return out


def time_captum(spec, params, x, layers, units: dict, figure_layers=None, repeat: int = 5) -> dict:
    """captum's ``NeuronDeconvolution`` on a torch model of the spec's features part, built once
    (``zfcore.reference.torch_model``): ``project <layer>`` is one ``attribute`` call for the unit
    ``units[layer] = (feature, row, col)`` (it runs its own forward; there is no separate forward with
    switches: ``forward`` is NaN); ``figure`` is the calls for ``figure_layers`` plus min-max. The
    scaling by the activation value (one multiplication) is left out."""
    import torch
    from captum.attr import NeuronDeconvolution

    from . import reference

    spec, params = features_only(spec, params)
    model = reference.torch_model(spec, params)
    mods = dict(model.named_children())
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    names = list(layers) + [n for n in (figure_layers or []) if n not in layers]
    attr = {name: NeuronDeconvolution(model, mods[name]) for name in names}

    def one(name):
        return attr[name].attribute(xt.clone().requires_grad_(True), neuron_selector=tuple(units[name]))

    out = {"forward": float("nan")}
    for name in layers:
        out[f"project {name}"] = median_time(lambda name=name: one(name), repeat)
    if figure_layers is not None:
        out["figure"] = median_time(
            lambda: [minmax_uint8(one(n)[0].detach().numpy()) for n in figure_layers], repeat)
    return out


def timing_rows(results: dict, reference: str = "zfcore") -> list[dict]:
    """One row per measure from ``{implementation: {measure: seconds}}``: milliseconds per
    implementation and the ratio of each other implementation's time to ``reference``'s."""
    impls = list(results)
    measures = list(results[impls[0]])
    rows = []
    for m in measures:
        row = {"measure": m}
        for impl in impls:
            row[f"{impl} ms"] = results[impl].get(m, float("nan")) * 1e3
        for impl in impls:
            if impl != reference:
                row[f"{impl} / {reference}"] = results[impl].get(m, float("nan")) / results[reference][m]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# figure

def plot_rows(rows, titles=None, size: float = 2.0, suptitle=None):
    """A figure of image rows: ``rows`` is a list of (row label, [images]), each image (H, W, 3) or (H, W),
    uint8 or float in [0, 1], shown as given (no rescaling: pass what the implementation displays);
    ``titles`` a matching list of lists of panel titles. Returns the figure."""
    import matplotlib.pyplot as plt

    ncols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols, size * len(rows) + 0.3), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            img = np.asarray(imgs[c])
            lims = {} if img.dtype == np.uint8 else {"vmin": 0.0, "vmax": 1.0}
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest", **lims)
            if titles is not None:
                ax.set_title(titles[r][c], fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_table(rows: list[dict], columns=None, formats: dict | None = None):
    """Display :func:`format_table` as Markdown in a notebook (IPython imported here)."""
    from IPython.display import Markdown, display

    display(Markdown(format_table(rows, columns, formats)))
