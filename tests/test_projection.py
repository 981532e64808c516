"""Projection without torch: cropped == whole-map on every architecture, batched == one by one,
the signal stays inside the receptive field's box, hand-checked fixtures, clear errors for bad
requests. (Agreement with autograd and captum: test_projection_torch.py.)

Random seeded weights, random normal images (no flat regions and so no exactly tied pooling windows);
the networks come from conftest.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from projcases import CASES, TOL_CROP, close, triples as _triples

from zfcore import models
from zfcore.core import network, projection


# --------------------------------------------------------------------------------------------------
# cropping and batching

@pytest.mark.parametrize("case", CASES + [pytest.param("vgg16", marks=pytest.mark.slow)])
def test_batch_equals_one_by_one_and_crop_equals_full(case, request):
    c = request.getfixturevalue(case + "_net")
    rng = np.random.default_rng(7)
    names = ["pool1", "conv3", "pool5"] if case != "vgg16" else ["pool2", "conv4_3"]
    for name in names:
        imgs, feats, pos = _triples(c.rec.activations(name), rng, 7 if case != "vgg16" else 5)
        batch = c.rec.project_batch(name, feats, imgs, pos)
        # one chunk per item: exactly project() one by one
        one = np.stack([c.rec.project(name, int(f), int(i), tuple(p)) for f, i, p in zip(feats, imgs, pos)])
        assert np.array_equal(c.rec.project_batch(name, feats, imgs, pos, max_bytes=1), one)
        batch_full = c.rec.project_batch(name, feats, imgs, pos, crop=False)
        one_full = c.rec.project(name, int(feats[0]), int(imgs[0]), tuple(pos[0]), crop=False)
        assert close(batch_full[0], one_full, TOL_CROP)
        for k in range(len(feats)):
            assert close(batch[k], one[k], TOL_CROP), (name, k)          # shared windows
            assert close(batch[k], batch_full[k], TOL_CROP), (name, k)   # cropped == whole-map
        # the batch kept together down to the input (one window size per layer for all items), and
        # split into single items at the first layer: the same projections
        for alone, waste in [(10 ** 12, 1e9), (1, 1.0)]:
            other = projection.project_batch(c.rec, name, feats, imgs, pos, alone=alone, waste=waste)
            for k in range(len(feats)):
                assert close(other[k], one[k], TOL_CROP), (name, k, alone)
    # default positions in a batch are each item's strongest activation
    f = np.arange(5)
    batch = c.rec.project_batch("conv3" if case != "vgg16" else "conv5_3", f)
    for k in f:
        assert close(batch[k], c.rec.project("conv3" if case != "vgg16" else "conv5_3", int(k)), TOL_CROP)


@pytest.mark.slow
def test_crop_matches_full_on_every_layer_of_every_architecture(fmnist_net, alexnet_net, zfnet_net, vgg16_net):
    """Corner and interior units of every spatial layer, rule by rule (the windows are clipped
    differently at each border)."""
    vgg16 = vgg16_net
    for c in (fmnist_net, alexnet_net, zfnet_net, vgg16_net):
        rng = np.random.default_rng(11)
        layers = c.spatial_layers(("conv", "maxpool", "lrn", "adaptive_avgpool"))
        if c is vgg16:
            layers = layers[::4]
        for name in layers:
            imgs, feats, pos = _triples(c.rec.activations(name), rng, 5 if c is not vgg16 else 4)
            rule = ["deconvnet", "guided", "gradient"][len(name) % 3]
            crop = c.rec.project_batch(name, feats, imgs, pos, rule=rule)
            full = c.rec.project_batch(name, feats, imgs, pos, rule=rule, crop=False)
            for k in range(len(feats)):
                assert close(crop[k], full[k], TOL_CROP), (name, k)


def test_projection_stays_inside_the_input_box(alexnet_net):
    c = alexnet_net
    for name in ["conv2", "pool2", "conv4"]:
        for pos in [(0, 0), (5, 7)]:
            f = int(c.rec.activations(name)[0, :, pos[0], pos[1]].argmax())   # an active unit
            rec = c.rec.project(name, f, position=pos, rule="gradient", crop=False)
            top, left, bottom, right = c.rec.input_box(name, pos)
            outside = rec.copy()
            outside[:, top:bottom + 1, left:right + 1] = 0
            assert not outside.any() and rec[:, top:bottom + 1, left:right + 1].any()


def test_receptive_field_box_by_hand():
    """size 5, jump 2, offset -2 (two 3x3 stride-1 convs... then a stride-2 pool, say): unit (3, 1)
    sees rows -2 + 6 .. +4 = 4..8 and columns 0..4; clipped to a 6x6 image: rows 4..5."""
    rf = network.ReceptiveField((5, 5), (2, 2), (-2, -2))
    assert rf.box(3, 1) == (4, 0, 8, 4)
    assert rf.box(3, 1, clip=(6, 6)) == (4, 0, 5, 4)
    assert rf.box(0, 0, clip=(6, 6)) == (0, 0, 2, 2)


# --------------------------------------------------------------------------------------------------
# hand-checked fixtures

def test_hand_checked_conv_relu_overlapping_pool():
    """x = arange(16) as 4x4; conv 2x2 w = [[1, -1], [0, 2]]: y[i, j] = x[i, j] - x[i, j+1] + 2 x[i+1, j+1]
    = 8i + 2j + 9, i.e. [[9, 11, 13], [17, 19, 21], [25, 27, 29]]; 2x2 stride-1 max-pool (overlapping)
    -> [[19, 21], [27, 29]], switches at y's bottom-right of each window."""
    spec = [("conv", "conv", dict(in_channels=1, out_channels=1, kernel=2, stride=1, padding=0)),
            ("relu", "relu", {}), ("pool", "maxpool", dict(kernel=2, stride=1, padding=0))]
    net = models.build(spec, params={"conv.weight": np.array([[[[1, -1], [0, 2]]]], np.float32),
                                      "conv.bias": np.zeros(1, np.float32)})
    rec = net.forward(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    assert np.array_equal(rec.output[0, 0], [[19, 21], [27, 29]])
    assert np.array_equal(rec.caches[2]["switches"][0, 0], [[4, 5], [7, 8]])
    # strongest pool unit: 29 at (1, 1) -> switch y(2, 2) -> 29 * w placed at x[2:4, 2:4]
    assert rec.strongest("pool", 0) == (1, 1)
    expected = np.zeros((4, 4))
    expected[2:, 2:] = [[29, -29], [0, 58]]
    for crop in (True, False):
        assert np.array_equal(rec.project("pool", 0, crop=crop)[0], expected)
    # whole map: 19, 21, 27, 29 at y(1,1), (1,2), (2,1), (2,2), each spreading v * w
    expected = np.array([[0, 0, 0, 0], [0, 19, 21 - 19, -21], [0, 27, 38 - 27 + 29, 42 - 29], [0, 0, 54, 58]])
    assert np.array_equal(rec.project("pool", 0, mode="map")[0], expected)
    # a conv unit that the pool never chose: y(0, 0) = 9 -> 9 * w at x[0:2, 0:2]
    expected = np.zeros((4, 4))
    expected[:2, :2] = [[9, -9], [0, 18]]
    assert np.array_equal(rec.project("conv", 0, position=(0, 0))[0], expected)


def test_hand_checked_overlapping_switches_add_up():
    """3x3 input with its maximum in the centre: all four 2x2 stride-1 windows pick it; unpooling the
    whole map puts 4 * 9 there (PyTorch's MaxUnpool2d would keep one 9)."""
    spec = [("relu", "relu", {}), ("pool", "maxpool", dict(kernel=2, stride=1, padding=0))]
    net = models.build(spec)
    rec = net.forward(np.array([[[[1, 2, 1], [2, 9, 2], [1, 2, 1]]]], np.float32))
    expected = np.zeros((1, 3, 3))
    expected[0, 1, 1] = 36
    assert np.array_equal(rec.project("pool", 0, mode="map"), expected)
    expected[0, 1, 1] = 9
    assert np.array_equal(rec.project("pool", 0, position=(1, 0)), expected)


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
    net = models.build(spec, params=params)
    rec = net.forward(np.ones((1, 1, 1, 1), np.float32))
    assert rec.output.item() == 1
    got = {rule: rec.project("conv2", 0, rule=rule).item() for rule in ("deconvnet", "guided", "gradient")}
    assert got == {"deconvnet": -1, "guided": 2, "gradient": 1}


# --------------------------------------------------------------------------------------------------
# bad requests

def test_bad_requests_raise_clear_errors():
    net = models.build(models.FMNIST_ZF)
    assert not hasattr(net, "project")                  # projections are asked of a forward pass's record
    rec = net.forward(np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32))
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'; did you mean .*\(layers: conv1, relu1, pool1, conv2"):
        rec.project("conv9", 0)
    with pytest.raises(ValueError, match=r"feature of layer 'conv1' 32 out of range 0\.\.31"):
        rec.project("conv1", 32)
    with pytest.raises(ValueError, match="feature of layer 'conv1' -1 out of range"):
        rec.project("conv1", -1)
    with pytest.raises(ValueError, match=r"feature of layer 'fc7' 10 out of range 0\.\.9"):
        rec.project("fc7", 10)
    with pytest.raises(ValueError, match=r"image 2 out of range 0\.\.1"):
        rec.project("conv1", 0, image=2)
    with pytest.raises(ValueError, match=r"position \(14, 3\) out of range: layer 'pool1' maps are 14x14"):
        rec.project("pool1", 0, position=(14, 3))
    with pytest.raises(ValueError, match="position does not apply"):
        rec.project("fc6", 0, position=(0, 0))
    with pytest.raises(ValueError, match="position does not apply to mode='map'"):
        rec.project("conv1", 0, mode="map", position=(0, 0))
    with pytest.raises(ValueError, match="unknown mode 'all'"):
        rec.project("conv1", 0, mode="all")
    with pytest.raises(ValueError, match="unknown rule 'backprop'"):
        rec.project("conv1", 0, rule="backprop")
    with pytest.raises(ValueError, match="one entry per item or a single one; got 3 features, 2 images"):
        rec.project_batch("conv1", [0, 1, 2], images=[0, 1])
    with pytest.raises(ValueError, match="got 2 features, 1 images, 3 positions"):
        rec.project_batch("conv1", [0, 1], positions=[(0, 0), (1, 1), (2, 2)])
    with pytest.raises(ValueError, match="positions must be"):
        rec.project_batch("conv1", [0, 1], positions=[(0.5, 0), (1, 1)])
    # one position (or one feature) for every item
    one = rec.project_batch("conv1", [0, 5], positions=(3, 4))
    assert np.array_equal(one[1], rec.project("conv1", 5, position=(3, 4)))
    two = rec.project_batch("conv1", 5, positions=[(3, 4), (0, 0)])
    assert two.shape == (2, 1, 28, 28) and np.array_equal(two[0], one[1])
    with pytest.raises(ValueError, match="features must be"):
        rec.project_batch("conv1", [0.5])
