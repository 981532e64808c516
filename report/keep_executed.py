"""pytest plugin: keep the notebooks nbval executes, so that the report can be built from that execution.

    python -m pytest --nbval-lax -p report.keep_executed --keep-executed DIR notebooks
    python report/build.py --from-executed DIR

nbval runs every code cell of a notebook in one kernel and checks that it raises nothing; this plugin
writes each notebook whose cells all passed to ``DIR/<name>.ipynb`` with the outputs nbval received,
so ``make test`` executes the notebooks once, not once for nbval and again for the report. A notebook
with a failed, skipped or unrun cell is not written (the report build then fails on the missing file),
and a notebook's copy from an earlier run is removed as its first cell starts, so none is reused. The
plugin works under pytest-xdist (``--dist loadfile`` keeps a notebook's cells on one worker). Each kept
notebook records its execution time in ``metadata.zfcore.executed`` (wall seconds and the kernel's
CPU seconds), which the builder prints as it would for its own execution.

nbval sends each cell with ``store_history=False``, and IPython then judges a trailing ``;`` (which
hides a cell's last value) against the previous history entry instead of the cell, so figures would
appear twice. With ``--keep-executed`` the cells are sent as Jupyter and nbclient send them, with
``store_history=True``; nothing else of nbval's checking changes.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import nbformat
import pytest


def pytest_addoption(parser):
    parser.getgroup("nbval").addoption(
        "--keep-executed", metavar="DIR",
        help="write every notebook whose cells all passed, with nbval's outputs, into DIR")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class _Keeper:
    def __init__(self, folder: Path):
        self.folder = folder
        self.runs: dict = {}          # notebook collector -> {"ok", "passed", "start", "cpu"}

    def _run(self, nbfile):
        if nbfile not in self.runs:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / Path(str(nbfile.fspath)).name).unlink(missing_ok=True)   # an earlier run's
            self.runs[nbfile] = {"ok": True, "passed": 0, "start": time.time(), "cpu": _children_cpu()}
        return self.runs[nbfile]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        nbfile = getattr(item, "parent", None)
        if not hasattr(item, "test_outputs") or not hasattr(nbfile, "nb"):
            return
        run = self._run(nbfile)
        report = outcome.get_result()
        if report.when == "call":
            if report.passed and item.test_outputs is not None:
                run["passed"] += 1                    # cells run in order: the execution count
                item.cell.outputs = [nbformat.from_dict(dict(o)) for o in item.test_outputs]
                item.cell.execution_count = run["passed"]
                for o in item.cell.outputs:
                    if o.get("output_type") == "execute_result":
                        o["execution_count"] = run["passed"]
            else:
                run["ok"] = False
        elif report.failed:
            run["ok"] = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if hasattr(item, "test_outputs") and hasattr(getattr(item, "parent", None), "nb"):
            self._run(item.parent)           # before nbval starts the notebook's kernel

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        yield
        nbfile = getattr(item, "parent", None)
        if nbfile not in self.runs or (nextitem is not None and nextitem.parent is nbfile):
            return
        # the last cell of this notebook: nbval has stopped its kernel in the collector's teardown
        run = self.runs[nbfile]
        codes = sum(c.cell_type == "code" for c in nbfile.nb.cells)
        if not run["ok"] or run["passed"] != codes:
            return
        nbfile.nb.metadata.setdefault("zfcore", {})["executed"] = {
            "by": "nbval", "wall_s": round(time.time() - run["start"], 1),
            "kernel_cpu_s": round(_children_cpu() - run["cpu"], 1)}
        nbformat.write(nbfile.nb, self.folder / Path(str(nbfile.fspath)).name)


def _execute_as_jupyter(self, cell_input, allow_stdin=None):
    return self.kc.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)


def pytest_configure(config):
    folder = config.getoption("--keep-executed")
    if folder:
        from nbval import kernel

        kernel.RunningKernel.execute_cell_input = _execute_as_jupyter
        config.pluginmanager.register(_Keeper(Path(folder)), "zfcore-keep-executed")
