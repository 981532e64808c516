"""Train a spec in PyTorch, the paper's way where it fits, and export .npz.

Zeiler & Fergus (sec. 3): SGD with momentum 0.9, learning rate 1e-2 (here annealed with a cosine
schedule), dropout 0.5 in the classifier, and after every step each conv filter whose RMS exceeds a
fixed radius (0.1) is renormalised back to that radius. Augmentation: random horizontal flips and
random translations of up to 2 pixels (zero padding), standing in for the paper's crops and flips.
Weights start Kaiming-normal (PyTorch's default initialisation barely learns this net).

``train(spec=...)`` trains a registered architecture (its name; the default is the embedded
``fmnist_zf``) or a spec list given with a ``name`` (the architecture variants of the paper's Fig. 6,
``zfcore.torch.variants``), all through one loop (``_epoch``). The defaults are the shipped model's
recipe (40 epochs, BatchNorm folded on export, bf16 autocast, seed 0). A run writes one folder:

- ``<name>.npz``: the weights, through the safe writer (``zfcore.models.save_npz``): every parameter
  as float32 (``export="full"``), or the feature extractor as float16 (``export="features16"``);
- ``checkpoints/epoch_XX.npz``: float16 feature extractors (for the feature-evolution figure);
- ``history.json``: the run's record: the command, the spec, the recipe, loss and accuracy per epoch,
  the seconds taken and the accuracy of the stored weights.

Without ``out`` (or ``--out``) the folder is ``./zfcore-train/<name>`` in the current working directory;
the package's own assets are written only when named explicitly (the command of the shipped model):

    python -m zfcore train --out zfcore/assets/models --overwrite

torch is imported inside the functions, never by the numpy core.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from zfcore import data
from zfcore._io import write_json
from zfcore.errors import ArgumentError, TrainingError, require, suggest
from zfcore.models.specs import SPECS, features_spec, param_shapes
from zfcore.torch.reference import torch_model
from zfcore.models.weights import save_npz

DEFAULT_OUT = Path("zfcore-train")   # relative: a run of NAME goes to ./zfcore-train/NAME

CHECKPOINT_EPOCHS = (1, 2, 5, 10, 20, 30)  # and the last epoch
RMS_RADIUS = 0.1
EXPORTS = {"full": np.float32, "features16": np.float16,     # what <name>.npz keeps, and as which dtype
           "full16": np.float16}


def default_out(name: str) -> Path:
    """The folder of a run of ``name`` when none is given: ``./zfcore-train/<name>``, in the current
    working directory (never inside the installed package)."""
    return (DEFAULT_OUT / name).absolute()


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


def feature_params(model, spec) -> dict[str, np.ndarray]:
    """The parameters of the feature extractor (``zfcore.models.features_spec`` of ``spec``, an
    architecture's name or a spec list): what a checkpoint keeps. The feature-evolution figure
    projects conv features only, and the classifier's weights would triple the size of the shipped
    checkpoints; each epoch's accuracy is kept in history.json."""
    return features_spec(spec, fold_batchnorm(model))[1]


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


def _epoch(model, opt, sched, xtr, ytr, rng, batch_size, device, fmt, precision, progress=None,
           radius=RMS_RADIUS):
    """One pass over the training split in ``rng``'s order, with augmentation, a step of ``opt`` and
    ``sched`` and the filter renormalisation to ``radius`` per batch (none when ``radius`` is None).
    Returns (running loss, renormalised filters); ``progress = (epoch, epochs, start time)`` draws the
    progress bar."""
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
        if radius is not None:
            renormed += renormalise_filters(model, radius)
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


def resolve_spec(spec, name=None) -> tuple[list, str]:
    """(spec list, run name) of ``train``'s ``spec``: a registered architecture's name (the run is
    named after it unless ``name`` is given) or a list of ``(layer, kind, params)`` triples, which
    needs a ``name``. The name names the run's files, so it is a plain file name."""
    if isinstance(spec, str):
        if spec not in SPECS:
            raise ArgumentError(f"unknown architecture {spec!r}{suggest(spec, SPECS)}")
        spec, name = SPECS[spec], spec if name is None else name
    elif name is None:
        raise ArgumentError("a spec given as a list needs a name= for the run's files")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ArgumentError(f"run name {name!r}: use letters, digits, '_', '.' and '-' only")
    try:
        spec = [(str(n), str(k), dict(p)) for n, k, p in spec]
        param_shapes(spec)
    except (TypeError, ValueError, KeyError) as e:
        raise ArgumentError(f"spec of {name!r}: not a list of (layer, kind, params) triples with the "
                            f"kind's parameters ({type(e).__name__}: {e})") from None
    return spec, name


def check_args(epochs, batch_size, lr, weight_decay, subset, device, threads, precision, checkpoints,
               export="full", eval_images=None) -> None:
    """Every training argument, checked before any work starts: ``ArgumentError`` naming the bad one."""
    _positive_int(epochs, "epochs")
    _positive_int(batch_size, "batch size")
    _positive_float(lr, "learning rate")
    _positive_float(weight_decay, "weight decay", allow_zero=True)
    _positive_int(subset, "subset", allow_none=True)
    _positive_int(threads, "threads", allow_none=True)
    _positive_int(eval_images, "eval images", allow_none=True)
    for e in checkpoints:
        _positive_int(e, "checkpoint epoch")
    if precision not in ("fp32", "bf16"):
        raise ArgumentError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    if export not in EXPORTS:
        raise ArgumentError(f"export must be one of {', '.join(map(repr, EXPORTS))}, not {export!r}")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit())):
        raise ArgumentError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")


RUN_FILES = ("history.json",)


def _check_out(out: Path, name: str, overwrite: bool) -> None:
    """``out`` must be a folder (or not exist) holding nothing but an earlier run's files, and those
    only with ``overwrite``: the new run replaces the folder as a whole."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out}: is a file, not a folder")
    if not out.is_dir():
        return
    run = {f"{name}.npz", *RUN_FILES, "checkpoints"}
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)                       # as a folder made by mkdir (mkdtemp's is private)
    os.rename(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train(epochs=40, out=None, spec="fmnist_zf", seed=0, batch_size=128, lr=1e-2,
          weight_decay=5e-4, subset=None, device="auto", root=None, threads=None, overwrite=False,
          checkpoints=CHECKPOINT_EPOCHS, quiet=False, batchnorm=True, precision="bf16", name=None,
          renorm=True, export="full", eval_images=None, command=None):
    """Train ``spec`` on the Fashion-MNIST training split and export the weights. Returns the history
    (the record written as ``history.json``). The defaults are the shipped model's recipe (seeded;
    tests/test_train.py checks that two runs on one machine give bit-identical weights).

    ``spec``: a registered architecture's name, or a spec list with ``name`` (``resolve_spec``).
    ``batchnorm``: train with a BatchNorm2d after every conv, folded into the conv weights on export
    (``fold_batchnorm``), so the stored network is the plain spec. ``precision="bf16"``: the forward
    and backward passes under bfloat16 autocast (weights, optimiser state and every evaluation stay
    float32); about 2x faster on CPUs with AVX512-BF16. On the CPU, activations are channels-last.
    ``renorm``: the paper's filter renormalisation after every step (``renormalise_filters``).
    ``export``: ``"full"`` (every parameter, float32), ``"full16"`` (every parameter, float16) or
    ``"features16"`` (the feature extractor, float16); the final accuracy is that of the weights as stored (classifier included, rounded the
    same way). ``eval_images``: evaluate each epoch on the first N test images only (the final weights
    see all). ``subset``: train on the first N training images, and test on the first N test images.
    ``checkpoints``: the epochs whose feature extractor is kept as float16 (with the last epoch's;
    none when empty). ``command``: the command line recorded in the history (default: this call,
    written out).

    ``out`` (default ``default_out(name)``: ``./zfcore-train/<name>``) is a folder that the run replaces
    as a whole when it completes: files are written into a fresh folder beside it first, so a failed
    or killed run leaves ``out`` as it was. Every argument is checked before any work
    (``ArgumentError``); a loss that stops being finite stops the run with ``TrainingError``."""
    arch = spec if isinstance(spec, str) and spec in SPECS else None
    spec, name = resolve_spec(spec, name)
    check_args(epochs, batch_size, lr, weight_decay, subset, device, threads, precision, checkpoints,
               export, eval_images)
    torch = require("torch", "torch", "training")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError(f"device {device!r}: no CUDA device is available here")
    out = Path(default_out(name) if out is None else out).expanduser().absolute()
    _check_out(out, name, overwrite)
    data.find_split("train", root)          # missing data found before the run starts
    cfg = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, weight_decay=weight_decay,
               rms_radius=RMS_RADIUS, renorm=bool(renorm), schedule="cosine",
               augmentation="hflip + translate<=2px", init="kaiming_normal", subset=subset, device=device,
               batchnorm=bool(batchnorm), precision=precision, eval_images=eval_images, export=export)
    history = {"name": name, "arch": arch, "seed": seed, "spec": [[n, k, p] for n, k, p in spec],
               "command": command or _call(arch or name, seed, cfg), "config": cfg}
    stage = _stage(out)
    try:
        _run(torch, stage, spec, history, root, threads, checkpoints, quiet)
        _swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return history


def _call(spec_name, seed, cfg) -> str:
    """The ``train`` call of a run, written out (the default ``command`` of its history)."""
    keys = ("epochs", "batch_size", "lr", "weight_decay", "subset", "batchnorm", "precision", "renorm",
            "export", "eval_images")
    return (f"zfcore.torch.train.train(spec={spec_name!r}, seed={seed}, "
            + ", ".join(f"{k}={cfg[k]!r}" for k in keys) + ")")


def _machine(torch, device) -> dict:
    """Where a run trained: the device's name, torch's version and the CPU count."""
    import os
    import platform

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    return dict(device=name, torch=torch.__version__, cpus=os.cpu_count())


def _setup(torch, spec, cfg, steps, device, fmt, gen):
    """The model (Kaiming-initialised from ``gen``), its SGD optimiser and the cosine schedule over
    ``cfg["epochs"] * steps`` steps."""
    model = torch_model(spec, batchnorm=cfg["batchnorm"])
    kaiming_init(model, gen)
    model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    return model, opt, sched


def _run(torch, out, spec, history, root, threads, checkpoints, quiet):
    """The training run of ``train``, writing into the fresh folder ``out``; fills in ``history``."""
    cfg, seed, name, t_start = history["config"], history["seed"], history["name"], time.time()
    epochs, batch_size, subset = cfg["epochs"], cfg["batch_size"], cfg["subset"]
    if threads:
        torch.set_num_threads(threads)
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    device = cfg["device"]
    history["machine"] = _machine(torch, device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    xtr, ytr = data.load_dataset("train", root=root, limit=subset)
    xte, yte = data.load_dataset("test", root=root)
    if subset:
        xte, yte = xte[:subset], yte[:subset]
    xev, yev = xte[:cfg["eval_images"]], yte[:cfg["eval_images"]]     # each epoch's evaluation

    channels_last = cfg["channels_last"] = device == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, opt, sched = _setup(torch, spec, cfg, math.ceil(len(xtr) / batch_size), device, fmt, gen)
    radius = RMS_RADIUS if cfg["renorm"] else None
    ckpt_epochs = {e for e in checkpoints if e <= epochs} | {epochs} if checkpoints else set()
    history["initial"] = dict(zip(("test_loss", "test_acc"),
                                  evaluate(model, xev, yev, device, channels_last=channels_last)))
    history["epochs"] = []
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        try:
            run_loss, renormed = _epoch(model, opt, sched, xtr, ytr, rng, batch_size, device, fmt,
                                        cfg["precision"], None if quiet else (epoch, epochs, t0), radius)
        except TrainingError as e:
            raise TrainingError(f"epoch {epoch}: {e} (learning rate {cfg['lr']}); the run stopped and "
                                "wrote nothing") from None
        rec = _record(model, xev, yev, device, channels_last, epoch, run_loss, renormed, t0)
        history["epochs"].append(rec)
        if not quiet:
            sys.stderr.write(f"\repoch {epoch}/{epochs} train loss {run_loss:.4f} test loss "
                             f"{rec['test_loss']:.4f} test acc {100 * rec['test_acc']:.2f}% "
                             f"({rec['seconds']:.0f} s, {renormed} renorms)\n")
        if epoch in ckpt_epochs:
            save_npz(out / "checkpoints" / f"epoch_{epoch:02d}.npz", feature_params(model, spec), name,
                     meta=dict(epoch=epoch, test_acc=rec["test_acc"], storage="float16", part="features"),
                     dtype=np.float16, overwrite=True)
    history["final"] = _export(model, spec, out, history, xte, yte, device, fmt)
    history["seconds"] = time.time() - t_start
    write_json(out / "history.json", history)
    return history


def _export(model, spec, out, history, xte, yte, device, fmt) -> dict:
    """Write ``<name>.npz`` (the BatchNorm-folded weights as ``history["config"]["export"]`` says) and
    return the final record: loss and accuracy of exactly those weights in the plain mirror, on all
    of ``xte``."""
    cfg, name = history["config"], history["name"]
    params = fold_batchnorm(model)
    dtype = EXPORTS[cfg["export"]]
    params = {k: v.astype(dtype).astype(np.float32) for k, v in params.items()}   # as stored
    plain = torch_model(spec, params).to(device, memory_format=fmt)
    test_loss, test_acc = evaluate(plain, xte, yte, device, channels_last=cfg["channels_last"])
    meta = dict(epoch=cfg["epochs"], test_acc=test_acc, seed=history["seed"])
    if cfg["export"] == "features16":
        params = features_spec(spec, params)[1]
        meta.update(storage="float16", part="features")
    elif cfg["export"] == "full16":
        meta.update(storage="float16", part="all")
    save_npz(out / f"{name}.npz", params, name, meta=meta, dtype=dtype, overwrite=True)
    return dict(test_loss=test_loss, test_acc=test_acc, batchnorm_folded=cfg["batchnorm"],
                storage=np.dtype(dtype).name)
