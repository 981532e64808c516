"""A re-creation of huybery/VisualizingCNN's deconvnet pipeline in PyTorch (notebook 06, ``zfcore.comparison.compare``).

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

torch is imported inside functions only; importing this module needs numpy alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zfcore import models
from zfcore.torch import reference
from zfcore.data.loading import imagenet_normalize
from zfcore.errors import ArgumentError, suggest

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
        raise ArgumentError(f"expected an (H, W) or (H, W, C) uint8 image, got {a.ndim}-d {a.dtype}")
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
        raise ArgumentError(f"expected an (H, W, 3) or (H, W) uint8 image, got shape {a.shape} {a.dtype}")
    if order not in ("BGR", "RGB"):
        raise ArgumentError(f"order must be 'BGR' or 'RGB', got {order!r}")
    if order == "BGR":
        a = a[:, :, ::-1]
    x = a.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return np.ascontiguousarray(imagenet_normalize(x[None]))


def minmax_uint8(img: np.ndarray) -> np.ndarray:
    """The original's output scaling: a (C, H, W) projection -> (H, W, C) uint8.

    ``(x - min) / (max - min) * 255`` over all pixels *and channels* together, truncated (not rounded)
    to uint8. A constant image (where the original would divide by zero) gives zeros.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 3:
        raise ArgumentError(f"expected a (C, H, W) array, got shape {a.shape}")
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


def _mirror(mods, bias: bool, bias_seed: int, dtype):
    """The original's ``Vgg16Deconv``: the forward modules reversed (deconv index = n - 1 - forward
    index), each conv a ``ConvTranspose2d`` sharing its weight tensor (with a bias drawn by PyTorch's
    default initialisation from ``bias_seed`` when ``bias``), each pool a ``MaxUnpool2d``."""
    import torch
    from torch import nn

    deconv = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(bias_seed)
        for m in reversed(mods):
            if isinstance(m, nn.Conv2d):
                d = nn.ConvTranspose2d(m.out_channels, m.in_channels, m.kernel_size, m.stride, m.padding,
                                       bias=bias, dtype=dtype)
                d.weight.data = m.weight.data  # shared, as in the original
            elif isinstance(m, nn.ReLU):
                d = nn.ReLU()
            else:
                d = nn.MaxUnpool2d(m.kernel_size, m.stride, m.padding)
            deconv.append(d)
    return nn.Sequential(*deconv).eval()


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
            raise ArgumentError(f"deconv_bias must be 'random' or 'zero', got {deconv_bias!r}")
        if unpool not in ("assign", "add"):
            raise ArgumentError(f"unpool must be 'assign' or 'add', got {unpool!r}")
        self.unpool = unpool
        if dtype not in ("float32", "float64"):
            raise ArgumentError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        spec = models.get_spec(spec) if isinstance(spec, str) else spec
        self.deconv_bias, self.bias_seed, self.dtype = deconv_bias, bias_seed, dtype
        feats = models.features_spec(spec)
        for name, kind, _ in feats:
            if kind not in ("conv", "relu", "maxpool"):
                raise ArgumentError(f"layer {name!r}: the re-creation handles conv, relu and maxpool "
                                    f"feature layers, not {kind!r}")
        self.names = [name for name, _, _ in feats]
        self.index = {name: i for i, name in enumerate(self.names)}
        # The forward network: zfcore's torch mirror of the spec (ReLUs not in place, so the hook on a
        # conv keeps its pre-ReLU map), its pools returning their switches, split where torchvision's
        # ``features`` section ends.
        model = reference.torch_model(spec, params, dtype)
        children = list(model.children())
        mods = children[:len(feats)]
        for m in mods:
            if isinstance(m, nn.MaxPool2d):
                m.return_indices = True
        self.features = nn.Sequential(*mods).eval()
        self.classifier = nn.Sequential(*children[len(feats):]).eval()

        self.deconv = _mirror(mods, deconv_bias == "random", bias_seed, getattr(torch, dtype))
        n = len(mods)
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
        if isinstance(layer, str) and layer not in self.index:
            raise ArgumentError(f"no features layer {layer!r}{suggest(layer, self.names)}")
        i = self.index[layer] if isinstance(layer, str) else int(layer)
        if not 0 <= i < len(self.names):
            raise ArgumentError(f"no features layer {layer!r}")
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
            raise ArgumentError(f"the original works on one image (1, C, H, W), got shape {tuple(x.shape)}")
        self.feature_maps.clear()
        self.pool_locs.clear()
        with torch.no_grad():
            for m in self.features:
                x = m(x)
                if isinstance(x, tuple):
                    x = x[0]
            return self.classifier(x) if len(self.classifier) else x

    def forward_of(self, other: "Recreation") -> None:
        """Take the stored maps, switches and sizes of ``other``'s last :meth:`forward` instead of running
        the same forward pass again: ``other`` must be built from the same spec and parameters (the deconv
        biases and the unpooling rule do not enter the forward pass)."""
        import torch

        mine, theirs = list(self.features.parameters()), list(other.features.parameters())
        if other.names != self.names or len(mine) != len(theirs) or not all(
                a.data_ptr() == b.data_ptr() or (a.shape == b.shape and torch.equal(a, b))
                for a, b in zip(mine, theirs)):
            raise ArgumentError("forward_of: the two re-creations are of different networks or parameters")
        self.feature_maps, self.pool_locs = dict(other.feature_maps), dict(other.pool_locs)
        self._in_sizes = dict(other._in_sizes)

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
        (N, C_layer, H, W) tensor -> (N, C_in, H_in, W_in) tensor; N > 1 runs N starts on the one image's
        switches (a batch of projections)."""
        import torch
        from torch import nn

        i = self._index(layer)
        x = start
        with torch.no_grad():
            for d in range(len(self.names) - 1 - i, len(self.deconv)):
                m, fwd = self.deconv[d], len(self.names) - 1 - d
                if isinstance(m, nn.MaxUnpool2d):
                    sw = self.pool_locs[self.unpool2pool[d]].expand(x.shape[0], -1, -1, -1)
                    if self.unpool == "add":
                        x = _unpool_add(x, sw, self._in_sizes[fwd])
                    else:
                        x = m(x, sw, output_size=self._in_sizes[fwd])
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
            raise ArgumentError(f"scale must be None or 'uint8', got {scale!r}")
        return out, sel

    def figure(self, x, layers=DEMO_LAYERS):
        """The original's demo figure: forward, then for each layer its selection, mirror and min-max
        uint8 scaling. Returns a list of ((H, W, C) uint8, Selection)."""
        self.forward(x)
        return [self.project(layer, scale="uint8") for layer in layers]


# ------------------------------------------------------------------------------------------------
# layers and selection by the original's rules

def layer_names(spec, layers=DEMO_LAYERS) -> list[str]:
    """zfcore names of ``features`` indices (VGG16's demo layers by default: conv3_3 ... conv5_3)."""
    names = [name for name, _, _ in models.features_spec(spec)]
    return [names[i] if not isinstance(i, str) else i for i in layers]


def conv_layers(spec) -> list[str]:
    """Names of the conv layers of a spec's ``features`` section."""
    return [name for name, kind, _ in models.features_spec(spec) if kind == "conv"]

