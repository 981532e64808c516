"""zfcore against the re-creation of huybery/VisualizingCNN's pipeline (``zfcore.comparison.huybery``) and captum: VGG16, one photo.

    python benchmarks/bench_compare.py [--threads N] [--repeats R] [--size S]

VGG16 with seeded random weights (``zfcore.models.build_model("vgg16", seed=0)``; the timings do not
depend on the values), scikit-image's ``chelsea`` resized to S x S (default 224; a multiple of 224, as the
classifier's adaptive pooling to 7 x 7 takes pool5's S/32 x S/32 maps in whole blocks) and fed as the original
does (BGR, RGB ImageNet statistics). Three worker processes, one per implementation, so that numpy's
and torch's thread pools never contend; each uses N threads (default: all cores), prints JSON, and
this process prints one Markdown table. Medians of R runs after one warm-up.

Measures (``harness.time_zfcore`` / ``time_recreation`` / ``time_captum``, in benchmarks/harness.py):

  forward             one image through the whole net, recording switches (zfcore: ``Network.forward``,
                      a ``Record`` of every layer's activation and cache; re-creation: its hooked ``features`` +
                      classifier, as the original). captum has no separate forward.
  project <layer>     the strongest activation of the strongest map of each conv layer, to pixels,
                      after one forward: zfcore's cropped projection (``Record.project``); the re-creation's selection +
                      dense mirror (``MaxUnpool2d -> ReLU -> ConvTranspose2d``, random biases as the
                      original); one captum ``NeuronDeconvolution.attribute`` call (its own forward up to
                      pool5 and backward, on the features part only).
  figure              the original's demo figure: forward + the 7 layers conv3_3 ... conv5_3, each
                      selected, projected and min-max scaled to uint8 (captum: 7 attribute calls + the
                      scaling, selection given).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def setup(size):
    sys.path.insert(0, ROOT)
    import skimage.data

    from zfcore.comparison import huybery
    from zfcore import models

    net = models.build_model("vgg16", seed=0)
    img = huybery.resize_bilinear(skimage.data.chelsea(), size)
    return net, huybery.prepare_input(img, "BGR")


def worker(kind, repeats, threads, size):
    warnings.filterwarnings("ignore")
    net, x = setup(size)
    import harness
    from zfcore import models
    from zfcore.comparison import huybery

    convs = huybery.conv_layers("vgg16")
    demo = huybery.layer_names("vgg16")
    res = {"impl": kind, "python": platform.python_version()}
    if kind == "zfcore":
        import numpy as np

        res["numpy"] = np.__version__
        times = harness.time_zfcore(net, x, convs, demo, repeats)
    else:
        import torch

        torch.set_num_threads(threads)
        res["torch"] = torch.__version__
        res["torch_threads"] = torch.get_num_threads()
        if kind == "recreation":
            rec = huybery.Recreation(net.spec, net.params, deconv_bias="random", bias_seed=0)
            times = harness.time_recreation(rec, x, convs, demo, repeats)
        else:
            import captum

            res["captum"] = captum.__version__
            spec, params = models.features_spec(net.spec, net.params)
            rec = huybery.Recreation(spec, params, deconv_bias="zero")
            rec.forward(x)
            units = {}
            for name in convs:
                _, sel = rec.select(name)
                units[name] = (sel.feature, *sel.positions[0])
            times = harness.time_captum(spec, params, x, convs, units, demo, repeats)
    res["times"] = times
    print(json.dumps(res))


def run_worker(kind, threads, repeats, size):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--threads", str(threads),
                          "--repeats", str(repeats), "--size", str(size)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {kind} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224, help="image size S, a multiple of 224")
    ap.add_argument("--worker", choices=["zfcore", "recreation", "captum"])
    a = ap.parse_args()
    if a.size <= 0 or a.size % 224:
        ap.error(f"--size {a.size}: must be a multiple of 224 (the classifier pools pool5's maps to 7 x 7)")
    if a.worker:
        return worker(a.worker, a.repeats, a.threads, a.size)

    load = os.getloadavg()
    t0 = time.time()
    res = {k: run_worker(k, a.threads, a.repeats, a.size) for k in ("zfcore", "recreation", "captum")}
    sys.path.insert(0, ROOT)
    import harness
    from zfcore.comparison.compare import format_table

    rows = harness.timing_rows({k: r["times"] for k, r in res.items()})
    print(f"# zfcore vs re-created huybery/VisualizingCNN vs captum {res['captum']['captum']}: VGG16 "
          f"(seeded random weights), chelsea {a.size}x{a.size}, float32, {a.threads} threads each "
          f"(separate processes), median of {a.repeats}")
    print(f"# numpy {res['zfcore']['numpy']}, torch {res['recreation']['torch']} "
          f"(threads {res['recreation']['torch_threads']}), python {res['zfcore']['python']}, "
          f"nproc {os.cpu_count()}, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"wall {time.time() - t0:.0f} s")
    print()
    print(format_table(rows, formats={"zfcore ms": ".1f", "recreation ms": ".1f", "captum ms": ".1f",
                                      "recreation / zfcore": ".2f", "captum / zfcore": ".2f"}))


if __name__ == "__main__":
    main()
