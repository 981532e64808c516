"""An atlas of every feature: a static, offline website of what each unit of a network responds to.

``build_atlas(net, source, out)`` runs ``zfcore.analysis.top_k`` over an image source (every feature of
the chosen layers, one scan for all) and writes:

- ``index.html``: the model (layers, output shapes, receptive fields, the accuracy where the source has
  labels) and one entry per layer;
- ``<layer>/index.html``: a grid of all the layer's features, each shown by its strongest projection,
  sortable by activation, by the class purity of its top images (where labels are known) or by index;
- ``<layer>/<f>.html``: feature ``f``'s top-k projections (cropped to the receptive field) above the
  image patches under them and the whole images (the field outlined), with each image's id, class and
  activation; for the first conv layer the filter itself; links to the previous and next feature and to
  the layer;
- ``atlas.json``: what was built (model, source, layers, k, rule) and, per layer and feature, the
  top-k image ids, activations, positions and boxes, the values the pages show.

Images are small PNG files: one per feature (its projections and patches), one per layer (a sprite of
its thumbnails) and one per image that wins anywhere (``images/<id>.png``, stored once and shared by
every feature page that shows it), shown through CSS at a fixed size with pixels kept square. Every page works from
``file://`` and from any static server: no script or style is fetched, nothing from the internet;
``atlas.js`` gives keyboard navigation (left and right: previous and next; ``u``: up a level) and a box
to jump to ``layer/feature``. Projections are shown with 0 as mid-grey and +-max|x| as white/black
(``plotting.to_display(..., "symmetric")``), each tile scaled on its own.
"""
from __future__ import annotations

import html
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from zfcore.errors import ArgumentError
from zfcore.viz.plotting import to_display

MARK = "atlas.json"            # the file that says a folder holds an atlas (and what was built)
SHOW = 96                      # CSS pixels of one tile on a feature page
THUMB = 64                     # CSS pixels of one thumbnail on a layer page
SPRITE_COLUMNS = 16
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
ASSETS = Path(__file__).with_name("atlas_assets")


# --- tiles and PNGs -------------------------------------------------------------------------------------
def to_uint8(tile: np.ndarray, mode: str) -> np.ndarray:
    """A (C, H, W) array as the atlas shows it: (H, W) grey or (H, W, 3) RGB uint8."""
    return np.round(to_display(tile, mode) * 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) grey or (H, W, 3) RGB uint8 array (compressed as far as zlib goes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def read_png(path) -> np.ndarray:
    """The pixels of a PNG the atlas wrote (for checks)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _sheet(rows: list[list[np.ndarray]], gap: int = 1):
    """Tiles laid out row by row (each row's tiles share a shape) on a white sheet. Returns (pixels,
    [[(x, y, w, h) of each tile] per row])."""
    colour = rows[0][0].ndim == 3
    width = max(sum(t.shape[1] + gap for t in row) for row in rows) - gap
    height = sum(row[0].shape[0] + gap for row in rows) - gap
    sheet = np.full((height, width, 3) if colour else (height, width), 255, np.uint8)
    places, y = [], 0
    for row in rows:
        x, line = 0, []
        for t in row:
            h, w = t.shape[:2]
            sheet[y:y + h, x:x + w] = t
            line.append((x, y, w, h))
            x += w + gap
        places.append(line)
        y += row[0].shape[0] + gap
    return sheet, places


def feature_tiles(top, j: int, net, input_shape, display) -> dict:
    """The two rows of feature ``j`` of ``top`` (a ``TopK``) over images of ``input_shape`` (C, H, W):
    projections cropped to the receptive field and the image patches under them (shown through
    ``display``); uint8 tiles."""
    rf = net.receptive_field(top.layer, input_size=input_shape)
    crops = rf.patches(top.projections[j], np.arange(top.images.shape[1]), top.positions[j])
    return {"projection": [to_uint8(c, "symmetric") for c in crops],
            "patch": [to_uint8(display(p), "clip") for p in top.patches[j]]}


def _colour_like(rows):
    """All rows grey, or all RGB (a colour projection of a grey image cannot happen, but a grey tile
    beside RGB ones is widened)."""
    if all(t.ndim == 2 for r in rows for t in r):
        return rows
    return [[np.repeat(t[..., None], 3, 2) if t.ndim == 2 else t for t in r] for r in rows]


# --- pages ----------------------------------------------------------------------------------------------
def _page(title: str, root: str, body: str, nav: dict) -> str:
    links = "".join(f'<link rel="{k}" href="{html.escape(v)}">' for k, v in nav.items() if v)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="stylesheet" href="{root}atlas.css">{links}'
            f'</head>\n<body data-root="{root}">\n<header><a href="{root}index.html">atlas</a>'
            f'<form class="jump"><label>go to <input name="to" placeholder="layer/feature" '
            f'size="14" autocomplete="off"></label> <span class="jump-error"></span></form></header>\n'
            f'<main>\n{body}\n</main>\n<footer>keys: ← → previous / next, u up, / the jump box'
            f'</footer>\n<script src="{root}layers.js"></script><script src="{root}atlas.js"></script>'
            f'\n</body></html>\n')


def _sprite_cell(href, x, y, w, h, sheet_w, sheet_h, size, cls="tile"):
    s = size / max(w, h)
    return (f'<span class="{cls}" style="width:{w * s:.0f}px;height:{h * s:.0f}px;'
            f'background-image:url({href});background-size:{sheet_w * s:.2f}px {sheet_h * s:.2f}px;'
            f'background-position:-{x * s:.2f}px -{y * s:.2f}px"></span>')


def _box_overlay(box, H, W, size):
    top, left, bottom, right = (int(v) for v in box)
    s = size / max(H, W)
    return (f'<span class="box" style="top:{top * s:.1f}px;left:{left * s:.1f}px;'
            f'width:{(right - left + 1) * s:.1f}px;height:{(bottom - top + 1) * s:.1f}px"></span>')


def _value_row(label, cells):
    return f"<tr><th>{label}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def feature_page(layer: str, f: int, n: int, place: dict, info: dict, filter_cell: str = "") -> str:
    """The HTML of feature ``f`` (of ``n``) of ``layer``: ``place`` the tiles' cells of its PNG,
    ``info`` its image ids (their PNGs are ``../images/<id>.png``), names, classes and activations."""
    href, sw, sh = place["href"], place["width"], place["height"]
    prev_ = f"{f - 1}.html" if f > 0 else None
    next_ = f"{f + 1}.html" if f + 1 < n else None
    rows = []
    for key, label in (("projection", "projection"), ("patch", "patch")):
        rows.append(_value_row(label, [_sprite_cell(href, *p, sw, sh, SHOW) for p in place[key]]))
    H, W = info["image_size"]
    s = SHOW / max(H, W)
    frames = [f'<span class="frame"><img class="whole" src="../images/{i}.png" alt="image {i}" '
              f'width="{W * s:.0f}" height="{H * s:.0f}">{_box_overlay(b, H, W, SHOW)}</span>'
              for i, b in zip(info["ids"], info["boxes"])]
    rows.append(_value_row("image (field outlined)", frames))
    rows.append(_value_row("image", [html.escape(s) for s in info["names"]]))
    if info.get("classes"):
        rows.append(_value_row("class", [html.escape(c) for c in info["classes"]]))
    rows.append(_value_row("activation", [f"{v:.4g}" for v in info["values"]]))
    pager = ('<nav class="pager">' + (f'<a href="{prev_}">← {layer}/{f - 1}</a>' if prev_ else "<span></span>")
             + f'<a href="index.html">{layer}</a>'
             + (f'<a href="{next_}">{layer}/{f + 1} →</a>' if next_ else "<span></span>") + "</nav>")
    purity = (f" · purity of its top {len(info['values'])}: {info['purity']:.0%}"
              if info.get("purity") is not None else "")
    body = (f'<h1>{layer} · feature {f} <small>of {n}{purity}</small></h1>\n{pager}\n'
            + (f'<figure class="filter">{filter_cell}<figcaption>the filter ({info["filter_size"]}, '
               f'0 grey)</figcaption></figure>\n' if filter_cell else "")
            + '<table class="topk">\n<tr><th></th>'
            + "".join(f"<th>{q + 1}</th>" for q in range(len(info["values"]))) + "</tr>\n"
            + "\n".join(rows) + "\n</table>")
    return _page(f"{layer}/{f}", "../", body, {"prev": prev_, "next": next_, "up": "index.html"})


def layer_page(layer: str, sprite: dict, rows: list[dict], prev_layer, next_layer, labelled: bool) -> str:
    """The grid of all features of ``layer``: ``sprite`` the thumbnails' sheet, ``rows`` per feature
    its index, strongest activation and purity."""
    cells = []
    for r, p in zip(rows, sprite["places"]):
        thumb = _sprite_cell(sprite["href"], *p, sprite["width"], sprite["height"], THUMB)
        cells.append(f'<a class="feat" href="{r["feature"]}.html" data-index="{r["feature"]}" '
                     f'data-activation="{r["activation"]:.6g}"'
                     + (f' data-purity="{r["purity"]:.4f}"' if labelled else "")
                     + f' title="feature {r["feature"]}: {r["activation"]:.4g}">{thumb}'
                     f'<span>{r["feature"]}</span></a>')
    sorts = ["index", "activation"] + (["purity"] if labelled else [])
    buttons = "".join(f'<button type="button" data-sort="{s}">{s}</button>' for s in sorts)
    nav = ('<nav class="pager">' + (f'<a href="../{prev_layer}/index.html">← {prev_layer}</a>'
                                     if prev_layer else "<span></span>")
           + '<a href="../index.html">all layers</a>'
           + (f'<a href="../{next_layer}/index.html">{next_layer} →</a>' if next_layer else "<span></span>")
           + "</nav>")
    body = (f"<h1>{layer} <small>{len(rows)} features, each by its strongest projection</small></h1>\n"
            f'{nav}\n<p class="sort">sort by {buttons}</p>\n<div class="grid">\n' + "\n".join(cells)
            + "\n</div>")
    return _page(layer, "../", body, {"prev": f"../{prev_layer}/index.html" if prev_layer else None,
                                      "next": f"../{next_layer}/index.html" if next_layer else None,
                                      "up": "../index.html"})


def index_page(meta: dict) -> str:
    """The atlas's front page: the model, the source and one entry per layer."""
    rows = []
    for lay in meta["model"]["layers"]:
        name = lay["name"]
        link = (f'<a href="{name}/index.html">{name}</a>' if name in meta["layers"] else name)
        rf = lay.get("field")
        rows.append(f"<tr><td>{link}</td><td>{lay['kind']}</td><td>{'×'.join(map(str, lay['shape']))}</td>"
                    f"<td>{'' if rf is None else f'{rf[0]}×{rf[1]}'}</td>"
                    f"<td>{'' if rf is None else lay['jump']}</td>"
                    f"<td>{meta['layers'][name]['features'] if name in meta['layers'] else ''}</td></tr>")
    src, acc = meta["source"], meta.get("accuracy")
    facts = [f"model <b>{html.escape(meta['model']['arch'])}</b> ({html.escape(meta['model']['weights'])})",
             f"images: {html.escape(src['description'])}, {src['count']:,}",
             f"top {meta['k']} per feature, projected with the {meta['rule']} rule"]
    if acc is not None:
        facts.append(f"accuracy on these images: {100 * acc:.2f}%")
    body = (f"<h1>Feature atlas <small>{sum(v['features'] for v in meta['layers'].values()):,} "
            f"features in {len(meta['layers'])} layers</small></h1>\n<ul class=\"facts\">"
            + "".join(f"<li>{x}</li>" for x in facts) + "</ul>\n"
            '<table class="layers"><tr><th>layer</th><th>kind</th><th>output</th><th>receptive field'
            '</th><th>stride in pixels</th><th>features shown</th></tr>\n' + "\n".join(rows) + "\n</table>")
    first = next(iter(meta["layers"]), None)
    return _page("Feature atlas", "", body, {"next": f"{first}/index.html" if first else None})


# --- the build ------------------------------------------------------------------------------------------
def model_summary(net, input_shape, arch: str, weights: str) -> dict:
    """Layers (name, kind, output shape, receptive field and its stride where spatial) of ``net``."""
    shapes = net.shapes(input_shape)
    fields = net.receptive_fields(input_shape)
    layers = []
    for layer, shape in zip(net.layers, shapes):
        out = layer.output_shape(shape)
        rf = fields.get(layer.name)
        layers.append({"name": layer.name, "kind": layer.kind, "shape": [int(v) for v in out],
                       "field": None if rf is None else [int(v) for v in rf.size],
                       "jump": None if rf is None else int(rf.jump[0])})
    return {"arch": arch, "weights": weights, "input": [int(v) for v in input_shape], "layers": layers}


def check_out(out, force: bool) -> Path:
    """The atlas folder ``out``, checked before any work: a new or empty folder, or an earlier atlas
    (replaced only with ``force``); a file, a folder holding other files, or one that cannot be written
    is refused."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARK).is_file():
            names = sorted(p.name for p in out.iterdir())[:3]
            raise ArgumentError(f"--out {out}: holds files that are not an atlas ({', '.join(names)}); "
                                "give an empty or new folder")
        if not force:
            raise FileExistsError(f"--out {out}: holds an atlas; replace it with --force "
                                  "(force=True in Python)")
    parent = out.absolute().parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise ArgumentError(f"--out {out}: cannot write there ({p} is a file)")
            import os
            if not os.access(p, os.W_OK | os.X_OK) and not parent.exists():
                raise ArgumentError(f"--out {out}: cannot write there (no permission in {p})")
            break
    return out


def _write_layer(stage: Path, name, t, net, source, display, names, classes, labels, filters):
    """Write one layer's feature PNGs and pages and its sprite; returns its rows for atlas.json."""
    folder = stage / name
    folder.mkdir()
    n = len(t.features)
    thumbs, rows = [], []
    for j, f in enumerate(t.features):
        tiles = feature_tiles(t, j, net, source.shape, display)
        sheet, places = _sheet(_colour_like([tiles["projection"], tiles["patch"]]))
        (folder / f"{f}.png").write_bytes(png(sheet))
        thumbs.append(tiles["projection"][0])
        ids = t.images[j]
        cls = [classes[labels[i]] for i in ids] if labels is not None else None
        purity = (np.bincount(labels[ids]).max() / len(ids)) if labels is not None else None
        info = {"ids": [int(i) for i in ids], "names": [names(i) for i in ids], "classes": cls,
                "values": [float(v) for v in t.values[j]],
                "boxes": t.boxes[j].tolist(), "image_size": source.shape[1:], "purity": purity}
        place = {"href": f"{f}.png", "width": sheet.shape[1], "height": sheet.shape[0],
                 "projection": places[0], "patch": places[1]}
        cell = ""
        if filters is not None:
            (folder / f"{f}.filter.png").write_bytes(png(filters[j]))
            h, w = filters[j].shape[:2]
            info["filter_size"] = f"{h}×{w}"
            cell = _sprite_cell(f"{f}.filter.png", 0, 0, w, h, w, h, SHOW)
        (folder / f"{f}.html").write_text(feature_page(name, int(f), n, place, info, cell), encoding="utf-8")
        rows.append({"feature": int(f), "activation": float(t.values[j, 0]), "purity": purity,
                     "images": [int(i) for i in ids], "values": info["values"],
                     "positions": t.positions[j].tolist(), "boxes": info["boxes"]})
    per = SPRITE_COLUMNS
    grid = [_colour_like([thumbs[i:i + per]])[0] for i in range(0, len(thumbs), per)]
    sheet, places = _sheet(grid)
    (folder / "thumbs.png").write_bytes(png(sheet))
    sprite = {"href": "thumbs.png", "width": sheet.shape[1], "height": sheet.shape[0],
              "places": [p for line in places for p in line]}
    return rows, sprite


def _filters(net, layer: str, features) -> list | None:
    """The first conv layer's filters as tiles (0 grey), or None for any other layer."""
    first = next(lay.name for lay in net.layers if lay.kind == "conv")
    if layer != first:
        return None
    w = net.params[f"{layer}.weight"]
    return [to_uint8(w[f], "symmetric") if w.shape[1] in (1, 3) else
            to_uint8(w[f].mean(0, keepdims=True), "symmetric") for f in features]


def _accuracy(net, source, labels, batch: int = 500) -> float:
    """The share of the source's images whose predicted class is their label."""
    from zfcore.analysis.classify import predict

    right = 0
    for i in range(0, len(source), batch):
        ids = np.arange(i, min(i + batch, len(source)))
        right += int((predict(net, source.load(ids)).argmax(1) == labels[ids]).sum())
    return right / len(source)


def _swap(stage: Path, out: Path) -> None:
    """Put the finished atlas ``stage`` at ``out``, replacing an earlier atlas there as a whole."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-atlas")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_atlas(net, source, out, layers=None, k: int = 9, rule: str = "deconvnet", arch: str = "model",
                weights: str = "", description: str = "images", classes=None, names=None, display=None,
                accuracy: bool = False, force: bool = False, tops=None, **top_k_args) -> dict:
    """Write the atlas of ``layers`` (default: every conv layer) of ``net`` over ``source`` (an array
    or a ``zfcore.data.sources`` source) into the folder ``out``; returns what ``atlas.json`` holds.

    ``classes``: class names of the source's labels (shown, and the purity of each feature's top
    images); ``accuracy``: the network's accuracy on the source's labels is shown (when its outputs are
    those classes). ``names(i)``: how image ``i`` is named (default ``#i``); ``display(x)``: an input as
    shown, (C, H, W) in [0, 1] (default: as is). ``tops``: precomputed ``top_k`` results (dict layer ->
    ``TopK``); otherwise ``zfcore.analysis.top_k(net, source, layers, k, rule=rule, **top_k_args)``
    runs here. ``out`` is checked before any work (``check_out``) and written as a whole: the pages are
    made in a fresh folder beside it, which then replaces it."""
    from zfcore.analysis.topk import as_source, top_k
    from zfcore.errors import check_layer

    out = check_out(out, force)
    source = as_source(source)
    layers = [lay.name for lay in net.layers if lay.kind == "conv"] if layers is None else list(layers)
    for name in layers:
        check_layer(net, name)
        if not _NAME.match(name):
            raise ArgumentError(f"layer {name!r}: its name cannot be a folder of the atlas")
    if tops is None:
        tops = top_k(net, source, layers, k=k, rule=rule, **top_k_args)
    labels = getattr(source, "labels", None) if classes is not None else None
    labels = None if labels is None else np.asarray(labels)
    names = names or (lambda i: f"#{i}")
    display = display or (lambda x: np.clip(x, 0, 1))
    meta = {"model": model_summary(net, source.shape, arch, weights), "k": int(k), "rule": rule,
            "source": {"description": description, "count": len(source)}, "layers": {}}
    if accuracy and labels is not None:
        meta["accuracy"] = _accuracy(net, source, labels)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.absolute().parent))
    try:
        _write_site(stage, net, source, tops, layers, meta, display, names, classes, labels)
        stage.chmod(0o755)
        _swap(stage, out.absolute())
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return meta


def _write_images(stage: Path, source, ids, display, batch: int = 256) -> None:
    """``images/<id>.png`` for each image id in ``ids``, loaded from ``source`` a batch at a time."""
    folder = stage / "images"
    folder.mkdir()
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    for lo in range(0, len(ids), batch):
        part = ids[lo:lo + batch]
        for i, x in zip(part, source.load(part)):
            (folder / f"{int(i)}.png").write_bytes(png(to_uint8(display(x), "clip")))


def _write_site(stage, net, source, tops, layers, meta, display, names, classes, labels) -> None:
    """Every file of the atlas, into the fresh folder ``stage``."""
    _write_images(stage, source, np.concatenate([tops[name].images.ravel() for name in layers]), display)
    sprites = {}
    for name in layers:
        t = tops[name]
        rows, sprites[name] = _write_layer(stage, name, t, net, source, display, names, classes, labels,
                                           _filters(net, name, t.features))
        meta["layers"][name] = {"features": len(rows), "rows": rows}
    for i, name in enumerate(layers):
        rows = meta["layers"][name]["rows"]
        page = layer_page(name, sprites[name], rows, layers[i - 1] if i else None,
                          layers[i + 1] if i + 1 < len(layers) else None, labels is not None)
        (stage / name / "index.html").write_text(page, encoding="utf-8")
    (stage / "index.html").write_text(index_page(meta), encoding="utf-8")
    counts = {name: meta["layers"][name]["features"] for name in layers}
    (stage / "layers.js").write_text(f"window.ATLAS = {json.dumps({'layers': counts})};\n", encoding="utf-8")
    for asset in ("atlas.css", "atlas.js"):
        shutil.copyfile(ASSETS / asset, stage / asset)
    (stage / MARK).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def embedded_atlas(out, tops=None, force: bool = False) -> dict:
    """The atlas of the report: every conv feature of the embedded model, its top 9 over the shipped
    Fashion-MNIST test set, with class purity and accuracy (``report/build.py`` links it from the
    contents). ``tops``: that scan's ``top_k`` results when already computed (chapter 5's
    ``analysis.scan_layers`` of the same layers gives the same ones); otherwise they are computed here."""
    from zfcore import models
    from zfcore.data import CLASSES, sources

    net = models.load_model()
    return build_atlas(net, sources.TestSetSource(), out, k=9, arch="fmnist_zf", weights="fmnist_zf.npz",
                       description="the shipped Fashion-MNIST test set", classes=list(CLASSES),
                       accuracy=True, names=lambda i: f"test[{i}]", force=force, tops=tops)
