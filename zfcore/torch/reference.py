"""PyTorch references for the projection, independent of zfcore's numpy code (tests, comparisons).

torch (and captum) are imported inside the functions, never when this module is imported.

- ``torch_model``: the one PyTorch mirror of a spec (an ``nn.Sequential`` whose children are named as
  the spec's layers), used by training, the huybery re-creation, the benchmarks and the tests.
- ``TorchDeconvnet``: the spec and weights as a torch model (``torch_model``); autograd of
  the chosen activation with respect to the input, seeded with the activation's own value, with every
  ReLU's backward replaced by the rule: ``relu(g)`` (deconvnet), ``relu(g) * (x > 0)`` (guided) or
  ``g * (x > 0)`` (gradient, torch's own). Local response normalisation is passed through by its
  backward (the deconvnet's definition, see ``zfcore.core.layers``); everything else is torch's own autograd
  (max-pool's backward sends each value to its argmax and adds up where windows overlap; a conv's
  backward is the transposed conv without bias).
  ``pinned`` fixes the forward pass's discrete decisions (below).
- ``deconvnet_reference``: one projection with ``TorchDeconvnet``.
- ``captum_deconvolution``: captum's ``NeuronDeconvolution`` on the same weights, scaled by the
  activation value (captum seeds with 1; for a non-negative activation the two agree exactly, as the
  deconvnet is positively homogeneous in its seed).

Pinned decisions. Two float32 implementations of the same network differ by rounding (~1e-6 relative
here), so where a pooling window's two largest inputs, or a ReLU's input and zero, are that close, each
may decide differently, and a projection crossing that unit differs at O(1). That is an ambiguity of
float32, not an error of either side. To compare float32 projections, ``TorchDeconvnet`` can take the
decisions of the other implementation's forward pass: ``pinned = {pool name: switches (N, C, Ho, Wo)
flat indices, relu name: mask of its forward input > 0}``. A pinned pool outputs its input gathered
at the given switches (autograd then scatter-adds, overlaps accumulating); a pinned ReLU's backward
(guided, gradient) uses the given mask. Everything else is still torch's own computation, and
``decision_gaps`` reports how close to a tie every pinned decision that torch would take differently
is. Unpinned float64 references need no such help.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from zfcore.core.layers import KINDS, check_rule
from zfcore.errors import ArgumentError, check_choice, check_layer


def _module(torch, name, kind, p):
    """The torch module of one spec entry."""
    nn = torch.nn
    if kind == "conv":
        return nn.Conv2d(p["in_channels"], p["out_channels"], p["kernel"], p["stride"], p["padding"])
    if kind == "relu":
        return nn.ReLU()  # not in place: a hook on the layer before keeps its own output
    if kind == "maxpool":
        return nn.MaxPool2d(p["kernel"], p["stride"], p["padding"])
    if kind == "flatten":
        return nn.Flatten()
    if kind == "linear":
        return nn.Linear(p["in_features"], p["out_features"])
    if kind == "dropout":
        return nn.Dropout(p["p"])
    if kind == "lrn":
        return nn.LocalResponseNorm(p["size"], p["alpha"], p["beta"], p["k"])
    if kind == "adaptive_avgpool":
        o = p["output_size"]
        return nn.AdaptiveAvgPool2d(tuple(o) if isinstance(o, (list, tuple)) else o)
    try:
        check_choice(kind, KINDS, "kind")
    except ArgumentError as e:
        raise ArgumentError(f"layer {name!r}: {e}") from None
    raise ArgumentError(f"layer {name!r}: kind {kind!r} has no torch module here")


def torch_model(spec, params: dict | None = None, dtype: str = "float32", batchnorm: bool = False):
    """The PyTorch mirror of a spec: an ``nn.Sequential`` whose children are named as the spec's layers,
    so its state-dict keys are zfcore's parameter names (``conv1.weight`` ...).

    ``params`` given (``<layer>.weight`` / ``<layer>.bias`` numpy arrays, checked with
    ``zfcore.models.check_params``): a fixed reference in ``dtype``, in eval mode, gradients off; its
    tensors share memory with ``params`` where the dtype already matches (no copy of VGG16's 480 MB
    classifier). ``params=None``: a trainable model with torch's default initialisation (training);
    ``batchnorm=True`` then puts a ``BatchNorm2d`` named ``<conv>_bn`` after every conv
    (``zfcore.torch.train.fold_batchnorm`` folds them back into the convs, so exported weights fit the spec).
    """
    import torch

    from zfcore.models.specs import check_params

    check_choice(dtype, ("float32", "float64"), "dtype")
    if batchnorm and params is not None:
        raise ArgumentError("batchnorm=True builds a model to train: pass params=None")
    mods = {}
    for name, kind, p in spec:
        mods[name] = _module(torch, name, kind, p)
        if batchnorm and kind == "conv":
            mods[name + "_bn"] = torch.nn.BatchNorm2d(p["out_channels"])
    model = torch.nn.Sequential(OrderedDict(mods))
    if params is None:
        return model.to(getattr(torch, dtype))
    check_params(spec, params)
    for key, v in params.items():
        layer, leaf = key.rsplit(".", 1)
        tensor = torch.from_numpy(np.ascontiguousarray(v, dtype=dtype))
        setattr(mods[layer], leaf, torch.nn.Parameter(tensor, requires_grad=False))
    return model.to(getattr(torch, dtype)).eval()


def _functions():
    """The custom autograd functions (defined lazily so that torch is imported only when used)."""
    import torch

    class RuleReLU(torch.autograd.Function):
        """ReLU whose backward follows ``holder.rule`` (read at backward time)."""

        @staticmethod
        def forward(ctx, x, holder, mask):
            ctx.save_for_backward(x > 0 if mask is None else mask)
            ctx.holder = holder
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (mask,) = ctx.saved_tensors
            rule = ctx.holder.rule
            if rule == "deconvnet":
                return g.clamp(min=0), None, None
            if rule == "guided":
                return g.clamp(min=0) * mask, None, None
            return g * mask, None, None  # "gradient"

    class PassThrough(torch.autograd.Function):
        """Apply ``module`` forward; identity backward (LRN in the deconvnet)."""

        @staticmethod
        def forward(ctx, x, module):
            return module(x)

        @staticmethod
        def backward(ctx, g):
            return g, None

    return RuleReLU, PassThrough


class _Holder:
    rule = "deconvnet"


class TorchDeconvnet:
    """Autograd projections on a torch mirror of a spec. One forward pass serves many projections.

        ref = TorchDeconvnet(spec, params, dtype="float64")
        ref.forward(x)                     # x (N, C, H, W) numpy
        rec = ref.project("conv5", feature=3, image=0, position=None, rule="deconvnet")   # (C, H, W)
    """

    def __init__(self, spec, params: dict, dtype: str = "float32"):
        self.spec = spec
        self.specs = {name: p for name, _, p in spec}
        self.dtype = dtype
        self.model = torch_model(spec, params, dtype)
        self.names = [name for name, _, _ in spec]
        self.kinds = {name: kind for name, kind, _ in spec}
        self._holder = _Holder()
        self.acts = None

    @property
    def layer_names(self) -> list[str]:
        return list(self.names)

    def forward(self, x, upto: str | None = None, pinned: dict | None = None):
        """Run x through the model recording every layer's output (graph kept for the projections).

        pinned: optional {pool name: switches, relu name: forward-input-positive mask} (numpy arrays
        for the whole batch) to use instead of torch's own decisions (module docstring)."""
        import torch

        if upto is not None:
            check_layer(self, upto)
        RuleReLU, PassThrough = _functions()
        pinned = pinned or {}
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, self.dtype)).requires_grad_(True)
        h = self.x
        self.acts, self.inputs, self.pinned = {}, {}, pinned
        for name, module in self.model.named_children():
            kind = self.kinds[name]
            self.inputs[name] = h.detach()
            if kind == "relu":
                mask = None if name not in pinned else torch.from_numpy(np.asarray(pinned[name], bool))
                h = RuleReLU.apply(h, self._holder, mask)
            elif kind == "lrn":
                h = PassThrough.apply(h, module)
            elif kind == "maxpool" and name in pinned:
                sw = torch.from_numpy(np.asarray(pinned[name], np.int64))
                N, C, H, W = h.shape
                h = h.reshape(N, C, H * W).gather(2, sw.reshape(N, C, -1)).reshape(sw.shape)
            else:
                h = module(h)
            self.acts[name] = h
            if name == upto:
                break
        return h.detach().numpy()

    def decision_gaps(self) -> dict:
        """For every pinned layer, how far from a tie torch's own float decisions are wherever they
        differ from the pinned ones, relative to the layer input's largest magnitude: pools, the gap
        between the inputs at the two switches; ReLUs, the input's distance from zero. -> {name:
        (number of differing decisions, largest relative gap)}."""
        import torch

        out = {}
        for name, pin in self.pinned.items():
            x = self.inputs[name]
            scale = float(x.abs().max())
            if self.kinds[name] == "maxpool":
                p = self.specs[name]
                _, own = torch.nn.functional.max_pool2d(x, p["kernel"], p["stride"], p.get("padding", 0),
                                                        return_indices=True)
                pin = torch.from_numpy(np.asarray(pin, np.int64))
                diff = own != pin
                flat = x.reshape(x.shape[0], x.shape[1], -1)
                a = flat.gather(2, own.reshape(own.shape[0], own.shape[1], -1)).reshape(own.shape)
                b = flat.gather(2, pin.reshape(pin.shape[0], pin.shape[1], -1)).reshape(pin.shape)
                gaps = (a - b).abs()[diff]
            else:
                diff = (x > 0) != torch.from_numpy(np.asarray(pin, bool))
                gaps = x.abs()[diff]
            out[name] = (int(diff.sum()), float(gaps.max()) / scale if gaps.numel() else 0.0)
        return out

    def activation(self, layer: str) -> np.ndarray:
        return self.acts[layer].detach().numpy()

    def strongest(self, layer: str, feature: int, image: int = 0):
        a = self.acts[layer].detach()[image, feature]
        if a.ndim != 2:
            return None
        flat = int(torch_argmax_first(a))
        return divmod(flat, a.shape[1])

    def project(self, layer: str, feature: int, image: int = 0, position=None, rule: str = "deconvnet",
                mode: str = "single") -> np.ndarray:
        """Gradient of the chosen activation w.r.t. the input, seeded with the activation's value (or
        the whole map, ``mode="map"``), ReLU backward by ``rule`` -> (C, H, W) numpy."""
        import torch

        check_layer(self, layer)
        check_rule(rule)
        if self.acts is None or layer not in self.acts:
            raise ArgumentError(f"layer {layer!r} not recorded: run forward first")
        a = self.acts[layer]
        seed = torch.zeros_like(a)
        if mode == "map":
            seed[image, feature] = a.detach()[image, feature]
        elif a.ndim == 4:
            if position is None:
                position = self.strongest(layer, feature, image)
            r, c = position
            seed[image, feature, r, c] = a.detach()[image, feature, r, c]
        else:
            seed[image, feature] = a.detach()[image, feature]
        self._holder.rule = check_rule(rule)
        (g,) = torch.autograd.grad(a, self.x, grad_outputs=seed, retain_graph=True)
        return g[image].numpy()


def torch_argmax_first(a):
    """Flat index of the first maximum of a torch tensor (row-major), as numpy's argmax."""
    import torch

    flat = a.reshape(-1)
    m = flat.max()
    return int(torch.nonzero(flat == m)[0, 0])


def deconvnet_reference(spec, params: dict, x, layer: str, feature: int, image: int = 0, position=None,
                        rule: str = "deconvnet", mode: str = "single", dtype: str = "float32") -> np.ndarray:
    """One autograd projection (see ``TorchDeconvnet``) -> (C, H, W) numpy."""
    ref = TorchDeconvnet(spec, params, dtype)
    ref.forward(x, upto=layer)
    return ref.project(layer, feature, image, position, rule, mode)


def captum_deconvolution(spec, params: dict, x, layer: str, feature: int, image: int = 0, position=None,
                         dtype: str = "float32") -> np.ndarray:
    """captum's ``NeuronDeconvolution`` of unit (feature, position) of ``layer`` (position default: the
    strongest of the map), times the unit's activation value -> (C, H, W) numpy."""
    import torch
    from captum.attr import NeuronDeconvolution

    model = torch_model(spec, params, dtype)
    xi = torch.from_numpy(np.ascontiguousarray(x[image:image + 1])).to(getattr(torch, dtype))
    module = dict(model.named_children())[layer]
    with torch.no_grad():
        h = xi
        for name, m in model.named_children():
            h = m(h)
            if name == layer:
                break
    act = h[0, feature]
    if act.ndim == 2:
        if position is None:
            position = divmod(torch_argmax_first(act), act.shape[1])
        selector = (int(feature), int(position[0]), int(position[1]))
        value = float(act[position[0], position[1]])
    else:
        selector = (int(feature),)
        value = float(act)
    attr = NeuronDeconvolution(model, module).attribute(xi.clone().requires_grad_(True), neuron_selector=selector)
    return (attr[0] * value).detach().numpy()
