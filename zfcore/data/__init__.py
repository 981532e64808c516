"""Images in: the shipped Fashion-MNIST test split and the training split where it is installed
(``loading``: idx files, image files, ImageNet normalisation), and image collections loaded a few at a
time for dataset-scale work (``sources``). numpy only (Pillow for image files)."""
from zfcore.data import loading, sources
from zfcore.data.loading import (CLASSES, IMAGENET_MEAN, IMAGENET_STD, find_split, imagenet_normalize,
                                 load_dataset, load_image, read_idx, write_idx)

__all__ = ["loading", "sources", "CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "find_split",
           "imagenet_normalize", "load_dataset", "load_image", "read_idx", "write_idx"]
