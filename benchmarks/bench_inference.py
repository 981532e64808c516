"""Inference of the embedded Fashion-MNIST model on the whole shipped test split: zfcore (numpy) vs
PyTorch (CPU), images per second.

    python benchmarks/bench_inference.py [--threads N] [--repeats R] [--batch B]

Two worker processes, one per framework, so their thread pools never contend; the same thread count
(default: all cores) and batch size for both. Each times R passes over the 10,000 test images after
one warm-up pass and reports the median; this process prints the table and checks that both predicted
the same labels.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def worker(kind, repeats, batch, threads):
    sys.path.insert(0, ROOT)
    import harness
    from zfcore import data, models

    x, y = data.load_dataset("test")
    if kind == "numpy":
        from zfcore import analysis

        net = models.load_model()

        def run():          # each batch split over `threads` threads, one BLAS thread each
            return analysis.predict(net, x, batch_size=batch, threads=threads)
    else:
        import torch

        from zfcore.torch.reference import torch_model

        params, _, _ = models.load_npz(models.ASSETS / "fmnist_zf.npz")
        tm = torch_model(models.FMNIST_ZF, params)
        xt = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return torch.cat([tm(xt[i:i + batch]) for i in range(0, len(xt), batch)]).numpy()

    out = run()                                                   # the warm-up
    seconds = harness.median_time(run, repeats, warmup=0)
    pred = out.argmax(1)
    print(json.dumps(dict(seconds=seconds, accuracy=float((pred == y).mean()),
                          pred=pred.tolist())))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--worker", choices=["numpy", "torch"])
    args = ap.parse_args()
    if args.worker:
        if args.worker == "torch":
            import torch

            torch.set_num_threads(args.threads)
        return worker(args.worker, args.repeats, args.batch, args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    res = {}
    for kind in ("numpy", "torch"):
        cmd = [sys.executable, __file__, "--worker", kind, "--repeats", str(args.repeats),
               "--batch", str(args.batch), "--threads", str(args.threads)]
        res[kind] = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                              text=True).stdout.strip().splitlines()[-1])
    n = len(res["numpy"]["pred"])
    same = sum(a == b for a, b in zip(res["numpy"]["pred"], res["torch"]["pred"]))
    print(f"embedded model, {n} test images, batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'':8s} {'seconds':>8s} {'images/s':>9s} {'accuracy':>9s}")
    for kind in ("numpy", "torch"):
        r = res[kind]
        print(f"{'zfcore' if kind == 'numpy' else 'torch':8s} {r['seconds']:8.2f} {n / r['seconds']:9.0f} "
              f"{100 * r['accuracy']:8.2f}%")
    print(f"ratio zfcore/torch time: {res['numpy']['seconds'] / res['torch']['seconds']:.2f}; "
          f"same predicted label on {same} of {n} images")


if __name__ == "__main__":
    sys.exit(main())
