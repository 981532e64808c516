"""The report conventions as pure functions on notebooks (no execution, no files written).

- chapters: ``NN-title.ipynb``; the number comes from the file name (01-89 numbered, 00 and 90-99 not),
  the title from the first ``# Title`` line (a hand-written leading "3." or "A." is dropped);
- cell tags: ``remove-cell`` (dropped), ``hide-input`` (output shown, code not);
- ``cell.metadata.zfcore = {"label": "fig-x" | "tbl-x", "caption": "..."}``: numbered across the report;
- in prose (markdown cells, ``text/markdown`` outputs, captions): ``@fig-x`` / ``@tbl-x`` become
  "Figure N" / "Table N", ``[@key]`` / ``[@a; @b]`` become author-year links to the references chapter
  ("(Zeiler & Fergus, 2014)"), a bare ``@key`` of the bibliography a narrative one ("Zeiler & Fergus
  (2014)"),
  and links to ``NN-title.ipynb`` become links to that chapter;
- widget views are dropped; an output that also carries a static frame (image/png) and
  ``metadata.zfcore.controls`` (see ``zfcore.viz.widgets.explorer``) keeps the frame and its controls.

Every unknown citation key, figure/table label or chapter link raises :class:`ReportError` naming the
chapter, before anything is written.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import nbformat

import bib

NAME = re.compile(r"^(\d\d)-[\w-]+$")
HAND_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[A-Z]\.)\s+")
REF = re.compile(r"@((?:fig|tbl)-[\w-]+)")
CITE = re.compile(r"\[(@[\w:.-]+(?:\s*;\s*@[\w:.-]+)*)\]")
NARRATIVE = re.compile(r"(?<![\w@\[/.-])@([A-Za-z][\w:.-]*\w)")
CHAPTER_LINK = re.compile(r"\]\((\d\d-[\w-]+)\.ipynb(#[\w-]+)?\)")
CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.S)
LABEL = re.compile(r"^(fig|tbl)-[\w-]+$")
WIDGET = "application/vnd.jupyter.widget-view+json"
KIND = {"fig": "Figure", "tbl": "Table"}


class ReportError(ValueError):
    """A chapter breaks a report convention (unknown key or label, duplicate label ...)."""


@dataclass
class Chapter:
    stem: str                    # "03-deconvnet-assembled"
    nb: nbformat.NotebookNode    # executed (or not) notebook
    title: str = ""
    number: str | None = None    # "3", or None for front and back matter
    extra: dict = field(default_factory=dict)   # {fmt: cells} appended by the builder (references)

    def __post_init__(self):
        if not NAME.match(self.stem):
            raise ReportError(f"{self.stem}: chapter files are named NN-title.ipynb")
        n = int(self.stem[:2])
        self.number = str(n) if 1 <= n < 90 else None
        self.title = self.title or title_of(self.nb, self.stem)

    @property
    def display(self) -> str:
        return f"{self.number}. {self.title}" if self.number else self.title

    @property
    def anchor(self) -> str:
        return f"chapter-{self.stem[:2]}"


def title_of(nb, fallback: str) -> str:
    """The first ``# Title`` of the notebook, without a hand-written chapter number."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return HAND_NUMBER.sub("", line[2:].strip())
    return fallback


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def apply_tags(nb):
    """Drop ``remove-cell`` cells; mark ``hide-input`` cells so that only their outputs render
    (nbconvert's ``metadata.transient.remove_source``). Returns a new notebook."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if "remove-cell" not in tags(c)]
    for c in nb.cells:
        if c.cell_type == "code" and "hide-input" in tags(c):
            c.metadata["transient"] = {"remove_source": True}
    return nb


def outside_code(text: str, fn) -> str:
    """Apply ``fn`` to the parts of Markdown ``text`` outside code spans and fenced blocks."""
    parts = CODE.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def number_labels(chapters) -> dict[str, dict]:
    """{label: {"kind", "number", "text" ("Figure 3"), "stem"}} in reading order across chapters."""
    found, count = {}, {"fig": 0, "tbl": 0}
    for ch in chapters:
        for cell in ch.nb.cells:
            meta = cell.get("metadata", {}).get("zfcore", {})
            if "label" not in meta:
                continue
            lab = meta["label"]
            if cell.cell_type != "code" or not LABEL.match(lab) or not meta.get("caption"):
                raise ReportError(f"{ch.stem}: label {lab!r} must be fig-<name> or tbl-<name> on a code "
                                  f"cell, with a caption")
            if lab in found:
                raise ReportError(f"{ch.stem}: label {lab!r} is already used in {found[lab]['stem']}")
            kind = lab[:3]
            count[kind] += 1
            found[lab] = {"kind": kind, "number": count[kind], "text": f"{KIND[kind]} {count[kind]}",
                          "stem": ch.stem}
    return found


@dataclass
class Context:
    """What substitution needs: labels, bibliography, chapter stems, and how to link."""
    labels: dict
    entries: dict
    stems: set
    refs_stem: str = "91-references"
    single_page: bool = False    # True: links are #anchors (report.html, PDF); False: page.html#anchor
    cited: set = field(default_factory=set)

    def link(self, stem: str, anchor: str | None = None) -> str:
        if self.single_page:
            return f"#{anchor or 'chapter-' + stem[:2]}"
        return f"{stem}.html" + (f"#{anchor}" if anchor else "")


def substitute(text: str, ctx: Context, where: str) -> str:
    """Replace cross-references, citations and chapter links in Markdown ``text`` (code untouched).
    Raises ReportError naming ``where`` on an unknown label, citation key or chapter."""
    def ref(m):
        lab = m.group(1).rstrip(".-")
        tail = m.group(1)[len(lab):]
        if lab not in ctx.labels:
            raise ReportError(f"{where}: unknown figure/table label @{lab} "
                              f"(known: {', '.join(sorted(ctx.labels)) or 'none'})")
        info = ctx.labels[lab]
        return f"[{info['text']}]({ctx.link(info['stem'], lab)}){tail}"

    def cite(m):
        keys = [k.strip()[1:] for k in m.group(1).split(";")]
        unknown = [k for k in keys if k not in ctx.entries]
        if unknown:
            raise ReportError(f"{where}: unknown citation key(s) {', '.join(unknown)} "
                              f"(not in report/references.bib)")
        ctx.cited.update(keys)
        links = [f"[{bib.label(ctx.entries[k])}]({ctx.link(ctx.refs_stem, 'ref-' + k)})" for k in keys]
        return "(" + "; ".join(links) + ")"

    def narrative(m):     # a bare @key names the authors in the sentence; other @words stay as they are
        key = m.group(1)
        if key not in ctx.entries:
            return m.group(0)
        ctx.cited.add(key)
        return f"[{bib.narrative(ctx.entries[key])}]({ctx.link(ctx.refs_stem, 'ref-' + key)})"

    def chapter(m):
        if m.group(1) not in ctx.stems:
            raise ReportError(f"{where}: link to a chapter that is not in the report: {m.group(1)}.ipynb")
        anchor = m.group(2)[1:] if m.group(2) else None
        return f"]({ctx.link(m.group(1), anchor)})"

    def all_three(part):
        return NARRATIVE.sub(narrative, CITE.sub(cite, REF.sub(ref, CHAPTER_LINK.sub(chapter, part))))

    return outside_code(text, all_three)


def renumber_heading(nb, ch: Chapter, fmt: str):
    """Replace the first ``# ...`` line by the chapter's display title, with its anchor."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i] = (f'<a id="{ch.anchor}"></a>\n\n# {ch.display}' if fmt == "html"
                            else f"# {ch.display} {{#{ch.anchor}}}")
                cell.source = "\n".join(lines)
                return


SECTION = re.compile(r"^## +(?:\d+(?:\.\d+)*\.? +)?(.*)$")


def number_sections(nb, ch: Chapter) -> None:
    """Number the ``## `` sections of a numbered chapter "N.1", "N.2" ... in reading order, in markdown
    cells and in ``text/markdown`` outputs alike (a number written by hand is replaced)."""
    if ch.number is None:
        return
    k = 0

    def renumber(text: str) -> str:
        nonlocal k
        lines, fenced = text.splitlines(), False
        for i, line in enumerate(lines):
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            m = None if fenced else SECTION.match(line)
            if m:
                k += 1
                lines[i] = f"## {ch.number}.{k} {m.group(1)}"
        return "\n".join(lines)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = renumber(cell.source)
        elif cell.cell_type == "code":
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "text/markdown" in data:
                    data["text/markdown"] = renumber(_text(data["text/markdown"]))


CODE_WIDTH = 105    # characters of a shown code line that fit the PDF's code block (7 pt mono)


def long_code_lines(cell, where: str) -> None:
    """Raise ReportError when a code cell the reader sees has lines wider than :data:`CODE_WIDTH`."""
    if cell.cell_type != "code" or cell.metadata.get("transient", {}).get("remove_source"):
        return
    wide = [n + 1 for n, line in enumerate(cell.source.splitlines()) if len(line) > CODE_WIDTH]
    if wide:
        raise ReportError(f"{where}: shown code has lines over {CODE_WIDTH} characters (lines "
                          f"{', '.join(map(str, wide[:5]))}); shorten them or hide the cell (hide-input)")


def figure_problems(cell, where: str) -> None:
    """Raise ReportError for the lines that ``zfcore.viz.page.check`` printed about a cell's figures."""
    from zfcore.viz.page import MARK

    found = [line for out in cell.get("outputs", []) if out.get("output_type") == "stream"
             for line in _text(out.get("text", "")).splitlines() if line.startswith(MARK)]
    if found:
        raise ReportError(f"{where}: a figure breaks the page rules (zfcore.viz.page):\n  "
                          + "\n  ".join(found))


def prepare(ch: Chapter, ctx: Context, fmt: str):
    """The chapter's notebook as the report shows it (``fmt`` "html" or "md"): tags applied, prose
    substituted, widgets made static, stderr dropped, captions recorded in ``metadata.zfcore``
    (and, for HTML, added as outputs). Returns a new notebook; ``ch.nb`` is not changed."""
    nb = apply_tags(ch.nb)
    nb.cells.extend(copy.deepcopy(ch.extra.get(fmt, [])))
    nb.metadata.pop("widgets", None)
    renumber_heading(nb, ch, fmt)
    number_sections(nb, ch)
    for k, cell in enumerate(nb.cells):
        where = f"{ch.stem}, cell {k}"
        figure_problems(cell, where)
        long_code_lines(cell, where)
        if cell.cell_type == "markdown":
            cell.source = substitute(cell.source, ctx, where)
            continue
        if cell.cell_type != "code":
            continue
        outs = []
        for out in cell.get("outputs", []):
            out = static_output(out, fmt)
            if out is None or (out.get("output_type") == "stream" and out.get("name") == "stderr"):
                continue
            if "data" in out and "text/markdown" in out["data"]:
                out["data"]["text/markdown"] = substitute(_text(out["data"]["text/markdown"]), ctx, where)
            outs.append(out)
        cell.outputs = outs
        meta = cell.metadata.get("zfcore", {})
        if "label" in meta:
            info = ctx.labels[meta["label"]]
            meta["caption_md"] = f"**{info['text']}.** " + substitute(meta["caption"], ctx, where)
            if fmt == "html":
                add_caption(cell, meta["label"], meta["caption_md"], info["kind"])
    return nb


def _text(v) -> str:
    return "".join(v) if isinstance(v, list) else v


def add_caption(cell, label: str, caption_md: str, kind: str):
    """Put the caption under a figure's outputs (above a table's) as an HTML output with the anchor."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = markdown2html_mistune(caption_md).strip()
    html = f'<div class="zf-caption zf-caption-{kind}" id="{label}">{body}</div>'
    out = nbformat.v4.new_output("display_data", data={"text/html": html})
    if kind == "tbl":
        cell.outputs.insert(0, out)
    else:
        cell.outputs.append(out)


def controls_text(controls) -> str:
    """One line describing the explorer's controls, e.g. 'image: 0 (0-199) · layer: conv5'."""
    parts = []
    for c in controls:
        rng = f" ({c['min']}–{c['max']})" if "min" in c else f" (of {', '.join(map(str, c['options']))})"
        parts.append(f"**{c['description']}**: {c['value']}{rng}")
    return "Controls (static first frame; live in Jupyter): " + " · ".join(parts)


def controls_html(controls) -> str:
    """The explorer's controls as disabled HTML form elements (what JupyterLab shows, frozen)."""
    from html import escape

    items = []
    for c in controls:
        if "min" in c:
            ctl = (f'<input type="range" disabled min="{c["min"]}" max="{c["max"]}" value="{c["value"]}">'
                   f'<output>{c["value"]}</output>')
        else:
            opts = "".join(f"<option{' selected' if o == c['value'] else ''}>{escape(str(o))}</option>"
                           for o in c["options"])
            ctl = f"<select disabled>{opts}</select>"
        items.append(f'<label class="zf-control">{escape(c["description"])} {ctl}</label>')
    return '<div class="zf-controls">' + "".join(items) + "</div>"


def static_output(out, fmt: str):
    """Drop widget views; keep a widget's static frame (+ controls). None: drop the output."""
    out = copy.deepcopy(out)
    data = out.get("data")
    if not data or WIDGET not in data:
        return out
    del data[WIDGET]
    controls = out.get("metadata", {}).get("zfcore", {}).get("controls")
    if "image/png" in data and controls is not None:
        png = _text(data["image/png"]).replace("\n", "")
        if fmt == "html":
            out["data"] = {"text/html": controls_html(controls)
                           + f'<img class="zf-frame" alt="explorer, first frame" '
                             f'src="data:image/png;base64,{png}">'}
        else:
            out["data"] = {"image/png": png, "text/markdown": controls_text(controls)}
        return out
    return out if set(data) - {"text/plain"} else None
