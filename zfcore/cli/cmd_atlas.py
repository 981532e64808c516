"""``zfcore atlas``: a static, offline website of every feature of the chosen layers (``zfcore.viz.atlas``)."""
from __future__ import annotations

from zfcore.cli import common as C
from zfcore.core.layers import check_rule
from zfcore.errors import check_count, check_layer, layer_width

TEST_SET_ALL = 10**9            # no --limit on the shipped test set: all of its images


def add_parser(sub, add, common, model_args, rule_help, upscale_arg):
    """The ``atlas`` subcommand's options (those of ``topk`` that apply, every feature shown)."""
    c = add(sub, "atlas", cmd_atlas, "a static website of what every feature of a network responds to",
            common)
    model_args(c)
    c.add_argument("--layer", nargs="+", metavar="LAYER", default=None,
                   help="layers to show; default: every conv layer")
    c.add_argument("--k", type=int, default=9, help="images per feature")
    c.add_argument("--images", default=None, help="folder of images, searched recursively, or an ImageFolder "
                   "layout (FOLDER/<class>/<image>); default: the shipped test set")
    c.add_argument("--layout", default="auto", choices=("auto", "folder", "imagefolder"),
                   help="--images layout; auto: an ImageFolder when FOLDER holds sub-folders and no images")
    c.add_argument("--strict", action="store_true", help="stop at the first entry of --images that cannot "
                   "be read; default: skip it with a warning on stderr")
    upscale_arg(c)
    c.add_argument("--limit", type=int, default=None,
                   help="use the first N images; default: all (10,000 of the shipped test set)")
    c.add_argument("--rule", default="deconvnet", metavar="RULE", help=rule_help)
    c.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass; default: as many as fit about 512 MB of activations (<= 500)")
    c.add_argument("--threads", type=int, default=None,
                   help="threads of the single-process path, one BLAS thread each; default: every core")
    c.add_argument("--workers", type=int, default=None,
                   help="run the scan on a local Dask cluster of N worker processes (needs zfcore[dask]); "
                   "default: no Dask")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the scan on an existing Dask cluster, e.g. tcp://host:8786; default: no Dask")
    return c


def cmd_atlas(args):
    """Every feature of the chosen layers over a collection of images: an index, a page per layer and a
    page per feature (``zfcore.viz.atlas``), written into --out as a whole. Unreadable entries of
    --images are skipped with a warning (or stop the run with --strict), as in ``topk``."""
    from zfcore.cli.cmd_topk import _check_out_outside_images, _skipped, _topk_run, _topk_source
    from zfcore.data import CLASSES
    from zfcore.viz import atlas

    C.check_scan_args(args)
    check_rule(args.rule)
    net, model = C.load_net(args)
    layers = [lay.name for lay in net.layers if lay.kind == "conv"] if args.layer is None else \
        list(dict.fromkeys(args.layer))
    for layer in layers:
        check_layer(net, layer)
    _check_out_outside_images(args)
    out = atlas.check_out(args.out, args.force)
    ch, side, _ = C.INPUTS[args.model]
    feats = {layer: list(range(layer_width(net, layer, (ch, side, side)))) for layer in layers}
    test_set = args.images is None
    if test_set and args.limit is None:
        args.limit = TEST_SET_ALL
    src, source = _topk_source(args)
    check_count(args.k, "--k", 1, len(src))
    tops = _topk_run(args, net, src, layers, feats)
    _skipped(args, src, source, tops)           # warn of unreadable entries; refuse fewer than --k
    skipped = source.get("skipped", {}).get("count", 0)
    if not args.quiet:
        print(f"writing {sum(len(f) for f in feats.values()):,} feature pages", flush=True)
    classes = list(CLASSES) if test_set else getattr(src, "classes", None)
    meta = atlas.build_atlas(
        net, src, out, layers, k=args.k, rule=args.rule, arch=args.model, weights=model["weights"],
        description=source["source"] + (f" ({skipped} unreadable entries skipped)" if skipped else ""),
        classes=classes, accuracy=test_set, force=args.force, tops=tops,
        names=(lambda i: f"test[{i}]") if test_set else (lambda i: src.files[i]),
        display=lambda x: C.display_image(x, args.model))
    if not args.quiet:
        n = sum(v["features"] for v in meta["layers"].values())
        print(f"wrote the atlas of {n:,} features in {len(layers)} layers over {len(src):,} images: "
              f"open {out / 'index.html'}")
