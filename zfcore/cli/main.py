"""zfcore's command line: ``zfcore <command>`` or ``python -m zfcore <command>``.

Commands:
  classify   top classes of images (files, or --test-index into the shipped Fashion-MNIST test set)
  project    project a feature of a layer back to pixels (deconvnet, guided or gradient), with its
             receptive field drawn on the image
  topk       the paper's Fig. 2 for layers: each feature's k strongest images of a collection and their
             projections (streamed; --workers N or --scheduler ADDRESS run it on Dask)
  occlusion  occlusion sensitivity of one image (the paper's Fig. 7)
  train      train the embedded Fashion-MNIST model (PyTorch) and export weights and checkpoints
  report     build the report from the notebooks (source checkout only)

Each command writes a JSON summary (inputs, model, numbers) next to its figures in --out. Bad input
gives one line on stderr and exit status 2 (--debug shows the traceback); nothing is written then.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from zfcore import __version__
from zfcore.core.layers import RULES


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2, as argparse's own)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


class _FMT(argparse.HelpFormatter):
    """--help shows each option's default, "(default: X)", unless its help says it ("default: all");
    not for on/off flags, nor for None: the help of such an option says what leaving it out means."""

    def _get_help_string(self, action):
        text = action.help or ""
        if isinstance(action, argparse.BooleanOptionalAction) and "default" not in text:
            return text + f" (default: {action.option_strings[0 if action.default else 1]})"
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return text + " (default: %(default)s)"

    def _split_lines(self, text, width):             # keep zfcore-train/fmnist_zf whole
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


_RULE_HELP = "the ReLU's backward rule: " + ", ".join(RULES)


def _common(out_required=True, out_default=None, out_help="folder for the summary and figures",
            seed_help="seed of --weights random; recorded in the summary",
            force_help="replace files that already exist in --out",
            quiet_help="no progress bars, no report on stdout", debug_help="show the traceback of an error"):
    """The options each command shares; ``seed_help=None``: no --seed (a command with nothing random)."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--out", required=out_required, default=out_default, help=out_help)
    c.add_argument("--force", action="store_true", help=force_help)
    if seed_help:
        c.add_argument("--seed", type=int, default=0, help=seed_help)
    c.add_argument("--quiet", action="store_true", help=quiet_help)
    c.add_argument("--debug", action="store_true", help=debug_help)
    return c


def _model_args(p):
    p.add_argument("--model", default="fmnist_zf", help="fmnist_zf (embedded), vgg16, alexnet or zfnet")
    p.add_argument("--weights", default=None, metavar="FILE|random", help="weights file (.npz, .pth, "
                   ".pt), or 'random': seeded random weights (--seed), to try a model without its weights "
                   "(marked as such on stderr, figures and summary); default: the model's shipped or "
                   "cached weights")


def _upscale_arg(p):
    p.add_argument("--max-upscale", type=float, default=4.0, metavar="X",
                   help="refuse an image that would be enlarged more than X times to reach the model's input "
                   "(e.g. a 32x32 image for a 224 model); 0: no limit")


def _input_args(p, many=True):
    p.add_argument("images", nargs="*" if many else "?", default=None,
                   help="image files (PNG/JPEG, grey or RGB), resized to the model's input; default: "
                   "none (give --test-index)")
    p.add_argument("--test-index", type=int, nargs="+" if many else 1, default=None, metavar="N",
                   help="image N of the shipped Fashion-MNIST test set; default: none (give image files)")
    _upscale_arg(p)


def _add(sub, name, func, help, common):
    p = sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_FMT)
    p.set_defaults(func=func, command=name)
    return p


def build_parser():
    from zfcore.cli import commands as K
    from zfcore.cli import cmd_atlas
    from zfcore.cli.cmd_occlusion import cmd_occlusion
    from zfcore.cli.cmd_topk import cmd_topk

    p = _Parser(prog="zfcore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"zfcore {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()
    c = _add(sub, "classify", K.cmd_classify, "top classes of images", common)
    _model_args(c)
    _input_args(c)
    c.add_argument("--top", type=int, default=3, help="how many classes to list per image")
    c = _add(sub, "project", K.cmd_project, "project a feature of a layer back to pixels", common)
    _model_args(c)
    _input_args(c)
    c.add_argument("--layer", required=True, help="layer name, e.g. conv5")
    c.add_argument("--feature", type=int, default=None, help="feature map; default: the strongest")
    c.add_argument("--rule", default="deconvnet", metavar="RULE", help=_RULE_HELP)
    c = _add(sub, "topk", cmd_topk, "the paper's Fig. 2 for layers over a collection of images", common)
    _model_args(c)
    c.add_argument("--layer", required=True, nargs="+", metavar="LAYER",
                   help="layer name(s), e.g. --layer conv5 or --layer conv1 conv3 conv5 (one scan serves all)")
    c.add_argument("--k", type=int, default=9, help="images per feature")
    c.add_argument("--features", type=int, nargs="+", default=None,
                   help="feature maps to show (of every layer); default: the first four")
    c.add_argument("--images", default=None, help="folder of images, searched recursively, or an ImageFolder "
                   "layout (FOLDER/<class>/<image>); default: the shipped test set")
    c.add_argument("--layout", default="auto", choices=("auto", "folder", "imagefolder"),
                   help="--images layout; auto: an ImageFolder when FOLDER holds sub-folders and no images")
    c.add_argument("--strict", action="store_true", help="stop at the first entry of --images that cannot be "
                   "read (a FIFO, a broken link, an empty or corrupt file, an image too small); default: "
                   "skip it with a warning on stderr, counted in topk.json")
    _upscale_arg(c)
    c.add_argument("--limit", type=int, default=None,
                   help="use the first N images; default: 2000 of the shipped test set, all of a folder")
    c.add_argument("--rule", default="deconvnet", metavar="RULE", help=_RULE_HELP)
    c.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass; default: as many as fit about 512 MB of activations (<= 500)")
    c.add_argument("--threads", type=int, default=None,
                   help="threads of the single-process path, one BLAS thread each; default: every core")
    c.add_argument("--workers", type=int, default=None,
                   help="run on a local Dask cluster of N worker processes (needs zfcore[dask]); "
                   "default: no Dask")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://host:8786 (needs zfcore[dask]); "
                   "default: no Dask")
    cmd_atlas.add_parser(sub, _add, common, _model_args, _RULE_HELP, _upscale_arg)
    c = _add(sub, "occlusion", cmd_occlusion, "occlusion sensitivity of one image", common)
    _model_args(c)
    _input_args(c)
    c.add_argument("--target", type=int, default=None, help="class to track; default: the predicted one")
    c.add_argument("--size", type=int, default=None, help="side of the occluding square, pixels of the "
                   "model's input; default: 3/14 of its side (6 for fmnist_zf's 28, 48 for 224)")
    c.add_argument("--stride", type=int, default=None, help="step of the square, pixels (1..the side); "
                   "default: 1/14 of the side (2 for 28, 16 for 224): 12 x 12 positions")
    c.add_argument("--fill", type=float, default=0.0, help="value inside the square, in the network's "
                   "input units (fmnist_zf: 0 black, 1 white; vgg16/alexnet/zfnet: 0 the ImageNet mean)")
    c.add_argument("--batch-size", type=int, default=None, help="occluded copies per forward pass; "
                   "default: as many as fit about 256 MB of layer outputs (<= 256)")
    c.add_argument("--layer", default=None, help="also track the total activation of a feature map here; "
                   "default: none")
    c.add_argument("--feature", type=int, default=None, help="that feature map; default: the strongest")
    _train_parser(sub, K)
    c = _add(sub, "report", K.cmd_report, "build the report from the notebooks (source checkout)",
             _common(False, None, "folder for the rendered report (default: report/build)",
                     seed_help=None, force_help="write into an --out that holds other files (kept; the "
                     "report's own files are replaced)",
                     quiet_help="nothing on stdout (the builder's progress and its last line)",
                     debug_help="show the builder's error output in full, and the traceback"))
    c.add_argument("--only", nargs="+", default=None, help="chapter numbers to build (default: all)")
    return p


def _train_parser(sub, K):
    from zfcore.torch.train import DEFAULT_OUT

    t = _add(sub, "train", K.cmd_train, "train the embedded Fashion-MNIST model (PyTorch)",
             _common(False, str(DEFAULT_OUT / "fmnist_zf"), "folder of the run, relative to the working "
                     "directory (replaced as a whole when the run completes); the package's shipped "
                     "weights are replaced only when named: --out zfcore/assets/models",
                     seed_help="seed of the run: initial weights and the order of the images"))
    t.add_argument("--epochs", type=int, default=40, help="passes over the training split")
    t.add_argument("--batch-size", type=int, default=128, help="images per SGD step")
    t.add_argument("--lr", type=float, default=1e-2, help="learning rate")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="L2 penalty of SGD")
    t.add_argument("--subset", type=int, default=None, help="train on the first N images only; default: all "
                   "60,000")
    t.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    t.add_argument("--data", default=None, help="folder holding the Fashion-MNIST idx files; "
                   "default: $ZFCORE_DATA, then the places docs/data.md lists")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    t.add_argument("--overwrite", dest="force", action="store_true", help="same as --force")
    t.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=True,
                   help="train with BatchNorm after each conv, folded into the conv weights on export")
    t.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="bf16: bfloat16 autocast for the training passes (fast on AVX512-BF16 CPUs)")


def one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line messages joined with '; ')."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return "; ".join(part.strip() for part in msg.splitlines() if part.strip())


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 2 bad input, 130 interrupted). Once a
    command's outputs are in place, SIGINT is ignored until the program exits (``common.finish``);
    called with ``argv`` (in-process), the SIGINT handler is restored on return."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = signal.getsignal(signal.SIGINT)
    try:
        args.func(args)
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.stderr.write(f"zfcore {args.command}: interrupted; nothing was written\n")
        return 130
    except (ValueError, OSError, ImportError) as e:  # ZfcoreError and the OS's file errors
        if args.debug:
            raise
        sys.stderr.write(f"zfcore {args.command}: error: {one_line(e)}\n")
        return 2
    finally:
        if argv is not None and handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
