"""Variants of the embedded net, trained offline and shipped small, for two of the paper's experiments.

**Architecture inspection (the paper's Fig. 6, ``FIG6``).** Zeiler & Fergus (sec. 4.1) found that
AlexNet's first layer (11x11 filters, stride 4) had dead filters and aliasing, and moved to 7x7 filters
at stride 2 (ZFNet); they also renormalised every conv filter whose RMS grew beyond a fixed radius.
Three runs of one recipe test both diagnoses here:

- ``baseline``: the embedded architecture (conv1 5x5, stride 1);
- ``large_stride``: conv1 9x9 at stride 3 (the AlexNet-like first layer of this small net);
- ``no_renorm``: the embedded architecture trained without the RMS renormalisation.

They are trained with the embedded model's recipe except BatchNorm (the paper's setting: with
BatchNorm the filter scale is normalised anyway and the renormalisation would be moot); only the
feature extractor is stored, as float16.

**Layer ablation (the paper's Table 3, ``ABLATIONS``).** The paper removed or resized layers of its
net and retrained: ``full`` (the embedded architecture), ``no_fc6`` (the hidden fully connected layer
removed), ``no_conv34`` (conv3 and conv4 removed), ``no_conv34_fc6`` (both), ``narrow_fc6`` (fc6 of
128 units instead of 512) and ``wide_conv34`` (conv3 and conv4 of 256 maps instead of 128). They use the
embedded model's own recipe (BatchNorm folded into the weights on export) and store every parameter
as float16.

Each epoch is evaluated on the first 2,000 test images; the record's final accuracy is that of the
weights as stored, on all the test images (or the first ``subset``). ``train_variant`` writes a run
folder (default ``./zfcore-train/<name>`` in the working directory) holding ``<name>.npz`` and
``history.json``:

    python -m zfcore.torch.variants --epochs 30                         # every variant
    python -m zfcore.torch.variants --only large_stride --out runs      # runs/large_stride

The shipped variants are ``zfcore/assets/models/variants/<name>.npz`` with their record
``<name>.json`` (the command, device, epochs, time and accuracy of the run). ``load_variant(name)``
reads those, ``load_variant(name, folder)`` a run folder as well. Everything but ``train_variant``
and ``main`` needs numpy only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zfcore import models
from zfcore.errors import ArgumentError, WeightsError, ZfcoreError, suggest
from zfcore.torch import train as _train

ASSETS = models.ASSETS / "variants"
FIG6 = ("baseline", "large_stride", "no_renorm")
ABLATIONS = ("full", "no_fc6", "no_conv34", "no_conv34_fc6", "narrow_fc6", "wide_conv34")
NAMES = FIG6 + ABLATIONS
RENORM = {name: name != "no_renorm" for name in NAMES}
BATCHNORM = {name: name in ABLATIONS for name in NAMES}     # Fig. 6: the paper's setting, no BatchNorm
EXPORT = {name: "full16" if name in ABLATIONS else "features16" for name in NAMES}
EVAL_EACH_EPOCH = 2000      # test images evaluated after each epoch; the final weights see all of them


def _check_name(name) -> str:
    if name not in NAMES:
        raise ArgumentError(f"unknown variant {name!r}{suggest(str(name), NAMES)} (expected one of "
                            f"{', '.join(NAMES)})")
    return name


def _drop(spec, names) -> list:
    return [e for e in spec if e[0] not in names]


def _resize(spec, changes: dict) -> list:
    """``spec`` with the parameters of the named layers updated (``changes``: name -> dict)."""
    return [(n, k, dict(p, **changes.get(n, {}))) for n, k, p in spec]


def variant_spec(name: str) -> list:
    """The full spec (features + classifier) of variant ``name``."""
    spec = [(n, k, dict(p)) for n, k, p in models.get_spec("fmnist_zf")]
    _check_name(name)
    if name == "large_stride":                      # 28 -> 10 -> pool 5 -> 3 -> pool5 2
        return _resize(spec, {"conv1": dict(kernel=9, stride=3, padding=4),
                              "fc6": dict(in_features=128 * 2 * 2)})
    if name in ("no_fc6", "no_conv34_fc6"):
        spec = _resize(_drop(spec, ("fc6", "relu6", "drop6")), {"fc7": dict(in_features=128 * 4 * 4)})
    if name in ("no_conv34", "no_conv34_fc6"):
        spec = _resize(_drop(spec, ("conv3", "relu3", "conv4", "relu4")), {"conv5": dict(in_channels=64)})
    if name == "narrow_fc6":
        spec = _resize(spec, {"fc6": dict(out_features=128), "fc7": dict(in_features=128)})
    if name == "wide_conv34":
        spec = _resize(spec, {"conv3": dict(out_channels=256), "conv4": dict(in_channels=256, out_channels=256),
                              "conv5": dict(in_channels=256)})
    return spec


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
    """(Network, record dict) of variant ``name``, from ``folder``: the shipped variants by default
    (``<name>.npz`` and ``<name>.json``), or a run folder of ``train_variant`` (``<name>.npz`` and
    ``history.json``). The network takes 1x28x28 images: the feature extractor of a Fig. 6 variant
    (``features_spec(variant_spec(name))``), the whole network of an ablation."""
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
    spec = variant_spec(name)
    if EXPORT[name] == "features16":
        spec = models.features_spec(spec)
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
    ``RENORM``, ``BATCHNORM`` and ``EXPORT`` options and otherwise the shipped recipe (SGD momentum
    0.9, cosine schedule, dropout, flips and 2-pixel shifts, bf16 autocast unless
    ``precision="fp32"``). Writes the run folder ``out`` (default ``./zfcore-train/<name>``):
    ``<name>.npz`` (float16) and ``history.json``. Returns the history; ``load_variant(name, out)``
    loads the result."""
    _check_name(name)
    return _train.train(epochs=epochs, out=out, spec=variant_spec(name), name=name, seed=seed,
                        batch_size=batch_size, subset=subset, device=device, root=root, threads=threads,
                        overwrite=overwrite, checkpoints=(), quiet=quiet, batchnorm=BATCHNORM[name],
                        precision=precision, renorm=RENORM[name], export=EXPORT[name],
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
