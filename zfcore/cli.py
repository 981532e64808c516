"""Command line: ``python -m zfcore <command>``.

Commands:
  train   train the embedded Fashion-MNIST model (PyTorch) and export .npz weights and checkpoints
"""
from __future__ import annotations

import argparse
import sys


def _train(args):
    from .train import train

    hist = train(epochs=args.epochs, out=args.out, seed=args.seed, batch_size=args.batch_size,
                 lr=args.lr, weight_decay=args.weight_decay, subset=args.subset, device=args.device, root=args.data,
                 threads=args.threads, overwrite=args.overwrite, batchnorm=args.batchnorm,
                 precision=args.precision)
    last = hist["final"]
    print(f"final test accuracy {100 * last['test_acc']:.2f}% after {hist['epochs'][-1]['epoch']} epochs; "
          f"weights in {args.out}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m zfcore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the embedded Fashion-MNIST model")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--out", default="zfcore/assets/models")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--subset", type=int, default=None, help="train on the first N images only")
    t.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    t.add_argument("--data", default=None, help="folder holding the Fashion-MNIST idx files")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--overwrite", action="store_true", help="replace existing weights in --out")
    t.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=True,
                   help="train with BatchNorm after each conv, folded into the conv weights on export "
                        "(default: on, as the shipped model)")
    t.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="bf16 (default, as the shipped model): bfloat16 autocast for the training passes, "
                        "about 2x faster on CPUs with AVX512-BF16; fp32 for CPUs without it")
    t.set_defaults(func=_train)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
