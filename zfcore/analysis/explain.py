"""Explanations that can be checked: which features a decision rests on, what separates confused classes
over all their mistakes, how class-specific each projection rule is, and whether the projections depend
on the weights at all (cascading randomisation, Adebayo et al. 2018).

numpy only; forward passes are ``Network.forward`` records, and gradients and projections are walked
down by ``Record.backward`` (the one deconvnet walk, with the gradient rule for gradients). Axis letters: N images, F features (maps of a layer), K classes, L layers.
"""
from __future__ import annotations

import numpy as np

from zfcore.analysis.studies import project_units
from zfcore.core.layers import RULES
from zfcore.errors import ArgumentError, layer_width


# --- contributions of a layer's feature maps to a logit ---------------------------------------------------
def _head(net, layer: str):
    """The network above ``layer`` in float64, and the name of its first layer."""
    li = net.index(layer)
    if li + 1 >= len(net.layers):
        raise ArgumentError(f"layer {layer!r} is the last layer: there is no head above it")
    return net.astype(np.float64), net.layers[li + 1].name


def logit_gradient(net, images, layer: str, targets):
    """Activations of ``layer`` (N, F, H, W) and the gradient of logit ``targets[n]`` with respect to
    them (same shape), for images (N, C, H, W) and targets (N,) class indices (float64). The gradient
    is the one deconvnet walk (``Record.backward``) with the gradient rule, through the head above
    ``layer`` run in float64."""
    images = np.asarray(images)
    head, first = _head(net, layer)
    acts = net.forward(images, upto=layer).output.astype(np.float64)
    rec = head.forward(acts, start=first)
    logits = rec.output
    targets = np.broadcast_to(np.asarray(targets), (len(images),))
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ArgumentError(f"targets must be in 0..{logits.shape[1] - 1}")
    g = np.zeros_like(logits)
    g[np.arange(len(images)), targets] = 1.0
    return acts, rec.backward(g, rule="gradient")


def activation_times_gradient(net, images, layer: str, targets):
    """(N, F): for every feature map of ``layer``, the sum over its positions of activation x gradient
    of the target logit: the first-order contribution of the map to the logit."""
    acts, grad = logit_gradient(net, images, layer, targets)
    return (acts * grad).reshape(acts.shape[0], acts.shape[1], -1).sum(axis=2)


def zeroing_effect(net, images, layer: str, targets, batch: int = 16):
    """(N, F): how much the target logit falls when feature map f of ``layer`` is set to zero (the logit
    with every map minus the logit without map f). Exact, not first-order; costs F head passes/image."""
    images = np.asarray(images)
    first = _head(net, layer)[1]
    targets = np.broadcast_to(np.asarray(targets), (len(images),))
    acts = net.forward(images, upto=layer).output
    base = net.forward(acts, start=first).output
    F = acts.shape[1]
    out = np.empty((len(images), F))
    eye = 1.0 - np.eye(F, dtype=acts.dtype)                   # row f: keep every map but f
    for n in range(len(images)):
        for f0 in range(0, F, batch):
            keep = eye[f0:f0 + batch]
            z = acts[n][None] * keep[:, :, None, None]
            logit = net.forward(z, start=first).output
            out[n, f0:f0 + len(keep)] = base[n, targets[n]] - logit[:, targets[n]]
    return out


# --- confused pairs ---------------------------------------------------------------------------------------
def pair_statistics(net, images, labels, preds, true: int, pred: int, layer: str = "relu5", k: int = 5,
                    max_correct: int | None = 300):
    """Over all test mistakes ``true`` -> ``pred``: per feature map of ``layer``, its contribution
    (activation x gradient) to the margin logit[pred] - logit[true]. Returns dict: ``mistakes`` indices
    (M,); ``margin`` (M, F) contributions; ``mean`` (F,); ``top`` the k features with the largest mean;
    ``frequency`` (F,) the fraction of mistakes in which each map is among that image's k largest
    contributors; ``correct_mean`` (F,) the same mean over the correctly classified images of ``true`` (the
first ``max_correct`` of them; None: all)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    miss = np.flatnonzero((labels == true) & (preds == pred))
    if len(miss) == 0:
        raise ArgumentError(f"no test mistakes {true} -> {pred}")
    ok = np.flatnonzero((labels == true) & (preds == true))[:max_correct]

    def margin(idx):
        out = []
        for i in range(0, len(idx), 250):
            sl = images[idx[i:i + 250]]
            out.append(activation_times_gradient(net, sl, layer, pred)
                       - activation_times_gradient(net, sl, layer, true))
        return np.concatenate(out)

    m = margin(miss)
    ranks = np.argsort(-m, axis=1)[:, :k]
    freq = np.bincount(ranks.ravel(), minlength=m.shape[1]) / len(miss)
    mean = m.mean(0)
    return dict(mistakes=miss, margin=m, mean=mean, top=np.argsort(-mean)[:k], frequency=freq,
                correct_mean=margin(ok).mean(0) if len(ok) else np.full(m.shape[1], np.nan))


# --- class specificity ------------------------------------------------------------------------------------
def correlation_matrix(maps):
    """(K, K) Pearson correlations between K maps (K, ...) (flattened); constant maps give 0."""
    a = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    a = a - a.mean(1, keepdims=True)
    n = np.linalg.norm(a, axis=1)
    c = (a @ a.T) / np.maximum(np.outer(n, n), 1e-300)
    c[(n == 0)[:, None] | (n == 0)[None, :]] = 0.0
    return c


def class_specificity(net, images, rule: str, layer: str = "fc7"):
    """For each image (N, C, H, W), the projections of every output unit of ``layer``, each seeded with
    1 (``studies.project_units``), and their mean pairwise Pearson correlation: near 1 when the
    picture barely depends on the class. Returns (mean off-diagonal correlation (N,), projections
    (N, K, C, H, W))."""
    images = np.asarray(images)
    K = layer_width(net, layer)
    off = ~np.eye(K, dtype=bool)
    projs = np.stack([project_units(net, np.repeat(images[n:n + 1], K, axis=0), layer, np.arange(K), rule)
                      for n in range(len(images))])
    corr = np.array([correlation_matrix(p)[off].mean() for p in projs])
    return corr, projs


# --- sanity checks: cascading randomisation --------------------------------------------------------------
def rank(a):
    """Ranks (average ranks for ties) of a 1-D array, 0-based."""
    a = np.asarray(a).ravel()
    order = np.argsort(a, kind="stable")
    sa = a[order]
    new = np.r_[True, sa[1:] != sa[:-1]] if len(a) else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(a)]
    r = np.empty(len(a))
    r[order] = ((starts + ends - 1) / 2)[np.cumsum(new) - 1]
    return r


def spearman(a, b):
    """Spearman rank correlation of two arrays of the same size (flattened)."""
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    d = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / d) if d > 0 else 0.0


def randomised_params(net, layers, seed: int = 0):
    """A copy of ``net.params`` with the weights (Kaiming normal) and biases (zero) of ``layers``
    re-drawn: the randomised network of one step of the cascade."""
    rng = np.random.default_rng(seed)
    params = dict(net.params)
    for name in layers:
        w = params[f"{name}.weight"]
        fan_in = int(np.prod(w.shape[1:]))
        params[f"{name}.weight"] = rng.normal(0, np.sqrt(2.0 / fan_in), w.shape).astype(w.dtype)
        params[f"{name}.bias"] = np.zeros_like(params[f"{name}.bias"])
    return params


def cascading_randomisation(net, images, targets, rules=RULES,
                            layer: str = "fc7", seed: int = 0, threads=None):
    """Adebayo et al.'s cascade: randomise the weighted layers from the top down, one more at a time,
    and compare each rule's projection of output unit ``targets[n]`` of ``layer`` with the trained
    network's, by Spearman rank correlation of absolute values. One forward pass per network serves
    every rule (``faithfulness.class_projections``, images split over ``threads``). Returns
    (randomised layer names, top first (L,), dict rule -> (L + 1, N) correlations; row 0 = trained
    network, 1.0 by definition)."""
    from zfcore.analysis.faithfulness import class_projections
    from zfcore.models.specs import build

    weighted = [l.name for l in net.layers if l.kind in ("conv", "linear")][::-1]
    images = np.asarray(images)
    targets = np.broadcast_to(np.asarray(targets), (len(images),))
    nets = [net] + [build(net.spec, randomised_params(net, weighted[:i + 1], seed), dtype=net.dtype)
                    for i in range(len(weighted))]
    projs = [class_projections(m, images, targets, rules, layer, threads) for m in nets]
    out = {rule: np.array([[spearman(np.abs(p[rule][n]), np.abs(projs[0][rule][n]))
                            for n in range(len(images))] for p in projs]) for rule in rules}
    return weighted, out
