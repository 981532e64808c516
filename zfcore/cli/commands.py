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


def cmd_classify(args):
    """Top classes of each input image."""
    check_count(args.top, "--top", 1)
    out = C.Outputs(args.out, args.force, ["classify.json", "classify.png"])
    net, model = C.load_net(args)
    x, info, labels = C.load_inputs(args)
    probs = np.concatenate([C.softmax(net(x[i:i + 64]))
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
    C.finish(args, out, [f"{r['input']}: {r['top'][0]['name']} ({100 * r['top'][0]['prob']:.1f}%)"
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
    names = [C.stem(d, i) + ".png" for i, d in enumerate(info)]
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
    C.finish(args, out, [f"{r['input']}: {r['layer']} feature {r['feature']} (activation "
                        f"{r['activation']:.3g}) -> {r['figure']}" for r in results])


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

