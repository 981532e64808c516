"""Build the technical report: execute the numbered notebooks, render them to HTML and PDF.

    python report/build.py [--out report/build] [--only 01 03] [--timeout 1200] [--no-pdf]
                           [--no-atlas] [--from-executed DIR] [--jobs N]

Each ``notebooks/NN-title.ipynb`` is executed top to bottom in a fresh kernel (working directory
``notebooks/``) on the embedded model and the shipped Fashion-MNIST test split, so the build needs no
network. The conventions (tags, figure/table labels and captions, ``@fig-``/``@tbl-`` references,
``[@key]`` citations from ``report/references.bib``) are in ``report/conventions.py`` and docs/report.md.
Outputs, all self-contained (no request leaves the machine when they are opened):

- ``<out>/index.html``: the contents; ``<out>/NN-title.html``: one page per chapter;
- ``<out>/report.html``: the whole report on one page; ``<out>/report.pdf``: the same as a PDF
  (pandoc to typst, both installed by pip); ``<out>/mathjax/``: the local MathJax;
- ``<out>/notebooks/NN-title.ipynb``: the executed notebooks;
- ``<out>/atlas/``: the embedded model's feature atlas (``zfcore.viz.atlas.embedded_atlas``), linked from
  the contents, when every chapter is built (not with ``--only`` or ``--no-atlas``). Chapter 5 makes it
  from its own scan of the test set when ``$ZFCORE_ATLAS_OUT`` names a folder, which the builder sets for
  the kernels (``make test`` sets it for nbval, and ``--from-executed DIR`` takes ``DIR/atlas``);
  otherwise the builder scans the test set again.

The sources are checked first (an unknown label or citation key fails at once, naming the chapter),
then executed, then rendered into a temporary folder that is moved into place only when everything
succeeded: a failing chapter leaves the previous report untouched and exits non-zero.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bib  # noqa: E402
import conventions as cv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BIB = ROOT / "report" / "references.bib"
REFS = "91-references"
DEFAULT_TITLE = "zfcore report"


def find_chapters(only=None) -> list[Path]:
    found = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if cv.NAME.match(p.stem))
    return [p for p in found if p.name[:2] in set(only)] if only else found


def execute(path: Path, timeout: int, threads: int | None = None, extra_env=None):
    """Execute ``path`` in a fresh kernel; ``threads``: the kernel's BLAS, OpenMP and torch threads
    (default: theirs, i.e. every core); ``extra_env``: more environment variables for the kernel."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != ATLAS_ENV} | dict(extra_env or {})
    if threads:
        env.update({v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(env=env)
    return nb


def reads_findings(path: Path) -> bool:
    """Whether the chapter quotes other chapters' findings (``findings.load``): it runs after them."""
    return "findings.load(" in path.read_text(encoding="utf-8")


def reuse(path: Path, folder: Path):
    """The executed copy of ``path`` in ``folder``; refused when its cells are not the current ones. A
    notebook without code cells (nbval has nothing of it to keep) is itself."""
    now = nbformat.read(path, as_version=4)
    if not any(c.cell_type == "code" for c in now.cells):
        return now
    if not (folder / path.name).is_file():
        raise FileNotFoundError(f"{folder / path.name}: no executed copy of {path.name}")
    nb = nbformat.read(folder / path.name, as_version=4)
    cells = lambda n: [(c.cell_type, c.source, {k: v for k, v in c.metadata.items() if k != "execution"})
                       for c in n.cells]
    if cells(nb) != cells(now):
        raise ValueError(f"{folder / path.name} was executed from another version of {path.name}: "
                         f"execute it again")
    return nb


def _child_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: the kernels, once shut down. On a
    shared machine this, not the wall time, says what a chapter costs."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def execute_all(paths, timeout, source=None, jobs=1, extra_env=None):
    """[(path, executed notebook)]; ``source``: a folder of already executed notebooks to reuse.
    ``jobs`` > 1: that many chapters at once, each kernel on its share of the cores (it then runs as
    many threads) and chapters that quote findings after all the others. Raises RuntimeError listing
    the chapters that failed (after trying all of them)."""
    if jobs > 1 and not source and len(paths) > 1:
        return _execute_parallel(paths, timeout, jobs, extra_env)
    from tqdm import tqdm

    done, failures = [], []
    bar = tqdm(paths, desc="executing", unit="chapter", file=sys.stdout)
    for p in bar:
        bar.set_postfix_str(p.stem)
        t0, c0 = time.time(), _child_cpu()
        try:
            nb = reuse(p, Path(source)) if source else execute(p, timeout, extra_env=extra_env)
        except Exception as e:  # CellExecutionError carries the traceback text
            failures.append(p.name)
            tqdm.write(f"FAILED: {p.name}\n{e}", file=sys.stderr)
            continue
        done.append((p, nb))
        if source:
            ran = nb.metadata.get("zfcore", {}).get("executed")
            tqdm.write(f"  {p.stem}: executed by {ran['by']} in {ran['wall_s']:.0f} s, kernel CPU "
                       f"{ran['kernel_cpu_s']:.0f} s" if ran else f"  {p.stem}: reused")
        else:
            tqdm.write(f"  {p.stem}: {time.time() - t0:.0f} s, kernel CPU {_child_cpu() - c0:.0f} s")
    if failures:
        raise RuntimeError(f"{len(failures)} notebook(s) failed: {', '.join(failures)}")
    return done


def _execute_parallel(paths, timeout, jobs, extra_env):
    """execute_all's ``jobs`` > 1: a pool of kernels; each chapter's wall time, the kernels' CPU total."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    cpus = sorted(os.sched_getaffinity(0))
    jobs = min(jobs, len(cpus))
    slots = queue.Queue()
    for j in range(jobs):                     # each kernel on its own cores: it runs as many threads
        slots.put(set(cpus[j::jobs]))
    big_first = sorted(paths, key=lambda p: -p.stat().st_size)      # the largest sources run longest
    first = [p for p in big_first if not reads_findings(p)]
    last = [p for p in big_first if reads_findings(p)]
    print(f"executing {len(paths)} chapters, {jobs} at once, each kernel on {len(cpus) // jobs} core(s)",
          flush=True)
    t_all, c0 = time.time(), _child_cpu()
    results, failures = {}, []

    def one(p):
        t0, mine = time.time(), slots.get()
        try:
            os.sched_setaffinity(0, mine)     # this thread's cores, inherited by the kernel it starts
            results[p] = execute(p, timeout, len(mine), extra_env)
            print(f"  {p.stem}: {time.time() - t0:.0f} s", flush=True)
        except Exception as e:  # CellExecutionError carries the traceback text
            failures.append(p.name)
            print(f"FAILED: {p.name}\n{e}", file=sys.stderr, flush=True)
        finally:
            slots.put(mine)

    for group in (first, last):
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, group))
    print(f"  all chapters: {time.time() - t_all:.0f} s, kernels' CPU {_child_cpu() - c0:.0f} s", flush=True)
    if failures:
        raise RuntimeError(f"{len(failures)} notebook(s) failed: {', '.join(sorted(failures))}")
    return [(p, results[p]) for p in paths]


def references_cells(entries, cited, fmt):
    """The references chapter's generated list: the cited entries, sorted by author and year."""
    keys = sorted(cited, key=lambda k: bib.sort_key(entries[k]))
    if fmt == "html":
        items = [f'- <a id="ref-{k}"></a>{bib.reference(entries[k])}' for k in keys]
    else:
        items = [f"- [{bib.reference(entries[k])}]{{#ref-{k}}}" for k in keys]
    return [nbformat.v4.new_markdown_cell("\n".join(items) or "*(No work is cited.)*")]


def assemble(executed, entries, others=()):
    """Chapters in order, the references chapter filled (and created when the notebook is absent).
    ``others``: [(path, notebook)] of chapters left out by ``--only``, numbered and linkable but not
    rendered. Checks every convention once (raises ReportError); returns (chapters, labels, stems)."""
    chapters = [cv.Chapter(p.stem, nb) for p, nb in executed]
    if not any(ch.stem == REFS for ch in chapters):
        stub = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# References")])
        chapters.append(cv.Chapter(REFS, stub))
        chapters.sort(key=lambda ch: ch.stem)
    every = sorted(chapters + [cv.Chapter(p.stem, nb) for p, nb in others], key=lambda ch: ch.stem)
    labels = cv.number_labels(every)
    stems = {ch.stem for ch in every}
    ctx = context(stems, labels, entries, single_page=True)
    for ch in chapters:
        cv.prepare(ch, ctx, "md")
    refs = next(ch for ch in chapters if ch.stem == REFS)
    refs.extra = {fmt: references_cells(entries, ctx.cited, fmt) for fmt in ("html", "md")}
    return chapters, labels, stems


def context(stems, labels, entries, single_page):
    return cv.Context(labels, entries, stems, REFS, single_page)


ATLAS_ENV = "ZFCORE_ATLAS_OUT"     # where chapter 5 writes the atlas from its own scan, when set


def build_atlas(out: Path, made: Path | None = None) -> str:
    """The embedded model's feature atlas over the shipped test set (every conv feature, top 9) in
    ``out``: the one chapter 5 made from its scan in ``made`` (``$ZFCORE_ATLAS_OUT`` of this execution)
    when there is one, else built here. Returns what it shows, for the contents page."""
    import json

    from zfcore.viz import atlas

    t0 = time.time()
    if made is not None and (made / atlas.MARK).is_file():
        if made.resolve() != out.resolve():
            shutil.copytree(made, out)
        meta, how = json.loads((out / atlas.MARK).read_text(encoding="utf-8")), "made by chapter 5"
    else:
        print("building the feature atlas ...", flush=True)
        meta, how = atlas.embedded_atlas(out), "built"
    n = sum(v["features"] for v in meta["layers"].values())
    count = meta["source"]["count"]
    print(f"  atlas: {n} features over {count:,} images, {how}, in {time.time() - t0:.0f} s", flush=True)
    return f"all {n} conv features of the embedded model over the {count:,} test images"


def render(chapters, labels, stems, entries, out: Path, pdf: bool, atlas: str | None = None):
    """Write the HTML pages (and the PDF) of the assembled chapters into ``out``."""
    import render_html

    title = chapters[0].title if chapters[0].stem.startswith("00") else DEFAULT_TITLE
    pages = context(stems, labels, entries, single_page=False)
    single = context(stems, labels, entries, single_page=True)
    exp = render_html.exporter()
    render_html.copy_mathjax(out / "mathjax")
    for name, body in render_html.chapter_pages([(ch, cv.prepare(ch, pages, "html"))
                                                 for ch in chapters], exp).items():
        (out / name).write_text(body, encoding="utf-8")
    whole = [(ch, cv.prepare(ch, single, "html")) for ch in chapters]
    (out / "report.html").write_text(render_html.whole_report(whole, title, exp), encoding="utf-8")
    (out / "index.html").write_text(render_html.index_page(whole, title, pdf, atlas), encoding="utf-8")
    if pdf:
        import render_pdf

        md = [(ch, cv.prepare(ch, single, "md")) for ch in chapters]
        render_pdf.build_pdf(md, labels, out / "report.pdf", title)


def sources(paths):
    return [(p, nbformat.read(p, as_version=4)) for p in paths]


OWN = re.compile(r"^(index\.html|report\.html|report\.pdf|\d\d-[\w-]+\.html|notebooks|mathjax|pdf-src|atlas)$")


class OutError(ValueError):
    """--out cannot take the report (a file, not writable, or holding files the builder did not write)."""


def check_out(out: Path, force: bool) -> None:
    """Before any work: ``out`` must be a folder (or not exist yet) that can be written, and hold nothing
    but an earlier report's files unless ``force`` (which then keeps those other files)."""
    if out.exists() and not out.is_dir():
        raise OutError(f"--out {out} is a file, not a folder: give a folder for the report")
    parent = out if out.is_dir() else next((a for a in out.parents if a.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutError(f"--out {out}: {parent} cannot be written")
    others = sorted(e.name for e in out.iterdir() if not OWN.match(e.name)) if out.is_dir() else []
    if others and not force:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise OutError(f"--out {out} holds files the report builder did not write ({shown}); choose an "
                       f"empty or new folder, or pass --force to write the report beside them")


def place(tmp: Path, out: Path) -> None:
    """Move the new report from ``tmp`` into ``out``: the builder's files of an earlier report are replaced
    (those this build did not write, e.g. other chapters, removed), anything else is left as it is."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if OWN.match(old.name):
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    for new in tmp.iterdir():
        shutil.move(str(new), str(out / new.name))
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "report" / "build"))
    ap.add_argument("--only", nargs="*", help="chapter numbers to build (default: all)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    ap.add_argument("--no-pdf", action="store_true", help="HTML only")
    ap.add_argument("--from-executed", metavar="DIR",
                    help="render the executed notebooks in DIR instead of executing them: an earlier "
                         "build's <out>/notebooks, or those nbval kept (report/keep_executed.py); a "
                         "copy whose cells differ from the current notebook's is refused")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="chapters executed at once, each kernel on its share of the cores (default: "
                         "2, or 1 on one core)")
    ap.add_argument("--no-atlas", action="store_true",
                    help="no feature atlas (it is built, into <out>/atlas, when every chapter is)")
    ap.add_argument("--force", action="store_true",
                    help="write into an --out that holds other files (they are kept; only the report's "
                         "own files are replaced)")
    args = ap.parse_args(argv)

    paths, every = find_chapters(args.only), find_chapters()
    if not paths:
        print(f"error: no numbered notebooks (NN-title.ipynb) in {NOTEBOOKS}", file=sys.stderr)
        return 2
    out, t0 = Path(args.out), time.time()
    try:
        check_out(out, args.force)
    except OutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="zfcore-report-"))
    try:
        entries = bib.load(BIB)
        others = sources(p for p in every if p not in paths)
        assemble(sources(paths), entries, others)     # fail fast: the conventions, before executing
        atlas_wanted = not (args.only or args.no_atlas)
        extra = {ATLAS_ENV: str(tmp / "atlas")} if atlas_wanted else {}    # for chapter 5's kernel
        executed = execute_all(paths, args.timeout, args.from_executed, max(1, args.jobs), extra)
        chapters, labels, stems = assemble(executed, entries, others)
        (tmp / "notebooks").mkdir()
        for p, nb in executed:
            nbformat.write(nb, tmp / "notebooks" / p.name)
        made = Path(args.from_executed) / "atlas" if args.from_executed else tmp / "atlas"
        shows = build_atlas(tmp / "atlas", made) if atlas_wanted else None
        print("rendering HTML" + ("" if args.no_pdf else " and PDF") + " ...", flush=True)
        render(chapters, labels, stems, entries, tmp, pdf=not args.no_pdf, atlas=shows)
    except (ValueError, RuntimeError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"error: {e}\nThe previous report in {out} is untouched.", file=sys.stderr)
        return 1
    new = not out.exists()
    place(tmp, out)
    if new:
        out.chmod(0o755)
    print(f"report written to {out}/index.html, report.html" + ("" if args.no_pdf else ", report.pdf")
          + f" ({len(chapters)} chapters, {len(labels)} figures and tables) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
