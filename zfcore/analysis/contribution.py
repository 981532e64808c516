"""One classification explained by contribution: the feature maps of a layer ranked by their share of
the target logit (activation x gradient, ``explain.activation_times_gradient``), the strongest
activation of each top map projected to pixels, how alike those projections are, and where occluding
the image lowers the target's probability.

Above a layer whose head is piecewise linear (max-pooling, ReLU, linear layers, dropout at inference),
the logit of class c is exactly the sum of the maps' contributions plus a part due to the biases alone:
``z_c = sum_f sum_pos a_f * dz_c/da_f + beta_c``. :func:`decompose` returns both parts.

numpy only. Axis letters: N images, F feature maps, K projections, C H W an image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.analysis.explain import activation_times_gradient
from zfcore.analysis.sensitivity import Occlusion, occlusion
from zfcore.errors import ArgumentError, check_count


def decompose(net, images, layer: str, targets):
    """The logit of ``targets[n]`` split over the feature maps of ``layer``: (contributions (N, F),
    rest (N,)), contributions the activation x gradient of each map summed over its positions, rest the
    logit minus their sum (the biases' share above ``layer`` where the head is piecewise linear)."""
    images = np.asarray(images)
    targets = np.broadcast_to(np.asarray(targets), (len(images),))
    contrib = activation_times_gradient(net, images, layer, targets)
    logits = net.astype(np.float64).forward(images.astype(np.float64)).output
    return contrib, logits[np.arange(len(images)), targets] - contrib.sum(axis=1)


def cosine_similarity(maps) -> np.ndarray:
    """(K, K) cosine similarities between K arrays (K, ...) (flattened, not centred: zero stays zero,
    as in a projection); an all-zero array has similarity 0 with every array."""
    a = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    n = np.linalg.norm(a, axis=1)
    c = (a @ a.T) / np.maximum(np.outer(n, n), 1e-300)
    c[(n == 0)[:, None] | (n == 0)[None, :]] = 0.0
    return c


def mean_off_diagonal(m) -> float:
    """The mean of the off-diagonal entries of a square matrix (K >= 2)."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or len(m) < 2:
        raise ArgumentError(f"expected a square matrix of at least 2 x 2, got shape {m.shape}")
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def projection_similarity(net, image, layer: str, features) -> np.ndarray:
    """(K, K) cosine similarities between the deconvnet projections of ``features`` (K,) of ``layer``
    for one ``image`` (C, H, W), each projected from its strongest activation."""
    projs = net.forward(np.asarray(image)[None]).project_batch(layer, np.asarray(features), images=0)
    return cosine_similarity(projs)


@dataclass
class Explanation:
    """One image explained for class ``target``: ``scores`` (F,) the contribution of every map of
    ``layer`` to its logit, ``features`` the ``k`` largest (largest first), ``logit`` the logit itself,
    ``projections`` (k, C, H, W) each top map's strongest activation projected by the deconvnet,
    ``similarity`` (k, k) their cosine similarities, ``occlusion`` the probability of ``target`` under a
    grey square (``analysis.occlusion``)."""
    target: int
    layer: str
    scores: np.ndarray
    features: np.ndarray
    logit: float
    projections: np.ndarray
    similarity: np.ndarray
    occlusion: Occlusion

    @property
    def contributions(self) -> np.ndarray:
        """(k,) the contributions of the top maps."""
        return self.scores[self.features]

    @property
    def total(self) -> float:
        """The sum of all maps' contributions (the logit less the biases' share)."""
        return float(self.scores.sum())

    @property
    def mean_similarity(self) -> float:
        """Mean pairwise cosine similarity of the top projections."""
        return mean_off_diagonal(self.similarity)


def explain_image(net, image, target: int, layer: str = "relu5", k: int = 3, size: int = 6,
                  stride: int = 1, fill: float = 0.0) -> Explanation:
    """Explain the logit of ``target`` for one ``image`` (C, H, W): the ``k`` largest contributors
    among the maps of ``layer``, their projections, their similarity, and the occlusion map of
    ``target`` with a ``size`` x ``size`` square of value ``fill`` at every ``stride``-th position."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    k = check_count(k, "k", 2)
    contrib, rest = decompose(net, image[None], layer, int(target))
    order = np.argsort(-contrib[0], kind="stable")[:k]
    projs = net.forward(image[None]).project_batch(layer, order, images=0)
    occ = occlusion(net, image, int(target), size=size, stride=stride, fill=fill)
    return Explanation(int(target), layer, contrib[0], order, float(contrib[0].sum() + rest[0]),
                       projs, cosine_similarity(projs), occ)
