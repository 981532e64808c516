"""The benchmarks' timing harness and the reader of ``benchmarks/RESULTS.md``; not part of the package.

- the shared-machine guard: :func:`busy_cpu_seconds` (the whole machine, ``/proc/stat``) and
  :func:`own_cpu_seconds` (this process);
- :func:`median_time`: the median of repeated timings, re-taking those that other processes disturbed;
- the comparison's timings (``bench_compare.py``, notebook 06): :func:`time_zfcore`,
  :func:`time_recreation`, :func:`time_captum`, and :func:`timing_rows` to put them side by side;
- :func:`read_results_table`: a Markdown table of ``RESULTS.md`` as rows.

The benchmark scripts import it as ``harness`` (their own folder is first on ``sys.path``); notebook 06
adds this folder to ``sys.path``. numpy only at import time; torch and captum are imported inside
:func:`time_captum`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------------
# the shared-machine guard

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


# ------------------------------------------------------------------------------------------------
# zfcore, the huybery re-creation and captum, timed alike

def time_zfcore(net, x, layers, figure_layers=None, repeat: int = 5) -> dict:
    """Median seconds: ``forward`` (a ``Record``, with switches), ``project <layer>`` for each of
    ``layers`` (the strongest map's strongest activation, cropped projection, on one record) and, when
    ``figure_layers`` is given, ``figure`` (forward + those layers projected + min-max uint8, i.e.
    ``zfcore.comparison.compare.zfcore_figure``)."""
    from zfcore.comparison.compare import zfcore_figure

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
    """The same measures for a ``zfcore.comparison.huybery.Recreation`` (its forward runs the classifier
    too, as the original's does, when the spec has one; its projections are dense, as the original's)."""
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

    from zfcore import models
    from zfcore.comparison.huybery import minmax_uint8
    from zfcore.torch import reference

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
# RESULTS.md

def read_results_table(path, heading: str) -> list[dict]:
    """The first Markdown table under the ``## <heading>...`` section of a results file (e.g.
    ``benchmarks/RESULTS.md``) as rows of {column: str or float} (numbers parsed, "n/a" as NaN).
    Raises ValueError naming the file when the section or its table is missing."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## " + heading)), None)
    lines = lines[start + 1:] if start is not None else []
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
