"""Mechanics of zfcore.analysis.explain: hand-made networks, mathematical identities, and torch autograd."""
import numpy as np
import pytest

from zfcore import data, models
from zfcore.analysis import explain

HEAD = [  # 1x6x6 -> conv 3 maps -> relu -> flatten (3*4*4) -> linear 2 logits
    ("conv1", "conv", dict(in_channels=1, out_channels=3, kernel=3, stride=1, padding=0)),
    ("relu1", "relu", {}),
    ("flatten", "flatten", {}),
    ("fc", "linear", dict(in_features=48, out_features=2)),
]


@pytest.fixture(scope="module")
def tiny():
    params = models.kaiming_params(HEAD, seed=4, dtype=np.float64)
    params["fc.weight"][:, 16:32] = 0.0              # the classifier ignores map 1 entirely
    return models.build(HEAD, params, dtype=np.float64)


def test_zeroing_an_ignored_feature_changes_no_logit(tiny):
    x = np.random.default_rng(0).normal(size=(5, 1, 6, 6))
    for target in (0, 1):
        z = explain.zeroing_effect(tiny, x, "relu1", target)
        g = explain.activation_times_gradient(tiny, x, "relu1", target)
        assert np.abs(z[:, 1]).max() <= 1e-12 and np.all(g[:, 1] == 0)   # float64 summation order
        assert np.abs(z[:, [0, 2]]).max() > 0
        # the head after relu1 is linear, so zeroing a map removes exactly its activation x gradient
        np.testing.assert_allclose(z, g, rtol=1e-10, atol=1e-12)


def test_contributions_sum_to_the_logit_minus_bias(tiny):
    x = np.random.default_rng(1).normal(size=(3, 1, 6, 6))
    g = explain.activation_times_gradient(tiny, x, "relu1", 1)
    logits = tiny.forward(x).output
    np.testing.assert_allclose(g.sum(1), logits[:, 1] - tiny.params["fc.bias"][1], rtol=1e-10)


def test_activation_times_gradient_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    from zfcore.torch import reference

    net = models.load_model()
    x, y = data.load_dataset("test", limit=4)
    ours = explain.activation_times_gradient(net, x, "relu5", y)
    params = {k: v.astype(np.float64) for k, v in net.params.items()}
    tm = reference.torch_model(models.get_spec("fmnist_zf"), params, dtype="float64")
    h = torch.from_numpy(x.astype(np.float64))
    for name, m in tm.named_children():
        h = m(h)
        if name == "relu5":
            a = h.detach().requires_grad_(True)
            h = a
    logit = h[torch.arange(4), torch.from_numpy(y.astype(np.int64))].sum()
    logit.backward()
    ref = (a * a.grad).sum(dim=(2, 3)).detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_rank_and_spearman_by_hand():
    np.testing.assert_array_equal(explain.rank([10, 30, 20, 20]), [0, 3, 1.5, 1.5])
    assert explain.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert explain.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert explain.spearman([1, 2, 3], [5, 5, 5]) == 0.0


def test_class_specificity_of_identical_classes_is_one(tiny):
    params = dict(tiny.params)
    params["fc.weight"] = np.tile(params["fc.weight"][:1], (2, 1))     # both logits: the same unit
    same = models.build(HEAD, params, dtype=np.float64)
    x = np.random.default_rng(2).random((3, 1, 6, 6))
    for rule in ("deconvnet", "guided", "gradient"):
        corr, projs = explain.class_specificity(same, x, rule, layer="fc")
        assert projs.shape == (3, 2, 1, 6, 6)
        np.testing.assert_allclose(corr, 1.0)
    np.testing.assert_allclose(explain.correlation_matrix([[1, 2, 3], [3, 2, 1]]), [[1, -1], [-1, 1]])


def test_cascading_randomisation_mechanics(tiny):
    x = np.random.default_rng(3).random((4, 1, 6, 6))
    names, out = explain.cascading_randomisation(tiny, x, 0, rules=("gradient",), layer="fc")
    assert names == ["fc", "conv1"]
    assert out["gradient"].shape == (3, 4)
    np.testing.assert_allclose(out["gradient"][0], 1.0)
    p = explain.randomised_params(tiny, ["fc"], seed=0)
    np.testing.assert_array_equal(p["conv1.weight"], tiny.params["conv1.weight"])
    assert not np.array_equal(p["fc.weight"], tiny.params["fc.weight"])


def test_pair_statistics_counts(tiny):
    x = np.random.default_rng(4).random((10, 1, 6, 6))
    labels = np.array([0] * 6 + [1] * 4)
    preds = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 1])
    s = explain.pair_statistics(tiny, x, labels, preds, 0, 1, layer="relu1", k=2)
    assert s["mistakes"].tolist() == [0, 1, 2] and s["margin"].shape == (3, 3)
    assert s["frequency"].sum() == pytest.approx(2.0) and np.abs(s["margin"][:, 1]).max() == 0  # ignored map
    with pytest.raises(ValueError, match="no test mistakes"):
        explain.pair_statistics(tiny, x, labels, preds, 1, 0)
