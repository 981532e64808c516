"""Property tests (hypothesis) for the two loaders that read untrusted files: ``zfcore.data.load_image``
and ``zfcore.models.weights.load_weights``. Random bytes, truncated files and random image modes, sizes and
bit depths: each either loads correctly (checked against Pillow / numpy, independently) or raises
zfcore's own error (``ZfcoreError``), never anything else. Memory on hostile ~1 MB files is measured in
a fresh subprocess (peak RSS growth under 200 MB)."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from memory import rss_growth
from zfcore import data, models
from zfcore.errors import ZfcoreError

PIL = pytest.importorskip("PIL.Image")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

MODES = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "I;16": 16, "I": 32, "F": 32, "CMYK": 8}
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")


def encode(arr_seed, mode, h, w, fmt) -> bytes | None:
    rng = np.random.default_rng(arr_seed)
    if mode in ("I;16",):
        im = PIL.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "I":
        im = PIL.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32), mode="I")
    elif mode == "F":
        im = PIL.fromarray(rng.random((h, w), dtype=np.float32), mode="F")
    else:
        im = PIL.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


def check_loaded_or_own_error(path, size, mode):
    try:
        x = data.load_image(path, size=size, mode=mode)
    except ZfcoreError as e:
        assert str(path) in str(e)
        return None
    c = 3 if mode == "RGB" else 1
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[:2] == (1, c)
    if size is not None:
        assert x.shape[2:] == tuple(size)
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    return x


@FAST
@given(st.binary(max_size=3000), st.sampled_from([None, (7, 5)]), st.sampled_from(["L", "RGB"]))
def test_image_loader_random_bytes(tmp_path, raw, size, mode):
    (tmp_path / "r.png").write_bytes(raw)
    check_loaded_or_own_error(tmp_path / "r.png", size, mode)


@FAST
@given(st.integers(0, 2**16), st.sampled_from(sorted(MODES)), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from(FORMATS), st.one_of(st.just(1.0), st.floats(0.0, 1.0)), st.sampled_from([None, (9, 13)]),
       st.sampled_from(["L", "RGB"]))
def test_image_loader_random_images_and_truncations(tmp_path, seed, pmode, h, w, fmt, cut, size, mode):
    raw = encode(seed, pmode, h, w, fmt)
    assume(raw is not None)
    p = tmp_path / f"i.{fmt.lower()}"
    p.write_bytes(raw[:int(len(raw) * cut)] if cut < 1 else raw)
    x = check_loaded_or_own_error(p, size, mode)
    if cut == 1 and x is not None and size is None:
        # independent reference: Pillow's own decoding of the file, scaled by its bit depth
        with PIL.open(p) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                ref = np.clip(np.asarray(im, np.float64) / 65535.0, 0, 1)[None]
            elif im.mode == "F":
                ref = np.clip(np.asarray(im, np.float64), 0, 1)[None]
            else:
                ref = np.asarray(im.convert(mode), np.float64) / 255.0
                ref = ref[None] if ref.ndim == 2 else ref.transpose(2, 0, 1)
        if ref.shape[0] == 1 and mode == "RGB":
            ref = np.repeat(ref, 3, axis=0)
        np.testing.assert_allclose(x[0], ref, atol=1e-6)


@pytest.fixture(scope="module")
def good_npz(tmp_path_factory):
    params = models.load_weights(models.default_weights_path("fmnist_zf"))[0]
    return models.save_weights(params, tmp_path_factory.mktemp("w") / "w.npz", "fmnist_zf").read_bytes()


@FAST
@given(st.binary(max_size=3000), st.sampled_from([".npz", ".pth"]))
def test_weights_loader_random_bytes(tmp_path, raw, suffix):
    if suffix == ".pth":
        pytest.importorskip("torch")
    p = tmp_path / f"r{suffix}"
    p.write_bytes(raw)
    with pytest.raises(ZfcoreError, match=str(p)):
        models.load_weights(p)


@FAST
@given(st.floats(0.0, 0.999), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_weights_loader_truncated_or_damaged(tmp_path, good_npz, cut, flips):
    raw = bytearray(good_npz[:int(len(good_npz) * cut)] if cut else good_npz)
    for where, byte in flips:
        if raw:
            raw[int(where * (len(raw) - 1))] = byte
    p = tmp_path / "d.npz"
    p.write_bytes(bytes(raw))
    try:
        params, arch = models.load_weights(p)
    except ZfcoreError as e:
        assert str(p) in str(e)
        return
    assert arch == "fmnist_zf"                     # a damaged byte in slack space: still a valid file
    models.check_params("fmnist_zf", params)


def _try(call: str) -> str:
    return ("try:\n    %s\n    result = 'loaded'\nexcept zfcore.errors.ZfcoreError as e:\n"
            "    result = 'refused: ' + str(e)\n" % call)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["random-npz", "random-png", "huge-png", "largest-png"])
def test_memory_on_hostile_1mb_files(tmp_path, case):
    """Peak RSS growth under 200 MB for ~1 MB hostile inputs (the .npz bomb: test_bad_input.py)."""
    rng = np.random.default_rng(0)
    if case.startswith("random"):
        p = tmp_path / f"r.{case[7:]}"
        p.write_bytes(rng.bytes(2**20))
    elif case == "huge-png":      # a header claiming 60000 x 60000 pixels, zeros compress well
        p = tmp_path / "huge.png"
        PIL.new("L", (20000, 1)).save(p)
        raw = bytearray(p.read_bytes())
        import struct
        import zlib
        raw[16:24] = struct.pack(">II", 60000, 60000)
        raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
        p.write_bytes(bytes(raw))
    else:                          # the largest image decoded at full size, RGB
        p = tmp_path / "largest.png"
        PIL.new("RGB", (2048, 2048)).save(p)
    assert p.stat().st_size <= 2**20 + 4096
    call = (f"zfcore.models.weights.load_weights({str(p)!r})" if p.suffix == ".npz"
            else f"zfcore.data.load_image({str(p)!r})")
    growth, result = rss_growth(_try(call), "import numpy, zipfile, zfcore.models.weights, zfcore.data, "
                                "zfcore.errors, PIL.Image, PIL.PngImagePlugin")
    assert growth < 200, (case, growth, result)
    if case == "largest-png":
        assert result == "loaded"
    else:
        assert result.startswith("refused: ") and str(p) in result
