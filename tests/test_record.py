"""The record of a forward pass is a value: what a user's own pass projects does not depend on anything
run through the same network afterwards (analyses over other images, other layers, threads), and the one
deconvnet walk (``Record.backward``) is the projection on whole maps."""
import threading

import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.analysis import explain, studies


@pytest.fixture(scope="module")
def net():
    return models.load_model()


@pytest.fixture(scope="module")
def images():
    x, y = data.load_dataset("test", limit=40)
    return x, y


def _snapshot(rec):
    return [o.copy() for o in rec.outputs], [{k: v.copy() for k, v in c.items() if isinstance(v, np.ndarray)}
                                             for c in rec.caches]


def test_analysis_calls_between_a_pass_and_its_projection_change_nothing(net, images):
    x, y = images
    rec = net.forward(x[:2])
    f = int(rec.top_features("conv5", image=1)[0][0])
    before = rec.project("conv5", f, image=1)
    before_map = rec.project("conv3", 3, image=0, mode="map")
    outputs, caches = _snapshot(rec)
    # everything that runs the same network on other images, up to other layers
    analysis.top_k(net, x[10:30], "conv3", k=2, features=[0, 1])
    analysis.top_k(net, x[10:30], ["conv1", "conv5"], k=2, features=[0])
    analysis.predict(net, x[20:40])
    analysis.occlusion(net, x[5], int(y[5]), size=8, stride=8, layer="conv2", feature=1)
    studies.deconv_stages(net, x[7], "pool5", 3)
    explain.activation_times_gradient(net, x[8:10], "relu5", 2)
    net.forward(x[30:33], upto="pool1")                 # a pass that stops early
    assert np.array_equal(rec.project("conv5", f, image=1), before)
    assert np.array_equal(rec.project("conv3", 3, image=0, mode="map"), before_map)
    assert all(np.array_equal(a, b) for a, b in zip(rec.outputs, outputs))
    for c, saved in zip(rec.caches, caches):
        assert all(np.array_equal(c[k], v) for k, v in saved.items())


def test_two_records_of_one_network_are_independent(net, images):
    x, _ = images
    a = net.forward(x[:1])
    b = net.forward(x[1:2], upto="conv3")
    assert a.names[-1] == "fc7" and b.names[-1] == "conv3"
    assert not np.array_equal(a["conv3"], b["conv3"])
    assert np.array_equal(a.project("conv3", 0), net.forward(x[:1]).project("conv3", 0))
    with pytest.raises(ValueError, match="'conv5' is not in this record"):
        b.project("conv5", 0)


def test_threads_share_one_network(net, images):
    """Threads run forward passes on the same network object at once, each projecting from its own
    record: the results equal those of one thread."""
    x, _ = images
    expected = [net.forward(x[i:i + 1]).project("conv4", i % 5) for i in range(8)]
    got = [None] * 8

    def work(i):
        got[i] = net.forward(x[i:i + 1]).project("conv4", i % 5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * np.abs(e).max())


def test_backward_from_one_activation_is_the_whole_map_projection(net, images):
    x, _ = images
    rec = net.forward(x[:3], upto="pool5")
    r = np.zeros_like(rec["pool5"][:1])
    pos = rec.strongest("pool5", 11, image=2)
    r[0, 11, pos[0], pos[1]] = rec["pool5"][2, 11, pos[0], pos[1]]
    for rule in ("deconvnet", "guided", "gradient"):
        walked = rec.backward(r, "pool5", rule=rule, images=[2])
        assert np.array_equal(walked[0], rec.project("pool5", 11, image=2, rule=rule, crop=False))
    # part of the way: the signal at conv3's input, with every stage on the way down
    mid, stages = rec.backward(r, "pool5", down_to="conv3", images=[2], stages=True)
    assert [name for name, _, _ in stages][0] == "pool5" and stages[-1][0] == "conv3"
    assert mid.shape == (1,) + rec["pool2"].shape[1:]


def test_backward_bad_arguments(net, images):
    x, _ = images
    rec = net.forward(x[:2], upto="conv3")
    with pytest.raises(ValueError, match="signal must be"):
        rec.backward(np.zeros((1, 5)), "conv3")
    with pytest.raises(ValueError, match="images must be"):
        rec.backward(np.zeros((1,) + rec["conv3"].shape[1:]), "conv3", images=[2])
    with pytest.raises(ValueError, match="lies above"):
        rec.backward(np.zeros((1,) + rec["pool1"].shape[1:]), "pool1", down_to="conv3")
    with pytest.raises(ValueError, match="unknown rule"):
        rec.backward(np.zeros((1,) + rec["conv3"].shape[1:]), "conv3", rule="backprop")


def test_forward_from_a_middle_layer_continues_the_pass(net, images):
    x, _ = images
    full = net.forward(x[:4])
    head = net.forward(full["pool2"], start="conv3")
    assert head.names[0] == "conv3" and head.names[-1] == "fc7"
    np.testing.assert_allclose(head.output, full.output, rtol=1e-6, atol=1e-6)
