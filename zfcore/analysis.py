"""Analyses built on the deconvnet: classification summaries, the strongest features of an image,
top-k activations across a dataset, occlusion sensitivity and feature evolution during training.

numpy only (threadpoolctl, when installed, for ``zfcore.parallel``). ``predict`` and ``scan_maxima``
run the network with ``Network.infer`` (no trace, no switches), in threads over each batch, and leave
``net.trace`` as it was; ``top_k``, ``occlusion`` and ``feature_evolution`` leave it
holding the *last* batch they ran, so call ``net.forward`` again before projecting from your own images.

Axis letters: N images, C channels, H W height and width, F features, K items.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ops, parallel
from ._argcheck import check_count, check_feature, check_layer, num_classes
from .errors import ArgumentError, check_index


# --- classification -----------------------------------------------------------------------------------
def predict(net, images, batch_size: int = 500, threads=None) -> np.ndarray:
    """Logits (N, classes) of ``images`` (N, C, H, W), computed in batches of ``batch_size``, each batch
    split over ``threads`` threads (``zfcore.parallel``; None: every core)."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array, got shape {images.shape}")
    threads = parallel.resolve(threads)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        out += parallel.map_parts(lambda lo, hi: net.infer(batch[lo:hi])[0], len(batch), threads)
    return np.concatenate(out)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix: diagonal / row sums."""
    return np.diag(cm) / np.maximum(cm.sum(axis=1), 1)


def most_confused_pairs(cm: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal entries as (true, predicted, count), largest first."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, -1)
    flat = np.argsort(off, axis=None)[::-1][:k]
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(flat, off.shape))]


# --- features of one image ---------------------------------------------------------------------------
def map_maxima(net, layer: str) -> np.ndarray:
    """(N, F) strongest activation of every feature map of ``layer`` in the last forward batch."""
    act = net.activations(layer)
    if act.ndim != 4:
        raise ValueError(f"layer {layer!r} is not spatial (output {act.shape[1:]})")
    return act.reshape(act.shape[0], act.shape[1], -1).max(axis=2)


def top_features(net, layer: str, image: int = 0, k: int = 5):
    """The k feature maps of ``layer`` with the strongest activation in ``image`` of the last forward
    batch: (features (k,), values (k,)), strongest first."""
    m = map_maxima(net, layer)
    if not 0 <= image < m.shape[0]:
        raise ValueError(f"image {image} out of range: the last forward batch has {m.shape[0]} images")
    order = np.argsort(-m[image], kind="stable")[:k]
    return order, m[image, order]


# --- top-k across a dataset (the paper's Fig. 2) ------------------------------------------------------
@dataclass
class TopK:
    """Per feature, the k images of a dataset where it fires most, and what the deconvnet shows.

    features (F,); images (F, k) dataset indices; positions (F, k, 2) in the layer's map; values (F, k);
    projections (F, k, C, H, W) in pixel space; boxes (F, k, 4) input boxes (top, left, bottom, right)
    of the receptive fields; patches (F, k, C, h, w) the image patches under them (zero-padded where
    the field hangs over the border, so all patches share the field's size)."""
    layer: str
    features: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    projections: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray


def scan_maxima(net, images, layer, batch_size: int = 500, threads=None):
    """For every image and feature map of ``layer``: the map's maximum and its position (the first in
    row-major order where the maximum repeats). Returns (values (N, F), positions (N, F, 2)). ``layer``
    may be a list of layers: then one forward pass (up to the deepest of them) serves all, and the
    result is a dict layer -> (values, positions). Each batch is split over ``threads`` threads
    (``zfcore.parallel``; None: every core)."""
    layers = [layer] if isinstance(layer, str) else list(layer)
    if not layers:
        raise ValueError("scan_maxima needs at least one layer")
    deepest = max(layers, key=net.index)
    threads = parallel.resolve(threads)
    vals = {name: [] for name in layers}
    poss = {name: [] for name in layers}

    def part(batch):
        _, acts = net.infer(batch, upto=deepest, keep=layers)
        res = {}
        for name in layers:
            act = acts[name]
            if act.ndim != 4:
                raise ValueError(f"layer {name!r} is not spatial (output {act.shape[1:]})")
            flat = act.reshape(act.shape[0], act.shape[1], -1)
            arg = flat.argmax(axis=2)
            res[name] = (np.take_along_axis(flat, arg[..., None], axis=2)[..., 0],
                         np.stack(np.divmod(arg, act.shape[3]), axis=-1))
        return res

    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        for res in parallel.map_parts(lambda lo, hi: part(batch[lo:hi]), len(batch), threads):
            for name in layers:
                vals[name].append(res[name][0])
                poss[name].append(res[name][1])
    out = {name: (np.concatenate(vals[name]), np.concatenate(poss[name])) for name in layers}
    return out[layer] if isinstance(layer, str) else out


def top_k(net, images, layer: str, k: int = 9, features=None, batch_size: int = 500,
          rule: str = "deconvnet", maxima=None) -> TopK:
    """The paper's Fig. 2 for ``layer``: for each feature, the ``k`` images of ``images`` (N, C, H, W)
    with the strongest activation of that map (one activation per image: its maximum), each projected
    to pixels on its own (all other activations of the layer set to zero), and the image patches under
    the receptive fields. ``maxima``: the (values, positions) of ``scan_maxima`` for these images and
    this layer, if already computed."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ArgumentError(f"top_k needs a non-empty (N, C, H, W) image set, got shape {images.shape}")
    check_layer(net, layer)
    k = check_count(k, "k", 1, len(images))
    vals, poss = scan_maxima(net, images, layer, batch_size) if maxima is None else maxima
    if vals.shape[0] != len(images):
        raise ValueError(f"maxima cover {vals.shape[0]} images, images has {len(images)}")
    F = vals.shape[1]
    features = np.arange(F) if features is None else np.atleast_1d(np.asarray(features))
    if features.size == 0 or features.min() < 0 or features.max() >= F:
        raise ValueError(f"features must be in 0..{F - 1} for layer {layer!r}")
    if not 1 <= k <= len(images):
        raise ValueError(f"k must be in 1..{len(images)}, got {k}")
    order = np.argsort(-vals[:, features], axis=0, kind="stable")[:k].T        # (F', k)
    img_idx = order
    pos = poss[order, features[:, None]]                                        # (F', k, 2)
    val = vals[order, features[:, None]]
    uniq, inv = np.unique(img_idx, return_inverse=True)
    net.forward(images[uniq], upto=layer)
    feats = np.repeat(features, k)
    proj = net.project_batch(layer, feats, images=inv.reshape(-1), positions=pos.reshape(-1, 2), rule=rule)
    proj = proj.reshape((len(features), k) + proj.shape[1:])
    rf = net.receptive_field(layer)                      # once: every box below comes from it
    H, W = images.shape[2:]
    boxes = _boxes(rf, pos, H, W)
    patches = _patches(images, img_idx, pos, rf)
    return TopK(layer, features, img_idx, pos, val, proj, boxes, patches)


def _patches(images, img_idx, pos, rf):
    """Cut the receptive field of each (image, position) out of ``images``, zero-padded at borders."""
    C, H, W = images.shape[1:]
    out = np.zeros(img_idx.shape + (C,) + tuple(rf.size), images.dtype)
    for idx in np.ndindex(img_idx.shape):
        top, left, _, _ = rf.box(*pos[idx])
        t0, l0, b, r = rf.box(*pos[idx], clip=(H, W))
        out[idx][:, t0 - top:b + 1 - top, l0 - left:r + 1 - left] = images[img_idx[idx], :, t0:b + 1, l0:r + 1]
    return out


def _boxes(rf, pos, H, W):
    """(F, k, 4) input boxes (top, left, bottom, right) of the units at ``pos`` (F, k, 2), clipped to
    an H x W image."""
    return np.array([[rf.box(r, c, clip=(H, W)) for r, c in row] for row in pos],
                    dtype=np.int64).reshape(pos.shape[:2] + (4,))


# --- occlusion sensitivity (the paper's Fig. 7) -------------------------------------------------------
@dataclass
class Occlusion:
    """A ``size`` x ``size`` occluder with its top-left corner at each grid position (rows, cols):
    ``prob`` (R, Q) probability of ``target``; ``predicted`` (R, Q) the most probable class;
    ``feature_activity`` (R, Q) total activation of ``feature`` in ``layer`` (the paper's panel (b)),
    or None."""
    size: int
    rows: np.ndarray
    cols: np.ndarray
    prob: np.ndarray
    predicted: np.ndarray
    feature_activity: np.ndarray | None
    layer: str | None
    feature: int | None


def occlude(image, size: int, stride: int, fill: float = 0.0):
    """All copies of ``image`` (C, H, W) with a ``size`` x ``size`` square set to ``fill``, the square's
    top-left corner on a grid of step ``stride`` (covering the image, last square flush with the
    border). Returns (stack (R*Q, C, H, W), row starts (R,), col starts (Q,))."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    C, H, W = image.shape
    if not (1 <= size <= min(H, W)) or stride < 1:
        raise ValueError(f"occluder size must be in 1..{min(H, W)} and stride >= 1 (got {size}, {stride})")
    rows = np.unique(np.r_[np.arange(0, H - size + 1, stride), H - size])
    cols = np.unique(np.r_[np.arange(0, W - size + 1, stride), W - size])
    stack = np.repeat(image[None], len(rows) * len(cols), axis=0)
    for n, (r, c) in enumerate((r, c) for r in rows for c in cols):
        stack[n, :, r:r + size, c:c + size] = fill
    return stack, rows, cols


def occlusion(net, image, target: int, size: int = 6, stride: int = 2, fill: float = 0.0,
              layer: str | None = None, feature: int | None = None, batch_size: int = 256) -> Occlusion:
    """Slide a grey square over ``image`` (C, H, W) and record the classifier's probability of
    ``target``, its most probable class, and (if ``layer``/``feature`` are given) the total activation
    of that feature map, as functions of the square's position."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    target = check_index(target, num_classes(net, image.shape), "target class")
    if layer is not None or feature is not None:
        if layer is None or feature is None:
            raise ArgumentError("occlusion: give both layer and feature, or neither")
        feature = check_feature(net, check_layer(net, layer), feature, image.shape)
    check_count(size, "occluder size", 1, min(image.shape[1:]))
    check_count(stride, "occluder stride", 1)
    stack, rows, cols = occlude(image, size, stride, fill)
    probs, acts = [], []
    for i in range(0, len(stack), batch_size):
        probs.append(ops.softmax(net.forward(stack[i:i + batch_size])))
        if layer is not None:
            a = net.activations(layer)
            acts.append(a[:, feature].reshape(len(a), -1).sum(axis=1))
    probs = np.concatenate(probs)
    shape = (len(rows), len(cols))
    return Occlusion(size, rows, cols, probs[:, target].reshape(shape), probs.argmax(1).reshape(shape),
                     np.concatenate(acts).reshape(shape) if layer is not None else None, layer, feature)


# --- feature evolution during training (the paper's Fig. 4) -------------------------------------------
def feature_evolution(nets, images, layer: str, features, batch_size: int = 500):
    """For each network in ``nets`` (e.g. training checkpoints) and each feature: the strongest
    activation of that feature over ``images`` and its projection. Returns (projections
    (len(nets), F, C, H, W), values (len(nets), F), image indices (len(nets), F))."""
    features = np.atleast_1d(np.asarray(features))
    projs, vals, idxs = [], [], []
    for net in nets:
        t = top_k(net, images, layer, k=1, features=features, batch_size=batch_size)
        projs.append(t.projections[:, 0])
        vals.append(t.values[:, 0])
        idxs.append(t.images[:, 0])
    return np.stack(projs), np.stack(vals), np.stack(idxs)


def weight_settling(nets, layers, threshold: float = 0.9):
    """How early each layer's filters reach their final direction: for networks ``nets`` in training order
    (the last one final), the cosine similarity of each layer's flattened weights with the last network's.
    Returns (dict layer -> (len(nets),) cosines, dict layer -> index of the first network whose cosine is
    >= ``threshold``)."""
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
