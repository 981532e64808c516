"""The paper's remaining studies on a zfcore network: Fig. 1 drawn from real numbers (every stage of the
deconvnet), Fig. 5 (invariance to translation, scale and rotation), the measures behind Fig. 6 (the
spectra of first-layer filters, dead filters, aliasing under one-pixel shifts), Table 1 (correspondence
of parts across images, with a randomisation test), the statistics of Table 3's layer ablation
(Wilson intervals, McNemar's test) and occlusion of single units.

numpy only. The forward passes are ``Network.forward`` records (``Network.infer`` where no walk down
follows) and the walks down are ``Record.backward``, the one deconvnet walk of ``zfcore.core``, so every
layer kind the core supports is supported here.

Axis letters: N images, C channels, H W height and width, F features, A transform amounts, K masks per
image, S shifts.
"""
from __future__ import annotations

import math

import numpy as np

from zfcore.analysis import intervals
from zfcore.core import ops
from zfcore.errors import ArgumentError, check_index


# --- Fig. 1: every stage of the deconvnet ---------------------------------------------------------------
OPS = {"conv": "deconv", "relu": "unrelu", "maxpool": "unpool", "flatten": "unflatten", "linear": "linear^T",
       "lrn": "lrn (identity)", "adaptive_avgpool": "unpool (average)"}


def deconv_stages(net, image, layer: str, feature: int, position=None, rule: str = "deconvnet"):
    """Follow one activation of ``layer`` down to pixels, keeping every intermediate map (Fig. 1).

    image (C, H, W). ``position`` (row, col) in the layer's map; default: the map's strongest. The
    activation starts from its own value (as ``Record.project``). Returns (record, backward): the
    ``Record`` of the forward pass (inputs, outputs, switches; batch axis of 1) and a list of (layer
    name, operation, map (C, H, W)) from ``layer`` down, one per inverse that changes the signal:
    "unpool" (at the recorded switches), "unrelu", "deconv" (transposed filters, no bias),
    "unflatten" / "linear^T" for fc layers (dropout, the identity, is left out). The last map is
    the projection."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ArgumentError(f"image must be (C, H, W), got shape {image.shape}")
    rec = net.forward(image[None], upto=layer)
    act = rec[layer][0]
    feature = check_index(feature, act.shape[0], f"feature of layer {layer!r}")
    r = np.zeros_like(rec[layer])
    if act.ndim == 1:
        r[0, feature] = act[feature]
    else:
        pos = rec.strongest(layer, feature) if position is None else tuple(int(v) for v in position)
        rec.input_box(layer, pos)                           # checks the position
        r[(0, feature) + tuple(pos)] = act[feature][tuple(pos)]
    _, stages = rec.backward(r, layer, rule=rule, stages=True)
    return rec, [(name, OPS[kind], m[0]) for name, kind, m in stages if kind in OPS]


def project_units(net, images, layer: str, units, rule: str = "deconvnet", value=1.0):
    """Project unit ``units[n]`` of a fully connected ``layer`` for image n of images (N, C, H, W), all
    in one batched walk -> (N, C, H, W). Each unit starts from ``value`` (default 1: the rule alone
    decides the picture, whatever the sign of the unit's activation) or, with ``value=None``, from its
    own activation. To project K units of one image, repeat the image K times."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ArgumentError(f"images must be (N, C, H, W), got shape {images.shape}")
    rec = net.forward(images, upto=layer)
    act = rec[layer]
    if act.ndim != 2:
        raise ArgumentError(f"layer {layer!r} is spatial; project_units is for fully connected layers")
    units = np.broadcast_to(np.asarray(units), (len(act),))
    if units.min() < 0 or units.max() >= act.shape[1]:
        raise ArgumentError(f"units must be in 0..{act.shape[1] - 1}")
    n = np.arange(len(act))
    r = np.zeros_like(act)
    r[n, units] = act[n, units] if value is None else value
    return rec.backward(r, layer, rule=rule)


# --- Fig. 5: invariance ---------------------------------------------------------------------------------
def affine(image, matrix, offset=(0.0, 0.0), fill: float = 0.0):
    """Resample ``image`` (C, H, W): output pixel (i, j) takes the bilinear value of the input at
    ``matrix @ (i - c, j - c) + c + offset`` (c the image centre); outside the image: ``fill``."""
    image = np.asarray(image, dtype=np.float64)
    C, H, W = image.shape
    ci, cj = (H - 1) / 2, (W - 1) / 2
    ii, jj = np.meshgrid(np.arange(H) - ci, np.arange(W) - cj, indexing="ij")
    m = np.asarray(matrix, dtype=np.float64)
    si = m[0, 0] * ii + m[0, 1] * jj + ci + offset[0]
    sj = m[1, 0] * ii + m[1, 1] * jj + cj + offset[1]
    i0, j0 = np.floor(si).astype(int), np.floor(sj).astype(int)
    fi, fj = si - i0, sj - j0
    pad = np.pad(image, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    out = np.zeros_like(image)
    for di, wi in ((0, 1 - fi), (1, fi)):
        for dj, wj in ((0, 1 - fj), (1, fj)):
            a, b = i0 + di, j0 + dj
            inside = (a >= -1) & (a <= H) & (b >= -1) & (b <= W)
            v = pad[:, np.clip(a + 1, 0, H + 1), np.clip(b + 1, 0, W + 1)]
            out += np.where(inside, v, fill) * (wi * wj)
    return out.astype(np.float32)


def transform(image, kind: str, amount: float, fill: float = 0.0):
    """``image`` (C, H, W) translated (``amount`` pixels, to the right), scaled (factor about the
    centre) or rotated (degrees, anticlockwise, about the centre): one row of the paper's Fig. 5."""
    if kind == "translate":
        return affine(image, np.eye(2), offset=(0.0, -float(amount)), fill=fill)
    if kind == "scale":
        if amount <= 0:
            raise ArgumentError(f"scale factor must be positive, got {amount}")
        return affine(image, np.eye(2) / amount, fill=fill)
    if kind == "rotate":
        t = np.deg2rad(amount)
        return affine(image, [[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]], fill=fill)
    raise ArgumentError(f"kind must be 'translate', 'scale' or 'rotate', not {kind!r}")


def invariance(net, images, labels, kind: str, amounts, layers=("relu1", "relu6")):
    """The paper's Fig. 5 for one transformation. images (N, C, H, W), labels (N,), amounts (A,).
    Returns dict: ``distance[layer]`` (N, A) Euclidean distance between the feature vectors of the
    original and the transformed image, divided by the original's norm; ``prob`` (N, A) softmax
    probability of the true label; ``images`` (N, A, C, H, W) the transformed images."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or len(images) != len(labels):
        raise ArgumentError(f"images (N, C, H, W) and labels (N,) must match, got {images.shape}, {labels.shape}")
    for name in layers:
        net.index(name)
    amounts = np.asarray(amounts, dtype=float)
    stack = np.stack([[transform(im, kind, a) for a in amounts] for im in images])   # (N, A, C, H, W)
    flat = np.concatenate([images, stack.reshape((-1,) + images.shape[1:])])
    rec = net.forward(flat)
    logits = rec.output
    N, A = len(images), len(amounts)
    out = dict(images=stack, distance={})
    for name in layers:
        f = rec[name].reshape(len(flat), -1).astype(np.float64)
        ref, tr = f[:N], f[N:].reshape(N, A, -1)
        out["distance"][name] = (np.linalg.norm(tr - ref[:, None], axis=2)
                                 / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)[:, None])
    prob = ops.softmax(logits[N:].astype(np.float64)).reshape(N, A, -1)
    out["prob"] = prob[np.arange(N), :, labels]
    return out


# --- occlusion of single units ---------------------------------------------------------------------------
def occluded_activations(net, image, layer: str, size: int, stride: int, fill: float = 0.0):
    """The whole output of ``layer`` for every position of a ``size`` x ``size`` occluder (filled with
    ``fill``) on ``image`` (C, H, W). Returns (acts (R, Q, ...), reference output (...), rows, cols)."""
    from zfcore.analysis.sensitivity import occlude

    stack, rows, cols = occlude(image, size, stride, fill)
    out = np.concatenate([net.forward(stack[i:i + 256], upto=layer).output for i in range(0, len(stack), 256)])
    ref = net.forward(np.asarray(image, net.dtype)[None], upto=layer).output[0]
    return out.reshape((len(rows), len(cols)) + out.shape[1:]), ref, rows, cols


# --- Table 1: correspondence ------------------------------------------------------------------------------
def bounding_box(image, threshold: float = 0.05):
    """(top, left, bottom, right), inclusive, of the pixels of ``image`` (C, H, W) above ``threshold``
    (the garment on Fashion-MNIST's black background)."""
    m = np.asarray(image).max(axis=0) > threshold
    if not m.any():
        raise ArgumentError("image has no pixel above the threshold: no object to mask")
    r, c = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return int(r[0]), int(c[0]), int(r[-1]), int(c[-1])


PARTS = {  # fractions of the object's bounding box: (top, bottom, left, right), bottom/right exclusive
    "collar": (0.0, 0.25, 0.3, 0.7),      # tops: the neckline, the top quarter of the middle columns
    "left sleeve": (0.2, 0.8, 0.0, 0.2),  # tops: the outer fifth on the image's left
    "sole": (0.7, 1.0, 0.0, 1.0),         # footwear: the lowest 30% of the shoe
    "heel": (0.4, 1.0, 0.7, 1.0),         # footwear (toes point left in Fashion-MNIST): the back end
    "handle": (0.0, 0.3, 0.0, 1.0),       # bags: the top 30%, where the handle rises above the body
}


def part_mask(image, part, threshold: float = 0.05):
    """Boolean (H, W) mask of a part of the object in ``image`` (C, H, W): the rectangle ``part`` gives
    in fractions of the object's own bounding box (a key of ``PARTS`` or a (top, bottom, left, right)
    tuple). Derived from each image's geometry, so the same rule marks the part in every image."""
    frac = PARTS[part] if isinstance(part, str) else tuple(part)
    if len(frac) != 4 or not all(0 <= f <= 1 for f in frac) or frac[0] >= frac[1] or frac[2] >= frac[3]:
        raise ArgumentError(f"part {part!r}: need fractions 0 <= top < bottom <= 1, 0 <= left < right <= 1")
    t, l, b, r = bounding_box(image, threshold)
    h, w = b - t + 1, r - l + 1
    rows = slice(t + int(np.floor(frac[0] * h)), t + max(int(np.ceil(frac[1] * h)), int(np.floor(frac[0] * h)) + 1))
    cols = slice(l + int(np.floor(frac[2] * w)), l + max(int(np.ceil(frac[3] * w)), int(np.floor(frac[2] * w)) + 1))
    mask = np.zeros(np.asarray(image).shape[1:], bool)
    mask[rows, cols] = True
    return mask


def random_mask_like(image, mask, rng, threshold: float = 0.05):
    """A rectangle of the same height and width as ``mask``'s, at a random place inside the object's
    bounding box (the paper's random-region control)."""
    rr, cc = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = rr[-1] - rr[0] + 1, cc[-1] - cc[0] + 1
    t, l, b, r = bounding_box(image, threshold)
    top = rng.integers(t, max(b - h + 1, t) + 1)
    left = rng.integers(l, max(r - w + 1, l) + 1)
    out = np.zeros_like(mask)
    out[top:top + h, left:left + w] = True
    return out


def placed_like(image, mask, u: float, v: float, threshold: float = 0.05):
    """A rectangle of the same height and width as ``mask``'s at the fractions (u, v) in [0, 1] of the
    room it has inside the object's bounding box (0: top or left edge, 1: bottom or right edge): the
    same relative place in every image, where ``random_mask_like`` draws a new one for each."""
    if not (0 <= u <= 1 and 0 <= v <= 1):
        raise ArgumentError(f"u and v must lie in [0, 1], got {u}, {v}")
    rr, cc = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = rr[-1] - rr[0] + 1, cc[-1] - cc[0] + 1
    t, l, b, r = bounding_box(image, threshold)
    top, left = t + int(round(u * max(b - h + 1 - t, 0))), l + int(round(v * max(r - w + 1 - l, 0)))
    out = np.zeros_like(mask)
    out[top:top + h, left:left + w] = True
    return out


def sign_hamming(changes):
    """The paper's consistency measure. changes (N, D): per image, the change of a feature vector when
    a part is masked. Returns (pairwise normalised Hamming distances of their signs (N*(N-1)/2,)): for
    each pair i < j, the fraction of the D components whose signs (-1, 0, +1) differ. Table 1's Δ is
    their sum; the paper reports it normalised, i.e. the mean, with its standard deviation."""
    s = np.sign(np.asarray(changes, dtype=np.float64))
    if s.ndim != 2 or len(s) < 2:
        raise ArgumentError(f"changes must be (N >= 2, D), got shape {s.shape}")
    i, j = np.triu_indices(len(s), k=1)
    return (s[i] != s[j]).mean(axis=1)


def correspondence(net, images, masks, layers=("pool5", "relu6"), fill: float = 0.0):
    """Δ for one set of masks: images (N, C, H, W), masks (N, H, W) boolean. Each image's feature
    vector at each layer is compared before and after filling its mask with ``fill``. Returns dict
    layer -> pairwise normalised Hamming distances (N*(N-1)/2,) (mean = Table 1's Δ)."""
    images, masks = np.asarray(images), np.asarray(masks, bool)
    if masks.shape != (images.shape[0],) + images.shape[2:]:
        raise ArgumentError(f"masks must be (N, H, W) = {(images.shape[0],) + images.shape[2:]}, got {masks.shape}")
    masked = np.where(masks[:, None], np.float32(fill), images).astype(net.dtype)
    deepest = max(layers, key=net.index)
    a = net.forward(images.astype(net.dtype), upto=deepest)
    b = net.forward(masked, upto=deepest)
    N = len(images)
    return {name: sign_hamming(a[name].reshape(N, -1) - b[name].reshape(N, -1)) for name in layers}


# --- Fig. 2 legible at every layer -------------------------------------------------------------------------
def crop_boxes(maps, corners, size):
    """Cut each map (K, C, H, W) to a ``size`` = (h, w) window whose top-left corner is ``corners[k]``
    = (top, left), which may lie outside the map (a receptive field hanging over the border: its corner
    is ``offset + position * jump`` of ``Network.receptive_field``); parts outside the map are zero, as
    for the image patches of ``analysis.top_k``. Returns (K, C, h, w)."""
    maps, corners = np.asarray(maps), np.asarray(corners).reshape(-1, 2)
    if maps.ndim != 4 or len(maps) != len(corners):
        raise ArgumentError(f"maps (K, C, H, W) and corners (K, 2) must match, got {maps.shape}, {corners.shape}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ArgumentError(f"size must be positive, got {size}")
    K, C, H, W = maps.shape
    out = np.zeros((K, C, h, w), maps.dtype)
    for k, (t, l) in enumerate(corners):
        t0, l0, t1, l1 = max(t, 0), max(l, 0), min(t + h, H), min(l + w, W)
        if t0 < t1 and l0 < l1:
            out[k, :, t0 - t:t1 - t, l0 - l:l1 - l] = maps[k, :, t0:t1, l0:l1]
    return out


# --- Fig. 6: the first layer's spectra, dead filters, aliasing ---------------------------------------------
def filter_power(filters, size: int = 32):
    """Power spectra of ``filters`` (F, C, k, k), zero-padded to ``size`` x ``size`` and summed over the
    input channels. Returns (power (F, size, size), fy, fx): fy, fx (size, size) the frequencies of
    the bins in cycles per input pixel (``np.fft.fftfreq``, -1/2 .. 1/2)."""
    w = np.asarray(filters, dtype=np.float64)
    if w.ndim != 4 or max(w.shape[2:]) > size:
        raise ArgumentError(f"filters must be (F, C, k, k) with k <= size={size}, got {w.shape}")
    power = (np.abs(np.fft.fft2(w, s=(size, size))) ** 2).sum(axis=1)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    return power, fy, fx


def band_shares(filters, edges=(0.125, 0.25), size: int = 32):
    """Share of each filter's power in the radial frequency bands [0, e1), [e1, e2), ..., [e_last, ...)
    of ``filter_power`` (cycles per pixel, radius sqrt(fy^2 + fx^2)). Returns (F, len(edges) + 1), rows
    summing to 1. White noise puts in each band its share of the size x size bins (``band_shares`` of
    an impulse)."""
    power, fy, fx = filter_power(filters, size)
    band = np.searchsorted(np.asarray(edges, dtype=float), np.hypot(fy, fx), side="right")
    tot = np.maximum(power.sum(axis=(1, 2)), 1e-300)
    return np.stack([power[:, band == b].sum(axis=1) / tot for b in range(len(edges) + 1)], axis=1)


def spectral_centroid(filters, size: int = 32):
    """Each filter's power-weighted mean radial frequency (cycles per pixel) of ``filter_power``. (F,)"""
    power, fy, fx = filter_power(filters, size)
    return (power * np.hypot(fy, fx)).sum(axis=(1, 2)) / np.maximum(power.sum(axis=(1, 2)), 1e-300)


def above_nyquist(filters, stride: int, size: int = 32):
    """Share of each filter's power at frequencies a grid of step ``stride`` cannot represent:
    max(|fy|, |fx|) > 1 / (2 stride) cycles per pixel. Sampled at that stride, this power aliases
    into lower frequencies. (F,); 0 for stride 1."""
    power, fy, fx = filter_power(filters, size)
    high = np.maximum(np.abs(fy), np.abs(fx)) > 1 / (2 * int(stride)) + 1e-12
    return power[:, high].sum(axis=1) / np.maximum(power.sum(axis=(1, 2)), 1e-300)


def shift(images, dy: int, dx: int):
    """``images`` (..., H, W) moved by ``dy`` rows down and ``dx`` columns right; vacated pixels 0."""
    x = np.asarray(images)
    out = np.zeros_like(x)
    H, W = x.shape[-2:]
    dst = (Ellipsis, slice(max(dy, 0), H + min(dy, 0)), slice(max(dx, 0), W + min(dx, 0)))
    out[dst] = x[(Ellipsis, slice(max(-dy, 0), H + min(-dy, 0)), slice(max(-dx, 0), W + min(-dx, 0)))]
    return out


def shifted_maxima(net, images, layers, shifts=((0, 1), (1, 0))):
    """Each feature map's maximum for ``images`` (N, C, H, W) and for their copies moved by each of
    ``shifts`` (``shift``), in one pass. Returns dict layer -> (1 + S, N, F): row 0 the originals."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ArgumentError(f"images must be (N, C, H, W), got shape {images.shape}")
    layers = [layers] if isinstance(layers, str) else list(layers)
    batch = np.concatenate([images] + [shift(images, dy, dx) for dy, dx in shifts]).astype(net.dtype)
    _, kept = net.infer(batch, upto=max(layers, key=net.index), keep=layers)
    out = {}
    for name in layers:
        if kept[name].ndim != 4:
            raise ArgumentError(f"layer {name!r} is not spatial")
        out[name] = kept[name].max(axis=(2, 3)).astype(np.float64).reshape(1 + len(shifts), len(images), -1)
    return out


def shift_change(maxima):
    """Per image, the change of its vector of map maxima under the shifts, relative to the original's:
    sum_f |m_s - m_0| / sum_f m_0, averaged over the shifts. maxima (1 + S, N, F) from
    ``shifted_maxima``. (N,). A map that moved with the image keeps its maximum: 0."""
    m = np.asarray(maxima, dtype=np.float64)
    if m.ndim != 3 or len(m) < 2:
        raise ArgumentError(f"maxima must be (1 + S >= 2, N, F), got shape {m.shape}")
    return (np.abs(m[1:] - m[0]).sum(axis=2) / np.maximum(m[0].sum(axis=1), 1e-300)).mean(axis=0)


# --- intervals and tests -------------------------------------------------------------------------------------
def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, rng=None, stat=np.mean):
    """Percentile bootstrap interval (lo, hi) of ``stat`` of ``values`` (N,), resampling the N items
    (``intervals.bootstrap``, seeded 0 unless ``rng`` is given)."""
    return intervals.bootstrap(values, stat, n_boot, level, 0 if rng is None else rng)[1:]


def wilson(k: int, n: int, z: float = intervals.Z975):
    """Wilson score interval (lo, hi) of a proportion of ``k`` successes in ``n`` trials (95% by
    default; ``intervals.wilson`` without the share)."""
    return intervals.wilson(k, n, z)[1:]


def mcnemar(a, b):
    """Exact McNemar test of two classifiers' correctness on the same items: a, b (N,) boolean. Returns
    (only a right, only b right, two-sided p): twice the binomial(n, 1/2) tail of the smaller count
    of discordant items (n of them), at most 1."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ArgumentError(f"a and b must be (N,) of one length, got {a.shape}, {b.shape}")
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    n = n10 + n01
    tail = sum(math.comb(n, i) for i in range(min(n10, n01) + 1))
    return n10, n01, min(1.0, 2 * tail / 2 ** n)


def holm(pvalues, alpha: float = 0.05):
    """Holm's step-down correction: which of ``pvalues`` (any shape) are rejected at family-wise
    level ``alpha``. Boolean array of the same shape."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p.ravel(), kind="stable")
    m = p.size
    passed = p.ravel()[order] <= alpha / (m - np.arange(m))
    k = m if passed.all() else int(np.argmin(passed))        # the first failure stops the procedure
    out = np.zeros(m, bool)
    out[order[:k]] = True
    return out.reshape(p.shape)


# --- Table 1: the randomisation test ------------------------------------------------------------------------
def mask_signs(net, images, masks, layers=("pool5", "relu6"), fill: float = 0.0, tol: float = 1e-5):
    """Signs of the feature changes for K masks per image: images (N, C, H, W), masks (N, K, H, W)
    boolean. Returns dict layer -> (N, K, D) int8: sign(x_i - x_i with mask k filled with ``fill``),
    the vectors whose Hamming distances ``correspondence`` averages, from one batched inference pass.
    A change within ``tol`` times the image's largest |x_i| at that layer counts as none (sign 0): the
    pass computes an image and its masked copies at different places in one batch, and a GEMM may
    round the same value differently there."""
    images, masks = np.asarray(images), np.asarray(masks, bool)
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[0] != len(images) or masks.shape[2:] != images.shape[2:]:
        raise ArgumentError(f"masks must be (N, K, H, W) for images {images.shape}, got {masks.shape}")
    N, K = masks.shape[:2]
    masked = np.where(masks[:, :, None], np.float32(fill), images[:, None]).reshape((N * K,) + images.shape[1:])
    batch = np.concatenate([images, masked]).astype(net.dtype)
    _, kept = net.infer(batch, upto=max(layers, key=net.index), keep=list(layers))
    out = {}
    for name in layers:
        f = kept[name].reshape(len(batch), -1)
        d = f[:N, None] - f[N:].reshape(N, K, -1)
        small = np.abs(d) <= tol * np.abs(f[:N]).max(axis=1)[:, None, None]
        out[name] = np.where(small, 0, np.sign(d)).astype(np.int8)
    return out


def pair_hamming(signs):
    """Normalised Hamming distances between all sign vectors: signs (N, K, D) in {-1, 0, 1}. Returns
    (N, K, N, K): entry [i, a, j, b] is the fraction of the D components where image i under mask a
    and image j under mask b differ in sign (``sign_hamming`` of the two rows)."""
    s = np.asarray(signs)
    N, K, D = s.shape
    flat = s.reshape(N * K, D)
    same = sum((flat == v).astype(np.float32) @ (flat == v).astype(np.float32).T for v in (-1, 0, 1))
    return (1.0 - same.astype(np.float64) / D).reshape(N, K, N, K)


def randomisation_test(hamming, draws: int = 2000, rng=None):
    """Is the part's Δ lower than random regions'? hamming (N, K, N, K) from ``pair_hamming``, mask 0
    of each image the part and masks 1..K-1 random regions of its size. Δ of a configuration (one mask
    per image) is the mean over the pairs i < j of hamming[i, c_i, j, c_j]. Returns dict: ``part`` Δ
    of the parts; ``random`` (draws,) Δ of configurations of random regions only; ``null`` (draws,) Δ
    of configurations that take each image's mask uniformly from all K (the part included: under the
    hypothesis that the part is one more random region, this is the test's exact null distribution);
    ``p`` the one-sided p-value (1 + #{null <= part}) / (1 + draws)."""
    h = np.asarray(hamming, dtype=np.float64)
    N, K = h.shape[:2]
    if h.shape != (N, K, N, K) or K < 2 or N < 2:
        raise ArgumentError(f"hamming must be (N >= 2, K >= 2, N, K), got shape {h.shape}")
    rng = np.random.default_rng(0) if rng is None else rng
    i, j = np.triu_indices(N, k=1)

    def delta(c):                                   # c (M, N) mask choices -> Δ (M,)
        return h[i, c[:, i], j, c[:, j]].mean(axis=1)

    part = float(delta(np.zeros((1, N), int))[0])
    null = delta(rng.integers(0, K, size=(draws, N)))
    random = delta(rng.integers(1, K, size=(draws, N)))
    return dict(part=part, random=random, null=null, p=(1 + int((null <= part).sum())) / (1 + draws))


# --- Table 3: the ablations' predictions on the whole test split ---------------------------------------------
PREDICTIONS = "ablation_predictions.npz"


def _sha256(path) -> str:
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def write_ablation_predictions(out=None, batch_size: int = 500) -> dict:
    """The class zfcore (numpy) predicts for every test image with each shipped ablation
    (``zfcore.torch.variants.ABLATIONS``), written to ``out`` (default: the variants' asset folder,
    ``ablation_predictions.npz``): one int8 array (N,) per name and the SHA-256 of the weights file
    it came from (``sha256_<name>``). Inference over the whole split takes minutes, too long for a
    notebook; ``read_ablation_predictions`` refuses predictions of other weights. Returns them."""
    from zfcore import data
    from zfcore.analysis.classify import predict
    from zfcore.torch import variants

    images, _ = data.load_dataset("test")
    arrays = {}
    for name in variants.ABLATIONS:
        net, _ = variants.load_variant(name)
        arrays[name] = predict(net, images, batch_size=batch_size).argmax(axis=1).astype(np.int8)
        arrays[f"sha256_{name}"] = np.array(_sha256(variants.ASSETS / f"{name}.npz"))
    np.savez_compressed(variants.ASSETS / PREDICTIONS if out is None else out, **arrays)
    return {name: arrays[name] for name in variants.ABLATIONS}


def read_ablation_predictions(path=None) -> dict:
    """name -> (N,) int8 predicted classes of ``write_ablation_predictions``, checked against the
    shipped weights' SHA-256 (ValueError naming the stale ones: rerun ``write_ablation_predictions``)."""
    from zfcore.torch import variants

    path = variants.ASSETS / PREDICTIONS if path is None else path
    with np.load(path, allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    stale = [n for n in variants.ABLATIONS
             if str(got.get(f"sha256_{n}", "")) != _sha256(variants.ASSETS / f"{n}.npz") or n not in got]
    if stale:
        raise ArgumentError(f"{path}: predictions of other weights for {', '.join(stale)}; rerun "
                            "zfcore.analysis.studies.write_ablation_predictions()")
    return {n: got[n] for n in variants.ABLATIONS}
