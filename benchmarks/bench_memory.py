"""Peak memory of VGG16 in zfcore: one 224x224 forward pass with its record (switches, ReLU inputs), then
projections of conv5_3 to pixels, each in a fresh process; the peak resident set (``ru_maxrss``) of
that process, against the issue-12 bound of 1.5 GB.

    python benchmarks/bench_memory.py [--batch N]

Weights: seeded Kaiming (``zfcore.models.kaiming_params``; the memory does not depend on training),
the whole network (13 convs and the classifier) and the feature extractor alone (conv1_1 ... pool5);
the header prints the size of each one's float32 parameters. The image: random noise (memory does not
depend on it either). Cases: ``forward`` (batch N), ``+ project`` (the strongest conv5_3 unit,
cropped, the default), ``+ project_batch 16`` (16 conv5_3 features), ``+ whole maps`` (``crop=False``).
Printed: the process's peak RSS and python + numpy alone for scale.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BOUND_MB = 1500
CASES = ("baseline", "forward", "project", "project_batch", "whole_maps")


def worker(case: str, full: bool, batch: int) -> dict:
    sys.path.insert(0, ROOT)
    import numpy as np

    from zfcore import models

    out = {}
    if case != "baseline":
        spec = models.get_spec("vgg16") if full else models.features_spec("vgg16")
        net = models.build(spec, models.kaiming_params(spec, seed=0))
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        rec = net.forward(x)
        if case != "forward":
            f, (r, c) = best_unit(rec, "conv5_3")
            if case == "project":
                out["shape"] = rec.project("conv5_3", f, position=(r, c)).shape
            elif case == "project_batch":
                out["shape"] = rec.project_batch("conv5_3", list(range(16))).shape
            else:
                out["shape"] = rec.project("conv5_3", f, position=(r, c), crop=False).shape
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def best_unit(rec, layer):
    """(feature, (row, col)) of the strongest activation of ``layer`` in image 0 of the record ``rec``."""
    import numpy as np

    a = rec[layer][0]
    f, r, c = np.unravel_index(int(np.argmax(a)), a.shape)
    return int(f), (int(r), int(c))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--worker", choices=CASES)
    ap.add_argument("--features-only", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, not args.features_only, args.batch)))
        return
    sys.path.insert(0, ROOT)
    from zfcore import models

    sizes = {name: 4 * sum(int(np.prod(s)) for s in models.param_shapes(spec).values()) / 2**20
             for name, spec in (("VGG16", models.get_spec("vgg16")),
                                ("VGG16 conv1_1..pool5", models.features_spec("vgg16")))}
    print(f"VGG16, random weights, batch {args.batch} of 224x224, peak RSS (ru_maxrss) of a fresh process "
          f"per case; bound {BOUND_MB} MB; float32 parameters: "
          + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sizes.items()))
    print(f"{'network':22s} {'case':34s} {'peak MB':>8s}")
    for full in (True, False):
        for case in CASES:
            cmd = [sys.executable, __file__, "--worker", case, "--batch", str(args.batch)]
            if not full:
                cmd.append("--features-only")
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            what = {"baseline": "python + numpy + zfcore, nothing run", "forward": "forward (record kept)",
                    "project": "+ one conv5_3 projection (cropped)", "project_batch": "+ 16 conv5_3 projections",
                    "whole_maps": "+ one conv5_3 projection, whole maps"}[case]
            mb = res["maxrss_mb"]
            flag = "" if case == "baseline" else ("  <= bound" if mb <= BOUND_MB else "  OVER the bound")
            print(f"{'VGG16' if full else 'VGG16 conv1_1..pool5':22s} {what:34s} {mb:8.0f}{flag}", flush=True)


if __name__ == "__main__":
    main()
