"""Settling of the representations during training: linear CKA against its mathematical identities and
the HSIC formula computed independently; ``settling`` against CKA of each checkpoint's own activations;
class purity and the occlusion peaks worked out from their definitions (numpy only)."""
import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.analysis.topk import TopK


def _hsic_cka(X, Y):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) / (n - 1)^2 with the
    centring matrix H = I - 11'/n and linear kernels K = XX', L = YY', all in float64."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n

    def hsic(K, L):
        return np.trace(K @ H @ L @ H) / (n - 1) ** 2

    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture
def xy():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((30, 12))
    Y = X[:, :8] @ rng.standard_normal((8, 20)) + 0.5 * rng.standard_normal((30, 20)) + 3.0
    return X, Y


def test_cka_of_a_representation_with_itself_is_one(xy):
    X, Y = xy
    assert analysis.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert analysis.linear_cka(Y.astype(np.float32), Y.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)


def test_cka_equals_the_hsic_formula(xy):
    X, Y = xy
    rng = np.random.default_rng(1)
    ref = _hsic_cka(X, Y)
    assert 0 < ref < 1
    assert analysis.linear_cka(X, Y) == pytest.approx(ref, rel=1e-10)
    Z = rng.standard_normal((30, 5))                       # unrelated: a smaller value, still the formula's
    assert analysis.linear_cka(X, Z) == pytest.approx(_hsic_cka(X, Z), rel=1e-10)
    assert analysis.linear_cka(X, Z) < ref


def test_cka_is_symmetric_and_takes_any_trailing_shape(xy):
    X, Y = xy
    assert analysis.linear_cka(X, Y) == pytest.approx(analysis.linear_cka(Y, X), rel=1e-12)
    assert analysis.linear_cka(X.reshape(30, 3, 2, 2), Y) == pytest.approx(analysis.linear_cka(X, Y), rel=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(xy):
    X, Y = xy
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    R, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    ref = analysis.linear_cka(X, Y)
    assert analysis.linear_cka(X @ Q, Y) == pytest.approx(ref, rel=1e-10)
    assert analysis.linear_cka(X, Y @ R) == pytest.approx(ref, rel=1e-10)
    assert analysis.linear_cka(7.5 * X, 0.01 * Y) == pytest.approx(ref, rel=1e-10)
    assert analysis.linear_cka(X + 4.0, Y - 2.0) == pytest.approx(ref, rel=1e-10)   # centred: shifts too
    A = np.diag(np.r_[10.0, np.ones(11)])                   # not invariant to any invertible map
    assert abs(analysis.linear_cka(X @ A, Y) - ref) > 1e-3


def test_cka_rejects_mismatched_or_constant_inputs(xy):
    X, Y = xy
    with pytest.raises(ValueError, match="same N"):
        analysis.linear_cka(X, Y[:10])
    with pytest.raises(ValueError, match="constant"):
        analysis.linear_cka(X, np.ones((30, 4)))


class _Net:
    """A stand-in network: its one layer "a" is the images times a matrix."""
    def __init__(self, w):
        self.w = np.asarray(w, np.float64)

    def index(self, name):
        return 0

    def infer(self, x, upto=None, keep=()):
        a = x.reshape(len(x), -1) @ self.w
        return a, {"a": a}


def test_settling_against_cka_of_each_checkpoint():
    """CKA with the last network, per network; the first epoch >= threshold and the epoch from which
    all later ones are >= threshold, on a sequence that rises, falls back and rises again."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 1, 3, 3))
    final = rng.standard_normal((9, 6))
    noise = rng.standard_normal((9, 6))
    mix = [0.0, 0.95, 0.3, 0.97, 1.0]
    nets = [(e, _Net(m * final + (1 - m) * noise)) for e, m in zip([1, 2, 5, 10, 20], mix)]
    s = analysis.settling(nets, x, ["a"], threshold=0.9)
    a = x.reshape(40, -1)
    want = [analysis.linear_cka(a @ n.w, a @ final) for _, n in nets]
    np.testing.assert_allclose(s.cka["a"], want, rtol=1e-10)
    assert s.epochs.tolist() == [1, 2, 5, 10, 20] and s.cka["a"][-1] == 1.0
    assert s.cka["a"][1] >= 0.9 > s.cka["a"][2] and s.cka["a"][3] >= 0.9
    assert s.first["a"] == 2 and s.stays["a"] == 10
    with pytest.raises(ValueError, match="threshold"):
        analysis.settling(nets, x, ["a"], threshold=1.5)


def test_settling_on_the_shipped_checkpoints():
    """On the shipped checkpoints (paths, loaded one at a time): each entry is linear_cka of that
    checkpoint's activations with the last one's."""
    x, _ = data.load_dataset("test", limit=40)
    cps = models.checkpoints()[-3:]
    s = analysis.settling(cps, x, ["conv2", "conv5"])
    last = models.load_checkpoint(cps[-1][1])
    first = models.load_checkpoint(cps[0][1])
    for layer in ("conv2", "conv5"):
        a = first.forward(x, upto=layer)[layer]
        b = last.forward(x, upto=layer)[layer]
        assert s.cka[layer][0] == pytest.approx(analysis.linear_cka(a, b), rel=1e-6)
        assert s.cka[layer][-1] == 1.0 and np.all((s.cka[layer] > 0) & (s.cka[layer] <= 1 + 1e-9))


def test_class_purity_by_hand():
    images = np.array([[0, 1, 2], [3, 4, 5], [0, 2, 4]])
    values = np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    t = TopK("c", np.arange(3), images, np.zeros((3, 3, 2), int), values, None, None, None)
    labels = np.array([7, 7, 7, 1, 2, 2])
    purity, fires = analysis.class_purity(t, labels)
    np.testing.assert_allclose(purity, [1.0, 2 / 3, 2 / 3])
    assert fires.tolist() == [True, True, False]


def test_occlusion_peaks_from_the_occlusion_grid():
    x, y = data.load_dataset("test", limit=2)
    net = models.build_model("fmnist_zf", weights=models.kaiming_params(models.FMNIST_ZF, seed=5))
    p = analysis.occlusion_peaks(net, x[1], int(y[1]), size=6, stride=4, fill=0.3)
    f = int(net.forward(x[1:2], upto="conv5").top_features("conv5", k=1)[0][0])
    o = analysis.occlusion(net, x[1], int(y[1]), size=6, stride=4, fill=0.3, layer="conv5", feature=f)
    assert p.feature == f and np.array_equal(p.occlusion.prob, o.prob)
    r, c = np.unravel_index(np.argmin(o.prob), o.prob.shape)
    assert p.decision == (o.rows[r] + 2.5, o.cols[c] + 2.5)
    r2, c2 = np.unravel_index(np.argmin(o.feature_activity), o.prob.shape)
    assert p.feature_drop == (o.rows[r2] + 2.5, o.cols[c2] + 2.5)
    assert p.distance == pytest.approx(np.hypot(p.decision[0] - p.feature_drop[0],
                                                p.decision[1] - p.feature_drop[1]))
