"""Image sources for dataset-scale analyses (``zfcore.analysis.top_k``, ``zfcore.analysis.distributed``): a collection
of images with a fixed id order, loaded a few at a time.

Every source has ``len(source)`` (N), ``source.shape`` (C, H, W) and ``source.load(ids)`` -> float
array (n, C, H, W) of the images with those ids (0..N-1), and pickles small (no pixels cached in the
pickle, except for an in-memory array), so that Dask can ship it to its workers.

- ``ArraySource(images)``: an in-memory (N, C, H, W) array; id i is ``images[i]``.
- ``TestSetSource(limit)``: the shipped Fashion-MNIST test split (its first ``limit`` images).
- ``FolderSource(root, size, mode, imagenet)``: every image file under ``root``, searched recursively,
  in the order of their relative POSIX paths (sorted as strings).
- ``ImageFolderSource(root, ...)``: torchvision's ``ImageFolder`` layout ``root/<class>/**/<file>``:
  classes are the sub-folders (sorted), labels per file, and the ids in torchvision's order (class,
  then folder, then file name), so id i is ``torchvision.datasets.ImageFolder(root)[i]``.
- ``open_folder(root, ...)`` picks one of the last two (``layout="auto"``: an ImageFolder when ``root``
  holds sub-folders and no image files of its own).

File sources load every image as ``zfcore.data.load_image`` does (upright by its EXIF orientation, the
centred region of the target's aspect ratio resized to ``size``, bilinear; images that would be
enlarged more than ``max_upscale`` times refused), convert it to grey (``mode="L"``) or RGB and apply
the ImageNet normalisation when ``imagenet`` is set, exactly as the command line loads images;
``for_model(name)`` gives those settings for the command line's models.

Entries that cannot be read are skipped, each reported once (``on_skip(path, reason)``; default a
``SkippedImageWarning``) and recorded in ``source.skipped`` (path -> reason): those that are not
regular non-empty readable files (a FIFO, a dangling link, an empty file ...) while the folder is
listed, before any image is read (a FIFO is never opened); those that fail to decode when the scan
reaches them (``load_readable``, which ``zfcore.analysis.top_k`` uses, returns the images it could
read and their ids). ``strict=True`` raises ``DataError`` at the first such entry instead. numpy only
(Pillow is imported by ``zfcore.data.load_image`` when a file is read).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from zfcore.core._checks import check_image_array
from zfcore.data.loading import FITS, MAX_UPSCALE, check_limit, check_max_upscale, file_problem
from zfcore.errors import ArgumentError, DataError, check_choice, is_int

# the file name endings read as images (lower-cased): torchvision's IMG_EXTENSIONS and .gif
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


def _limit(limit, n: int) -> int:
    """How many of ``n`` images ``limit`` keeps (``check_limit``: None keeps all)."""
    limit = check_limit(limit)
    return n if limit is None else min(limit, n)


def _ids(ids, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ArgumentError(f"image ids must be a 1-d array of integers, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ArgumentError(f"image ids must be in 0..{n - 1}, got {int(ids.min())}..{int(ids.max())}")
    return ids.astype(np.int64)


class SkippedImageWarning(UserWarning):
    """An entry of an image folder was skipped: it is not a readable image file."""


class ArraySource:
    """Images held in memory: ``images`` (N, C, H, W), floats with finite values (float arrays keep
    their dtype, bools become float32; integer arrays are refused with the conversion to use, since
    images are floats in [0, 1]). ``labels`` (N,) optional."""

    def __init__(self, images, labels=None):
        images = np.asarray(images)
        if images.ndim != 4 or len(images) == 0 or images.dtype.kind not in "biuf":
            raise ArgumentError(f"images must be a non-empty real (N, C, H, W) array, got "
                                f"{images.dtype} {images.shape}")
        check_image_array(images, "images")
        self.images = images if images.dtype.kind == "f" else images.astype(np.float32)
        self.labels = None if labels is None else np.asarray(labels)

    def __len__(self):
        return len(self.images)

    @property
    def shape(self):
        return tuple(self.images.shape[1:])

    def load(self, ids) -> np.ndarray:
        return self.images[_ids(ids, len(self))]

    def describe(self) -> dict:
        return {"source": "array", "count": len(self)}


class TestSetSource:
    """The shipped Fashion-MNIST test split (``zfcore.data.load_dataset("test", limit=limit)``):
    (N, 1, 28, 28) float32 in [0, 1]. Read once per process, on first ``load``; not pickled."""

    __test__ = False        # not a pytest test class, whatever its name

    def __init__(self, limit: int | None = None):
        self.limit = _limit(limit, 10**9)
        self._n = None
        self._images = self._labels = None

    def _data(self):
        if self._images is None:
            from zfcore.data.loading import load_dataset

            self._images, self._labels = load_dataset("test", limit=self.limit)
        return self._images

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class of each image (``zfcore.data.CLASSES``)."""
        self._data()
        return self._labels

    def __getstate__(self):
        return {"limit": self.limit, "_n": len(self), "_images": None, "_labels": None}

    def __len__(self):
        if self._n is None:
            self._n = len(self._data())
        return self._n

    @property
    def shape(self):
        return (1, 28, 28)

    def load(self, ids) -> np.ndarray:
        return self._data()[_ids(ids, len(self))]

    def describe(self) -> dict:
        return {"source": "shipped Fashion-MNIST test set", "count": len(self)}


def for_model(name: str) -> dict:
    """``size``, ``mode`` and ``imagenet`` of the command line's model ``name`` (fmnist_zf: 28x28 grey;
    vgg16, alexnet, zfnet: 224x224 RGB with ImageNet normalisation)."""
    from zfcore.models.specs import INPUTS

    check_choice(name, INPUTS, "model")
    ch, side, imagenet = INPUTS[name]
    return {"size": (side, side), "mode": "L" if ch == 1 else "RGB", "imagenet": imagenet}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(top: Path):
    """(folder relative to ``top`` as POSIX, sorted image file names) for every folder under ``top``,
    symbolic links followed once (a link back up the tree is not entered again)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        rel = Path(dirpath).relative_to(top).as_posix()
        yield ("" if rel == "." else rel), sorted(f for f in filenames if _is_image(f))


def _check_root(root) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ArgumentError(f"{root}: not a folder" + ("" if root.exists() else " (no such path)"))
    return root


class FolderSource:
    """Every image file under ``root`` (searched recursively; names ending in ``IMAGE_EXTENSIONS``,
    any case), id order = their relative POSIX paths sorted as strings; the first ``limit`` readable
    ones kept. Images are loaded upright, centre-cropped to the aspect ratio of ``size`` (an int or
    (H, W); ``fit="stretch"``: the whole image) and resized to it, converted to ``mode`` ("L" grey or
    "RGB") and ImageNet-normalised if ``imagenet``; images that would be enlarged more than
    ``max_upscale`` times count as unreadable. ``files``: the relative paths in id order. Unreadable
    entries: skipped and reported (``on_skip``, ``skipped``; see the module docstring), or
    ``DataError`` when ``strict``."""

    def __init__(self, root, size, mode: str = "L", imagenet: bool = False, limit: int | None = None,
                 strict: bool = False, fit: str = "crop", max_upscale=MAX_UPSCALE, on_skip=None):
        self.root = _check_root(root)
        self._settings(size, mode, imagenet, strict, fit, max_upscale, on_skip)
        files = sorted(f"{d}/{f}" if d else f for d, names in _walk(self.root) for f in names)
        if not files:
            raise ArgumentError(f"{self.root}: holds no image files ({', '.join(IMAGE_EXTENSIONS[:4])} ...)")
        self.files = [files[i] for i in self._screen(files, limit)]

    def _settings(self, size, mode, imagenet, strict=False, fit="crop", max_upscale=MAX_UPSCALE, on_skip=None):
        size = (size, size) if is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else (size,)
        if len(size) != 2 or not all(is_int(v) and 1 <= v <= 4096 for v in size):
            raise ArgumentError(f"size must be an integer or an (H, W) pair in 1..4096, got {size!r}")
        if mode not in ("L", "RGB"):
            raise ArgumentError(f"mode must be 'L' or 'RGB', got {mode!r}")
        if imagenet and mode != "RGB":
            raise ArgumentError("the ImageNet normalisation needs mode='RGB'")
        check_choice(fit, FITS, "fit")
        check_max_upscale(max_upscale)
        if on_skip is not None and not callable(on_skip):
            raise ArgumentError(f"on_skip must be a callable(path, reason) or None, got {on_skip!r}")
        self.size, self.mode, self.imagenet = (int(size[0]), int(size[1])), mode, bool(imagenet)
        self.strict, self.fit, self.max_upscale, self.on_skip = bool(strict), fit, max_upscale, on_skip
        self.skipped = {}

    def _screen(self, files, limit) -> list:
        """Indices of ``files`` that pass the cheap checks (``loading.file_problem``: regular, not empty,
        readable; nothing is opened), in order, up to ``limit`` of them; the others skipped."""
        n = _limit(limit, len(files))
        keep = []
        for i, f in enumerate(files):
            if len(keep) == n:
                break
            problem = file_problem(self.root / f)
            if problem is None:
                keep.append(i)
            else:
                self._skip(self.root / f, problem)
        if not keep:
            raise ArgumentError(f"{self.root}: holds no readable image files ({len(self.skipped)} skipped: "
                                f"{next(iter(self.skipped))}: {next(iter(self.skipped.values()))})")
        return keep

    def _skip(self, path, reason: str) -> None:
        """Report an unreadable entry (once), or raise ``DataError`` when ``strict``."""
        if self.strict:
            raise DataError(f"{path}: {reason}")
        if str(path) in self.skipped:
            return
        self.skipped[str(path)] = reason
        if self.on_skip is not None:
            self.on_skip(str(path), reason)
        else:
            warnings.warn(f"{path}: {reason}; skipped", SkippedImageWarning, stacklevel=4)

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        return (1 if self.mode == "L" else 3,) + self.size

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def _load_one(self, i) -> np.ndarray:
        from zfcore.data.loading import load_image

        return load_image(self.path(i), size=self.size, mode=self.mode, fit=self.fit,
                          max_upscale=self.max_upscale)

    def _finish(self, xs) -> np.ndarray:
        from zfcore.data.loading import imagenet_normalize

        if not xs:
            return np.zeros((0,) + self.shape, np.float32)
        x = np.concatenate(xs)
        return imagenet_normalize(x) if self.imagenet else x

    def load(self, ids) -> np.ndarray:
        """(n, C, H, W) float32 of the files with ids ``ids``; ``DataError`` naming an unreadable file."""
        return self._finish([self._load_one(i) for i in _ids(ids, len(self))])

    def load_readable(self, ids):
        """(images (m, C, H, W), their ids (m,)): the files with ids ``ids`` that could be read, the
        others skipped and reported (``DataError`` at the first when ``strict``)."""
        xs, ok = [], []
        for i in _ids(ids, len(self)):
            try:
                xs.append(self._load_one(i))
            except DataError as e:
                prefix = f"{self.path(i)}: "
                msg = str(e)
                self._skip(self.path(i), msg[len(prefix):] if msg.startswith(prefix) else msg)
                continue
            ok.append(i)
        return self._finish(xs), np.array(ok, np.int64)

    def skipped_files(self) -> dict:
        """The skipped entries so far: relative path (POSIX) -> reason."""
        return {Path(p).relative_to(self.root).as_posix(): why for p, why in self.skipped.items()}

    def describe(self) -> dict:
        return {"source": str(self.root), "layout": "folder", "count": len(self), "fit": self.fit,
                "strict": self.strict, "skipped": len(self.skipped)}


class ImageFolderSource(FolderSource):
    """torchvision's ``ImageFolder`` layout: ``root/<class>/**/<image file>``. ``classes``: the
    sub-folder names, sorted; ``labels`` (N,) int64: each file's class index. Files directly in
    ``root`` are not part of it. Ids in torchvision's order: by class, then by folder path, then by
    file name (the first ``limit`` readable ones kept). A class folder without image files is a
    ``DataError``. Other arguments as ``FolderSource``."""

    def __init__(self, root, size, mode: str = "L", imagenet: bool = False, limit: int | None = None,
                 strict: bool = False, fit: str = "crop", max_upscale=MAX_UPSCALE, on_skip=None):
        self.root = _check_root(root)
        self._settings(size, mode, imagenet, strict, fit, max_upscale, on_skip)
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise ArgumentError(f"{self.root}: no class sub-folders (ImageFolder layout: root/<class>/<image>)")
        files, labels = [], []
        for c, name in enumerate(self.classes):
            found = [f"{name}/{d}/{f}" if d else f"{name}/{f}"
                     for d, names in sorted(_walk(self.root / name)) for f in names]
            if not found:
                raise DataError(f"{self.root / name}: class folder holds no image files "
                                f"({', '.join(IMAGE_EXTENSIONS[:4])} ...)")
            files += found
            labels += [c] * len(found)
        keep = self._screen(files, limit)
        self.files, self.labels = [files[i] for i in keep], np.array([labels[i] for i in keep], np.int64)

    @property
    def class_to_idx(self) -> dict:
        return {c: i for i, c in enumerate(self.classes)}

    def describe(self) -> dict:
        return {**super().describe(), "layout": "imagefolder", "classes": list(self.classes)}


def open_folder(root, size, mode: str = "L", imagenet: bool = False, limit: int | None = None,
                layout: str = "auto", **options):
    """A ``FolderSource`` or an ``ImageFolderSource`` for ``root``. ``layout``: "folder",
    "imagefolder", or "auto": an ImageFolder when ``root`` holds sub-folders and no image file of its
    own, a recursive folder otherwise. ``options``: ``strict``, ``fit``, ``max_upscale``, ``on_skip``
    (see ``FolderSource``)."""
    check_choice(layout, ("auto", "folder", "imagefolder"), "layout")
    root = _check_root(root)
    if layout == "auto":
        entries = list(os.scandir(root))
        own_images = any(e.is_file() and _is_image(e.name) for e in entries)
        layout = "imagefolder" if any(e.is_dir() for e in entries) and not own_images else "folder"
    cls = ImageFolderSource if layout == "imagefolder" else FolderSource
    return cls(root, size, mode, imagenet, limit, **options)
