"""zfcore side by side with huybery/VisualizingCNN (re-created in ``zfcore.comparison.huybery``) and captum:
the measures and tables of notebook 06 and ``benchmarks/bench_compare.py``.

- measures: :func:`relative_error`, :func:`support` (share of pixels touched), :func:`duplicate_switches`;
- comparison runs on one image: :func:`agreement` (zfcore vs the re-creation vs captum, per layer),
  :func:`bias_effect` (the original's random deconv biases), :func:`channel_order` (BGR vs RGB input),
  :func:`zfcore_figure` (zfcore's version of the original's figure), :func:`original_agreement` (the
  ORIGINAL code, run from a user's clone through ``zfcore.comparison.original``);
- timing: :func:`median_time` (also used by the benchmarks, with its shared-machine guard),
  :func:`time_zfcore`, :func:`time_recreation`, :func:`time_captum`, :func:`timing_rows`;
- tables: :func:`format_table` (Markdown), :func:`show_table` (displays it in a notebook),
  :func:`read_results_table` (a table of ``benchmarks/RESULTS.md``).

torch is imported inside functions only; importing this module needs numpy alone.
"""
from __future__ import annotations

import os
import time

import numpy as np

from zfcore.comparison import huybery
from zfcore import models
from zfcore.torch import reference
from zfcore.comparison.huybery import layer_names, minmax_uint8, prepare_input


# ------------------------------------------------------------------------------------------------
# measures

def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` (Frobenius, float64); 0 when both are zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    num, den = np.linalg.norm(a - b), np.linalg.norm(b)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def support_mask(img, atol: float = 0.0) -> np.ndarray:
    """(C, H, W) -> (H, W) bool: the pixels where any channel's magnitude exceeds ``atol``."""
    a = np.abs(np.asarray(img, dtype=np.float64))
    if a.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {a.shape}")
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


def switch_flips(record, rec) -> dict[str, int]:
    """Per pool layer, how many switches of zfcore's forward ``record`` differ from the re-creation's.

    Both pick the first maximum of each window, so they differ only where the two forward passes round
    a window's two largest values in opposite orders (a near-tie at float rounding level: a few windows
    in millions in float32, none seen in float64). Such a flipped switch moves a projection's value by one
    pixel in that pool's input when the projection passes through that window."""
    out = {}
    for i, sw in rec.pool_locs.items():
        name = rec.names[i]
        mine = record.caches[record.index(name)]["switches"]
        out[name] = int((np.asarray(mine) != sw.numpy()).sum())
    return out


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
    import torch

    spec, params = models.features_spec(net.spec, net.params)
    dtype = str(np.dtype(net.dtype))
    rec = huybery.Recreation(spec, params, deconv_bias="zero", dtype=dtype, unpool=unpool)
    rec.forward(x)
    record = net.forward(x)
    flips = switch_flips(record, rec)
    own = dict(rec.pool_locs)
    theirs = {i: torch.from_numpy(np.ascontiguousarray(record.caches[record.index(rec.names[i])]["switches"]))
              for i in own}
    rows, projs = [], {}
    for layer in layers:
        name = layer_names(spec, [layer])[0]
        _, sel = rec.select(name)
        pos = sel.positions[0]
        r, _ = rec.project(name, sel.feature, pos)
        below = [i for i in own if i < rec.index[name]]
        r_sw = r                                   # the same switches below: the same computation
        if any(flips[rec.names[i]] for i in below):
            rec.pool_locs.update(theirs)
            try:
                r_sw, _ = rec.project(name, sel.feature, pos)
            finally:
                rec.pool_locs.update(own)
        z = record.project(name, feature=sel.feature, position=pos)
        row = dict(layer=name, feature=sel.feature, position=pos, ties=len(sel.positions), value=sel.value)
        row["zfcore vs re-creation"] = relative_error(z, r)
        c = None
        if captum:
            c = reference.captum_deconvolution(spec, params, x, name, sel.feature, position=pos, dtype=dtype)
            row["zfcore vs captum"] = relative_error(z, c)
            row["re-creation vs captum"] = relative_error(r, c)
        row["flipped switches below"] = sum(flips[rec.names[i]] for i in below)
        row["zfcore vs re-creation on zfcore's switches"] = relative_error(z, r_sw)
        row["duplicate switches below"] = sum(duplicate_switches(own[i]) for i in below)
        row.update({"support zfcore": support(z), "support re-creation": support(r)})
        if captum:
            row["support captum"] = support(c)
        rows.append(row)
        projs[name] = dict(zfcore=z, recreation=r, recreation_zfcore_switches=r_sw, captum=c, selection=sel)
    return rows, projs


def bias_effect(spec, params, x, layers, bias_seed: int = 0, net=None) -> list[dict]:
    """The original's random deconv biases against zero biases, same input and selection (the
    original's, ties included), per layer: relative difference of the projections, mean absolute
    difference of their min-max uint8 displays (grey levels of 255), support of each, how much of the
    random-bias support lies outside the receptive field (needs ``net`` for ``input_box``), and how much
    the selected activation changes the random-bias output at all (``||out - out from an all-zero
    start|| / ||out from an all-zero start||``)."""
    import torch

    spec, params = models.features_spec(spec, params)
    zero = huybery.Recreation(spec, params, deconv_bias="zero")
    rand = huybery.Recreation(spec, params, deconv_bias="random", bias_seed=bias_seed)
    zero.forward(x)
    rand.forward(x)
    rows = []
    for layer in layers:
        name = layer_names(spec, [layer])[0]
        z, sel = zero.project(name)
        r, _ = rand.project(name)
        start, _ = rand.select(name)
        blank = rand.deconv_from(torch.zeros_like(start), name)[0].numpy()
        row = dict(layer=name, feature=sel.feature, ties=len(sel.positions),
                   **{"random vs zero": relative_error(r, z),
                      "displayed: mean grey-level difference": float(np.abs(
                          minmax_uint8(r).astype(np.float64) - minmax_uint8(z)).mean()),
                      "support random": support(r), "support zero": support(z)})
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
    rec = huybery.Recreation(spec, params, deconv_bias="zero")
    outs = {}
    for order in ("BGR", "RGB"):
        rec.forward(prepare_input(img_uint8, order))
        outs[order] = [rec.project(layer_names(spec, [layer])[0]) for layer in layers]
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
    forward passes' near-ties are taken out, see :func:`switch_flips`), and both supports. Biases as
    published: the relative difference to zfcore, the support of the original's output and the share
    of the image it covers outside the chosen unit's receptive field. A tied selection (several
    positions) is projected whole by the original and has no single-unit counterpart: NaN.
    Returns (rows, {layer name: dict(zero=Run, published=Run, zfcore=(C, H, W))}).
    """
    import torch

    names = [name for name, _, _ in models.features_spec(net.spec)]
    orig.forward(x)
    record = net.forward(x)
    zf_switches = {i: torch.from_numpy(np.ascontiguousarray(record.caches[record.index(names[i])]["switches"]))
                   for i in orig.conv.pool_locs}
    rows, runs = [], {}
    try:
        for i in layers:
            name = names[i]
            orig.deconv_bias("zero")
            zero = orig.vis_layer(i)
            own_sw = orig.mirror(zero.start, i, zero.feature, zf_switches)
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
                "zfcore vs original (bias zeroed)": relative_error(z, zero.output) if single else nan,
                "same, on zfcore's switches": relative_error(z, own_sw) if single else nan,
                "support zfcore": support(z), "support original (bias zeroed)": support(zero.output),
                "original (published biases) vs zfcore": relative_error(pub.output, z) if single else nan,
                "support original (published)": support(pub.output),
                "published: support outside the receptive field": float((support_mask(pub.output) & ~inside).mean()),
            })
            runs[name] = dict(zero=zero, published=pub, zfcore=z)
    finally:
        orig.deconv_bias("published")
    return rows, runs


# ------------------------------------------------------------------------------------------------
# timings

def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy so far (``/proc/stat``, 10 ms ticks), or None
    where that file is unavailable."""
    try:
        with open("/proc/stat") as fh:
            v = [int(t) for t in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far."""
    t = os.times()
    return t.user + t.system


def median_time(fn, repeat: int = 5, warmup: int = 1, quiet: float | None = None,
                stats: dict | None = None) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` timings after ``warmup`` untimed calls.

    ``quiet`` (benchmarks on a shared machine): a timing during which other processes used more than
    this share of the CPUs (``busy_cpu_seconds`` less this process's own CPU time) is discarded and
    taken again after a 1 s pause, up to ``10 * repeat`` tries in all (then kept as it is); short calls
    are then timed in blocks of calls lasting >= 0.1 s, as ``/proc/stat`` counts in 10 ms ticks.
    ``stats["retimed"]`` counts the discarded timings, ``stats["gave_up"]`` the disturbed ones kept.
    """
    t = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
    guard = quiet is not None and busy_cpu_seconds() is not None
    n = max(1, int(0.1 / max(t, 1e-6))) if guard and warmup else 1
    stats = {} if stats is None else stats
    times, tries, ncpu = [], 0, os.cpu_count() or 1
    while len(times) < repeat:
        tries += 1
        b0, o0 = (busy_cpu_seconds(), own_cpu_seconds()) if guard else (0.0, 0.0)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        if guard:
            others = max(0.0, (busy_cpu_seconds() - b0) - (own_cpu_seconds() - o0)) / ((t1 - t0) * ncpu)
            if others > quiet and tries < 10 * repeat:
                stats["retimed"] = stats.get("retimed", 0) + 1
                time.sleep(1.0)  # let the other work pass
                continue
            if others > quiet:
                stats["gave_up"] = stats.get("gave_up", 0) + 1
        times.append((t1 - t0) / n)
    return float(np.median(times))


def time_zfcore(net, x, layers, figure_layers=None, repeat: int = 5) -> dict:
    """Median seconds: ``forward`` (with switches), ``project <layer>`` for each of ``layers`` (the
    strongest map's strongest activation, cropped projection, after one forward) and, when
    ``figure_layers`` is given, ``figure`` (forward + those layers projected + min-max uint8)."""
    out = {"forward": median_time(lambda: net.forward(x), repeat)}
    record = net.forward(x)
    for name in layers:
        def one(name=name):
            f = int(record.top_features(name)[0][0])
            return record.project(name, feature=f)
        out[f"project {name}"] = median_time(one, repeat)
    if figure_layers is not None:
        out["figure"] = median_time(lambda: zfcore_figure(net, x, figure_layers), repeat)
    return out


def time_recreation(rec, x, layers, figure_layers=None, repeat: int = 5) -> dict:
    """The same measures for a :class:`zfcore.comparison.huybery.Recreation` (its forward runs the classifier too,
    as the original's does, when the spec has one; its projections are dense, as the original's)."""
    out = {"forward": median_time(lambda: rec.forward(x), repeat)}
    rec.forward(x)
    for name in layers:
        out[f"project {name}"] = median_time(lambda name=name: rec.project(name), repeat)
    if figure_layers is not None:
        out["figure"] = median_time(lambda: rec.figure(x, figure_layers), repeat)
    return out


def time_captum(spec, params, x, layers, units: dict, figure_layers=None, repeat: int = 5) -> dict:
    """captum's ``NeuronDeconvolution`` on a torch model of the spec's features part, built once
    (``zfcore.torch.reference.torch_model``): ``project <layer>`` is one ``attribute`` call for the unit
    ``units[layer] = (feature, row, col)`` (it runs its own forward; there is no separate forward with
    switches: ``forward`` is NaN); ``figure`` is the calls for ``figure_layers`` plus min-max. The
    scaling by the activation value (one multiplication) is left out."""
    import torch
    from captum.attr import NeuronDeconvolution

    spec, params = models.features_spec(spec, params)
    model = reference.torch_model(spec, params)
    mods = dict(model.named_children())
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    names = list(layers) + [n for n in (figure_layers or []) if n not in layers]
    attr = {name: NeuronDeconvolution(model, mods[name]) for name in names}

    def one(name):
        return attr[name].attribute(xt.clone().requires_grad_(True), neuron_selector=tuple(units[name]))

    out = {"forward": float("nan")}
    for name in layers:
        out[f"project {name}"] = median_time(lambda name=name: one(name), repeat)
    if figure_layers is not None:
        out["figure"] = median_time(
            lambda: [minmax_uint8(one(n)[0].detach().numpy()) for n in figure_layers], repeat)
    return out


def timing_rows(results: dict, reference: str = "zfcore") -> list[dict]:
    """One row per measure from ``{implementation: {measure: seconds}}``: milliseconds per
    implementation and the ratio of each other implementation's time to ``reference``'s."""
    impls = list(results)
    measures = list(results[impls[0]])
    rows = []
    for m in measures:
        row = {"measure": m}
        for impl in impls:
            row[f"{impl} ms"] = results[impl].get(m, float("nan")) * 1e3
        for impl in impls:
            if impl != reference:
                row[f"{impl} / {reference}"] = results[impl].get(m, float("nan")) / results[reference][m]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# tables

def read_results_table(path, heading: str) -> list[dict]:
    """The first Markdown table under the ``## <heading>...`` section of a results file (e.g.
    ``benchmarks/RESULTS.md``) as rows of {column: str or float} (numbers parsed, "n/a" as NaN).
    Raises ValueError naming the file when the section or its table is missing."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    start = next((i for i, line in enumerate(text.splitlines()) if line.startswith("## " + heading)), None)
    lines = text.splitlines()[start + 1:] if start is not None else []
    lines = lines[:next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))]
    table = [line for line in lines if line.startswith("|")]
    if len(table) < 3:
        raise ValueError(f"{path}: no table under a heading starting with {heading!r}")
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]

    def value(c):
        try:
            return float("nan") if c == "n/a" else float(c)
        except ValueError:
            return c
    return [dict(zip(cells[0], map(value, row))) for row in cells[2:]]


def _fmt(v, spec=None):
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


def show_table(rows: list[dict], columns=None, formats: dict | None = None):
    """Display :func:`format_table` as Markdown in a notebook (IPython imported here)."""
    from IPython.display import Markdown, display

    display(Markdown(format_table(rows, columns, formats)))
