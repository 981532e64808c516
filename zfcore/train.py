"""Train the embedded Fashion-MNIST model in PyTorch, the paper's way where it fits, and export .npz.

Zeiler & Fergus (sec. 3): SGD with momentum 0.9, learning rate 1e-2 (here annealed with a cosine
schedule), dropout 0.5 in the classifier, and after every step each conv filter whose RMS exceeds a
fixed radius (0.1) is renormalised back to that radius. Augmentation: random horizontal flips and
random translations of up to 2 pixels (zero padding), standing in for the paper's crops and flips.
Weights start Kaiming-normal (PyTorch's default initialisation barely learns this net).

    python -m zfcore train --out zfcore/assets/models --overwrite

(the defaults are the shipped model's recipe: 40 epochs, BatchNorm folded on export, bf16 autocast)

writes ``fmnist_zf.npz`` (float32, the final weights), ``checkpoints/epoch_XX.npz`` (float16, for the
feature-evolution figure) and ``history.json`` (loss and accuracy per epoch). torch is imported here,
never by the numpy core.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import data
from .models import SPECS, features_spec
from .reference import torch_model
from .weights import save_npz

CHECKPOINT_EPOCHS = (1, 2, 5, 10, 20, 30)  # and the last epoch
RMS_RADIUS = 0.1


def kaiming_init(model, generator):
    import torch
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                m.bias.zero_()


def renormalise_filters(model, radius=RMS_RADIUS) -> int:
    """Scale every conv filter whose RMS exceeds ``radius`` back to ``radius``; return how many."""
    import torch
    import torch.nn as nn

    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                rms = w.pow(2).mean(dim=(1, 2, 3)).sqrt()
                over = rms > radius
                if over.any():
                    n += int(over.sum())
                    w[over] *= (radius / rms[over]).view(-1, 1, 1, 1)
    return n


def augment(x, rng):
    """Random horizontal flip and random translation by up to 2 pixels (zero fill), per image."""
    import torch

    n = x.shape[0]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))
    dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
    h, w = x.shape[2:]
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def fold_batchnorm(model) -> dict[str, np.ndarray]:
    """The parameters of ``model`` as float32 numpy arrays, with every ``<conv>_bn`` BatchNorm2d
    (inference form, running statistics) folded into the conv before it:

        gamma * (W*x + b - mean) / sqrt(var + eps) + beta  =  (s W)*x + s (b - mean) + beta,
        s = gamma / sqrt(var + eps)

    so the result is a state dict of the plain spec (no ``_bn`` keys). Folding is done in float64."""
    import torch.nn as nn

    children = dict(model.named_children())
    out = {}
    for name, mod in children.items():
        if isinstance(mod, nn.BatchNorm2d):
            continue
        for k, v in mod.state_dict().items():
            out[f"{name}.{k}"] = v.detach().cpu().double().contiguous().numpy()
        bn = children.get(name + "_bn")
        if bn is not None:
            s = (bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()).cpu().numpy()
            mean = bn.running_mean.detach().double().cpu().numpy()
            beta = bn.bias.detach().double().cpu().numpy()
            out[f"{name}.weight"] = out[f"{name}.weight"] * s[:, None, None, None]
            out[f"{name}.bias"] = (out[f"{name}.bias"] - mean) * s + beta
    return {k: v.astype(np.float32) for k, v in out.items()}


def feature_params(model, arch) -> dict[str, np.ndarray]:
    """The parameters of the feature extractor (``zfcore.models.features_spec``): what a checkpoint
    keeps. The feature-evolution figure projects conv features only, and the classifier's weights would
    triple the size of the shipped checkpoints; each epoch's accuracy is kept in history.json."""
    return features_spec(arch, fold_batchnorm(model))[1]


def evaluate(model, x, y, device, batch=1000, channels_last=False):
    """(mean cross-entropy, accuracy) of ``model`` in eval mode, float32 (no autocast)."""
    import torch

    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch]).to(device)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(y[i:i + batch]).to(device)
            out = model(xb)
            loss += float(torch.nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return loss / len(x), correct / len(x)


def _progress(epoch, epochs, step, steps, loss, t0, stream=sys.stderr):
    done = int(30 * step / steps)
    rate = step / max(time.time() - t0, 1e-9)
    stream.write(f"\repoch {epoch}/{epochs} [{'#' * done}{'.' * (30 - done)}] {step}/{steps} "
                 f"loss {loss:.4f} {rate:.1f} it/s ")
    stream.flush()


def _epoch(model, opt, sched, xtr, ytr, rng, batch_size, device, fmt, precision, progress=None):
    """One pass over the training split in ``rng``'s order, with augmentation, a step of ``opt`` and
    ``sched`` and the filter renormalisation per batch. Returns (running loss, renormalised filters);
    ``progress = (epoch, epochs, start time)`` draws the progress bar."""
    import torch

    model.train()
    perm = rng.permutation(len(xtr))
    steps = math.ceil(len(xtr) / batch_size)
    run_loss, renormed = 0.0, 0
    for step in range(steps):
        idx = perm[step * batch_size:(step + 1) * batch_size]
        xb = augment(torch.from_numpy(xtr[idx]), rng).to(device).contiguous(memory_format=fmt)
        yb = torch.from_numpy(ytr[idx]).to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        renormed += renormalise_filters(model)
        lv = loss.item()
        run_loss = 0.98 * run_loss + 0.02 * lv if step else lv
        if progress is not None and (step % 20 == 0 or step == steps - 1):
            _progress(progress[0], progress[1], step + 1, steps, run_loss, progress[2])
    return run_loss, renormed


def _record(model, xte, yte, device, channels_last, epoch, run_loss, renormed, t0) -> dict:
    """The history entry of an epoch: its training loss, the test loss and accuracy, the filters
    renormalised and the seconds since ``t0``."""
    test_loss, test_acc = evaluate(model, xte, yte, device, channels_last=channels_last)
    return dict(epoch=epoch, train_loss=run_loss, test_loss=test_loss, test_acc=test_acc,
                renormalised_filters=renormed, seconds=time.time() - t0)


def train(epochs=40, out="zfcore/assets/models", arch="fmnist_zf", seed=0, batch_size=128, lr=1e-2,
          weight_decay=5e-4, subset=None, device="auto", root=None, threads=None, overwrite=False,
          checkpoints=CHECKPOINT_EPOCHS, quiet=False, batchnorm=True, precision="bf16"):
    """Train ``arch`` on the Fashion-MNIST training split and export the weights. Returns the history.
    The defaults are the shipped model's recipe (seeded; tests/test_train.py checks that two runs on
    one machine give bit-identical weights).

    ``batchnorm``: train with a BatchNorm2d after every conv, folded into the conv weights on export
    (``fold_batchnorm``), so the shipped network is the plain spec. ``precision="bf16"``: the forward
    and backward passes under bfloat16 autocast (weights, optimiser state and every evaluation stay
    float32); about 2x faster on CPUs with AVX512-BF16. On the CPU, activations are channels-last."""
    import torch

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    out = Path(out)
    final = out / f"{arch}.npz"
    existing = [p for p in [final, out / "history.json", *(out / "checkpoints").glob("epoch_*.npz")]
                if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists (and {len(existing) - 1} more files from an "
                              "earlier run); pass --overwrite to replace them")
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    xtr, ytr = data.load_dataset("train", root=root, limit=subset)
    xte, yte = data.load_dataset("test", root=root)
    if subset:
        xte, yte = xte[:subset], yte[:subset]

    channels_last = device == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_model(SPECS[arch], batchnorm=batchnorm)
    kaiming_init(model, gen)
    model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = math.ceil(len(xtr) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, epochs * steps) / (epochs * steps))))
    history = {"arch": arch, "seed": seed, "epochs": [], "config": dict(
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, weight_decay=weight_decay,
        rms_radius=RMS_RADIUS, schedule="cosine", augmentation="hflip + translate<=2px",
        init="kaiming_normal", subset=subset, device=device, batchnorm=batchnorm, precision=precision,
        channels_last=channels_last)}
    ckpt_epochs = sorted(set(e for e in checkpoints if e <= epochs) | {epochs})
    history["initial"] = dict(zip(("test_loss", "test_acc"),
                                  evaluate(model, xte, yte, device, channels_last=channels_last)))
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        run_loss, renormed = _epoch(model, opt, sched, xtr, ytr, rng, batch_size, device, fmt, precision,
                                    None if quiet else (epoch, epochs, t0))
        rec = _record(model, xte, yte, device, channels_last, epoch, run_loss, renormed, t0)
        history["epochs"].append(rec)
        if not quiet:
            sys.stderr.write(f"\repoch {epoch}/{epochs} train loss {run_loss:.4f} test loss "
                             f"{rec['test_loss']:.4f} test acc {100 * rec['test_acc']:.2f}% "
                             f"({rec['seconds']:.0f} s, {renormed} renorms)\n")
        if epoch in ckpt_epochs:
            save_npz(out / "checkpoints" / f"epoch_{epoch:02d}.npz", feature_params(model, arch), arch,
                     meta=dict(epoch=epoch, test_acc=rec["test_acc"], storage="float16", part="features"),
                     dtype=np.float16, overwrite=True)
    # The exported (folded, float32) weights, evaluated in the plain mirror: the accuracy that ships.
    params = fold_batchnorm(model)
    plain = torch_model(SPECS[arch], params).to(device, memory_format=fmt)
    test_loss, test_acc = evaluate(plain, xte, yte, device, channels_last=channels_last)
    history["final"] = dict(test_loss=test_loss, test_acc=test_acc, batchnorm_folded=batchnorm)
    save_npz(final, params, arch, meta=dict(epoch=epochs, test_acc=test_acc, seed=seed), overwrite=True)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return history
