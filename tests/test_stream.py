"""Top-k over a source (zfcore.analysis.topk, zfcore.data.sources): the streamed result (one scan in batches,
only the winners loaded again) equals the in-memory computation on the shipped test set (``in_memory``
below: the maxima of the whole array, np.argsort(-values, kind="stable") over all images, one forward pass
of the winners, their projections, boxes and patches); the per-feature state's merge is associative and
commutative and breaks ties by image id (checked against np.argsort(-values, kind="stable") over all
images); folders of PNG files written here give the result of the same images loaded by hand; bad input
gives one clear error. numpy only (Pillow for the folder cases, torchvision for the ImageFolder order
when installed)."""
import pickle

import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.data import sources
from zfcore.analysis import topk
from zfcore.errors import ArgumentError, DataError

LAYERS = ["conv2", "conv5"]
FIELDS = ("features", "images", "positions", "values", "boxes", "patches")


@pytest.fixture(scope="module")
def net():
    """The embedded network in float64. The streamed and the in-memory computations run the same images
    in batches of other sizes, and a float32 GEMM may round one image's values differently with the
    batch's size (OpenBLAS's Haswell kernel does); that last bit can flip a pooling switch at a near-tie
    and move a projection. In float64 such near-ties are 2^29 times rarer, so exact equality of the ids
    and positions tests the merge, the tie order and the bookkeeping, not the BLAS."""
    return models.load_model().astype(np.float64)


@pytest.fixture(scope="module")
def images():
    return data.load_dataset("test", limit=2000)[0]


def assert_same(got, ref):
    """Features, images, positions, boxes and patches identical; values within 1e-12 relative (a GEMM
    over a batch of another size may round an image's value in the last bit: one ulp was seen with a
    one-thread BLAS); projections within 1e-6 of their largest magnitude (float32 GEMMs round
    differently with a one-thread BLAS, which zfcore.analysis.parallel's threads use, and with more)."""
    assert got.layer == ref.layer
    for f in FIELDS:
        a, b = getattr(got, f), getattr(ref, f)
        assert a.shape == b.shape and a.dtype == b.dtype, f
        if f == "values":
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=f)
        else:
            np.testing.assert_array_equal(a, b, err_msg=f)
    np.testing.assert_allclose(got.projections, ref.projections, rtol=0,
                               atol=1e-6 * np.abs(ref.projections).max())


def in_memory(net, images, layer, k, features=None, batch_size=500, maxima=None):
    """The top-k of ``images`` (N, C, H, W) in memory, written out: per feature the first k of
    np.argsort(-maxima, kind="stable") over all images, one forward pass of the distinct winners, each
    entry projected on its own, the boxes and patches of its receptive field. ``maxima``: the
    (values, positions) of analysis.scan_maxima for these images and this layer."""
    vals, poss = analysis.scan_maxima(net, images, layer, batch_size) if maxima is None else maxima
    features = np.arange(vals.shape[1]) if features is None else np.atleast_1d(np.asarray(features))
    order = np.argsort(-vals[:, features], axis=0, kind="stable")[:k].T          # (F', k)
    pos = poss[order, features[:, None]]                                          # (F', k, 2)
    uniq, inv = np.unique(order, return_inverse=True)
    rec = net.forward(images[uniq], upto=layer)
    proj = rec.project_batch(layer, np.repeat(features, k), images=inv.reshape(-1),
                             positions=pos.reshape(-1, 2))
    rf = rec.receptive_field(layer)
    return analysis.TopK(layer, features, order, pos, vals[order, features[:, None]],
                         proj.reshape((len(features), k) + proj.shape[1:]),
                         rf.boxes(pos, clip=images.shape[2:]), rf.patches(images, order, pos))


# --- equal to the in-memory computation -------------------------------------------------------------------
@pytest.mark.parametrize("batch_size,features", [(500, None), (333, np.arange(0, 64, 5))])
def test_equals_in_memory_top_k(net, images, batch_size, features):
    """2,000 shipped test images, conv2 and conv5 (all 64 + 128 features, or every fifth), k = 9: one
    scan for both layers, in batches that divide N (500) or not (333). The reference: ``in_memory`` of
    each layer over the array, its maxima from analysis.scan_maxima over the whole array with the same
    batch size (the same arithmetic in every batch)."""
    got = analysis.top_k(net, sources.TestSetSource(limit=2000), LAYERS, k=9, features=features,
                         batch_size=batch_size)
    assert list(got) == LAYERS
    maxima = analysis.scan_maxima(net, images, LAYERS, batch_size=batch_size)
    for layer in LAYERS:
        assert_same(got[layer], in_memory(net, images, layer, k=9, features=features, maxima=maxima[layer]))


def test_small_batches_features_and_one_layer(net, images):
    """Batches of 7 over 50 images, a feature subset, an array as the source, a str layer -> one TopK."""
    x = images[:50]
    got = analysis.top_k(net, x, "conv3", k=4, features=[5, 0, 77], batch_size=7)
    assert isinstance(got, analysis.TopK)
    assert_same(got, in_memory(net, x, "conv3", k=4, features=[5, 0, 77], batch_size=7))
    per = analysis.top_k(net, x, ["conv1", "conv4"], k=2, features={"conv1": [3], "conv4": [1, 2]}, batch_size=9)
    assert per["conv1"].features.tolist() == [3] and per["conv4"].features.tolist() == [1, 2]
    assert_same(per["conv4"], in_memory(net, x, "conv4", k=2, features=[1, 2]))


def test_k_equal_to_n_and_progress(net, images):
    x = images[:5]
    seen = []
    got = analysis.top_k(net, x, "conv1", k=5, features=[0], batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1]
    assert sorted(got.images[0].tolist()) == [0, 1, 2, 3, 4]
    assert_same(got, in_memory(net, x, "conv1", k=5, features=[0]))


def test_a_users_record_is_left_as_it_is(net, images):
    """top_k between a forward pass and its projections changes nothing the record gives."""
    rec = net.forward(images[:2])
    before = rec.project("conv5", 17, image=1), rec["conv5"].copy(), rec.strongest("conv5", 17, image=1)
    analysis.top_k(net, images[10:40], "conv3", k=2, features=[0, 1], batch_size=8)
    analysis.top_k(net, images[10:40], ["conv1", "conv2"], k=2, features=[0], threads=1)
    np.testing.assert_array_equal(rec.project("conv5", 17, image=1), before[0])
    np.testing.assert_array_equal(rec["conv5"], before[1])
    assert rec.strongest("conv5", 17, image=1) == before[2] and rec.names[-1] == net.layer_names[-1]


class Recording(sources.ArraySource):
    """An array source that records which ids each load asked for."""

    def __init__(self, images):
        super().__init__(images)
        self.loads = []

    def load(self, ids):
        self.loads.append(np.asarray(ids).tolist())
        return super().load(ids)


def test_memory_bounded_and_only_winners_loaded(net, images):
    """Pass 1 loads each image once, in batches of batch_size; pass 2 loads the winners only, each once."""
    src = Recording(images[:120])
    got = analysis.top_k(net, src, ["conv1", "conv3"], k=3, features=[0, 1], batch_size=32)
    scan = src.loads[:4]
    assert [len(b) for b in scan] == [32, 32, 32, 24] and sum(scan, []) == list(range(120))
    second = sum(src.loads[4:], [])
    winners = sorted(set(got["conv1"].images.ravel()) | set(got["conv3"].images.ravel()))
    assert second == winners and all(len(b) <= 32 for b in src.loads[4:])


# --- the mergeable state ------------------------------------------------------------------------------
def _maxima(rng, n, F, levels=5):
    """Random maxima with many ties: values from a few levels (0.0 and -0.0 among them), some NaN (one
    feature all NaN), positions random."""
    vals = rng.integers(0, levels, size=(n, F)).astype(np.float32)
    vals[(vals == 0) & (rng.random((n, F)) < 0.5)] = -0.0
    vals[rng.random((n, F)) < 0.05] = np.nan
    vals[:, -1] = np.nan
    return vals, rng.integers(0, 7, size=(n, F, 2))


def _reference(vals, poss, k):
    """The in-memory selection: np.argsort(-values, kind="stable") over all images, per feature."""
    order = np.argsort(-vals, axis=0, kind="stable")[:k].T
    F = vals.shape[1]
    return order, vals[order, np.arange(F)[:, None]], poss[order, np.arange(F)[:, None]]


def _equal(a, b):
    return (a.k == b.k and np.array_equal(a.values, b.values, equal_nan=True) and np.array_equal(a.ids, b.ids)
            and np.array_equal(a.positions, b.positions))


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_and_orders_give_one_state(seed):
    rng = np.random.default_rng(seed)
    n, F, k = 200, 6, 9
    vals, poss = _maxima(rng, n, F)
    ids, ref_vals, ref_pos = _reference(vals, poss, k)
    for _ in range(6):
        cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 12), replace=False))   # parts of 1..199
        parts = [topk.TopState.from_batch(vals[p], poss[p], p, k) for p in np.split(rng.permutation(n), cuts)]
        rng.shuffle(parts)
        while len(parts) > 1:                     # merge random pairs in random order: any tree
            i, j = sorted(rng.choice(len(parts), 2, replace=False))
            parts[i] = topk.merge(parts[j], parts[i])
            del parts[j]
        s = parts[0]
        np.testing.assert_array_equal(s.ids, ids)
        np.testing.assert_array_equal(s.values, ref_vals)
        np.testing.assert_array_equal(s.positions, ref_pos)
    # updates batch after batch, in order, as the scan does
    s = topk.TopState.empty(F, k)
    for lo in range(0, n, 37):
        s = s.update(vals[lo:lo + 37], poss[lo:lo + 37], np.arange(lo, min(lo + 37, n)))
    np.testing.assert_array_equal(s.ids, ids)


def test_merge_is_associative_and_commutative():
    rng = np.random.default_rng(7)
    a, b, c = (topk.TopState.from_batch(*_maxima(rng, 20, 4, levels=3), np.arange(20) + 20 * i, 5)
               for i in range(3))
    assert _equal(topk.merge(a, b), topk.merge(b, a))
    assert _equal(topk.merge(topk.merge(a, b), c), topk.merge(a, topk.merge(b, c)))


def test_ties_go_to_the_smaller_image_id():
    """Planted by hand: feature 0 has 3.0 at images 9, 4, 6 and 1.0 elsewhere; feature 1 all equal."""
    vals = np.ones((10, 2), np.float32)
    vals[[9, 4, 6], 0] = 3.0
    poss = np.zeros((10, 2, 2), np.int64)
    late = topk.TopState.from_batch(vals[5:], poss[5:], np.arange(5, 10), 4)      # seen first
    early = topk.TopState.from_batch(vals[:5], poss[:5], np.arange(5), 4)
    s = topk.merge(late, early)
    assert s.ids[0].tolist() == [4, 6, 9, 0] and s.values[0].tolist() == [3, 3, 3, 1]
    assert s.ids[1].tolist() == [0, 1, 2, 3]
    # NaN maxima go last and -0.0 ties with 0.0, as in argsort(-values, kind="stable")
    v = np.array([1.0, np.nan, 3.0, -0.0, 0.0, np.nan, 3.0], np.float32)[:, None]
    p = np.zeros((7, 1, 2), np.int64)
    parts = [topk.TopState.from_batch(v[i:i + 2], p[i:i + 2], np.arange(i, min(i + 2, 7)), 7) for i in (4, 0, 6, 2)]
    s = topk.merge(topk.merge(parts[0], parts[1]), topk.merge(parts[2], parts[3]))
    assert s.ids[0].tolist() == np.argsort(-v[:, 0], kind="stable").tolist() == [2, 6, 0, 3, 4, 1, 5]


def test_merge_refuses_unlike_states():
    with pytest.raises(ArgumentError, match="states differ"):
        topk.merge(topk.TopState.empty(3, 2), topk.TopState.empty(3, 4))


# --- folders of image files ---------------------------------------------------------------------------
def _write_pngs(root, arrays, names):
    from PIL import Image
    for a, name in zip(arrays, names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(p)


def _by_hand(root, rel_paths):
    """The images loaded by hand with Pillow: (N, 1, 28, 28) float32 in [0, 1]."""
    from PIL import Image
    return np.stack([np.asarray(Image.open(root / r), dtype=np.float32)[None] / 255 for r in rel_paths])


@pytest.fixture(scope="module")
def uint8_images(images):
    return (images[:40, 0] * 255).round().astype(np.uint8)


NAMES = (["b.png", "a/z.png", "a-b/c.PNG", "a/sub/x.png", "A.png", "a/sub/deeper/y.png", "c/d.png"]
         + [f"set{i % 3}/img{i:03d}.png" for i in range(33)])


def test_folder_recursive_equals_images_loaded_by_hand(net, tmp_path, uint8_images):
    pytest.importorskip("PIL")
    _write_pngs(tmp_path, uint8_images, NAMES)
    (tmp_path / "notes.txt").write_text("not an image")
    src = sources.FolderSource(tmp_path, size=28, mode="L")
    order = sorted(NAMES)                                   # relative POSIX paths, sorted as strings
    assert src.files == order and order[:4] == ["A.png", "a-b/c.PNG", "a/sub/deeper/y.png", "a/sub/x.png"]
    x = _by_hand(tmp_path, order)
    got = analysis.top_k(net, src, ["conv1", "conv4"], k=3, batch_size=16)
    for layer in ("conv1", "conv4"):
        assert_same(got[layer], in_memory(net, x, layer, k=3))
    assert len(sources.FolderSource(tmp_path, size=28, limit=5)) == 5
    assert isinstance(sources.open_folder(tmp_path, size=28), sources.FolderSource)    # images at the top


def test_image_folder_layout(net, tmp_path, uint8_images):
    pytest.importorskip("PIL")
    names = [f"{cls}/{sub}img{i}.png" for i, (cls, sub) in enumerate(
        [("shoe", ""), ("bag", "x/"), ("bag", ""), ("coat", "a-b/"), ("coat", "a/"), ("coat", "")] * 5)]
    _write_pngs(tmp_path, uint8_images[:30], names)
    (tmp_path / "README.txt").write_text("not an image, not a class")
    src = sources.open_folder(tmp_path, size=28)
    assert isinstance(src, sources.ImageFolderSource) and src.classes == ["bag", "coat", "shoe"]
    want = {n: ["bag", "coat", "shoe"].index(n.split("/")[0]) for n in names}
    assert [want[f] for f in src.files] == src.labels.tolist() and sorted(src.files) == sorted(names)
    assert src.labels.tolist() == sorted(src.labels.tolist())                # grouped by class
    # within a class: folder by folder in sorted order (the class folder, coat/a, coat/a-b), then file names
    coat = [f for f in src.files if f.startswith("coat/")]
    assert [f.rsplit("/", 1)[0] for f in coat][::5] == ["coat", "coat/a", "coat/a-b"]
    try:
        from torchvision.datasets import ImageFolder
    except ImportError:
        ImageFolder = None
    if ImageFolder is not None:                                # the same ids as torchvision's dataset
        tv = ImageFolder(str(tmp_path))
        assert [p[len(str(tmp_path)) + 1:] for p, _ in tv.samples] == src.files
        assert [c for _, c in tv.samples] == src.labels.tolist() and tv.classes == src.classes
    x = _by_hand(tmp_path, src.files)
    assert_same(analysis.top_k(net, src, "conv2", k=4, features=[0, 9], batch_size=8),
                in_memory(net, x, "conv2", k=4, features=[0, 9]))


def test_folder_for_an_imagenet_model(tmp_path):
    """RGB files of another size for VGG16: resized to 224x224 and ImageNet-normalised, as the command
    line loads single images (cli_common.load_inputs)."""
    pytest.importorskip("PIL")
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ("b.png", "a/c.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / name)
    src = sources.open_folder(tmp_path, **sources.for_model("vgg16"))
    assert src.files == ["a/c.jpg", "b.png"] and src.shape == (3, 224, 224)
    want = np.concatenate([data.imagenet_normalize(data.load_image(tmp_path / f, size=(224, 224), mode="RGB"))
                           for f in src.files])
    np.testing.assert_array_equal(src.load([0, 1]), want)
    assert sources.for_model("fmnist_zf") == {"size": (28, 28), "mode": "L", "imagenet": False}


def test_sources_pickle_small():
    src = sources.TestSetSource(limit=30)
    x = src.load([3, 1])
    assert x.shape == (2, 1, 28, 28) and len(src) == 30
    back = pickle.loads(pickle.dumps(src))
    assert len(pickle.dumps(src)) < 1000 and len(back) == 30
    np.testing.assert_array_equal(back.load([3, 1]), x)
    np.testing.assert_array_equal(back.labels, data.load_dataset("test", limit=30)[1])
    arr = sources.ArraySource(x)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(arr)).load([1]), x[1:])


# --- bad input ------------------------------------------------------------------------------------------
def test_bad_folders(tmp_path):
    with pytest.raises(ArgumentError, match="nothere: not a folder"):
        sources.open_folder(tmp_path / "nothere", size=28)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArgumentError, match="empty: holds no image files"):
        sources.FolderSource(tmp_path / "empty", size=28)
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "classes" / "dog").mkdir()
    (tmp_path / "classes" / "dog" / "d.png").write_bytes(b"")
    with pytest.raises(DataError, match="cat: class folder holds no image files"):
        sources.open_folder(tmp_path / "classes", size=28)
    with pytest.raises(ArgumentError, match="mode must be"):
        sources.FolderSource(tmp_path / "classes", size=28, mode="CMYK")


def test_corrupt_png_is_one_clear_error(net, tmp_path, uint8_images):
    pytest.importorskip("PIL")
    _write_pngs(tmp_path, uint8_images[:6], [f"i{i}.png" for i in range(6)])
    (tmp_path / "i3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"i3.png: not a readable image"):
        analysis.top_k(net, sources.FolderSource(tmp_path, size=28, strict=True), "conv1", k=2, batch_size=4)


def test_bad_arguments(net, images):
    x = images[:10]
    with pytest.raises(ArgumentError, match="unknown layer 'conv55'; did you mean 'conv5'"):
        analysis.top_k(net, x, ["conv1", "conv55"])
    with pytest.raises(ArgumentError, match=r"k must be in 1..10, got 11"):
        analysis.top_k(net, x, "conv1", k=11)
    with pytest.raises(ArgumentError, match="layer 'fc6' is not spatial"):
        analysis.top_k(net, x, "fc6", k=1)
    with pytest.raises(ArgumentError, match=r"features must be distinct integers in 0..31"):
        analysis.top_k(net, x, "conv1", k=1, features=[32])
    with pytest.raises(ArgumentError, match="layers listed twice"):
        analysis.top_k(net, x, ["conv1", "conv1"], k=1)
    with pytest.raises(ArgumentError, match="batch_size must be >= 1"):
        analysis.top_k(net, x, "conv1", k=1, batch_size=0)
    with pytest.raises(ArgumentError, match=r"non-empty \(N, C, H, W\) image set, got shape \(0, 1, 28, 28\)"):
        analysis.top_k(net, x[:0], "conv1", k=1)
    with pytest.raises(ArgumentError, match="non-empty real"):
        analysis.top_k(net, sources.ArraySource(x[:0]), "conv1", k=1)
    with pytest.raises(ArgumentError, match="non-empty real"):
        analysis.top_k(net, x.astype(complex), "conv1", k=1)
    with pytest.raises(ArgumentError, match=r"unknown rule 'deconv'.*expected one of 'deconvnet', 'guided', 'gradient'"):
        analysis.top_k(net, x, "conv1", k=1, rule="deconv")


def test_streaming_imports_numpy_only():
    """The single-process path imports neither dask nor torch nor Pillow (for an array or the test set)."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, zfcore.analysis as a, zfcore.data.sources as src, zfcore.analysis.distributed, zfcore.models as m; "
            "a.top_k(m.load_model(), src.TestSetSource(limit=12), ['conv1', 'conv2'], k=2, features=[0]); "
            "bad = [n for n in ('torch', 'dask', 'distributed', 'PIL', 'matplotlib') if n in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
