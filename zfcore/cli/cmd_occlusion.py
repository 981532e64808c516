"""``zfcore occlusion``: occlusion sensitivity (the paper's Fig. 7) of one image."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from zfcore.cli import common as C
from zfcore.errors import ArgumentError, check_count, check_feature, check_layer


def _square(args, side: int) -> tuple[int, int]:
    """(size, stride) from --size/--stride, checked against the model's input side; each None: the
    default fraction of the side (``analysis.sensitivity.default_square``)."""
    from zfcore.analysis.sensitivity import default_square

    size, stride = default_square((side, side))
    if args.size is not None:
        size = check_count(args.size, "--size", 1, side)
    if args.stride is not None:
        check_count(args.stride, "--stride", 1)
        stride = check_count(args.stride, "--stride", 1, side)
    return size, stride


def cmd_occlusion(args):
    """Occlusion sensitivity (the paper's Fig. 7) of one image."""
    from zfcore import analysis
    from zfcore.analysis.sensitivity import check_fill, occlusion_grid

    fill = check_fill(args.fill)
    if args.batch_size is not None:
        check_count(args.batch_size, "--batch-size", 1)
    if args.feature is not None and args.layer is None:
        raise ArgumentError("--feature needs --layer")
    net, model = C.load_net(args)
    ch, side, _ = C.INPUTS[args.model]
    if args.layer is not None:
        check_layer(net, args.layer)
        if args.feature is not None:
            check_feature(net, args.layer, args.feature, (ch, side, side))
    size, stride = _square(args, side)
    rows, cols = occlusion_grid((side, side), size, stride)
    x, info, labels = C.load_inputs(args)
    if len(x) != 1:
        raise ArgumentError(f"occlusion takes one image, got {len(x)}")
    out = C.Outputs(args.out, args.force, ["occlusion.json", "occlusion.png"])
    p = C.softmax(net(x))[0]
    target = int(np.argmax(p)) if args.target is None else args.target
    feature = args.feature
    if args.layer is not None and feature is None:      # the image's strongest map in that layer
        feature = int(net.forward(x, upto=args.layer).top_features(args.layer)[0][0])
    bar = C.progress(None, args, total=len(rows) * len(cols), desc="occlusion")   # None: no bar
    try:
        occ = analysis.occlusion(net, x[0], target, size=size, stride=stride, fill=fill, layer=args.layer,
                                 feature=feature if args.layer else None, batch_size=args.batch_size,
                                 progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    res = _results(args, info[0], occ, p, target)
    out.add("occlusion.json", C.summary("occlusion", args, model, info, [res], input_shape=[ch, side, side],
                                        size=size, stride=stride, fill=fill, batch_size=occ.batch_size,
                                        target=target, layer=args.layer,
                                        feature=feature if args.layer else None))
    out.add("occlusion.png", _occlusion_figure(args, x[0], occ, res, len(p)))
    at = res["prob_min_at"]
    C.finish(args, out, [f"{res['input']}: p({res['target_name']}) {res['prob_unoccluded']:.3f} unoccluded, "
                        f"{res['prob_min']:.3f} at worst ({size}x{size} square, top-left corner at row "
                        f"{at['row']}, column {at['col']}; {_positions(occ.prob.shape, stride)})"])


def _positions(grid, stride: int) -> str:
    R, Q = grid
    return "1 position" if R * Q == 1 else f"{R}x{Q} positions, stride {stride}"


def _results(args, info: dict, occ, p, target: int) -> dict:
    """The summary's numbers; positions are the square's top-left corner (row, col) in pixels of the
    model's input; for an image file, ``prob_min_in_image`` is that square in the file's pixels (the
    input is the file's ``box``, resized by ``scale``)."""
    def at(values):
        r, c = np.unravel_index(int(np.argmin(values)), values.shape)
        return {"row": int(occ.rows[r]), "col": int(occ.cols[c])}

    res = {"input": info["source"], "target": target, "target_name": C.class_name(args.model, target, len(p)),
           "prob_unoccluded": float(p[target]), "prob_min": float(occ.prob.min()),
           "prob_min_at": at(occ.prob), "prob_mean": float(occ.prob.mean()),
           "predicted_changes": int((occ.predicted != np.argmax(p)).sum()), "grid": list(occ.prob.shape),
           "square_rows": [int(v) for v in occ.rows], "square_cols": [int(v) for v in occ.cols]}
    if occ.feature_activity is not None:
        res.update(activity_min=float(occ.feature_activity.min()), activity_min_at=at(occ.feature_activity),
                   activity_max=float(occ.feature_activity.max()))
    if info.get("box") is not None and info.get("scale"):   # a file: the same square in its pixels
        (left, top), k = info["box"][:2], float(info["scale"])
        a = res["prob_min_at"]
        res["prob_min_in_image"] = {"row": round(top + a["row"] / k, 1), "col": round(left + a["col"] / k, 1),
                                    "side": round(occ.size / k, 1)}
    return res


def _occlusion_figure(args, image, occ, res: dict, n_classes: int) -> bytes:
    """Input (the square that lowers p most outlined), then the maps, each with its colour bar: p of
    the target, the most probable class, and the feature's total activation (with --layer)."""
    C.use_agg()
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from zfcore.viz.plotting import occlusion_map, show

    n = 3 if occ.feature_activity is None else 4
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), layout="constrained")
    H, W = image.shape[1:]
    show(axes[0], C.display_image(image, args.model), "input; red: the square\nthat lowers p most")
    at = res["prob_min_at"]
    axes[0].add_patch(Rectangle((at["col"] - 0.5, at["row"] - 0.5), occ.size, occ.size, fill=False,
                                edgecolor="red", linewidth=1.5))
    occlusion_map(axes[1], occ.prob, occ, title=f"p({res['target_name']})\nunoccluded: "
                  f"{res['prob_unoccluded']:.3f}", colorbar="probability",
                  vmax=max(res["prob_unoccluded"], float(occ.prob.max())))
    _class_map(fig, axes[2], occ, args.model, n_classes)
    if n == 4:
        occlusion_map(axes[3], occ.feature_activity, occ, title=f"{occ.layer} feature {occ.feature}",
                      vmin=None, vmax=None, cmap="viridis", colorbar="total activation")
    for ax in axes:          # all panels in the input's pixel frame: row down, column across
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_xticks(_ticks(W))
        ax.set_yticks(_ticks(H))
        ax.set_xlabel("column")
    axes[0].set_ylabel("row")
    title = (f"{Path(res['input']).name}: a {occ.size}x{occ.size} square of value {occ.fill:g} at "
             f"{_positions(occ.prob.shape, occ.stride)}; map cells at the square's centre")
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 9)))
    return C.png_bytes(fig)


def _ticks(n: int) -> list[int]:
    step = max(1, int(round(n / 4 / 7)) * 7) if n >= 28 else max(1, n // 4)
    return list(range(0, n, step))


def _class_map(fig, ax, occ, arch: str, n_classes: int):
    """The most probable class per position: one colour per class (the nine most frequent, the rest
    "other"), named on the colour bar."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from zfcore.viz.plotting import occlusion_map

    classes, counts = np.unique(occ.predicted, return_counts=True)
    order = classes[np.argsort(-counts, kind="stable")]
    shown = order[:9] if len(order) > 10 else order
    idx = np.full(occ.predicted.shape, len(shown))
    for k, c in enumerate(shown):
        idx[occ.predicted == c] = k
    other = len(order) > len(shown)
    names = [C.class_name(arch, int(c), n_classes) for c in shown] + (["other"] if other else [])
    colours = list(plt.get_cmap("tab10").colors[:len(shown)]) + (["lightgrey"] if other else [])
    im = occlusion_map(ax, idx, occ, title="most probable class",
                       cmap=ListedColormap(colours), vmin=-0.5, vmax=len(names) - 0.5)
    cb = fig.colorbar(im, ax=ax, ticks=range(len(names)), shrink=0.9)
    cb.ax.set_yticklabels(names)
    cb.ax.tick_params(length=0)
