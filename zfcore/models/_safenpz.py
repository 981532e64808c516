"""Reading zfcore .npz weight files without trusting them: every check is made on the zip directory
and on each member's .npy header before any array data is read, so a small hostile file (a member
that unpacks to gigabytes, an object array, a forged size) is refused at the cost of a few bytes read.

Checks, in order: the file size (``MAX_FILE_BYTES``); member names (``<key>.npy``, no folders, no
duplicates); the ``__zfcore__`` header (small, a JSON object naming a known architecture); for a
model's weights, every parameter of the architecture present (from the zip directory); then per
member: the key belongs to the architecture's spec, the .npy header's dtype is float16/32/64 and its
shape equals the spec's (the classifier's row count may differ, up to ``MAX_CLASSES``), and the
member's declared size is exactly the header plus that many bytes. zipfile never returns more than the
declared size, and a member is converted to float32 a slice (``CHUNK_BYTES``) at a time, so memory is
bounded by the spec's float32 parameter sizes.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from zfcore.errors import WeightsError

MAX_FILE_BYTES = 4 * 2**30          # the largest .npz accepted (VGG16 float64 is about 1.1 GiB)
MAX_HEADER_BYTES = 2**20            # the __zfcore__ member
MAX_CLASSES = 100_000               # rows of the last linear layer
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
CHUNK_BYTES = 16 * 2**20            # a member is read and converted to float32 this much at a time


def _read_header(path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict:
    if info.file_size > MAX_HEADER_BYTES:
        raise WeightsError(f"{path}: '__zfcore__' header member too large ({info.file_size} bytes)")
    with zf.open(info) as f:
        a = np.lib.format.read_array(f, allow_pickle=False)
    if a.dtype.kind != "U" or a.ndim != 0:
        raise WeightsError(f"{path}: not a zfcore weights file (bad '__zfcore__' header)")
    header = json.loads(str(a))
    if not isinstance(header, dict) or not isinstance(header.get("meta", {}), dict):
        raise WeightsError(f"{path}: not a zfcore weights file (bad '__zfcore__' header)")
    return header


def _expected_shapes(arch: str) -> tuple[dict, str | None]:
    from zfcore.models.specs import SPECS, last_linear, param_shapes

    spec = SPECS[arch]
    return param_shapes(spec), last_linear(spec)


def _npy_header(path, key, f):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise WeightsError(f"unsupported .npy version {version}")
    except ValueError as e:
        raise WeightsError(f"{path}: corrupt weights file (member {key!r} has a bad .npy header: {e})") from None
    return shape, fortran, np.dtype(dtype), f.tell()


def _check_member(path, key, shape, dtype, want, last_weight, last_bias):
    if dtype.hasobject or dtype.newbyteorder("=") not in FLOAT_DTYPES:
        raise WeightsError(f"{path}: member {key!r} has dtype {dtype}; only float16, float32 and "
                           "float64 weights are read")
    shape = tuple(int(s) for s in shape)
    free_rows = key in (last_weight, last_bias)
    fits = (len(shape) == len(want) and shape[1:] == tuple(want[1:]) and 1 <= shape[0] <= MAX_CLASSES
            if free_rows else shape == tuple(want))
    if not fits:
        raise WeightsError(f"{path}: shape mismatch for {key}: expected {tuple(want)}, found {shape}")
    return shape


def _read_member(path, zf, info, key, shapes, last):
    want = shapes.get(key)
    if want is None:
        raise WeightsError(f"{path}: unexpected member {info.filename!r} (not a parameter of the "
                           "architecture)")
    with zf.open(info) as f:
        shape, fortran, dtype, hlen = _npy_header(path, key, f)
        shape = _check_member(path, key, shape, dtype, want, f"{last}.weight", f"{last}.bias")
        n = int(np.prod(shape, dtype=np.int64))
        if info.file_size != hlen + n * dtype.itemsize:
            raise WeightsError(f"{path}: member {key!r} declares {info.file_size} bytes, its header "
                               f"says {hlen + n * dtype.itemsize}")
        out = np.empty(n, np.float32)          # filled a slice at a time: no second copy of the member
        step = max(1, CHUNK_BYTES // dtype.itemsize)
        for i in range(0, n, step):
            buf = f.read(min(step, n - i) * dtype.itemsize)
            if len(buf) != min(step, n - i) * dtype.itemsize:
                raise WeightsError(f"{path}: member {key!r} is truncated")
            out[i:i + min(step, n - i)] = np.frombuffer(buf, dtype=dtype)
    return out.reshape(shape[::-1]).T if fortran else out.reshape(shape)


def read_npz(path, complete: bool = False) -> tuple[dict[str, np.ndarray], str, dict]:
    """(params as float32, arch, meta) of a zfcore .npz; ``WeightsError`` naming ``path`` otherwise.
    ``complete``: every parameter of the architecture must be there (a model's weights, not a
    checkpoint's feature extractor), checked before any member is read."""
    from zfcore.models.specs import SPECS

    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise WeightsError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit for weights files")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise WeightsError(f"{path}: not a zfcore weights file (a bare .npy array, not an .npz)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            bad = [n for n in names if not n.endswith(".npy") or "/" in n or "\\" in n or n.startswith(".")]
            if bad:
                raise WeightsError(f"{path}: not a zfcore weights file (member {bad[0]!r} is not a .npy "
                                   "array at the top level)")
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise WeightsError(f"{path}: duplicate member {dup[0]!r}")
            by_key = {n[:-4]: i for n, i in zip(names, infos)}
            if "__zfcore__" not in by_key:
                raise WeightsError(f"{path}: not a zfcore weights file (no '__zfcore__' header)")
            header = _read_header(path, zf, by_key.pop("__zfcore__"))
            arch = header.get("arch", "")
            if arch not in SPECS:
                raise WeightsError(f"{path}: weights for an unknown architecture {arch!r}")
            shapes, last = _expected_shapes(arch)
            missing = [k for k in shapes if k not in by_key] if complete else []
            if missing:                          # from the zip directory, before any member is read
                raise WeightsError(f"{path}: weights do not fit the architecture: missing keys: "
                                   + ", ".join(f"{k} {shapes[k]}" for k in missing)
                                   + f" (checked against architecture {arch!r})")
            params = {k: _read_member(path, zf, i, k, shapes, last) for k, i in by_key.items()}
    except WeightsError:
        raise
    except Exception as e:  # BadZipFile, EOFError, zlib.error, CRC errors, JSON errors ...
        raise WeightsError(f"{path}: corrupt weights file ({type(e).__name__}: {e})") from None
    return params, arch, header.get("meta", {})
