"""Weight files for zfcore's architectures: .npz (zfcore's format) and PyTorch state dicts (.pth/.pt).

``build_model`` (random seeded, a file or a dict), ``load_model`` (the shipped embedded model, or
ImageNet weights the user already has), ``load_weights`` / ``save_weights`` (.npz in zfcore's format;
.pth/.pt state dicts in torchvision's or zfcore's key layout), ``load_npz`` / ``save_npz``, the shipped
training ``checkpoints`` (``load_checkpoint``) and the key mapping ``torchvision_to_zfcore`` /
``zfcore_to_torchvision``, derived from the spec. Every name here is also reachable as
``zfcore.models.<name>``. torch is imported only inside the functions that read .pth files or return
tensors.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from zfcore._io import atomic_write
from zfcore.models._safenpz import MAX_CLASSES, MAX_FILE_BYTES, read_npz
from zfcore.errors import ArgumentError, MissingDependencyError, WeightsError
from zfcore.models.specs import SPECS, input_shape, last_linear, _check_arch, _features_end, _spec_of, build, check_params, features_spec, \
    get_spec, param_shapes

# Default ImageNet weights: torchvision's file names in its hub cache, and the environment variables.
TORCHVISION_FILES = {"vgg16": "vgg16-397923af.pth", "alexnet": "alexnet-owt-7be5be79.pth"}
WEIGHTS_ENV = {"vgg16": "ZFCORE_VGG16", "alexnet": "ZFCORE_ALEXNET"}
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"


def _infer_num_classes(arch: str, params) -> int | None:
    """The classifier width stored in ``params`` (rows of the last linear weight), if readable."""
    w = params.get(f"{last_linear(get_spec(arch))}.weight")
    shape = getattr(w, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 2 else None


# ------------------------------------------------------------------------------------------------
# torchvision key layout

def torchvision_names(arch) -> dict[str, str]:
    """Map each zfcore layer name of a spec (or architecture name) to its torchvision module path.

    Derived from the spec order the way torchvision lays out AlexNet and VGG: layers before the first
    ``adaptive_avgpool`` or ``flatten`` are ``features.<i>``, an ``adaptive_avgpool`` is ``avgpool``,
    ``flatten`` is no module (it lives in ``forward``), and the layers after are ``classifier.<i>``,
    counting every module (ReLU, pool, dropout, LRN) in each ``nn.Sequential``.
    """
    spec = _spec_of(arch)
    end = _features_end(spec)
    names = {name: f"features.{i}" for i, (name, _, _) in enumerate(spec[:end])}
    i = 0
    for name, kind, _ in spec[end:]:
        if kind == "adaptive_avgpool":
            names[name] = "avgpool"
        elif kind != "flatten":
            names[name] = f"classifier.{i}"
            i += 1
    return names


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor; numpy has no bfloat16 (nor float8): read those as float32
        v = v.detach().cpu()
        if v.is_floating_point() and str(v.dtype) not in ("torch.float16", "torch.float32", "torch.float64"):
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def _renamed(path, arch, state) -> dict:
    """``state`` under zfcore's names (torchvision's ``features.0.weight`` -> ``conv1_1.weight``), values
    untouched; keys of no layer of the spec keep their names (``check_params`` reports them)."""
    to_zf = {tv: zf for zf, tv in torchvision_names(arch).items()}
    out = {}
    for key, v in state.items():
        module, _, leaf = key.rpartition(".")
        new = f"{to_zf[module]}.{leaf}" if module in to_zf else key
        if new in out:
            raise WeightsError(f"{path}: two keys name the parameter {new} (one of them is {key})")
        out[new] = v
    return out


def torchvision_to_zfcore(arch, state_dict) -> dict[str, np.ndarray]:
    """Rename a torchvision-layout state dict (``features.0.weight`` ...) to zfcore names (``conv1_1.weight``).

    Values become numpy arrays (float32 for floating ones), copied, so that they share no memory with
    the tensors given. Keys that do not belong to the spec's layers are kept under their own names, so
    that ``check_params`` reports them as unexpected.
    """
    return {k: _float32(v) for k, v in _renamed("state_dict", arch, state_dict).items()}


def _float32(v) -> np.ndarray:
    """A copy of ``v`` as a numpy array, float32 if floating."""
    a = _to_numpy(v)
    return np.array(a, dtype=np.float32 if np.issubdtype(a.dtype, np.floating) else a.dtype)


def zfcore_to_torchvision(arch, params: dict, as_torch: bool = False) -> dict:
    """Rename zfcore parameters to torchvision's keys; ``as_torch=True`` returns torch tensors, ready for
    ``torchvision.models.<arch>().load_state_dict(..., strict=True)``."""
    to_tv = torchvision_names(arch)
    out = {}
    for key, v in params.items():
        layer, _, leaf = key.rpartition(".")
        out[f"{to_tv[layer]}.{leaf}" if layer in to_tv else key] = np.asarray(v)
    if as_torch:
        import torch

        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    return out


def _is_torchvision_layout(keys) -> bool:
    return any(k.startswith(("features.", "classifier.")) for k in keys)


# ------------------------------------------------------------------------------------------------
# .npz files

SAVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _storage_arrays(path, params: dict, dtype) -> dict[str, np.ndarray]:
    """The arrays to store: real floating (or integer, stored as float32) arrays, converted to ``dtype``
    (float16, float32 or float64 only: anything else would round or not load)."""
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise WeightsError(f"{path}: dtype {dtype!r} is not a numpy dtype") from None
        if dt not in SAVE_DTYPES:
            raise WeightsError(f"{path}: cannot store weights as {dt}; use float16, float32 or float64")
    out = {}
    for k, v in params.items():
        a = _to_numpy(v)
        if a.dtype.kind not in "biuf":
            raise WeightsError(f"{path}: parameter {k!r} has dtype {a.dtype}, not a real number type")
        store = dtype if dtype is not None else (a.dtype if a.dtype in SAVE_DTYPES else np.float32)
        out[k] = np.ascontiguousarray(a, dtype=store)
    return out


def save_npz(path, params: dict, arch: str, meta: dict | None = None, dtype=None,
             overwrite: bool = False) -> Path:
    """Write ``params`` (name -> array) to a compressed .npz with the architecture name and metadata.

    ``dtype`` (float16, float32 or float64) converts every parameter for storage; loading converts back
    to float32. Refuses to overwrite an existing file unless ``overwrite=True``. Written atomically
    (``zfcore._io``: a unique temporary file in the same folder, renamed into place; without
    ``overwrite`` a rename that cannot replace a file), so concurrent writers never leave a corrupt file.
    """
    path = Path(path)
    if not isinstance(arch, str):
        raise WeightsError(f"{path}: arch must be an architecture name, got {arch!r}")
    if not hasattr(params, "items"):
        raise WeightsError(f"{path}: params must be a dict of arrays, got {type(params).__name__}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    arrays = _storage_arrays(path, params, dtype)
    header = {"arch": arch, "meta": meta or {}}
    return atomic_write(path, lambda f: np.savez_compressed(
        f, __zfcore__=np.array(json.dumps(header, sort_keys=True)), **arrays), overwrite)


def load_npz(path) -> tuple[dict[str, np.ndarray], str, dict]:
    """Read a zfcore .npz: returns (params as float32 arrays, arch name, metadata).

    Raises ``FileNotFoundError`` for a missing file and ``WeightsError`` (a ValueError) naming the file
    for anything unreadable (not a zip, truncated, no zfcore header, damaged members, members that do
    not fit the architecture, a file over the size cap); see ``zfcore.models._safenpz`` for the checks made
    before any array is read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return read_npz(path)


# ------------------------------------------------------------------------------------------------
# weights in any format

def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _load_error(path, e: Exception) -> WeightsError:
    """torch.load's failure in zfcore's words: a pickle naming a global (a class or a function) is refused
    as not a plain state dict; anything else is a corrupt file, with torch's reason but never its advice
    to load with weights_only=False (which would run the file's code)."""
    text = str(e)
    if "Weights only load failed" in text:
        if re.search(r"GLOBAL|global|Unsupported class", text):
            return WeightsError(f"{path}: refused: not a plain state dict (the file's pickle names other "
                                "objects than tensors, and zfcore never unpickles arbitrary objects)")
        detail = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        reason = f"not a pickle that torch.load(weights_only=True) reads: {detail[0] if detail else '?'}"
    else:
        reason = f"{type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"
    return WeightsError(f"{path}: corrupt or unreadable PyTorch weights file ({reason})")


def _load_pth(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"{path}: reading .pth/.pt files needs torch, which is not installed: "
                                     "pip install 'zfcore[torch]', or convert the file to .npz with "
                                     "save_weights where torch is installed") from None
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise WeightsError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit for weights files")
    try:  # zip files are memory-mapped: a tensor's data is read only when it is converted, after the checks
        with warnings.catch_warnings():       # torch's remarks on the file's pickle: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, weights_only=True, map_location="cpu", mmap=_is_zip(path))
    except Exception as e:
        raise _load_error(path, e) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a training checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__}); "
                         "save the model with torch.save(model.state_dict(), path)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _guess_arch(path, state: dict, torchvision_layout: bool) -> str:
    """The one architecture whose keys (and, where names are shared, shapes) ``state`` has; from the
    keys and ``.shape`` only, nothing converted."""
    keys = set(state)
    candidates = []
    for arch in SPECS:
        expected = set(param_shapes(get_spec(arch)))
        if torchvision_layout:
            expected = set(zfcore_to_torchvision(arch, dict.fromkeys(expected, 0)))
        if keys == expected:
            candidates.append(arch)
    if len(candidates) > 1:  # same names (alexnet / zfnet): decide by shapes
        params = _renamed(path, candidates[0], state) if torchvision_layout else state
        fits = []
        for arch in candidates:
            try:
                check_params(get_spec(arch, _infer_num_classes(arch, params)), params)
                fits.append(arch)
            except ValueError:
                pass
        candidates = fits
    if len(candidates) != 1:
        raise WeightsError(f"{path}: cannot tell which architecture these weights are for "
                         f"({'several' if candidates else 'none'} of {', '.join(SPECS)} fit); "
                         "name it: --model on the command line, arch= in Python")
    return candidates[0]


def _check_value(source, key, v, floating: bool) -> None:
    """A real dtype (floating-point only, for a file) and, for a torch tensor, a dense tensor whose
    storage holds its data: an expanded view of a few bytes would materialise gigabytes."""
    if hasattr(v, "untyped_storage"):  # a torch tensor: dtype, layout and storage size, nothing read
        if str(v.layout) != "torch.strided":
            raise WeightsError(f"{source}: {key} is a {v.layout} tensor; only dense tensors are read")
        real = not v.is_complex() and str(v.dtype) != "torch.bool"
        if not (v.is_floating_point() or (real and not floating)):
            raise WeightsError(f"{source}: {key} has dtype {v.dtype}; only floating-point weights are read")
        stored, need = v.untyped_storage().nbytes(), v.numel() * v.element_size()
        if stored < need:
            raise WeightsError(f"{source}: {key} {tuple(v.shape)} is an expanded view of {stored} stored "
                               f"bytes, not the {need} its shape needs; save tensors that hold their data "
                               "(tensor.contiguous())")
        return
    dt = getattr(v, "dtype", None)
    try:
        dt = np.dtype(dt) if dt is not None else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in ("f" if floating else "biuf"):
        what = "; only floating-point weights are read" if floating else ", not a real number type"
        raise WeightsError(f"{source}: {key} has dtype {dt if dt is not None else type(v).__name__}{what}")


def _check_values(source, arch: str, params: dict, floating: bool, num_classes=None) -> None:
    """The checks made before any value is converted or copied, from ``.shape``, ``.dtype`` and a
    tensor's storage size (nothing read, nothing allocated): the classifier's width (read from the
    weights unless ``num_classes`` is given; 1..``MAX_CLASSES``), every key and shape against ``arch``,
    and each value (``_check_value``)."""
    if not hasattr(params, "items"):
        raise WeightsError(f"{source}: weights must be a dict of arrays, got {type(params).__name__}")
    rows = num_classes if num_classes is not None else _infer_num_classes(arch, params)
    if rows is not None and not 1 <= rows <= MAX_CLASSES:
        raise WeightsError(f"{source}: {last_linear(get_spec(arch))}.weight has {rows} rows (classes); at "
                           f"least 1 and at most {MAX_CLASSES} are read")
    try:
        check_params(get_spec(arch, rows), params, source=str(source))
    except WeightsError as e:
        raise WeightsError(f"{e} (checked against architecture {arch!r})") from None
    for k, v in params.items():
        _check_value(source, k, v, floating)


def _check_finite(source, params: dict) -> None:
    bad = [k for k, v in params.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{source}: NaN or infinite values in {', '.join(bad[:3])}"
                           + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))


def load_weights(path, arch: str | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Read a weights file; returns (params as float32 numpy arrays under zfcore names, arch name).

    ``.npz``: zfcore's format (``save_weights``); the architecture stored in the file must equal ``arch``
    when given. ``.pth`` / ``.pt``: a PyTorch state dict (``torch.load(weights_only=True)``, torch imported
    here) in torchvision's key layout (``features.0.weight``) or zfcore's (``conv1.weight``); ``arch`` is
    guessed from the keys when not given. Keys, shapes, dtypes and sizes are checked against the
    architecture before any value is converted (the classifier width may differ: it is read from the
    file, up to ``MAX_CLASSES``; a .npz from its members' headers, a .pth from the tensors' metadata), so
    a file for another architecture, a missing, corrupt or hostile one each give one error naming the
    file, at the cost of a few bytes read.
    """
    path = Path(path)
    if arch is not None:
        _check_arch(arch)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        params, stored, _ = read_npz(path, complete=True)  # checked from the zip directory and headers
        if stored not in SPECS:
            raise WeightsError(f"{path}: weights for an unknown architecture {stored!r}")
        if arch is not None and stored != arch:
            raise WeightsError(f"{path}: a weights file for architecture {stored!r}, not {arch!r}")
        arch = stored
        _check_values(path, arch, params, floating=True)
    elif suffix in (".pth", ".pt"):
        state = _load_pth(path)
        tv = _is_torchvision_layout(state)
        if arch is None:
            arch = _guess_arch(path, state, tv)
        params = _renamed(path, arch, state) if tv else state
        _check_values(path, arch, params, floating=True)
        params = {k: _float32(v) for k, v in params.items()}
    else:
        raise WeightsError(f"{path}: unknown weights format {suffix!r} (expected .npz, .pth or .pt)")
    _check_finite(path, params)
    return params, arch


def save_weights(net_or_params, path, arch: str, overwrite: bool = False, meta: dict | None = None,
                 dtype=None) -> Path:
    """Save a network's (or a params dict's) weights to a zfcore ``.npz`` file for ``arch``.

    The params are checked against the architecture first. Refuses to overwrite an existing file unless
    ``overwrite=True``; writes through a temporary file, so a failure leaves no partial output.
    """
    path = Path(path)
    _check_arch(arch)
    if path.suffix.lower() != ".npz":
        raise WeightsError(f"{path}: save_weights writes zfcore .npz files; give a path ending in .npz")
    params = getattr(net_or_params, "params", net_or_params)
    check_params(get_spec(arch, _infer_num_classes(arch, params)), params, source=str(path))
    return save_npz(path, params, arch, meta=meta, dtype=dtype, overwrite=overwrite)


def build_model(arch: str = "fmnist_zf", weights=None, seed: int = 0, num_classes: int | None = None,
                dtype=np.float32):
    """A ``zfcore.core.network.Network`` for ``arch``.

    ``weights``: None (random, seeded by ``seed``), a path (``load_weights``) or a params dict (numpy
    arrays or torch tensors, checked like a file's before any is converted: keys, shapes, real dtypes,
    no NaN). ``num_classes`` resizes the last linear layer; with weights given and ``num_classes=None``
    it is read from the weights.
    """
    _check_arch(arch)
    params, source = None, "params"
    if isinstance(weights, (str, os.PathLike)):
        params, arch = load_weights(weights, arch)
        source = str(weights)
    elif hasattr(weights, "items"):
        _check_values(source, arch, weights, floating=False, num_classes=num_classes)
        params = {k: _to_numpy(v) for k, v in weights.items()}
        _check_finite(source, params)
    elif weights is not None:
        raise ArgumentError(f"weights must be None, a path to a weights file or a dict of arrays, got "
                            f"{type(weights).__name__}")
    if params is not None and num_classes is None:
        num_classes = _infer_num_classes(arch, params)
    spec = get_spec(arch, num_classes)
    if params is not None:
        check_params(spec, params, source=source)
        params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    return build(spec, params=params, seed=seed, dtype=dtype, input_shape=input_shape(arch))


def _hub_dir() -> Path:
    """torch.hub.get_dir(), without importing torch when it is not installed (same rule as torch)."""
    try:
        import torch.hub

        return Path(torch.hub.get_dir())
    except ImportError:
        if os.environ.get("TORCH_HOME"):
            return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        return Path(cache).expanduser() / "torch" / "hub"


_RANDOM_ADVICE = "--weights random on the command line, build_model({name!r}) in Python"


def default_weights_path(name: str) -> Path:
    """Where ``load_model(name)`` finds weights without a path; raises FileNotFoundError listing where it
    looked. fmnist_zf: the shipped ``zfcore/assets/models/fmnist_zf.npz``. vgg16 / alexnet:
    ``$ZFCORE_VGG16`` / ``$ZFCORE_ALEXNET``, then torchvision's cache
    (``torch.hub.get_dir()/checkpoints/<torchvision file name>``). Nothing is ever downloaded."""
    _check_arch(name)
    if name == "fmnist_zf":
        p = ASSETS / "fmnist_zf.npz"
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: the embedded model's weights are missing from this installation; train them with "
                f"`zfcore train --out {p.parent}`, or try the model with random weights: "
                f"{_RANDOM_ADVICE.format(name=name)}")
        return p
    if name not in TORCHVISION_FILES:
        raise FileNotFoundError(f"no pretrained weights are known for {name!r}; give a weights file with "
                                f"--weights FILE (path= in Python), or try the model with random weights: "
                                f"{_RANDOM_ADVICE.format(name=name)}")
    looked = []
    env = WEIGHTS_ENV[name]
    if os.environ.get(env):
        p = Path(os.environ[env]).expanduser()
        if p.is_file():
            return p
        looked.append(f"${env} = {p} (no such file)")
    else:
        looked.append(f"${env} (not set)")
    p = _hub_dir() / "checkpoints" / TORCHVISION_FILES[name]
    if p.is_file():
        return p
    looked.append(f"{p} (torchvision's cache; not there)")
    raise FileNotFoundError(
        f"no {name} ImageNet weights found; looked at: " + "; ".join(looked) +
        f". Give them with --weights FILE (path= in Python), set ${env}, or put torchvision's "
        f"{TORCHVISION_FILES[name]} in its cache (zfcore never downloads); or try the model with random "
        f"weights: {_RANDOM_ADVICE.format(name=name)}")


def load_model(name: str = "fmnist_zf", path=None):
    """A network with trained weights: the embedded Fashion-MNIST model shipped with zfcore (default), or
    vgg16 / alexnet with ImageNet weights the user already has (``path``, ``$ZFCORE_VGG16`` /
    ``$ZFCORE_ALEXNET``, or torchvision's cache; see ``default_weights_path``). Never downloads."""
    _check_arch(name)
    return build_model(name, weights=path if path is not None else default_weights_path(name))


def load_checkpoint(path, arch: str = "fmnist_zf", dtype=np.float32):
    """The feature extractor (``features_spec``) of a shipped training checkpoint, as a Network.

    Checkpoints keep the conv layers only, stored as float16 and loaded as float32: enough to run
    the images up to the last pooling layer and project any feature (the feature-evolution figure);
    the classifier is left out to keep the package small (each epoch's test accuracy is in
    ``history.json``). Errors name the file: missing, corrupt, another architecture, wrong keys."""
    path = Path(path)
    _check_arch(arch)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    params, stored, _ = load_npz(path)
    if stored != arch:
        raise WeightsError(f"{path}: a checkpoint for architecture {stored!r}, not {arch!r}")
    spec = features_spec(arch)
    check_params(spec, params, source=str(path))
    return build(spec, params=params, dtype=dtype, input_shape=input_shape(arch))


def checkpoints(name: str = "fmnist_zf") -> list[tuple[int, Path]]:
    """The shipped training checkpoints of ``name``: a sorted list of (epoch, path) for
    ``zfcore/assets/models/checkpoints/epoch_XX.npz``. They hold the feature extractor only, stored
    as float16 (to keep the package small); ``load_checkpoint(path)`` loads one as a float32 network."""
    _check_arch(name)
    if name != "fmnist_zf":
        return []
    folder = ASSETS / "checkpoints"
    out = []
    for p in folder.glob("epoch_*.npz"):
        stem = p.stem[len("epoch_"):]
        if stem.isdigit():
            out.append((int(stem), p))
    return sorted(out)
