"""The command line's subcommands (parsed in ``zfcore.cli``). Each checks its arguments and plans its
output files before any work, and writes a JSON summary (inputs, model, numbers) next to its figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zfcore.cli import common as C
from zfcore.core.layers import check_rule
from zfcore.errors import ZfcoreError, check_count, check_feature, check_layer

# a source checkout holds report/build.py and notebooks/ beside the package; an installed wheel does not
SOURCE_ROOT = Path(__file__).resolve().parents[2]


CLASSIFY_BATCH = 64         # image files loaded and classified at a time
FIGURE_IMAGES = 64          # classify.png shows the first 64 inputs (8 x 8); classify.json lists all


def cmd_classify(args):
    """Top classes of each input image, a batch at a time (memory bounded whatever their number);
    the figure shows the first ``FIGURE_IMAGES`` of them."""
    check_count(args.top, "--top", 1)
    out = C.Outputs(args.out, args.force, ["classify.json", "classify.png"])
    net, model = C.load_net(args)
    n = len(args.test_index or []) + len(args.images or [])
    info, results, shown = [], [], []
    batches = C.progress(_batches(args, CLASSIFY_BATCH), args, total=-(-n // CLASSIFY_BATCH),
                         desc=f"classify {n} images", unit="batch")
    for x, described in batches:
        probs = C.softmax(net(x))
        top, width = min(args.top, probs.shape[1]), probs.shape[1]
        for d, p in zip(described, probs):
            order = np.argsort(-p, kind="stable")[:top]
            results.append({"input": d["source"], "predicted": int(order[0]),
                            "top": [{"class": int(c), "name": C.class_name(args.model, int(c), width),
                                     "prob": float(p[c])} for c in order]})
        shown += [C.display_image(a, args.model) for a in x[:max(0, FIGURE_IMAGES - len(shown))]]
        info += described
    figure = {"file": "classify.png", "images_shown": len(shown), "images": len(results)}
    out.add("classify.json", C.summary("classify", args, model, info, results, top=args.top,
                                       figure=figure, arguments=C.arguments(args)))
    out.add("classify.png", _classify_figure(args, shown, results))
    C.finish(args, out, [f"{r['input']}: {r['top'][0]['name']} ({100 * r['top'][0]['prob']:.1f}%)"
                        for r in results])


def _batches(args, size):
    """(images, descriptions) of at most ``size`` inputs at a time, in ``load_inputs``' order: the
    shipped test images (28 x 28, the set read once) first, then the image files, loaded a batch at a
    time. No input at all: ``load_inputs``' error."""
    from argparse import Namespace

    idx, files = list(args.test_index or []), list(args.images or [])
    if idx or not files:
        x, info, _ = C.load_inputs(Namespace(**{**vars(args), "images": []}))
        for a in range(0, len(x), size):
            yield x[a:a + size], info[a:a + size]
    for a in range(0, len(files), size):
        batch = Namespace(**{**vars(args), "images": files[a:a + size], "test_index": None})
        x, info, _ = C.load_inputs(batch)
        yield x, info


def _short(source: str, width: int = 20) -> str:
    """An input's name for a panel title: its file name (the middle elided past ``width`` characters)."""
    name = Path(source).name if not source.startswith("test[") else f"test image {source[5:-1]}"
    return name if len(name) <= width else f"{name[:width // 2 - 1]}...{name[-(width // 2 - 2):]}"


def _classify_figure(args, shown, results) -> bytes:
    import textwrap

    C.use_agg()
    from zfcore.viz.plotting import grid

    ncols = min(len(shown), 8)
    size = max(2.0, 4.0 / ncols)                    # one image: 4 in, so that the title fits
    note = f"{args.model}: the most probable class of each image and its probability"
    if len(results) > len(shown):
        note += f"; the first {len(shown)} of {len(results)} images (classify.json lists all)"
    fig = grid(shown, titles=[f"{_short(r['input'])}\n{r['top'][0]['name']} {r['top'][0]['prob']:.2f}"
                              for r in results[:len(shown)]],
               ncols=ncols, size=size, suptitle=textwrap.fill(note, int(size * ncols * 9)))
    return C.png_bytes(fig)


def cmd_project(args):
    """Project one feature of a layer (given, or the image's strongest) back to pixels."""
    check_rule(args.rule)
    sources = [f"test[{i}]" for i in args.test_index or []] + [str(f) for f in args.images or []]
    names = [C.stem({"source": s}, i) + ".png" for i, s in enumerate(sources)]
    out = C.Outputs(args.out, args.force, names + ["project.json", "project.npz"])
    net, model = C.load_net(args)
    check_layer(net, args.layer)
    ch, side, _ = C.INPUTS[args.model]
    if args.feature is not None:
        check_feature(net, args.layer, args.feature, (ch, side, side))
    x, info, _ = C.load_inputs(args)
    assert [d["source"] for d in info] == sources, "load_inputs changed the order of the inputs"
    rec = net.forward(x, upto=args.layer)
    act = rec[args.layer]
    spatial = act.ndim == 4
    results, arrays = [], {}
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
        out.add(names[i], _project_figure(args, x[i], proj, box, results[-1]))
    out.add("project.json", C.summary("project", args, model, info, results, rule=args.rule,
                                      arguments=C.arguments(args)))
    out.add("project.npz", arrays)
    C.finish(args, out, [f"{r['input']}: {r['layer']} feature {r['feature']} (activation "
                        f"{r['activation']:.3g}) -> {r['figure']}" for r in results])


def _project_figure(args, image, proj, box, r) -> bytes:
    """The input and the projection side by side (the receptive field boxed on both), a colour bar of
    the projection's values, and a title naming the input, the layer, the feature and its activation."""
    import textwrap

    C.use_agg()
    import matplotlib.pyplot as plt

    from zfcore.viz.plotting import draw_box, show

    chosen = "the image's strongest" if r["feature_chosen"] == "strongest" else "given"
    lines = textwrap.wrap(_short(r["input"], 10**6), 40) + [
        f"{r['layer']} feature {r['feature']} ({chosen})", f"activation {r['activation']:.4g}"
        + ("; red box: its receptive field" if box is not None else "")]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(5.0, 2.2 + 0.22 * len(lines)), layout="constrained")
    show(ax0, C.display_image(image, args.model), "input")
    m = float(np.abs(proj).max()) or 1.0
    if proj.shape[0] == 1:
        im = ax1.imshow(proj[0], cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04, label="projected value")
        ax1.set_xticks([])
        ax1.set_yticks([])
        ax1.set_title(f"{args.rule} projection")
    else:                   # RGB: no one colour bar; each channel 0 at mid-grey, +-max|x| at the ends
        show(ax1, proj, f"{args.rule} projection", mode="symmetric")
        ax1.set_xlabel(f"0: mid-grey; +-{m:.3g}: the ends")
    if box is not None:
        for ax in (ax0, ax1):
            draw_box(ax, box, lw=1.0)
    fig.suptitle("\n".join(lines))
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
    """Run report/build.py with --out, --only and --force; --quiet: nothing on stdout; --debug: the
    builder's error output in full (its one-line refusals are otherwise shown as one line)."""
    import subprocess
    import sys

    build = SOURCE_ROOT / "report" / "build.py"
    if not build.is_file() or not (SOURCE_ROOT / "notebooks").is_dir():
        raise ZfcoreError("report: the report's notebooks and report/build.py are not part of this "
                          "installation (zfcore installed from a wheel?); run it from a source checkout "
                          "of zfcore")
    cmd = [sys.executable, str(build)] + (["--out", str(args.out)] if args.out else []) + \
        (["--only", *args.only] if args.only else []) + (["--force"] if args.force else [])
    run = subprocess.run(cmd, stderr=subprocess.PIPE, text=True,    # progress on stdout, as it comes
                         stdout=subprocess.DEVNULL if args.quiet else None)
    said = [line[len("error: "):] for line in run.stderr.splitlines() if line.startswith("error: ")]
    if args.debug:
        sys.stderr.write(run.stderr)
    if run.returncode == 2 and said:                           # refused before any work: one line
        raise ZfcoreError(said[-1])
    if run.returncode:
        if not args.debug:
            sys.stderr.write(run.stderr)
        raise ZfcoreError(f"report: report/build.py failed (exit status {run.returncode})")
