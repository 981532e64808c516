"""Mechanics of zfcore.analysis.studies on tiny cases that can be checked by hand (numpy only)."""
import numpy as np
import pytest

from zfcore import models
from zfcore.analysis import studies
from zfcore.core import RULES

TINY = [  # 1x7x7 -> conv 3x3 stride 3 -> 2x2x2: pixels in row 6 and column 6 are seen by no unit
    ("conv1", "conv", dict(in_channels=1, out_channels=2, kernel=3, stride=3, padding=0)),
    ("relu1", "relu", {}),
]
SHIFT = [  # total stride 2 at conv2
    ("conv1", "conv", dict(in_channels=1, out_channels=3, kernel=3, stride=1, padding=1)),
    ("relu1", "relu", {}),
    ("pool1", "maxpool", dict(kernel=2, stride=2, padding=0)),
    ("conv2", "conv", dict(in_channels=3, out_channels=4, kernel=3, stride=1, padding=1)),
    ("relu2", "relu", {}),
]


@pytest.fixture(scope="module")
def embedded():
    return models.load_model()


def test_occluder_over_unseen_pixels_changes_nothing():
    net = models.build(TINY, seed=1, dtype=np.float64)
    img = np.random.default_rng(0).random((1, 7, 7))
    acts, ref, rows, cols = studies.occluded_activations(net, img, "conv1", size=1, stride=1, fill=5.0)
    assert acts.shape == (7, 7, 2, 2, 2)
    for r in range(7):
        for c in range(7):
            same = np.array_equal(acts[r, c], ref)
            assert same == (r == 6 or c == 6), (r, c)   # seen pixels change the map, unseen ones never


def test_occluder_outside_a_units_field_leaves_it_unchanged(embedded):
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 2:26, 4:24] = np.random.default_rng(1).random((24, 20))
    # float64: the occluded copies run as one batch and the reference alone, and a GEMM may round a
    # column differently with the batch size; in float64 that is far below the 1e-12 asked here
    net = embedded.astype(np.float64)
    acts, ref, rows, cols = studies.occluded_activations(net, img, "conv2", size=4, stride=4, fill=0.5)
    pos = (2, 2)
    t, l, b, r = net.input_box("conv2", pos, input_size=(28, 28))
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            outside = r0 > b or r0 + 3 < t or c0 > r or c0 + 3 < l
            if outside:
                np.testing.assert_allclose(acts[i, j][:, pos[0], pos[1]], ref[:, pos[0], pos[1]], rtol=0, atol=1e-12)
    assert np.abs(acts[0, 0][:, pos[0], pos[1]] - ref[:, pos[0], pos[1]]).max() > 1e-3  # (0,0) square is inside


def test_translation_by_total_stride_moves_maps_exactly():
    net = models.build(SHIFT, seed=2, dtype=np.float64)
    img = np.random.default_rng(3).random((1, 40, 40)).astype(np.float32)
    shifted = studies.transform(img, "translate", 4)          # 4 px right = 2 steps of the total stride
    np.testing.assert_array_equal(shifted[:, :, 4:], img[:, :, :-4])
    last = net.layer_names[4]
    a = net.forward(img[None], upto=last).output[0]
    b = net.forward(shifted[None], upto=last).output[0]
    m = 4                                                     # margin: fields away from the borders
    np.testing.assert_allclose(b[:, :, 2 + m:20 - m], a[:, :, m:18 - m - 0], rtol=0, atol=1e-12)
    assert np.abs(b[:, :, :2] - a[:, :, :2]).max() > 0        # at the border the maps do differ


def test_transform_identities():
    img = np.random.default_rng(0).random((1, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(studies.transform(img, "scale", 1.0), img, atol=1e-6)
    np.testing.assert_allclose(studies.transform(img, "rotate", 0), img, atol=1e-6)
    np.testing.assert_allclose(studies.transform(img, "rotate", 90)[0], np.rot90(img[0]), atol=1e-6)
    np.testing.assert_allclose(studies.transform(img, "translate", -2)[0, :, :7], img[0, :, 2:], atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        studies.transform(img, "shear", 1)


def test_sign_hamming_identical_zero_random_half():
    rng = np.random.default_rng(0)
    same = np.tile(rng.normal(size=(1, 500)), (6, 1))
    assert studies.sign_hamming(same).max() == 0.0
    d = studies.sign_hamming(rng.choice([-1.0, 1.0], size=(20, 20000)))
    assert len(d) == 190 and abs(d.mean() - 0.5) < 0.01
    np.testing.assert_allclose(studies.sign_hamming([[1, -1, 0, 2], [1, 1, 0, -3]]), [0.5])
    with pytest.raises(ValueError):
        studies.sign_hamming(np.ones((1, 3)))


def test_part_mask_from_bounding_box_by_hand():
    img = np.zeros((1, 28, 28))
    img[0, 4:24, 6:22] = 1.0                                  # object rows 4..23, cols 6..21 (20 x 16)
    assert studies.bounding_box(img) == (4, 6, 23, 21)
    m = studies.part_mask(img, "collar")                      # rows 4 .. 4+5, cols 6+4 .. 6+12
    rr, cc = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    assert (rr[0], rr[-1], cc[0], cc[-1]) == (4, 8, 10, 17)
    m = studies.part_mask(img, "sole")                        # the lowest 30%: rows 4+14 .. 23
    assert np.flatnonzero(m.any(1)).tolist() == list(range(18, 24)) and m.sum() == 6 * 16
    rnd = studies.random_mask_like(img, m, np.random.default_rng(0))
    assert rnd.sum() == m.sum()
    with pytest.raises(ValueError, match="no object"):
        studies.bounding_box(np.zeros((1, 5, 5)))


def test_correspondence_of_empty_masks_is_zero(embedded):
    from zfcore import data
    x, _ = data.load_dataset("test", limit=4)
    out = studies.correspondence(embedded, x, np.zeros((4, 28, 28), bool))
    assert set(out) == {"pool5", "relu6"} and all(v.max() == 0 for v in out.values())


def test_deconv_stages_end_in_the_projection(embedded):
    from zfcore import data
    x, _ = data.load_dataset("test", limit=1)
    rec = embedded.forward(x)
    fwd, back = studies.deconv_stages(embedded, x[0], "pool5", 7)
    assert [op for _, op, _ in back][:3] == ["unpool", "unrelu", "deconv"]
    np.testing.assert_allclose(back[-1][2], rec.project("pool5", 7), atol=1e-5)
    unpooled = back[0][2]                                     # non-zero only where a switch points
    sw = fwd.switches("pool5")[0, 7].ravel()
    assert set(np.flatnonzero(unpooled[7].ravel())) <= set(sw.tolist())
    for rule in RULES:
        got = studies.project_units(embedded, x, "fc7", [3], rule, value=None)
        np.testing.assert_allclose(got[0], rec.project("fc7", 3, rule=rule), atol=1e-4)


def test_crop_boxes_by_hand():
    m = np.arange(2 * 1 * 4 * 4, dtype=float).reshape(2, 1, 4, 4)
    out = studies.crop_boxes(m, [(1, 1), (-1, 2)], (2, 2))         # inside; hanging over the top
    np.testing.assert_array_equal(out[0, 0], [[5, 6], [9, 10]])
    np.testing.assert_array_equal(out[1, 0], [[0, 0], [18, 19]])
    with pytest.raises(ValueError, match="must match"):
        studies.crop_boxes(m, [(0, 0)], (2, 2))


def test_study_modules_do_not_import_torch():
    import os
    import subprocess
    import sys
    code = ("import sys, numpy as np, zfcore.analysis.studies as s, zfcore.analysis.explain as e, zfcore.torch.variants as v; "
            "s.sign_hamming(np.ones((2, 3))); v.variant_spec('large_stride'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_variant_specs_fit_the_image():
    from zfcore.torch import variants
    for name in variants.NAMES:
        net = models.build(variants.variant_spec(name), seed=0)
        assert net(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown variant"):
        variants.variant_spec("wide")


def test_shipped_variants_load():
    from zfcore.torch import variants
    for name in variants.NAMES:
        vnet, rec = variants.load_variant(name)
        k = 9 if name == "large_stride" else 5
        assert vnet.params["conv1.weight"].shape == (32, 1, k, k)
        assert rec["name"] == name and rec["renorm"] == (name != "no_renorm")
        assert rec["config"]["batchnorm"] == (name in variants.ABLATIONS)
        assert 0.88 <= rec["test_acc_float16"] <= 1.0 and rec["config"]["epochs"] == len(rec["epochs"])
        assert vnet(np.zeros((1, 1, 28, 28), np.float32)).shape[1:] == \
            ((10,) if name in variants.ABLATIONS else (128, 4, 4) if name != "large_stride" else (128, 2, 2))
