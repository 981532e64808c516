"""What the command line's subcommands share: the model (``--model``/``--weights``), the inputs (image
files or ``--test-index`` into the shipped test set), the output folder (every file planned and
checked before any work, written atomically at the end), figures as PNG bytes and progress bars."""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from zfcore import __version__
from zfcore._io import atomic_write, write_bytes, write_json
from zfcore.errors import ArgumentError, ZfcoreError, suggest
from zfcore.models.specs import INPUTS  # each model's input (channels, side) and normalisation


def load_net(args):
    """(network, model description for the summary) from ``--model`` and ``--weights``."""
    from zfcore.models.weights import build_model, load_model

    if args.model not in INPUTS:
        raise ArgumentError(f"--model {args.model!r}: unknown{suggest(args.model, INPUTS)} "
                            f"(known: {', '.join(INPUTS)})")
    if args.weights is not None:
        net = build_model(args.model, weights=args.weights)
        path = Path(args.weights)
    else:
        net = load_model(args.model)
        from zfcore.models.weights import default_weights_path
        path = default_weights_path(args.model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return net, {"arch": args.model, "weights": path.name, "weights_sha256": digest}


def load_inputs(args):
    """(images (N, C, H, W) float32 ready for the network, descriptions (N dicts), labels or None).

    Image files are resized to the model's input (grey for fmnist_zf, RGB + ImageNet normalisation for
    the others); ``--test-index`` picks images of the shipped Fashion-MNIST test set."""
    from zfcore import data

    channels, side, imagenet = INPUTS[args.model]
    files = list(getattr(args, "images", None) or [])
    idx = list(getattr(args, "test_index", None) or [])
    if not files and not idx:
        raise ArgumentError("no input: give image files or --test-index N")
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
        a = data.load_image(f, size=(side, side), mode="L" if channels == 1 else "RGB")
        xs.append(data.imagenet_normalize(a) if imagenet else a)
        info.append({"source": str(f)})                  # as given: two x.png in two folders differ
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
    """The files a command will write into ``--out``: named up front, refused before any work if one
    exists (unless ``--force``) or if ``--out`` is a file; written at the end, each atomically."""

    def __init__(self, out, force: bool, names):
        if out is None or str(out).strip() == "":
            raise ArgumentError("--out FOLDER is required: where the summary and figures are written")
        self.out = Path(out).expanduser()
        self.force = force
        if self.out.exists() and not self.out.is_dir():
            raise ArgumentError(f"--out {self.out}: is a file, not a folder")
        self.names = list(names)
        if not force:
            taken = [n for n in self.names if (self.out / n).exists()]
            if taken:
                raise FileExistsError(f"{self.out / taken[0]} exists; pass --force to replace it")
        self.pending = {}

    def add(self, name: str, payload) -> None:
        if name not in self.names:
            raise AssertionError(f"output {name} was not planned")
        if name.endswith(".json"):
            import json

            try:
                json.dumps(payload, allow_nan=False)
            except ValueError:
                raise ZfcoreError(f"{name}: the results hold NaN or infinite values (are the inputs and the "
                                  "weights finite?); nothing was written") from None
        self.pending[name] = payload

    def write(self) -> list[Path]:
        """Write every planned file, each atomically; if one fails, the new files written before it
        are removed again (files replaced with --force cannot be brought back)."""
        paths, created = [], []
        try:
            for name in self.names:
                p, v = self.out / name, self.pending[name]
                existed = p.exists()
                if isinstance(v, bytes):
                    write_bytes(p, v, overwrite=self.force)
                elif isinstance(v, dict) and name.endswith(".npz"):
                    atomic_write(p, lambda tmp, v=v: np.savez_compressed(tmp, **v), overwrite=self.force)
                else:
                    write_json(p, v, overwrite=self.force)
                paths.append(p)
                if not existed:
                    created.append(p)
        except BaseException:
            for p in created:
                p.unlink(missing_ok=True)
            raise
        return paths


def summary(command: str, args, model: dict, inputs, results, **extra) -> dict:
    out = {"command": command, "zfcore_version": __version__, "seed": args.seed, "model": model,
           "inputs": inputs, "results": results}
    out.update(extra)
    return out


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (no timestamp in the metadata: same figure, same bytes)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def use_agg():
    from zfcore.errors import require

    mpl = require("matplotlib", "cli", "drawing figures")
    mpl.use("Agg")


def progress(iterable, args, total=None, desc=None):
    """tqdm on stderr unless ``--quiet`` (or tqdm is missing)."""
    if args.quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0, delay=1.0)


def stem(info: dict, i: int) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(info["source"]).stem if "[" not in info["source"]
               else f"test-{info['source'][5:-1]}")
    return f"{i:02d}-{s}"


def softmax(logits):
    from zfcore.core import ops

    return ops.softmax(logits)




def finish(args, out, lines):
    paths = out.write()
    if not args.quiet:
        for line in lines:
            print(line)
        print(f"wrote {', '.join(p.name for p in paths)} in {out.out}")
