"""Bad input to the library: hostile and malformed weights files, images, idx files and dataset folders,
concurrent and failed saves, and out-of-range analysis arguments. Every error is one of zfcore's own
(``ZfcoreError``, a ValueError) naming the input and the problem; nothing is left half-written.
Memory limits are measured in a fresh subprocess (peak RSS growth)."""
import gzip
import json
import multiprocessing
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zfcore import analysis, data, models
from zfcore.data import loading
from zfcore.errors import ArgumentError, DataError, WeightsError, ZfcoreError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return models.load_weights(models.default_weights_path("fmnist_zf"))[0]


@pytest.fixture(scope="module")
def net():
    return models.load_model()


# --- weights files -------------------------------------------------------------------------------------
def write_bomb(path, params, member="extra.npy", gib=1):
    """A real weights file plus one member whose .npy data unpacks to ``gib`` GiB of zeros (about 1 MB
    compressed per GiB); a parameter of that name, if any, is left out."""
    models.save_npz(path, {k: v for k, v in params.items() if f"{k}.npy" != member}, "fmnist_zf")
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (gib * 2**28,)})
    header = buf.getvalue()
    chunk = bytes(2**24)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo(member)
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            f.write(header)
            for _ in range(gib * 2**30 // len(chunk)):
                f.write(chunk)
    return path


def peak_rss_growth_mb(code: str) -> tuple[float, str]:
    """Run ``code`` (which sets ``result``) in a fresh interpreter; (peak RSS growth in MB, result)."""
    prog = ("import resource, sys\nsys.path.insert(0, %r)\nimport numpy, zipfile, zfcore.models.weights, zfcore.data\n"
            "import PIL.Image\nbefore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n%s\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nprint((after - before) / 1024)\n"
            "print(result)\n") % (str(REPO), code)
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    growth, result = out.stdout.strip().split("\n", 1)
    return float(growth), result


@pytest.mark.slow
def test_npz_bomb_refused_without_unpacking(params, tmp_path):
    """A ~1 MB .npz whose extra member unpacks to 1 GiB: refused by its member name, in < 200 MB (the
    probe found 2 GB); the same bomb under a parameter's name is refused by its declared size."""
    pytest.importorskip("PIL")  # the memory probe and image files need Pillow
    for member, want in (("extra.npy", "unexpected member 'extra.npy'"),
                         ("fc7.bias.npy", r"shape mismatch for fc7.bias: expected \(10,\), found \(268435456,\)")):
        path = tmp_path / f"bomb-{member}.npz"
        write_bomb(path, params, member)
        assert path.stat().st_size < 8 * 2**20
        growth, result = peak_rss_growth_mb(
            "try:\n    zfcore.models.weights.load_weights(%r)\n    result = 'loaded'\n"
            "except zfcore.errors.WeightsError as e:\n    result = str(e)\n" % str(path))
        assert growth < 200, (member, growth)
        assert str(path) in result and __import__("re").search(want, result), result


def test_npz_member_with_forged_size(params, tmp_path):
    """A parameter member whose .npy header announces another shape is refused before its data is read."""
    src = models.save_weights(params, tmp_path / "w.npz", "fmnist_zf")
    bad = tmp_path / "forged.npz"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(bad, "w") as b:
        for item in a.infolist():
            raw = a.read(item)
            if item.filename == "conv1.weight.npy":
                arr = np.zeros((32, 1, 5, 6), np.float32)
                import io
                buf = io.BytesIO()
                np.save(buf, arr)
                raw = buf.getvalue()
            b.writestr(item, raw)
    with pytest.raises(WeightsError, match=r"forged.npz: shape mismatch for conv1.weight: expected "
                                           r"\(32, 1, 5, 5\), found \(32, 1, 5, 6\)"):
        models.load_weights(bad)


def test_npz_object_member_refused(params, tmp_path):
    path = models.save_weights(params, tmp_path / "w.npz", "fmnist_zf")
    with zipfile.ZipFile(path, "a") as z:
        import io
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("conv9.weight.npy", buf.getvalue())
    with pytest.raises(WeightsError, match="w.npz: .*'conv9.weight.npy'"):
        models.load_weights(path)


@pytest.mark.parametrize("dtype", [np.int8, object, "bfloat16", np.complex64])
def test_save_refuses_non_float_dtypes(params, tmp_path, dtype):
    with pytest.raises(WeightsError, match="w.npz: (cannot store weights as|dtype .* is not)"):
        models.save_weights(params, tmp_path / "w.npz", "fmnist_zf", dtype=dtype)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_save_float_dtypes_round_trip(params, tmp_path, dtype):
    path = models.save_weights(params, tmp_path / "w.npz", "fmnist_zf", dtype=dtype)
    with np.load(path) as z:
        assert z["conv1.weight"].dtype == dtype
    back = models.load_weights(path)[0]
    np.testing.assert_array_equal(back["fc7.weight"], params["fc7.weight"].astype(dtype).astype(np.float32))


def test_bfloat16_pth_loads_as_float32(params, tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in params.items()}
    torch.save(state, tmp_path / "bf16.pth")
    loaded, arch = models.load_weights(tmp_path / "bf16.pth")
    assert arch == "fmnist_zf" and loaded["conv1.weight"].dtype == np.float32
    # independent reference: torch's own bfloat16 -> float32 conversion
    np.testing.assert_array_equal(loaded["conv1.weight"], state["conv1.weight"].float().numpy())


# --- concurrent saves ----------------------------------------------------------------------------------
def _save_in_process(args):
    path, seed, overwrite = args
    p = {k: v + seed for k, v in models.load_weights(models.default_weights_path("fmnist_zf"))[0].items()}
    try:
        models.save_weights(p, path, "fmnist_zf", overwrite=overwrite, meta={"writer": seed})
        return seed
    except FileExistsError:
        return None


def _check_one_valid(path, writers):
    files = sorted(q.name for q in Path(path).parent.iterdir())
    assert files == [Path(path).name], files                   # no temporary file left behind
    loaded, arch, meta = models.load_npz(path)                  # the file is valid
    assert meta["writer"] in writers
    ref = models.load_weights(models.default_weights_path("fmnist_zf"))[0]["fc7.bias"]
    np.testing.assert_array_equal(loaded["fc7.bias"], ref + meta["writer"])


@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_saves_threads(params, tmp_path, overwrite):
    path = tmp_path / "w.npz"
    won = []

    def save(seed):
        try:
            models.save_weights({k: v + seed for k, v in params.items()}, path, "fmnist_zf",
                                overwrite=overwrite, meta={"writer": seed})
            won.append(seed)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=save, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == (8 if overwrite else 1)
    _check_one_valid(path, won)
    if not overwrite:
        assert models.load_npz(path)[2]["writer"] == won[0]


@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_saves_processes(tmp_path, overwrite):
    path = tmp_path / "w.npz"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_save_in_process, [(str(path), s, overwrite) for s in range(4)])
    won = [r for r in results if r is not None]
    assert len(won) == (4 if overwrite else 1)
    _check_one_valid(path, won)


def test_failed_write_keeps_old_file(params, tmp_path, monkeypatch):
    path = models.save_weights(params, tmp_path / "w.npz", "fmnist_zf")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        models.save_weights(params, path, "fmnist_zf", overwrite=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.npz"]


# --- images ----------------------------------------------------------------------------------------------
def test_16bit_png_keeps_its_values(tmp_path):
    pytest.importorskip("PIL")  # the memory probe and image files need Pillow
    from PIL import Image
    a = np.array([[0, 1000, 30000], [40000, 65535, 12345]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    x = data.load_image(tmp_path / "g16.png", mode="L")
    np.testing.assert_allclose(x[0, 0], a / 65535.0, rtol=1e-6, atol=1e-7)   # not saturated at 1.0
    rgb = data.load_image(tmp_path / "g16.png", mode="RGB")
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 2])


def test_decompression_bomb_wrapped(tmp_path, monkeypatch):
    pytest.importorskip("PIL")  # the memory probe and image files need Pillow
    from PIL import Image
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)       # Pillow raises at 2x this
    with pytest.raises(DataError, match="big.png: image too large"):
        data.load_image(tmp_path / "big.png")
    monkeypatch.undo()
    monkeypatch.setattr(loading, "MAX_PIXELS", 1000)              # zfcore's own limit, from the header
    with pytest.raises(DataError, match=r"big.png: image of 300x300 pixels is over the 1000-pixel limit"):
        data.load_image(tmp_path / "big.png")


@pytest.mark.parametrize("size,mode,msg", [((0, 5), "L", "size must be"), ((2.5, 3), "L", "size must be"),
                                           ("ab", "L", "size must be"), ((5, 5), "CMYK", "mode must be"),
                                           ((10**6, 5), "RGB", "size must be")])
def test_bad_size_or_mode_names_the_file(tmp_path, size, mode, msg):
    pytest.importorskip("PIL")  # the memory probe and image files need Pillow
    from PIL import Image
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(ArgumentError, match=f"a.png: {msg}"):
        data.load_image(tmp_path / "a.png", size=size, mode=mode)


# --- idx files and dataset folders ------------------------------------------------------------------------
def test_idx_header_overflow(tmp_path):
    raw = (2051).to_bytes(4, "big") + b"\xff\xff\xff\xff" * 3 + bytes(10)
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    with pytest.raises(DataError, match=r"x-idx3-ubyte: header announces shape \(4294967295, 4294967295, "
                                        r"4294967295\) .* over the"):
        data.read_idx(tmp_path / "x-idx3-ubyte")


def test_idx_gzip_bomb_not_unpacked(tmp_path):
    """A gzip idx whose header is honest but whose payload is padded far past it: refused after reading
    at most the announced size + 1 byte."""
    with gzip.open(tmp_path / "p-idx1-ubyte.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(50 * 2**20))
    with pytest.raises(DataError, match="p-idx1-ubyte.gz: truncated or padded"):
        data.read_idx(tmp_path / "p-idx1-ubyte.gz")


@pytest.mark.parametrize("limit", [-1, 0, 2.5, True])
def test_bad_limit(limit):
    with pytest.raises(ArgumentError, match="limit must be a positive integer"):
        data.load_dataset("test", limit=limit)


def test_images_only_root_not_mixed_with_shipped_labels(tmp_path):
    x, _ = data.load_dataset("test", limit=5)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", (x[:, 0] * 255).astype(np.uint8))
    with pytest.raises(DataError, match=r"holds t10k-images-idx3-ubyte but not t10k-labels-idx1-ubyte"):
        data.load_dataset("test", root=tmp_path)


def test_missing_data_message_names_the_cli_option(tmp_path, monkeypatch):
    monkeypatch.delenv("ZFCORE_DATA", raising=False)
    monkeypatch.setattr(loading, "DEBIAN", tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="--data FOLDER") as e:
        data.load_dataset("train", root=tmp_path / "empty")
    assert "download=True" not in str(e.value).split("from Python")[0]


# --- analysis ranges --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image():
    return data.load_dataset("test", limit=2)[0]


@pytest.mark.parametrize("kw,msg", [
    (dict(target=-1), r"target class -1 out of range 0..9"),
    (dict(target=10), r"target class 10 out of range 0..9"),
    (dict(target=1.0), r"target class must be an integer"),
    (dict(target=0, layer="conv5", feature=-1), r"feature of layer 'conv5' -1 out of range 0..127"),
    (dict(target=0, layer="conv5", feature=128), r"feature of layer 'conv5' 128 out of range 0..127"),
    (dict(target=0, layer="conv6", feature=0), r"unknown layer 'conv6'; did you mean 'conv5'"),
    (dict(target=0, layer="conv5"), r"give both layer and feature"),
])
def test_occlusion_ranges(net, image, kw, msg):
    with pytest.raises(ArgumentError, match=msg):
        analysis.occlusion(net, image[0], **kw)


def test_top_k_empty_set_and_non_integer_k(net, image):
    with pytest.raises(ArgumentError, match=r"non-empty \(N, C, H, W\) image set, got shape \(0, 1, 28, 28\)"):
        analysis.top_k(net, image[:0], "conv5", k=1)
    with pytest.raises(ArgumentError, match="k must be an integer, got 1.5"):
        analysis.top_k(net, image, "conv5", k=1.5)
    with pytest.raises(ArgumentError, match="unknown layer 'conv55'; did you mean 'conv5'"):
        analysis.top_k(net, image, "conv55", k=1)


def test_errors_are_one_family():
    assert issubclass(DataError, ZfcoreError) and issubclass(WeightsError, ValueError)
    assert loading.DataError is DataError
    assert json.loads(json.dumps({"ok": True}))
