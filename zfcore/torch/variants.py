"""Architecture variants of the embedded net for the paper's Fig. 6 (architecture inspection).

Zeiler & Fergus (sec. 4.1) found that AlexNet's first layer (11x11 filters, stride 4) had dead filters
and aliasing, and moved to 7x7 filters at stride 2 (ZFNet); they also renormalised every conv filter
whose RMS grew beyond a fixed radius. Three short runs of one recipe test both diagnoses here:

- ``baseline``: the embedded architecture (conv1 5x5, stride 1);
- ``large_stride``: conv1 9x9 at stride 3 (the AlexNet-like first layer of this small net);
- ``no_renorm``: the embedded architecture trained without the RMS renormalisation.

A variant is a spec (``variant_spec``) and one option (``RENORM``: whether filters are renormalised),
trained by ``zfcore.torch.train.train`` with the embedded model's recipe except BatchNorm (the paper's
setting: with BatchNorm the filter scale is normalised anyway and the renormalisation would be moot);
each epoch is evaluated on the first 2,000 test images, and only the feature extractor is stored, as
float16, with the accuracy of the stored weights (classifier included, rounded to float16 too) on all
the test images (or the first ``subset``). ``train_variant`` writes a run folder (default ``./zfcore-train/<name>`` in the
working directory) holding ``<name>.npz`` and ``history.json``:

    python -m zfcore.torch.variants --epochs 2 --subset 10000            # ./zfcore-train/<name>
    python -m zfcore.torch.variants --only large_stride --out runs         # runs/large_stride

The shipped variants are ``zfcore/assets/models/variants/<name>.npz`` with their record
``<name>.json`` (the command in it says how each was trained). ``load_variant(name)`` reads those,
``load_variant(name, folder)`` a run folder as well. Everything but ``train_variant`` and ``main``
needs numpy only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zfcore import models
from zfcore.errors import ArgumentError, WeightsError, ZfcoreError, suggest
from zfcore.torch import train as _train

ASSETS = models.ASSETS / "variants"
NAMES = ("baseline", "large_stride", "no_renorm")
RENORM = {"baseline": True, "large_stride": True, "no_renorm": False}
EVAL_EACH_EPOCH = 2000      # test images evaluated after each epoch; the final weights see all of them


def _check_name(name) -> str:
    if name not in NAMES:
        raise ArgumentError(f"unknown variant {name!r}{suggest(str(name), NAMES)} (expected one of "
                            f"{', '.join(NAMES)})")
    return name


def variant_spec(name: str) -> list:
    """The full spec (features + classifier) of variant ``name``."""
    spec = [tuple(e) for e in models.get_spec("fmnist_zf")]
    if _check_name(name) != "large_stride":
        return spec
    out = []
    for lname, kind, p in spec:
        p = dict(p)
        if lname == "conv1":
            p.update(kernel=9, stride=3, padding=4)        # 28 -> 10 -> pool 5 -> 3 -> pool5 2
        if lname == "fc6":
            p.update(in_features=128 * 2 * 2)
        out.append((lname, kind, p))
    return out


def _read_params(path: Path, spec) -> dict[str, np.ndarray]:
    """The float32 parameters of a variant file, checked against the feature-extractor ``spec`` (no
    pickles; a ``__zfcore__`` header, if any, is skipped)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            params = {k: z[k].astype(np.float32) for k in z.files if k != "__zfcore__"}
    except Exception as e:
        raise WeightsError(f"{path}: corrupt weights file ({type(e).__name__}: {e})") from None
    try:
        models.check_params(spec, params, source=str(path))
    except ValueError as e:
        raise WeightsError(str(e)) from None
    return params


def _variant_record(rec: dict) -> dict:
    """A variant's record with the same keys for both layouts: ``name``, ``command``, ``seed``,
    ``subset``, ``renorm``, ``epochs`` (one entry per epoch) and ``test_acc_float16`` (the accuracy of
    the stored weights); a run's history (``history.json``) keeps all its keys besides."""
    if "final" not in rec:          # the shipped <name>.json
        return rec
    cfg = rec["config"]
    return dict(rec, subset=cfg["subset"], renorm=cfg["renorm"], test_acc_float16=rec["final"]["test_acc"])


def load_variant(name: str, folder=None):
    """(Network of the feature extractor, record dict) of variant ``name``, from ``folder``: the shipped
    variants by default (``<name>.npz`` and ``<name>.json``), or a run folder of ``train_variant``
    (``<name>.npz`` and ``history.json``). The network takes 1x28x28 images; its ``spec`` is
    ``features_spec(variant_spec(name))``."""
    _check_name(name)
    folder = Path(folder) if folder is not None else ASSETS
    path = folder / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: variant weights not found (train them with "
                                f"python -m zfcore.torch.variants --only {name})")
    js = folder / f"{name}.json"
    js = js if js.is_file() else folder / "history.json"
    if not js.is_file():
        raise FileNotFoundError(f"{folder}: no record of variant {name!r} ({name}.json or history.json)")
    record = _variant_record(json.loads(js.read_text()))
    if record.get("name") != name:
        raise WeightsError(f"{js}: the record of variant {record.get('name')!r}, not {name!r}")
    spec = models.features_spec(variant_spec(name))
    return models.build(spec, params=_read_params(path, spec),
                        input_shape=models.input_shape("fmnist_zf")), record


def _command(name, epochs, seed, batch_size, subset, precision) -> str:
    """The ``python -m zfcore.torch.variants`` line of one variant's run (the recipe's arguments)."""
    return (f"python -m zfcore.torch.variants --epochs {epochs} --only {name}"
            + (f" --subset {subset}" if subset else "") + (f" --seed {seed}" if seed else "")
            + (f" --batch-size {batch_size}" if batch_size != 128 else "")
            + (f" --precision {precision}" if precision != "bf16" else ""))


def train_variant(name, epochs=3, out=None, seed=0, batch_size=128, subset=None, root=None,
                  device="auto", threads=None, overwrite=False, quiet=False, precision="bf16"):
    """Train variant ``name`` for ``epochs`` epochs with ``zfcore.torch.train.train``: its spec, its
    ``RENORM`` option, the shipped recipe without BatchNorm (SGD momentum 0.9, cosine schedule,
    dropout, flips and 2-pixel shifts, bf16 autocast unless ``precision="fp32"``). Writes the run
    folder ``out`` (default ``./zfcore-train/<name>``): ``<name>.npz`` (the feature extractor, float16)
    and ``history.json``. Returns the history; ``load_variant(name, out)`` loads the result."""
    _check_name(name)
    return _train.train(epochs=epochs, out=out, spec=variant_spec(name), name=name, seed=seed,
                        batch_size=batch_size, subset=subset, device=device, root=root, threads=threads,
                        overwrite=overwrite, checkpoints=(), quiet=quiet, batchnorm=False,
                        precision=precision, renorm=RENORM[name], export="features16",
                        eval_images=EVAL_EACH_EPOCH,
                        command=_command(name, epochs, seed, batch_size, subset, precision))


def main(argv=None):
    """``python -m zfcore.torch.variants``: train the variants (``--only`` some), one after another,
    each into ``<--out>/<name>``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=str(_train.DEFAULT_OUT),
                    help="folder for the runs, relative to the working directory; variant NAME goes to "
                    "OUT/NAME")
    ap.add_argument("--only", choices=NAMES, action="append", help="train this variant (repeatable)")
    ap.add_argument("--subset", type=int, help="train on the first N images only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                    help="bf16: bfloat16 autocast for the training passes (fast on AVX512-BF16 CPUs)")
    ap.add_argument("--data", default=None, help="folder holding the Fashion-MNIST idx files")
    ap.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--overwrite", action="store_true", help="replace earlier runs of these variants")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    for name in a.only or NAMES:
        try:
            rec = train_variant(name, a.epochs, Path(a.out) / name, seed=a.seed, batch_size=a.batch_size,
                                subset=a.subset, root=a.data, device=a.device, threads=a.threads,
                                overwrite=a.overwrite, quiet=a.quiet, precision=a.precision)
        except (ZfcoreError, FileExistsError, FileNotFoundError) as e:
            ap.exit(2, f"{ap.prog}: error: {name}: {e}\n")
        print(f"{name}: accuracy of the float16 weights {100 * rec['final']['test_acc']:.2f}% after "
              f"{len(rec['epochs'])} epochs ({rec['seconds']:.0f} s); {Path(a.out) / name}", flush=True)


if __name__ == "__main__":
    main()
