"""``zfcore topk``: the paper's Fig. 2 for a collection of images."""
from __future__ import annotations

from zfcore.cli import common as C
from zfcore.core.layers import check_rule
from zfcore.errors import ArgumentError, check_count, check_feature, check_layer, layer_width

MAX_LISTED_FILES = 10_000       # topk.json lists the input files of a folder up to this many
TEST_SET_LIMIT = 2000           # topk's default number of shipped test images (a folder: all its images)


def _topk_source(args):
    """(image source, description for the summary) from --images FOLDER (searched recursively, or an
    ImageFolder layout) or the shipped test set, the first --limit images."""
    from zfcore.data import sources

    if args.images is None:
        if args.model != "fmnist_zf":
            raise ArgumentError(f"topk: the shipped test set is for --model fmnist_zf; give --images "
                                f"FOLDER for {args.model}")
        src = sources.TestSetSource(limit=TEST_SET_LIMIT if args.limit is None else args.limit)
        return src, {"source": "shipped Fashion-MNIST test set", "count": len(src)}
    try:
        src = sources.open_folder(args.images, limit=args.limit, layout=args.layout,
                                  **sources.for_model(args.model))
    except ArgumentError as e:
        raise ArgumentError(f"--images {e}") from None
    info = {"source": src.root.name, "layout": src.describe()["layout"], "count": len(src)}
    if len(src) <= MAX_LISTED_FILES:
        info["files"] = list(src.files)
    if hasattr(src, "classes"):
        info["classes"] = list(src.classes)
    return src, info


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
    check_count(args.k, "--k", 1)
    if args.limit is not None:
        check_count(args.limit, "--limit", 1)
    if args.batch_size is not None:
        check_count(args.batch_size, "--batch-size", 1)
    if args.workers is not None:
        check_count(args.workers, "--workers", 1, 256)
        if args.scheduler is not None:
            raise ArgumentError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if args.threads is not None:
        check_count(args.threads, "--threads", 1, 1024)
        if args.workers is not None or args.scheduler is not None:
            raise ArgumentError("--threads is for the single-process path: each Dask worker runs one thread")
    check_rule(args.rule)
    net, model = C.load_net(args)
    layers = list(dict.fromkeys(args.layer))
    for layer in layers:
        check_layer(net, layer)
    feats = _topk_features(args, net, layers)
    out = C.Outputs(args.out, args.force, ["topk.json", "topk.png", "topk.npz"])
    src, source = _topk_source(args)
    check_count(args.k, "--k", 1, len(src))
    tops = _topk_run(args, net, src, layers, feats)
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
                                   else layers, k=args.k, rule=args.rule))
    out.add("topk.npz", arrays)
    out.add("topk.png", _topk_figure(args, tops))
    C.finish(args, out, [f"{r['layer']} feature {r['feature']}: images {r['images']}" for r in results])


def _topk_figure(args, tops) -> bytes:
    C.use_agg()
    from zfcore.viz.plotting import grid

    panels, titles = [], []
    for layer, t in tops.items():
        name = f"{layer} " if len(tops) > 1 else ""
        for j, f in enumerate(t.features):
            for q in range(args.k):
                panels += [t.projections[j, q], C.display_image(t.patches[j, q], args.model)]
                titles += [f"{name}#{f} {t.values[j, q]:.2g}", f"img {t.images[j, q]}"]
    return C.png_bytes(grid(panels, titles=titles, ncols=2 * args.k, size=1.5,
                            suptitle=f"{', '.join(tops)}: top {args.k} ({args.rule})"))
