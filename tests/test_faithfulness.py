"""zfcore.analysis.faithfulness against independent references: brute-force loops over images, rankings
and steps, the one-image occlusion of zfcore.analysis.sensitivity, hand-checked values and identities."""
import numpy as np
import pytest

from zfcore import models
from zfcore.analysis import explain, faithfulness as fa, sensitivity, studies
from zfcore.core import ops
from zfcore.errors import ArgumentError

SPEC = [  # 1x6x6 -> conv 3 maps -> relu -> pool -> flatten (3*3*3) -> linear 4 logits
    ("conv1", "conv", dict(in_channels=1, out_channels=3, kernel=3, stride=1, padding=1)),
    ("relu1", "relu", {}),
    ("pool1", "maxpool", dict(kernel=2, stride=2, padding=0)),
    ("flatten", "flatten", {}),
    ("fc", "linear", dict(in_features=27, out_features=4)),
]


@pytest.fixture(scope="module")
def tiny():
    return models.build(SPEC, models.kaiming_params(SPEC, seed=3, dtype=np.float64), dtype=np.float64)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((7, 1, 6, 6))
    x[:, :, :3, :3] = 0.0                            # a black corner, as Fashion-MNIST's background
    x[:, :, 0, :] = 0.0
    x[6] = 0.0                                       # and a blank image
    return x, rng.integers(0, 4, 7)


def prob(net, x, t):
    """Reference: the softmax probability of class t for one image x (C, H, W), by a recorded pass."""
    return float(ops.softmax(net.forward(x[None]).output)[0, t])


def test_probabilities(tiny, batch):
    x, t = batch
    want = [prob(tiny, x[n], t[n]) for n in range(len(x))]
    np.testing.assert_allclose(fa.probabilities(tiny, x, t), want, rtol=1e-12)
    with pytest.raises(ArgumentError):
        fa.probabilities(tiny, x, 4)


@pytest.mark.parametrize("threads", [1, 2])
def test_class_projections_equal_project_units(tiny, batch, threads):
    x, t = batch
    got = fa.class_projections(tiny, x, t, layer="fc", threads=threads)
    assert list(got) == ["deconvnet", "guided", "gradient"]
    for rule, p in got.items():
        np.testing.assert_allclose(p, studies.project_units(tiny, x, "fc", t, rule), rtol=1e-12, atol=1e-14)
    with pytest.raises(ArgumentError):
        fa.class_projections(tiny, x, t, layer="pool1")
    with pytest.raises(ArgumentError):
        fa.class_projections(tiny, x, 4, layer="fc")


def test_pixel_order_highest_first_ties_in_seeded_order():
    s = np.random.default_rng(1).normal(size=(4, 5, 5))
    np.testing.assert_array_equal(fa.pixel_order(s), np.argsort(-s.reshape(4, -1), axis=1))
    np.testing.assert_array_equal(fa.pixel_order(s[:, None]), fa.pixel_order(s))
    tied = np.repeat(np.arange(5.0), 5).reshape(1, 5, 5)           # five groups of five equal scores
    o = fa.pixel_order(tied, seed=2)[0]
    assert sorted(o) == list(range(25))
    np.testing.assert_array_equal(tied.ravel()[o], np.repeat(np.arange(4.0, -1, -1), 5))
    assert not np.array_equal(o, fa.pixel_order(tied, seed=3)[0])
    r = fa.random_order(3, 25, seed=0)
    assert all(sorted(row) == list(range(25)) for row in r) and not np.array_equal(r[0], r[1])


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2), (4, 3), (6, 1)])
def test_square_masks_and_occlusion_drops_against_one_image_occlusion(tiny, batch, size, stride):
    x, t = batch
    masks, rows, cols = fa.square_masks(x.shape, size, stride)
    k = 0
    for r in rows:                                   # brute force, row-major
        for c in cols:
            want = np.zeros((6, 6), bool)
            want[r:r + size, c:c + size] = True
            np.testing.assert_array_equal(masks[k], want)
            k += 1
    for fill in (0.3, 0.0):                          # 0: squares on black change nothing
        drops, m2 = fa.occlusion_drops(tiny, x, t, size, stride, fill=fill, chunk=3)
        np.testing.assert_array_equal(m2, masks)
        for n in range(len(x)):
            occ = sensitivity.occlusion(tiny, x[n], int(t[n]), size, stride, fill=fill)
            np.testing.assert_allclose(drops[n], prob(tiny, x[n], t[n]) - occ.prob.ravel(), atol=1e-12)


def test_square_scores_sums_and_centres():
    masks, _, _ = fa.square_masks((6, 6), 3, 2)      # rows and columns 0, 2, 3
    v = np.random.default_rng(4).normal(size=(2, len(masks)))
    s = fa.square_pixel_scores(v, masks)
    for n in range(2):
        for i in range(6):
            for j in range(6):
                covering = [k for k in range(len(masks)) if masks[k, i, j]]
                assert s[n, i, j] == pytest.approx(np.mean(v[n, covering]))
    maps = np.random.default_rng(5).normal(size=(2, 1, 6, 6))
    sums = fa.square_sums(maps, masks)
    assert sums[1, 4] == pytest.approx(maps[1, 0, 2:5, 2:5].sum())      # square 4: row 2, col 2
    c = fa.square_centres(masks)
    np.testing.assert_allclose(c[0], [1, 1])
    np.testing.assert_allclose(c[-1], [4, 4])
    np.testing.assert_allclose(c[5], [3, 4])         # row start 2, column start 3


def test_steps_and_perturbed_images(batch):
    x, _ = batch
    counts = fa.step_counts(36, 5)
    np.testing.assert_array_equal(counts, [0, 7, 14, 22, 29, 36])
    order = fa.random_order(len(x), 36, seed=1)
    dele = fa.perturbed(x, order, counts, baseline=0.5, mode="deletion")
    ins = fa.perturbed(x, order, counts, baseline=0.5, mode="insertion")
    for n in range(len(x)):
        for s, k in enumerate(counts):
            d, i = x[n, 0].ravel().copy(), np.full(36, 0.5)
            d[order[n, :k]] = 0.5
            i[order[n, :k]] = x[n, 0].ravel()[order[n, :k]]
            np.testing.assert_array_equal(dele[n, s, 0].ravel(), d)
            np.testing.assert_array_equal(ins[n, s, 0].ravel(), i)
    with pytest.raises(ArgumentError):
        fa.perturbed(x, order, counts, mode="blur")


@pytest.mark.parametrize("baseline", [0.1, 0.0, "array"])
def test_curves_against_a_loop_over_images_rankings_and_steps(tiny, batch, baseline):
    """Baseline 0 with the brightest or the darkest pixels first: steps that change nothing yet, or
    nothing more, are taken from the ends instead of run; the values must not differ."""
    x, t = batch
    base = np.random.default_rng(9).random(x.shape) if baseline == "array" else baseline
    orders = {"a": fa.random_order(len(x), 36, seed=5), "bright": fa.pixel_order(x[:, 0]),
              "dark": fa.pixel_order(-x[:, 0])}
    got = fa.curves(tiny, x, t, orders, steps=6, baseline=base, chunk=3)
    counts = fa.step_counts(36, 6)
    b = np.broadcast_to(base, x.shape).reshape(len(x), -1)
    for name, order in orders.items():
        for n in range(len(x)):
            for s, k in enumerate(counts):
                d, i = x[n].copy().reshape(-1), b[n].copy()
                d[order[n, :k]] = b[n, order[n, :k]]
                i[order[n, :k]] = x[n].ravel()[order[n, :k]]
                assert got[name]["deletion"][n, s] == pytest.approx(prob(tiny, d.reshape(1, 6, 6), t[n]))
                assert got[name]["insertion"][n, s] == pytest.approx(prob(tiny, i.reshape(1, 6, 6), t[n]))


def test_curves_ends_and_errors(tiny, batch):
    x, t = batch
    orders = {"a": fa.random_order(len(x), 36, seed=5)}
    got = fa.curves(tiny, x, t, orders, steps=4, baseline=0.1)
    one = fa.curves(tiny, x, t, orders, steps=1, baseline=0.1)["a"]
    np.testing.assert_allclose(one["deletion"], got["a"]["deletion"][:, [0, -1]])
    np.testing.assert_allclose(one["insertion"], got["a"]["insertion"][:, [0, -1]])
    with pytest.raises(ArgumentError):
        fa.curves(tiny, x, t, {"a": orders["a"][:3]}, steps=4)


def test_area_is_the_trapezoid_rule():
    c = np.random.default_rng(6).random((5, 9))
    np.testing.assert_allclose(fa.area(c), np.trapezoid(c, np.linspace(0, 1, 9), axis=1))
    np.testing.assert_allclose(fa.area(np.linspace([0, 1], [1, 0], 4).T), [0.5, 0.5])


def test_bootstrap_and_wilson():
    v = np.random.default_rng(7).normal(2.0, 1.0, 400)
    est, lo, hi = fa.bootstrap(v)
    assert est == pytest.approx(v.mean()) and lo < est < hi
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(len(v)), rel=0.15)   # normal theory
    est2, lo2, hi2 = fa.bootstrap(np.column_stack([v, np.full(400, 3.0)]), np.median)
    assert est2[1] == lo2[1] == hi2[1] == 3.0 and lo2[0] < np.median(v) < hi2[0]
    p, lo, hi = fa.wilson(5, 10)                     # the textbook interval for 5 of 10
    assert p == 0.5 and lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert fa.wilson(0, 20)[1] == pytest.approx(0.0, abs=1e-12)


def test_peak_distances_and_within():
    peaks = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 10.0]])
    minima = np.array([[0.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    d = fa.peak_distances(peaks, minima)
    assert d[0, 0] == 1.0 and d[1, 1] == 0.0 and d[1, 2] == 5.0 and d[2, 2] == pytest.approx(np.hypot(10, 10))
    own, chance = fa.within(d, 5.0)
    np.testing.assert_array_equal(own, [1, 1, 0])
    np.testing.assert_allclose(chance, [(d[0, 1] <= 5) / 2 + (d[0, 2] <= 5) / 2, 1.0, 0.0])


def test_vectorised_rank_matches_a_brute_force_count():
    rng = np.random.default_rng(8)
    for _ in range(50):
        a = rng.integers(0, 6, rng.integers(1, 40)).astype(float)
        want = [(a < v).sum() + ((a == v).sum() - 1) / 2 for v in a]
        np.testing.assert_allclose(explain.rank(a), want)
