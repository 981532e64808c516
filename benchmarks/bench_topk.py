"""Dataset-scale top-k (zfcore.analysis.topk, zfcore.analysis.distributed): the paper's Fig. 2 workload, the scan's
throughput on Dask, the scan's memory, and VGG16 conv5_3 with an extrapolation to ImageNet.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_topk.py
        [--only fig2 dask memory vgg16] [--images N] [--repeats R] [--baseline] [--threads T]
        [--dask-workers 1 2] [--memory-sizes 1000 10000] [--vgg16 N] [--vgg16-features F]
        [--extrapolate-workers 1 2 8 32]

(a) fig2: the embedded model, top-9 of all 480 conv features of conv1..conv5 over the first --images
    (default all 10,000) shipped test images, one scan for all layers, projections (cropped, batched),
    boxes and patches included (``topk.plan`` + ``topk.scan``, then ``project_winners`` +
    ``assemble``, which is ``topk.top_k``); total seconds and the split scan / project, median of
    --repeats, with ``--threads`` threads (``zfcore.analysis.parallel``; default every core). Next to it, in a
    subprocess with as many threads, PyTorch's time for the scan's forward alone (the same layers and
    images in batches of the same size, the per-map maxima of the five conv layers; no top-k, no
    projections): what the workload costs a PyTorch implementation before any of its own work.
    ``--baseline`` also times ``analysis.top_k`` one layer at a time on the array in memory.
(b) dask: the same scan on a LocalCluster of 1 and 2 worker processes (one BLAS thread each), images
    per second after a warm-up (cluster start and shipping the network not timed), and the speed-up;
    next to it the scan in this process with one BLAS thread, with the default threads, and split
    over every core by ``zfcore.analysis.parallel``.
(c) memory: the streaming scan of 1,000 and 10,000 images, each in a fresh subprocess: peak RSS
    (VmHWM, reset at the scan's start) and the tracemalloc peak during the scan. The images cycle through the first 1,000
    shipped test images (image i is test image i mod 1,000), so the source itself does not grow with N.
(d) vgg16: VGG16's features (random Kaiming weights, seed 0; timing does not depend on training),
    conv5_3 top-9 of all 512 features over --vgg16 N (default 1,000) natural-ish 224x224 images: random
    crops, flips and rescales of scikit-image's sample photographs (seeded). Times the image generation,
    the scan (default threads, and one BLAS thread on a subset: the rate of one worker) and pass 2 (the
    winners forwarded again and projected, chunk by chunk, the results dropped: all 4,608 full-size
    projections and patches would take about 5 GB), then extrapolates to 50,000 and 1.3 M images on W
    one-thread workers as time = images / (images/s per worker x W), plus pass 2 at its worst (4,608
    distinct winners), next to an estimate of about 40 hours for Yosinski's deep-visualization-toolbox
    (top-9 over ImageNet's 1.3 M training images; a reported figure whose source is not recorded here,
    not measured by this benchmark).

Prints the BLAS kernel in use (threadpoolctl) first. The benchmark unsets nothing itself: run it with
the command line above where the environment sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE. Timings on a
shared machine vary; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from zfcore import analysis, data, models  # noqa: E402  (numpy only)
from zfcore.analysis import parallel, topk  # noqa: E402  (numpy only)
from zfcore.data import sources  # noqa: E402  (numpy only)

FIG2_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
YOSINSKI_HOURS = 40.0     # reported estimate for the toolbox's top-9 over 1.3 M images; source not recorded
MB = 2.0 ** 20


def kernel_info() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')} "
                     f"({i.get('num_threads')} threads)" for i in threadpoolctl.threadpool_info()
                     if i.get("user_api") == "blas")


def one_blas_thread():
    try:
        import threadpoolctl
    except ImportError:
        raise SystemExit("threadpoolctl is needed for the one-thread measurements (pip install threadpoolctl)")
    return threadpoolctl.threadpool_limits(1)


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --- (a) the Fig. 2 workload ----------------------------------------------------------------------------
def fig2_once(net, src, layers, threads, k=9):
    """topk.top_k's steps, timed: (scan s, pass 2 s, tops, distinct winners, batch size)."""
    t0 = time.perf_counter()
    names, feats, bs, k = topk.plan(net, src, layers, k)
    states = topk.scan(net, src, names, feats, k, bs, threads=threads)
    t1 = time.perf_counter()
    win = topk.winners(states)
    parts = parallel.map_items(lambda ids: topk.project_winners(net, src, states, feats, ids),
                               topk.id_chunks(win, bs, threads), threads)
    tops = topk.assemble(net, src, states, feats, parts)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, tops, len(win), bs


def part_fig2(args):
    net = models.load_model()
    src = sources.TestSetSource(limit=args.images)
    src.load([0])                                              # read the idx file before timing
    threads = parallel.resolve(args.threads)
    runs = [fig2_once(net, src, FIG2_LAYERS, threads) for _ in range(args.repeats)]
    scan_s = statistics.median(r[0] for r in runs)
    proj_s = statistics.median(r[1] for r in runs)
    total = statistics.median(r[0] + r[1] for r in runs)
    tops = runs[-1][2]
    F = sum(len(t.features) for t in tops.values())
    n_proj = sum(t.images.size for t in tops.values())
    print(f"(a) Fig. 2 workload: embedded model, top-9 of all {F} conv features of {', '.join(FIG2_LAYERS)} "
          f"over {len(src)} test images, one scan (batches of {runs[-1][4]}), {threads} thread"
          f"{'s' if threads > 1 else ''} (zfcore.analysis.parallel)")
    print(f"    total {total:.2f} s = scan {scan_s:.2f} s + project {proj_s:.2f} s ({n_proj} projections of "
          f"{runs[-1][3]} distinct images, boxes and patches); median of {args.repeats}")
    floor(net, len(src))
    t_torch = torch_scan(args, len(src), runs[-1][4], threads)
    if t_torch:
        met = lambda ok: "met" if ok else "NOT met"
        whole, alone = total / t_torch, scan_s / t_torch
        print(f"    ratios to torch's forward of the scan: whole workload {whole:.2f} (target <= 1.5: "
              f"{met(whole <= 1.5)}), scan alone {alone:.2f} (target <= 1.0: {met(alone <= 1.0)})")
    if args.baseline:
        x = src.load(np.arange(len(src)))
        t, _ = timed(lambda: [analysis.top_k(net, x, layer, k=9) for layer in FIG2_LAYERS])
        print(f"    baseline: analysis.top_k one layer at a time on the array in memory: {t:.2f} s "
              f"({t / total:.2f}x the streaming total)")


def conv_flops(net, upto: str, shape) -> float:
    """FLOPs (2 per multiply-add) of one image's direct convolutions up to ``upto`` (im2col + GEMM does
    exactly these)."""
    x = np.zeros((1,) + tuple(shape), net.dtype)
    total = 0.0
    for layer in net.layers[:net.index(upto) + 1]:
        y = layer.infer(x)
        if layer.kind == "conv":
            F, C, KH, KW = layer.weight.shape
            total += 2.0 * F * C * KH * KW * y.shape[2] * y.shape[3]
        x = y
    return total


def sgemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """numpy's float32 GEMM rate (GFLOP/s) on n x n operands now, median of ``repeats``."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    times = [timed(lambda: a @ a)[0] for _ in range(repeats)]
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def floor(net, n_images: int):
    """Print the scan's convolution work and the time its GEMMs alone take at numpy's GEMM rate now."""
    flops = conv_flops(net, FIG2_LAYERS[-1], (1, 28, 28)) * n_images
    rate = sgemm_rate()
    print(f"    the scan's convolutions: {flops / 1e9:.1f} GFLOP ({flops / n_images / 1e6:.1f} MFLOP per image); "
          f"numpy's sgemm runs at {rate:.0f} GFLOP/s now (2048^3, median of 5), so their GEMMs alone "
          f"take at least {flops / rate / 1e9:.2f} s")


def torch_scan(args, n_images: int, batch: int, threads: int):
    """Print PyTorch's time for the scan's forward (conv1 .. conv5 and the maxima of the five conv
    layers' maps, nothing else: no top-k, no projections) over the same images in batches of the same
    size, with the same thread count, in a subprocess. Returns its median seconds (None when not measured)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", str(n_images),
                          str(batch), str(threads), str(args.repeats)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"    torch: not measured ({(out.stderr.strip().splitlines() or ['no output'])[-1]})")
        return None
    t = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    print(f"    torch {t['version']}, the scan's forward alone (conv1 .. conv5 and the per-map maxima of "
          f"the five conv layers, batches of {batch}, {threads} thread{'s' if threads > 1 else ''}, "
          f"its own process): {t['median']:.2f} s, median of {args.repeats}")
    return t["median"]


def torch_scan_worker(n_images: int, batch: int, threads: int, repeats: int):
    """The subprocess of :func:`torch_scan`: prints {"seconds": {"median", "version"}} as JSON (version
    says whether torch runs its convolutions on oneDNN)."""
    import torch

    from zfcore.torch.reference import torch_model

    torch.set_num_threads(threads)
    net = models.load_model()
    upto = net.index(FIG2_LAYERS[-1])
    spec = models.FMNIST_ZF[:upto + 1]
    names = [layer.name for layer in net.layers[:upto + 1]]
    assert [name for name, _, _ in spec] == names, "the embedded model is not models.FMNIST_ZF"
    params = {k: v for k, v in net.params.items() if k.split(".")[0] in set(names)}
    modules = list(torch_model(spec, params).children())
    keep = [layer.name in FIG2_LAYERS for layer in net.layers[:upto + 1]]
    x = torch.from_numpy(data.load_dataset("test", limit=n_images)[0])

    def run():
        with torch.no_grad():
            for i in range(0, len(x), batch):
                h = x[i:i + batch]
                for module, k in zip(modules, keep):
                    h = module(h)
                    if k:
                        h.amax(dim=(2, 3))

    run()                                                           # warm-up
    times = [timed(run)[0] for _ in range(repeats)]
    version = torch.__version__ + (" (oneDNN)" if torch.backends.mkldnn.is_available() else "")
    print(json.dumps({"seconds": {"median": statistics.median(times), "version": version}}))


# --- (b) scan throughput on Dask ---------------------------------------------------------------------------
def part_dask(args):
    from zfcore.analysis import distributed

    net = models.load_model()
    src = sources.TestSetSource(limit=args.images)
    src.load([0])
    names, feats, bs, k = topk.plan(net, src, FIG2_LAYERS, 9)
    n = len(src)
    print(f"(b) scan throughput: {', '.join(FIG2_LAYERS)} ({sum(map(len, feats.values()))} features), "
          f"{n} test images, batches of {bs}; median of {args.repeats} after a warm-up")
    rows, whole_t = {}, {}
    T = parallel.resolve(None)
    cases = [("this process, default BLAS threads", None, 1), ("this process, 1 BLAS thread", one_blas_thread, 1)]
    if T > 1:
        cases.append((f"this process, {T} threads (zfcore.analysis.parallel)", None, T))
    for label, ctx, threads in cases:
        def run():
            return topk.scan(net, src, names, feats, k, bs, threads=threads)
        if ctx is None:
            run()
            t = statistics.median(timed(run)[0] for _ in range(args.repeats))
        else:
            with ctx():
                run()
                t = statistics.median(timed(run)[0] for _ in range(args.repeats))
        rows[label] = n / t
        print(f"    {label:<40} {n / t:8.0f} images/s ({t:.2f} s)")
    for w in args.dask_workers:
        with distributed.connect(workers=w) as client:
            shipped, s = distributed.ship(client, net, src)
            distributed.scan(client, shipped, s, min(n, bs * w), names, feats, k, bs)    # warm-up
            t = statistics.median(timed(lambda: distributed.scan(client, shipped, s, n, names, feats, k, bs))[0]
                                  for _ in range(args.repeats))
            blas = sorted({str(v) for v in client.run(distributed.blas_threads).values()})
            if args.dask_top_k:                  # the whole call: ship, scan, merge, project the winners
                def whole():
                    return distributed.top_k(net, src, FIG2_LAYERS, 9, client=client, progress=None)
                whole()
                whole_t[w] = statistics.median(timed(whole)[0] for _ in range(args.repeats))
        rows[w] = n / t
        print(f"    {'Dask LocalCluster, %d worker%s' % (w, 's' if w > 1 else ''):<40} {n / t:8.0f} images/s "
              f"({t:.2f} s; workers' BLAS: {', '.join(blas)})"
              + (f"; whole top_k {whole_t[w]:.2f} s" if w in whole_t else ""))
    if 1 in rows and 2 in rows:
        sp = rows[2] / rows[1]
        print(f"    speed-up 2 workers / 1 worker, scan: {sp:.2f}x (target >= 1.7x: "
              f"{'met' if sp >= 1.7 else 'NOT met'})")
    if 1 in whole_t and 2 in whole_t:
        sp = whole_t[1] / whole_t[2]
        print(f"    speed-up 2 workers / 1 worker, whole distributed.top_k (scan and projections): {sp:.2f}x "
              f"(target >= 1.7x: {'met' if sp >= 1.7 else 'NOT met'}); bound on 2 cores: 2x, less the client, "
              f"scheduler and nannies' share of the cores")


# --- (c) memory of the scan -------------------------------------------------------------------------------
class CyclingSource:
    """Image i is shipped test image i mod ``len(base)``: any N, constant memory."""

    def __init__(self, n, base=1000):
        self.n, self.base = n, data.load_dataset("test", limit=base)[0]

    def __len__(self):
        return self.n

    @property
    def shape(self):
        return self.base.shape[1:]

    def load(self, ids):
        return self.base[np.asarray(ids) % len(self.base)]


def vm_hwm() -> int | None:
    """Peak resident memory of this process's address space (VmHWM, bytes; Linux), or None. (ru_maxrss
    is no use in a subprocess: Linux carries the parent's high-water mark over the fork and exec.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs; Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(n):
    import tracemalloc

    net = models.load_model()
    src = CyclingSource(n)
    names, feats, bs, k = topk.plan(net, src, FIG2_LAYERS, 9)
    hwm0 = vm_hwm()
    reset = reset_hwm()
    rss_start = vm_hwm()
    tracemalloc.start()
    t, states = timed(lambda: topk.scan(net, src, names, feats, k, bs))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    state_bytes = sum(s.values.nbytes + s.ids.nbytes + s.positions.nbytes for s in states.values())
    print(json.dumps(dict(n=n, batch=bs, hwm_setup=hwm0, rss_start=rss_start if reset else None,
                          hwm=vm_hwm(), traced_peak=peak, state_bytes=state_bytes, seconds=t)))


def part_memory(args):
    print(f"(c) memory of the streaming scan ({', '.join(FIG2_LAYERS)}, all features, k = 9), each size in a "
          "fresh process; images cycle through the first 1,000 test images")
    res = []
    for n in args.memory_sizes:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-worker", str(n)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res.append(r)
        print(f"    {n:>8} images: peak RSS {r['hwm'] / MB:7.1f} MB (VmHWM; RSS at the scan's start "
              f"{(r['rss_start'] or 0) / MB:.1f} MB, setup's peak {r['hwm_setup'] / MB:.1f} MB), tracemalloc peak "
              f"during the scan {r['traced_peak'] / MB:6.1f} MB, states {r['state_bytes'] / 1024:.0f} KB, "
              f"batches of {r['batch']}, {r['seconds']:.1f} s")
    if len(res) >= 2:
        a, b = res[0], res[-1]
        print(f"    {b['n']} vs {a['n']} images: peak RSS x{b['hwm'] / a['hwm']:.3f}, "
              f"tracemalloc peak x{b['traced_peak'] / a['traced_peak']:.3f}")


# --- (d) VGG16 conv5_3 ------------------------------------------------------------------------------------
class SampleImages:
    """``n`` natural-ish 224x224 RGB images (ImageNet-normalised): image i is a random crop (side 35-100%
    of the photograph's shorter side), random horizontal flip, rescaled to 224x224 (nearest pixel), of one
    of scikit-image's sample photographs, drawn from ``default_rng((seed, i))``."""

    NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
             "colorwheel", "camera", "coins", "grass", "gravel", "brick", "moon", "clock")

    def __init__(self, n, seed=0):
        self.n, self.seed, self._photos = n, seed, None

    def __getstate__(self):
        return {"n": self.n, "seed": self.seed, "_photos": None}

    def __len__(self):
        return self.n

    @property
    def shape(self):
        return (3, 224, 224)

    def photos(self):
        if self._photos is None:
            from skimage import data as sk

            ph = []
            for name in self.NAMES:
                a = getattr(sk, name)()
                a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
                ph.append(a.astype(np.float32) / 255.0)
            self._photos = ph
        return self._photos

    def image(self, i):
        rng = np.random.default_rng((self.seed, int(i)))
        ph = self.photos()
        p = ph[rng.integers(len(ph))]
        h, w = p.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        rows = top + (np.arange(224) * side) // 224
        cols = left + (np.arange(224) * side) // 224
        img = p[rows][:, cols]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        return img.transpose(2, 0, 1)

    def load(self, ids):
        x = np.stack([self.image(i) for i in ids]) if len(ids) else np.zeros((0, 3, 224, 224), np.float32)
        return data.imagenet_normalize(x)


def _project_all(net, src, states, feats, bs, ids_list):
    n = 0
    for ids in ids_list:
        part = topk.project_winners(net, src, states, feats, ids)
        n += sum(int(m.sum()) for m, _, _ in part.values())
        del part                                             # dropped: see the module docstring
    return n


def part_vgg16(args):
    spec = models.features_spec("vgg16")
    net = models.build(spec, models.kaiming_params(spec, seed=0))
    n = args.vgg16
    src = SampleImages(n)
    feats = None if args.vgg16_features is None else np.arange(args.vgg16_features)
    names, fmap, bs, k = topk.plan(net, src, "conv5_3", 9, features=feats)
    F = len(fmap["conv5_3"])
    print(f"(d) VGG16 (random Kaiming weights) conv5_3: top-9 of {F} features over {n} natural-ish 224x224 "
          f"images, batches of {bs}", flush=True)
    t_load, _ = timed(lambda: [src.load(ids) for ids in topk.id_chunks(np.arange(n), bs)])
    print(f"    image generation {t_load:.1f} s ({1e3 * t_load / n:.1f} ms/image, inside the scan's time too)",
          flush=True)
    t_scan, states = timed(lambda: topk.scan(net, src, names, fmap, k, bs))
    sub = min(n, max(bs, args.vgg16_one_thread))
    with one_blas_thread():
        t_scan1, _ = timed(lambda: topk.scan(net, src, names, fmap, k, bs, stop=sub))
    rate, rate1 = n / t_scan, sub / t_scan1
    print(f"    scan {t_scan:.1f} s: {rate:.2f} images/s (default threads); one BLAS thread on {sub} images: "
          f"{rate1:.2f} images/s per worker", flush=True)
    chunks = topk.id_chunks(topk.winners(states), bs)
    t_proj, n_proj = timed(lambda: _project_all(net, src, states, fmap, bs, chunks))
    with one_blas_thread():
        t_proj1, n_proj1 = timed(lambda: _project_all(net, src, states, fmap, bs, chunks[:1]))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # one projection alone at one thread: chunk 1's time less the forward passes of its images
    s_proj1 = max(t_proj1 - len(chunks[0]) / rate1, 0.0) / max(n_proj1, 1)
    print(f"    pass 2 (forward the {sum(map(len, chunks))} distinct winners again, project {n_proj} entries): "
          f"{t_proj:.1f} s (default threads); one BLAS thread, first chunk ({len(chunks[0])} images, "
          f"{n_proj1} projections): {t_proj1:.1f} s, i.e. {s_proj1:.3f} s per projection besides the forward")
    print(f"    scan + pass 2: {t_scan + t_proj:.1f} s; peak RSS of this process {rss / MB:.0f} MB", flush=True)
    P = F * k
    print(f"    extrapolation to M images on W one-thread workers: scan M / ({rate1:.2f} images/s x W), pass 2 at "
          f"most {P} forwards + {P} projections / W; Yosinski's toolbox: ~{YOSINSKI_HOURS:.0f} h for 1.3 M "
          "images")
    for m in (50_000, 1_300_000):
        cells = []
        for w in args.extrapolate_workers:
            hours = (m / rate1 + min(P, m) / rate1 + P * s_proj1) / w / 3600
            cells.append(f"W={w}: {hours:.1f} h")
        print(f"    {m:>9,} images: " + ", ".join(cells))


# --- main ------------------------------------------------------------------------------------------------
PARTS = {"fig2": part_fig2, "dask": part_dask, "memory": part_memory, "vgg16": part_vgg16}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(PARTS), help="run these parts only")
    ap.add_argument("--images", type=int, default=10_000, help="test images for (a) and (b)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of (a) and (b) (median)")
    ap.add_argument("--baseline", action="store_true", help="(a): also analysis.top_k one layer at a time")
    ap.add_argument("--threads", type=int, default=None, help="(a): threads of zfcore.analysis.parallel (default: every core)")
    ap.add_argument("--dask-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-dask-top-k", dest="dask_top_k", action="store_false",
                    help="(b): time the scan alone, not also the whole distributed.top_k")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--vgg16", type=int, default=1000, metavar="N", help="(d): images")
    ap.add_argument("--vgg16-features", type=int, default=None, help="(d): the first F features only (default all 512)")
    ap.add_argument("--vgg16-one-thread", type=int, default=100, help="(d): images scanned with one BLAS thread")
    ap.add_argument("--extrapolate-workers", type=int, nargs="+", default=[1, 2, 8, 32])
    ap.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-worker", type=int, nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker is not None:
        return torch_scan_worker(*args.torch_worker)
    if args.memory_worker is not None:
        return memory_worker(args.memory_worker)
    print(f"BLAS: {kernel_info()}")
    print(f"environment: OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; {os.cpu_count()} cores; "
          f"load average {load_avg()}")
    for name in args.only or PARTS:
        PARTS[name](args)
        print(f"    (load average after: {load_avg()})", flush=True)


if __name__ == "__main__":
    main()
