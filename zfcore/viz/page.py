"""Figures made for the printed page: the report's matplotlib style and the check that enforces it.

The report's PDF prints a figure at the size matplotlib drew it (its PNG carries the resolution), unless it
is wider than the text block, in which case it is scaled down to fit and every font shrinks with it. So a
figure drawn at most :data:`TEXT_WIDTH` inches wide, with fonts of at least :data:`MIN_FONT` points, prints
with those fonts. :func:`use` sets the style in a notebook and installs :func:`check` after every cell; a
figure that breaks a rule prints a line starting with :data:`MARK`, which the report's builder turns into
an error naming the chapter and cell.

matplotlib and IPython are imported inside the functions, never by ``import zfcore``.
"""
from __future__ import annotations

TEXT_WIDTH = 6.5      # inches: A4 with the report's margins
MAX_HEIGHT = 8.0      # inches: the text block's height less room for a caption of a few lines
MIN_FONT = 7.0        # points, as printed
DPI = 150             # the PNGs' resolution (the PDF reads it from each PNG)
MARK = "zfcore-figure-check:"
_in_use = False       # set by use(): the page's width then bounds the figures zfcore.viz.plotting draws

STYLE = {
    "figure.dpi": DPI, "savefig.dpi": DPI, "image.cmap": "gray", "image.interpolation": "nearest",
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 9, "axes.titlepad": 3,
}


def in_use() -> bool:
    """Whether :func:`use` was called in this process (a report notebook), so that plotting helpers fit
    their figures to the page; elsewhere (the command line) they keep the sizes they are asked for."""
    return _in_use


def width(fraction: float = 1.0) -> float:
    """A figure width in inches: ``fraction`` of the text block."""
    return TEXT_WIDTH * fraction


def printed(fig) -> tuple[float, float, float]:
    """(width, height, scale) of ``fig`` as printed: the tight bounding box (what the notebook's PNG
    holds), scaled down to the text width when wider."""
    fig.canvas.draw()                                    # lay out first (constrained layout moves things)
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = bbox.width + 0.2, bbox.height + 0.2          # the inline backend's pad_inches=0.1 on each side
    scale = min(1.0, TEXT_WIDTH / w)
    return w * scale, h * scale, scale


def problems(fig) -> list[str]:
    """What in ``fig`` breaks the page rules: wider or taller than the page allows, or visible text that
    prints below :data:`MIN_FONT` points."""
    from matplotlib.text import Text

    w, h, scale = printed(fig)
    out = []
    if scale < 0.999:
        out.append(f"{w / scale:.2f} in wide, over the text width {TEXT_WIDTH} in (fonts shrink by {scale:.2f})")
    if h > MAX_HEIGHT:
        out.append(f"{h:.2f} in tall as printed, over {MAX_HEIGHT} in")
    small = sorted({(round(float(t.get_fontsize() * scale), 1), t.get_text()[:30]) for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() * scale < MIN_FONT - 1e-6})
    if small:
        shown = ", ".join(f"{text!r} at {size} pt" for size, text in small[:6])
        out.append(f"{len(small)} text(s) below {MIN_FONT} pt as printed: {shown}")
    return out


def check() -> None:
    """Print a :data:`MARK` line for every open figure that breaks the page rules (run after each cell,
    before the inline backend shows and closes the figures)."""
    import matplotlib.pyplot as plt

    for num in plt.get_fignums():
        for p in problems(plt.figure(num)):
            print(f"{MARK} figure {num}: {p}")


def use() -> None:
    """The report's style in the running notebook: :data:`STYLE`, and :func:`check` after every cell."""
    import matplotlib.pyplot as plt

    global _in_use
    _in_use = True
    plt.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:                                 # not in IPython: the style alone
        return
    ip = get_ipython()
    if ip is None:
        return
    callbacks = ip.events.callbacks["post_execute"]
    if check not in callbacks:
        callbacks.insert(0, check)                      # before the inline backend's flush_figures
