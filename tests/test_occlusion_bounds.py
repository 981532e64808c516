"""Occlusion at its bounds: batched occlusion against each position occluded by hand, memory bounded by
the batch whatever the grid, the default square and stride as fractions of the image's side, strides
and squares as large as the image, and the command line's progress bar, JSON record and figure
(colour bars, rows and columns named, titles whole)."""
import json
import re
import tracemalloc

import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.analysis import sensitivity
from zfcore.core import ops
from zfcore.errors import ArgumentError

from projcases import vgg16_features


@pytest.fixture(scope="module")
def net():
    return models.load_model()


@pytest.fixture(scope="module")
def xy():
    return data.load_dataset("test", limit=4)


def by_hand(net, image, size, rows, cols, fill, layer, feature, chunk):
    """(p (R*Q, classes), feature totals (R*Q,)): every position occluded by hand, row by row, and the
    network run on ``chunk`` copies at a time."""
    copies = []
    for r in rows:
        for c in cols:
            a = image.copy()
            a[:, r:r + size, c:c + size] = fill
            copies.append(a)
    probs, acts = [], []
    for i in range(0, len(copies), chunk):
        logits, kept = net.infer(np.stack(copies[i:i + chunk]), keep=(layer,))
        probs.append(ops.softmax(logits))
        acts.append(kept[layer][:, feature].sum(axis=(1, 2)))
    return np.concatenate(probs), np.concatenate(acts)


def test_batched_occlusion_equals_each_position_occluded_by_hand(net, xy):
    x, y = xy
    rows = cols = [0, 5, 10, 15, 20, 21]             # 7x7 square, stride 5, the last flush with the border
    for batch in (1, 4):
        occ = analysis.occlusion(net, x[1], int(y[1]), size=7, stride=5, fill=0.3, layer="conv3", feature=2,
                                 batch_size=batch)
        assert occ.rows.tolist() == rows and occ.cols.tolist() == cols and occ.batch_size == batch
        p, act = by_hand(net, x[1], 7, rows, cols, 0.3, "conv3", 2, chunk=batch)   # same batches: exact
        assert np.array_equal(occ.prob.ravel(), p[:, int(y[1])])
        assert np.array_equal(occ.predicted.ravel(), p.argmax(1))
        assert np.array_equal(occ.feature_activity.ravel(), act)
        p1, act1 = by_hand(net, x[1], 7, rows, cols, 0.3, "conv3", 2, chunk=len(rows) * len(cols))
        np.testing.assert_allclose(occ.prob.ravel(), p1[:, int(y[1])], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(occ.feature_activity.ravel(), act1, rtol=1e-5)


def test_memory_is_bounded_by_the_batch_not_the_grid(net, xy, monkeypatch):
    """784 positions (a 1x1 square at every pixel) in batches of 8: the network never sees more than 8
    copies, and the peak allocation stays far below all 784 copies (784 x 3136 bytes = 2.4 MB; what
    grows with the grid is the result, 784 probabilities and classes)."""
    x, _ = xy
    seen = []

    def infer(batch, upto=None, keep=()):                # the network's work left out: only the copies
        seen.append(len(batch))
        return np.zeros((len(batch), 10), np.float32), {}

    monkeypatch.setattr(net, "infer", infer)
    analysis.occlusion(net, x[0], 0, size=14, stride=14, batch_size=8)    # first-call imports untraced
    seen.clear()
    tracemalloc.start()
    try:
        occ = analysis.occlusion(net, x[0], 0, size=1, stride=1, batch_size=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert occ.prob.shape == (28, 28) and sum(seen) == 784 and max(seen) == 8
    assert peak < 784 * x[0].nbytes / 8, f"peak {peak} bytes; all copies: {784 * x[0].nbytes}"


def test_default_batch_fits_its_budget_on_vgg16():
    """VGG16's convs at 224 x 224: the default batch is a few images (not the 256 of a 28-pixel
    image), and a forward pass of that many stays within the budget."""
    net = models.build(vgg16_features(), seed=0)
    b = sensitivity.default_batch(net, (3, 224, 224))
    assert 1 <= b < sensitivity.MAX_BATCH
    assert sensitivity.default_batch(models.load_model(), (1, 28, 28)) == sensitivity.MAX_BATCH
    x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
    tracemalloc.start()
    try:
        net.infer(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= sensitivity.BATCH_BYTES


def test_default_square_and_stride_are_fractions_of_the_side(net, xy):
    x, y = xy
    assert sensitivity.default_square((1, 28, 28)) == (6, 2)           # the report's 6x6, stride 2
    assert sensitivity.default_square((3, 224, 224)) == (48, 16)
    assert sensitivity.default_square((3, 120, 300)) == (26, 9)        # of the shorter side: 25.7, 8.6
    for side, (size, stride) in ((28, (6, 2)), (224, (48, 16))):
        rows, cols = sensitivity.occlusion_grid((side, side), size, stride)
        assert len(rows) == len(cols) == 12
    a = analysis.occlusion(net, x[0], int(y[0]))
    b = analysis.occlusion(net, x[0], int(y[0]), size=6, stride=2)
    assert (a.size, a.stride) == (6, 2) and np.array_equal(a.prob, b.prob)


def test_stride_and_square_as_large_as_the_image(net, xy):
    x, y = xy
    with pytest.raises(ArgumentError, match=r"occluder stride must be in 1..28, got 29"):
        analysis.occlusion(net, x[0], 0, size=6, stride=29)
    with pytest.raises(ArgumentError, match=r"occluder stride must be >= 1, got 0"):
        analysis.occlusion(net, x[0], 0, size=6, stride=0)
    occ = analysis.occlusion(net, x[0], 0, size=6, stride=28)          # the two borders only
    assert occ.rows.tolist() == occ.cols.tolist() == [0, 22]
    occ = analysis.occlusion(net, x[0], int(y[0]), size=28, fill=0.5)  # one position: all of the image
    p = ops.softmax(net.infer(np.full((1, 1, 28, 28), 0.5, np.float32))[0])[0]
    assert occ.prob.shape == (1, 1) and occ.prob[0, 0] == p[int(y[0])] and occ.predicted[0, 0] == p.argmax()
    with pytest.raises(ArgumentError, match=r"occluder size must be in 1..20, got 21"):
        sensitivity.occlusion_grid((20, 50), 21, 1)                    # the square fits the shorter side
    assert sensitivity.occlusion_grid((20, 50), 4, 50)[1].tolist() == [0, 46]
    with pytest.raises(ArgumentError, match=r"occlude: 784 copies .* over max_bytes"):
        analysis.occlude(x[0], 1, 1, max_bytes=10**6)


# --- the command line ------------------------------------------------------------------------------------
pytest.importorskip("matplotlib")


def run(argv, capsys):
    from zfcore import cli
    rc = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_records_every_argument_and_names_rows_and_columns(tmp_path, capsys):
    rc, out, _ = run(["occlusion", "--test-index", 0, "--fill", 0.25, "--size", 8, "--stride", 3,
                      "--batch-size", 7, "--layer", "conv5", "--out", tmp_path / "a"], capsys)
    s = json.loads((tmp_path / "a" / "occlusion.json").read_text())
    r = s["results"][0]
    assert rc == 0 and (s["fill"], s["size"], s["stride"], s["batch_size"]) == (0.25, 8, 3, 7)
    assert s["target"] == r["target"] == 9 and s["layer"] == "conv5" and isinstance(s["feature"], int)
    assert s["input_shape"] == [1, 28, 28] and r["square_rows"] == [0, 3, 6, 9, 12, 15, 18, 20]
    m = re.search(r"(\d+)x\1 square, top-left corner at row (\d+), column (\d+)", out)
    assert m and (int(m[1]), int(m[2]), int(m[3])) == (8, r["prob_min_at"]["row"], r["prob_min_at"]["col"])
    assert r["prob_min_at"]["row"] in r["square_rows"] and r["prob_min_at"]["col"] in r["square_cols"]
    rc, _, _ = run(["occlusion", "--test-index", 0, "--out", tmp_path / "b", "--quiet"], capsys)
    s = json.loads((tmp_path / "b" / "occlusion.json").read_text())
    assert (s["size"], s["stride"], s["fill"], s["results"][0]["grid"]) == (6, 2, 0.0, [12, 12])


def test_cli_defaults_on_a_photo_wider_than_tall(tmp_path, capsys, xy):
    """A 56x28 image (the boot between two black bands): the model sees its centred 28x28 square, so the
    default square and stride are 6 and 2 pixels of that square (its 3/14 and 1/14), and the worst
    square is given in the file's pixels too: 14 columns right of the input's."""
    from PIL import Image
    x, _ = xy
    wide = np.zeros((28, 56), np.uint8)
    wide[:, 14:42] = (x[0, 0] * 255).round().astype(np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    rc, _, _ = run(["occlusion", tmp_path / "wide.png", "--out", tmp_path / "a", "--quiet"], capsys)
    s = json.loads((tmp_path / "a" / "occlusion.json").read_text())
    r = s["results"][0]
    assert rc == 0 and (s["size"], s["stride"], r["grid"]) == (6, 2, [12, 12])
    assert s["inputs"][0]["box"] == [14, 0, 42, 28] and s["inputs"][0]["scale"] == 1
    assert r["prob_min_in_image"] == {"row": r["prob_min_at"]["row"], "col": r["prob_min_at"]["col"] + 14,
                                      "side": 6}


def test_cli_progress_bar_shown_unless_quiet(tmp_path, capsys, monkeypatch):
    tqdm = pytest.importorskip("tqdm")

    class Eager(tqdm.tqdm):                              # no 1 s delay before the bar shows
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "delay": 0, "mininterval": 0})

    monkeypatch.setattr(tqdm, "tqdm", Eager)
    rc, _, err = run(["occlusion", "--test-index", 0, "--out", tmp_path / "a"], capsys)
    assert rc == 0 and "occlusion" in err and "144/144" in err
    rc, out, err = run(["occlusion", "--test-index", 0, "--out", tmp_path / "b", "--quiet"], capsys)
    assert rc == 0 and out == "" and err == ""


def figure_of(argv, tmp_path, capsys, monkeypatch):
    from zfcore.cli import common
    figs = []
    monkeypatch.setattr(common, "png_bytes", lambda fig: figs.append(fig) or b"")
    assert run(argv + ["--out", tmp_path, "--quiet"], capsys)[0] == 0
    return figs[0]


def test_cli_figure_has_colour_bars_named_axes_and_whole_titles(tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt

    fig = figure_of(["occlusion", "--test-index", 0, "--layer", "conv5"], tmp_path, capsys, monkeypatch)
    try:
        bars = [ax._colorbar for ax in fig.axes if hasattr(ax, "_colorbar")]
        assert [b.ax.get_ylabel() for b in bars] == ["probability", "", "total activation"]
        assert "Ankle boot" in [t.get_text() for t in bars[1].ax.get_yticklabels()]    # classes named
        panels = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
        assert panels[0].get_ylabel() == "row" and all(ax.get_xlabel() == "column" for ax in panels)
        renderer = fig.canvas.get_renderer()
        drawn = fig.get_tightbbox(renderer)                # inches: all that is drawn, within the figure
        w, h = fig.get_size_inches()
        assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01
        for t in [fig._suptitle] + [ax.title for ax in panels] + [b.ax.yaxis.label for b in bars]:
            e, box = t.get_window_extent(renderer), fig.bbox
            assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()
    finally:
        plt.close(fig)


def test_class_map_names_the_nine_most_frequent_classes_and_other():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zfcore.cli.cmd_occlusion import _class_map

    counts = [11, 10, 9, 8, 7, 6, 5, 4, 3, 3, 3, 3]                    # 12 classes, 0 the most frequent
    predicted = np.repeat(np.arange(12), counts).reshape(8, 9)
    occ = sensitivity.Occlusion(4, np.arange(8) * 2, np.arange(9) * 2, np.ones((8, 9)), predicted, None,
                                None, None, 2, 0.0, 1)
    fig, ax = plt.subplots()
    try:
        _class_map(fig, ax, occ, "vgg16", 1000)
        bar = next(a._colorbar for a in fig.axes if hasattr(a, "_colorbar"))
        names = [t.get_text() for t in bar.ax.get_yticklabels()]
        assert names == [f"class {c}" for c in range(9)] + ["other"]
    finally:
        plt.close(fig)


def test_occlusion_map_cells_reach_halfway_to_their_neighbours(net, xy):
    """7x7 squares at rows/cols 0, 5, ..., 20 and 21 (the last flush with the border): centres 3, 8, 13,
    18, 23, 24, so the cells' edges lie at 0.5, 5.5, 10.5, 15.5, 20.5, 23.5, 24.5; one position (the
    whole image) spans the square; a colour bar when asked for."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zfcore.viz.plotting import occlusion_map

    x, y = xy
    occ = analysis.occlusion(net, x[1], int(y[1]), size=7, stride=5)
    whole = analysis.occlusion(net, x[1], int(y[1]), size=28)
    fig, axes = plt.subplots(1, 2)
    try:
        mesh = occlusion_map(axes[0], occ.prob, occ, colorbar="probability")
        edges = mesh.get_coordinates()[:, 0, 1]        # row edges (y), down the first column of corners
        assert edges.tolist() == [0.5, 5.5, 10.5, 15.5, 20.5, 23.5, 24.5]
        assert axes[0].get_ylim() == (24.5, 0.5) and axes[0].get_xlim() == (0.5, 24.5)
        assert [a._colorbar.ax.get_ylabel() for a in fig.axes if hasattr(a, "_colorbar")] == ["probability"]
        im = occlusion_map(axes[1], whole.prob, whole)
        assert im.get_extent() == [-0.5, 27.5, 27.5, -0.5]
    finally:
        plt.close(fig)
