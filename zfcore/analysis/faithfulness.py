"""Whether a pixel ranking is faithful to the network: deletion and insertion curves (Petsiuk et al.
2018), occlusion sensitivity of many images in one batch, the distance between a projection's peak and
the occluder's most damaging square (its intervals: ``analysis.intervals``, re-exported here).

A ranking orders an image's pixels, most important first. Deletion sets the pixels to a baseline in that
order, a fixed number at a time, and records the probability of the target class after each step;
insertion starts from the baseline and puts the image's pixels back in the same order. A ranking that
finds the pixels the decision rests on makes the deletion curve fall early (small area under it) and the
insertion curve rise early (large area). Every step of every image and ranking runs in a few large
batches (``analysis.predict``). numpy only. Axis letters: N images, C H W an image, P pixels (H * W),
M rankings, S steps, R Q the occluder's grid, B bootstrap resamples.
"""
from __future__ import annotations

import numpy as np

from zfcore.analysis import parallel
from zfcore.analysis.classify import predict
from zfcore.analysis.intervals import bootstrap, wilson  # noqa: F401  (the chapter's intervals, re-exported)
from zfcore.analysis.sensitivity import check_fill, occlusion_grid
from zfcore.core import ops
from zfcore.core import layers as L
from zfcore.core.layers import RULES
from zfcore.errors import ArgumentError, check_count


def _images_targets(images, targets):
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ArgumentError(f"images must be a non-empty (N, C, H, W) array, got shape {images.shape}")
    targets = np.broadcast_to(np.asarray(targets, dtype=np.intp), (len(images),))
    return images, targets


def probabilities(net, images, targets, batch_size: int = 500, threads=None):
    """(N,) softmax probability of class ``targets[n]`` for image n of images (N, C, H, W)."""
    images, targets = _images_targets(images, targets)
    p = ops.softmax(predict(net, images, batch_size, threads).astype(np.float64))
    if targets.min() < 0 or targets.max() >= p.shape[1]:
        raise ArgumentError(f"targets must be in 0..{p.shape[1] - 1}")
    return p[np.arange(len(images)), targets]


# --- rankings -------------------------------------------------------------------------------------------
def class_projections(net, images, targets, rules=RULES, layer: str = "fc7", threads=None):
    """{rule: (N, C, H, W)}: output unit ``targets[n]`` of the fully connected ``layer`` projected to the
    pixels of image n, seeded with 1, by each rule; one forward pass serves every rule (the same values
    as ``studies.project_units`` one rule at a time). The images are split over ``threads`` threads
    (``analysis.parallel``; None: every core)."""
    images, targets = _images_targets(images, targets)
    rules = [L.check_rule(r) for r in rules]
    i = net.index(layer)
    shape = net.layers[i].output_shape(net.shapes(images.shape[1:])[i])
    if len(shape) != 1:
        raise ArgumentError(f"layer {layer!r} is spatial; class_projections is for fully connected layers")
    if targets.min() < 0 or targets.max() >= shape[0]:
        raise ArgumentError(f"targets must be in 0..{shape[0] - 1}")

    def part(lo, hi):
        rec = net.forward(images[lo:hi], upto=layer)
        act = rec[layer]
        seed = np.zeros_like(act)
        seed[np.arange(len(act)), targets[lo:hi]] = 1.0
        return [rec.backward(seed, layer, rule=rule) for rule in rules]

    parts = parallel.map_parts(part, len(images), parallel.resolve(threads))
    return {rule: np.concatenate([p[k] for p in parts]) for k, rule in enumerate(rules)}


def pixel_order(scores, seed: int = 0):
    """(N, P) pixel indices (row-major) of scores (N, H, W) or (N, C, H, W) (channels summed) per image,
    the highest score first; ties (e.g. the pixels of one occluder square) in an order drawn with
    ``seed``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (3, 4) or len(s) == 0:
        raise ArgumentError(f"scores must be (N, H, W) or (N, C, H, W), got shape {s.shape}")
    s = (s.sum(1) if s.ndim == 4 else s).reshape(len(s), -1)
    tie = np.random.default_rng(seed).random(s.shape)
    return np.lexsort((tie, -s), axis=-1)


def random_order(n: int, pixels: int, seed: int = 0):
    """(n, pixels): an independent random permutation of the pixels for each of n images."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, pixels)), axis=1)


# --- occlusion of many images ---------------------------------------------------------------------------
def square_masks(shape, size: int, stride: int):
    """(R * Q, H, W) boolean masks of a ``size`` x ``size`` square at each position of
    ``sensitivity.occlusion_grid`` (row-major), with the grid's row and column starts."""
    rows, cols = occlusion_grid(shape, size, stride)
    H, W = (int(v) for v in shape[-2:])
    r = (np.arange(H)[None, :] >= rows[:, None]) & (np.arange(H)[None, :] < rows[:, None] + size)
    c = (np.arange(W)[None, :] >= cols[:, None]) & (np.arange(W)[None, :] < cols[:, None] + size)
    return (r[:, None, :, None] & c[None, :, None, :]).reshape(-1, H, W), rows, cols


def occlusion_drops(net, images, targets, size: int, stride: int, fill: float = 0.0, chunk: int = 50):
    """(N, R * Q): how much the probability of ``targets[n]`` falls when the square at each grid position
    (``square_masks``) of image n is set to ``fill``: the probability of the image minus that of the
    occluded copy, the values of ``sensitivity.occlusion`` for all images at once. A square whose pixels
    all equal ``fill`` already changes nothing (0, without running the copy). Also returns the masks
    (R * Q, H, W)."""
    images, targets = _images_targets(images, targets)
    masks, _, _ = square_masks(images.shape, size, stride)
    fill = check_fill(fill)
    base = probabilities(net, images, targets)
    K, flat = len(masks), masks.reshape(len(masks), -1).astype(np.float64)
    out = np.repeat(base[:, None], K, axis=1)
    for i in range(0, len(images), check_count(chunk, "chunk", 1)):
        x = images[i:i + chunk]
        touch = (x != fill).any(1).reshape(len(x), -1).astype(np.float64) @ flat.T > 0   # (n, K)
        if touch.any():
            stack = np.where(masks[None, :, None], np.asarray(fill, x.dtype), x[:, None])[touch]
            t = np.broadcast_to(targets[i:i + chunk, None], touch.shape)[touch]
            out[i:i + chunk][touch] = probabilities(net, stack, t)
    return base[:, None] - out, masks


def square_pixel_scores(values, masks):
    """(N, H, W): each pixel's mean of ``values`` (N, R * Q) over the squares ``masks`` (R * Q, H, W)
    that cover it (0 where none does)."""
    m = np.asarray(masks, dtype=np.float64)
    cover = m.sum(0)
    s = np.tensordot(np.asarray(values, np.float64), m, axes=(1, 0))
    return np.divide(s, cover, out=np.zeros_like(s), where=cover > 0)


def square_sums(maps, masks):
    """(N, R * Q): the sum of each map (N, ..., H, W; leading channels summed) over each square."""
    m = np.asarray(maps, dtype=np.float64)
    m = m.reshape(len(m), -1, *m.shape[-2:]).sum(1)
    return np.tensordot(m, np.asarray(masks, np.float64), axes=((1, 2), (1, 2)))


def square_centres(masks):
    """(R * Q, 2) row and column of each square's centre, in pixels."""
    m = np.asarray(masks, dtype=np.float64)
    n = m.sum((1, 2))
    H, W = m.shape[1:]
    return np.stack([(m.sum(2) * np.arange(H)).sum(1) / n, (m.sum(1) * np.arange(W)).sum(1) / n], 1)


# --- deletion and insertion curves -----------------------------------------------------------------------
def step_counts(pixels: int, steps: int):
    """(S + 1,) pixels changed after each step: 0, then ``pixels`` split into ``steps`` near-equal steps."""
    steps = check_count(steps, "steps", 1, pixels)
    return np.rint(np.linspace(0, pixels, steps + 1)).astype(np.intp)


def step_masks(order, counts):
    """(N, len(counts), P) boolean: pixel p is among the first ``counts[s]`` of ``order[n]`` (N, P)."""
    order = np.asarray(order)
    N, P = order.shape
    rank = np.empty_like(order)
    rank[np.arange(N)[:, None], order] = np.arange(P)
    return rank[:, None, :] < np.asarray(counts)[None, :, None]


def _apply(images, masks, base, mode: str):
    """(N, S, C, H, W) from images (N, C, H, W), step masks (N, S, P) and the baseline (N, C, H, W)."""
    if mode not in ("deletion", "insertion"):
        raise ArgumentError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    N, C, H, W = images.shape
    m = masks.reshape(N, masks.shape[1], 1, H, W)
    x, b = images[:, None], base[:, None]
    return np.where(m, b, x) if mode == "deletion" else np.where(m, x, b)


def perturbed(images, order, counts, baseline=0.0, mode: str = "deletion"):
    """(N, len(counts), C, H, W): image n after each step of ``order[n]``: deletion sets the first
    ``counts[s]`` pixels (every channel) to ``baseline`` (a number or an array broadcast to images);
    insertion starts from the baseline and puts those pixels of the image back."""
    images = np.asarray(images)
    base = np.broadcast_to(np.asarray(baseline, images.dtype), images.shape)
    return _apply(images, step_masks(order, counts), base, mode)


def _inner_steps(net, x, b, t, ends, orders, mid):
    """(n, M, 2, S - 1) probabilities of the steps between the two ends (deletion, then insertion) for
    images x (n, C, H, W), baselines b, targets t, the ends' probabilities (image, baseline) (n,) each,
    and M pixel orders, in one batch. A step that has changed no pixel yet (it touched only pixels
    equal to the baseline) or has changed every one takes the probability of its start or end."""
    n, S = len(x), len(mid)
    diff = (x != b).any(1).reshape(n, 1, -1)                     # pixels a step can change
    out, todo, imgs = np.empty((n, len(orders), 2, S)), [], []
    for j, order in enumerate(orders):
        m = step_masks(order, mid)
        done, none = ~(diff & ~m).any(2), ~(diff & m).any(2)     # (n, S)
        run = ~(done | none)
        for k, mode in enumerate(("deletion", "insertion")):
            first, last = ends if mode == "deletion" else ends[::-1]
            out[:, j, k] = np.where(done, last[:, None], first[:, None])
            if run.any():
                imgs.append(_apply(x, m, b, mode)[run])
                todo.append((j, k, run))
    if imgs:
        tt = np.concatenate([np.broadcast_to(t[:, None], r.shape)[r] for _, _, r in todo])
        p, at = probabilities(net, np.concatenate(imgs), tt), 0
        for j, k, run in todo:
            view = out[:, j, k]
            view[run] = p[at:at + run.sum()]
            at += run.sum()
    return out


def curves(net, images, targets, orders, steps: int, baseline=0.0, chunk: int = 50):
    """Deletion and insertion curves of every ranking in ``orders`` ({name: (N, P) pixel orders}):
    {name: {"deletion": (N, S + 1), "insertion": (N, S + 1)}}, the probability of ``targets[n]`` after
    0, 1, .., S steps. The ends (the image, the baseline; a constant baseline once) run once; the steps
    between, of every ranking and both curves, run ``chunk`` images at a time in one batch, except
    those equal to an end (``_inner_steps``)."""
    images, targets = _images_targets(images, targets)
    N, P = len(images), int(np.prod(images.shape[2:]))
    counts = step_counts(P, steps)
    names = list(orders)
    for name in names:
        if np.shape(orders[name]) != (N, P):
            raise ArgumentError(f"orders[{name!r}] must be ({N}, {P}), got {np.shape(orders[name])}")
    base_img = np.broadcast_to(np.asarray(baseline, images.dtype), images.shape)
    p_img = probabilities(net, images, targets)
    if np.ndim(baseline) == 0:                       # one blank image serves every target
        p_base = ops.softmax(predict(net, base_img[:1]).astype(np.float64))[0, targets]
    else:
        p_base = probabilities(net, base_img, targets)
    inner = np.concatenate([
        _inner_steps(net, images[i:i + chunk], base_img[i:i + chunk], targets[i:i + chunk],
                     (p_img[i:i + chunk], p_base[i:i + chunk]), [orders[k][i:i + chunk] for k in names],
                     counts[1:-1])
        for i in range(0, N, check_count(chunk, "chunk", 1))])
    ends = {"deletion": (p_img, p_base), "insertion": (p_base, p_img)}
    return {name: {mode: np.column_stack([ends[mode][0], inner[:, j, k], ends[mode][1]])
                   for k, mode in enumerate(("deletion", "insertion"))} for j, name in enumerate(names)}


def area(curve):
    """(N,) area under each curve (N, S + 1) sampled at equal steps over [0, 1] (trapezoid rule)."""
    c = np.asarray(curve, dtype=np.float64)
    return (c[:, :-1] + c[:, 1:]).sum(1) / (2 * (c.shape[1] - 1))


# --- intervals ------------------------------------------------------------------------------------------
# --- where the projection peaks and where occlusion hurts most ------------------------------------------
def peak_distances(peaks, minima):
    """(N, N) distances in pixels between ``peaks[i]`` and ``minima[j]`` ((N, 2) rows and columns, e.g.
    the centres of ``square_centres``): the diagonal pairs each image with itself; the rest is the
    chance distribution of pairing one image's peak with another image's minimum."""
    a, b = np.asarray(peaks, np.float64), np.asarray(minima, np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or b.shape != a.shape:
        raise ArgumentError(f"peaks and minima must both be (N, 2), got {a.shape} and {b.shape}")
    return np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])


def within(dist, k: float):
    """Per image (N,): whether its own peak and minimum lie within ``k`` pixels (the diagonal of
    ``peak_distances``), and the share of the other images' minima within ``k`` of its peak (chance)."""
    d = np.asarray(dist, dtype=np.float64)
    off = ~np.eye(len(d), dtype=bool)
    hit = (d <= k)
    return np.diag(hit).astype(np.float64), (hit & off).sum(1) / max(len(d) - 1, 1)
