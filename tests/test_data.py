"""Dataset loading: the shipped test split, the search order, and one clear error per bad file."""
import numpy as np
import pytest

from zfcore import data
from zfcore.data import loading
from zfcore.errors import ArgumentError, DataError


def test_shipped_test_split_is_the_published_one():
    x, y = data.load_dataset("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    # Fashion-MNIST's test split is balanced: 1,000 images per class (Xiao et al., 2017).
    assert np.bincount(y).tolist() == [1000] * 10


def test_classes():
    assert len(data.CLASSES) == 10 and data.CLASSES[0] == "T-shirt/top" and data.CLASSES[9] == "Ankle boot"


def _write_split(root, images, labels, split="train", gz=True):
    stem_i, stem_l = loading._FILES[split]
    suf = ".gz" if gz else ""
    data.write_idx(root / (stem_i + suf), images)
    data.write_idx(root / (stem_l + suf), labels)


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip_gzip_or_plain(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, 7, dtype=np.uint8)
    _write_split(tmp_path, imgs, labs, gz=gz)
    x, y = data.load_dataset("train", root=tmp_path)
    np.testing.assert_array_equal((x[:, 0] * 255).round().astype(np.uint8), imgs)
    np.testing.assert_array_equal(y, labs)


def test_search_order_env_then_torchvision_layout(tmp_path, monkeypatch):
    imgs = np.zeros((3, 28, 28), np.uint8)
    tv = tmp_path / "tv" / "FashionMNIST" / "raw"
    tv.mkdir(parents=True)
    _write_split(tv, imgs, np.array([1, 2, 3], np.uint8), gz=False)
    monkeypatch.setenv("ZFCORE_DATA", str(tmp_path / "tv"))
    _, y = data.load_dataset("train")
    assert y.tolist() == [1, 2, 3]
    # an explicit root wins over $ZFCORE_DATA
    (tmp_path / "explicit").mkdir()
    _write_split(tmp_path / "explicit", imgs[:1], np.array([7], np.uint8))
    _, y = data.load_dataset("train", root=tmp_path / "explicit")
    assert y.tolist() == [7]


def test_missing_split_lists_every_option(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(loading, "DEBIAN", tmp_path / "no-debian")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError) as e:
        data.load_dataset("train")
    msg = str(e.value)
    for hint in ("root=", "$ZFCORE_DATA", "FashionMNIST/raw", "dataset-fashion-mnist", "download=True"):
        assert hint in msg


def test_bad_magic_names_file(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x07" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad magic number"):
        data.read_idx(p)


def test_truncated_payload(tmp_path):
    p = data.write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"x-idx3-ubyte: truncated"):
        data.read_idx(p)


def test_truncated_gzip_stream(tmp_path):
    p = data.write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((50, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DataError, match=r"x-idx3-ubyte.gz: cannot read"):
        data.read_idx(p)


def test_image_label_count_mismatch(tmp_path):
    data.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="3 images but .* 2 labels"):
        data.load_dataset("train", root=tmp_path)


def test_labels_file_given_as_images(tmp_path):
    data.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(3, np.uint8))
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="holds a 1-d array, expected 3-d"):
        data.load_dataset("train", root=tmp_path)


def test_write_idx_refuses_to_overwrite(tmp_path):
    p = data.write_idx(tmp_path / "a-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(FileExistsError):
        data.write_idx(p, np.ones(3, np.uint8))
    assert data.read_idx(p).tolist() == [0, 0, 0]


def test_unknown_split():
    with pytest.raises(ArgumentError, match="unknown split 'validation'"):
        data.load_dataset("validation")


def test_load_image_png_and_errors(tmp_path):
    Image = pytest.importorskip("PIL.Image")

    arr = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = data.load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 12, 10)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), arr / 255.0, atol=1e-7)
    assert data.load_image(tmp_path / "a.png", size=(8, 6)).shape == (1, 3, 8, 6)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        data.load_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="no such file"):
        data.load_image(tmp_path / "missing.png")


def test_imagenet_normalize_by_hand():
    """(x - mean) / std per RGB channel, with torchvision's published ImageNet statistics."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = np.empty((2, 3, 1, 2), np.float32)
    for c in range(3):
        x[:, c, 0, 0] = mean[c]                  # -> 0
        x[:, c, 0, 1] = mean[c] + std[c]         # -> 1
    out = data.imagenet_normalize(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out[:, :, 0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, :, 0, 1], 1.0, atol=1e-6)
    with pytest.raises(ArgumentError, match=r"\(N, 3, H, W\) RGB array"):
        data.imagenet_normalize(np.zeros((1, 1, 2, 2), np.float32))
