"""Network building, the forward record, layers, receptive fields and bad input.

Independent references: ``torch.nn.functional`` (LRN, adaptive average pooling), the PyTorch mirror of
a spec (``zfcore.torch.train.torch_model``) for forwards, and, for receptive fields, the support of an
autograd gradient in a torch model of the same geometry with positive weights and average pooling
(every path open, so the support is exactly the receptive field, clipped to the image).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from zfcore.core import layers as L
from zfcore import models
from zfcore.core import network
from zfcore.core._tuning import tuning


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


TINY = [
    ("conv1", "conv", dict(in_channels=2, out_channels=4, kernel=3, stride=1, padding=1)),
    ("relu1", "relu", {}),
    ("pool1", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("norm1", "lrn", dict(size=3, alpha=1e-2, beta=0.75, k=1.0)),
    ("conv2", "conv", dict(in_channels=4, out_channels=6, kernel=(2, 3), stride=(2, 1), padding=(0, 1))),
    ("relu2", "relu", {}),
    ("avgpool", "adaptive_avgpool", dict(output_size=(2, 3))),
    ("flatten", "flatten", {}),
    ("drop", "dropout", dict(p=0.5)),
    ("fc", "linear", dict(in_features=36, out_features=5)),
]
# 2x10x12 -conv1-> 4x10x12 -pool1 (1 + (10 + 2 - 3)//2, 1 + (12 + 2 - 3)//2)-> 4x5x6
# -conv2 (1 + (5 - 2)//2, 1 + (6 + 2 - 3)//1)-> 6x2x6 -avgpool (blocks 1x2)-> 6x2x3 -> 36 -> fc 5


def tiny_input(n=3, seed=0, shape=(2, 10, 12)):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# building

def test_build_random_weights_are_seeded_kaiming():
    net = models.build(models.FMNIST_ZF, seed=3)
    again = models.build(models.FMNIST_ZF, seed=3)
    other = models.build(models.FMNIST_ZF, seed=4)
    shapes = models.param_shapes(models.FMNIST_ZF)
    assert {k: v.shape for k, v in net.params.items()} == shapes
    for k, v in net.params.items():
        assert v.dtype == np.float32
        assert np.array_equal(v, again.params[k])
        if k.endswith(".bias"):
            assert not v.any()
        else:
            assert not np.array_equal(v, other.params[k])
            fan_in = int(np.prod(v.shape[1:]))
            # the sample std of n normals is within a few / sqrt(2n) of the true one
            assert abs(v.std() / np.sqrt(2 / fan_in) - 1) < 5 / np.sqrt(2 * v.size)
    net64 = models.build(models.FMNIST_ZF, seed=3, dtype=np.float64)
    for k, v in net64.params.items():
        assert v.dtype == np.float64 and np.array_equal(v, net.params[k].astype(np.float64))


def test_build_with_params_and_container_api():
    params = models.kaiming_params(TINY, seed=1)
    params["conv1.bias"] = np.arange(4, dtype=np.float32)
    net = models.build(TINY, params=params)
    assert net.layer_names == [n for n, _, _ in TINY]
    assert net.spec is TINY
    assert isinstance(net["conv1"], L.Conv2d) and isinstance(net["norm1"], L.LocalResponseNorm)
    assert isinstance(net["avgpool"], L.AdaptiveAvgPool2d) and isinstance(net["drop"], L.Dropout)
    assert np.array_equal(net["conv1"].bias, np.arange(4))
    assert sorted(net.params) == sorted(params)
    assert "conv2" in repr(net) and len(net) == len(TINY)


def test_build_rejects_bad_specs_and_params():
    params = models.kaiming_params(TINY)
    bad = dict(params, **{"conv1.weight": np.zeros((4, 2, 2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"conv1\.weight.*\(4, 2, 3, 3\).*\(4, 2, 2, 2\)"):
        models.build(TINY, params=bad)
    missing = {k: v for k, v in params.items() if k != "fc.bias"}
    with pytest.raises(ValueError, match="fc.bias"):
        models.build(TINY, params=missing)
    with pytest.raises(ValueError, match="unknown kind 'softplus'"):
        models.build([("a", "softplus", {})])
    with pytest.raises(ValueError, match="duplicate layer names: r"):
        models.build([("r", "relu", {}), ("r", "relu", {})])
    with pytest.raises(ValueError, match="float32 or float64"):
        models.build(TINY, dtype=np.float16)


# --------------------------------------------------------------------------------------------------
# forward and its record

def test_forward_record_matches_torch():
    torch = pytest.importorskip("torch")
    from zfcore.torch.reference import torch_model

    params = models.kaiming_params(TINY, seed=2)
    for k in params:
        if k.endswith(".bias"):  # non-zero biases, so that a bias mix-up would show
            params[k] = np.random.default_rng(5).standard_normal(params[k].shape).astype(np.float32) * 0.1
    net = models.build(TINY, params=params)
    x = tiny_input()
    t = net.forward(x)
    y = t.output
    with torch.no_grad():
        ref = torch_model(TINY, params)(torch.from_numpy(x)).numpy()
    assert y.shape == (3, 5) and rel(y, ref) < 1e-6 and rel(net(x), ref) < 1e-6
    assert t.names == net.layer_names and len(t) == len(TINY)
    assert t.input_shapes[0] == x.shape and t.input is not None
    assert [s[1:] for s in t.input_shapes] == [
        (2, 10, 12), (4, 10, 12), (4, 10, 12), (4, 5, 6), (4, 5, 6), (6, 2, 6), (6, 2, 6), (6, 2, 3),
        (36,), (36,)]
    assert t["pool1"].shape == (3, 4, 5, 6)
    sw = t.caches[net.index("pool1")]["switches"]
    assert sw.shape == (3, 4, 5, 6) and sw.dtype == np.int64
    assert t.caches[net.index("relu1")]["x"] is t.outputs[0]       # the ReLU input, not a copy
    assert np.array_equal(t.activations("fc"), y) and t["fc"] is y


def test_forward_upto_stops_early_and_bad_input():
    net = models.build(models.FMNIST_ZF)
    x = np.zeros((2, 1, 28, 28), np.float32)
    rec = net.forward(x, upto="pool2")
    assert rec.output.shape == (2, 64, 7, 7) and rec.names[-1] == "pool2"
    with pytest.raises(ValueError, match="'conv3' is not in this record"):
        rec.project("conv3", 0)
    with pytest.raises(ValueError, match="layers: conv1, relu1, pool1"):
        net.forward(x, upto="conv9")
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\)"):
        net.forward(np.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match="channel mismatch"):
        net.forward(np.zeros((1, 3, 28, 28)))
    with pytest.raises(ValueError, match="empty"):
        net.forward(np.zeros((0, 1, 28, 28)))
    net64 = models.build(models.FMNIST_ZF, dtype=np.float64)
    assert net64.forward(x.astype(np.float32)).output.dtype == np.float64


@pytest.mark.parametrize("nhwc", [None, True, False])
def test_infer_matches_torch_keeps_layers_and_touches_nothing(nhwc):
    """Inference without a trace (no switches, in-place ReLUs on its own scratch arrays): the same
    logits and kept activations as the PyTorch mirror; the input, the kept arrays and an earlier
    record are left alone. With the channels-last convs and pools by the rule (None: TINY's convs have
    too few channels), everywhere (True: back to NCHW before the LRN, the average pool and at the
    end) and nowhere."""
    with tuning(nhwc=nhwc):
        _infer_case()


def _infer_case():
    torch = pytest.importorskip("torch")
    from zfcore.torch.reference import torch_model

    params = models.kaiming_params(TINY, seed=3)
    net = models.build(TINY, params=params)
    x = tiny_input(4, seed=1)
    x_copy = x.copy()
    before = net.forward(tiny_input(1, seed=9))
    kept_before = [o.copy() for o in before.outputs]
    keep = ["conv1", "pool1", "relu2", "fc"]
    y, kept = net.infer(x, keep=keep)
    tm = torch_model(TINY, params).eval()
    acts = {}
    for name, module in tm.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, o.detach().numpy().copy()))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert rel(y, ref) < 1e-6 and sorted(kept) == sorted(keep)
    for name in keep:
        assert rel(kept[name], acts[name]) < 1e-6, name
    assert (kept["conv1"] < 0).any()        # relu1 did not rectify the kept conv1 output in place
    np.testing.assert_array_equal(x, x_copy)
    assert all(np.array_equal(a, b) for a, b in zip(before.outputs, kept_before))
    out, kept = net.infer(x, upto="pool1", keep="conv1")
    assert out.shape == (4, 4, 5, 6) and list(kept) == ["conv1"]
    assert rel(out, acts["pool1"]) < 1e-6       # relu1 + pool1 run as pool then relu: same values
    _, kept = net.infer(x, upto="pool1", keep=["relu1", "pool1"])   # a kept ReLU runs in its place
    assert rel(kept["relu1"], acts["relu1"]) < 1e-6 and rel(kept["pool1"], acts["pool1"]) < 1e-6
    out, _ = net.infer(x, upto="relu1")
    assert rel(out, acts["relu1"]) < 1e-6
    with pytest.raises(ValueError, match="comes after upto"):
        net.infer(x, upto="pool1", keep=["fc"])
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        net.infer(x, keep=["conv9"])
    with pytest.raises(ValueError, match="empty"):
        net.infer(np.zeros((0, 2, 10, 12), np.float32))


# --------------------------------------------------------------------------------------------------
# layers

@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_local_response_norm_matches_torch(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(size).standard_normal((2, 7, 4, 5))
    for alpha, beta, k in [(1e-4, 0.75, 2.0), (0.3, 0.5, 1.0)]:
        ref = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha, beta, k).numpy()
        layer = L.LocalResponseNorm("n", size, alpha, beta, k)
        y, _ = layer.forward(x)
        assert np.abs(y - ref).max() <= 1e-12 * np.abs(ref).max()
        y32, _ = layer.forward(x.astype(np.float32))
        assert y32.dtype == np.float32 and rel(y32, ref) < 1e-6
        r = np.random.default_rng(1).standard_normal(y.shape)
        assert layer.inverse(r, {}) is r        # passed through by the deconvnet, every rule
        assert layer.inverse(r, {}, "gradient") is r


@pytest.mark.parametrize("in_hw,out", [((6, 6), 6), ((6, 8), (3, 2)), ((4, 6), (None, 3)), ((7, 7), 1)])
def test_adaptive_avgpool_matches_torch_and_its_inverse_is_the_adjoint(in_hw, out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3) + in_hw)
    layer = L.AdaptiveAvgPool2d("avg", out)
    y, cache = layer.forward(x)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out).numpy()
    assert y.shape == ref.shape and np.abs(y - ref).max() < 1e-12
    r = np.random.default_rng(1).standard_normal(y.shape)
    back = layer.inverse(r, cache)
    assert back.shape == x.shape
    assert abs(np.vdot(y, r) - np.vdot(x, back)) < 1e-10 * abs(np.vdot(y, r))   # <Ax, r> = <x, A^T r>
    assert layer.output_shape((3,) + in_hw) == y.shape[1:]


def test_adaptive_avgpool_rejects_uneven_sizes():
    with pytest.raises(ValueError, match="5x5 map to 2x2"):
        L.AdaptiveAvgPool2d("avg", 2).forward(np.zeros((1, 1, 5, 5)))


def test_relu_inverse_rules_by_hand():
    x = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    r = np.array([[3.0, -3.0, 5.0, 4.0, -4.0]])
    layer = L.ReLU("r")
    y, cache = layer.forward(x)
    assert np.array_equal(y, [[0, 0, 0, 1, 2]])
    assert np.array_equal(layer.inverse(r, cache, "deconvnet"), [[3, 0, 5, 4, 0]])
    assert np.array_equal(layer.inverse(r, cache, "guided"), [[0, 0, 0, 4, 0]])
    assert np.array_equal(layer.inverse(r, cache, "gradient"), [[0, 0, 0, 4, -4]])
    with pytest.raises(ValueError, match="unknown rule 'zeiler'.*'deconvnet', 'guided', 'gradient'"):
        layer.inverse(r, cache, "zeiler")


def test_conv_and_pool_inverses_use_the_recorded_cache():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    conv = L.Conv2d("c", rng.standard_normal((4, 3, 3, 3)).astype(np.float32), np.ones(4, np.float32), 2, 1)
    y, cache = conv.forward(x)
    r = rng.standard_normal(y.shape).astype(np.float32)
    back = conv.inverse(r, cache)
    assert back.shape == x.shape              # exact input size, although 9 and 8 give the same output
    # adjoint of the linear part (no bias): <conv(x) - b, r> = <x, inverse(r)>
    assert abs(np.vdot(y - 1, r) - np.vdot(x, back)) < 1e-4 * np.abs(y * r).sum()
    pool = L.MaxPool2d("p", 3, 2, 1)
    yp, cp = pool.forward(x)
    # values go back exactly to the recorded switches (not recomputed): corrupt the input afterwards
    x[...] = 0
    back = pool.inverse(np.ones_like(yp), cp)
    assert back.sum() == yp.size and back.shape == x.shape


# --------------------------------------------------------------------------------------------------
# receptive fields

def test_receptive_fields_known_values():
    vgg = models.build(models.vgg16_spec()[:31], seed=0)  # conv1_1 .. pool5, no classifier weights
    rf = vgg.receptive_fields(input_size=(224, 224))
    assert rf["conv1_1"] == ((3, 3), (1, 1), (-1, -1))
    assert rf["conv1_2"] == ((5, 5), (1, 1), (-2, -2))
    assert rf["pool1"] == ((6, 6), (2, 2), (-2, -2))
    assert rf["conv5_3"].size == (196, 196) and rf["conv5_3"].jump == (16, 16)
    assert rf["pool5"].size == (212, 212) and rf["pool5"].jump == (32, 32)
    alex = models.build(models.alexnet_spec()[:13], seed=0)
    rf = alex.receptive_fields(input_size=(3, 224, 224))
    assert rf["conv1"] == ((11, 11), (4, 4), (-2, -2))
    assert rf["pool5"].size == (195, 195) and rf["pool5"].jump == (32, 32)
    assert set(rf) == set(alex.layer_names)
    fm = models.build(models.FMNIST_ZF)
    assert fm.receptive_field("pool5", input_size=(28, 28)) == ((51, 51), (8, 8), (-25, -25))
    with pytest.raises(ValueError, match="'fc6' is not spatial"):
        fm.receptive_field("fc6", input_size=(28, 28))
    assert fm.receptive_field("pool5") == fm.receptive_field("pool5", input_size=(28, 28))  # its own input
    part = models.build(models.FMNIST_ZF[:5])                    # a spec of its own: no input shape known
    with pytest.raises(ValueError, match="no input size"):
        part.receptive_field("conv1")


def _geometry_twin(spec, channels=1):
    """A torch model with the geometry of ``spec``'s spatial part: convs of ``channels`` channels and
    positive weights 1/fan_in, average pools with the max-pools' windows, no ReLU/LRN; float64."""
    import torch.nn as nn

    mods, cin = [], None
    for name, kind, p in spec:
        if kind == "conv":
            cin = p["in_channels"] if cin is None else channels
            conv = nn.Conv2d(cin, channels, p["kernel"], p["stride"], p["padding"], bias=False).double()
            nn.init.constant_(conv.weight, 1.0 / conv.weight[0].numel())
            mods.append((name, conv))
        elif kind == "maxpool":
            mods.append((name, nn.AvgPool2d(p["kernel"], p["stride"], p["padding"], count_include_pad=True)))
        elif kind in ("flatten", "linear", "adaptive_avgpool"):
            break
        else:
            mods.append((name, nn.Identity()))
    return mods


@pytest.mark.parametrize("arch,size", [("vgg16", 224), ("alexnet", 224), ("zfnet", 224), ("fmnist_zf", 28)])
def test_input_box_is_the_support_of_the_gradient(arch, size):
    torch = pytest.importorskip("torch")
    spec = models.get_spec(arch)
    net = models.build(spec, seed=0) if arch == "fmnist_zf" else None
    mods = _geometry_twin(spec)
    cin = spec[0][2]["in_channels"]
    shapes_net = network.Network([L.from_spec(n, k, p, models.kaiming_params([(n, k, p)]))
                                  for n, k, p in spec[:len(mods)]])
    x = torch.rand((1, cin, size, size), dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    h, outs = x, {}
    for name, m in mods:
        h = m(h)
        outs[name] = h
    rng = np.random.default_rng(0)
    for name, _ in mods:
        if not isinstance(dict(mods)[name], (torch.nn.Conv2d, torch.nn.AvgPool2d)):
            continue
        H, W = outs[name].shape[2:]
        for r, c in [(0, 0), (H - 1, W - 1), (int(rng.integers(H)), int(rng.integers(W)))]:
            (g,) = torch.autograd.grad(outs[name][0, 0, r, c], x, retain_graph=True)
            rows = np.flatnonzero(g[0].abs().sum(dim=(0, 2)).numpy() > 0)
            cols = np.flatnonzero(g[0].abs().sum(dim=(0, 1)).numpy() > 0)
            box = shapes_net.input_box(name, (r, c), input_size=(cin, size, size))
            assert box == (rows[0], cols[0], rows[-1], cols[-1]), (name, r, c)
    if net is not None:
        assert net.input_box("fc6", input_size=(28, 28)) == (0, 0, 27, 27)


def test_input_box_bad_position():
    net = models.build(models.FMNIST_ZF)
    with pytest.raises(ValueError, match=r"position \(14, 0\) out of range: layer 'pool1' maps are 14x14"):
        net.input_box("pool1", (14, 0), input_size=(28, 28))
    rec = net.forward(np.zeros((1, 1, 28, 28), np.float32))
    assert rec.input_box("pool1", (0, 0)) == (0, 0, 3, 3)        # rf 7, offset -3, clipped
    assert rec.input_box("conv1", (27, 27)) == (25, 25, 27, 27)


# --------------------------------------------------------------------------------------------------
# packaging

def test_core_modules_do_not_import_torch():
    code = ("import sys, numpy as np; import zfcore.core.projection, zfcore.core.windows, zfcore.core.layers, zfcore.core.network; "
            "import zfcore.torch.reference; "
            "from zfcore import models; net = models.build(models.FMNIST_ZF); "
            "net.forward(np.zeros((1, 1, 28, 28), np.float32)).project('conv5', 0); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
