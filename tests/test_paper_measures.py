"""The measures chapter 7 adds to the paper's Fig. 6, Table 1 and Table 3 (zfcore.analysis.studies), each
against an independent reference: an explicit DFT sum, a hand-worked value, a loop over every case, or
another code path of zfcore."""
import json
import math
from itertools import product

import numpy as np
import pytest

from zfcore import data, models
from zfcore.analysis import studies

CONV_ONLY = [  # stride-1 conv, no pooling: maps move with the image, maxima do not change
    ("conv1", "conv", dict(in_channels=1, out_channels=4, kernel=3, stride=1, padding=1)),
    ("relu1", "relu", {}),
]
STRIDED = [  # stride 3: a one-pixel shift changes what the grid samples
    ("conv1", "conv", dict(in_channels=1, out_channels=4, kernel=3, stride=3, padding=1)),
    ("relu1", "relu", {}),
]


@pytest.fixture(scope="module")
def embedded():
    return models.load_model()


# --- Fig. 6 -------------------------------------------------------------------------------------------------
def _dft_power(w, size):
    """|DFT|^2 of one (k, k) filter zero-padded to size x size, summed term by term."""
    k = w.shape[0]
    out = np.zeros((size, size))
    for a, b in product(range(size), repeat=2):
        z = sum(w[y, x] * np.exp(-2j * np.pi * (a * y + b * x) / size) for y in range(k) for x in range(k))
        out[a, b] = abs(z) ** 2
    return out


def test_band_shares_match_an_explicit_dft():
    w = np.random.default_rng(0).normal(size=(2, 1, 3, 3))
    size, edges = 8, (0.125, 0.25)
    got = studies.band_shares(w, edges, size)
    f = np.fft.fftfreq(size)
    radius = np.array([[math.hypot(f[a], f[b]) for b in range(size)] for a in range(size)])
    for n in range(2):
        p = _dft_power(w[n, 0], size)
        ref = [p[radius < 0.125].sum(), p[(radius >= 0.125) & (radius < 0.25)].sum(), p[radius >= 0.25].sum()]
        np.testing.assert_allclose(got[n], np.array(ref) / p.sum(), rtol=1e-10)


def test_band_shares_of_an_impulse_a_constant_and_a_cosine():
    size = 32
    impulse = np.zeros((1, 1, 5, 5))
    impulse[0, 0, 2, 2] = 1.0                                # white: each band gets its share of the bins
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    r = np.hypot(fy, fx)
    area = [(r < 0.125).mean(), ((r >= 0.125) & (r < 0.25)).mean(), (r >= 0.25).mean()]
    np.testing.assert_allclose(studies.band_shares(impulse, size=size)[0], area, rtol=1e-12)
    const = np.ones((1, 1, size, size))                      # all its power at DC
    np.testing.assert_allclose(studies.band_shares(const, size=size)[0], [1, 0, 0], atol=1e-12)
    x = np.arange(size)
    cos = np.tile(np.cos(2 * np.pi * 12 / size * x), (size, 1))[None, None]   # 0.375 cycle/pixel
    np.testing.assert_allclose(studies.band_shares(cos, size=size)[0], [0, 0, 1], atol=1e-12)


def test_above_nyquist_is_the_power_beyond_half_the_sampling_rate():
    size = 32
    x = np.arange(size)
    at = lambda k: np.tile(np.cos(2 * np.pi * k / size * x), (size, 1))[None, None]
    assert studies.above_nyquist(at(8), 2, size)[0] == pytest.approx(0, abs=1e-12)    # 1/4: representable
    assert studies.above_nyquist(at(9), 2, size)[0] == pytest.approx(1, abs=1e-12)    # above 1/4
    assert studies.above_nyquist(at(6), 3, size)[0] == pytest.approx(1, abs=1e-12)    # 0.1875 > 1/6
    w = np.random.default_rng(1).normal(size=(3, 2, 5, 5))
    np.testing.assert_allclose(studies.above_nyquist(w, 1, size), 0, atol=1e-12)


def test_shift_is_an_integer_translation():
    img = np.random.default_rng(0).random((2, 1, 9, 9)).astype(np.float32)
    for dy, dx in ((0, 1), (1, 0), (0, -2), (-1, 3)):
        got = studies.shift(img, dy, dx)
        ref = np.zeros_like(img)
        for y, x in product(range(9), repeat=2):
            if 0 <= y - dy < 9 and 0 <= x - dx < 9:
                ref[..., y, x] = img[..., y - dy, x - dx]
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(studies.shift(img[0], 0, 2), studies.transform(img[0], "translate", 2), atol=1e-6)


def test_shifted_maxima_by_hand_and_invariance_without_stride():
    rng = np.random.default_rng(2)
    img = np.zeros((3, 1, 12, 12), np.float32)
    img[:, :, 3:9, 3:9] = rng.random((3, 1, 6, 6))           # black border: a shift loses nothing
    net = models.build(CONV_ONLY, seed=3, dtype=np.float64)
    m = studies.shifted_maxima(net, img, ["conv1", "relu1"])
    ref = net.forward(studies.shift(img, 1, 0).astype(np.float64)).output.max(axis=(2, 3))
    np.testing.assert_allclose(m["relu1"][2], ref, rtol=1e-12)
    assert m["relu1"].shape == (3, 3, 4)
    np.testing.assert_allclose(studies.shift_change(m["relu1"]), 0, atol=1e-12)
    strided = studies.shifted_maxima(models.build(STRIDED, seed=3, dtype=np.float64), img, "relu1")
    assert studies.shift_change(strided["relu1"]).min() > 1e-3
    hand = np.array([[[2.0, 1.0]], [[1.0, 1.0]], [[3.0, 0.0]]])     # (1 + 2 shifts, 1 image, 2 features)
    np.testing.assert_allclose(studies.shift_change(hand), [(1 / 3 + 2 / 3) / 2])


# --- intervals and tests ----------------------------------------------------------------------------------------
def test_wilson_hand_values_and_symmetry():
    z = 1.959964
    assert studies.wilson(0, 10) == pytest.approx((0.0, z * z / (10 + z * z)), abs=1e-12)
    assert studies.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)   # textbook value
    lo, hi = studies.wilson(9264, 10000)
    lo2, hi2 = studies.wilson(736, 10000)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2) and lo < 0.9264 < hi
    with pytest.raises(ValueError):
        studies.wilson(11, 10)


def test_mcnemar_against_the_binomial_tail():
    a = np.array([True] * 9 + [False] * 1 + [True] * 50)
    b = np.array([False] * 9 + [True] * 1 + [True] * 50)
    n10, n01, p = studies.mcnemar(a, b)
    assert (n10, n01) == (9, 1) and p == pytest.approx(2 * 11 / 1024)
    rng = np.random.default_rng(0)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.7
    n10, n01, p = studies.mcnemar(a, b)
    n = n10 + n01
    ref = min(1.0, 2 * sum(math.comb(n, i) * 0.5 ** n for i in range(min(n10, n01) + 1)))
    assert p == pytest.approx(ref, rel=1e-12)
    assert studies.mcnemar(a, a)[2] == 1.0 and studies.mcnemar(b, a)[2] == pytest.approx(p)


def _holm_loop(p, alpha):
    order, out = sorted(range(len(p)), key=lambda i: p[i]), [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        out[i] = True
    return out


def test_holm_by_hand_and_against_a_loop():
    assert studies.holm([0.01, 0.04, 0.03, 0.005]).tolist() == [True, False, False, True]
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.random(rng.integers(1, 12)) ** 3
        assert studies.holm(p, 0.1).tolist() == _holm_loop(p.tolist(), 0.1)


def test_bootstrap_ci_of_a_mean():
    assert studies.bootstrap_ci(np.full(20, 3.0)) == pytest.approx((3.0, 3.0))
    v = np.random.default_rng(1).normal(size=400)
    lo, hi = studies.bootstrap_ci(v, n_boot=4000)
    se = v.std() / math.sqrt(len(v))
    assert lo < v.mean() < hi and (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)


# --- Table 1 ----------------------------------------------------------------------------------------------------
def test_mask_signs_and_pair_hamming_agree_with_separate_passes(embedded):
    x, _ = data.load_dataset("test", limit=6)
    rng = np.random.default_rng(0)
    part = np.stack([studies.part_mask(im, "sole") for im in x])
    rand = np.stack([studies.random_mask_like(im, m, rng) for im, m in zip(x, part)])
    signs = studies.mask_signs(embedded, x, np.stack([part, rand], axis=1), fill=0.3)
    empty = studies.mask_signs(embedded, x, np.zeros((6, 3, 28, 28), bool))
    assert all(np.abs(v).max() == 0 for v in empty.values())         # no change, however it was rounded
    i, j = np.triu_indices(6, k=1)
    a = embedded.forward(x, upto="relu6")
    for k, masks in enumerate((part, rand)):
        b = embedded.forward(np.where(masks[:, None], np.float32(0.3), x), upto="relu6")
        for name in ("pool5", "relu6"):
            fa = a[name].reshape(6, -1)
            d = fa - b[name].reshape(6, -1)                   # same batch places: unchanged units give 0
            clear = (np.abs(d) > 2e-5 * np.abs(fa).max(axis=1, keepdims=True)) | (d == 0)
            np.testing.assert_array_equal(signs[name][:, k][clear], np.sign(d)[clear])
            assert clear.mean() > 0.99
            h = studies.pair_hamming(signs[name])
            np.testing.assert_allclose(h[i, k, j, k], studies.sign_hamming(signs[name][:, k]), rtol=1e-12)


def test_randomisation_test_against_every_configuration():
    rng = np.random.default_rng(3)
    N, K = 5, 2
    signs = rng.choice([-1, 0, 1], size=(N, K, 40)).astype(np.int8)
    signs[:, 0, :25] = 1                                      # the part: a shared direction
    h = studies.pair_hamming(signs)
    i, j = np.triu_indices(N, k=1)
    all_deltas = np.array([h[i, np.array(c)[i], j, np.array(c)[j]].mean() for c in product(range(K), repeat=N)])
    part = all_deltas[0]
    out = studies.randomisation_test(h, draws=40000, rng=np.random.default_rng(0))
    assert out["part"] == pytest.approx(part)
    assert out["p"] == pytest.approx((all_deltas <= part).mean(), abs=0.01)     # exact p: the share of 2^N
    randoms = all_deltas[[all(v == 1 for v in c) for c in product(range(K), repeat=N)]]
    assert np.allclose(out["random"], randoms[0])             # K = 2: one configuration of random masks
    same = studies.randomisation_test(np.zeros((4, 3, 4, 3)), draws=99)
    assert same["p"] == 1.0                                   # a part like every region: no evidence


# --- Table 3 ----------------------------------------------------------------------------------------------------
def test_ablation_predictions_belong_to_the_shipped_weights_and_records():
    from zfcore.analysis.classify import predict
    from zfcore.torch import variants

    pred = studies.read_ablation_predictions()
    images, labels = data.load_dataset("test")
    for name in variants.ABLATIONS:
        rec = json.loads((variants.ASSETS / f"{name}.json").read_text())
        assert abs((pred[name] == labels).mean() - rec["final"]["test_acc"]) < 0.002, name
    net, _ = variants.load_variant("no_conv34_fc6")            # the cheapest: a fresh pass on 200 images
    fresh = predict(net, images[:200]).argmax(axis=1)
    assert (fresh == pred["no_conv34_fc6"][:200]).mean() >= 0.995


def test_stale_ablation_predictions_are_refused(tmp_path):
    from zfcore.torch import variants

    bad = tmp_path / "p.npz"
    np.savez(bad, **{n: np.zeros(3, np.int8) for n in variants.ABLATIONS},
             **{f"sha256_{n}": np.array("0" * 64) for n in variants.ABLATIONS})
    with pytest.raises(ValueError, match="other weights"):
        studies.read_ablation_predictions(bad)


@pytest.mark.slow
def test_ablation_predictions_match_a_fresh_pass_on_a_random_fifth_of_the_test_images():
    """Every shipped variant's predictions against a fresh numpy pass, on 2,000 test images drawn at
    random (the whole split, ``write_ablation_predictions``, takes about a minute)."""
    from zfcore.analysis.classify import predict
    from zfcore.torch import variants

    images, _ = data.load_dataset("test")
    some = np.sort(np.random.default_rng(7).choice(len(images), 2000, replace=False))
    shipped = studies.read_ablation_predictions()
    for name in variants.ABLATIONS:
        net, _ = variants.load_variant(name)
        fresh = predict(net, images[some]).argmax(axis=1)
        assert (fresh == shipped[name][some]).mean() >= 0.999, name


def test_spectral_centroid_of_a_cosine_and_a_constant():
    size = 32
    x = np.arange(size)
    cos = np.tile(np.cos(2 * np.pi * 12 / size * x), (size, 1))[None, None]
    assert studies.spectral_centroid(cos, size)[0] == pytest.approx(12 / size)
    assert studies.spectral_centroid(np.ones((1, 1, size, size)), size)[0] == pytest.approx(0, abs=1e-12)


def test_placed_like_spans_the_room_in_the_bounding_box():
    img = np.zeros((1, 28, 28))
    img[0, 4:24, 6:22] = 1.0                                  # rows 4..23, cols 6..21
    m = studies.part_mask(img, "collar")                      # 5 x 8
    corner = lambda mk: (np.flatnonzero(mk.any(1))[0], np.flatnonzero(mk.any(0))[0])
    assert corner(studies.placed_like(img, m, 0, 0)) == (4, 6)
    assert corner(studies.placed_like(img, m, 1, 1)) == (23 - 5 + 1, 21 - 8 + 1)
    assert studies.placed_like(img, m, 0.5, 0.5).sum() == m.sum()
    rng = np.random.default_rng(0)
    tops = {corner(studies.random_mask_like(img, m, rng))[0] for _ in range(300)}
    assert tops == set(range(4, 20))                          # the room random_mask_like draws from
