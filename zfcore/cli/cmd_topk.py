"""``zfcore topk``: the paper's Fig. 2 for a collection of images."""
from __future__ import annotations

import functools
import sys

from zfcore.cli import common as C
from zfcore.core.layers import check_rule
from zfcore.errors import ArgumentError, check_count, check_feature, check_layer, layer_width

MAX_LISTED_FILES = 10_000       # topk.json lists the input files of a folder up to this many
TEST_SET_LIMIT = 2000           # topk's default number of shipped test images (a folder: all its images)


def _topk_source(args):
    """(image source, description for the summary) from --images FOLDER (searched recursively, or an
    ImageFolder layout) or the shipped test set, the first --limit images. A folder's entries that
    cannot be read are skipped, each with a warning on stderr when it is reached (cheap checks while
    listing, decoding during the scan), or stop the run at the first with --strict."""
    from zfcore.data import sources

    if args.images is None:
        if args.model != "fmnist_zf":
            raise ArgumentError(f"topk: the shipped test set is for --model fmnist_zf; give --images "
                                f"FOLDER for {args.model}")
        src = sources.TestSetSource(limit=TEST_SET_LIMIT if args.limit is None else args.limit)
        return src, {"source": "shipped Fashion-MNIST test set", "count": len(src)}
    strict = bool(getattr(args, "strict", False))
    upscale = C.max_upscale(args)
    try:
        src = sources.open_folder(args.images, limit=args.limit, layout=args.layout, strict=strict,
                                  max_upscale=upscale,
                                  on_skip=functools.partial(warn_skipped, args.command),
                                  **sources.for_model(args.model))
    except ArgumentError as e:
        raise ArgumentError(f"--images {e}") from None
    info = {"source": src.root.name, "layout": src.describe()["layout"], "count": len(src),
            "fit": "center-crop", "max_upscale": src.max_upscale, "strict": strict}
    if len(src) <= MAX_LISTED_FILES:
        info["files"] = list(src.files)
    if hasattr(src, "classes"):
        info["classes"] = list(src.classes)
    return src, info


def warn_skipped(command: str, path: str, reason: str) -> None:
    """One line on stderr for a skipped entry of --images (above a progress bar, if one is shown)."""
    line = f"zfcore {command}: warning: {path}: {reason}; skipped (--strict stops here instead)"
    try:
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)
    except ImportError:
        print(line, file=sys.stderr)


def _skipped(args, src, source: dict, tops) -> None:
    """Record the skipped entries in the summary's ``inputs``, say how many on stderr, and refuse a
    result with fewer than --k images per feature."""
    if not hasattr(src, "skipped_files"):
        return
    skipped = src.skipped_files()
    source["skipped"] = {"count": len(skipped),
                         "files": dict(sorted(skipped.items())[:MAX_LISTED_FILES])}
    if skipped:
        sys.stderr.write(f"zfcore {args.command}: warning: skipped {len(skipped)} unreadable entries of "
                         f"--images {src.root} (listed in the summary's inputs.skipped)\n")
    found = min(t.images.shape[1] for t in tops.values())
    if found < args.k:
        raise ArgumentError(f"--k {args.k}: only {found} images under --images {src.root} could be read "
                            f"({len(skipped)} skipped)")


def _topk_features(args, net, layers):
    """dict layer -> features to show: --features for every layer, or each layer's first four."""
    ch, side, _ = C.INPUTS[args.model]
    feats = {}
    for layer in layers:
        width = layer_width(net, layer, (ch, side, side))
        feats[layer] = list(range(min(width, 4))) if args.features is None else list(args.features)
        for f in feats[layer]:
            check_feature(net, layer, f, (ch, side, side))
    return feats


def _topk_run(args, net, src, layers, feats):
    """dict layer -> analysis.TopK, in this process or on Dask (--workers / --scheduler)."""
    kw = dict(k=args.k, features=feats, batch_size=args.batch_size, rule=args.rule,
              progress=not args.quiet)
    if args.workers is None and args.scheduler is None:
        from zfcore.analysis.topk import top_k

        return top_k(net, src, layers, threads=args.threads, **kw)
    from zfcore.analysis import distributed

    return distributed.top_k(net, src, layers, workers=args.workers, scheduler=args.scheduler, **kw)


def cmd_topk(args):
    """The paper's Fig. 2 for one or more layers: per feature, the k strongest images of a collection
    (streamed: one scan for all layers, then only the winners are loaded and projected)."""
    C.check_scan_args(args)
    check_rule(args.rule)
    _check_out_outside_images(args)
    out = C.Outputs(args.out, args.force, ["topk.json", "topk.png", "topk.npz"])
    net, model = C.load_net(args)
    layers = list(dict.fromkeys(args.layer))
    for layer in layers:
        check_layer(net, layer)
    feats = _topk_features(args, net, layers)
    src, source = _topk_source(args)
    check_count(args.k, "--k", 1, len(src))
    tops = _topk_run(args, net, src, layers, feats)
    _skipped(args, src, source, tops)
    results, arrays = [], {}
    for layer, t in tops.items():
        for j, f in enumerate(t.features):
            r = {"layer": layer, "feature": int(f), "images": [int(v) for v in t.images[j]],
                 "values": [float(v) for v in t.values[j]]}
            if hasattr(src, "files"):
                r["files"] = [src.files[i] for i in t.images[j]]
            if getattr(src, "labels", None) is not None and hasattr(src, "classes"):
                r["labels"] = [src.classes[src.labels[i]] for i in t.images[j]]
            results.append(r)
        prefix = "" if len(layers) == 1 else f"{layer}."
        for key in ("projections", "patches", "images", "values", "positions", "boxes", "features"):
            arrays[prefix + key] = getattr(t, key)
    out.add("topk.json", C.summary("topk", args, model, source, results, layer=layers[0] if len(layers) == 1
                                   else layers, k=args.k, rule=args.rule, arguments=C.arguments(args)))
    out.add("topk.npz", arrays)
    out.add("topk.png", _topk_figure(args, tops))
    C.finish(args, out, [f"{r['layer']} feature {r['feature']}: images {r['images']}" for r in results])


def _check_out_outside_images(args):
    """An output folder is never read as input: refuse an --out that is the --images folder or lies
    inside it (the folder is searched recursively, so a second run would read the first one's files)."""
    if args.images is None or args.out is None or not str(args.out).strip():
        return
    from pathlib import Path

    images, out = (Path(p).expanduser().resolve() for p in (args.images, args.out))
    if out == images or images in out.parents:
        raise ArgumentError(f"--out {args.out}: within the --images folder {args.images}, which is searched "
                            "recursively, so this run's topk.png would be read as an input by the next; "
                            "give an --out outside it")


def _crop(a, box):
    """``a`` (C, H, W) cut to ``box`` (top, left, bottom, right), zero where the box leaves the image (as
    the patches are)."""
    import numpy as np

    top, left, bottom, right = (int(v) for v in box)
    out = np.zeros((a.shape[0], bottom - top + 1, right - left + 1), a.dtype)
    t, l_, b, r = max(top, 0), max(left, 0), min(bottom, a.shape[1] - 1), min(right, a.shape[2] - 1)
    out[:, t - top:b - top + 1, l_ - left:r - left + 1] = a[:, t:b + 1, l_:r + 1]
    return out


def _topk_figure(args, tops) -> bytes:
    """One row per (layer, feature), named on its left; per image a column pair: the projection cut to
    the receptive field, titled with the activation, and the image patch under it, with its id."""
    import textwrap

    C.use_agg()
    from zfcore.viz.plotting import grid

    panels, titles, rows = [], [], []
    k = min(t.values.shape[1] for t in tops.values())
    for layer, t in tops.items():
        for j, f in enumerate(t.features):
            rows.append(f"{layer}\nfeature {f}")
            for q in range(k):
                panels += [_crop(t.projections[j, q], t.boxes[j, q]),
                           C.display_image(t.patches[j, q], args.model)]
                titles += [f"act {t.values[j, q]:.3g}", f"image {t.images[j, q]}"]
    cols = [c for q in range(k) for c in (f"top {q + 1}", "its patch")]
    note = (f"{', '.join(tops)}: the {k} images where each feature fires most; {args.rule} projections "
            "cut to the receptive field, each scaled to its own range (grey: its minimum to maximum)")
    width = max(1.5 * 2 * k, 4.5)                   # room for the title's lines
    return C.png_bytes(grid(panels, titles=titles, ncols=2 * k, size=width / (2 * k),
                            suptitle=textwrap.fill(note, int(width * 9)), row_labels=rows, col_labels=cols))
