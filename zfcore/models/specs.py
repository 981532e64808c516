"""Architectures as declarative layer specs: the spec vocabulary of zfcore.

A spec is a list of ``(name, kind, params)`` triples, read top to bottom as the forward pass. The same
spec builds the numpy network (``build``) and its PyTorch mirror (``zfcore.torch.reference.torch_model``), so
the two cannot drift apart. Parameter names are ``<layer>.weight`` and ``<layer>.bias`` in PyTorch's
layout: conv weights (F, C, KH, KW), linear weights (out, in).

Layer kinds: ``conv`` (in_channels, out_channels, kernel, stride, padding; kernel, stride and padding
an int or an (H, W) pair), ``relu``, ``maxpool`` (kernel, stride, padding), ``flatten``, ``linear``
(in_features, out_features), ``dropout`` (p; identity at inference), ``lrn`` (size, alpha, beta, k:
local response normalisation across channels, ``torch.nn.LocalResponseNorm`` semantics) and
``adaptive_avgpool`` (output_size: an int or an (H, W) pair).

Architectures (``SPECS``, or ``get_spec(arch, num_classes)``):

- ``fmnist_zf``: the embedded small ZF-style net for 28x28 Fashion-MNIST images (``FMNIST_ZF``);
- ``zfnet``: ZFNet as in Zeiler & Fergus (2014), Fig. 3 (``zfnet_spec``);
- ``alexnet``, ``vgg16``: torchvision's layouts (``alexnet_spec``, ``vgg16_spec``).

Worked out here once, from a spec: ``param_shapes`` (every parameter's shape), ``check_params``
(missing keys, unexpected keys and shape mismatches, all in one message), ``features_spec`` (the
feature extractor: the layers before the classifier) and ``build`` (a ``zfcore.core.network.Network``, with
``kaiming_params`` for seeded random weights).

Weight files live in ``zfcore.models.weights``; ``zfcore.models`` exports both modules' public names.
Importing this module needs numpy alone.
"""
from __future__ import annotations

import numpy as np

from zfcore.core import layers as L
from zfcore.core import ops
from zfcore.core.network import Network
from zfcore.errors import ArgumentError, WeightsError, check_choice, check_count

# The embedded default: a small ZF-style net for 28x28 grey Fashion-MNIST images. Five conv layers (so
# the paper's "layers 1-5" figures have a counterpart), overlapping 3x3 stride-2 max-pools as in ZFNet,
# ReLUs, and a two-layer classifier with dropout 0.5.
#   28x28 -conv1 5x5-> 28x28 -pool1-> 14x14 -conv2 5x5-> 14x14 -pool2-> 7x7 -conv3,4,5 3x3-> 7x7
#   -pool5-> 4x4 -> 128*4*4 = 2048 -> fc6 512 -> fc7 10
FMNIST_ZF = [
    ("conv1", "conv", dict(in_channels=1, out_channels=32, kernel=5, stride=1, padding=2)),
    ("relu1", "relu", {}),
    ("pool1", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("conv2", "conv", dict(in_channels=32, out_channels=64, kernel=5, stride=1, padding=2)),
    ("relu2", "relu", {}),
    ("pool2", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("conv3", "conv", dict(in_channels=64, out_channels=128, kernel=3, stride=1, padding=1)),
    ("relu3", "relu", {}),
    ("conv4", "conv", dict(in_channels=128, out_channels=128, kernel=3, stride=1, padding=1)),
    ("relu4", "relu", {}),
    ("conv5", "conv", dict(in_channels=128, out_channels=128, kernel=3, stride=1, padding=1)),
    ("relu5", "relu", {}),
    ("pool5", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("flatten", "flatten", {}),
    ("fc6", "linear", dict(in_features=2048, out_features=512)),
    ("relu6", "relu", {}),
    ("drop6", "dropout", dict(p=0.5)),
    ("fc7", "linear", dict(in_features=512, out_features=10)),
]


def _conv(name, cin, cout, kernel, stride=1, padding=0):
    return (name, "conv", dict(in_channels=cin, out_channels=cout, kernel=kernel, stride=stride,
                               padding=padding))


def _pool(name, kernel, stride, padding=0):
    return (name, "maxpool", dict(kernel=kernel, stride=stride, padding=padding))


def _linear(name, fin, fout):
    return (name, "linear", dict(in_features=fin, out_features=fout))


def vgg16_spec(num_classes: int = 1000) -> list:
    """VGG16 (configuration D of Simonyan & Zisserman) in torchvision's layout, for 3x224x224 input.

    Thirteen 3x3 stride-1 pad-1 convs in five blocks (64, 128, 256, 512, 512 channels), each block
    ending in a non-overlapping 2x2/2 max-pool (224 -> 112 -> 56 -> 28 -> 14 -> 7), an adaptive 7x7
    average pool (identity at 224x224; it lets other input sizes reach the classifier), then
    fc6 25088 -> 4096, fc7 4096 -> 4096 (ReLU and dropout 0.5 after each) and fc8 -> ``num_classes``.
    Names: conv1_1, relu1_1, ..., pool5, avgpool, flatten, fc6, relu6, drop6, fc7, relu7, drop7, fc8.
    """
    spec, cin = [], 3
    for block, (cout, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for i in range(1, reps + 1):
            spec += [_conv(f"conv{block}_{i}", cin, cout, 3, 1, 1), (f"relu{block}_{i}", "relu", {})]
            cin = cout
        spec.append(_pool(f"pool{block}", 2, 2))
    spec += [("avgpool", "adaptive_avgpool", dict(output_size=7)), ("flatten", "flatten", {}),
             _linear("fc6", 512 * 7 * 7, 4096), ("relu6", "relu", {}), ("drop6", "dropout", dict(p=0.5)),
             _linear("fc7", 4096, 4096), ("relu7", "relu", {}), ("drop7", "dropout", dict(p=0.5)),
             _linear("fc8", 4096, num_classes)]
    return spec


def alexnet_spec(num_classes: int = 1000) -> list:
    """AlexNet in torchvision's layout (the one-GPU variant of Krizhevsky's "one weird trick"), 3x224x224.

    conv1 64@11x11/4 pad 2 (224 -> 55), overlapping 3x3/2 max-pool (-> 27), conv2 192@5x5 pad 2,
    pool (-> 13), conv3 384, conv4 256, conv5 256 (3x3 pad 1), pool (-> 6), adaptive 6x6 average pool,
    then torchvision's classifier order: drop6, fc6 9216 -> 4096, relu6, drop7, fc7 4096 -> 4096,
    relu7, fc8 -> ``num_classes`` (dropout *before* each of fc6 and fc7). No local response
    normalisation, as in torchvision.
    """
    relu = lambda i: (f"relu{i}", "relu", {})  # noqa: E731
    return [
        _conv("conv1", 3, 64, 11, 4, 2), relu(1), _pool("pool1", 3, 2),
        _conv("conv2", 64, 192, 5, 1, 2), relu(2), _pool("pool2", 3, 2),
        _conv("conv3", 192, 384, 3, 1, 1), relu(3),
        _conv("conv4", 384, 256, 3, 1, 1), relu(4),
        _conv("conv5", 256, 256, 3, 1, 1), relu(5), _pool("pool5", 3, 2),
        ("avgpool", "adaptive_avgpool", dict(output_size=6)), ("flatten", "flatten", {}),
        ("drop6", "dropout", dict(p=0.5)), _linear("fc6", 256 * 6 * 6, 4096), relu(6),
        ("drop7", "dropout", dict(p=0.5)), _linear("fc7", 4096, 4096), relu(7),
        _linear("fc8", 4096, num_classes),
    ]


# Local response normalisation for ZFNet. The paper gives no constants; these are AlexNet's (Krizhevsky
# et al. 2012, sec. 3.3: n = 5, alpha = 1e-4, beta = 0.75, k = 2) written for torch's formula, which
# divides alpha by the window size: b = a / (k + alpha / n * sum a^2) ** beta, so alpha = 5 * 1e-4.
ZFNET_LRN = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)


def zfnet_spec(num_classes: int = 1000) -> list:
    """ZFNet as in Zeiler & Fergus (ECCV 2014), Fig. 3, for 3x224x224 input.

    Each of layers 1-2 is conv -> ReLU -> 3x3 stride-2 max-pool -> contrast normalisation across
    feature maps (``lrn``, constants ``ZFNET_LRN``); layers 3-5 are 3x3 convs, layer 5 ends in a pool:

    ======  ===================  =======  =========
    layer   op                   padding  output
    ======  ===================  =======  =========
    conv1   96@7x7 stride 2      1        96x110x110
    pool1   3x3 stride 2         1        96x55x55
    conv2   256@5x5 stride 2     0        256x26x26
    pool2   3x3 stride 2         1        256x13x13
    conv3   384@3x3 stride 1     1        384x13x13
    conv4   384@3x3 stride 1     1        384x13x13
    conv5   256@3x3 stride 1     1        256x13x13
    pool5   3x3 stride 2         0        256x6x6
    ======  ===================  =======  =========

    then fc6 9216 -> 4096, fc7 4096 -> 4096 (ReLU and dropout 0.5 after each, as the paper's sec. 3)
    and fc8 -> ``num_classes``. The paddings are the only symmetric integer ones giving the paper's map
    sizes with floor rounding, ``H_out = 1 + (H + 2*pad - K) // stride``: e.g. conv1 needs
    ``(217 + 2p) // 2 == 109``, so p = 1; pool1 and pool2 need p = 1 where Caffe (used for the paper's
    era of models) rounded up instead (ceil mode, an extra window at the bottom/right only); the two
    choices give the same sizes but pad 1 places windows one pixel up-left of Caffe's.

    The deconvnet passes the contrast normalisation through as the identity (the paper's
    reconstructions do not invert it; see ``zfcore.core.layers.LocalResponseNorm``), so projections through ``norm1`` and
    ``norm2`` are exactly those of the network without them, while the forward pass applies them.
    """
    relu = lambda i: (f"relu{i}", "relu", {})  # noqa: E731
    return [
        _conv("conv1", 3, 96, 7, 2, 1), relu(1), _pool("pool1", 3, 2, 1), ("norm1", "lrn", dict(ZFNET_LRN)),
        _conv("conv2", 96, 256, 5, 2, 0), relu(2), _pool("pool2", 3, 2, 1), ("norm2", "lrn", dict(ZFNET_LRN)),
        _conv("conv3", 256, 384, 3, 1, 1), relu(3),
        _conv("conv4", 384, 384, 3, 1, 1), relu(4),
        _conv("conv5", 384, 256, 3, 1, 1), relu(5), _pool("pool5", 3, 2, 0),
        ("flatten", "flatten", {}),
        _linear("fc6", 256 * 6 * 6, 4096), relu(6), ("drop6", "dropout", dict(p=0.5)),
        _linear("fc7", 4096, 4096), relu(7), ("drop7", "dropout", dict(p=0.5)),
        _linear("fc8", 4096, num_classes),
    ]


def _set_num_classes(spec, num_classes: int) -> list:
    """A copy of ``spec`` whose last linear layer has ``num_classes`` outputs."""
    spec = [(n, k, dict(p)) for n, k, p in spec]
    last = max(i for i, (_, k, _) in enumerate(spec) if k == "linear")
    spec[last][2]["out_features"] = int(num_classes)
    return spec


# The registry: architecture name -> spec with its default classifier width.
SPECS = {"fmnist_zf": FMNIST_ZF, "vgg16": vgg16_spec(), "alexnet": alexnet_spec(), "zfnet": zfnet_spec()}

# Each architecture's input: (channels, side) of the square images it takes, and whether they are
# normalised with the ImageNet mean and std (``zfcore.data.imagenet_normalize``).
INPUTS = {"fmnist_zf": (1, 28, False), "vgg16": (3, 224, True), "alexnet": (3, 224, True),
          "zfnet": (3, 224, True)}


def _check_arch(arch: str) -> str:
    """``arch`` if it is a registered architecture, else ``ArgumentError`` suggesting the nearest."""
    return check_choice(arch, SPECS, "architecture")


def get_spec(arch: str, num_classes: int | None = None) -> list:
    """The spec of a registered architecture, with its last linear layer resized to ``num_classes``
    (default: the architecture's own, 10 for fmnist_zf and 1000 for the ImageNet nets)."""
    _check_arch(arch)
    if num_classes is None:
        return [(n, k, dict(p)) for n, k, p in SPECS[arch]]
    return _set_num_classes(SPECS[arch], check_count(num_classes, "num_classes", 1))


def _spec_of(arch_or_spec) -> list:
    """A registered architecture's spec (by name), or ``arch_or_spec`` itself once its entries are
    checked to be ``(name, kind, params)`` triples."""
    if isinstance(arch_or_spec, str):
        return get_spec(arch_or_spec)
    try:
        entries = list(arch_or_spec)
    except TypeError:
        raise ArgumentError(f"spec must be an architecture name or a list of (name, kind, params) triples, "
                            f"got {arch_or_spec!r}") from None
    for entry in entries:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 3 and isinstance(entry[0], str)
                and isinstance(entry[2], dict)):
            raise ArgumentError(f"spec entries are (name, kind, params) triples, got {entry!r}")
    return arch_or_spec


def _size(name, kind, p, key) -> int:
    """Spec parameter ``key`` of layer ``name``: an integer >= 1, else ``ArgumentError``."""
    if key not in p:
        raise ArgumentError(f"layer {name!r}: a {kind} layer needs {key!r} in its spec parameters")
    return check_count(p[key], f"layer {name!r}: {key}", 1)


def param_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Expected parameter shapes of a spec, keyed ``<layer>.weight`` / ``<layer>.bias``."""
    shapes = {}
    for name, kind, p in _spec_of(spec):
        if kind == "conv":
            if "kernel" not in p:
                raise ArgumentError(f"layer {name!r}: a conv layer needs 'kernel' in its spec parameters")
            kernel = ops.pair(p["kernel"], f"layer {name!r}: kernel", 1)
            cout, cin = _size(name, kind, p, "out_channels"), _size(name, kind, p, "in_channels")
            shapes[f"{name}.weight"] = (cout, cin, *kernel)
            shapes[f"{name}.bias"] = (cout,)
        elif kind == "linear":
            fout, fin = _size(name, kind, p, "out_features"), _size(name, kind, p, "in_features")
            shapes[f"{name}.weight"] = (fout, fin)
            shapes[f"{name}.bias"] = (fout,)
    return shapes


def _check_chain(spec, input_shape=None) -> None:
    """Each conv's ``in_channels`` must equal the channels of what comes before it (the input's, when
    ``input_shape`` (C, H, W) is given), and each linear's ``in_features`` the features of a linear
    layer before it; ``ArgumentError`` naming both layers otherwise. Widths after a flatten depend on
    the input size and are not checked here."""
    known = input_shape is not None and len(input_shape) == 3
    width, source = (int(input_shape[0]), "the input") if known else (None, None)
    for name, kind, p in spec:
        if kind in ("conv", "linear"):
            key, unit = ("in_channels", "channels") if kind == "conv" else ("in_features", "features")
            if width is not None and p[key] != width:
                raise ArgumentError(f"layer {name!r}: {key} {p[key]} does not match the {width} {unit} of "
                                    f"{source} before it")
            width, source = p["out_channels" if kind == "conv" else "out_features"], f"layer {name!r}"
        elif kind == "flatten":
            width = None


def check_params(spec, params: dict, source: str = "params") -> None:
    """Check ``params`` against a spec (or a registered architecture's name).

    Raises one ``WeightsError`` naming ``source`` that lists every missing key, every unexpected key and
    every shape mismatch (key, expected shape, found shape); returns None when all is well.
    """
    if not hasattr(params, "keys"):
        raise WeightsError(f"{source}: weights must be a dict of arrays, got {type(params).__name__}")
    spec = _spec_of(spec)
    expected = param_shapes(spec)
    problems = []
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    if missing:
        problems.append("missing keys: " + ", ".join(f"{k} {expected[k]}" for k in missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(
            f"{k} {tuple(getattr(params[k], 'shape', ()))}" for k in unexpected))
    for k, shape in expected.items():
        if k in params:
            found = getattr(params[k], "shape", None)
            if found is None:
                problems.append(f"{k}: expected an array of shape {shape}, found {type(params[k]).__name__}")
            elif tuple(found) != tuple(shape):
                problems.append(f"shape mismatch for {k}: expected {tuple(shape)}, found {tuple(found)}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit the architecture: " + "; ".join(problems))


def _features_end(spec) -> int:
    """Index of the first layer after the feature extractor: the first ``adaptive_avgpool`` or
    ``flatten`` (where torchvision's ``features`` section ends), or ``len(spec)``."""
    for i, (_, kind, _) in enumerate(spec):
        if kind in ("adaptive_avgpool", "flatten"):
            return i
    return len(spec)


def features_spec(arch_or_spec, params: dict | None = None):
    """The feature extractor of an architecture (name) or spec: its layers before the first
    ``adaptive_avgpool`` or ``flatten`` (conv, relu, pool, lrn ...; VGG16: conv1_1 ... pool5), which is
    torchvision's ``features`` section. Projections from these layers need nothing more, and the
    checkpoints keep only their weights.

    Returns the list of entries; with ``params`` given, ``(entries, the params of those layers)``."""
    spec = _spec_of(arch_or_spec)
    keep = list(spec[:_features_end(spec)])
    if params is None:
        return keep
    names = {name for name, _, _ in keep}
    return keep, {k: v for k, v in params.items() if k.rsplit(".", 1)[0] in names}


def kaiming_params(spec, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random weights for a spec: Kaiming-normal (std ``sqrt(2 / fan_in)``, fan_in = C*KH*KW or in),
    zero biases, drawn in float32 from ``numpy.random.default_rng(seed)`` in spec order (a float64
    network gets the same values, widened)."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in param_shapes(spec).items():
        if key.endswith(".bias"):
            params[key] = np.zeros(shape, dtype)
            continue
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / int(np.prod(shape[1:]))))
        params[key] = w.astype(dtype, copy=False)
    return params


def input_shape(arch: str) -> tuple[int, int, int]:
    """(C, H, W) of the images architecture ``arch`` takes (``INPUTS``); ``ArgumentError`` for an
    unknown name."""
    return _input(_check_arch(arch))


def build(spec, params: dict | None = None, seed: int = 0, dtype=np.float32, input_shape=None) -> Network:
    """A ``zfcore.core.network.Network`` from a spec (list of ``(name, kind, params)``, or a registered
    architecture's name).

    params: name -> array (``<layer>.weight`` / ``<layer>.bias``, torch layout), converted to ``dtype``;
    None: seeded Kaiming-normal weights and zero biases (``kaiming_params``). ``input_shape`` (C, H, W):
    the images the network takes, if known (receptive fields then need no size); a registered spec's
    own by default. A bad spec (unknown kind, missing or non-positive sizes, a conv whose
    ``in_channels`` differ from the channels before it) raises ``ArgumentError`` naming the layer;
    weights that do not fit raise ``WeightsError``.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise ArgumentError(f"dtype must be float32 or float64, got {dtype}")
    spec = _spec_of(spec)
    expected = param_shapes(spec)
    if input_shape is None:
        input_shape = next((_input(a) for a, sp in SPECS.items() if sp is spec or sp == list(spec)), None)
    _check_chain(spec, input_shape)
    if params is None:
        params = kaiming_params(spec, seed, dtype)
    elif not hasattr(params, "items"):
        raise WeightsError(f"params must be a dict of arrays, got {type(params).__name__}")
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    layers = []
    for name, kind, p in spec:
        layer = L.from_spec(name, kind, p, params)
        for key, value in layer.params.items():
            if value.shape != expected[key]:
                raise WeightsError(f"shape mismatch for {key}: expected {expected[key]}, found {value.shape}")
        layers.append(layer)
    return Network(layers, spec=spec, dtype=dtype, input_shape=input_shape)


def _input(arch):
    ch, side, _ = INPUTS[arch]
    return (ch, side, side)


def last_linear(spec) -> str | None:
    """Name of the spec's last linear layer (its classifier), or None."""
    names = [n for n, k, _ in spec if k == "linear"]
    return names[-1] if names else None
