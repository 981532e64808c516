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
import stat
import threading
import warnings
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
# The largest image returned at full size (``size=None``; 48 MB of float32 RGB), checked on its header
# before decoding. A resized image may be as large as Pillow's decompression-bomb limit
# (PIL.Image.MAX_IMAGE_PIXELS, about 89 megapixels): a JPEG is then decoded at a reduced scale, other
# formats are decoded whole (at most 4 bytes a pixel) and reduced before any conversion.
MAX_PIXELS = 2048 * 2048
MAX_UPSCALE = 4.0             # images that a resize would enlarge more than this are refused
FITS = ("crop", "stretch")
_OPEN_LOCK = threading.Lock()
_REDUCIBLE = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F")   # modes Image.reduce takes
_STRIP_PIXELS = 2**20         # pixels of each strip a large image is reduced in
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


def check_max_upscale(value):
    """``max_upscale``: a finite number >= 1, or None (no limit); ``ArgumentError`` otherwise."""
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and 1 <= value < math.inf):
        raise ArgumentError(f"max_upscale must be a number >= 1, or None for no limit, got {value!r}")
    return value


def _check_size_mode(path, size, mode, fit="crop", max_upscale=None):
    try:
        check_max_upscale(max_upscale)
    except ArgumentError as e:
        raise ArgumentError(f"{path}: {e}") from None
    if mode not in ("RGB", "L"):
        raise ArgumentError(f"{path}: mode must be 'RGB' or 'L', got {mode!r}")
    if fit not in FITS:
        raise ArgumentError(f"{path}: fit must be one of {', '.join(map(repr, FITS))}, got {fit!r}")
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


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def file_problem(path) -> str | None:
    """Why ``path`` cannot be an image file, from its metadata alone (it is never opened, so a FIFO
    does not block): "no such file", "is a broken symbolic link (to ...)", "is a folder, not an image
    file", "is not a regular file (a FIFO)", "is empty (0 bytes)", "cannot be read (permission
    denied)"; None for a non-empty regular file that may be read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "no such file"
    except OSError as e:                       # a loop of links, a name too long, no access to a folder
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        return f"is not a regular file ({kind})"
    if st.st_size == 0:
        return "is empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _open(path):
    """``PIL.Image.open`` (the header only). Pillow's DecompressionBombWarning (images between one and
    two times ``MAX_IMAGE_PIXELS``) is silenced here because such images are refused by the caller
    with an error of their own; the lock keeps threads from restoring each other's warning filters."""
    from PIL import Image

    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _orientation(im) -> int:
    """The EXIF orientation tag (1..8; 1 when absent or unreadable)."""
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: the image itself may still be fine
        return 1
    return o if 1 <= o <= 8 else 1


def _geometry(W: int, H: int, size, fit: str):
    """The region of a W x H (displayed) image resized to ``size`` = (th, tw): (box (left, top, right,
    bottom), scale). "crop": the largest centred region of the target's aspect ratio (the shorter side
    whole); "stretch": the whole image."""
    th, tw = size
    if fit == "stretch":
        return (0.0, 0.0, float(W), float(H)), max(th / H, tw / W)
    if W * th > tw * H:                         # wider than the target: crop left and right
        cw, ch = H * tw / th, float(H)
    else:
        cw, ch = float(W), W * th / tw
    left, top = (W - cw) / 2, (H - ch) / 2
    return (left, top, left + cw, top + ch), tw / cw


def _check_pixels(path, w, h, size):
    """Pillow's decompression-bomb limit for every image (where Pillow itself would only warn, too),
    ``MAX_PIXELS`` for one returned at full size."""
    from PIL import Image

    cap = Image.MAX_IMAGE_PIXELS
    if cap is not None and w * h > cap:
        raise DataError(f"{path}: image too large ({w}x{h} = {w * h} pixels, over the limit of {cap}, "
                        "PIL.Image.MAX_IMAGE_PIXELS): larger than any photo, a decompression bomb?")
    if size is None and w * h > MAX_PIXELS:
        raise DataError(f"{path}: image of {w}x{h} pixels is over the {MAX_PIXELS}-pixel limit of a "
                        "full-size load; pass size=(H, W) to load it downscaled")


def _check_upscale(path, W, H, size, scale, max_upscale):
    if max_upscale is not None and scale > max_upscale:
        th, tw = size
        raise DataError(f"{path}: image of {W}x{H} pixels is too small for {tw}x{th}: it would be "
                        f"enlarged {scale:.3g} times (at most {max_upscale:g}); use an image of at least "
                        f"{math.ceil(min(th, tw) / max_upscale)} pixels on its shorter side, or allow more (--max-upscale X; "
                        "max_upscale= in Python)")


def _prepare(im, path, size, mode, fit, max_upscale):
    """Decode ``im`` upright and small: -> (image, box in its pixels or None, info)."""
    from PIL import ImageOps

    w0, h0 = im.size
    _check_pixels(path, w0, h0, size)
    orient = _orientation(im)
    W, H = (h0, w0) if orient >= 5 else (w0, h0)        # 5..8 turn the image by a quarter
    info = {"pixels": [H, W], "exif_orientation": orient}
    box = None
    if size is not None:
        box, scale = _geometry(W, H, size, fit)
        _check_upscale(path, W, H, size, scale, max_upscale)
        info.update(fit="center-crop" if fit == "crop" else "stretch",
                    box=[round(v, 2) for v in box], scale=round(scale, 6))
        if im.format == "JPEG":                # decode at 1/2, 1/4 or 1/8 scale, still covering the box
            need = (math.ceil(size[1] * W / (box[2] - box[0]) - 1e-6),
                    math.ceil(size[0] * H / (box[3] - box[1]) - 1e-6))
            im.draft(mode, need[::-1] if orient >= 5 else need)
    im.load()
    if orient != 1:
        ImageOps.exif_transpose(im, in_place=True)
    if box is not None:
        im, box = _reduce(im, box, size, mode, W, H)
    if im.mode == "F" and not np.isfinite(np.asarray(im)).all():   # a reduced image keeps NaN and inf
        raise DataError(f"{path}: holds NaN or infinite pixel values")
    return im, box, info


def _reduce(im, box, size, mode, W, H):
    """Shrink ``im`` by an integer factor (block averages, ``Image.reduce``) while the box stays at
    least twice the target's size, so that conversions work on a small image; the box in the result's
    pixels."""
    sx, sy = im.size[0] / W, im.size[1] / H             # a JPEG draft may have scaled it already
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    f = int(min((box[2] - box[0]) / (2 * size[1]), (box[3] - box[1]) / (2 * size[0])))
    if f < 2:
        return im, box
    small = _shrink(im, f, mode)
    rx, ry = small.size[0] / im.size[0], small.size[1] / im.size[1]
    return small, (box[0] * rx, box[1] * ry, box[2] * rx, box[3] * ry)


def _shrink(im, f: int, mode: str):
    """``im.reduce(f)``, strip by strip (heights a multiple of f: the same blocks), so that no copy of
    the whole image is made: neither a conversion (16-bit grey to "I", palette or 1-bit to ``mode``)
    nor the premultiplied copy ``reduce`` makes of an image with alpha."""
    from PIL import Image

    w, h = im.size
    conv = "I" if im.mode.startswith("I;16") else None if im.mode in _REDUCIBLE else mode
    rows = f * max(1, _STRIP_PIXELS // (w * f))
    out = None
    for y in range(0, h, rows):
        part = im.crop((0, y, w, min(y + rows, h)))
        part = (part.convert(conv) if conv else part).reduce(f)
        if out is None:
            out = Image.new(part.mode, (-(-w // f), -(-h // f)))
        out.paste(part, (0, y // f))
    return out


def _to_array(im, mode: str, size, box=None) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] from a Pillow image of any mode, the region ``box`` resized to
    ``size``; 16-bit and 32-bit grey images are scaled by their full range (65535), not clipped at
    255."""
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float32)
        a *= np.float32(1.0 if im.mode == "F" else 1.0 / 65535.0)
        g = Image.fromarray(np.clip(a, 0.0, 1.0, out=a), mode="F")
        if size is not None:
            g = g.resize((size[1], size[0]), Image.BILINEAR, box=box)
        arr = np.asarray(g, dtype=np.float32)[:, :, None]
        return np.repeat(arr, 3, axis=2) if mode == "RGB" else arr
    im = im.convert(mode)
    if size is not None:
        im = im.resize((size[1], size[0]), Image.BILINEAR, box=box)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image(path, size=None, mode: str = "RGB", fit: str = "crop", max_upscale=MAX_UPSCALE):
    """``load_image`` and what it did: (array (1, C, H, W), info). info: "pixels" [H, W] of the
    image as displayed, "exif_orientation" (the tag applied, 1: none) and, with ``size``, "fit",
    "box" [left, top, right, bottom] (the region used, in those pixels) and "scale" (output pixels per
    image pixel)."""
    path = Path(path)
    size = _check_size_mode(path, size, mode, fit, max_upscale)
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    from PIL import Image  # lazy: Pillow only for user images

    try:
        with _open(path) as im:
            small, box, info = _prepare(im, path, size, mode, fit, max_upscale)
            arr = _to_array(small, mode, size, box)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({e}; the limit is PIL.Image.MAX_IMAGE_PIXELS)") from None
    except Exception as e:  # UnidentifiedImageError, OSError, truncated data, Pillow's decoder errors
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return arr.transpose(2, 0, 1)[None].copy(), info


def load_image(path, size=None, mode: str = "RGB", fit: str = "crop", max_upscale=MAX_UPSCALE) -> np.ndarray:
    """Load an image file (PNG/JPEG/... grey, RGB, palette, 8 or 16 bits) with Pillow as float32
    (1, C, H, W) in [0, 1], upright (its EXIF orientation applied).

    ``size=(H, W)`` resizes (bilinear): ``fit="crop"`` (default) takes the largest centred region of
    the target's aspect ratio (a square image whole; the paper's and torchvision's centre crop),
    ``fit="stretch"`` the whole image, its aspect ratio not kept. A JPEG is decoded at a reduced scale
    where that still covers the target, so a 12-megapixel photo costs about 1/64 of its pixels.
    ``mode`` is "RGB" (C = 3) or "L" (C = 1). Refused (``DataError`` naming the file): paths that are
    not regular non-empty files (checked without opening them), unreadable or truncated files, float
    images holding NaN/inf, images over Pillow's ``MAX_IMAGE_PIXELS`` (a decompression bomb) or, at
    full size, over ``MAX_PIXELS`` (both read from the header, before decoding), and images that
    ``size`` would enlarge more than ``max_upscale`` times (None: no limit). Bad ``size``/``mode``/
    ``fit``/``max_upscale``: ``ArgumentError`` naming the file.
    """
    return read_image(path, size, mode, fit, max_upscale)[0]


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def imagenet_normalize(x: np.ndarray) -> np.ndarray:
    """Normalise an RGB (N, 3, H, W) array in [0, 1] with the ImageNet mean and std (floats with finite
    values: an integer array is refused with the conversion to use)."""
    from zfcore.core._checks import check_image_array

    x = check_image_array(x, "imagenet_normalize's input")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ArgumentError(f"imagenet_normalize takes an (N, 3, H, W) RGB array, got shape {x.shape}")
    return ((x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)
