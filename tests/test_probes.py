"""Linear probes and the purity statistics of chapter 5: the softmax loss against finite differences
and PyTorch, the fit against PyTorch's L-BFGS on the same loss, the splits, the intervals against
SciPy and hand-checked values, the exact chance distribution of purity against enumeration, and the
one-pass scan against ``analysis.top_k`` and the network's own activations."""
import itertools

import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.analysis import intervals, probes


def _toy(n=120, d=6, k=3, seed=0, shift=1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.standard_normal((k, d)) * shift
    return centres[y] + rng.standard_normal((n, d)), y


def test_softmax_gradient_matches_finite_differences():
    X, y = _toy()
    theta = np.random.default_rng(1).standard_normal((X.shape[1] + 1, 3)) * 0.3
    _, g = probes.softmax_loss(theta, X, y, lam=0.05)
    num = np.zeros_like(theta)
    h = 1e-6
    for i in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[i] = h
        up, down = probes.softmax_loss(theta + e, X, y, 0.05), probes.softmax_loss(theta - e, X, y, 0.05)
        num[i] = (up[0] - down[0]) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def _torch_loss(torch, theta, X, y, lam):
    W, b = theta[:-1], theta[-1]
    return torch.nn.functional.cross_entropy(X @ W + b, y) + 0.5 * lam * (W ** 2).sum()


def test_softmax_loss_and_gradient_match_torch_autograd():
    torch = pytest.importorskip("torch")
    X, y = _toy(seed=2)
    theta = np.random.default_rng(3).standard_normal((X.shape[1] + 1, 3))
    loss, g = probes.softmax_loss(theta, X, y, lam=0.1)
    t = torch.tensor(theta, requires_grad=True)
    ref = _torch_loss(torch, t, torch.tensor(X), torch.tensor(y), 0.1)
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def _torch_fit(torch, X, y, k, lam):
    t = torch.zeros((X.shape[1] + 1, k), dtype=torch.float64, requires_grad=True)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    opt = torch.optim.LBFGS([t], lr=1, max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _torch_loss(torch, t, Xt, yt, lam)
        loss.backward()
        return loss

    opt.step(closure)
    return t.detach().numpy(), float(_torch_loss(torch, t.detach(), Xt, yt, lam))


@pytest.mark.parametrize("n, d", [(150, 5), (9, 20)])          # more examples than features, and fewer
def test_fit_matches_torch_lbfgs(n, d):
    """The same penalised loss minimised by PyTorch's L-BFGS: the same minimum, the same weights."""
    torch = pytest.importorskip("torch")
    X, y = _toy(n=n, d=d, seed=4)
    m = probes.fit_softmax(X, y, 3, lam=0.02, max_iter=5000, tol=1e-9)
    ref, ref_loss = _torch_fit(torch, X, y, 3, 0.02)
    assert m.converged
    assert m.loss == pytest.approx(ref_loss, abs=1e-10)
    np.testing.assert_allclose(m.weights, ref[:-1], atol=1e-6)
    np.testing.assert_allclose(m.bias, ref[-1], atol=1e-6)
    assert m.loss == pytest.approx(probes.softmax_loss(np.vstack([m.weights, m.bias]), X, y, 0.02)[0])


def test_fit_separates_separable_data_and_is_deterministic():
    X, y = _toy(n=60, d=2, k=3, seed=5, shift=8.0)
    a = probes.fit_softmax(X, y, 3, lam=1e-3)
    b = probes.fit_softmax(X, y, 3, lam=1e-3)
    assert np.array_equal(a.weights, b.weights) and np.all(a.predict(X) == y)
    with pytest.raises(ValueError, match="lam > 0"):
        probes.fit_softmax(X, y, 3, lam=0)
    with pytest.raises(ValueError, match="classes must be in 0..1"):
        probes.fit_softmax(X, y, 2)


def test_stratified_halves_are_disjoint_complete_and_stratified():
    labels = np.repeat([0, 1, 2], [7, 10, 4])[np.random.default_rng(0).permutation(21)]
    a, b = probes.stratified_halves(labels, seed=3)
    assert not set(a) & set(b) and sorted(np.concatenate([a, b]).tolist()) == list(range(21))
    assert np.bincount(labels[a]).tolist() == [3, 5, 2] and np.bincount(labels[b]).tolist() == [4, 5, 2]
    a2, _ = probes.stratified_halves(labels, seed=3)
    a3, _ = probes.stratified_halves(labels, seed=4)
    assert np.array_equal(a, a2) and not np.array_equal(a, a3)
    idx = probes.per_class(labels[a], 2, np.random.default_rng(0))
    assert len(set(idx)) == 6 and np.bincount(labels[a][idx]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="fewer than n=3"):
        probes.per_class(labels[a], 3, np.random.default_rng(0))


def test_pool_grid_by_loops():
    acts = np.random.default_rng(0).standard_normal((2, 3, 7, 5))
    got = probes.pool_grid(acts, 2)
    rows, cols = [(0, 4), (4, 7)], [(0, 3), (3, 5)]
    want = np.array([[[acts[n, c, r0:r1, c0:c1].mean() for (r0, r1) in rows for (c0, c1) in cols]
                      for c in range(3)] for n in range(2)]).reshape(2, -1)
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(probes.pool_grid(acts, 1), acts.mean(axis=(2, 3)))


def test_probe_draws_and_accuracy():
    X, y = _toy(n=200, d=4, k=4, seed=6, shift=6.0)
    p = probes.probe(X[:100], y[:100], X[100:], y[100:], [1, 5, None], [3, 2, 1])
    assert [len(v) for v in p.accuracy.values()] == [3, 2, 1] and p.converged
    assert p.accuracy[None][0] > 0.9 and np.all((p.accuracy[1] >= 0) & (p.accuracy[1] <= 1))
    np.testing.assert_allclose(p.accuracy[1], p.correct[1].mean(axis=1))
    both = probes.probe_layers({"a": X, "b": X[:, :2]}, y, np.arange(100), np.arange(100, 200),
                               [1, 5, None], [3, 2, 1], threads=1)
    for n in (1, 5, None):
        np.testing.assert_array_equal(both["a"].correct[n], p.correct[n])
    alone = probes.probe(X[:100, :2], y[:100], X[100:, :2], y[100:], [1, 5, None], [3, 2, 1])
    np.testing.assert_array_equal(both["b"].accuracy[5], alone.accuracy[5])


def test_intervals():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 4, 9, 29):
        assert intervals.T975[df - 1] == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)
    v = np.array([0.5, 0.7, 0.6, 0.9])
    m, lo, hi = intervals.t_interval(v)
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert (m, lo, hi) == pytest.approx((0.675, 0.675 - half, 0.675 + half), abs=1e-3)
    p, lo, hi = intervals.wilson(8, 10)                       # Wilson (1927): 0.490 .. 0.943
    assert (p, lo, hi) == pytest.approx((0.8, 0.4902, 0.9433), abs=1e-4)
    est, lo, hi = intervals.bootstrap(np.arange(101.0), np.median)
    assert est == 50 and 40 < lo < 50 < hi < 60
    assert intervals.bootstrap(np.full(7, 4.0), np.median) == (4.0, 4.0, 4.0)


def test_purity_chance_by_enumeration():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    for k in (1, 3, 5):
        counts = np.zeros(k + 1)
        for subset in itertools.combinations(range(len(labels)), k):
            counts[np.bincount(labels[list(subset)]).max()] += 1
        np.testing.assert_allclose(analysis.purity_chance(labels, k), counts / counts.sum(), atol=1e-15)


def test_unit_purity_by_hand():
    acts = np.array([[3.0, 0.0], [1.0, 0.0], [2.0, -1.0], [2.0, 0.0]])
    purity, fires = analysis.unit_purity(acts, np.array([5, 5, 1, 1]), k=3)
    # unit 0: images 0, 2, 3 (tie 2/3 by id) -> classes 5, 1, 1; unit 1: images 0, 1, 3 -> 5, 5, 1
    np.testing.assert_allclose(purity, [2 / 3, 2 / 3])
    assert fires.tolist() == [True, False]


def test_scan_layers_matches_top_k_and_the_activations():
    x, _ = data.load_dataset("test", limit=24)
    net = models.build_model("fmnist_zf", weights=models.kaiming_params(models.FMNIST_ZF, seed=7))
    s = probes.scan_layers(net, x, ["conv2", "conv5"], k=3, keep=["relu6"], batch_size=10, threads=1)
    tops = analysis.top_k(net, x, ["conv2", "conv5"], k=3, batch_size=10, threads=1)
    _, acts = net.infer(x, keep=["conv2", "conv5", "relu6"])
    for layer in ("conv2", "conv5"):
        for field in ("features", "images", "positions", "values", "projections", "boxes", "patches"):
            np.testing.assert_array_equal(getattr(s.tops[layer], field), getattr(tops[layer], field))
        np.testing.assert_allclose(s.maxima[layer], acts[layer].max(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    # float32 sums in batches of 10 against one of 24: agree to float32 rounding of the layer's scale
    np.testing.assert_allclose(s.kept["relu6"], acts["relu6"], rtol=1e-5, atol=1e-5 * np.abs(acts["relu6"]).max())
    with pytest.raises(ValueError, match="both scanned and kept"):
        probes.scan_layers(net, x, ["conv2"], keep=["conv2"])
