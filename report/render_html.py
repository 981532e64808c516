"""HTML pages of the report: chapter pages, the whole report on one page, the contents page.

Offline by construction: the page template (``report/templates/zfreport``) loads no remote script
(no require.js, no widget manager, no mermaid) and takes MathJax 2.7 from ``<out>/mathjax``, a copy
of the one shipped by the PyPI package ``jupyter-server-mathjax``; figures are embedded as data URIs.
"""
from __future__ import annotations

import html
import shutil
from pathlib import Path

import nbformat

TEMPLATES = Path(__file__).resolve().parent / "templates"
# The parts of MathJax 2.7 the combined TeX / HTML-CSS configuration loads (about 3 MB of 12).
MATHJAX_PARTS = ["MathJax.js", "LICENSE", "config", "extensions", "jax/input", "jax/element",
                 "jax/output/HTML-CSS", "fonts/HTML-CSS/STIX-Web/woff"]
MATHJAX_SKIP = ["a11y"]


def copy_mathjax(dest: Path):
    """Copy the local MathJax into ``dest`` (e.g. ``<out>/mathjax``)."""
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    for part in MATHJAX_PARTS:
        s, d = src / part, dest / part
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns(*MATHJAX_SKIP))
        else:
            shutil.copy2(s, d)


def exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="zfreport", extra_template_basedirs=[str(TEMPLATES)],
                        exclude_input_prompt=True, exclude_output_prompt=True)


def nav_cell(prev, nxt) -> nbformat.NotebookNode:
    """Previous / contents / next links; ``prev`` and ``nxt`` are (href, title) or None."""
    parts = ['<a href="index.html">Contents</a>', '<a href="report.html">Whole report</a>']
    if prev:
        parts.insert(0, f'<a href="{prev[0]}">← {html.escape(prev[1])}</a>')
    if nxt:
        parts.append(f'<a href="{nxt[0]}">{html.escape(nxt[1])} →</a>')
    return nbformat.v4.new_markdown_cell('<div class="zf-nav">' + " · ".join(parts) + "</div>")


def render(nb, title: str, exp=None) -> str:
    exp = exp or exporter()
    body, _ = exp.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def chapter_pages(prepared, exp=None) -> dict[str, str]:
    """{file name: HTML} for every chapter; ``prepared`` is [(Chapter, notebook)] in order."""
    exp = exp or exporter()
    pages = [(f"{ch.stem}.html", ch.display) for ch, _ in prepared]
    out = {}
    for i, (ch, nb) in enumerate(prepared):
        prev = pages[i - 1] if i else None
        nxt = pages[i + 1] if i + 1 < len(pages) else None
        nb = nbformat.from_dict(nb)
        nb.cells = [nav_cell(prev, nxt)] + nb.cells + [nav_cell(prev, nxt)]
        out[pages[i][0]] = render(nb, ch.display, exp)
    return out


def whole_report(prepared, title: str, exp=None) -> str:
    """The whole report on one page: a contents list, then every chapter in order."""
    whole = nbformat.v4.new_notebook()
    whole.metadata = nbformat.from_dict(prepared[0][1].metadata)
    items = "".join(f'<li><a href="#{ch.anchor}">{_numbered(ch)}</a></li>' for ch, _ in prepared
                    if not ch.stem.startswith("00"))      # the front matter is this page's top
    contents = f'<div class="zf-contents"><h2>Contents</h2><ul style="list-style:none">{items}</ul></div>'
    first = prepared[0][1].cells
    # the contents list goes after the front matter's title block (before its first ## heading)
    cut = next((i for i, c in enumerate(first) if c.cell_type == "markdown"
                and c.source.lstrip().startswith("## ")), len(first))
    whole.cells = first[:cut] + [nbformat.v4.new_markdown_cell(contents)] + first[cut:]
    for _, nb in prepared[1:]:
        whole.cells.extend(nb.cells)
    return render(whole, title, exp)


def _numbered(ch) -> str:
    if ch.stem.startswith("00"):
        return "Title page, abstract and introduction"
    num = f"<b>{ch.number}</b>&nbsp;&nbsp;" if ch.number else ""
    return num + html.escape(ch.title)


def index_page(prepared, title: str, pdf: bool, atlas: str | None = None) -> str:
    """The contents page: chapter numbers from the file names, titles from the first headings; with
    ``atlas`` (what it shows), a link to the feature atlas in ``atlas/``."""
    items = "\n".join(f'<li><a href="{ch.stem}.html">{_numbered(ch)}</a></li>' for ch, _ in prepared)
    also = "<a href='report.html'>the whole report on one page</a>"
    if pdf:
        also += " and <a href='report.pdf'>as a PDF</a>"
    if atlas:
        also += (f". Browse <a href='atlas/index.html'>the feature atlas</a>: {html.escape(atlas)}, each "
                 "with its top images, their projections and patches")
    return ("<!doctype html><html lang='en'><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>"
            "<body style='font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.5'>"
            f"<h1>{html.escape(title)}</h1><p>Read {also}.</p><h2>Contents</h2>"
            f"<ul style='list-style:none;padding-left:0'>{items}</ul></body></html>")
