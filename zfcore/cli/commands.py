"""The command line's subcommands (parsed in ``zfcore.cli``). Each checks its arguments and plans its
output files before any work, and writes a JSON summary (inputs, model, numbers) next to its figures."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from zfcore.cli import common as C
from zfcore.core.layers import check_rule
from zfcore.errors import ArgumentError, ZfcoreError, check_count, check_feature, check_layer, layer_width

# a source checkout holds report/build.py and notebooks/ beside the package; an installed wheel does not
SOURCE_ROOT = Path(__file__).resolve().parents[2]
MAX_LISTED_FILES = 10_000       # topk.json lists the input files of a folder up to this many
TEST_SET_LIMIT = 2000           # topk's default number of shipped test images (a folder: all its images)


def _stem(info: dict, i: int) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(info["source"]).stem if "[" not in info["source"]
               else f"test-{info['source'][5:-1]}")
    return f"{i:02d}-{s}"


def _softmax(logits):
    from zfcore.core import ops

    return ops.softmax(logits)


def cmd_classify(args):
    """Top classes of each input image."""
    check_count(args.top, "--top", 1)
    out = C.Outputs(args.out, args.force, ["classify.json", "classify.png"])
    net, model = C.load_net(args)
    x, info, labels = C.load_inputs(args)
    probs = np.concatenate([_softmax(net(x[i:i + 64]))
                            for i in C.progress(range(0, len(x), 64), args, desc="classify")])
    top = min(args.top, probs.shape[1])
    results = []
    for i, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")[:top]
        results.append({"input": info[i]["source"], "predicted": int(order[0]),
                        "top": [{"class": int(c), "name": C.class_name(args.model, int(c), probs.shape[1]),
                                 "prob": float(p[c])} for c in order]})
    out.add("classify.json", C.summary("classify", args, model, info, results))
    C.use_agg()
    from zfcore.viz.plotting import grid

    fig = grid([C.display_image(a, args.model) for a in x],
               titles=[f"{r['top'][0]['name']} {r['top'][0]['prob']:.2f}" for r in results],
               ncols=min(len(x), 8), size=2.0)
    out.add("classify.png", C.png_bytes(fig))
    _finish(args, out, [f"{r['input']}: {r['top'][0]['name']} ({100 * r['top'][0]['prob']:.1f}%)"
                        for r in results])


def cmd_project(args):
    """Project one feature of a layer (given, or the image's strongest) back to pixels."""
    check_rule(args.rule)
    net, model = C.load_net(args)
    check_layer(net, args.layer)
    ch, side, _ = C.INPUTS[args.model]
    if args.feature is not None:
        check_feature(net, args.layer, args.feature, (ch, side, side))
    x, info, _ = C.load_inputs(args)
    names = [_stem(d, i) + ".png" for i, d in enumerate(info)]
    out = C.Outputs(args.out, args.force, names + ["project.json", "project.npz"])
    rec = net.forward(x, upto=args.layer)
    act = rec[args.layer]
    spatial = act.ndim == 4
    results, arrays = [], {}
    C.use_agg()
    from zfcore.viz.plotting import projection_rows

    for i in C.progress(range(len(x)), args, desc="project"):
        m = rec.map_maxima(args.layer)[i]
        f = int(rec.top_features(args.layer, i)[0][0]) if args.feature is None else int(args.feature)
        pos = rec.strongest(args.layer, f, image=i)
        proj = rec.project(args.layer, f, image=i, rule=args.rule)
        box = rec.input_box(args.layer, pos) if spatial else None
        arrays[names[i][:-4]] = proj
        results.append({"input": info[i]["source"], "layer": args.layer, "feature": f,
                        "feature_chosen": "given" if args.feature is not None else "strongest",
                        "activation": float(m[f]),
                        "position": None if pos is None else [int(v) for v in pos],
                        "receptive_field_box": None if box is None else [int(v) for v in box],
                        "projection_abs_sum": float(np.abs(proj).sum()), "figure": names[i]})
        fig = projection_rows(C.display_image(x[i], args.model), [[proj]],
                              titles=[f"{args.layer} #{f} ({args.rule})"], boxes=[box])
        out.add(names[i], C.png_bytes(fig))
    out.add("project.json", C.summary("project", args, model, info, results, rule=args.rule))
    out.add("project.npz", arrays)
    _finish(args, out, [f"{r['input']}: {r['layer']} feature {r['feature']} (activation "
                        f"{r['activation']:.3g}) -> {r['figure']}" for r in results])


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
    _finish(args, out, [f"{r['layer']} feature {r['feature']}: images {r['images']}" for r in results])


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


def cmd_occlusion(args):
    """Occlusion sensitivity (the paper's Fig. 7) of one image."""
    from zfcore import analysis

    net, model = C.load_net(args)
    ch, side, _ = C.INPUTS[args.model]
    if args.feature is not None and args.layer is None:
        raise ArgumentError("--feature needs --layer")
    if args.layer is not None:
        check_layer(net, args.layer)
        if args.feature is not None:
            check_feature(net, args.layer, args.feature, (ch, side, side))
    check_count(args.size, "--size", 1, side)
    check_count(args.stride, "--stride", 1)
    x, info, labels = C.load_inputs(args)
    if len(x) != 1:
        raise ArgumentError(f"occlusion takes one image, got {len(x)}")
    out = C.Outputs(args.out, args.force, ["occlusion.json", "occlusion.png"])
    p = _softmax(net(x))[0]
    target = int(np.argmax(p)) if args.target is None else args.target
    feature = args.feature
    if args.layer is not None and feature is None:      # the image's strongest map in that layer
        feature = int(net.forward(x, upto=args.layer).top_features(args.layer)[0][0])
    occ = analysis.occlusion(net, x[0], target, size=args.size, stride=args.stride, fill=args.fill,
                             layer=args.layer, feature=feature if args.layer else None)
    r, c = np.unravel_index(np.argmin(occ.prob), occ.prob.shape)
    res = {"input": info[0]["source"], "target": target, "target_name": C.class_name(args.model, target, len(p)),
           "prob_unoccluded": float(p[target]), "prob_min": float(occ.prob[r, c]),
           "prob_min_at": [int(occ.rows[r]), int(occ.cols[c])], "prob_mean": float(occ.prob.mean()),
           "predicted_changes": int((occ.predicted != np.argmax(p)).sum()), "grid": list(occ.prob.shape)}
    out.add("occlusion.json", C.summary("occlusion", args, model, info, [res], size=args.size,
                                        stride=args.stride, layer=args.layer,
                                        feature=feature if args.layer else None))
    out.add("occlusion.png", _occlusion_figure(args, x[0], occ, res["target_name"]))
    _finish(args, out, [f"{res['input']}: p({res['target_name']}) {res['prob_unoccluded']:.3f} "
                        f"unoccluded, {res['prob_min']:.3f} at worst (square at {res['prob_min_at']})"])


def _occlusion_figure(args, image, occ, name) -> bytes:
    C.use_agg()
    import matplotlib.pyplot as plt

    from zfcore.viz.plotting import occlusion_map, show

    n = 3 if occ.feature_activity is None else 4
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8))
    show(axes[0], C.display_image(image, args.model), "input")
    occlusion_map(axes[1], occ.prob, occ, title=f"p({name})")
    axes[2].imshow(occ.predicted, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axes[2].set_title("most probable class", fontsize=9)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    if n == 4:
        occlusion_map(axes[3], occ.feature_activity, occ, title=f"{occ.layer} #{occ.feature}",
                      vmin=None, vmax=None, cmap="viridis")
    fig.tight_layout()
    return C.png_bytes(fig)


def cmd_train(args):
    from zfcore.torch.train import train

    command = (f"zfcore train --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} "
               f"--weight-decay {args.weight_decay} --seed {args.seed} --precision {args.precision} "
               f"--{'' if args.batchnorm else 'no-'}batchnorm"
               + (f" --subset {args.subset}" if args.subset else ""))
    hist = train(epochs=args.epochs, out=args.out, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                 weight_decay=args.weight_decay, subset=args.subset, device=args.device, root=args.data,
                 threads=args.threads, overwrite=args.force, batchnorm=args.batchnorm,
                 precision=args.precision, quiet=args.quiet, command=command)
    if not args.quiet:
        print(f"final test accuracy {100 * hist['final']['test_acc']:.2f}% after "
              f"{hist['epochs'][-1]['epoch']} epochs; weights and history.json in {args.out}")


def cmd_report(args):
    import subprocess
    import sys

    build = SOURCE_ROOT / "report" / "build.py"
    if not build.is_file() or not (SOURCE_ROOT / "notebooks").is_dir():
        raise ZfcoreError("report: the report's notebooks and report/build.py are not part of this "
                          "installation (zfcore installed from a wheel?); run it from a source checkout "
                          "of zfcore")
    cmd = [sys.executable, str(build)] + (["--out", str(args.out)] if args.out else []) + \
        (["--only", *args.only] if args.only else []) + (["--force"] if args.force else [])
    run = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)   # progress on stdout, as it comes
    said = [line[len("error: "):] for line in run.stderr.splitlines() if line.startswith("error: ")]
    if run.returncode == 2 and said:                           # refused before any work: one line
        raise ZfcoreError(said[-1])
    if run.returncode:
        sys.stderr.write(run.stderr)
        raise ZfcoreError(f"report: report/build.py failed (exit status {run.returncode})")


def _finish(args, out, lines):
    paths = out.write()
    if not args.quiet:
        for line in lines:
            print(line)
        print(f"wrote {', '.join(p.name for p in paths)} in {out.out}")
