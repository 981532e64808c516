"""``zfcore occlusion``: occlusion sensitivity (the paper's Fig. 7) of one image."""
from __future__ import annotations

import numpy as np

from zfcore.cli import common as C
from zfcore.errors import ArgumentError, check_count, check_feature, check_layer


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
    p = C.softmax(net(x))[0]
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
    C.finish(args, out, [f"{res['input']}: p({res['target_name']}) {res['prob_unoccluded']:.3f} "
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
