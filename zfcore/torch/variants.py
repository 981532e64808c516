"""Architecture variants of the embedded net for the paper's Fig. 6 (architecture inspection).

Zeiler & Fergus (sec. 4.1) found that AlexNet's first layer (11x11 filters, stride 4) had dead filters
and aliasing, and moved to 7x7 filters at stride 2 (ZFNet); they also renormalised every conv filter
whose RMS grew beyond a fixed radius. Three short runs of one recipe test both diagnoses here:

- ``baseline``: the embedded architecture (conv1 5x5, stride 1);
- ``large_stride``: conv1 9x9 at stride 3 (the AlexNet-like first layer of this small net);
- ``no_renorm``: the embedded architecture trained without the RMS renormalisation.

All three are trained for the same few epochs without BatchNorm (the paper's setting: with BatchNorm the
filter scale is normalised anyway and the renormalisation would be moot), and only their feature
extractors are shipped, as float16 (``zfcore/assets/models/variants/<name>.npz``) next to
``<name>.json``: the accuracy on the first 2,000 test images after each epoch, and the accuracy of the
final weights rounded to float16 (classifier included) on all 10,000, measured at training time. numpy only, except ``train_variant``
(torch, imported lazily).

    python -m zfcore.torch.variants --epochs 3 --out zfcore/assets/models/variants
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from zfcore import models

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models" / "variants"
NAMES = ("baseline", "large_stride", "no_renorm")
EVAL_EACH_EPOCH = 2000      # test images evaluated after each epoch; the final weights see all 10,000


def variant_spec(name: str) -> list:
    """The full spec (features + classifier) of variant ``name``."""
    if name not in NAMES:
        raise ValueError(f"unknown variant {name!r}: expected one of {NAMES}")
    spec = [tuple(e) for e in models.get_spec("fmnist_zf")]
    if name != "large_stride":
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


def load_variant(name: str, folder=None):
    """(Network of the feature extractor, record dict) of a shipped variant."""
    folder = Path(folder) if folder is not None else ASSETS
    path = folder / f"{name}.npz"
    if name not in NAMES:
        raise ValueError(f"unknown variant {name!r}: expected one of {NAMES}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: variant weights not found (train them with "
                                "python -m zfcore.torch.variants)")
    with np.load(path) as z:
        params = {k: z[k].astype(np.float32) for k in z.files}
    record = json.loads((folder / f"{name}.json").read_text())
    return models.build(models.features_spec(variant_spec(name)), params=params), record


def train_variant(name, epochs=3, out=ASSETS, seed=0, batch_size=128, lr=1e-2, weight_decay=5e-4,
                  subset=None, threads=None, overwrite=False):
    """Train variant ``name`` with the shipped recipe (SGD momentum 0.9, cosine schedule, dropout,
    flips and 2-pixel shifts, bf16 autocast) but no BatchNorm, for ``epochs`` epochs; write
    ``<name>.npz`` (conv weights, float16) and ``<name>.json`` (accuracy per epoch, the command)."""
    import torch

    from zfcore import data
    from zfcore.torch import train

    out = Path(out)
    npz, js = out / f"{name}.npz", out / f"{name}.json"
    if (npz.exists() or js.exists()) and not overwrite:
        raise FileExistsError(f"{npz} exists; pass overwrite=True to replace it")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    xtr, ytr = data.load_dataset("train", limit=subset)
    xte, yte = data.load_dataset("test")
    spec = variant_spec(name)
    model = train.torch_model(spec)
    train.kaiming_init(model, gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = math.ceil(len(xtr) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, epochs * steps) / (epochs * steps))))
    renorm = name != "no_renorm"
    rec = dict(name=name, epochs=[], seed=seed, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               renorm=renorm, batchnorm=False, precision="bf16", subset=subset,
               command=f"python -m zfcore.torch.variants --epochs {epochs} --only {name}"
               + (f" --subset {subset}" if subset else ""))
    for epoch in range(1, epochs + 1):
        model.train()
        perm, t0, renormed = rng.permutation(len(xtr)), time.time(), 0
        for step in range(steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            xb = train.augment(torch.from_numpy(xtr[idx]), rng)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(xb), torch.from_numpy(ytr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if renorm:
                renormed += train.renormalise_filters(model)
        test_loss, test_acc = train.evaluate(model, xte[:EVAL_EACH_EPOCH], yte[:EVAL_EACH_EPOCH], "cpu")
        rec["epochs"].append(dict(epoch=epoch, test_loss=test_loss, test_acc_first_2000=test_acc,
                                  renormalised_filters=renormed, seconds=time.time() - t0))
        print(name, rec["epochs"][-1], flush=True)
    params = train.state_to_numpy(model)
    half = {k: v.astype(np.float16) for k, v in params.items()}
    with torch.no_grad():   # accuracy of the float16-rounded weights (classifier included)
        model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in half.items()})
    rec["test_acc_float16"] = train.evaluate(model, xte, yte, "cpu")[1]    # all 10,000 test images
    feats = {n for n, _, _ in models.features_spec(spec)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, **{k: v for k, v in half.items() if k.split(".")[0] in feats})
    js.write_text(json.dumps(rec, indent=1))
    return rec


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=str(ASSETS))
    ap.add_argument("--only", choices=NAMES, action="append")
    ap.add_argument("--subset", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    for name in a.only or NAMES:
        train_variant(name, a.epochs, a.out, subset=a.subset, threads=a.threads, overwrite=a.overwrite)


if __name__ == "__main__":
    main()
