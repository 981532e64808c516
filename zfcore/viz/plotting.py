"""Figure helpers for the notebooks: images, projections, grids and receptive-field boxes.

matplotlib is imported lazily inside each function, so importing zfcore never needs it. Arrays follow
the package convention: one image is (C, H, W) with C = 1 (grey) or 3 (RGB); a batch is (N, C, H, W).
"""
from __future__ import annotations

import numpy as np

from zfcore.errors import ArgumentError, check_choice, check_count
from zfcore.viz import page

MODES = ("minmax", "symmetric", "clip")
FIG_WIDTH = page.TEXT_WIDTH - 0.3   # inches a figure may use: the text width less the PNG's padding


def panel_size(size: float, ncols: int, label_width: float = 0.0) -> float:
    """``size`` (inches per panel); in a report notebook (``page.use()``) reduced so that ``ncols``
    panels and a column of row labels ``label_width`` inches wide fit the printed page's width."""
    if not page.in_use():
        return size
    return min(size, (FIG_WIDTH - label_width) / max(ncols, 1))


def to_display(img: np.ndarray, mode: str = "minmax") -> np.ndarray:
    """Map a (C, H, W) image or projection to an (H, W) or (H, W, 3) array in [0, 1] for imshow.

    mode: ``"minmax"`` scales [min, max] to [0, 1] (what huybery/VisualizingCNN does before uint8);
    ``"symmetric"`` maps 0 to mid-grey and +-max|x| to 1 / 0, so the sign of a projection stays
    readable; ``"clip"`` clips to [0, 1] (for images already in that range).
    """
    check_choice(mode, MODES, "display mode")
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ArgumentError(f"expected a (C, H, W) array with C = 1 or 3, got shape {a.shape}")
    if mode == "minmax":
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    elif mode == "symmetric":
        m = np.abs(a).max()
        a = 0.5 + 0.5 * a / m if m > 0 else np.full_like(a, 0.5)
    else:
        a = np.clip(a, 0.0, 1.0)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def show(ax, img, title=None, mode="minmax", cmap="gray"):
    """imshow one (C, H, W) array on ``ax`` without ticks."""
    ax.imshow(to_display(img, mode), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return ax


def grid(images, titles=None, ncols=8, mode="minmax", size=1.6, suptitle=None, row_labels=None,
         col_labels=None):
    """A figure with one panel per (C, H, W) image in ``images``; returns the figure.

    titles: one per panel (or None); row_labels: one per row, written left of it; col_labels: one
    per column, above the first row's titles; suptitle: above everything. The figure's height allows
    for the titles' lines, and matplotlib's constrained layout keeps every text clear of the panels."""
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ArgumentError("grid needs at least one image")
    ncols = max(1, min(check_count(ncols, "ncols", 1), n))
    nrows = -(-n // ncols)
    for name, labels, want in (("row_labels", row_labels, nrows), ("col_labels", col_labels, ncols)):
        if labels is not None and len(labels) != want:
            raise ArgumentError(f"grid: {name} needs {want} labels, got {len(labels)}")
    label_w = 0.5 if row_labels is not None else 0.0
    size = panel_size(size, ncols, label_w)
    full = [titles[i] if titles is not None and i < n else None for i in range(nrows * ncols)]
    if col_labels is not None:
        full[:ncols] = [c if t is None else f"{c}\n{t}" for c, t in zip(col_labels, full[:ncols])]
    head = _text_height(suptitle, "figure.titlesize") + 0.1 if suptitle else 0.0
    height = head + sum(size + max(_text_height(t, "axes.titlesize") for t in full[r * ncols:(r + 1) * ncols])
                        for r in range(nrows))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + label_w, height), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        show(ax, images[i], full[i], mode)
    if row_labels is not None:
        for r in range(nrows):
            axes[r, 0].set_ylabel(row_labels[r])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _text_height(text, rc: str) -> float:
    """Inches that ``text`` (its lines; None: none) takes at the size of ``rcParams[rc]``."""
    if not text:
        return 0.0
    import matplotlib as mpl
    from matplotlib.font_manager import FontProperties

    points = FontProperties(size=mpl.rcParams[rc]).get_size_in_points()
    return (text.count("\n") + 1) * 1.25 * points / 72


def draw_box(ax, box, color="red", lw=1.5):
    """Draw an input-space box ``(top, left, bottom, right)`` (inclusive pixel indices) on ``ax``."""
    from matplotlib.patches import Rectangle

    top, left, bottom, right = box
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                           fill=False, edgecolor=color, linewidth=lw))
    return ax


def occlusion_map(ax, values, occ, title=None, cmap="RdYlBu", vmin=0.0, vmax=1.0, colorbar=None):
    """Show ``values`` (R, Q) of an ``analysis.Occlusion`` grid (e.g. ``occ.prob``) in image coordinates:
    each cell drawn at the centre of the occluder that produced it, reaching halfway to its neighbours
    (where the last square, flush with the border, lies nearer than a stride, its cells are narrower;
    a single position along an axis spans the square).
    ``colorbar``: None, or a label: a colour bar with that label beside ``ax``. Returns the image."""
    half = (occ.size - 1) / 2
    y, x = (_cell_edges(np.asarray(v) + half, occ.size) for v in (occ.rows, occ.cols))
    if len(set(np.diff(y))) <= 1 and len(set(np.diff(x))) <= 1:      # a regular grid
        im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, extent=(x[0], x[-1], y[-1], y[0]),
                       interpolation="nearest")
    else:
        im = ax.pcolormesh(x, y, values, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(y[-1], y[0])
        ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    if colorbar is not None:
        ax.figure.colorbar(im, ax=ax, label=colorbar, shrink=0.9)
    return im


def _cell_edges(centres: np.ndarray, single: float) -> np.ndarray:
    """Edges of cells around sorted ``centres``: halfway between neighbours; the outer cells as wide
    on their open side as on the other (one centre: a cell ``single`` wide)."""
    c = centres.astype(np.float64)
    if len(c) == 1:
        return np.array([c[0] - single / 2, c[0] + single / 2])
    mid = (c[1:] + c[:-1]) / 2
    return np.r_[c[0] - (c[1] - c[0]) / 2, mid, c[-1] + (c[-1] - c[-2]) / 2]


def projection_rows(image, rows, titles=None, boxes=None, row_labels=None, mode="symmetric", size=1.5,
                    box_color="red", zoom=False, wrap=None):
    """A figure: the input image with a box per column on top, then one row per entry of ``rows``.

    image (C, H, W); rows: a list of R lists of n (C, H, W) projections (one column per layer or unit);
    titles: n column titles; boxes: n input-space boxes ``(top, left, bottom, right)`` (inclusive) drawn
    on the image and on every projection of that column, or None; row_labels: R labels written on the
    left. Projections are shown with ``mode`` (default "symmetric": zero is mid-grey). ``zoom=True``
    (needs boxes) adds two rows: the image and the first row's projection cut to each box. ``wrap``:
    at most this many columns side by side; more are drawn as further blocks of rows below.
    """
    import matplotlib.pyplot as plt

    n = len(rows[0])
    labels = ["input"] + list(row_labels if row_labels is not None else [""] * len(rows))
    panels = [[image] * n] + [list(r) for r in rows]
    if zoom:
        cut = [(lambda a, b: a[:, b[0]:b[2] + 1, b[1]:b[3] + 1]) for _ in range(n)]
        panels += [[cut[j](image, boxes[j]) for j in range(n)], [cut[j](rows[0][j], boxes[j]) for j in range(n)]]
        labels += ["input, box", f"{labels[1]}, box".strip(", ")]
    width = min(n, wrap or n)
    blocks = [list(range(k, min(k + width, n))) for k in range(0, n, width)]
    size = panel_size(size, width, 0.4 if (row_labels is not None or zoom) else 0.0)
    fig, axes = plt.subplots(len(panels) * len(blocks), width,
                             figsize=(size * width, (size + 0.1) * len(panels) * len(blocks) + 0.2), squeeze=False)
    for b, cols in enumerate(blocks):
        for i, row in enumerate(panels):
            ax_row = axes[b * len(panels) + i]
            for k, ax in enumerate(ax_row):
                if k >= len(cols):
                    ax.axis("off")
                    continue
                j = cols[k]
                show(ax, row[j], titles[j] if (i == 0 and titles is not None) else None,
                     mode="minmax" if i in (0, len(rows) + 1) else mode)
                if boxes is not None and boxes[j] is not None and i <= len(rows):
                    draw_box(ax, boxes[j], color=box_color, lw=1.0)
            if row_labels is not None or zoom:
                ax_row[0].set_ylabel(labels[i])
    fig.tight_layout(h_pad=0.3, w_pad=0.3)
    return fig


def montage(images, ncols: int, mode="minmax", pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile (C, H, W) arrays into one (H', W') or (H', W', 3) display array in [0, 1], each tile
    scaled on its own by ``to_display(mode)``, separated by ``pad`` pixels of ``pad_value``. One
    imshow of a montage is much faster than one axes per tile."""
    ncols = check_count(ncols, "ncols", 1)
    tiles = [to_display(im, mode) for im in images]
    if not tiles:
        raise ArgumentError("montage needs at least one image")
    h, w = tiles[0].shape[:2]
    if any(t.shape != tiles[0].shape for t in tiles):
        raise ArgumentError("montage tiles must share one shape")
    nrows = -(-len(tiles) // ncols)
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad) + tiles[0].shape[2:], pad_value)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = t
    return out


def plot_rows(rows, titles=None, size: float = 2.0, suptitle=None):
    """A figure of image rows: ``rows`` is a list of (row label, [images]), each image (H, W, 3) or (H, W),
    uint8 or float in [0, 1], shown as given (no rescaling: pass what the implementation displays);
    ``titles`` a matching list of lists of panel titles. Returns the figure."""
    import matplotlib.pyplot as plt

    ncols = max(len(imgs) for _, imgs in rows)
    size = panel_size(size, ncols, 0.4)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols, size * len(rows) + 0.3), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            img = np.asarray(imgs[c])
            lims = {} if img.dtype == np.uint8 else {"vmin": 0.0, "vmax": 1.0}
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest", **lims)
            if titles is not None:
                ax.set_title(titles[r][c])
        axes[r][0].set_ylabel(label)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
