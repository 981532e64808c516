"""Occlusion maps of one image at stride 1: the issue's target is under 2 s (absolute, not a ratio).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_occlusion.py [--repeats R] [--size S]

Times ``analysis.occlusion`` on test image 0 (a 6x6 grey square at every one of the 23x23 positions:
529 forward passes, with the total activity of one conv5 map recorded as well, i.e. panels (b), (d)
and (e) of the paper's Fig. 7), after one warm-up call, and reports the median of R calls. The target
is absolute, so the machine's load average is printed next to it: on a shared machine the time is an
upper bound of what an idle one takes.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from zfcore import analysis, data, models  # noqa: E402

TARGET_S = 2.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=6)
    a = ap.parse_args(argv)
    net = models.load_model()
    x, y = data.load_dataset("test", limit=1)
    grey = float(data.load_dataset("test")[0].mean())
    f = int(net.forward(x).top_features("conv5")[0][0])       # the image's strongest conv5 map

    def run():
        return analysis.occlusion(net, x[0], int(y[0]), size=a.size, stride=1, fill=grey, layer="conv5",
                                  feature=f)

    occ = run()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    load = os.getloadavg()
    try:
        import threadpoolctl
        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                         f"({i.get('num_threads')} threads)" for i in threadpoolctl.threadpool_info())
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    print(f"BLAS kernel: {blas}")
    print(f"occlusion of test image 0, {a.size}x{a.size} grey square, stride 1: {occ.prob.size} positions")
    print(f"median of {a.repeats}: {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}); target < {TARGET_S} s: "
          f"{'met' if med < TARGET_S else 'NOT met'}")
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(1, 5, 15 min) during the run")
    return med


if __name__ == "__main__":
    main()
