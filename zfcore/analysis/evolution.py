"""Features during training and what the chapter on the paper's experiments measures with them.

- ``feature_evolution`` (the paper's Fig. 4): each checkpoint's strongest activation of chosen features
  and its projection;
- ``settling``: how early each layer's representation reaches its final form, as the linear CKA
  (``linear_cka``, Kornblith et al. 2019) of each checkpoint's activations with the last checkpoint's on
  fixed images; ``weight_settling``: the cosine of each layer's weights with the final weights (a
  weaker measure: it keeps the random initialisation's component, which wide layers hardly move);
- ``class_purity``: how much of a feature's top-k images share one class (``unit_purity`` for units
  without maps, from their activations); ``purity_chance``: the exact distribution of the purity of k
  images drawn at random;
- ``occlusion_peaks``: where a square hurts the decision most and where it hurts a feature most.

numpy only. Axis letters: F features, K the k kept per feature, C H W an image, N examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zfcore.analysis.sensitivity import occlusion
from zfcore.analysis.topk import top_k
from zfcore.errors import ArgumentError


# --- feature evolution during training (the paper's Fig. 4) -------------------------------------------
def feature_evolution(nets, images, layer: str, features, batch_size: int = 500):
    """For each network in ``nets`` (e.g. training checkpoints) and each feature: the strongest
    activation of that feature over ``images`` (an (N, C, H, W) array or a ``zfcore.data.sources``
    source) and its projection (``top_k`` with k=1). Returns (projections (len(nets), F, C, H, W),
    values (len(nets), F), image indices (len(nets), F))."""
    features = np.atleast_1d(np.asarray(features))
    projs, vals, idxs = [], [], []
    for net in nets:
        t = top_k(net, images, layer, k=1, features=features, batch_size=batch_size)
        projs.append(t.projections[:, 0])
        vals.append(t.values[:, 0])
        idxs.append(t.images[:, 0])
    return np.stack(projs), np.stack(vals), np.stack(idxs)


def weight_settling(nets, layers, threshold: float = 0.9):
    """The cosine similarity of each layer's flattened weights with the last network's, for networks
    ``nets`` in training order (the last one final). Returns (dict layer -> (len(nets),) cosines, dict
    layer -> index of the first network whose cosine is >= ``threshold``). The cosine keeps the random
    initialisation's component, which wide layers hardly move in training, so it is high early in wide
    layers whatever their features do: ``settling`` measures the representations instead."""
    final = nets[-1].params
    cos, first = {}, {}
    for layer in layers:
        b = final[f"{layer}.weight"].ravel().astype(np.float64)
        c = []
        for n in nets:
            a = n.params[f"{layer}.weight"].ravel().astype(np.float64)
            c.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        cos[layer] = np.array(c)
        first[layer] = int(np.argmax(cos[layer] >= threshold))
    return cos, first


# --- settling of the representations: linear CKA with the final checkpoint ---------------------------------
def _centred_gram(X) -> np.ndarray:
    """(N, N) Gram matrix of the rows of X (N, ...) after centring each column; float64 for float64
    input, float32 for float32 activations (half the time on wide layers)."""
    X = np.asarray(X)
    X = X.astype(np.result_type(X.dtype, np.float32), copy=False).reshape(len(X), -1)
    X = X - X.mean(axis=0)
    return X @ X.T


def _cka_of_grams(K, L) -> float:
    """Linear CKA from two centred Gram matrices: <K, L> / (||K|| ||L||), Frobenius."""
    K, L = np.asarray(K, np.float64), np.asarray(L, np.float64)
    den = np.linalg.norm(K) * np.linalg.norm(L)
    if den == 0:
        raise ArgumentError("linear_cka: a representation is constant over the examples")
    return float(np.sum(K * L) / den)


def linear_cka(X, Y) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019) of two representations of the same N
    examples: X (N, ...) and Y (N, ...), each flattened to (N, features). With the columns centred,
    CKA = ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F), computed from the (N, N) Gram matrices (float64 for
    float64 input; float32 Gram matrices of float32 input, their products summed in float64).
    1 for identical representations; invariant to orthogonal transforms and isotropic scaling of
    either; in [0, 1]."""
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim < 2 or Y.ndim < 2 or len(X) != len(Y) or len(X) < 2:
        raise ArgumentError(f"linear_cka needs two (N, ...) arrays of the same N >= 2 examples, "
                            f"got shapes {X.shape} and {Y.shape}")
    return _cka_of_grams(_centred_gram(X), _centred_gram(Y))


@dataclass
class Settling:
    """Per layer, how close each checkpoint's representation is to the last one's. epochs (E,) the
    checkpoints' epochs; cka: layer -> (E,) linear CKA of that checkpoint's activations of the layer
    with the last checkpoint's, on the same images (the last entry is 1); threshold; first: layer ->
    the first epoch whose CKA is >= threshold; stays: layer -> the first epoch from which every later
    checkpoint's CKA is >= threshold."""
    epochs: np.ndarray
    cka: dict
    threshold: float
    first: dict
    stays: dict


def _grams(net, images, layers) -> dict:
    deepest = max(layers, key=net.index)
    _, kept = net.infer(images, upto=deepest, keep=layers)
    return {layer: _centred_gram(kept[layer]) for layer in layers}


def settling(checkpoints, images, layers, threshold: float = 0.9) -> Settling:
    """Linear CKA (``linear_cka``) between each checkpoint's activations of each of ``layers`` and the
    last checkpoint's, on the same ``images`` (N, C, H, W). ``checkpoints``: (epoch, network or path)
    pairs in training order, e.g. ``zfcore.models.checkpoints()`` (paths are loaded one at a time with
    ``zfcore.models.load_checkpoint``). Returns a ``Settling``."""
    from zfcore.models import load_checkpoint

    cps = list(checkpoints)
    if not 0 < threshold <= 1:
        raise ArgumentError(f"threshold must be in (0, 1], got {threshold}")
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not cps or not layers:
        raise ArgumentError("settling needs at least one checkpoint and one layer")
    as_net = lambda n: n if hasattr(n, "infer") else load_checkpoint(n)   # noqa: E731
    final = _grams(as_net(cps[-1][1]), images, layers)
    cka = {layer: [] for layer in layers}
    for _, n in cps[:-1]:
        grams = _grams(as_net(n), images, layers)
        for layer in layers:
            cka[layer].append(_cka_of_grams(grams[layer], final[layer]))
    epochs = np.array([int(e) for e, _ in cps])
    cka = {layer: np.array(v + [1.0]) for layer, v in cka.items()}
    first = {layer: int(epochs[np.argmax(v >= threshold)]) for layer, v in cka.items()}
    stays = {layer: int(epochs[len(v) - np.argmax(v[::-1] < threshold)]) if (v < threshold).any()
             else int(epochs[0]) for layer, v in cka.items()}
    return Settling(epochs, cka, threshold, first, stays)


# --- class purity of the top-k images -----------------------------------------------------------------
def class_purity(t, labels):
    """For each feature of ``t`` (a ``TopK``): the share of its k images in their most common class
    (``labels`` the class of every image id). Returns (purity (F',), fires (F',) bool: the feature's
    strongest activation is > 0, so its top-k images are not ties at zero)."""
    classes = np.asarray(labels)[t.images]                               # (F', K)
    counts = np.stack([np.bincount(row, minlength=int(classes.max()) + 1) for row in classes])
    return counts.max(1) / classes.shape[1], t.values[:, 0] > 0


def unit_purity(acts, labels, k: int = 9):
    """``class_purity`` for F units without maps (e.g. a fully connected layer): acts (N, F) their
    activations on N images; each unit's top-k images are its k largest (ties: the smaller image id
    first). Returns (purity (F,), fires (F,) bool: the unit's largest activation is > 0)."""
    a = np.asarray(acts)
    if a.ndim != 2 or not 1 <= k <= len(a):
        raise ArgumentError(f"unit_purity needs acts (N, F) and 1 <= k <= N, got {a.shape} and k={k}")
    top = np.argsort(-a, axis=0, kind="stable")[:k].T                        # (F, K)
    classes = np.asarray(labels)[top]
    counts = np.stack([np.bincount(row, minlength=int(classes.max()) + 1) for row in classes])
    return counts.max(1) / k, a.max(0) > 0


def purity_chance(labels, k: int = 9) -> np.ndarray:
    """The exact distribution of the purity (the count in the most common class) of k distinct images
    drawn uniformly at random from images of classes ``labels`` (N,): (k + 1,) probabilities of
    purity 0..k. P(purity <= m) counts the k-subsets with at most m images of every class: the
    coefficient of x^k in prod_c sum_{j <= m} C(n_c, j) x^j (n_c the images of class c), over C(N, k)."""
    counts = np.bincount(np.asarray(labels)).tolist()
    if not 1 <= k <= sum(counts):
        raise ArgumentError(f"k must be in 1..{sum(counts)}, got {k}")

    def at_most(m):
        poly = [1] + [0] * k
        for n in counts:
            terms = [math.comb(n, j) for j in range(min(m, n) + 1)]
            poly = [sum(poly[i - j] * terms[j] for j in range(min(i, len(terms) - 1) + 1))
                    for i in range(k + 1)]
        return poly[k]

    cdf = [at_most(m) for m in range(k + 1)]
    total = math.comb(sum(counts), k)
    return np.array([(cdf[m] - (cdf[m - 1] if m else 0)) / total for m in range(k + 1)])


# --- where occlusion hurts the decision and a feature most ---------------------------------------------
@dataclass
class OcclusionPeaks:
    """``occlusion`` the grid (with the feature's total activation); ``feature`` the map of ``layer``;
    ``decision`` the (row, col) centre of the square that gives the lowest probability of the target;
    ``feature_drop`` the centre of the square that gives the feature's lowest total activation;
    ``distance`` between the two centres, in pixels."""
    occlusion: object
    layer: str
    feature: int
    decision: tuple
    feature_drop: tuple
    distance: float


def occlusion_peaks(net, image, target: int, layer: str = "conv5", feature=None, size: int = 6,
                    stride: int = 1, fill: float = 0.0) -> OcclusionPeaks:
    """Slide a ``size`` x ``size`` square of ``fill`` over ``image`` (C, H, W) (``analysis.occlusion``)
    and compare where it lowers the probability of ``target`` most with where it lowers the total
    activation of ``feature`` of ``layer`` most (default: the image's strongest map of that layer).
    Centres are (row, col) in pixels, (size - 1) / 2 from the square's top-left corner."""
    if feature is None:
        feature = int(net.forward(np.asarray(image)[None], upto=layer).top_features(layer, k=1)[0][0])
    o = occlusion(net, image, target, size=size, stride=stride, fill=fill, layer=layer, feature=feature)

    def centre(values):
        r, c = np.unravel_index(int(np.argmin(values)), values.shape)
        return float(o.rows[r] + (size - 1) / 2), float(o.cols[c] + (size - 1) / 2)

    d, f = centre(o.prob), centre(o.feature_activity)
    return OcclusionPeaks(o, layer, int(feature), d, f, float(np.hypot(d[0] - f[0], d[1] - f[1])))
