"""Top-k activations across a dataset (the paper's Fig. 2).

numpy only. Axis letters: N images, C channels, H W height and width, F features, K items.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zfcore.analysis import parallel
from zfcore._argcheck import check_count, check_layer
from zfcore.errors import ArgumentError


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
    (``zfcore.analysis.parallel``; None: every core)."""
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
    rec = net.forward(images[uniq], upto=layer)
    feats = np.repeat(features, k)
    proj = rec.project_batch(layer, feats, images=inv.reshape(-1), positions=pos.reshape(-1, 2), rule=rule)
    proj = proj.reshape((len(features), k) + proj.shape[1:])
    rf = rec.receptive_field(layer)                      # once: every box below comes from it
    H, W = images.shape[2:]
    boxes = rf.boxes(pos, clip=(H, W))
    patches = rf.patches(images, img_idx, pos)
    return TopK(layer, features, img_idx, pos, val, proj, boxes, patches)
