"""Build the technical report: execute the numbered notebooks and render them to HTML.

    python report/build.py [--out report/build] [--only 01 03] [--timeout 1200]

Each ``notebooks/NN-title.ipynb`` is executed top to bottom in a fresh kernel (working directory
``notebooks/``) on the embedded default model and the shipped Fashion-MNIST test split, so the build
needs no network. Outputs:

- ``<out>/NN-title.html``: one page per chapter, with previous/next links;
- ``<out>/index.html``: the contents, generated from the numbering and each notebook's first heading;
- ``<out>/report.html``: the whole report in one page (all chapters in order);
- ``<out>/notebooks/NN-title.ipynb``: the executed notebooks.

The report is built in a temporary folder and moved into place only when every notebook ran
cleanly: a failing chapter leaves the previous report untouched and exits non-zero.
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAME = re.compile(r"^(\d\d)-[\w-]+\.ipynb$")


def chapters(only=None):
    found = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if NAME.match(p.name))
    if only:
        found = [p for p in found if p.name[:2] in set(only)]
    return found


def title_of(nb, fallback):
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def nav_cell(prev, nxt, title):
    parts = ["[Contents](index.html)"]
    if prev:
        parts.insert(0, f"[← {prev[1]}]({prev[0]})")
    if nxt:
        parts.append(f"[{nxt[1]} →]({nxt[0]})")
    return nbformat.v4.new_markdown_cell(" · ".join(parts))


def execute(path, timeout):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "report" / "build"))
    ap.add_argument("--only", nargs="*", help="chapter numbers to build (default: all)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = ap.parse_args(argv)

    paths = chapters(args.only)
    if not paths:
        print(f"error: no numbered notebooks (NN-title.ipynb) in {NOTEBOOKS}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix="zfcore-report-"))
    (tmp / "notebooks").mkdir()
    executed, failures = [], []
    for p in paths:
        t0 = time.time()
        print(f"executing {p.name} ...", flush=True)
        try:
            nb = execute(p, args.timeout)
        except Exception as e:  # CellExecutionError carries the traceback text
            failures.append((p.name, str(e)))
            print(f"  FAILED: {p.name}\n{e}", file=sys.stderr)
            continue
        nbformat.write(nb, tmp / "notebooks" / p.name)
        executed.append((p, nb))
        print(f"  done in {time.time() - t0:.0f} s", flush=True)
    if failures:
        shutil.rmtree(tmp)
        print(f"error: {len(failures)} notebook(s) failed: {', '.join(n for n, _ in failures)}; "
              f"the previous report in {out} is untouched", file=sys.stderr)
        return 1

    exporter = HTMLExporter(template_name="lab")
    pages = [(p.with_suffix(".html").name, title_of(nb, p.stem)) for p, nb in executed]
    for i, (p, nb) in enumerate(executed):
        prev = pages[i - 1] if i else None
        nxt = pages[i + 1] if i + 1 < len(pages) else None
        page = nbformat.from_dict(nb)
        page.cells = [nav_cell(prev, nxt, pages[i][1])] + page.cells + [nav_cell(prev, nxt, pages[i][1])]
        body, _ = exporter.from_notebook_node(page, resources={"metadata": {"name": pages[i][1]}})
        (tmp / pages[i][0]).write_text(body, encoding="utf-8")

    whole = nbformat.v4.new_notebook()
    whole.metadata = executed[0][1].metadata
    toc = ["# zfcore: visualizing and understanding convolutional networks, from scratch", "",
           "A technical report in chapters; each chapter is a notebook in `notebooks/`.", ""]
    toc += [f"{i + 1}. {t}" for i, (_, t) in enumerate(pages)]
    whole.cells.append(nbformat.v4.new_markdown_cell("\n".join(toc)))
    for _, nb in executed:
        whole.cells.extend(nb.cells)
    body, _ = exporter.from_notebook_node(whole, resources={"metadata": {"name": "zfcore report"}})
    (tmp / "report.html").write_text(body, encoding="utf-8")

    items = "\n".join(f'<li><a href="{html.escape(f)}">{html.escape(t)}</a></li>' for f, t in pages)
    (tmp / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>zfcore report</title>"
        "<body style='font-family:sans-serif;max-width:50em;margin:2em auto'>"
        "<h1>zfcore: visualizing and understanding convolutional networks, from scratch</h1>"
        f"<p>The whole report on one page: <a href='report.html'>report.html</a>.</p><ol>{items}</ol>"
        "</body>", encoding="utf-8")

    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp), str(out))
    out.chmod(0o755)  # mkdtemp made it private
    print(f"report written to {out}/index.html and {out}/report.html ({len(pages)} chapters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
