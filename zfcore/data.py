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
import os
from pathlib import Path

import numpy as np

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = ASSETS / "fashion_mnist"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx magic numbers: 0x00000803 (uint8, 3 dims) for images, 0x00000801 (uint8, 1 dim) for labels.
_MAGIC = {3: 2051, 1: 2049}


class DataError(ValueError):
    """A dataset file is missing or malformed."""


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a uint8 array.

    Checks the magic number, the dimension count and that the payload has exactly the size the
    header announces; any mismatch raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated (only {len(raw)} bytes, no idx header)")
    magic = int.from_bytes(raw[:4], "big")
    dtype_code, dims = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or dtype_code != 0x08 or dims not in (1, 3):
        raise DataError(f"{path}: bad magic number 0x{magic:08x} (expected 0x00000801 or 0x00000803 "
                        "for uint8 idx files)")
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: holds a {dims}-d array, expected {ndim}-d (magic {_MAGIC[ndim]:#010x})")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(f"{path}: truncated or padded: header says shape {shape} ({size} bytes), "
                        f"file holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path, array, overwrite: bool = False) -> Path:
    """Write a uint8 array (1-d labels or 3-d images) as an idx file, gzip-compressed if the name ends
    in ``.gz``. Used to make subsets and test fixtures; refuses to overwrite unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim not in (1, 3):
        raise ValueError(f"write_idx takes a 1-d or 3-d uint8 array, got {a.ndim}-d {a.dtype}")
    raw = _MAGIC[a.ndim].to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    raw += np.ascontiguousarray(a).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(raw)
    return path


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


def _find(stem: str, dirs) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (Path(d) / name).is_file():
                return Path(d) / name
    return None


def find_split(split: str, root=None, shipped: bool = True) -> tuple[Path, Path]:
    """Locate the (images, labels) files of a split; raise one clear error listing where it looked."""
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    dirs = _candidates(root)
    if split == "test" and shipped:
        dirs = dirs[:1] if root is not None else []
        dirs.append(SHIPPED)
        dirs += _candidates(None)
    found = [_find(stem, dirs) for stem in _FILES[split]]
    if all(found):
        return found[0], found[1]
    missing = [s for s, f in zip(_FILES[split], found) if f is None]
    raise DataError(
        f"Fashion-MNIST {split} split not found (missing {', '.join(missing)}[.gz]). Looked in: "
        + "; ".join(str(d) for d in dirs)
        + ". Options: pass root=<folder with the idx files>, set $ZFCORE_DATA, put torchvision's "
        "FashionMNIST/raw folder under one of those, install the Debian package dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist), or call load_dataset(..., download=True) while online."
    )


def load_dataset(split: str = "test", root=None, download: bool = False, limit: int | None = None):
    """Return ``(images, labels)`` of a Fashion-MNIST split.

    images: float32 (N, 1, 28, 28) in [0, 1]; labels: int64 (N,). ``limit`` keeps the first N.
    ``download=True`` lets torchvision fetch the split into ``root`` (default ``./data``) when it is
    not found locally.
    """
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


def load_image(path, size=None, mode: str = "RGB") -> np.ndarray:
    """Load a PNG/JPEG file with Pillow as float32 (1, C, H, W) in [0, 1].

    ``size=(H, W)`` resizes (bilinear); ``mode`` is a Pillow mode ("RGB" or "L").
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    from PIL import Image, UnidentifiedImageError  # lazy: Pillow only for user images

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None:
                im = im.resize((int(size[1]), int(size[0])), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)[None].copy()


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def imagenet_normalize(x: np.ndarray) -> np.ndarray:
    """Normalise an RGB (N, 3, H, W) array in [0, 1] with the ImageNet mean and std."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an (N, 3, H, W) RGB array, got shape {x.shape}")
    return ((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)
