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

import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from zfcore import data
from zfcore._io import write_json
from zfcore.errors import ArgumentError, TrainingError, require, suggest
from zfcore.models.specs import SPECS, features_spec
from zfcore.torch.reference import torch_model
from zfcore.models.weights import ASSETS, save_npz

DEFAULT_OUT = ASSETS      # zfcore/assets/models inside the package, wherever it is run from

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
        if not math.isfinite(lv):
            raise TrainingError(f"the training loss became {lv} at step {step + 1} of {steps}")
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


def _positive_int(value, what, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(value, what, allow_zero=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ArgumentError(f"{what} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def check_args(epochs, batch_size, lr, weight_decay, subset, device, threads, precision, arch,
               checkpoints) -> None:
    """Every training argument, checked before any work starts: ``ArgumentError`` naming the bad one."""
    if arch not in SPECS:
        raise ArgumentError(f"unknown architecture {arch!r}{suggest(str(arch), SPECS)}")
    _positive_int(epochs, "epochs")
    _positive_int(batch_size, "batch size")
    _positive_float(lr, "learning rate")
    _positive_float(weight_decay, "weight decay", allow_zero=True)
    _positive_int(subset, "subset", allow_none=True)
    _positive_int(threads, "threads", allow_none=True)
    for e in checkpoints:
        _positive_int(e, "checkpoint epoch")
    if precision not in ("fp32", "bf16"):
        raise ArgumentError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit())):
        raise ArgumentError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")


RUN_FILES = ("history.json",)


def _check_out(out: Path, arch: str, overwrite: bool) -> None:
    """``out`` must be a folder (or not exist) holding nothing but an earlier run's files, and those
    only with ``overwrite``: the new run replaces the folder as a whole."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out}: is a file, not a folder")
    if not out.is_dir():
        return
    run = {f"{arch}.npz", *RUN_FILES, "checkpoints"}
    entries = sorted(out.iterdir())
    foreign = [p for p in entries if p.name not in run or (p.name == "checkpoints" and any(
        not q.name.startswith("epoch_") for q in p.iterdir()))]
    if foreign:
        raise ArgumentError(f"--out {out}: holds {foreign[0].name}, which is not a training run's file; "
                            "a run replaces its --out folder as a whole, so give an empty or new folder")
    if entries and not overwrite:
        raise FileExistsError(f"{entries[0]} exists (and {len(entries) - 1} more entries from an "
                              "earlier run); pass --force (--overwrite) to replace them")


def _stage(out: Path) -> Path:
    """A fresh folder beside ``out`` for the run (found unwritable here, before any training)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.run-"))
    except OSError as e:
        why = ("a parent of it is a file" if isinstance(e, (FileExistsError, NotADirectoryError))
               else e.strerror or str(e))
        raise ArgumentError(f"--out {out}: cannot write there ({why})") from None


def _swap_in(stage: Path, out: Path) -> None:
    """Put the finished run in place of ``out`` (the earlier run's folder is removed after)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        os.rename(out, old)
    os.rename(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train(epochs=40, out=None, arch="fmnist_zf", seed=0, batch_size=128, lr=1e-2,
          weight_decay=5e-4, subset=None, device="auto", root=None, threads=None, overwrite=False,
          checkpoints=CHECKPOINT_EPOCHS, quiet=False, batchnorm=True, precision="bf16"):
    """Train ``arch`` on the Fashion-MNIST training split and export the weights. Returns the history.
    The defaults are the shipped model's recipe (seeded; tests/test_train.py checks that two runs on
    one machine give bit-identical weights).

    ``batchnorm``: train with a BatchNorm2d after every conv, folded into the conv weights on export
    (``fold_batchnorm``), so the shipped network is the plain spec. ``precision="bf16"``: the forward
    and backward passes under bfloat16 autocast (weights, optimiser state and every evaluation stay
    float32); about 2x faster on CPUs with AVX512-BF16. On the CPU, activations are channels-last.

    ``out`` (default: the package's ``zfcore/assets/models``) is a folder that the run replaces as a
    whole when it completes: files are written into a fresh folder beside it first, so a failed or
    killed run leaves ``out`` as it was. Every argument is checked before any work (``ArgumentError``);
    a loss that stops being finite stops the run with ``TrainingError``."""
    check_args(epochs, batch_size, lr, weight_decay, subset, device, threads, precision, arch, checkpoints)
    torch = require("torch", "torch", "training")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError(f"device {device!r}: no CUDA device is available here")
    out = Path(DEFAULT_OUT if out is None else out).expanduser().absolute()
    _check_out(out, arch, overwrite)
    data.find_split("train", root)          # missing data found before the run starts
    stage = _stage(out)
    try:
        history = _run(torch, stage, epochs, arch, seed, batch_size, lr, weight_decay, subset, device,
                       root, threads, checkpoints, quiet, batchnorm, precision)
        _swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return history


def _run(torch, out, epochs, arch, seed, batch_size, lr, weight_decay, subset, device, root, threads,
         checkpoints, quiet, batchnorm, precision):
    """The training run of ``train``, writing into the fresh folder ``out``."""
    final = out / f"{arch}.npz"
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
        try:
            run_loss, renormed = _epoch(model, opt, sched, xtr, ytr, rng, batch_size, device, fmt,
                                        precision, None if quiet else (epoch, epochs, t0))
        except TrainingError as e:
            raise TrainingError(f"epoch {epoch}: {e} (learning rate {lr}); the run stopped and wrote "
                                "nothing") from None
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
    write_json(out / "history.json", history)
    return history
