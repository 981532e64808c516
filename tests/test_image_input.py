"""Image input: what happens to a user's photos before the network sees them (EXIF orientation, large
photos downscaled while decoding, the aspect ratio kept by a centre crop, images far smaller than the
input refused), folders with entries that cannot be read (skipped with a warning and a count, or one
error with ``strict``), paths that are not image files, and image arrays on the wrong scale (integers)
or with NaN/inf pixels. Each expectation is an independent fact: a pattern drawn by hand, the EXIF
specification's table of orientations, Pillow's own decoding."""
import json
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from zfcore import analysis, cli, data, models
from zfcore.data import loading, sources
from zfcore.errors import ArgumentError, DataError

REPO = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112
# EXIF orientation tag -> how the displayed image is made from the stored one (the EXIF 2.3 table)
DISPLAYED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
             8: lambda a: np.rot90(a, 1)}


@pytest.fixture(scope="module")
def net():
    return models.load_model()


def _jpeg(path, arr, orientation=None, quality=95):
    exif = PIL.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    PIL.fromarray(arr).save(path, quality=quality, exif=exif)
    return path


def _in_thread(fn, timeout=60):
    """fn() in a daemon thread: (result or exception); fails if it does not return (a FIFO opened)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked (did it open a FIFO?)"
    return box


# --- EXIF orientation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    """A JPEG with an orientation tag loads as displayed: the same pixels as the untagged file, turned as
    the EXIF table says."""
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    plain = data.load_image(_jpeg(tmp_path / "plain.jpg", stored))[0].transpose(1, 2, 0)
    tagged = data.load_image(_jpeg(tmp_path / "tagged.jpg", stored, orientation))[0].transpose(1, 2, 0)
    np.testing.assert_array_equal(tagged, DISPLAYED[orientation](plain))


def _up_marker(h, w):
    """Displayed image: top half white, bottom half black (which way is up)."""
    a = np.zeros((h, w), np.uint8)
    a[:h // 2] = 255
    return np.stack([a] * 3, axis=-1)


def test_exif_orientation_in_folders_and_on_the_command_line(tmp_path, capsys):
    """A phone's portrait photo (stored sideways, orientation 6) is upright in folder sources and in
    classify; the summary records the tag."""
    shown = _up_marker(64, 64)
    folder = tmp_path / "photos"
    folder.mkdir()
    _jpeg(folder / "portrait.jpg", np.rot90(shown, 1), 6)          # tag 6: turn 90 degrees clockwise to show
    src = sources.FolderSource(folder, size=28, mode="L")
    x = src.load([0])[0, 0]
    assert x[:12].min() > 0.9 and x[16:].max() < 0.1               # upright: white on top
    rc = cli.main(["classify", str(folder / "portrait.jpg"), "--out", str(tmp_path / "o"), "--quiet"])
    s = json.loads((tmp_path / "o" / "classify.json").read_text())
    assert rc == 0 and s["inputs"][0]["exif_orientation"] == 6 and s["inputs"][0]["pixels"] == [64, 64]


# --- large photos ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """A 4032x3024 JPEG (a phone's 12 Mpx photo): green over the centre square and 64 pixels beyond it,
    red bands left and right of that, a vertical ramp in the blue channel."""
    h, w = 3024, 4032
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 0] = 255
    lo = (w - h) // 2
    a[:, lo - 64:lo + h + 64, 0] = 0
    a[:, lo - 64:lo + h + 64, 1] = 255
    a[:, :, 2] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    return _jpeg(tmp_path_factory.mktemp("phone") / "IMG_0001.jpg", a, quality=90)


def test_phone_photo_is_downscaled_and_centre_cropped(phone):
    x = data.load_image(phone, size=(224, 224), mode="RGB")
    assert x.shape == (1, 3, 224, 224)
    r, g, b = x[0]
    assert r.max() < 0.1 and g.min() > 0.9                        # the centre square only: no red band
    # Pillow's own full-size decoding, the centre square cut out and resized: the same picture
    with PIL.open(phone) as im:
        ref = np.asarray(im.convert("RGB").resize((224, 224), PIL.BILINEAR, box=(504, 0, 3528, 3024)),
                         np.float32) / 255
    assert np.abs(x[0].transpose(1, 2, 0) - ref).mean() < 0.01
    assert b[0].mean() < 0.05 and b[-1].mean() > 0.95             # the ramp: dark at the top


def test_phone_photo_memory_stays_small(phone):
    """Decoded at 1/8 scale (JPEG draft): peak memory grows by far less than the 36 MB of the full
    RGB image."""
    prog = ("import resource, sys\nsys.path.insert(0, %r)\nimport numpy\nimport zfcore.data\n"
            "import PIL.Image, PIL.JpegImagePlugin\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "x = zfcore.data.load_image(%r, size=(224, 224))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n") % (str(REPO), str(phone))
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 15, out.stdout


def test_folder_of_phone_photos_on_the_command_line(tmp_path, phone, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(phone.read_bytes())
    rc = cli.main(["topk", "--layer", "conv1", "--k", "1", "--features", "0", "--images", str(folder),
                   "--out", str(tmp_path / "o"), "--quiet"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads((tmp_path / "o" / "topk.json").read_text())
    assert s["inputs"]["fit"] == "center-crop" and s["inputs"]["skipped"]["count"] == 0
    rc = cli.main(["classify", str(phone), "--out", str(tmp_path / "c"), "--quiet"])
    s = json.loads((tmp_path / "c" / "classify.json").read_text())
    assert rc == 0 and s["inputs"][0]["pixels"] == [3024, 4032]
    assert s["inputs"][0]["fit"] == "center-crop" and s["inputs"][0]["box"] == [504.0, 0.0, 3528.0, 3024.0]


def test_large_images_are_reduced_in_strips_as_a_whole_reduce_would(monkeypatch):
    """The strip-by-strip reduction (no full-size copy of an image with alpha, a palette or 16 bits)
    gives Pillow's own ``Image.reduce`` of the whole image."""
    rng = np.random.default_rng(0)
    rgba = PIL.fromarray(rng.integers(0, 256, (203, 157, 4), dtype=np.uint8), "RGBA")
    g16 = PIL.fromarray(rng.integers(0, 65536, (203, 157), dtype=np.uint16))
    for im, ref in ((rgba, rgba), (g16, g16.convert("I")), (rgba.convert("P"), rgba.convert("P").convert("RGB"))):
        for f in (2, 3, 7):
            monkeypatch.setattr(loading, "_STRIP_PIXELS", 157 * 10)     # strips of 10 rows and fewer
            np.testing.assert_array_equal(np.asarray(loading._shrink(im, f, "RGB")), np.asarray(ref.reduce(f)))


@pytest.mark.parametrize("side", [40, 50])       # Pillow warns between 1x and 2x its limit, raises above
def test_decompression_bomb_is_one_clear_error(tmp_path, monkeypatch, side):
    PIL.new("L", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"bomb.png: image too large"):
            data.load_image(tmp_path / "bomb.png", size=(28, 28))
    assert caught == []                                          # no warning besides the error


# --- folders with entries that cannot be read ---------------------------------------------------------
@pytest.fixture
def messy(tmp_path):
    """Five good 28x28 PNGs among a FIFO, a dangling link, an empty file and a corrupt PNG."""
    x, _ = data.load_dataset("test", limit=5)
    d = tmp_path / "messy"
    d.mkdir()
    for i in range(5):
        PIL.fromarray((x[i, 0] * 255).round().astype(np.uint8)).save(d / f"g{i}.png")
    os.mkfifo(d / "fifo.png")
    os.symlink(d / "gone.png", d / "dangling.png")
    (d / "empty.png").write_bytes(b"")
    (d / "a-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return d, x


def test_folder_skips_unreadable_entries_and_reports_them(net, messy):
    d, x = messy
    events = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        box = _in_thread(lambda: sources.FolderSource(d, size=28, on_skip=lambda p, why: events.append(("skip", p))))
        src = box["value"]
        # the cheap checks ran while listing, before any image was read
        assert sorted(Path(p).name for _, p in events) == ["dangling.png", "empty.png", "fifo.png"]
        assert src.files == ["a-corrupt.png"] + [f"g{i}.png" for i in range(5)]
        box = _in_thread(lambda: analysis.top_k(net, src, "conv1", k=2, features=[0, 3], batch_size=2,
                                                progress=lambda n: events.append(("progress", n))))
    assert "error" not in box, box.get("error")
    tops = box["value"]
    kinds = [k for k, _ in events]
    assert kinds.index("skip", 3) < len(kinds) - 1 - kinds[::-1].index("progress")   # reported during the scan
    assert sorted(Path(p).name for p in src.skipped) == ["a-corrupt.png", "dangling.png", "empty.png", "fifo.png"]
    assert "not a readable image" in src.skipped[str(d / "a-corrupt.png")]
    assert src.describe()["skipped"] == 4 and caught == []       # on_skip given: no warnings
    # by hand: the five good images, ids 1..5 (id 0 is the corrupt file)
    m = net.forward(x, upto="conv1")["conv1"][:, [0, 3]].reshape(5, 2, -1).max(axis=2)
    for j in range(2):
        assert tops.images[j].tolist() == (1 + np.argsort(-m[:, j], kind="stable")[:2]).tolist()


def test_folder_skip_warns_by_default_and_strict_stops(net, messy):
    d, _ = messy
    with pytest.warns(sources.SkippedImageWarning) as caught:
        src = _in_thread(lambda: sources.FolderSource(d, size=28))["value"]
    said = sorted(str(w.message).replace(str(d) + "/", "") for w in caught)
    assert [m.split(":")[0] for m in said] == ["dangling.png", "empty.png", "fifo.png"] and len(src) == 6
    assert said[2] == "fifo.png: is not a regular file (a FIFO); skipped"
    box = _in_thread(lambda: sources.FolderSource(d, size=28, strict=True))
    assert isinstance(box["error"], DataError) and "dangling.png: is a broken symbolic link" in str(box["error"])
    for name in ("fifo.png", "dangling.png", "empty.png"):
        os.unlink(d / name)
    src = sources.FolderSource(d, size=28, strict=True)
    with pytest.raises(DataError, match="a-corrupt.png: not a readable image"):
        analysis.top_k(net, src, "conv1", k=2, batch_size=2)


def test_command_line_skips_with_warnings_and_count_or_stops_with_strict(messy, tmp_path, capsys):
    d, _ = messy
    argv = ["topk", "--layer", "conv1", "--k", "1", "--features", "0", "--images", str(d), "--quiet"]
    box = _in_thread(lambda: cli.main(argv + ["--out", str(tmp_path / "o")]))
    _, err = capsys.readouterr()
    assert box["value"] == 0, err
    lines = err.strip().splitlines()
    for name in ("fifo.png: is not a regular file (a FIFO)", "dangling.png: is a broken symbolic link",
                 "empty.png: is empty", "a-corrupt.png: not a readable image"):
        assert any(line.startswith("zfcore topk: warning: ") and name in line for line in lines), err
    assert "skipped 4 unreadable entries" in lines[-1]
    s = json.loads((tmp_path / "o" / "topk.json").read_text())
    assert s["inputs"]["skipped"]["count"] == 4 and s["inputs"]["strict"] is False
    assert sorted(s["inputs"]["skipped"]["files"]) == ["a-corrupt.png", "dangling.png", "empty.png", "fifo.png"]
    box = _in_thread(lambda: cli.main(argv + ["--strict", "--out", str(tmp_path / "o2")]))
    _, err = capsys.readouterr()
    assert box["value"] == 2 and len(err.strip().splitlines()) == 1, err
    assert "dangling.png: is a broken symbolic link" in err and not (tmp_path / "o2" / "topk.json").exists()


def test_dask_workers_report_what_they_skipped(messy, tmp_path, capsys):
    """On Dask the files that fail to decode are skipped on the workers; the count still reaches
    topk.json."""
    pytest.importorskip("distributed")
    d, _ = messy
    rc = cli.main(["topk", "--layer", "conv1", "--k", "1", "--features", "0", "--images", str(d), "--quiet",
                   "--workers", "1", "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads((tmp_path / "o" / "topk.json").read_text())
    assert sorted(s["inputs"]["skipped"]["files"]) == ["a-corrupt.png", "dangling.png", "empty.png", "fifo.png"]
    assert s["results"][0]["images"] != [0]


# --- paths that are not image files ---------------------------------------------------------------------
def test_not_an_image_file_says_what_it_is(tmp_path, capsys):
    (tmp_path / "somedir").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink(tmp_path / "nothere.png", tmp_path / "link.png")
    (tmp_path / "zero.png").write_bytes(b"")
    cases = {"somedir": "is a folder, not an image file", "pipe.png": r"is not a regular file \(a FIFO\)",
             "link.png": "is a broken symbolic link", "zero.png": r"is empty \(0 bytes\)",
             "missing.png": "no such file"}
    for name, want in cases.items():
        box = _in_thread(lambda: data.load_image(tmp_path / name, size=(28, 28)))
        assert isinstance(box.get("error"), DataError)
        assert re.search(f"{name}: {want}", str(box["error"])), box["error"]
    box = _in_thread(lambda: cli.main(["classify", str(tmp_path / "somedir"), "--out", str(tmp_path / "o")]))
    _, err = capsys.readouterr()
    assert box["value"] == 2 and "somedir: is a folder, not an image file" in err


# --- aspect ratio and small images ----------------------------------------------------------------------
def _band(h, w, horizontal=True):
    """Black image with a white centre square (side min(h, w) + 4): what a centre crop keeps."""
    a = np.zeros((h, w), np.uint8)
    s = min(h, w) // 2 + 2
    if horizontal:
        a[:, w // 2 - s:w // 2 + s] = 255
    else:
        a[h // 2 - s:h // 2 + s] = 255
    return a


@pytest.mark.parametrize("shape", [(30, 90), (90, 30)])
def test_non_square_images_are_centre_cropped(tmp_path, capsys, shape):
    h, w = shape
    PIL.fromarray(_band(h, w, w > h)).save(tmp_path / "wide.png")
    x = data.load_image(tmp_path / "wide.png", size=(28, 28), mode="L")
    assert x.min() > 0.99                                        # only the white centre, not stretched
    assert data.load_image(tmp_path / "wide.png", size=(28, 28), mode="L", fit="stretch").min() < 0.01
    src = sources.FolderSource(tmp_path, size=28)
    np.testing.assert_array_equal(src.load([0]), x)
    rc = cli.main(["classify", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o"), "--quiet"])
    s = json.loads((tmp_path / "o" / "classify.json").read_text())
    side = min(h, w)
    left, top = (w - side) / 2, (h - side) / 2
    assert rc == 0 and s["inputs"][0]["fit"] == "center-crop"
    assert s["inputs"][0]["box"] == [left, top, left + side, top + side]


def test_images_far_smaller_than_the_input_are_refused(tmp_path, capsys):
    PIL.new("L", (5, 5), 200).save(tmp_path / "dot.png")
    PIL.new("L", (7, 7), 200).save(tmp_path / "seven.png")
    with pytest.raises(DataError, match=r"dot.png: image of 5x5 pixels is too small for 28x28"):
        data.load_image(tmp_path / "dot.png", size=(28, 28))
    assert data.load_image(tmp_path / "seven.png", size=(28, 28)).shape == (1, 3, 28, 28)   # 4x: allowed
    assert data.load_image(tmp_path / "dot.png", size=(28, 28), max_upscale=None).shape == (1, 3, 28, 28)
    rc = cli.main(["classify", str(tmp_path / "dot.png"), "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 2 and "dot.png: image of 5x5 pixels is too small" in err


# --- arrays on the wrong scale, non-finite pixels ------------------------------------------------------
def test_integer_images_are_refused_with_the_conversion(net):
    x8 = (data.load_dataset("test", limit=2)[0] * 255).astype(np.uint8)
    want = r"uint8.*astype\(np.float32\) / 255"
    for call in (lambda: net(x8), lambda: net.forward(x8), lambda: net.infer(x8),
                 lambda: analysis.predict(net, x8), lambda: analysis.top_k(net, x8, "conv1", k=1),
                 lambda: sources.ArraySource(x8), lambda: data.imagenet_normalize(np.zeros((1, 3, 4, 4), np.uint8))):
        with pytest.raises(ArgumentError, match=want):
            call()
    assert np.isfinite(net(x8.astype(np.float32) / 255)).all()


def test_nonfinite_pixels_are_refused(net, tmp_path):
    x = data.load_dataset("test", limit=2)[0].copy()
    x[1, 0, 3, 4] = np.nan
    for call in (lambda: net(x), lambda: net.forward(x), lambda: sources.ArraySource(x),
                 lambda: analysis.top_k(net, x, "conv1", k=1)):
        with pytest.raises(ArgumentError, match=r"NaN or infinite"):
            call()
    x[1, 0, 3, 4] = np.inf
    with pytest.raises(ArgumentError, match=r"NaN or infinite"):
        net(x)
    f = np.full((8, 8), 0.5, np.float32)
    f[2, 2] = np.nan
    PIL.fromarray(f, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan.tif: .*NaN or infinite"):
        data.load_image(tmp_path / "nan.tif")
