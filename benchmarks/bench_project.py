"""Speed of projection to pixels: zfcore (cropped, the default) against a PyTorch module pipeline in
huybery/VisualizingCNN's style, VGG16 with random seeded weights, one 224x224 image.

    python benchmarks/bench_project.py [--threads N] [--repeats R] [--rounds N] [--batch K] [--image chelsea|random]

Single projections: for each VGG16 conv layer, the strongest activation of the layer (over all its
feature maps) is kept and projected to pixels. zfcore: ``rec.project(layer, f, position=(r, c))`` on the
record ``rec = net.forward(x)``
(cropped to the receptive field; also ``crop=False``, the whole-map numpy path). torch: the mirror
network of ``MaxUnpool2d -> ReLU -> ConvTranspose2d`` (bias-free, the forward convs' weights shared),
run from the layer down on whole maps, as huybery's ``Vgg16Deconv`` does, under ``torch.no_grad()``
(``zfcore.comparison.huybery.Recreation`` with ``deconv_bias="zero"``).
The forward pass (and its switches) is done once beforehand on both sides and not timed.

Batched: K projections (default 512, one per conv5_3 feature, each at its strongest position) in one
``project_batch`` call; the torch pipeline runs them as batches of 16 along N (its whole-map
pipeline needs the full maps for every item). Reported as projections per second.

numpy and torch are timed in separate worker processes (their thread pools contend in one process),
with the same thread count (default: all cores), alternating over N rounds (torch, numpy, torch, ...);
each worker reports medians over R repeats after a warm-up, and the table gives the medians over rounds
with the range of the per-round speed-ups. A timed call during which other processes used more than 5%
of the CPUs (/proc/stat) is re-run; each worker reports how much other processes ran meanwhile. The
parent prints the table and the agreement of the two projections (relative error; VGG16's 2x2 pools do
not overlap, so MaxUnpool2d's assignment equals zfcore's scatter-add).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import harness  # noqa: E402  (benchmarks/harness.py, numpy only)


QUIET = 0.05          # a repeat counts only if other processes used less than this share of the CPUs
STATS = {}            # re-timed calls (harness.median_time)


def median_time(fn, repeats):
    """``harness.median_time`` with its shared-machine guard (``QUIET``), counting into ``STATS``."""
    return harness.median_time(fn, repeats, quiet=QUIET, stats=STATS)


def setup(image):
    """Spec (VGG16 convs and pools), seeded Kaiming weights and the input, numpy only."""
    import numpy as np

    from zfcore import data, models

    spec = models.features_spec("vgg16")                          # conv1_1 ... pool5
    params = models.kaiming_params(spec, seed=0)
    if image == "chelsea":
        from skimage import data as skdata
        from skimage.transform import resize

        img = skdata.chelsea().astype(np.float32) / 255.0          # 300x451 RGB
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = resize(img, (224, 224), anti_aliasing=True).astype(np.float32)
        x = data.imagenet_normalize(img.transpose(2, 0, 1)[None].copy())
    else:
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    convs = [n for n, k, _ in spec if k == "conv"]
    return spec, params, x, convs


def strongest(a):
    """(feature, row, col) of the largest value of a (C, H, W) activation."""
    import numpy as np

    f, r, c = np.unravel_index(int(a.argmax()), a.shape)
    return int(f), int(r), int(c)


# ------------------------------------------------------------------------------------------------
def worker_numpy(args):
    import numpy as np

    spec, params, x, convs = setup(args.image)
    from zfcore import models

    net = models.build(spec, params)
    t_fwd = median_time(lambda: net.forward(x), args.repeats)
    rec = net.forward(x)
    out = {"forward_ms": 1e3 * t_fwd, "layers": {}}
    projs = {}
    for name in convs:
        f, r, c = strongest(rec[name][0])
        t_crop = median_time(lambda: rec.project(name, f, position=(r, c)), args.repeats)
        t_full = median_time(lambda: rec.project(name, f, position=(r, c), crop=False),
                             max(1, args.repeats // 2))
        projs[name] = rec.project(name, f, position=(r, c))
        box = rec.input_box(name, (r, c))
        out["layers"][name] = dict(unit=[f, r, c], crop_ms=1e3 * t_crop, full_ms=1e3 * t_full,
                                   box=[int(v) for v in box], crop_macs=cropped_macs(rec, name, (r, c)))
    np.savez(os.path.join(args.out, "numpy.npz"), **projs)
    # batched: one projection per conv5_3 feature, each at its strongest position
    K = args.batch
    feats = np.arange(max(K, 16)) % rec["conv5_3"].shape[1]
    if K:
        for attempt in range(3):                         # one long call: re-run it if disturbed
            b0, o0, t0 = harness.busy_cpu_seconds(), harness.own_cpu_seconds(), time.perf_counter()
            rec.project_batch("conv5_3", feats[:K])
            t1, b1, o1 = time.perf_counter(), harness.busy_cpu_seconds(), harness.own_cpu_seconds()
            others = None if b0 is None else max(0.0, (b1 - b0) - (o1 - o0)) / ((t1 - t0) * (os.cpu_count() or 1))
            if others is None or others <= QUIET:
                break
        out["batch"] = dict(K=int(K), seconds=t1 - t0, per_second=K / (t1 - t0), others_cpu_share=others,
                            attempts=attempt + 1)
    t_16 = median_time(lambda: rec.project_batch("conv5_3", feats[:16]), max(1, args.repeats // 2))
    out["batch16"] = dict(K=16, seconds=t_16, per_second=16 / t_16)
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    out["sgemm_gflops"] = 2 * 2048 ** 3 / median_time(lambda: a @ a, 5) / 1e9
    out["retimed"] = STATS.get("retimed", 0)
    print(json.dumps(out))


def cropped_macs(rec, layer, position):
    """Multiplications of the transposed convolutions in the cropped projection of one unit (``position``
    of ``layer`` in the forward record ``rec``), counted three ways: ``direct``, each conv below ``layer`` (itself included) multiplying every value of its
    output window by its C*KH*KW weights (``projection.own_windows``: a layer's output window is the
    next layer's input window); ``winograd_rule``, the same with Winograd F(2x2, 3x3)'s 16 per 2x2 tile
    of the deconv's output and channel pair on the layers where zfcore's own rule takes it
    (``_kernels.deconv_as_conv`` and ``winograd_pays``, as ``conv_transpose2d`` decides); ``winograd_all``,
    Winograd on every 3x3 stride-1 layer."""
    import numpy as np

    from zfcore.core import _kernels as kern
    from zfcore.core import projection

    li = rec.index(layer)
    own = projection.own_windows(rec, li, np.asarray([position]), 1)     # own[j]: input of layer li - j
    out = dict(direct=0, winograd_rule=0, winograd_all=0)
    for j in range(li + 1):
        conv = rec.layers[li - j]
        if conv.kind != "conv":
            continue
        h, w = (1, 1) if j == 0 else (int(v) for v in own[j - 1][1][0])
        F, C, KH, KW = conv.weight.shape
        direct = F * C * KH * KW * h * w
        H, W = h + KH - 1, w + KW - 1                    # the deconv's output window, before the crop
        able = (KH, KW) == (3, 3) and conv.stride == (1, 1)
        wino = 16 * -(-H // 2) * -(-W // 2) * F * C if able else direct
        rule = able and kern.deconv_as_conv(h * W, C, F) and kern.winograd_pays(F, C, H * W)
        out["direct"] += direct
        out["winograd_all"] += min(direct, wino)
        out["winograd_rule"] += wino if rule else direct
    return out


def worker_torch(args):
    import numpy as np
    import torch

    from zfcore.comparison.huybery import Recreation

    torch.set_num_threads(args.threads)
    spec, params, x, convs = setup(args.image)
    # huybery's pipeline (zfcore.comparison.huybery): forward modules with switches, and the mirror
    # MaxUnpool2d -> ReLU -> ConvTranspose2d sharing the convs' weights, no deconv bias
    rec = Recreation(spec, params, deconv_bias="zero")

    def project(name, f, r, c, n=1):
        a = rec.feature_maps[rec.index[name]]
        h = torch.zeros((n,) + tuple(a.shape[1:]))
        h[torch.arange(n), f, r, c] = a[0, f, r, c]
        return rec.deconv_from(h, name)

    t_fwd = median_time(lambda: rec.forward(x), args.repeats)
    rec.forward(x)
    out = {"forward_ms": 1e3 * t_fwd, "layers": {}, "threads": torch.get_num_threads()}
    recs = {}
    for name in convs:
        f, r, c = strongest(rec.feature_maps[rec.index[name]][0].numpy())
        t = median_time(lambda: project(name, f, r, c), args.repeats)
        recs[name] = project(name, f, r, c)[0].numpy()
        out["layers"][name] = dict(unit=[f, r, c], ms=1e3 * t)
    np.savez(os.path.join(args.out, "torch.npz"), **recs)
    a = rec.feature_maps[rec.index["conv5_3"]][0]
    feats = torch.arange(16)
    flat = a[feats].reshape(16, -1).argmax(dim=1)
    rows, cols = flat // a.shape[2], flat % a.shape[2]
    t16 = median_time(lambda: project("conv5_3", feats, rows, cols, n=16), max(1, args.repeats // 2))
    out["batch16"] = dict(K=16, seconds=t16, per_second=16 / t16)
    out["retimed"] = STATS.get("retimed", 0)
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------------
def run_worker(kind, args, out_dir):
    """Run one worker; returns its JSON, plus how much CPU other processes used meanwhile (a timing
    taken while the machine was busy is not a measurement of this code)."""
    import resource

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--batch", str(args.batch), "--image", args.image, "--out", out_dir]
    busy0, own0, t0 = harness.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    busy1, own1, t1 = harness.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"{kind} worker failed")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    if busy0 is not None:
        out["others_cpu_share"] = max(0.0, (busy1 - busy0) - own) / ((t1 - t0) * (os.cpu_count() or 1))
    out["wall_s"] = t1 - t0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="torch-then-numpy rounds (ratios per round)")
    ap.add_argument("--batch", type=int, default=512, help="projections in the batched run (0: skip it)")
    ap.add_argument("--image", choices=["chelsea", "random"], default="chelsea")
    ap.add_argument("--worker", choices=["numpy", "torch"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker == "numpy":
        return worker_numpy(args)
    if args.worker == "torch":
        return worker_torch(args)

    rounds, errs = run_rounds(args)
    report(args, rounds, errs)


def run_rounds(args):
    """Rounds: torch worker, then numpy worker, ``args.rounds`` times (the batched run in the last round
    only). Speeds on this kind of VM drift over minutes by tens of percent (seen here: the same
    projection at 141 and 186 ms in two processes minutes apart), so each round's ratio compares
    neighbours in time, and the table gives medians over rounds. Returns ([(torch result, numpy
    result)] per round, {layer: relative difference of the two last projections})."""
    import numpy as np

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            last = i == args.rounds - 1
            sub = argparse.Namespace(**{**vars(args), "batch": args.batch if last else 0})
            tr = run_worker("torch", sub, tmp)
            nu = run_worker("numpy", sub, tmp)
            rounds.append((tr, nu))
        with np.load(os.path.join(tmp, "numpy.npz")) as a, np.load(os.path.join(tmp, "torch.npz")) as b:
            errs = {k: float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-30)) for k in a.files}
    return rounds, errs


def report(args, rounds, errs):
    """Print the rounds' table, the dense-GEMM ceiling of the top layer and the batched rates."""
    import numpy as np

    med = lambda v: float(np.median(v))  # noqa: E731
    print(f"VGG16 (random seeded weights), one 224x224 image ({args.image}), {args.threads} threads; "
          f"{args.rounds} rounds (torch worker, then numpy worker), each time the median of {args.repeats}")
    for i, (tr, nu) in enumerate(rounds, 1):
        for name, w in (("torch", tr), ("numpy", nu)):
            print(f"round {i}, {name} worker: {w['wall_s']:.0f} s; other processes used "
                  f"{100 * w['others_cpu_share']:.0f}% of the CPUs meanwhile; {w['retimed']} timed calls re-run "
                  f"because others used > {100 * QUIET:.0f}%")
    tr, nu = rounds[-1]
    print(f"forward pass (not part of the projections): zfcore {med([n['forward_ms'] for _, n in rounds]):.0f} ms, "
          f"torch {med([t['forward_ms'] for t, _ in rounds]):.0f} ms\n")
    hdr = (f"{'layer':8s} {'unit (f, r, c)':>16s} {'input box':>20s} {'torch ms':>9s} {'zfcore ms':>10s} "
           f"{'speed-up':>9s} {'(rounds)':>12s} {'numpy whole-map ms':>19s} {'rel. diff':>10s}")
    print(hdr)
    print("-" * len(hdr))
    for name, z in nu["layers"].items():
        t = tr["layers"][name]
        unit = tuple(z["unit"]) if z["unit"] == t["unit"] else f"{tuple(z['unit'])}!={tuple(t['unit'])}"
        tms = med([t_["layers"][name]["ms"] for t_, _ in rounds])
        zms = med([n_["layers"][name]["crop_ms"] for _, n_ in rounds])
        ratios = [t_["layers"][name]["ms"] / n_["layers"][name]["crop_ms"] for t_, n_ in rounds]
        rng = f"{min(ratios):.1f}-{max(ratios):.1f}"
        full = med([n_["layers"][name]["full_ms"] for _, n_ in rounds])
        print(f"{name:8s} {str(unit):>16s} {str(tuple(z['box'])):>20s} {tms:9.1f} {zms:10.1f} "
              f"{med(ratios):8.1f}x {rng:>12s} {full:19.1f} {errs[name]:10.1e}")
    print_ceiling(rounds)
    if "batch" in nu:
        b = nu["batch"]
        share = b.get("others_cpu_share")
        print(f"\nbatched, conv5_3: zfcore {b['K']} projections in {b['seconds']:.1f} s = {b['per_second']:.2f}/s"
              + (f" (other processes used {100 * share:.0f}% of the CPUs meanwhile)" if share is not None else ""))
    b16 = med([n_["batch16"]["per_second"] for _, n_ in rounds])
    t16 = med([t_["batch16"]["per_second"] for t_, _ in rounds])
    print(f"batched, conv5_3, 16 features: zfcore {b16:.2f}/s; torch pipeline (one batch of 16) {t16:.2f}/s "
          f"(medians over rounds)")
    print(json.dumps({"rounds": [{"torch": t_, "numpy": n_} for t_, n_ in rounds], "rel_diff": errs}))


def print_ceiling(rounds):
    """The ceiling of the top layer's speed-up with dense GEMMs: its cropped walk's multiplications at
    numpy's GEMM rate measured in the same worker, against the torch pipeline's time."""
    import numpy as np

    nu = rounds[-1][1]
    top = list(nu["layers"])[-1]
    macs = nu["layers"][top]["crop_macs"]
    rate = nu["sgemm_gflops"] * 1e9
    tms = float(np.median([t_["layers"][top]["ms"] for t_, _ in rounds]))
    print(f"\n{top}: the cropped walk's transposed convolutions at numpy's sgemm rate in the numpy worker "
          f"({nu['sgemm_gflops']:.0f} GFLOP/s, 2048^3, median of 5), against the torch pipeline's {tms:.1f} ms:")
    for key, what in (("direct", "as direct convolutions (im2col + GEMM)"),
                      ("winograd_rule", "with Winograd F(2x2, 3x3) where zfcore's rule takes it"),
                      ("winograd_all", "with Winograd F(2x2, 3x3) on every 3x3 layer")):
        floor_ms = 2e3 * macs[key] / rate
        print(f"    {what}: {macs[key] / 1e9:.2f} G multiply-adds, at least {floor_ms:.1f} ms, "
              f"speed-up at most {tms / floor_ms:.2f}x")


if __name__ == "__main__":
    main()
