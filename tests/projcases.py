"""Shared helpers of the projection tests (numpy only): tolerances, comparisons, the test networks."""
from __future__ import annotations

import numpy as np

from zfcore import models
from zfcore.core import network

TOL_CROP = 1e-6     # cropped vs whole-map (relative)
CASES = ["fmnist", "alexnet", "zfnet"]


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def close(a, b, tol) -> bool:
    """rel(a, b) <= tol, or both exactly zero (a unit whose activation is 0 projects to nothing)."""
    if not np.any(b):
        return not np.any(a)
    return rel(a, b) <= tol


def triples(act, rng, k):
    """k (image, feature, position) triples including the four corners and random interior units."""
    N, C, H, W = act.shape
    pos = [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]
    pos += [(int(rng.integers(H)), int(rng.integers(W))) for _ in range(k - len(pos))]
    return rng.integers(N, size=k), rng.integers(C, size=k), np.array(pos[:k])


class Net:
    """One architecture: a seeded float32 network and the record of its forward pass on seeded normal
    images."""

    def __init__(self, spec, shape, n=1, seed=0):
        self.spec = spec
        self.net = models.build(spec, seed=seed)
        self.x = np.random.default_rng(seed + 100).standard_normal((n,) + shape).astype(np.float32)
        self.rec = self.net.forward(self.x)

    def spatial_layers(self, kinds=("conv", "relu", "maxpool", "lrn", "adaptive_avgpool")):
        return [n for n, k, _ in self.spec if k in kinds]


def vgg16_features():
    """VGG16's 13 convs and 5 pools (the classifier plays no part in projections from these layers)."""
    spec = models.vgg16_spec()
    return spec[:[n for n, _, _ in spec].index("pool5") + 1]


def make(name) -> Net:
    if name == "fmnist":
        return Net(models.FMNIST_ZF, (1, 28, 28), n=3, seed=1)
    if name == "alexnet":
        return Net(models.alexnet_spec(num_classes=100), (3, 224, 224), seed=2)
    if name == "zfnet":
        return Net(models.zfnet_spec(num_classes=100), (3, 224, 224), seed=3)
    return Net(vgg16_features(), (3, 224, 224), seed=4)
