"""Projection: equal to autograd with the deconvnet's ReLU rule, to captum, to hand-checked fixtures;
cropped == whole-map; batched == one by one; bad requests fail clearly.

References (``zfcore.reference``) are torch models of the same spec and weights: the gradient of the
chosen activation w.r.t. the input, seeded with the activation's value, every ReLU's backward replaced
by the rule; and captum's ``NeuronDeconvolution`` times the activation. Random seeded weights, random
normal images (no flat regions and so no exactly tied pooling windows).

Two comparisons per architecture:
- float64 on both sides, the reference entirely torch's own (its own switches and ReLU signs):
  agreement to ~1e-12 shows the method is computed exactly;
- float32 on both sides (the issue's criterion, relative error <= 1e-5). Independent float32 forward
  passes differ by rounding (~1e-6), so at a pooling window whose two largest inputs are that close
  (there are a few among VGG16's millions of windows) each side may pick a different switch, and a
  projection crossing it then differs at O(1). The float32 reference therefore takes zfcore's
  discrete decisions (switches, ReLU signs; ``reference.TorchDeconvnet(pinned=...)``) and computes
  everything else itself; ``test_float32_decisions_differ_only_at_ties`` checks that torch's own
  decisions differ from zfcore's only at such ties.
"""
from __future__ import annotations

import numpy as np
import pytest

from zfcore import models, network

torch = pytest.importorskip("torch")
from zfcore import reference  # noqa: E402

TOL_REF = 1e-5      # float32 projection vs torch autograd (relative, 2-norm)
TOL_64 = 1e-10      # float64 projection vs torch autograd
TOL_CROP = 1e-6     # cropped vs whole-map (relative)
TOL_TIE = 1e-5      # a float32 "tie": decision inputs this close, relative to the layer's largest input


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def close(a, b, tol) -> bool:
    """rel(a, b) <= tol, or both exactly zero (a unit whose activation is 0 projects to nothing)."""
    if not np.any(b):
        return not np.any(a)
    return rel(a, b) <= tol


def strongest_feature(net, layer, image=0):
    """The feature map (or unit) holding the layer's largest activation in ``image``."""
    a = net.activations(layer)[image]
    return int(a.reshape(a.shape[0], -1).max(axis=1).argmax()) if a.ndim == 3 else int(a.argmax())


def decisions(net) -> dict:
    """zfcore's discrete forward decisions: pool switches and ReLU input signs, by layer name."""
    out = {}
    for name, layer, cache in zip(net.trace.names, net.layers, net.trace.caches):
        if layer.kind == "maxpool":
            out[name] = cache["switches"]
        elif layer.kind == "relu":
            out[name] = cache["x"] > 0
    return out


class Case:
    """One architecture: float32 network after forward and its pinned float32 torch reference;
    float64 network and unpinned float64 reference on first use."""

    def __init__(self, spec, shape, n=1, seed=0):
        self.spec = spec
        self.net = network.build(spec, seed=seed)
        self.x = np.random.default_rng(seed + 100).standard_normal((n,) + shape).astype(np.float32)
        self.net.forward(self.x)
        self.ref = reference.TorchDeconvnet(spec, self.net.params, "float32")
        self.ref.forward(self.x, pinned=decisions(self.net))
        self._64 = None

    @property
    def f64(self):
        if self._64 is None:
            net = network.build(self.spec, params=self.net.params, dtype=np.float64)
            net.forward(self.x)
            ref = reference.TorchDeconvnet(self.spec, self.net.params, "float64")
            ref.forward(self.x.astype(np.float64))
            self._64 = (net, ref)
        return self._64

    def spatial_layers(self, kinds=("conv", "relu", "maxpool", "lrn", "adaptive_avgpool")):
        return [n for n, k, _ in self.spec if k in kinds]


def _vgg16_features():
    spec = models.vgg16_spec()
    return spec[:[n for n, _, _ in spec].index("pool5") + 1]


@pytest.fixture(scope="module")
def fmnist():
    return Case(models.FMNIST_ZF, (1, 28, 28), n=3, seed=1)


@pytest.fixture(scope="module")
def alexnet():
    return Case(models.alexnet_spec(num_classes=100), (3, 224, 224), seed=2)


@pytest.fixture(scope="module")
def zfnet():
    return Case(models.zfnet_spec(num_classes=100), (3, 224, 224), seed=3)


@pytest.fixture(scope="module")
def vgg16():
    # the 13 convs and 5 pools (the classifier plays no part in projections from these layers)
    return Case(_vgg16_features(), (3, 224, 224), seed=4)


CASES = ["fmnist", "alexnet", "zfnet"]


# --------------------------------------------------------------------------------------------------
# against autograd

@pytest.mark.parametrize("case", CASES + ["vgg16"])
def test_float32_decisions_differ_only_at_ties(case, request):
    gaps = request.getfixturevalue(case).ref.decision_gaps()
    assert gaps and all(gap <= TOL_TIE for _, gap in gaps.values()), gaps


def _check_layers(c, names, rules=("deconvnet",), image=0, full=True):
    for name in names:
        f = strongest_feature(c.net, name, image)
        pos = c.net.strongest(name, f, image)
        for rule in rules:
            rec = c.net.project(name, f, image=image, rule=rule)
            ref = c.ref.project(name, f, image=image, position=pos, rule=rule)
            assert rec.shape == c.x.shape[1:] and np.linalg.norm(ref) > 0, name
            assert rel(rec, ref) <= TOL_REF, (name, rule, rel(rec, ref))
            if full:
                assert rel(rec, c.net.project(name, f, image=image, rule=rule, crop=False)) <= TOL_CROP, name


def _check_layers_64(c, names, rules=("deconvnet",)):
    net, ref = c.f64
    for name in names:
        f = strongest_feature(net, name)
        assert ref.strongest(name, f) == net.strongest(name, f)   # both find the same activation
        for rule in rules:
            rec = net.project(name, f, rule=rule)
            assert rec.dtype == np.float64
            assert rel(rec, ref.project(name, f, rule=rule)) <= TOL_64, (name, rule)


@pytest.mark.parametrize("case", ["fmnist", "zfnet"])
def test_every_layer_matches_autograd_and_crop_matches_full(case, request):
    """Every layer of the small net and of ZFNet (overlapping 3x3/2 pools, LRN, fc layers), float32
    (and the whole-map projection equal to the cropped one) and float64."""
    c = request.getfixturevalue(case)
    _check_layers(c, c.net.layer_names, image=c.x.shape[0] - 1)
    _check_layers_64(c, c.net.layer_names if case == "fmnist" else c.net.layer_names[::2])


def test_alexnet_every_conv_pool_and_fc_layer_matches_autograd(alexnet):
    names = alexnet.spatial_layers(("conv", "maxpool", "adaptive_avgpool", "linear"))
    _check_layers(alexnet, names)
    _check_layers_64(alexnet, names[::2])


def test_vgg16_every_conv_and_pool_layer_matches_autograd(vgg16):
    names = vgg16.spatial_layers(("conv", "maxpool"))
    _check_layers(vgg16, names)
    _check_layers_64(vgg16, names[1::4])


@pytest.mark.parametrize("case", CASES)
def test_guided_and_gradient_rules_match_autograd(case, request):
    c = request.getfixturevalue(case)
    names = c.net.layer_names if case == "fmnist" else ["pool1", "conv2", "pool2", "conv5", "pool5", "fc6"]
    _check_layers(c, names, rules=("guided", "gradient"), full=case == "fmnist")
    _check_layers_64(c, names[1::3], rules=("guided", "gradient"))


def test_vgg16_rules_match_autograd(vgg16):
    names = ["pool2", "conv4_2", "pool5"]
    _check_layers(vgg16, names, rules=("guided", "gradient"), full=False)
    _check_layers_64(vgg16, names[1:2], rules=("guided", "gradient"))


def test_plain_gradient_is_torch_autograd_unmodified(fmnist):
    """rule="gradient" against torch's own backward (no custom function anywhere), float64."""
    c = fmnist
    net, _ = c.f64
    model = reference.torch_model(c.spec, c.net.params, "float64")
    x = torch.from_numpy(c.x[:1].astype(np.float64)).requires_grad_(True)
    h = x
    for name, m in model.named_children():
        h = m(h)
        if name == "conv4":
            break
    f = strongest_feature(net, "conv4")
    r, col = net.strongest("conv4", f)
    (g,) = torch.autograd.grad(h[0, f, r, col], x)
    expected = g[0].numpy() * float(h[0, f, r, col].detach())
    assert rel(net.project("conv4", f, rule="gradient"), expected) <= TOL_64


@pytest.mark.parametrize("case", ["fmnist", "zfnet"])
def test_whole_map_mode_matches_autograd(case, request):
    c = request.getfixturevalue(case)
    for name in ["conv1", "pool2", "conv5", "pool5"]:
        f = strongest_feature(c.net, name)
        for rule in ("deconvnet", "guided"):
            rec = c.net.project(name, f, mode="map", rule=rule)
            ref = c.ref.project(name, f, mode="map", rule=rule)
            assert rel(rec, ref) <= TOL_REF, (name, rule)
    # a map is the sum of its single activations only for the linear rule
    H, W = c.net.activations("conv1").shape[2:]
    if H * W <= 28 * 28:
        one = [c.net.project("conv1", 0, position=(i, j), rule="gradient") for i in range(H) for j in range(W)]
        assert rel(np.sum(one, axis=0), c.net.project("conv1", 0, mode="map", rule="gradient")) < 1e-5


# --------------------------------------------------------------------------------------------------
# against captum

@pytest.mark.parametrize("case,layers", [
    ("fmnist", ["pool1", "conv3", "pool5", "fc7"]),
    ("alexnet", ["pool2", "conv5", "pool5", "fc6"]),
    ("vgg16", ["pool3", "conv5_3"]),
])
def test_captum_neuron_deconvolution_agrees(case, layers, request):
    """captum's own hooks, its own forward (own switches): float64, so no float32 ties."""
    pytest.importorskip("captum")
    c = request.getfixturevalue(case)
    net, _ = c.f64
    for name in layers:
        f = strongest_feature(net, name)
        pos = net.strongest(name, f)
        expected = reference.captum_deconvolution(c.spec, c.net.params, c.x.astype(np.float64), name, f,
                                                  position=pos, dtype="float64")
        assert rel(net.project(name, f), expected) <= TOL_64, name


# --------------------------------------------------------------------------------------------------
# cropping and batching

def _triples(act, rng, k):
    """k (image, feature, position) triples including the four corners and random interior units."""
    N, C, H, W = act.shape
    pos = [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]
    pos += [(int(rng.integers(H)), int(rng.integers(W))) for _ in range(k - len(pos))]
    return rng.integers(N, size=k), rng.integers(C, size=k), np.array(pos[:k])


@pytest.mark.parametrize("case", CASES + ["vgg16"])
def test_batch_equals_one_by_one_and_crop_equals_full(case, request):
    c = request.getfixturevalue(case)
    rng = np.random.default_rng(7)
    names = ["pool1", "conv3", "pool5"] if case != "vgg16" else ["pool2", "conv4_3"]
    for name in names:
        imgs, feats, pos = _triples(c.net.activations(name), rng, 7 if case != "vgg16" else 5)
        batch = c.net.project_batch(name, feats, imgs, pos)
        # one chunk per item: exactly project() one by one
        one = np.stack([c.net.project(name, int(f), int(i), tuple(p)) for f, i, p in zip(feats, imgs, pos)])
        assert np.array_equal(c.net.project_batch(name, feats, imgs, pos, max_bytes=1), one)
        batch_full = c.net.project_batch(name, feats, imgs, pos, crop=False)
        one_full = c.net.project(name, int(feats[0]), int(imgs[0]), tuple(pos[0]), crop=False)
        assert close(batch_full[0], one_full, TOL_CROP)
        for k in range(len(feats)):
            assert close(batch[k], one[k], TOL_CROP), (name, k)          # shared windows
            assert close(batch[k], batch_full[k], TOL_CROP), (name, k)   # cropped == whole-map
        # the batch kept together down to the input (one window size per layer for all items), and
        # split into single items at the first layer: the same projections
        for alone, waste in [(10 ** 12, 1e9), (1, 1.0)]:
            c.net.ALONE, c.net.WASTE = alone, waste
            try:
                other = c.net.project_batch(name, feats, imgs, pos)
            finally:
                del c.net.ALONE, c.net.WASTE
            for k in range(len(feats)):
                assert close(other[k], one[k], TOL_CROP), (name, k, alone)
    # default positions in a batch are each item's strongest activation
    f = np.arange(5)
    batch = c.net.project_batch("conv3" if case != "vgg16" else "conv5_3", f)
    for k in f:
        assert close(batch[k], c.net.project("conv3" if case != "vgg16" else "conv5_3", int(k)), TOL_CROP)


def test_crop_matches_full_on_every_layer_of_every_architecture(fmnist, alexnet, zfnet, vgg16):
    """Corner and interior units of every spatial layer, rule by rule (the windows are clipped
    differently at each border)."""
    for c in (fmnist, alexnet, zfnet, vgg16):
        rng = np.random.default_rng(11)
        layers = c.spatial_layers(("conv", "maxpool", "lrn", "adaptive_avgpool"))
        if c is vgg16:
            layers = layers[::4]
        for name in layers:
            imgs, feats, pos = _triples(c.net.activations(name), rng, 5 if c is not vgg16 else 4)
            rule = ["deconvnet", "guided", "gradient"][len(name) % 3]
            crop = c.net.project_batch(name, feats, imgs, pos, rule=rule)
            full = c.net.project_batch(name, feats, imgs, pos, rule=rule, crop=False)
            for k in range(len(feats)):
                assert close(crop[k], full[k], TOL_CROP), (name, k)


def test_projection_stays_inside_the_input_box(alexnet):
    c = alexnet
    for name in ["conv2", "pool2", "conv4"]:
        for pos in [(0, 0), (5, 7)]:
            f = int(c.net.activations(name)[0, :, pos[0], pos[1]].argmax())   # an active unit
            rec = c.net.project(name, f, position=pos, rule="gradient", crop=False)
            top, left, bottom, right = c.net.input_box(name, pos)
            outside = rec.copy()
            outside[:, top:bottom + 1, left:right + 1] = 0
            assert not outside.any() and rec[:, top:bottom + 1, left:right + 1].any()


# --------------------------------------------------------------------------------------------------
# hand-checked fixtures

def test_hand_checked_conv_relu_overlapping_pool():
    """x = arange(16) as 4x4; conv 2x2 w = [[1, -1], [0, 2]]: y[i, j] = x[i, j] - x[i, j+1] + 2 x[i+1, j+1]
    = 8i + 2j + 9, i.e. [[9, 11, 13], [17, 19, 21], [25, 27, 29]]; 2x2 stride-1 max-pool (overlapping)
    -> [[19, 21], [27, 29]], switches at y's bottom-right of each window."""
    spec = [("conv", "conv", dict(in_channels=1, out_channels=1, kernel=2, stride=1, padding=0)),
            ("relu", "relu", {}), ("pool", "maxpool", dict(kernel=2, stride=1, padding=0))]
    net = network.build(spec, params={"conv.weight": np.array([[[[1, -1], [0, 2]]]], np.float32),
                                      "conv.bias": np.zeros(1, np.float32)})
    out = net.forward(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    assert np.array_equal(out[0, 0], [[19, 21], [27, 29]])
    assert np.array_equal(net.trace.caches[2]["switches"][0, 0], [[4, 5], [7, 8]])
    # strongest pool unit: 29 at (1, 1) -> switch y(2, 2) -> 29 * w placed at x[2:4, 2:4]
    assert net.strongest("pool", 0) == (1, 1)
    expected = np.zeros((4, 4))
    expected[2:, 2:] = [[29, -29], [0, 58]]
    for crop in (True, False):
        assert np.array_equal(net.project("pool", 0, crop=crop)[0], expected)
    # whole map: 19, 21, 27, 29 at y(1,1), (1,2), (2,1), (2,2), each spreading v * w
    expected = np.array([[0, 0, 0, 0], [0, 19, 21 - 19, -21], [0, 27, 38 - 27 + 29, 42 - 29], [0, 0, 54, 58]])
    assert np.array_equal(net.project("pool", 0, mode="map")[0], expected)
    # a conv unit that the pool never chose: y(0, 0) = 9 -> 9 * w at x[0:2, 0:2]
    expected = np.zeros((4, 4))
    expected[:2, :2] = [[9, -9], [0, 18]]
    assert np.array_equal(net.project("conv", 0, position=(0, 0))[0], expected)


def test_hand_checked_overlapping_switches_add_up():
    """3x3 input with its maximum in the centre: all four 2x2 stride-1 windows pick it; unpooling the
    whole map puts 4 * 9 there (PyTorch's MaxUnpool2d would keep one 9)."""
    spec = [("relu", "relu", {}), ("pool", "maxpool", dict(kernel=2, stride=1, padding=0))]
    net = network.build(spec)
    net.forward(np.array([[[[1, 2, 1], [2, 9, 2], [1, 2, 1]]]], np.float32))
    expected = np.zeros((1, 3, 3))
    expected[0, 1, 1] = 36
    assert np.array_equal(net.project("pool", 0, mode="map"), expected)
    expected[0, 1, 1] = 9
    assert np.array_equal(net.project("pool", 0, position=(1, 0)), expected)


def test_hand_checked_three_rules():
    """x = 1; conv1 (1x1, 4 maps) w = [1, -1, 1, 1], b = [0, 0, -2, 0]: forward ReLU inputs
    z = (1, -1, -1, 1); conv2 w = [2, 3, -1, -1]: out = 2*1 - 1*1 = 1. The signal below conv2 is
    s = 1 * w2 = (2, 3, -1, -1). deconvnet relu(s) = (2, 3, 0, 0) -> x: 2 - 3 = -1;
    guided relu(s) * (z > 0) = (2, 0, 0, 0) -> 2; gradient s * (z > 0) = (2, 0, 0, -1) -> 2 - 1 = 1."""
    spec = [("conv1", "conv", dict(in_channels=1, out_channels=4, kernel=1, stride=1, padding=0)),
            ("relu1", "relu", {}),
            ("conv2", "conv", dict(in_channels=4, out_channels=1, kernel=1, stride=1, padding=0))]
    params = {"conv1.weight": np.array([1, -1, 1, 1], np.float32).reshape(4, 1, 1, 1),
              "conv1.bias": np.array([0, 0, -2, 0], np.float32),
              "conv2.weight": np.array([2, 3, -1, -1], np.float32).reshape(1, 4, 1, 1),
              "conv2.bias": np.zeros(1, np.float32)}
    net = network.build(spec, params=params)
    assert net.forward(np.ones((1, 1, 1, 1), np.float32)).item() == 1
    got = {rule: net.project("conv2", 0, rule=rule).item() for rule in ("deconvnet", "guided", "gradient")}
    assert got == {"deconvnet": -1, "guided": 2, "gradient": 1}


# --------------------------------------------------------------------------------------------------
# bad requests

def test_bad_requests_raise_clear_errors():
    net = network.build(models.FMNIST_ZF)
    with pytest.raises(ValueError, match=r"call net\.forward\(x\) before projecting"):
        net.project("conv1", 0)
    net.forward(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    with pytest.raises(ValueError, match="unknown layer 'conv9'; valid layer names: conv1, relu1, pool1, conv2"):
        net.project("conv9", 0)
    with pytest.raises(ValueError, match=r"feature 32 out of range: layer 'conv1' has 32 feature maps \(0 to 31\)"):
        net.project("conv1", 32)
    with pytest.raises(ValueError, match="feature -1 out of range"):
        net.project("conv1", -1)
    with pytest.raises(ValueError, match=r"feature 10 out of range: layer 'fc7' has 10 units"):
        net.project("fc7", 10)
    with pytest.raises(ValueError, match=r"image 2 out of range: the last forward batch has 2 images \(0 to 1\)"):
        net.project("conv1", 0, image=2)
    with pytest.raises(ValueError, match=r"position \(14, 3\) out of range: layer 'pool1' maps are 14x14"):
        net.project("pool1", 0, position=(14, 3))
    with pytest.raises(ValueError, match="position does not apply"):
        net.project("fc6", 0, position=(0, 0))
    with pytest.raises(ValueError, match="position does not apply to mode='map'"):
        net.project("conv1", 0, mode="map", position=(0, 0))
    with pytest.raises(ValueError, match="unknown mode 'all'"):
        net.project("conv1", 0, mode="all")
    with pytest.raises(ValueError, match="unknown rule 'backprop'"):
        net.project("conv1", 0, rule="backprop")
    with pytest.raises(ValueError, match="one entry per item or a single one; got 3 features, 2 images"):
        net.project_batch("conv1", [0, 1, 2], images=[0, 1])
    with pytest.raises(ValueError, match="got 2 features, 1 images, 3 positions"):
        net.project_batch("conv1", [0, 1], positions=[(0, 0), (1, 1), (2, 2)])
    with pytest.raises(ValueError, match="positions must be"):
        net.project_batch("conv1", [0, 1], positions=[(0.5, 0), (1, 1)])
    # one position (or one feature) for every item
    one = net.project_batch("conv1", [0, 5], positions=(3, 4))
    assert np.array_equal(one[1], net.project("conv1", 5, position=(3, 4)))
    two = net.project_batch("conv1", 5, positions=[(3, 4), (0, 0)])
    assert two.shape == (2, 1, 28, 28) and np.array_equal(two[0], one[1])
    with pytest.raises(ValueError, match="features must be"):
        net.project_batch("conv1", [0.5])
