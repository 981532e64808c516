"""Speed and memory of zfcore.core.ops against PyTorch (CPU) on the VGG16 conv stack, 224x224, batch 1.

    python benchmarks/bench_ops.py [--threads N] [--repeats R]

The script runs two worker processes, one that times numpy (zfcore) and one that times torch, so
their thread pools never contend (next to an idle torch a numpy GEMM was measured at a third of
its speed). Both use the same thread count (default: all cores). Each prints JSON; this process
prints the tables. Times are medians over R repeats after one warm-up.

Tables:
  conv2d            per VGG16 conv layer and for the whole conv stack (13 conv + ReLU + 5 2x2
                    max-pools): zfcore ms, torch ms, ratio zfcore/torch, zfcore GFLOP/s, and the
                    GFLOP/s of a numpy sgemm of the layer's GEMM shape (F x C*9 @ C*9 x H*W), the
                    ceiling for im2col + GEMM.
  conv_transpose2d  the same per layer, and for the whole deconvnet pass from pool5 down to pixels
                    (unpool + unrelu + conv_transpose2d, as the projection does).
  memory            peak resident memory (ru_maxrss) of a separate process that runs the conv
                    stack forward and the deconv stack back once, and tracemalloc peaks.

The machine may be shared: each worker measures how much CPU other processes used while it ran,
every timing is re-taken when they were busy (see ``harness.median_time``), and the workers alternate
(--rounds) so that a slow spell of the machine does not favour one library.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# (C_in, C_out, H=W) of VGG16's 13 conv layers (3x3, stride 1, padding 1); "M" = 2x2 max-pool
VGG16 = [(3, 64, 224), (64, 64, 224), "M",
         (64, 128, 112), (128, 128, 112), "M",
         (128, 256, 56), (256, 256, 56), (256, 256, 56), "M",
         (256, 512, 28), (512, 512, 28), (512, 512, 28), "M",
         (512, 512, 14), (512, 512, 14), (512, 512, 14), "M"]
CONVS = [c for c in VGG16 if c != "M"]
NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


def flops(c_in, c_out, h):
    return 2.0 * c_out * c_in * 9 * h * h


STACK_GFLOP = sum(flops(*c) for c in CONVS) / 1e9      # 30.69


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402  (benchmarks/harness.py, numpy only)

QUIET = 0.05                            # a timing counts only if other processes used less than this
RETRIES = {"retimed": 0, "gave_up": 0}  # share of the CPUs meanwhile; else it is re-taken (or kept)


def median_time(fn, repeats):
    """Median wall time of fn over `repeats` calls after one warm-up: ``harness.median_time`` with its
    shared-machine guard (``QUIET``), counting re-taken timings into RETRIES."""
    return harness.median_time(fn, repeats, quiet=QUIET, stats=RETRIES)


def weights(np, seed=0):
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((co, ci, 3, 3)) * (2.0 / (ci * 9)) ** 0.5).astype(np.float32) for ci, co, _ in CONVS]
    bs = [(0.01 * rng.standard_normal(co)).astype(np.float32) for _, co, _ in CONVS]
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    return ws, bs, x


def numpy_stack_forward(ops, ws, bs, x):
    """VGG16's conv stack in zfcore.core.ops: 13 conv + ReLU, 5 pools. Returns (output, switches, shapes)."""
    switches, shapes, k = [], [], 0
    for item in VGG16:
        if item == "M":
            shapes.append(x.shape)
            x, s = ops.max_pool2d(x, 2)
            switches.append(s)
        else:
            x = ops.relu(ops.conv2d(x, ws[k], bs[k], padding=1))
            k += 1
    return x, switches, shapes


def numpy_stack_backward(ops, ws, r, switches, shapes):
    """The deconvnet of numpy_stack_forward (unpool, unReLU, deconv); consumes switches and shapes."""
    k = len(CONVS)
    for item in reversed(VGG16):
        if item == "M":
            r = ops.max_unpool2d(r, switches.pop(), shapes.pop())
        else:
            k -= 1
            r = ops.conv_transpose2d(ops.unrelu(r), ws[k], padding=1)
    return r


# ----------------------------------------------------------------------------------------------
def worker_numpy(repeats):
    import tracemalloc

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from zfcore.core import ops

    ws, bs, x0 = weights(np)
    rng = np.random.default_rng(1)

    def stack_forward(x):
        return numpy_stack_forward(ops, ws, bs, x)

    def stack_backward(r, switches, shapes):
        return numpy_stack_backward(ops, ws, r, switches, shapes)

    res = {"layers": [], "threads": None}
    try:
        import threadpoolctl
        res["blas"] = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                       for i in threadpoolctl.threadpool_info()]
    except ImportError:
        res["blas"] = None
    for (ci, co, h), name in zip(CONVS, NAMES):
        x = rng.standard_normal((1, ci, h, h)).astype(np.float32)
        y = rng.standard_normal((1, co, h, h)).astype(np.float32)
        k = CONVS.index((ci, co, h))
        w, b = ws[k], bs[k]
        A = rng.standard_normal((co, ci * 9)).astype(np.float32)
        B = rng.standard_normal((ci * 9, h * h)).astype(np.float32)
        AT = rng.standard_normal((ci * 9, co)).astype(np.float32)
        Y = rng.standard_normal((co, h * h)).astype(np.float32)
        res["layers"].append({
            "name": name,
            "conv_s": median_time(lambda: ops.conv2d(x, w, b, padding=1), repeats),
            "deconv_s": median_time(lambda: ops.conv_transpose2d(y, w, padding=1), repeats),
            "gemm_s": median_time(lambda: A @ B, repeats),
            "gemm_t_s": median_time(lambda: AT @ Y, repeats),
        })
    res["stack_s"] = median_time(lambda: stack_forward(x0), repeats)
    out, sw, shp = stack_forward(x0)
    res["deconv_stack_s"] = median_time(lambda: stack_backward(out, list(sw), list(shp)), repeats)
    n = 4096
    square = rng.standard_normal((n, n)).astype(np.float32)
    res["sgemm_square_s"] = median_time(lambda: square @ square, max(3, repeats // 2))
    res["sgemm_square_n"] = n
    square = None                       # free its 64 MB before the memory measurements
    tracemalloc.start()
    stack_forward(x0)
    res["tracemalloc_peak_forward_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.reset_peak()
    stack_backward(out, list(sw), list(shp))
    res["tracemalloc_peak_deconv_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    res["retries"] = RETRIES
    res["numpy"] = np.__version__
    print(json.dumps(res))


def worker_torch(repeats, threads):
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    ws, bs, x0 = weights(np)
    ws, bs, x0 = [torch.from_numpy(w) for w in ws], [torch.from_numpy(b) for b in bs], torch.from_numpy(x0)
    g = torch.Generator().manual_seed(1)

    def stack_forward(x):
        switches, shapes, k = [], [], 0
        for item in VGG16:
            if item == "M":
                shapes.append(x.shape)
                x, s = F.max_pool2d(x, 2, return_indices=True)
                switches.append(s)
            else:
                x = F.relu(F.conv2d(x, ws[k], bs[k], padding=1))
                k += 1
        return x, switches, shapes

    def stack_backward(r, switches, shapes):
        k = len(CONVS)
        for item in reversed(VGG16):
            if item == "M":
                r = F.max_unpool2d(r, switches.pop(), 2, output_size=shapes.pop()[2:])
            else:
                k -= 1
                r = F.conv_transpose2d(F.relu(r), ws[k], padding=1)
        return r

    res = {"layers": [], "torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.no_grad():
        for (ci, co, h), name in zip(CONVS, NAMES):
            x = torch.randn((1, ci, h, h), generator=g)
            y = torch.randn((1, co, h, h), generator=g)
            k = CONVS.index((ci, co, h))
            res["layers"].append({
                "name": name,
                "conv_s": median_time(lambda: F.conv2d(x, ws[k], bs[k], padding=1), repeats),
                "deconv_s": median_time(lambda: F.conv_transpose2d(y, ws[k], padding=1), repeats),
            })
        res["stack_s"] = median_time(lambda: stack_forward(x0), repeats)
        out, sw, shp = stack_forward(x0)
        res["deconv_stack_s"] = median_time(lambda: stack_backward(out, list(sw), list(shp)), repeats)
    res["retries"] = RETRIES
    print(json.dumps(res))


# ----------------------------------------------------------------------------------------------
def run_worker(kind, threads, repeats):
    """Run one worker; also measure how much CPU *other* processes used meanwhile."""
    import resource
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    busy0, own0 = harness.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                          "--threads", str(threads), "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    busy1, own1 = harness.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.setdefault("retries", {"retimed": 0, "gave_up": 0})
    own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    res["wall_s"] = wall
    res["foreign_cpu_s"] = None if busy0 is None else max(0.0, (busy1 - busy0) - own)
    return res


def worker_memory():
    """Peak resident memory of a process that only runs the VGG16 conv stack forward and back."""
    import resource

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from zfcore.core import ops

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ws, bs, x = weights(np)
    x, switches, shapes = numpy_stack_forward(ops, ws, bs, x)
    fwd = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    numpy_stack_backward(ops, ws, x, switches, shapes)
    both = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mb": base, "after_forward_mb": fwd, "after_deconv_mb": both}))


def best_of(runs):
    """Element-wise minimum over rounds of every timing (keys ending in _s) of the workers' results."""
    out = json.loads(json.dumps(runs[0]))
    for r in runs[1:]:
        for k, v in r.items():
            if k.endswith("_s") and k not in ("wall_s", "foreign_cpu_s"):
                out[k] = min(out[k], v)
        for lo, lr in zip(out["layers"], r["layers"]):
            for k, v in lr.items():
                if k.endswith("_s"):
                    lo[k] = min(lo[k], v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per median")
    ap.add_argument("--rounds", type=int, default=2,
                    help="numpy and torch workers alternate this many times; each timing is the "
                         "best (minimum) of its per-round medians, for both libraries alike")
    ap.add_argument("--worker", choices=["numpy", "torch", "memory"])
    a = ap.parse_args()
    if a.worker == "numpy":
        return worker_numpy(a.repeats)
    if a.worker == "torch":
        return worker_torch(a.repeats, a.threads)
    if a.worker == "memory":
        return worker_memory()

    runs = {"numpy": [], "torch": []}
    for _ in range(a.rounds):
        for kind in ("numpy", "torch"):
            runs[kind].append(run_worker(kind, a.threads, a.repeats))
    mem = run_worker("memory", a.threads, 1)
    npr, tr = best_of(runs["numpy"]), best_of(runs["torch"])
    print(f"# zfcore.core.ops vs torch {tr['torch']} (CPU), VGG16 224x224 batch 1 float32, {a.threads} threads; "
          f"each time the best of {a.rounds} rounds of a median of {a.repeats}; numpy {npr['numpy']}, "
          f"nproc {os.cpu_count()}")
    if npr.get("blas"):
        print("# BLAS: " + "; ".join(f"{b['internal_api']} {b['version']} {b['architecture']} "
                                      f"threads={b['num_threads']}" for b in npr["blas"]))
    for name in ("numpy", "torch"):
        for i, r in enumerate(runs[name]):
            if r["foreign_cpu_s"] is not None:
                print(f"# {name} worker, round {i + 1}: {r['wall_s']:.0f} s; other processes used "
                      f"{r['foreign_cpu_s']:.1f} CPU-s meanwhile ({100 * r['foreign_cpu_s'] / r['wall_s']:.0f}% of one"
                      f" core); {r['retries']['retimed']} timings re-taken because of them, "
                      f"{r['retries']['gave_up']} kept disturbed")
    sq = 2 * npr["sgemm_square_n"] ** 3 / npr["sgemm_square_s"] / 1e9
    print(f"# numpy sgemm {npr['sgemm_square_n']}^3: {sq:.0f} GFLOP/s")
    for op, key, gkey, stack_key, stack_name in (
            ("conv2d", "conv_s", "gemm_s", "stack_s", "conv stack (13 conv+ReLU, 5 pools)"),
            ("conv_transpose2d", "deconv_s", "gemm_t_s", "deconv_stack_s",
             "deconv stack (5 unpools, 13 unReLU+deconv)")):
        print(f"\n## {op}\n")
        print("| layer | GFLOP | zfcore ms | torch ms | zfcore/torch | zfcore GFLOP/s | sgemm GFLOP/s (same GEMM) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for (ci, co, h), ln, lt in zip(CONVS, npr["layers"], tr["layers"]):
            gf = flops(ci, co, h) / 1e9
            print(f"| {ln['name']} ({ci}->{co}, {h}x{h}) | {gf:.2f} | {ln[key] * 1e3:.1f} | {lt[key] * 1e3:.1f} | "
                  f"{ln[key] / lt[key]:.2f} | {gf / ln[key]:.0f} | {gf / ln[gkey]:.0f} |")
        ts = sum(ln[gkey] for ln in npr["layers"])
        print(f"| **{stack_name}** | {STACK_GFLOP:.2f} | **{npr[stack_key] * 1e3:.0f}** | "
              f"**{tr[stack_key] * 1e3:.0f}** | **{npr[stack_key] / tr[stack_key]:.2f}** | "
              f"**{STACK_GFLOP / npr[stack_key]:.0f}** | {STACK_GFLOP / ts:.0f} |")
        print(f"\nThe 13 GEMMs alone (sgemm column, full-size operands) take {ts * 1e3:.0f} ms.")
    print(f"\n## memory\n\npeak RSS (ru_maxrss) of a process running the conv stack forward: "
          f"{mem['after_forward_mb']:.0f} MB, then the deconv stack: {mem['after_deconv_mb']:.0f} MB "
          f"(python + numpy alone: {mem['before_mb']:.0f} MB; the float32 VGG16 conv weights are 59 MB). "
          f"tracemalloc peak of one conv-stack forward: {npr['tracemalloc_peak_forward_mb']:.0f} MB, of one "
          f"deconv-stack pass: {npr['tracemalloc_peak_deconv_mb']:.0f} MB.")


if __name__ == "__main__":
    main()
