"""Architectures as declarative layer specs, and weight files (.npz).

A spec is a list of ``(name, kind, params)`` triples, read top to bottom as the forward pass. The same
spec builds the numpy network (``zfcore.network``) and, for training, its PyTorch mirror
(``zfcore.train``), so the two cannot drift apart. Parameter names are ``<layer>.weight`` and
``<layer>.bias`` in PyTorch's layout: conv weights (F, C, KH, KW), linear weights (out, in).

Layer kinds: ``conv`` (in_channels, out_channels, kernel, stride, padding), ``relu``,
``maxpool`` (kernel, stride, padding), ``flatten``, ``linear`` (in_features, out_features),
``dropout`` (p; identity at inference).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The embedded default: a small ZF-style net for 28x28 grey Fashion-MNIST images. Five conv layers (so
# the paper's "layers 1-5" figures have a counterpart), overlapping 3x3 stride-2 max-pools as in ZFNet,
# ReLUs, and a two-layer classifier with dropout 0.5.
#   28x28 -conv1 5x5-> 28x28 -pool1-> 14x14 -conv2 5x5-> 14x14 -pool2-> 7x7 -conv3,4,5 3x3-> 7x7
#   -pool5-> 4x4 -> 128*4*4 = 2048 -> fc6 512 -> fc7 10
FMNIST_ZF = [
    ("conv1", "conv", dict(in_channels=1, out_channels=32, kernel=5, stride=1, padding=2)),
    ("relu1", "relu", {}),
    ("pool1", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("conv2", "conv", dict(in_channels=32, out_channels=64, kernel=5, stride=1, padding=2)),
    ("relu2", "relu", {}),
    ("pool2", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("conv3", "conv", dict(in_channels=64, out_channels=128, kernel=3, stride=1, padding=1)),
    ("relu3", "relu", {}),
    ("conv4", "conv", dict(in_channels=128, out_channels=128, kernel=3, stride=1, padding=1)),
    ("relu4", "relu", {}),
    ("conv5", "conv", dict(in_channels=128, out_channels=128, kernel=3, stride=1, padding=1)),
    ("relu5", "relu", {}),
    ("pool5", "maxpool", dict(kernel=3, stride=2, padding=1)),
    ("flatten", "flatten", {}),
    ("fc6", "linear", dict(in_features=2048, out_features=512)),
    ("relu6", "relu", {}),
    ("drop6", "dropout", dict(p=0.5)),
    ("fc7", "linear", dict(in_features=512, out_features=10)),
]

SPECS = {"fmnist_zf": FMNIST_ZF}


def param_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Expected parameter shapes of a spec, keyed ``<layer>.weight`` / ``<layer>.bias``."""
    shapes = {}
    for name, kind, p in spec:
        if kind == "conv":
            k = p["kernel"] if isinstance(p["kernel"], tuple) else (p["kernel"], p["kernel"])
            shapes[f"{name}.weight"] = (p["out_channels"], p["in_channels"], *k)
            shapes[f"{name}.bias"] = (p["out_channels"],)
        elif kind == "linear":
            shapes[f"{name}.weight"] = (p["out_features"], p["in_features"])
            shapes[f"{name}.bias"] = (p["out_features"],)
    return shapes


def save_npz(path, params: dict, arch: str, meta: dict | None = None, dtype=None,
             overwrite: bool = False) -> Path:
    """Write ``params`` (name -> array) to a compressed .npz with the architecture name and metadata.

    ``dtype`` (e.g. ``np.float16``) converts every parameter for storage; loading converts back to
    float32. Refuses to overwrite an existing file unless ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    arrays = {k: (np.asarray(v, dtype=dtype) if dtype is not None else np.asarray(v))
              for k, v in params.items()}
    header = {"arch": arch, "meta": meta or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, __zfcore__=np.array(json.dumps(header)), **arrays)
    tmp.replace(path)  # no partial file left behind on failure
    return path


def load_npz(path) -> tuple[dict[str, np.ndarray], str, dict]:
    """Read a zfcore .npz: returns (params as float32 arrays, arch name, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "__zfcore__" not in z.files:
                raise ValueError(f"{path}: not a zfcore weights file (no '__zfcore__' header)")
            header = json.loads(str(z["__zfcore__"]))
            params = {k: z[k].astype(np.float32) for k in z.files if k != "__zfcore__"}
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt weights file ({e})") from None
    except Exception as e:  # zipfile.BadZipFile and friends
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"{path}: corrupt weights file ({e})") from None
    return params, header.get("arch", ""), header.get("meta", {})
