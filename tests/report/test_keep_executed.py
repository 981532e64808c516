"""The notebooks nbval keeps (report/keep_executed.py) are what nbclient, the report builder's own
executor, makes of the same notebooks; a failing notebook is not kept; the builder refuses a kept copy
whose cells are not the current notebook's."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbval")
pytest.importorskip("nbclient")
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("zfcore_report_build", ROOT / "report" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

CELLS = [
    "x = 6 * 7\nprint('x is', x)",
    "x",                                          # a value shown: execute_result
    "x + 1;",                                     # a value hidden by the trailing semicolon
    "from IPython.display import Markdown, display\ndisplay(Markdown(f'**{x}**'))\nx * 2",
    "import sys\nprint('to stderr', file=sys.stderr)\nprint('a'); print('b')",
]


def notebook(*sources):
    nb = new_notebook(cells=[new_markdown_cell("# A chapter")] + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def outputs(nb):
    """What the report renders of each code cell: output types, stream names and texts, data."""
    return [(c.execution_count, [(o.output_type, o.get("name"), o.get("text"), dict(o.get("data", {})),
                                  o.get("execution_count")) for o in c.outputs])
            for c in nb.cells if c.cell_type == "code"]


def keep(tmp_path, *notebooks):
    src, kept = tmp_path / "nbs", tmp_path / "kept"
    src.mkdir()
    for name, nb in notebooks:
        nbformat.write(nb, src / name)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                        "-p", "report.keep_executed", "--keep-executed", str(kept), str(src)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    return r, src, kept


def test_kept_notebook_is_what_nbclient_executes_and_a_failing_one_is_not_kept(tmp_path):
    from nbclient import NotebookClient

    good, bad = notebook(*CELLS), notebook("y = 1", "raise ValueError('broken')", "z = 2")
    kept_dir = tmp_path / "kept"
    kept_dir.mkdir()
    nbformat.write(notebook("y = 1"), kept_dir / "bad.ipynb")          # an earlier, passing run's copy
    r, src, kept = keep(tmp_path, ("good.ipynb", good), ("bad.ipynb", bad))
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout[-2000:]
    assert sorted(p.name for p in kept.iterdir()) == ["good.ipynb"]
    ours = nbformat.read(kept / "good.ipynb", as_version=4)
    nbformat.validate(ours)
    reference = nbformat.read(src / "good.ipynb", as_version=4)
    NotebookClient(reference, timeout=60, kernel_name="python3").execute()
    assert outputs(ours) == outputs(reference)
    assert [o.output_type for o in ours.cells[3].outputs] == []          # "x + 1;" shows nothing
    ran = ours.metadata["zfcore"]["executed"]
    assert ran["by"] == "nbval" and ran["wall_s"] > 0 and ran["kernel_cpu_s"] > 0


def test_builder_reuses_a_current_copy_and_refuses_a_stale_or_missing_one(tmp_path):
    chapters, kept = tmp_path / "notebooks", tmp_path / "kept"
    chapters.mkdir(), kept.mkdir()
    nb = notebook("a = 1", "a")
    nb.cells[2].metadata["zfcore"] = {"label": "tbl-a", "caption": "A table."}
    nbformat.write(nb, chapters / "01-a.ipynb")
    done = notebook("a = 1", "a")
    done.cells[2].metadata = dict(nb.cells[2].metadata, execution={"shell.execute_reply": "t"})
    nbformat.write(done, kept / "01-a.ipynb")
    assert build.reuse(chapters / "01-a.ipynb", kept).cells[2].source == "a"
    nb.cells[2].metadata["zfcore"]["caption"] = "Another caption."          # edited since
    nbformat.write(nb, chapters / "01-a.ipynb")
    with pytest.raises(ValueError, match="another version of 01-a.ipynb"):
        build.reuse(chapters / "01-a.ipynb", kept)
    nbformat.write(notebook("b = 2"), chapters / "02-b.ipynb")
    with pytest.raises(FileNotFoundError, match="no executed copy of 02-b.ipynb"):
        build.reuse(chapters / "02-b.ipynb", kept)
    prose = new_notebook(cells=[new_markdown_cell("# References")])       # nothing for nbval to run
    nbformat.write(prose, chapters / "91-refs.ipynb")
    assert build.reuse(chapters / "91-refs.ipynb", kept).cells[0].source == "# References"


def test_builder_takes_the_atlas_chapter_5_made_instead_of_scanning_again(tmp_path, monkeypatch):
    import json

    from zfcore.viz import atlas

    made = tmp_path / "made"
    made.mkdir()
    (made / atlas.MARK).write_text(json.dumps({"layers": {"conv1": {"features": 32}, "conv2": {"features": 64}},
                                               "source": {"count": 10000}}))
    (made / "index.html").write_text("the atlas chapter 5 made")
    monkeypatch.setattr(atlas, "embedded_atlas", lambda *a, **k: pytest.fail("scanned again"))
    shows = build.build_atlas(tmp_path / "out", made)
    assert (tmp_path / "out" / "index.html").read_text() == "the atlas chapter 5 made"
    assert shows == "all 96 conv features of the embedded model over the 10,000 test images"


def test_parallel_execution_holds_each_kernel_to_its_cores_and_runs_quoting_chapters_last(tmp_path):
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores")
    held = os.sched_getaffinity(0)           # under make test's xdist this worker is held to one core
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    try:
        _two_kernels_at_once(tmp_path)
    finally:
        os.sched_setaffinity(0, held)


def _two_kernels_at_once(tmp_path):
    import os

    log = tmp_path / "log.txt"
    probe = ("import os, time\nt0 = time.time(); time.sleep(3)\n"
             "with open({log!r}, 'a') as f:\n"
             "    f.write(f'{name} {{t0}} {{time.time()}} {{len(os.sched_getaffinity(0))}} "
             "{{os.environ.get(\"OPENBLAS_NUM_THREADS\")}} {{os.environ.get(\"X\")}}\\n')")
    paths = []
    for name, extra in (("01-a", ""), ("02-b", ""), ("03-c", "# findings.load( is what makes it wait\n")):
        nbformat.write(notebook(extra + probe.format(log=str(log), name=name)), tmp_path / f"{name}.ipynb")
        paths.append(tmp_path / f"{name}.ipynb")
    done = build.execute_all(paths, 60, jobs=2, extra_env={"X": "given"})
    assert [p.name for p, _ in done] == [p.name for p in paths]
    runs = {w[0]: (float(w[1]), float(w[2]), int(w[3]), w[4], w[5])
            for w in (line.split() for line in log.read_text().splitlines())}
    half = len(os.sched_getaffinity(0)) // 2
    assert all(r[2] == half and r[3] == str(half) and r[4] == "given" for r in runs.values())
    assert runs["01-a"][0] < runs["02-b"][1] and runs["02-b"][0] < runs["01-a"][1]      # at once
    assert runs["03-c"][0] >= max(runs["01-a"][1], runs["02-b"][1])                    # after both
