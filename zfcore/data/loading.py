"""Fashion-MNIST loading (idx files) and image loading for the larger models.

The test split ships with the package (``zfcore/assets/fashion_mnist``, MIT licence, see the LICENSE
file there), so everything that only needs the test images runs offline anywhere. The training split is
looked for, in this order:

1. an explicit ``root`` argument;
2. the environment variable ``$ZFCORE_DATA``;
3. torchvision's layout, ``<root>/FashionMNIST/raw`` under the two places above and under
   ``~/.cache/torchvision`` / ``./data``;
4. the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

Files may be gzip-compressed (``.gz``) or not. A download through torchvision happens only when
``download=True`` is passed explicitly (and the machine is online).

Images come back as float32 arrays of shape (N, 1, 28, 28) scaled to [0, 1]; labels as int64 (N,).
"""
from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np

from zfcore._io import atomic_write
from zfcore.errors import ArgumentError, DataError, check_choice, is_int

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = ASSETS / "fashion_mnist"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx magic numbers: 0x00000803 (uint8, 3 dims) for images, 0x00000801 (uint8, 1 dim) for labels.
_MAGIC = {3: 2051, 1: 2049}
MAX_IDX_BYTES = 2**30         # the largest idx payload read (the training images are 47 MB)
# The largest image decoded, checked on its header before decoding: 2048 x 2048 when the image is
# returned at full size (48 MB of float32 RGB), 8 megapixels when it is resized (``size=``), so that a
# small hostile file never costs more than about 200 MB.
MAX_PIXELS = 2048 * 2048
MAX_PIXELS_RESIZED = 8 * 2**20
__all__ = ["DataError"]       # re-exported from zfcore.errors (a ZfcoreError, hence a ValueError)


def _read_exact(f, n: int, path, what: str) -> bytes:
    raw = f.read(n)
    if len(raw) != n:
        raise DataError(f"{path}: truncated {what} ({len(raw)} of {n} bytes)")
    return raw


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a uint8 array.

    Checks the magic number, the dimension count, that the sizes in the header stay under
    ``MAX_IDX_BYTES`` (checked before the payload is read, so a gzip bomb is not unpacked) and that the
    payload has exactly the size the header announces; any mismatch raises :class:`DataError` naming
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return _parse_idx(f, path, ndim)
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise DataError(f"{path}: cannot read ({e})") from None


def _parse_idx(f, path, ndim):
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated (only {len(head)} bytes, no idx header)")
    magic = int.from_bytes(head, "big")
    dtype_code, dims = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or dtype_code != 0x08 or dims not in (1, 3):
        raise DataError(f"{path}: bad magic number 0x{magic:08x} (expected 0x00000801 or 0x00000803 "
                        "for uint8 idx files)")
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: holds a {dims}-d array, expected {ndim}-d (magic {_MAGIC[ndim]:#010x})")
    raw = f.read(4 * dims)
    if len(raw) < 4 * dims:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 * i: 4 + 4 * i], "big") for i in range(dims))
    size = math.prod(shape)                      # Python ints: no overflow
    if size > MAX_IDX_BYTES:
        raise DataError(f"{path}: header announces shape {shape} ({size} bytes), over the "
                        f"{MAX_IDX_BYTES}-byte limit")
    payload = f.read(size + 1)
    if len(payload) != size:
        raise DataError(f"{path}: truncated or padded: header says shape {shape} ({size} bytes), "
                        f"file holds {len(payload) if len(payload) <= size else 'more'} bytes of data")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def write_idx(path, array, overwrite: bool = False) -> Path:
    """Write a uint8 array (1-d labels or 3-d images) as an idx file, gzip-compressed if the name ends
    in ``.gz``. Used to make subsets and test fixtures; refuses to overwrite unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim not in (1, 3):
        raise ArgumentError(f"write_idx takes a 1-d or 3-d uint8 array, got {a.ndim}-d {a.dtype}")
    raw = _MAGIC[a.ndim].to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    raw += np.ascontiguousarray(a).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open

    def write(tmp):
        with opener(tmp, "wb") as f:
            f.write(raw)

    return atomic_write(path, write, overwrite)


def _candidates(root):
    roots = []
    if root is not None:
        roots.append(Path(root))
    env = os.environ.get("ZFCORE_DATA")
    if env:
        roots.append(Path(env))
    for base in list(roots) + [Path.home() / ".cache" / "torchvision", Path("data")]:
        roots.append(base / "FashionMNIST" / "raw")
    roots.append(DEBIAN)
    return roots


def _find_in(stem: str, d) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (Path(d) / name).is_file():
            return Path(d) / name
    return None


def find_split(split: str, root=None, shipped: bool = True) -> tuple[Path, Path]:
    """Locate the (images, labels) files of a split; raise one clear error listing where it looked."""
    check_choice(split, _FILES, "split")
    dirs = _candidates(root)
    if split == "test" and shipped:
        dirs = dirs[:1] if root is not None else []
        dirs.append(SHIPPED)
        dirs += _candidates(None)
    for d in dirs:   # both files from one folder: a half split is an error, never mixed with another
        found = [_find_in(stem, d) for stem in _FILES[split]]
        if all(found):
            return found[0], found[1]
        if any(found):
            have, lack = (_FILES[split][0], _FILES[split][1]) if found[0] else _FILES[split][::-1]
            raise DataError(f"{d}: holds {have} but not {lack}[.gz]; put both files of the "
                            f"Fashion-MNIST {split} split in one folder (--data FOLDER)")
    raise DataError(
        f"Fashion-MNIST {split} split not found (missing {', '.join(_FILES[split])}[.gz]). Looked in: "
        + "; ".join(str(d) for d in dirs)
        + ". Options: --data FOLDER on the command line (root= in Python) naming the folder with the idx "
        "files, set $ZFCORE_DATA, put torchvision's FashionMNIST/raw folder under one of those, or "
        "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist); from "
        "Python, load_dataset(..., download=True) fetches it while online."
    )


def check_limit(limit) -> int | None:
    """``limit`` (how many images to keep) as an int >= 1, or None (all); ``ArgumentError`` otherwise."""
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ArgumentError(f"limit must be a positive integer (or None for all images), got {limit!r}")
    return None if limit is None else int(limit)


def load_dataset(split: str = "test", root=None, download: bool = False, limit: int | None = None):
    """Return ``(images, labels)`` of a Fashion-MNIST split.

    images: float32 (N, 1, 28, 28) in [0, 1]; labels: int64 (N,). ``limit`` keeps the first N.
    ``download=True`` lets torchvision fetch the split into ``root`` (default ``./data``) when it is
    not found locally.
    """
    limit = check_limit(limit)
    try:
        img_path, lab_path = find_split(split, root)
    except DataError:
        if not download:
            raise
        from torchvision.datasets import FashionMNIST  # lazy: only on explicit request

        target = Path(root) if root is not None else Path("data")
        FashionMNIST(str(target), train=(split == "train"), download=True)
        img_path, lab_path = find_split(split, target)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
                        f"{labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{lab_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels.astype(np.int64)


def _check_size_mode(path, size, mode):
    if mode not in ("RGB", "L"):
        raise ArgumentError(f"{path}: mode must be 'RGB' or 'L', got {mode!r}")
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
        ok = all(float(a) == b for a, b in zip(size, (h, w)))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not (1 <= h <= 4096 and 1 <= w <= 4096):
        raise ArgumentError(f"{path}: size must be a pair of integers (H, W) in 1..4096, got {size!r}")
    return h, w


def _to_array(im, mode: str, size) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] from a Pillow image of any mode; 16-bit and 32-bit grey images are
    scaled by their full range (65535), not clipped at 255."""
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float32)
        a *= np.float32(1.0 if im.mode == "F" else 1.0 / 65535.0)
        np.nan_to_num(a, copy=False, nan=0.0)
        g = Image.fromarray(np.clip(a, 0.0, 1.0, out=a), mode="F")
        if size is not None:
            g = g.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(g, dtype=np.float32)[:, :, None]
        return np.repeat(arr, 3, axis=2) if mode == "RGB" else arr
    im = im.convert(mode)
    if size is not None:
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image(path, size=None, mode: str = "RGB") -> np.ndarray:
    """Load an image file (PNG/JPEG/... grey, RGB, palette, 8 or 16 bits) with Pillow as float32
    (1, C, H, W) in [0, 1].

    ``size=(H, W)`` resizes (bilinear); ``mode`` is "RGB" (C = 3) or "L" (C = 1). Images over
    ``MAX_PIXELS`` are refused from their header, before decoding. Every failure (missing, unreadable,
    truncated, too large, bad ``size``/``mode``) raises :class:`DataError` / ``ArgumentError`` naming
    the file.
    """
    path = Path(path)
    size = _check_size_mode(path, size, mode)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    from PIL import Image  # lazy: Pillow only for user images

    try:
        with Image.open(path) as im:
            w, h = im.size
            cap = MAX_PIXELS if size is None else MAX_PIXELS_RESIZED
            if w * h > cap:
                raise DataError(f"{path}: image of {w}x{h} pixels is over the {cap}-pixel limit")
            if size is not None and im.format == "JPEG":
                im.draft(mode, (size[1], size[0]))
            arr = _to_array(im, mode, size)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({e})") from None
    except Exception as e:  # UnidentifiedImageError, OSError, truncated data, Pillow's decoder errors
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return arr.transpose(2, 0, 1)[None].copy()


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def imagenet_normalize(x: np.ndarray) -> np.ndarray:
    """Normalise an RGB (N, 3, H, W) array in [0, 1] with the ImageNet mean and std."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ArgumentError(f"imagenet_normalize takes an (N, 3, H, W) RGB array, got shape {x.shape}")
    return ((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)
