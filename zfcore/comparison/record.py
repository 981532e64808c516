"""The ORIGINAL huybery/VisualizingCNN's outputs, recorded from a run of a clone with their provenance, so
that a build without a clone can show them (notebook 06); and a check of a record against a new run.

Record (with a clone and OpenCV, ``pip install 'zfcore[huybery]'``)::

    python -m zfcore.comparison.record --clone /path/to/VisualizingCNN [--commit HASH] [--out FILE]

Check the record against a new run of a clone (exit status 1 and a list of differences if it fails)::

    python -m zfcore.comparison.record --clone /path/to/VisualizingCNN --check [--out FILE]

The run (:func:`measure`): zfcore's seeded random VGG16 (``build_model("vgg16", seed=0)``) inside the
original's two networks (``zfcore.comparison.original.load``), its deconv biases drawn from
``bias_seed``; scikit-image's ``chelsea`` resized to 224 x 224 and fed in BGR order with RGB statistics
(:func:`chelsea_input`, what the original's ``load_images`` does to a photo); at every conv layer the
original's own ``vis_layer`` with its deconv biases zeroed and as published, against zfcore
(``compare.original_agreement``). The file (JSON, :data:`RECORD`) holds:

* ``provenance``: the original's repository and commit (``git rev-parse HEAD`` in the clone, or
  ``--commit``), a SHA-256 of each of its files that run, the command, the date (UTC), the machine and
  the versions of Python, numpy, torch, torchvision, OpenCV and zfcore;
* ``weights``: architecture, seed, SHA-256 of the parameters (:func:`params_sha256`), the deconv
  biases' seed and a SHA-256 of the biases the original drew from it;
* ``input``: the photo, its size and channel order, and a SHA-256 of the network input;
* ``layers``: the numbers of ``original_agreement``, one dict per conv layer;
* ``panels``: the map its ``vis_layer`` chose at each demo layer (``huybery.DEMO_LAYERS``), biases zeroed
  and as published, and the name and SHA-256 of a PNG file beside the record holding the uint8 picture it
  returned (224 x 224, as it is: its fine texture is what the published biases add), in a folder named
  as the record without ``.json``.

:func:`load` reads a record and its pictures (each checked against its hash); :func:`check` compares
it with a new run.
torch, PIL and scikit-image are imported inside functions only.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from zfcore.comparison import huybery, original
from zfcore.errors import ArgumentError, ZfcoreError

RECORD = Path(__file__).resolve().parent.parent / "assets" / "comparison" / "original-run.json"
RECORD_NAME = "zfcore/assets/comparison/original-run.json"      # how the command names it
SCHEMA = 1
ARCH, SEED, BIAS_SEED = "vgg16", 0, 0
PHOTO = "skimage.data.chelsea"
# Numbers that a float32 run can move only by rounding (zfcore and the original on the same switches).
ROUNDING = 1e-5
# Other numbers of a re-run: within RTOL relative (or ATOL absolute) of the record, shares of the image
# (supports) within SHARE; pictures: at most PIXELS of their pixels more than one grey level apart.
# Why these: see :func:`check`.
RTOL, ATOL, SHARE, PIXELS = 0.02, 1e-3, 0.01, 0.01


def sha256(a) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def params_sha256(params: dict) -> str:
    """SHA-256 over a network's parameters: each name, then :func:`sha256` of its array, in name order."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(sha256(np.asarray(params[name], dtype=np.float32)).encode())
    return h.hexdigest()


def chelsea_input() -> np.ndarray:
    """scikit-image's cat, resized to 224 x 224 (bilinear, as OpenCV) and prepared as the original
    prepares a photo (BGR order, RGB ImageNet statistics): (1, 3, 224, 224) float32."""
    import skimage.data

    return huybery.prepare_input(huybery.resize_bilinear(skimage.data.chelsea(), 224), "BGR")


def encode_png(img: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array -> PNG bytes (lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> the uint8 array they hold."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def measure(orig, net, x, layers=None) -> dict:
    """The original (``original.Original``) against zfcore (``net``, the same weights) on input ``x``:
    ``layers`` (rows of ``original_agreement`` at every conv layer, or at ``layers``, ``features``
    indices) and ``panels`` (at the demo layers: ``{name: {"zero"/"published": {"feature", "image"}}}``,
    the (224, 224, 3) uint8 pictures of its ``vis_layer``)."""
    from zfcore import models
    from zfcore.comparison import compare

    feats = models.features_spec(net.spec)
    if layers is None:
        layers = [i for i, (_, kind, _) in enumerate(feats) if kind == "conv"]
    rows, runs = compare.original_agreement(orig, net, x, sorted(set(layers) | set(huybery.DEMO_LAYERS)))
    keep = {feats[i][0] for i in layers}
    panels = {feats[i][0]: {key: {"feature": runs[feats[i][0]][key].feature,
                                  "image": runs[feats[i][0]][key].image}
                            for key in ("zero", "published")} for i in huybery.DEMO_LAYERS}
    return {"layers": [_plain(r) for r in rows if r["layer"] in keep], "panels": panels}


def _plain(row: dict) -> dict:
    """A row with JSON values: tuples as lists, numpy scalars as Python numbers, NaN as None."""
    out = {}
    for k, v in row.items():
        if isinstance(v, tuple):
            v = [int(u) for u in v]
        elif isinstance(v, (np.floating, float)):
            v = None if v != v else float(v)
        elif isinstance(v, np.integer):
            v = int(v)
        out[k] = v
    return out


def clone_commit(clone: Path, commit: str | None = None) -> str:
    """The clone's commit: ``git -C clone rev-parse HEAD``; ``commit`` (a full 40-digit hash) where the
    clone has no git history of its own, or checked against that history where it has one."""
    try:
        head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = None
    if commit is None and head is None:
        raise ArgumentError(f"cannot read the commit of {str(clone)!r} (no git history there): pass "
                            f"--commit with the full hash the clone was checked out at")
    if commit is not None and (len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit)):
        raise ArgumentError(f"--commit {commit!r}: expected a full 40-digit lower-case hex hash")
    if commit is not None and head is not None and commit != head:
        raise ArgumentError(f"--commit {commit} but the clone is at {head}")
    return commit or head


def clone_files(clone: Path) -> dict:
    """SHA-256 of each of the clone's files that run (``original.FILES``)."""
    return {f: hashlib.sha256((Path(clone) / f).read_bytes()).hexdigest() for f in original.FILES}


def provenance(clone: Path, commit: str, command: str) -> dict:
    """Where and how a record was made: the original's repository, commit and file hashes, the command,
    the date (UTC), the machine and the versions of the libraries that ran."""
    import torch
    import torchvision

    import zfcore

    try:
        import cv2
        opencv = cv2.__version__
    except ImportError:                       # the original's main.py imports it: a run cannot get here
        opencv = None
    return {"repository": original.URL, "commit": commit, "files": clone_files(clone), "command": command,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.machine(),
                        "cpu capability": torch.backends.cpu.get_cpu_capability(),
                        "torch threads": torch.get_num_threads()},
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "torch": torch.__version__, "torchvision": torchvision.__version__,
                         "opencv": opencv, "zfcore": getattr(zfcore, "__version__", None)}}


def make(clone, commit: str | None = None, command: str = "") -> dict:
    """Run the original from ``clone`` on zfcore's seeded VGG16 and the cat photo; return the record."""
    from zfcore import models

    clone = original.find_clone(clone)
    if clone is None:
        raise original.CloneError(f"no clone of huybery/VisualizingCNN given: {original.HOW_TO}")
    commit = clone_commit(clone, commit)
    net = models.build_model(ARCH, seed=SEED)
    orig = original.load(clone, params=net.params, bias_seed=BIAS_SEED)
    x = chelsea_input()
    result = measure(orig, net, x)
    biases = hashlib.sha256(b"".join(b.numpy().tobytes() for b in orig.published_biases)).hexdigest()
    return {"schema": SCHEMA, "provenance": provenance(clone, commit, command),
            "weights": {"arch": ARCH, "seed": SEED, "sha256": params_sha256(net.params),
                        "deconv bias seed": BIAS_SEED, "deconv biases sha256": biases},
            "input": {"photo": PHOTO, "size": [224, 224], "order": "BGR, RGB statistics",
                      "sha256": sha256(x)},
            "layers": result["layers"], "panels": result["panels"]}


def save(record: dict, path=RECORD) -> Path:
    """Write ``record`` (as :func:`make` returns it: panels holding ``image`` arrays) to ``path`` (JSON)
    and each picture to a PNG file in the folder ``path`` names without ``.json``."""
    path = Path(path)
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    out = dict(record, panels={})
    for name, both in record["panels"].items():
        out["panels"][name] = {}
        for key, p in both.items():
            data = encode_png(p["image"])
            file = f"{name}-{key}.png"
            (folder / file).write_bytes(data)
            out["panels"][name][key] = {"feature": int(p["feature"]), "file": f"{folder.name}/{file}",
                                        "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def load(path=RECORD) -> dict:
    """A record as saved, each panel's picture read from its PNG file into ``image`` ((224, 224, 3) uint8);
    a file whose SHA-256 differs from the record's raises :class:`ArgumentError`."""
    path = Path(path)
    record = json.loads(path.read_text())
    if record.get("schema") != SCHEMA:
        raise ArgumentError(f"{path}: record schema {record.get('schema')!r}, expected {SCHEMA}")
    for both in record["panels"].values():
        for p in both.values():
            data = (path.parent / p["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != p["sha256"]:
                raise ArgumentError(f"{path.parent / p['file']}: not the picture the record names (SHA-256)")
            p["image"] = decode_png(data)
    return record


def check(record: dict, new: dict) -> list[str]:
    """What differs between a ``record`` (:func:`load`) and a ``new`` run (:func:`measure` on the same
    weights and input); an empty list when they agree. Tolerances:

    * the selection (map, position, ties) and each picture's map: equal. They depend on which value is
      largest, which rounding changes only at a near-tie between two maxima;
    * zfcore against the original on the same switches: below :data:`ROUNDING` in both, float32 rounding
      of the same sums in another order;
    * every other number: within :data:`RTOL` relative or :data:`ATOL` absolute, and a share of the
      image (a support) within :data:`SHARE`. These are measured on each side's own switches, so a switch
      that the numpy and the PyTorch forward pass choose differently at a float32 near-tie
      (``compare.switch_flips``; which windows those are depends on the machine's kernels) moves a value
      of a projection by one position in that pool's input. Below a deep pool that moves a patch: on the
      original's own photo a support changed by 69 pixels of 50 176 (0.14 %) at conv5_3, well inside
      SHARE; the relative differences of order 1 and more that the published biases make move by a
      share far below RTOL. ``zfcore vs original (bias zeroed)`` itself is such a near-tie effect where
      it exceeds :data:`ROUNDING` (up to 7e-3 in the record), so it is held to the loosest bound, 0.1;
    * the pictures: at most :data:`PIXELS` of the pixels more than one grey level apart (truncation to
      uint8 turns a rounding difference into one level; a moved value changes a few pixels).
    """
    problems = []
    old_rows, new_rows = record["layers"], new["layers"]
    if [r["layer"] for r in old_rows] != [r["layer"] for r in new_rows]:
        return [f"layers differ: {[r['layer'] for r in old_rows]} vs {[r['layer'] for r in new_rows]}"]
    for old, now in zip(old_rows, new_rows):
        problems += _check_row(old, _plain(now))
    for name, both in record["panels"].items():
        for key, p in both.items():
            q = new["panels"][name][key]
            if p["feature"] != q["feature"]:
                problems.append(f"{name} {key}: map {q['feature']}, recorded {p['feature']}")
                continue
            off = float((np.abs(p["image"].astype(int) - q["image"].astype(int)) > 1).mean())
            if off > PIXELS:
                problems.append(f"{name} {key}: {off:.2%} of the pixels more than one grey level off")
    return problems


def _check_row(old: dict, new: dict) -> list[str]:
    name, out = old["layer"], []
    for key, v in old.items():
        w = new.get(key)
        if key in ("layer", "feature", "position", "ties"):
            bad = w != v
        elif v is None or w is None:
            bad = (v is None) != (w is None)
        elif key == "same, on zfcore's switches":
            bad = not (v < ROUNDING and w < ROUNDING)
        elif key == "zfcore vs original (bias zeroed)":
            bad = abs(w - v) > 0.1
        elif "support" in key:
            bad = abs(w - v) > SHARE
        else:
            bad = abs(w - v) > ATOL + RTOL * abs(v)
        if bad:
            out.append(f"{name}: {key} = {w}, recorded {v}")
    return out


def _check_run(clone, path) -> list[str]:
    """``--check``: run the original from ``clone`` as the record at ``path`` was made; what differs."""
    from zfcore import models

    clone = original.find_clone(clone)
    record = load(path)
    net = models.build_model(ARCH, seed=record["weights"]["seed"])
    x = chelsea_input()
    problems = [f"{what} differ from the record's" for what, same in (
        ("the clone's files", clone_files(clone) == record["provenance"]["files"]),
        ("the weights", params_sha256(net.params) == record["weights"]["sha256"]),
        ("the input", sha256(x) == record["input"]["sha256"])) if not same]
    orig = original.load(clone, params=net.params, bias_seed=record["weights"]["deconv bias seed"])
    return problems + check(record, measure(orig, net, x))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zfcore.comparison.record",
        description="Run the original huybery/VisualizingCNN from a clone on zfcore's seeded VGG16 and "
                    "record its outputs, or check a record against a new run.")
    parser.add_argument("--clone", required=True, help="the clone of huybery/VisualizingCNN")
    parser.add_argument("--commit", help="the clone's full commit hash, if it has no git history")
    parser.add_argument("--out", default=RECORD, help=f"the record (default: {RECORD_NAME})")
    parser.add_argument("--check", action="store_true", help="check the record against a new run")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = _check_run(args.clone, args.out)
            print("\n".join(problems) or f"{args.out}: a new run agrees with the record")
            return 1 if problems else 0
        command = ("python -m zfcore.comparison.record --clone CLONE"
                   + (f" --commit {args.commit}" if args.commit else "")
                   + (f" --out {args.out}" if args.out != RECORD else ""))
        path = save(make(args.clone, args.commit, command), args.out)
    except (ZfcoreError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"recorded {path} and {len(list(path.with_suffix('').glob('*.png')))} pictures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
