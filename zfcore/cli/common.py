"""What the command line's subcommands share: the model (``--model``/``--weights``), the inputs (image
files or ``--test-index`` into the shipped test set), the output folder (every file planned and
checked before any work, written atomically at the end), figures as PNG bytes and progress bars."""
from __future__ import annotations

import hashlib
import io
import re
import sys
from pathlib import Path

import numpy as np

from zfcore import __version__
from zfcore._io import bytes_writer, json_bytes, probe_folder, write_set
from zfcore.errors import ArgumentError, ZfcoreError, check_count, suggest
from zfcore.models.specs import INPUTS  # each model's input (channels, side) and normalisation


_RANDOM = {"seed": None}     # --weights random: the seed, marking this run's figures and stdout lines


def load_net(args):
    """(network, model description for the summary) from ``--model`` and ``--weights``: a weights file
    (recorded with its SHA-256), the model's shipped or cached weights, or ``--weights random``: seeded
    random weights (``--seed``), said on stderr at the start and marked on every figure and stdout line."""
    from zfcore.models.weights import build_model, default_weights_path

    if args.model not in INPUTS:
        raise ArgumentError(f"--model {args.model!r}: unknown{suggest(args.model, INPUTS)} "
                            f"(known: {', '.join(INPUTS)})")
    _RANDOM["seed"] = None
    if args.weights == "random":
        net = build_model(args.model, seed=args.seed)
        _RANDOM["seed"] = args.seed
        sys.stderr.write(f"zfcore {args.command}: warning: --weights random: {args.model} with random "
                         f"weights (seed {args.seed}), not a trained model\n")
        return net, {"arch": args.model, "weights": f"random weights, seed {args.seed}",
                     "weights_seed": args.seed}
    path = Path(args.weights) if args.weights is not None else default_weights_path(args.model)
    net = build_model(args.model, weights=path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return net, {"arch": args.model, "weights": path.name, "weights_sha256": digest.hexdigest()}


def mark_line(line: str) -> str:
    """A stdout line, prefixed ``[random weights, seed N]`` under ``--weights random``."""
    seed = _RANDOM["seed"]
    return line if seed is None else f"[random weights, seed {seed}] {line}"


def mark_figure(fig) -> dict:
    """Under ``--weights random``, a red line above ``fig`` and the savefig arguments that take it into
    the image; ``{}`` otherwise."""
    seed = _RANDOM["seed"]
    if seed is None:
        return {}
    fig.text(0.5, 1.0, f"random weights (seed {seed}): not a trained model", ha="center", va="bottom",
             color="red", fontweight="bold")
    return {"bbox_inches": "tight", "pad_inches": 0.1}


def max_upscale(args):
    """--max-upscale as ``zfcore.data`` takes it: None for 0 (no limit); a number >= 1 otherwise."""
    value = getattr(args, "max_upscale", 4.0)
    if value == 0:
        return None
    if not (1 <= value < float("inf")):
        raise ArgumentError(f"--max-upscale must be a number >= 1, or 0 for no limit, got {value:g}")
    return value


def load_inputs(args):
    """(images (N, C, H, W) float32 ready for the network, descriptions (N dicts), labels or None).

    Image files are loaded upright (EXIF orientation), their centred square resized to the model's input
    (grey for fmnist_zf, RGB + ImageNet normalisation for the others; large JPEGs decoded at a reduced
    scale; images that would be enlarged more than --max-upscale times refused), and each description records
    what was done (``zfcore.data.loading.read_image``: pixels, orientation, fit, box, scale);
    ``--test-index`` picks images of the shipped Fashion-MNIST test set."""
    from zfcore import data

    channels, side, imagenet = INPUTS[args.model]
    files = list(getattr(args, "images", None) or [])
    idx = list(getattr(args, "test_index", None) or [])
    if not files and not idx:
        raise ArgumentError("no input: give image files or --test-index N")
    upscale = max_upscale(args)
    xs, info, labels = [], [], []
    if idx:
        if args.model != "fmnist_zf":
            raise ArgumentError(f"--test-index: the shipped test set is 28x28 grey Fashion-MNIST, for "
                                f"--model fmnist_zf, not {args.model}")
        x, y = data.load_dataset("test")
        for i in idx:
            if not 0 <= i < len(x):
                raise ArgumentError(f"--test-index {i}: out of range 0..{len(x) - 1}")
            xs.append(x[i:i + 1])
            info.append({"source": f"test[{i}]", "label": int(y[i]), "label_name": data.CLASSES[y[i]]})
            labels.append(int(y[i]))
    for f in files:
        a, done = data.loading.read_image(f, size=(side, side), mode="L" if channels == 1 else "RGB",
                                          max_upscale=upscale)
        xs.append(data.imagenet_normalize(a) if imagenet else a)
        info.append({"source": str(f), **done})          # as given: two x.png in two folders differ
        labels.append(None)
    return np.concatenate(xs).astype(np.float32), info, labels


def class_name(arch: str, c: int, n_classes: int) -> str:
    """Fashion-MNIST's name of class ``c`` for the embedded architecture with its ten outputs; "class c"
    for other architectures and for a classifier of another width (weights of another task)."""
    from zfcore.data.loading import CLASSES

    return CLASSES[c] if arch == "fmnist_zf" and n_classes == len(CLASSES) else f"class {c}"


def display_image(x: np.ndarray, arch: str) -> np.ndarray:
    """Undo the ImageNet normalisation for display: (C, H, W) in [0, 1]."""
    if not INPUTS[arch][2]:
        return x
    from zfcore.data.loading import IMAGENET_MEAN, IMAGENET_STD

    return np.clip(x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None], 0, 1)


class Outputs:
    """The files a command writes into ``--out``, as one set. Checked when made, before any work:
    ``--out`` is a folder (created if missing) where a file can be created (a temporary file, removed
    again; a folder made for the check is removed too), none of the names is a folder, and none exists
    unless ``force`` (which replaces these files, no others). ``write`` puts them in place together
    (``zfcore._io.write_set``): all or nothing, never mixed with a concurrent run's set."""

    def __init__(self, out, force: bool, names):
        if out is None or str(out).strip() == "":
            raise ArgumentError("--out FOLDER is required: where the summary and figures are written")
        self.out = Path(out).expanduser()
        self.force = force
        if self.out.exists() and not self.out.is_dir():
            raise ArgumentError(f"--out {self.out}: is a file, not a folder")
        self.names = list(names)
        for n in self.names:
            if (self.out / n).is_dir():
                raise ArgumentError(f"--out {self.out}: {n} is a folder, where this command writes a file; "
                                    "move it or choose another --out")
        if not force:
            taken = [n for n in self.names if (self.out / n).exists()]
            if taken:
                raise FileExistsError(f"{self.out / taken[0]} exists; pass --force to replace it")
        try:
            probe_folder(self.out)
        except OSError as e:
            raise ArgumentError(f"--out {self.out}: cannot write there ({_reason(e)})") from None
        self.pending = {}

    def add(self, name: str, payload) -> None:
        if name not in self.names:
            raise AssertionError(f"output {name} was not planned")
        if name.endswith(".json"):
            try:
                payload = json_bytes(payload)
            except ValueError:
                raise ZfcoreError(f"{name}: the results hold NaN or infinite values (are the inputs and the "
                                  "weights finite?); nothing was written") from None
        self.pending[name] = payload

    def write(self) -> list[Path]:
        """Write the planned files as one set. From the moment they are renamed into place, SIGINT is
        ignored (the set is whole; ``cli.main`` restores the handler when called with ``argv``). A
        failure while writing leaves nothing of this run and names the file asked for."""
        writers = {}
        for name in self.names:
            v = self.pending[name]
            if isinstance(v, dict) and name.endswith(".npz"):
                writers[name] = lambda tmp, v=v: np.savez_compressed(tmp, **v)
            else:
                writers[name] = bytes_writer(v)
        try:
            return write_set(self.out, writers, overwrite=self.force, keep_interrupts_off=True)
        except FileExistsError:          # a concurrent run wrote one of the names meanwhile
            taken = [n for n in self.names if (self.out / n).exists()] or self.names
            raise FileExistsError(f"{self.out / taken[0]} exists; pass --force to replace it") from None
        except OSError as e:
            what = Path(e.filename).name if e.filename else "its files"
            raise ZfcoreError(f"--out {self.out}: cannot write {what} there ({_reason(e)}); nothing of "
                              "this run was written") from None


def _reason(e: OSError) -> str:
    """Why a write failed, in words (the OS's, or what a missing folder means)."""
    if isinstance(e, NotADirectoryError):
        return "a parent of it is a file"
    return e.strerror or type(e).__name__


def arguments(args) -> dict:
    """Every argument of the command as parsed, except those that change no result (``--out``,
    ``--force``, ``--quiet``, ``--debug``): recorded in the summary, so that a run can be repeated."""
    return {k: v for k, v in sorted(vars(args).items())
            if k not in ("out", "force", "quiet", "debug", "func", "command")}


def summary(command: str, args, model: dict, inputs, results, **extra) -> dict:
    out = {"command": command, "zfcore_version": __version__, "seed": args.seed, "model": model,
           "inputs": inputs, "results": results}
    out.update(extra)
    return out


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (no timestamp in the metadata: same figure, same bytes)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, **mark_figure(fig))
    plt.close(fig)
    return buf.getvalue()


def use_agg():
    from zfcore.errors import require

    mpl = require("matplotlib", "cli", "drawing figures")
    mpl.use("Agg")


def progress(iterable, args, total=None, desc=None, unit="it"):
    """tqdm on stderr unless ``--quiet`` (or tqdm is missing); shown once a second has passed."""
    if args.quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, mininterval=1.0, delay=1.0)


def stem(info: dict, i: int) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(info["source"]).stem if "[" not in info["source"]
               else f"test-{info['source'][5:-1]}")
    return f"{i:02d}-{s}"


def softmax(logits):
    from zfcore.core import ops

    return ops.softmax(logits)




def finish(args, out, lines):
    """Write the set of files, then report. Once the set is in place, Ctrl-C no longer interrupts the
    command: the outputs are whole, it exits with status 0 (docs/cli.md)."""
    paths = out.write()
    if not args.quiet:
        for line in lines:
            print(mark_line(line))
        print(mark_line(f"wrote {', '.join(p.name for p in paths)} in {out.out}"))


def check_scan_args(args) -> None:
    """The scan's options (--k, --limit, --batch-size, --workers, --scheduler, --threads), checked
    before any work."""
    check_count(args.k, "--k", 1)
    for value, name in ((args.limit, "--limit"), (args.batch_size, "--batch-size")):
        if value is not None:
            check_count(value, name, 1)
    if args.workers is not None:
        check_count(args.workers, "--workers", 1, 256)
        if args.scheduler is not None:
            raise ArgumentError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if args.threads is not None:
        check_count(args.threads, "--threads", 1, 1024)
        if args.workers is not None or args.scheduler is not None:
            raise ArgumentError("--threads is for the single-process path: each Dask worker runs one thread")
