"""The feature atlas (``zfcore.viz.atlas``, ``zfcore atlas``): its pages show ``analysis.top_k``'s own
projections, patches and images; its folder is refused or replaced as a whole, never mixed; and a real
browser (Debian's chromium, driven by playwright) opens it from ``file://``, follows a layer and a
feature, loads every image, navigates by keyboard and by the jump box, logs no error and makes no
request that leaves the machine."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import offline_page

import zfcore as zf
from zfcore import analysis
from zfcore.data import CLASSES
from zfcore.viz import atlas

LAYERS = ["conv1", "conv3"]
K = 3


@pytest.fixture(scope="module")
def data():
    images, labels = zf.data.load_dataset("test", limit=120)
    return images, labels


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    images, labels = data
    net = zf.models.load_model()
    out = tmp_path_factory.mktemp("atlas") / "site"
    src = zf.data.sources.ArraySource(images, labels)
    meta = atlas.build_atlas(net, src, out, LAYERS, k=K, classes=list(CLASSES), accuracy=True,
                             names=lambda i: f"test[{i}]")
    return net, out, meta


def _tile(sheet, x, y, w, h):
    return sheet[y:y + h, x:x + w]


def test_pages_show_top_k_own_projections_patches_and_images(built, data):
    net, out, meta = built
    images, labels = data
    tops = analysis.top_k(net, images, LAYERS, k=K)          # an independent run of top_k
    assert json.loads((out / "atlas.json").read_text())["layers"].keys() == set(LAYERS)
    for layer in LAYERS:
        t = tops[layer]
        rows = meta["layers"][layer]["rows"]
        assert len(rows) == len(t.features) == net.params[f"{layer}.weight"].shape[0]
        rf = net.receptive_field(layer, input_size=images.shape[1:])
        h, w = rf.size
        for j in (0, len(t.features) // 2, len(t.features) - 1):
            f = int(t.features[j])
            assert rows[j]["images"] == t.images[j].tolist() and rows[j]["values"] == t.values[j].tolist()
            sheet = atlas.read_png(out / layer / f"{f}.png")
            crops = rf.patches(t.projections[j], np.arange(K), t.positions[j])
            for q in range(K):
                x = q * (w + 1)
                assert np.array_equal(_tile(sheet, x, 0, w, h), atlas.to_uint8(crops[q], "symmetric"))
                assert np.array_equal(_tile(sheet, x, h + 1, w, h), atlas.to_uint8(t.patches[j, q], "clip"))
                i = t.images[j, q]
                assert np.array_equal(atlas.read_png(out / "images" / f"{i}.png"), atlas.to_uint8(images[i], "clip"))
            assert sheet.shape[0] == 2 * h + 1                    # projections and patches only
            page = (out / layer / f"{f}.html").read_text()
            for q in range(K):
                i = t.images[j, q]
                assert f"test[{i}]" in page and CLASSES[labels[i]] in page and f'src="../images/{i}.png"' in page
    shown = {i for layer in LAYERS for i in tops[layer].images.ravel().tolist()}
    assert {int(p.stem) for p in (out / "images").iterdir()} == shown        # each winner once, no other
    acc = (analysis.predict(net, images).argmax(1) == labels).mean()
    assert meta["accuracy"] == pytest.approx(acc)


def test_first_layer_pages_show_the_filter(built):
    net, out, _ = built
    w = net.params["conv1.weight"]
    assert np.array_equal(atlas.read_png(out / "conv1" / "5.filter.png"), atlas.to_uint8(w[5], "symmetric"))
    assert not (out / "conv3" / "5.filter.png").exists()


def test_out_refused_before_any_work_or_replaced_whole(tmp_path, data):
    net = zf.models.load_model()
    images = data[0][:20]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(zf.errors.ArgumentError, match="is a file, not a folder"):
        atlas.build_atlas(net, images, tmp_path / "afile", ["conv1"], k=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(zf.errors.ArgumentError, match=r"holds files that are not an atlas \(notes.txt\)"):
        atlas.build_atlas(net, images, mine, ["conv1"], k=2, force=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    site = tmp_path / "site"
    atlas.build_atlas(net, images, site, ["conv1", "conv2"], k=2)
    with pytest.raises(FileExistsError, match="holds an atlas; replace it with --force"):
        atlas.build_atlas(net, images, site, ["conv1"], k=2)
    assert (site / "conv2").is_dir()
    atlas.build_atlas(net, images, site, ["conv1"], k=2, force=True)
    assert not (site / "conv2").exists() and (site / "conv1" / "0.html").exists()   # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine", "site"]    # nothing left beside


def test_cli_atlas(tmp_path, capsys):
    from zfcore.cli.main import main

    out = tmp_path / "site"
    assert main(["atlas", "--layer", "conv2", "--limit", "40", "--k", "2", "--out", str(out), "--quiet"]) in (0, None)
    meta = json.loads((out / "atlas.json").read_text())
    assert meta["source"]["count"] == 40 and list(meta["layers"]) == ["conv2"] and meta["k"] == 2
    assert "accuracy" in meta and (out / "conv2" / "63.html").exists()
    code = main(["atlas", "--layer", "conv2", "--limit", "40", "--k", "2", "--out", str(out), "--quiet"])
    assert code == 2 and "holds an atlas; replace it with --force" in capsys.readouterr().err


def test_in_a_real_browser(built):
    _, out, _ = built
    errors = []

    images_ok = """async () => {
        const urls = new Set();
        document.querySelectorAll('.tile').forEach(e => {
            const m = getComputedStyle(e).backgroundImage.match(/url\\("(.*)"\\)/);
            if (m) urls.add(m[1]); });
        const loads = [...urls].map(u => new Promise(ok => { const i = new Image();
            i.onload = () => ok(i.naturalWidth > 0 ? null : u); i.onerror = () => ok(u); i.src = u; }));
        const imgs = [...document.querySelectorAll('img')];
        const bad = (await Promise.all(loads)).filter(Boolean).concat(imgs.filter(i =>
            !i.complete || i.naturalWidth === 0).map(i => i.src));
        return {n: urls.size, imgs: imgs.length, bad: bad}; }"""
    with offline_page() as (page, blocked, failed):
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "index.html").resolve().as_uri(), wait_until="load")
        page.click("a[href='conv3/index.html']")
        page.wait_for_url("**/conv3/index.html")
        layer = page.evaluate(images_ok)
        order = page.eval_on_selector_all(".feat", "els => els.map(e => +e.dataset.index)")
        page.click("button[data-sort=activation]")
        acts = page.eval_on_selector_all(".feat", "els => els.map(e => +e.dataset.activation)")
        page.click(".feat >> nth=0")
        page.wait_for_url(re.compile(r".*/conv3/\d+\.html$"))
        first = page.url
        feature = page.evaluate(images_ok)
        page.keyboard.press("ArrowRight")
        page.wait_for_url(lambda url: url != first)
        after_right = page.url
        page.keyboard.press("u")
        page.wait_for_url("**/conv3/index.html")
        page.fill("form.jump input", "conv1/7")
        page.press("form.jump input", "Enter")
        page.wait_for_url("**/conv1/7.html")
        conv1 = page.evaluate(images_ok)
        page.fill("form.jump input", "conv9/1")
        page.press("form.jump input", "Enter")
        jump_error = page.inner_text(".jump-error")
    assert blocked == [] and failed == [] and errors == []
    assert layer["n"] == 1 and feature["n"] == 1 and conv1["n"] == 2 and feature["imgs"] == conv1["imgs"] == K
    assert layer["bad"] == feature["bad"] == conv1["bad"] == []
    assert order == sorted(order) and acts == sorted(acts, reverse=True)
    f = int(Path(first).stem)
    assert Path(after_right).name == f"{f + 1}.html"
    assert "no layer" in jump_error


def test_cli_atlas_over_a_folder_names_files_and_skips_unreadable_entries(tmp_path, capsys):
    from PIL import Image

    from zfcore.cli.main import main

    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(images / f"p{i}.png")
    (images / "notes.png").write_text("not an image")
    out = tmp_path / "site"
    code = main(["atlas", "--images", str(images), "--layer", "conv1", "--k", "2", "--out", str(out), "--quiet"])
    assert code in (0, None)
    meta = json.loads((out / "atlas.json").read_text())
    assert meta["source"]["count"] == 6 and "1 unreadable entries skipped" in meta["source"]["description"]
    assert "accuracy" not in meta
    page = (out / "conv1" / "0.html").read_text()
    assert sum(f"p{i}.png" in page for i in range(5)) == 2
    assert "notes.png" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_vgg16_atlas_over_photos_on_dask(tmp_path, capsys):
    """VGG16 with random weights over a folder of colour photos, scanned by two Dask workers: the
    pages name the files, the weights are said to be random, and each winning photo is stored once,
    as the model sees it (centre-cropped and resized to 224 x 224)."""
    pytest.importorskip("distributed")
    from PIL import Image

    from zfcore.cli.main import main

    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(images / f"photo{i}.jpg")
    out = tmp_path / "site"
    code = main(["atlas", "--model", "vgg16", "--weights", "random", "--images", str(images), "--layer",
                 "conv1_1", "--k", "2", "--workers", "2", "--out", str(out), "--quiet"])
    assert code in (0, None)
    meta = json.loads((out / "atlas.json").read_text())
    assert meta["model"]["arch"] == "vgg16" and meta["model"]["weights"].startswith("random weights")
    rows = meta["layers"]["conv1_1"]["rows"]
    assert len(rows) == 64 and meta["source"]["count"] == 3
    winners = {i for r in rows for i in r["images"]}
    stored = {int(p.stem): atlas.read_png(p) for p in (out / "images").iterdir()}
    assert set(stored) == winners and all(a.shape == (224, 224, 3) for a in stored.values())
    page = (out / "conv1_1" / "0.html").read_text()
    assert sum(f"photo{i}.jpg" in page for i in range(3)) == 2
    assert "random weights" in capsys.readouterr().err
