"""zfcore side by side with huybery/VisualizingCNN (re-created in ``zfcore.comparison.huybery``) and captum:
the measures and runs of notebook 06 and ``benchmarks/bench_compare.py``.

- measures: :func:`relative_error`, :func:`support` (share of pixels touched), :func:`duplicate_switches`;
- comparison runs on one image: :func:`agreement` (zfcore vs the re-creation vs captum, per layer),
  :func:`switch_flips` (where the two forward passes chose different switches), :func:`bias_effect`
  and :func:`bias_effect_images` (the original's random deconv biases, next to the activations'
  scale), :func:`channel_order` (BGR vs RGB input), :func:`zfcore_figure` (zfcore's version of the
  original's figure), :func:`original_agreement` (the ORIGINAL code, run from a user's clone through
  ``zfcore.comparison.original``), :func:`tied_selections` (how many positions the original's
  selection keeps);
- :func:`crop` (an image cut to a receptive-field box), :func:`panel_grid` (rows of images drawn at
  their printed size) and :func:`format_table` (rows (dicts) as Markdown text).

zfcore's side of each run is a forward ``Record`` (``rec = net.forward(x)``) and its projections.
torch and matplotlib are imported inside functions only; importing this module needs numpy alone.
The timing harness of the benchmarks lives beside them (``benchmarks/harness.py``).
"""
from __future__ import annotations

import numpy as np

from zfcore import models
from zfcore.comparison.huybery import Recreation, layer_names, minmax_uint8, prepare_input
from zfcore.errors import ArgumentError
from zfcore.torch import reference


# ------------------------------------------------------------------------------------------------
# measures

def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` (Frobenius, float64); 0 when both are zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ArgumentError(f"shapes differ: {a.shape} vs {b.shape}")
    num, den = np.linalg.norm(a - b), np.linalg.norm(b)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def support_mask(img, atol: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (H, W) bool: the pixels where any channel's magnitude exceeds ``atol``."""
    a = np.abs(np.asarray(img, dtype=np.float64))
    if a.ndim != 3:
        raise ArgumentError(f"expected a (C, H, W) array, got shape {a.shape}")
    return a.max(axis=0) > atol


def support(img, atol: float = 0.0) -> float:
    """Share of pixels a (C, H, W) projection touches (any channel nonzero, or above ``atol``)."""
    return float(support_mask(img, atol).mean())


def duplicate_switches(switches) -> int:
    """How many pooled outputs share their argmax with an earlier output of the same map: ``count -
    distinct`` of the flat switch indices per (image, channel). Zero for non-overlapping windows; with
    overlapping ones each such pair is a place where ``MaxUnpool2d`` keeps one of the values (which one
    depends on its kernel's loop order: on torch 2.14's CPU kernel neither always the first nor always
    the last in scan order) while the gradient of max-pooling (zfcore, captum) adds them."""
    s = np.asarray(switches.numpy() if hasattr(switches, "numpy") else switches)
    s = s.reshape(-1, s.shape[-2] * s.shape[-1])
    return int(sum(len(row) - len(np.unique(row)) for row in s))


# ------------------------------------------------------------------------------------------------
# the comparison runs

def zfcore_figure(net, x, layers, scale: bool = True):
    """zfcore's version of the original's figure: forward, then per layer the strongest map's strongest
    activation (first in row-major order on ties), projected (cropped path), optionally min-max uint8.
    Returns a list of (image, feature, position)."""
    record = net.forward(x)
    out = []
    for name in layers:
        f = int(record.top_features(name)[0][0])
        pos = record.strongest(name, f)
        img = record.project(name, feature=f, position=pos)
        out.append((minmax_uint8(img) if scale else img, f, pos))
    return out


def switch_flips(record, recreation) -> dict[str, int]:
    """Per pool layer, how many switches of zfcore's forward ``record`` (a ``Record``) differ from those of
    ``recreation`` (a :class:`zfcore.comparison.huybery.Recreation` after its forward).

    Both pick the first maximum of each window, so they differ only where the two forward passes round
    a window's two largest values in opposite orders (a near-tie at float rounding level: a few windows
    in millions in float32, none seen in float64). Such a flipped switch moves a projection's value by one
    pixel in that pool's input when the projection passes through that window."""
    return {recreation.names[i]: int((_switches(record, recreation.names[i]) != sw.numpy()).sum())
            for i, sw in recreation.pool_locs.items()}


def _switches(record, name: str, tensor: bool = False):
    """The switches (N, C, H_out, W_out) that ``record`` holds for pool layer ``name``, as recorded
    (numpy) or as a contiguous torch tensor (``tensor=True``, for the re-creation's unpooling)."""
    sw = record.caches[record.index(name)]["switches"]
    if not tensor:
        return np.asarray(sw)
    import torch

    return torch.from_numpy(np.ascontiguousarray(sw))


def agreement(net, x, layers, captum: bool = True, unpool: str = "assign") -> tuple[list[dict], dict]:
    """zfcore vs the re-creation with zero deconv biases vs captum, per layer, on one image (1, C, H, W).

    For each layer the original's selection is made on the re-creation; its first kept position (the
    only one unless the maximum is tied: column ``ties``) is then projected by all three as a single
    activation. Relative errors are ``||zfcore - other|| / ||other||``; supports are shares of pixels
    touched. Diagnostic columns: ``flipped switches below`` (see :func:`switch_flips`) and ``zfcore vs
    re-creation on zfcore's switches`` (the re-creation's unpooling fed zfcore's switches instead of its
    own: what is left of the difference when the forward passes' near-ties are taken out);
    ``duplicate switches below`` (see :func:`duplicate_switches`: where ``MaxUnpool2d`` and zfcore
    differ by construction). ``unpool`` is passed to :class:`zfcore.comparison.huybery.Recreation`.

    Returns (rows, projections: layer -> dict(zfcore=, recreation=, captum=, selection=)).
    """
    spec, params = models.features_spec(net.spec, net.params)
    dtype = str(np.dtype(net.dtype))
    recreation = Recreation(spec, params, deconv_bias="zero", dtype=dtype, unpool=unpool)
    recreation.forward(x)
    record = net.forward(x)
    flips = switch_flips(record, recreation)
    own = dict(recreation.pool_locs)                       # features index -> the re-creation's switches
    zf_switches = {i: _switches(record, recreation.names[i], tensor=True) for i in own}
    rows, projs = [], {}
    for layer in layers:
        name = layer_names(spec, [layer])[0]
        _, sel = recreation.select(name)
        pos = sel.positions[0]
        r, _ = recreation.project(name, sel.feature, pos)
        below = [i for i in own if i < recreation.index[name]]
        r_sw = r                                   # the same switches below: the same computation
        if any(flips[recreation.names[i]] for i in below):
            recreation.pool_locs.update(zf_switches)
            try:
                r_sw, _ = recreation.project(name, sel.feature, pos)
            finally:
                recreation.pool_locs.update(own)
        z = record.project(name, feature=sel.feature, position=pos)
        row = dict(layer=name, feature=sel.feature, position=pos, ties=len(sel.positions), value=sel.value)
        row["zfcore vs re-creation"] = relative_error(z, r)
        c = None
        if captum:
            c = reference.captum_deconvolution(spec, params, x, name, sel.feature, position=pos, dtype=dtype)
            row["zfcore vs captum"] = relative_error(z, c)
            row["re-creation vs captum"] = relative_error(r, c)
        row["flipped switches below"] = sum(flips[recreation.names[i]] for i in below)
        row["zfcore vs re-creation on zfcore's switches"] = relative_error(z, r_sw)
        row["duplicate switches below"] = sum(duplicate_switches(own[i]) for i in below)
        row.update({"support zfcore": support(z), "support re-creation": support(r)})
        if captum:
            row["support captum"] = support(c)
        rows.append(row)
        projs[name] = dict(zfcore=z, recreation=r, recreation_zfcore_switches=r_sw, captum=c, selection=sel)
    return rows, projs


def bias_effect(spec, params, x, layers, bias_seed: int = 0, net=None,
                scale: float | None = 10.0) -> list[dict]:
    """The original's random deconv biases against zero biases, same input and selection (the
    original's, ties included), per layer: relative difference of the projections (``random vs zero``,
    ``||random - zero|| / ||zero||``), the same with the selected activation multiplied by ``scale``
    (the zero-bias projection grows with it, the biases do not; ``scale=None`` leaves it out), mean
    absolute difference of their min-max uint8 displays (grey levels of 255), support of each, how much
    of the random-bias support lies outside the receptive field (needs ``net`` for ``input_box``), and
    how much the selected activation changes the random-bias output at all (``||out - out from an
    all-zero start|| / ||out from an all-zero start||``). Scale: ``value`` (the selected activation),
    ``mean positive activation`` (of the layer's map, before ReLU: its positive entries) and ``deconv
    bias rms`` (of every deconv bias the walk down from the layer adds). ``x``: one image (1, C, H, W)."""
    spec, params = models.features_spec(spec, params)
    zero = Recreation(spec, params, deconv_bias="zero")
    rand = Recreation(spec, params, deconv_bias="random", bias_seed=bias_seed)
    return _bias_rows(zero, rand, x, [layer_names(spec, [layer])[0] for layer in layers], net, scale)


def bias_effect_images(spec, params, inputs, layers, bias_seed: int = 0, net=None,
                       scale: float | None = 10.0) -> list[list[dict]]:
    """:func:`bias_effect` for each image (1, C, H, W) of ``inputs`` (the same two mirrors for all):
    one list of rows per image."""
    spec, params = models.features_spec(spec, params)
    zero = Recreation(spec, params, deconv_bias="zero")
    rand = Recreation(spec, params, deconv_bias="random", bias_seed=bias_seed)
    names = [layer_names(spec, [layer])[0] for layer in layers]
    return [_bias_rows(zero, rand, x, names, net, scale) for x in inputs]


def _bias_rms(rand, name: str) -> float:
    """RMS of every deconv bias that ``rand``'s walk down from layer ``name`` adds."""
    from torch import nn

    first = len(rand.names) - 1 - rand.index[name]
    b = [m.bias.detach().numpy().ravel() for m in list(rand.deconv)[first:]
         if isinstance(m, nn.ConvTranspose2d)]
    return float(np.sqrt(np.mean(np.concatenate(b).astype(np.float64) ** 2)))


def _bias_rows(zero, rand, x, names, net, scale) -> list[dict]:
    import torch

    zero.forward(x)
    rand.forward_of(zero)                         # the same network: one forward pass serves both
    rows = []
    for name in names:
        z, sel = zero.project(name)
        start, _ = rand.select(name)              # one batch: the start, no start, the start x scale
        starts = [start, 0 * start] + ([start * scale] if scale is not None else [])
        r, blank, *scaled = rand.deconv_from(torch.cat(starts), name).numpy()
        fmap = rand.feature_maps[rand.index[name]]
        row = dict(layer=name, feature=sel.feature, ties=len(sel.positions), value=sel.value,
                   **{"mean positive activation": float(fmap[fmap > 0].mean()),
                      "deconv bias rms": _bias_rms(rand, name),
                      "random vs zero": relative_error(r, z),
                      "displayed: mean grey-level difference": float(np.abs(
                          minmax_uint8(r).astype(np.float64) - minmax_uint8(z)).mean()),
                      "support random": support(r), "support zero": support(z)})
        if scale is not None:
            row[f"random vs zero, activation x{scale:g}"] = relative_error(scaled[0], scale * z)
        if net is not None:
            inside = np.zeros(z.shape[1:], bool)
            for pos in sel.positions:
                t, l, b, rr = net.input_box(name, pos, input_size=x.shape[1:])
                inside[t:b + 1, l:rr + 1] = True
            row["zero-bias support inside box"] = bool(not (support_mask(z) & ~inside).any())
            row["random-bias support outside box"] = float((support_mask(r) & ~inside).mean())
        row["selection's effect on random-bias output"] = relative_error(r, blank)
        rows.append(row)
    return rows


def channel_order(spec, params, img_uint8, layers) -> list[dict]:
    """BGR input (the original) against RGB input, zero deconv biases, each with its own selection
    (the original's rule). Two comparisons of the projections: ``as displayed`` (channels in the order
    fed, which is how the original shows them: ``imshow`` takes its BGR-ordered result for RGB) and ``in
    RGB order`` (the BGR run's channels flipped back, i.e. the colours it attributes to the photo)."""
    spec, params = models.features_spec(spec, params)
    recreation = Recreation(spec, params, deconv_bias="zero")
    outs = {}
    for order in ("BGR", "RGB"):
        recreation.forward(prepare_input(img_uint8, order))
        outs[order] = [recreation.project(layer_names(spec, [layer])[0]) for layer in layers]
    rows = []
    for layer, (b, sb), (r, sr) in zip(layers, outs["BGR"], outs["RGB"]):
        rows.append({"layer": layer_names(spec, [layer])[0], "feature BGR": sb.feature, "feature RGB": sr.feature,
                     "value BGR": sb.value, "value RGB": sr.value,
                     "BGR vs RGB as displayed": relative_error(b, r),
                     "BGR vs RGB in RGB order": relative_error(b[::-1], r)})
    return rows


def original_agreement(orig, net, x, layers) -> tuple[list[dict], dict]:
    """The ORIGINAL huybery/VisualizingCNN (``zfcore.comparison.original.Original``, run from a clone) against zfcore
    (``net``: VGG16 with the same weights) on one image x (1, 3, 224, 224), at ``layers`` (``features``
    indices), each through the original's own ``vis_layer``.

    Deconv biases zeroed: ``zfcore vs original`` (relative error, zfcore projecting the original's
    selection), the same with the original's mirror fed zfcore's switches (what is left once the two
    forward passes' near-ties are taken out, see :func:`switch_flips`), and the supports (the
    original's on its own switches and on zfcore's). Biases as published: the relative difference to
    zfcore and to the original with biases zeroed (the biases' effect in the original's own code, also
    as the mean grey-level difference of its two uint8 pictures), the support of the original's output
    and the share of the image it covers outside the chosen unit's receptive field. ``value``: the
    selected activation. A tied selection (several positions) is projected whole by the original and
    has no single-unit counterpart: NaN.
    Returns (rows, {layer name: dict(zero=Run, published=Run, zfcore=(C, H, W))}).
    """
    names = [name for name, _, _ in models.features_spec(net.spec)]
    orig.forward(x)
    record = net.forward(x)
    zf_switches = {i: _switches(record, names[i], tensor=True) for i in orig.conv.pool_locs}
    rows, runs = [], {}
    try:
        for i in layers:
            name = names[i]
            orig.deconv_bias("zero")
            zero = orig.vis_layer(i)
            on_zf_switches = orig.mirror(zero.start, i, zero.feature, zf_switches)
            orig.deconv_bias("published")
            pub = orig.vis_layer(i)
            pos = zero.positions[0]
            z = record.project(name, feature=zero.feature, position=pos)
            single = len(zero.positions) == 1
            inside = np.zeros(z.shape[1:], bool)
            t, l, b, r = record.input_box(name, pos)
            inside[t:b + 1, l:r + 1] = True
            nan = float("nan")
            rows.append({
                "layer": name, "feature": zero.feature, "position": pos, "ties": len(zero.positions),
                "value": float(zero.start[0, zero.feature][pos]),
                "zfcore vs original (bias zeroed)": relative_error(z, zero.output) if single else nan,
                "same, on zfcore's switches": relative_error(z, on_zf_switches) if single else nan,
                "support zfcore": support(z), "support original (bias zeroed)": support(zero.output),
                "support original on zfcore's switches": support(on_zf_switches),
                "original (published biases) vs zfcore": relative_error(pub.output, z) if single else nan,
                "original: published vs bias zeroed": relative_error(pub.output, zero.output),
                "original: published vs bias zeroed, mean grey levels": float(np.abs(
                    pub.image.astype(np.float64) - zero.image).mean()),
                "support original (published)": support(pub.output),
                "published: support outside the receptive field": float((support_mask(pub.output) & ~inside).mean()),
            })
            runs[name] = dict(zero=zero, published=pub, zfcore=z)
    finally:
        orig.deconv_bias("published")
    return rows, runs


def tied_selections(recreation, inputs, layers) -> list[int]:
    """How many positions the original's selection keeps (1 unless the maximum is tied) for each input
    (1, C, H, W) of ``inputs`` and each of ``layers``, in that order, on ``recreation``'s forward pass."""
    counts = []
    for x in inputs:
        recreation.forward(x)
        counts += [len(recreation.select(name)[1].positions) for name in layers]
    return counts


def crop(img, box, pad: int = 0):
    """The part of an (H, W) or (H, W, C) image inside ``box`` = (top, left, bottom, right), inclusive
    (as ``input_box`` gives it), widened by ``pad`` pixels on each side and clipped to the image."""
    a = np.asarray(img)
    t, l, b, r = box
    return a[max(t - pad, 0):b + pad + 1, max(l - pad, 0):r + pad + 1]


# ------------------------------------------------------------------------------------------------
# figures and tables

def panel_grid(rows, col_titles=(), notes=None, width: float = 6.2, label_width: float = 0.8,
               colorbar: str | None = None):
    """Rows of images drawn at their printed size (``zfcore.viz.page``): ``rows`` is a list of (row
    label, [image or None, ...]), each image (H, W) or (H, W, 3), uint8 (0-255) or float in [0, 1],
    shown as given; labels beside the rows, ``col_titles`` above the first row, ``notes`` (lists of
    short texts matching ``rows``, or None) under the panels. ``colorbar``: the label of a grey bar
    from 0 to 255 at the right. The figure is ``width`` inches wide. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ncols = max(len(imgs) for _, imgs in rows)
    side = (width - label_width - (0.55 if colorbar else 0.0)) / ncols
    lines = max([str(t).count("\n") + 1 for t in col_titles] or [0])
    height = len(rows) * (side + (0.16 if notes else 0.04)) + 0.16 * lines + 0.1
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False, figsize=(width, height),
                             layout="constrained")
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    for r, (label, imgs) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            img = imgs[c] if c < len(imgs) else None
            if img is None:
                ax.spines[:].set_visible(False)
            else:
                img = np.asarray(img)
                top = 255 if img.dtype == np.uint8 else 1.0
                ax.imshow(img, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
            if notes is not None and c < len(notes[r]) and notes[r][c]:
                ax.set_xlabel(notes[r][c], fontsize=7, labelpad=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", labelpad=3)
    for c, title in enumerate(col_titles):
        axes[0][c].set_title(title)
    if colorbar:
        bar = fig.colorbar(ScalarMappable(Normalize(0, 255), cmap="gray"), ax=axes, shrink=0.8,
                           ticks=[0, 255], aspect=30)
        bar.set_label(colorbar)
    return fig


def _fmt(v, spec=None):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if v != v:
            return "n/a"
        if spec:
            return format(float(v), spec)
        return f"{float(v):.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{float(v):.3g}"
    if isinstance(v, (tuple, list)):
        return " ".join(_fmt(u) for u in v) if len(v) > 2 or not all(isinstance(u, int) for u in v) \
            else f"({v[0]}, {v[1]})"
    return str(v)


def format_table(rows: list[dict], columns=None, formats: dict | None = None) -> str:
    """A Markdown table of ``rows`` (dicts); ``columns`` picks and orders keys (default: the first row's),
    ``formats`` maps a key to a format spec (e.g. ``".3f"``)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, ""), formats.get(c)) for c in columns) + " |")
    return "\n".join(lines)

