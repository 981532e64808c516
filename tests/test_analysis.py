"""Analyses: confusion matrices by hand, top-k's boxes and patches against input_box and the image,
features during training against each network's own record (numpy only); top-k, a record's map maxima
and strongest features, and occlusion against PyTorch computations (skipped without torch)."""
import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.models import kaiming_params


def test_confusion_matrix_hand_checked():
    cm = analysis.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    np.testing.assert_allclose(analysis.per_class_accuracy(cm), [0.5, 1.0, 2 / 3])
    assert analysis.most_confused_pairs(cm, 2) == [(2, 0, 1), (0, 1, 1)]
    with pytest.raises(ValueError, match="outside 0..2"):
        analysis.confusion_matrix([0, 3], [0, 1], 3)


@pytest.fixture(scope="module")
def numpy_setup():
    x, y = data.load_dataset("test", limit=64)
    params = kaiming_params(models.FMNIST_ZF, seed=3)
    net = models.build_model("fmnist_zf", weights=params)
    return x, y, params, net


@pytest.fixture(scope="module")
def setup(numpy_setup):
    pytest.importorskip("torch")
    from zfcore.torch import reference
    x, y, params, net = numpy_setup
    return x, y, params, net, reference.torch_model(models.FMNIST_ZF, params)


def test_top_k_boxes_and_patches(numpy_setup):
    """Every box equals net.input_box of its unit; every patch holds the image under its box, placed
    where the (unclipped) receptive field starts, and zeros elsewhere."""
    x, _, _, net = numpy_setup
    t = analysis.top_k(net, x[:12], "conv3", k=3, features=[0, 7], batch_size=6)
    rf = net.receptive_field("conv3")
    for idx in np.ndindex(t.images.shape):
        r, c = (int(v) for v in t.positions[idx])
        top, left, bottom, right = t.boxes[idx]
        assert (top, left, bottom, right) == net.input_box("conv3", (r, c))
        t0, l0 = rf.offset[0] + r * rf.jump[0], rf.offset[1] + c * rf.jump[1]
        patch = t.patches[idx].copy()
        np.testing.assert_array_equal(patch[:, top - t0:bottom - t0 + 1, left - l0:right - l0 + 1],
                                      x[t.images[idx]][:, top:bottom + 1, left:right + 1])
        patch[:, top - t0:bottom - t0 + 1, left - l0:right - l0 + 1] = 0
        assert not patch.any()


def _torch_acts(tm, x, upto):
    import torch
    h = torch.from_numpy(x)
    with torch.no_grad():
        for name, m in tm.named_children():
            h = m(h)
            if name == upto:
                return h.numpy()


def test_predict_matches_torch(setup):
    import torch
    x, _, _, net, tm = setup
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(analysis.predict(net, x, batch_size=20), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_top_k_against_torch_activations(setup):
    x, _, params, net, tm = setup
    feats = [0, 5, 77]
    t = analysis.top_k(net, x, "conv5", k=4, features=feats, batch_size=25)
    act = _torch_acts(tm, x, "conv5")                                  # (64, 128, 7, 7)
    maxima = act.reshape(64, 128, -1).max(2)
    for i, f in enumerate(feats):
        order = np.argsort(-maxima[:, f], kind="stable")[:4]
        assert t.images[i].tolist() == order.tolist()
        np.testing.assert_allclose(t.values[i], maxima[order, f], rtol=1e-5)
        r, c = t.positions[i, 0]
        assert act[order[0], f, r, c] == act[order[0], f].max()
    # the first projection equals the autograd deconvnet reference of that image and activation
    from zfcore.torch import reference
    ref = reference.deconvnet_reference(models.FMNIST_ZF, params, x[t.images[1, 0]][None], "conv5",
                                        feature=5, position=tuple(t.positions[1, 0]))
    err = np.abs(t.projections[1, 0] - ref).max() / np.abs(ref).max()
    assert err < 1e-4
    # patches are the image under the receptive-field box
    top, left, bottom, right = t.boxes[2, 0]
    img = x[t.images[2, 0]]
    rf = net.receptive_field("conv5")
    r, c = t.positions[2, 0]
    t0, l0 = rf.offset[0] + r * rf.jump[0], rf.offset[1] + c * rf.jump[1]
    np.testing.assert_array_equal(t.patches[2, 0][:, top - t0:bottom - t0 + 1, left - l0:right - l0 + 1],
                                  img[:, top:bottom + 1, left:right + 1])


def test_record_maxima_and_top_features_against_torch(setup):
    """Record.map_maxima is each map's maximum in the PyTorch activations; Record.top_features the
    strongest maps of one image, strongest first."""
    x, _, _, net, tm = setup
    act = _torch_acts(tm, x[:8], "conv5")
    maxima = act.reshape(8, 128, -1).max(2)
    rec = net.forward(x[:8], upto="conv5")
    np.testing.assert_allclose(rec.map_maxima("conv5"), maxima, rtol=1e-5, atol=1e-6)
    feats, vals = rec.top_features("conv5", image=3, k=3)
    assert feats.tolist() == np.argsort(-maxima[3], kind="stable")[:3].tolist()
    np.testing.assert_allclose(vals, maxima[3, feats], rtol=1e-5)


def test_feature_evolution_takes_each_networks_strongest_image(numpy_setup):
    """For each network, each feature's strongest image over the set (the first on ties), its maximum
    and that activation's projection, from each network's own forward record of all the images."""
    x, _, _, net = numpy_setup
    nets = [net, models.build_model("fmnist_zf", weights=kaiming_params(models.FMNIST_ZF, seed=4))]
    feats = [0, 5, 31]
    projs, vals, idxs = analysis.feature_evolution(nets, x[:20], "conv2", feats, batch_size=8)
    assert projs.shape == (2, 3, 1, 28, 28) and vals.shape == idxs.shape == (2, 3)
    for n, nt in enumerate(nets):
        rec = nt.forward(x[:20], upto="conv2")
        m = rec.map_maxima("conv2")
        for j, f in enumerate(feats):
            i = int(np.argmax(m[:, f]))
            assert idxs[n, j] == i
            np.testing.assert_allclose(vals[n, j], m[i, f], rtol=1e-6)
            ref = rec.project("conv2", f, image=i)
            np.testing.assert_allclose(projs[n, j], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_occlusion_against_torch(setup):
    import torch
    x, y, _, net, tm = setup
    occ = analysis.occlusion(net, x[0], int(y[0]), size=7, stride=3, layer="conv5", feature=2)
    assert occ.rows.tolist() == [0, 3, 6, 9, 12, 15, 18, 21] and occ.rows[-1] + 7 == 28
    i, j = 2, 5
    img = x[0].copy()
    img[:, occ.rows[i]:occ.rows[i] + 7, occ.cols[j]:occ.cols[j] + 7] = 0
    with torch.no_grad():
        p = torch.softmax(tm(torch.from_numpy(img[None])), 1)[0].numpy()
    assert abs(occ.prob[i, j] - p[y[0]]) < 1e-5 and occ.predicted[i, j] == p.argmax()
    a = _torch_acts(tm, img[None], "conv5")[0, 2].sum()
    assert abs(occ.feature_activity[i, j] - a) <= 1e-4 * abs(a)


def test_bad_input(numpy_setup):
    x, _, _, net = numpy_setup
    with pytest.raises(ValueError, match="features must be distinct integers in 0..127"):
        analysis.top_k(net, x[:4], "conv5", k=2, features=[128])
    with pytest.raises(ValueError, match="k must be in 1..4"):
        analysis.top_k(net, x[:4], "conv5", k=5)
    with pytest.raises(ValueError, match="not spatial"):
        analysis.top_k(net, x[:4], "fc6", k=1)
    with pytest.raises(ValueError, match="occluder size"):
        analysis.occlusion(net, x[0], 0, size=40)


def test_weight_settling_by_hand():
    """Cosines against the last network's weights, worked out by hand on 2-element filters."""
    class N:
        def __init__(self, w):
            self.params = {"c.weight": np.asarray(w, np.float32)}

    nets = [N([1.0, 0.0]), N([1.0, 1.0]), N([0.0, 2.0])]
    cos, first = analysis.weight_settling(nets, ["c"], threshold=0.7)
    assert np.allclose(cos["c"], [0.0, 1 / np.sqrt(2), 1.0])
    assert first["c"] == 1          # 0.707 >= 0.7 first at the second network
    assert analysis.weight_settling(nets, ["c"], threshold=0.99)[1]["c"] == 2
