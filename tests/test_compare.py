"""The comparison with huybery/VisualizingCNN and captum (zfcore.comparison.huybery, zfcore.comparison.compare,
notebook 06), and the benchmarks' timing harness (benchmarks/harness.py, outside the package).

References: the original's own published facts (its hand-written index maps, its demo layers), captum's
``NeuronDeconvolution`` (through ``zfcore.torch.reference``), torch's own ops (``F.conv2d``, ``F.interpolate``,
``MaxUnpool2d``) and hand-checkable fixtures. VGG16 runs with seeded random weights (Kaiming normal,
plus small random conv biases so that a bias mix-up in the forward pass would show) on scikit-image's
``chelsea`` photo, features only (the classifier plays no part in projections from conv layers).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zfcore.comparison import compare, huybery
from zfcore import models
from zfcore.core import ops

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")

VGG_CONVS = huybery.conv_layers("vgg16")
HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "harness.py"


@pytest.fixture(scope="module")
def torch():
    """The torch references (torch, captum); a test that takes this fixture is skipped without them."""
    pytest.importorskip("captum")
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def harness():
    """benchmarks/harness.py, loaded from the source tree (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def skdata():
    return pytest.importorskip("skimage.data")


def vgg_features(seed=0, dtype=np.float32):
    spec = models.features_spec("vgg16")
    params = models.kaiming_params(spec, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for k in params:
        if k.endswith(".bias"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(np.float32)
    return models.build(spec, params, dtype=dtype)


@pytest.fixture(scope="module")
def photo(skdata):
    """chelsea (a cat, like the original's demo image) resized to 224 x 224, uint8 RGB."""
    return huybery.resize_bilinear(skdata.chelsea(), 224)


@pytest.fixture(scope="module")
def vgg32():
    return vgg_features()


@pytest.fixture(scope="module")
def agreement32(torch, vgg32, photo):
    rows, _ = compare.agreement(vgg32, huybery.prepare_input(photo, "BGR"), VGG_CONVS)
    return {r["layer"]: r for r in rows}


@pytest.fixture(scope="module")
def agreement64(torch, skdata):
    """float64 at 112 x 112 (a quarter of the cost; conv5_3's field then spans the whole image)."""
    net = vgg_features(dtype=np.float64)
    small = huybery.resize_bilinear(skdata.chelsea(), 112)
    rows, _ = compare.agreement(net, huybery.prepare_input(small, "BGR"), VGG_CONVS)
    return {r["layer"]: r for r in rows}


# ------------------------------------------------------------------------------------------------
# the re-creation's structure against the original's published facts

def test_index_maps_equal_the_originals_hand_written_ones(torch, vgg32):
    rec = huybery.Recreation(vgg32.spec, vgg32.params, deconv_bias="zero")
    # huybery/VisualizingCNN, models/vgg16_deconv.py: conv2deconv_indices and unpool2pool_indices
    assert rec.conv2deconv == {0: 30, 2: 28, 5: 25, 7: 23, 10: 20, 12: 18, 14: 16, 17: 13, 19: 11,
                               21: 9, 24: 6, 26: 4, 28: 2}
    assert rec.unpool2pool == {26: 4, 21: 9, 14: 16, 7: 23, 0: 30}
    kinds = [type(m).__name__ for m in rec.deconv]
    assert kinds[:3] == ["MaxUnpool2d", "ReLU", "ConvTranspose2d"] and kinds[-1] == "ConvTranspose2d"
    assert len(kinds) == 31 and kinds.count("MaxUnpool2d") == 5 and kinds.count("ConvTranspose2d") == 13
    assert huybery.layer_names("vgg16") == ["conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2",
                                            "conv5_3"]
    # the transposed convs share the conv weights; with deconv_bias="zero" they have no bias at all
    for i, d in rec.conv2deconv.items():
        assert rec.deconv[d].weight.data_ptr() == rec.features[i].weight.data_ptr()
        assert rec.deconv[d].bias is None


def test_hooks_store_conv_output_before_relu(torch, vgg32, photo):
    x = huybery.prepare_input(photo, "BGR")
    rec = huybery.Recreation(vgg32.spec, vgg32.params, deconv_bias="zero")
    rec.forward(x)
    p = vgg32.params
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(p["conv1_1.weight"]),
                                      torch.from_numpy(p["conv1_1.bias"]), padding=1)
    assert torch.equal(rec.feature_maps[0], conv)
    assert (rec.feature_maps[0] < 0).any() and torch.equal(rec.feature_maps[1], conv.clamp(min=0))
    assert set(rec.pool_locs) == {4, 9, 16, 23, 30}


def _tiny():
    """conv(1 -> 2, 1x1, weights 1 and 2, no bias) -> relu -> 2x2 max-pool: hand-checkable."""
    spec = [("conv", "conv", dict(in_channels=1, out_channels=2, kernel=1, stride=1, padding=0)),
            ("relu", "relu", {}), ("pool", "maxpool", dict(kernel=2, stride=2, padding=0))]
    params = {"conv.weight": np.array([1.0, 2.0], np.float32).reshape(2, 1, 1, 1),
              "conv.bias": np.zeros(2, np.float32)}
    return spec, params


def test_selection_keeps_ties_and_the_first_strongest_map(torch):
    spec, params = _tiny()
    # map 1 = 2 * map 0, so map 1 has the larger maximum; 3 is the maximum, at two positions
    x = np.array([[0, 3, 0, 1], [1, 0, 0, 0], [0, 0, 3, -2], [0, 0, 0, 0]], np.float32)[None, None]
    rec = huybery.Recreation(spec, params, deconv_bias="zero")
    rec.forward(x)
    start, sel = rec.select("conv")
    assert sel.feature == 1 and sel.positions == [(0, 1), (2, 2)] and sel.value == 6.0 and not sel.unique
    expected = np.zeros((1, 2, 4, 4), np.float32)
    expected[0, 1, 0, 1] = expected[0, 1, 2, 2] = 6.0
    np.testing.assert_array_equal(start.numpy(), expected)
    out, _ = rec.project("conv")            # transposed 1x1 conv: times the filter weight 2
    np.testing.assert_array_equal(out, 2 * expected[0, 1:])
    out1, sel1 = rec.project("conv", feature=1, position=(2, 2))
    assert sel1.unique and out1[0, 2, 2] == 12.0 and np.count_nonzero(out1) == 1
    # equal maxima in two maps: the first map wins (np.argmax over the per-map maxima)
    params["conv.weight"][1] = 1.0
    rec = huybery.Recreation(spec, params, deconv_bias="zero")
    rec.forward(x)
    assert rec.select("conv")[1].feature == 0


def test_minmax_uint8_by_hand():
    img = np.array([0.0, 1.0, 2.0, -2.0], np.float32).reshape(1, 2, 2)
    # (x - min) / (max - min) * 255 = [127.5, 191.25, 255, 0], truncated
    np.testing.assert_array_equal(huybery.minmax_uint8(img)[:, :, 0], [[127, 191], [255, 0]])
    assert huybery.minmax_uint8(np.ones((3, 2, 2))).shape == (2, 2, 3)
    assert not huybery.minmax_uint8(np.ones((3, 2, 2))).any()


def test_resize_matches_torch_bilinear_half_pixel(torch):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in [(224, 224), (20, 31), (37, 53)]:
        ours = huybery.resize_bilinear(img, size).astype(np.float64)
        t = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None]
        ref = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False,
                                              antialias=False)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() <= 0.5 + 1e-3      # ours is rounded to uint8 (float32 weights)
    np.testing.assert_array_equal(huybery.resize_bilinear(img, (37, 53)), img)
    assert huybery.resize_bilinear(img[:, :, 0], 5).shape == (5, 5)


def test_prepare_input_bgr_uses_the_rgb_statistics():
    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 0] = (255, 0, 0)                       # a red pixel
    bgr, rgb = huybery.prepare_input(img, "BGR"), huybery.prepare_input(img, "RGB")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    # BGR: channel 0 holds blue (0) but is normalised with the red mean and std
    np.testing.assert_allclose(bgr[0, :, 0, 0], [(0 - mean[0]) / std[0], (0 - mean[1]) / std[1],
                                                  (1 - mean[2]) / std[2]], rtol=1e-6)
    np.testing.assert_allclose(rgb[0, :, 0, 0], [(1 - mean[0]) / std[0], (0 - mean[1]) / std[1],
                                                  (0 - mean[2]) / std[2]], rtol=1e-6)
    assert bgr.shape == (1, 3, 1, 2) and bgr.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# zfcore == bias-free re-creation == captum

@pytest.mark.slow
def test_agreement_every_vgg16_conv_layer_float64(agreement64):
    """In float64 the forward passes of numpy and torch pick the same switches everywhere, and the
    three projections agree to rounding at all 13 conv layers."""
    assert list(agreement64) == VGG_CONVS
    for name, r in agreement64.items():
        assert r["ties"] == 1, name                                # a single maximum: comparable
        assert r["flipped switches below"] == 0, name
        assert r["zfcore vs re-creation"] <= 1e-10, (name, r)
        assert r["zfcore vs captum"] <= 1e-10, (name, r)
        assert r["support zfcore"] == r["support re-creation"] == r["support captum"] > 0


@pytest.mark.slow
def test_agreement_every_vgg16_conv_layer_float32(agreement32):
    """float32: <= 1e-5 at every conv layer. Where a near-tie in a pooling window made numpy and torch
    pick different switches (``flipped switches below`` > 0) and the projection passes that window,
    the re-creation fed zfcore's switches must still agree: the switch is then the whole difference."""
    assert list(agreement32) == VGG_CONVS
    unaffected = 0
    for name, r in agreement32.items():
        assert r["ties"] == 1, name
        assert r["re-creation vs captum"] <= 1e-5, (name, r)         # the two torch references
        assert r["zfcore vs re-creation on zfcore's switches"] <= 1e-5, (name, r)
        if r["zfcore vs re-creation on zfcore's switches"] == r["zfcore vs re-creation"]:
            unaffected += 1                      # the projection does not pass a flipped switch
            assert r["zfcore vs re-creation"] <= 1e-5, (name, r)
            assert r["zfcore vs captum"] <= 1e-5, (name, r)
        else:
            assert r["flipped switches below"] > 0, (name, r)
    assert unaffected >= 7, agreement32          # the first layers pass no pool at all


def test_cropped_default_equals_full_projection_here(vgg32, photo):
    """The comparison uses zfcore's default (cropped) path; it equals the whole-map path."""
    rec = vgg32.forward(huybery.prepare_input(photo, "BGR"))
    for name in ("conv3_3", "conv5_3"):
        f = int(rec.top_features(name)[0][0])
        a = rec.project(name, f)
        b = rec.project(name, f, crop=False)
        assert compare.relative_error(a, b) <= 1e-6


# ------------------------------------------------------------------------------------------------
# the original's quirks, measured

def test_random_deconv_biases_cover_the_whole_image(torch, vgg32, photo):
    x = huybery.prepare_input(photo, "BGR")
    layers = [14, 21, 28]                        # conv3_3, conv4_3, conv5_3
    rows = compare.bias_effect(vgg32.spec, vgg32.params, x, layers, bias_seed=0, net=vgg32)
    for r in rows:
        assert r["support random"] > 0.99, r                   # the original's full-image support
        assert r["zero-bias support inside box"], r            # the deconvnet stays in the field
        box_share = r["support zero"]
        assert box_share < 0.9 and r["random-bias support outside box"] > 0.1, r
        assert r["random vs zero"] > 0.1, r                    # and it no longer matches at all
    # seeded: the same seed gives the same biases, another seed others
    a = huybery.Recreation(vgg32.spec, vgg32.params, "random", bias_seed=0)
    b = huybery.Recreation(vgg32.spec, vgg32.params, "random", bias_seed=0)
    c = huybery.Recreation(vgg32.spec, vgg32.params, "random", bias_seed=1)
    assert torch.equal(a.deconv[2].bias, b.deconv[2].bias) and not torch.equal(a.deconv[2].bias, c.deconv[2].bias)
    # PyTorch's default ConvTranspose2d bias: uniform in +-1/sqrt(fan_in), fan_in = out_channels * KH * KW
    d = a.deconv[30]                              # conv1_1's transposed conv: 64 -> 3 channels
    assert d.bias.shape == (3,) and d.bias.abs().max() <= 1 / np.sqrt(3 * 9)


def test_bgr_and_rgb_differ_on_a_colour_photo_not_on_a_grey_one(torch, skdata, vgg32, photo):
    rows = compare.channel_order(vgg32.spec, vgg32.params, photo, ["conv1_1", "conv3_3", "conv5_3"])
    assert all(r["BGR vs RGB as displayed"] > 0.1 and r["BGR vs RGB in RGB order"] > 0.1 for r in rows), rows
    grey = huybery.resize_bilinear(skdata.camera(), 224)
    np.testing.assert_array_equal(huybery.prepare_input(grey, "BGR"), huybery.prepare_input(grey, "RGB"))
    rows = compare.channel_order(vgg32.spec, vgg32.params, grey, ["conv3_3"])
    assert rows[0]["feature BGR"] == rows[0]["feature RGB"] and rows[0]["BGR vs RGB as displayed"] == 0.0


def test_original_figure_and_zfcore_figure(torch, vgg32, photo):
    x = huybery.prepare_input(photo, "RGB")
    rec = huybery.Recreation(vgg32.spec, vgg32.params, "zero")
    theirs = rec.figure(x)
    ours = compare.zfcore_figure(vgg32, x, huybery.layer_names("vgg16"))
    assert len(theirs) == len(ours) == 7
    for (img, sel), (mine, f, pos) in zip(theirs, ours):
        assert img.shape == mine.shape == (224, 224, 3) and img.dtype == mine.dtype == np.uint8
        assert sel.feature == f and sel.positions[0] == pos
        assert img.min() == 0 and img.max() == 255


# ------------------------------------------------------------------------------------------------
# overlapping pools: MaxUnpool2d keeps one value, zfcore (and the gradient) add

def test_unpool_collision_by_hand(torch):
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1.0                           # the centre is the maximum of all four 3x3/2 windows
    _, sw = ops.max_pool2d(x, 3, 2)
    assert (sw == 12).all() and compare.duplicate_switches(sw) == 3
    sig = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 2, 2)
    ours = ops.max_unpool2d(sig, sw, (5, 5))
    theirs = torch.nn.functional.max_unpool2d(torch.from_numpy(sig), torch.from_numpy(sw), 3, 2,
                                              output_size=(5, 5)).numpy()
    added = huybery._unpool_add(torch.from_numpy(sig), torch.from_numpy(sw), (5, 5)).numpy()
    assert ours[0, 0, 2, 2] == added[0, 0, 2, 2] == 10.0
    assert theirs[0, 0, 2, 2] in (1.0, 2.0, 3.0, 4.0)          # one value kept, not the sum
    assert np.count_nonzero(ours) == np.count_nonzero(theirs) == 1


def test_embedded_net_overlapping_pools(torch):
    """fmnist_zf (3x3/2 pools) in float64: zfcore == captum == re-creation with adding unpooling at
    every conv layer; the original's MaxUnpool2d differs wherever switches collide on the path."""
    from zfcore import data

    net = models.build_model("fmnist_zf", seed=0, dtype=np.float64)
    x = data.load_dataset("test", limit=1)[0]
    layers = huybery.conv_layers("fmnist_zf")
    add = {r["layer"]: r for r in compare.agreement(net, x, layers, unpool="add")[0]}
    assign = {r["layer"]: r for r in compare.agreement(net, x, layers, captum=False)[0]}
    for name in layers:
        assert add[name]["zfcore vs captum"] <= 1e-10, add[name]
        assert add[name]["zfcore vs re-creation"] <= 1e-10, add[name]
    assert assign["conv1"]["zfcore vs re-creation"] <= 1e-10          # no pool below conv1
    differ = [n for n in layers if assign[n]["zfcore vs re-creation"] > 1e-3]
    assert differ and all(assign[n]["duplicate switches below"] > 0 for n in differ), assign


# ------------------------------------------------------------------------------------------------
# small helpers

def test_support_relative_error_and_tables(harness):
    a = np.zeros((3, 4, 5))
    a[1, 2, 3] = -1.0
    a[0, 0, 0] = 2.0
    assert compare.support(a) == 2 / 20
    assert compare.relative_error(a, a) == 0.0 and compare.relative_error(2 * a, a) == 1.0
    rows = harness.timing_rows({"zfcore": {"figure": 0.5}, "captum": {"figure": 2.0}})
    assert rows == [{"measure": "figure", "zfcore ms": 500.0, "captum ms": 2000.0, "captum / zfcore": 4.0}]
    table = compare.format_table(rows)
    assert table.splitlines()[0] == "| measure | zfcore ms | captum ms | captum / zfcore |"
    assert len(table.splitlines()) == 3


def test_median_time_calls_and_median(harness):
    """warmup + repeat calls without the shared-machine guard; the median of the timed ones."""
    calls = []
    durations = iter([0.0, 0.03, 0.01, 0.02])      # warm-up, then three timed calls

    def fn():
        calls.append(1)
        time.sleep(next(durations))

    t = harness.median_time(fn, repeat=3, warmup=1)
    assert len(calls) == 4 and 0.02 <= t < 0.03


def test_read_results_table_by_hand(harness, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\n## Comparison timing: a run\n\ntext\n\n| measure | zfcore ms | captum ms |\n"
                  "|---|---:|---:|\n| forward | 12.5 | n/a |\n| figure | 3 | 4 |\n\n## Other\n\n| a |\n|---|\n| 1 |\n",
                  encoding="utf-8")
    rows = harness.read_results_table(md, "Comparison timing")
    assert rows[1] == {"measure": "figure", "zfcore ms": 3.0, "captum ms": 4.0}
    assert rows[0]["zfcore ms"] == 12.5 and rows[0]["captum ms"] != rows[0]["captum ms"]     # n/a: NaN
    with pytest.raises(ValueError, match="RESULTS.md: no table under a heading starting with 'Missing'"):
        harness.read_results_table(md, "Missing")


def test_importing_compare_does_not_import_torch():
    code = ("import sys, zfcore.comparison, zfcore.comparison.compare, zfcore.comparison.huybery; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    code = (f"import sys; sys.path.insert(0, {str(HARNESS.parent)!r}); import harness; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_crop_and_tied_selections(torch):
    img = np.arange(100).reshape(10, 10)
    assert compare.crop(img, (2, 3, 4, 5)).shape == (3, 3)                # inclusive box
    assert compare.crop(img, (0, 0, 1, 1), pad=2).shape == (4, 4)         # clipped at the border
    assert compare.crop(img, (2, 3, 4, 5), pad=1)[0, 0] == img[1, 2]
    # a uniform image ties every position of an unpadded conv's output; a single bright pixel does not
    spec = [("conv1", "conv", dict(in_channels=1, out_channels=2, kernel=3, stride=1, padding=0)),
            ("relu1", "relu", {}), ("pool1", "maxpool", dict(kernel=2, stride=2, padding=0))]
    params = models.kaiming_params(spec, seed=0)
    rec = huybery.Recreation(spec, params, deconv_bias="zero")
    flat = np.ones((1, 1, 8, 8), np.float32)
    bump = np.zeros((1, 1, 8, 8), np.float32)
    bump[0, 0, 3, 4] = 1.0
    counts = compare.tied_selections(rec, [flat, bump], ["conv1"])
    assert counts == [36, 1]


def test_panel_grid_fits_the_page():
    """Rows of panels with labels beside them, notes under them and a grey bar: drawn at the printed
    width, with no text below the report's minimum size (zfcore.viz.page)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from zfcore.viz import page

    page.use()
    rng = np.random.default_rng(0)
    rows = [(f"row {k}\nsecond line", [None] + [(rng.random((28, 28)) * 255).astype(np.uint8)] * 7)
            for k in range(5)]
    fig = compare.panel_grid(rows, [f"conv{k}\nmap {k}" for k in range(8)],
                             [[f"map {k}" for k in range(8)]] * 5, colorbar="grey level")
    try:
        assert page.problems(fig) == []
        assert len(fig.axes) == 5 * 8 + 1                                # the panels and the bar
        assert fig.axes[1].get_xlabel() == "map 1" and fig.axes[0].get_ylabel() == "row 0\nsecond line"
        assert fig.get_size_inches()[0] <= page.TEXT_WIDTH
    finally:
        plt.close(fig)
