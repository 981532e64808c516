"""Size and build time of the embedded model's feature atlas over the 10,000 shipped test images (every
conv feature, top 9), the atlas that ``make report`` builds: ``zfcore.viz.atlas.build_atlas`` as
``report/build.py`` calls it, timed as a whole (the scan, the projections of the winners and the
pages) and by part, with the atlas's size on disk and its number of files. Targets: under 30 MB and
under a minute on two cores.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_atlas.py
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def main():
    import zfcore as zf
    from zfcore.analysis.topk import top_k
    from zfcore.data import CLASSES, sources
    from zfcore.viz import atlas

    try:
        from threadpoolctl import threadpool_info
        print("BLAS:", ", ".join(f"{i.get('internal_api')} {i.get('architecture')} x{i.get('num_threads')}"
                                 for i in threadpool_info()), flush=True)
    except ImportError:
        pass
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    net = zf.models.load_model()
    src = sources.TestSetSource()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        layers = [lay.name for lay in net.layers if lay.kind == "conv"]
        tops = top_k(net, src, layers, k=9)
        t1 = time.perf_counter()
        meta = atlas.build_atlas(net, src, Path(tmp) / "atlas", layers, k=9, arch="fmnist_zf",
                                 weights="fmnist_zf.npz", description="the shipped test set",
                                 classes=list(CLASSES), accuracy=True, names=lambda i: f"test[{i}]", tops=tops)
        t2 = time.perf_counter()
        files = [p for p in (Path(tmp) / "atlas").rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
    n = sum(v["features"] for v in meta["layers"].values())
    print(f"{n} features over {len(src):,} images: top_k {t1 - t0:.1f} s, pages {t2 - t1:.1f} s, "
          f"whole {t2 - t0:.1f} s (target < 60 s: {'met' if t2 - t0 < 60 else 'missed'})")
    print(f"size {size / 1e6:.1f} MB in {len(files)} files (target < 30 MB: {'met' if size < 30e6 else 'missed'})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
