"""Unit tests of the report builder's pure functions, on tiny in-memory notebooks (no kernel, no files
except a temporary image folder)."""
from __future__ import annotations

import base64
import importlib.util
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # the builder's tests need the report extra
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

REPORT = Path(__file__).resolve().parents[2] / "report"
sys.path.insert(0, str(REPORT))
import bib  # noqa: E402
import conventions as cv  # noqa: E402
import render_pdf  # noqa: E402

# report/build.py by its path: a module named "build" may also exist in site-packages (pypa's build)
_spec = importlib.util.spec_from_file_location("zfcore_report_build", REPORT / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

ENTRIES = bib.parse("""
@inproceedings{zeiler2014, author = {Zeiler, Matthew D. and Fergus, Rob}, title = {Visualizing},
  booktitle = {ECCV}, year = {2014}}
@misc{solo, author = {{huybery}}, title = {A {GitHub} repo}, year = 2018, url = {https://example.org/x}}
@article{many, author = {Adebayo, Julius and Gilmer, Justin and Kim, Been}, title = "Sanity",
  journal = {NeurIPS}, year = {2018}, pages = {1--9}}
""")


def png(width=180, height=90, dpi=None) -> str:
    """A valid grey PNG of the given size, base64 (hand-built: signature, IHDR, pHYs when ``dpi`` is
    given, IDAT, IEND)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    phys = chunk(b"pHYs", struct.pack(">IIB", round(dpi / 0.0254), round(dpi / 0.0254), 1)) if dpi else b""
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + phys + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()


def chapter(stem, *cells):
    return cv.Chapter(stem, new_notebook(cells=list(cells)))


def figure_cell(label, caption, *outputs):
    c = new_code_cell("plot()", outputs=list(outputs) or [new_output("display_data", data={"image/png": png()})])
    c.metadata["zfcore"] = {"label": label, "caption": caption}
    return c


def ctx(chapters, single_page=True):
    return cv.Context(cv.number_labels(chapters), ENTRIES, {c.stem for c in chapters}, "91-references",
                      single_page)


# ---- bibliography --------------------------------------------------------------------------------

def test_author_year_labels_one_two_and_many_authors():
    assert bib.label(ENTRIES["zeiler2014"]) == "Zeiler & Fergus, 2014"
    assert bib.label(ENTRIES["solo"]) == "huybery, 2018"
    assert bib.label(ENTRIES["many"]) == "Adebayo et al., 2018"


def test_reference_line_has_initials_venue_pages_and_link():
    assert bib.reference(ENTRIES["zeiler2014"]) == "Zeiler, M. D., & Fergus, R. (2014). Visualizing. *ECCV*."
    assert bib.reference(ENTRIES["many"]) == ("Adebayo, J., Gilmer, J., & Kim, B. (2018). Sanity. "
                                              "*NeurIPS*, pp. 1–9.")
    assert bib.reference(ENTRIES["solo"]).endswith("A GitHub repo. <https://example.org/x>")


def test_project_bibliography_has_every_key_of_the_conventions():
    entries = bib.load(REPORT / "references.bib")
    keys = {"zeiler2014", "springenberg2015", "simonyan2014", "mahendran2016", "nie2018", "adebayo2018",
            "xiao2017", "huybery", "kokhlikyan2020", "krizhevsky2012", "simonyan2015"}
    assert keys <= set(entries)
    assert bib.label(entries["springenberg2015"]) == "Springenberg et al., 2015"
    assert bib.label(entries["mahendran2016"]) == "Mahendran & Vedaldi, 2016"


@pytest.mark.parametrize("text, problem", [
    ("@misc{a, author = {X}, title = {T}, year = {2000}}\n@misc{a, author = {Y}, title = {U}, year = 1}",
     "twice"),
    ("@misc{a, author = {X, title = T, year = 2000", "unbalanced"),
    ("@misc{a, title = {T}, year = {2000}}", "no author"),
])
def test_bad_bibliography_is_one_clear_error(text, problem):
    with pytest.raises(bib.BibError, match=problem):
        bib.parse(text)


# ---- chapters, tags, numbering -------------------------------------------------------------------

def test_chapter_number_from_file_name_title_without_hand_number():
    assert (chapter("03-x", new_markdown_cell("# 3. The deconvnet\ntext")).display == "3. The deconvnet")
    assert chapter("01-x", new_markdown_cell("# A. Forward components")).display == "1. Forward components"
    assert chapter("00-front", new_markdown_cell("# zfcore report")).number is None
    assert chapter("90-conclusion", new_markdown_cell("# Conclusion")).display == "Conclusion"
    with pytest.raises(cv.ReportError):
        chapter("intro", new_markdown_cell("# x"))


def test_sections_numbered_in_reading_order_hand_numbers_replaced():
    shown = new_code_cell("x", outputs=[new_output("display_data", data={"text/markdown": "## Summary\nok"})])
    ch = chapter("04-x", new_markdown_cell("# Four\n\n## 4.1 First\n\n```\n## not a heading\n```"),
                 new_markdown_cell("## Second\n### sub"), shown)
    nb = cv.prepare(ch, ctx([ch]), "md")
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## 4.1 First" in text and "## 4.2 Second" in text and "### sub" in text
    assert "## not a heading" in text and "4.1 4.1" not in text
    assert nb.cells[2].outputs[0]["data"]["text/markdown"].startswith("## 4.3 Summary")
    front = chapter("00-front", new_markdown_cell("# Front\n\n## Introduction"))
    assert "## Introduction" in cv.prepare(front, ctx([front]), "md").cells[0].source


def test_a_figure_that_breaks_the_page_rules_stops_the_build():
    from zfcore.viz.page import MARK
    bad = new_code_cell("plot()", outputs=[new_output("stream", name="stdout",
                                                      text=f"{MARK} figure 1: 9.10 in wide\n")])
    ch = chapter("02-x", new_markdown_cell("# X"), bad)
    with pytest.raises(cv.ReportError, match=r"(?s)02-x, cell 1: a figure breaks the page rules.*9.10 in wide"):
        cv.prepare(ch, ctx([ch]), "md")


def test_shown_code_wider_than_the_pdf_stops_the_build_hidden_code_does_not():
    wide = new_code_cell("x = 1  # " + "a" * 100)
    hidden = new_code_cell("y = 2  # " + "b" * 100)
    hidden.metadata["tags"] = ["hide-input"]
    ok = chapter("02-x", new_markdown_cell("# X"), hidden)
    cv.prepare(ok, ctx([ok]), "md")
    bad = chapter("02-x", new_markdown_cell("# X"), wide)
    with pytest.raises(cv.ReportError, match=r"02-x, cell 1: shown code has lines over 105 characters \(lines 1\)"):
        cv.prepare(bad, ctx([bad]), "md")


def test_printed_width_from_the_png_resolution(tmp_path):
    assert render_pdf.png_dpi(base64.b64decode(png(dpi=150))) == pytest.approx(150, abs=0.05)
    assert render_pdf.png_dpi(base64.b64decode(png())) == render_pdf.PX_PER_INCH
    md = render_pdf.image(png(width=975, dpi=150), "a.png", tmp_path)      # 6.5 in: the text width
    assert "width=100%" in md
    assert "width=50.0%" in render_pdf.image(png(width=975, dpi=300), "b.png", tmp_path)


def test_tags_remove_cell_and_hide_input():
    keep, hide, drop = new_code_cell("a"), new_code_cell("b"), new_code_cell("c")
    hide.metadata["tags"], drop.metadata["tags"] = ["hide-input"], ["remove-cell"]
    nb = cv.apply_tags(new_notebook(cells=[keep, hide, drop]))
    assert [c.source for c in nb.cells] == ["a", "b"]
    assert "transient" not in nb.cells[0].metadata
    assert nb.cells[1].metadata["transient"] == {"remove_source": True}


def test_figures_and_tables_numbered_separately_in_reading_order():
    chs = [chapter("01-a", figure_cell("fig-a", "A"), figure_cell("tbl-t", "T")),
           chapter("02-b", figure_cell("fig-b", "B"))]
    labels = cv.number_labels(chs)
    assert {k: (v["text"], v["stem"]) for k, v in labels.items()} == {
        "fig-a": ("Figure 1", "01-a"), "tbl-t": ("Table 1", "01-a"), "fig-b": ("Figure 2", "02-b")}


@pytest.mark.parametrize("label, caption, match", [("fig-a", "again", "already used in 01-a"),
                                                   ("figure-x", "c", "fig-<name>"), ("fig-c", "", "caption")])
def test_bad_labels_are_errors_naming_the_chapter(label, caption, match):
    chs = [chapter("01-a", figure_cell("fig-a", "A")), chapter("02-b", figure_cell(label, caption))]
    with pytest.raises(cv.ReportError, match=match) as e:
        cv.number_labels(chs)
    assert "02-b" in str(e.value)


# ---- substitution --------------------------------------------------------------------------------

def test_cross_references_single_page_and_per_page_links():
    chs = [chapter("01-a", figure_cell("fig-a", "A")), chapter("02-b", figure_cell("tbl-t", "T"))]
    text = "See @fig-a and @tbl-t."
    assert cv.substitute(text, ctx(chs), "x") == "See [Figure 1](#fig-a) and [Table 1](#tbl-t)."
    assert cv.substitute(text, ctx(chs, False), "x") == ("See [Figure 1](01-a.html#fig-a) and "
                                                         "[Table 1](02-b.html#tbl-t).")


def test_citations_author_year_linked_to_the_references():
    c = ctx([chapter("01-a")])
    out = cv.substitute("as shown [@zeiler2014], also [@many; @solo].", c, "x")
    assert out == ("as shown ([Zeiler & Fergus, 2014](#ref-zeiler2014)), also "
                   "([Adebayo et al., 2018](#ref-many); [huybery, 2018](#ref-solo)).")
    assert c.cited == {"zeiler2014", "many", "solo"}
    c = ctx([chapter("01-a")], single_page=False)
    assert "(91-references.html#ref-zeiler2014)" in cv.substitute("[@zeiler2014]", c, "x")


def test_narrative_citation_and_other_at_words():
    c = ctx([chapter("01-a")])
    out = cv.substitute("@zeiler2014 showed it; mail me@example.org, see @property", c, "x")
    assert out == ("[Zeiler & Fergus (2014)](#ref-zeiler2014) showed it; mail me@example.org, see @property")
    assert c.cited == {"zeiler2014"}


def test_code_is_left_alone():
    text = "`[@nokey]` and `@fig-none`\n```\nx = [@nokey] @fig-none\n```\n"
    assert cv.substitute(text, ctx([chapter("01-a")]), "x") == text


def test_unknown_key_label_or_chapter_is_an_error_naming_the_chapter():
    c = ctx([chapter("01-a", figure_cell("fig-a", "A"))])
    with pytest.raises(cv.ReportError, match=r"04-x, cell 2: unknown citation key\(s\) nobody"):
        cv.substitute("see [@zeiler2014; @nobody]", c, "04-x, cell 2")
    with pytest.raises(cv.ReportError, match="04-x, cell 3: unknown figure/table label @fig-b"):
        cv.substitute("see @fig-b", c, "04-x, cell 3")
    with pytest.raises(cv.ReportError, match="not in the report: 07-z.ipynb"):
        cv.substitute("see [chapter 7](07-z.ipynb)", c, "x")


def test_chapter_links_become_pages_or_anchors():
    chs = [chapter("01-a"), chapter("03-b")]
    assert cv.substitute("[ch](03-b.ipynb)", ctx(chs), "x") == "[ch](#chapter-03)"
    assert cv.substitute("[ch](03-b.ipynb#s)", ctx(chs, False), "x") == "[ch](03-b.html#s)"


# ---- prepare: outputs, captions, widgets ----------------------------------------------------------

def test_prepare_substitutes_markdown_outputs_and_places_captions():
    md_out = new_output("display_data", data={"text/markdown": "as in @tbl-t [@solo]", "text/plain": "x"})
    err = new_output("stream", name="stderr", text="warning\n")
    fig = figure_cell("fig-a", "Caption with $x^2$ [@zeiler2014].")
    tbl = figure_cell("tbl-t", "A table.", new_output("display_data", data={"text/markdown": "|a|\n|-|\n|1|"}))
    prose = new_code_cell("show()", outputs=[md_out, err])
    ch = chapter("01-a", new_markdown_cell("# 1. Title\nsee @fig-a"), fig, tbl, prose)
    nb = cv.prepare(ch, ctx([ch]), "html")
    assert nb.cells[0].source.startswith('<a id="chapter-01"></a>\n\n# 1. Title\nsee [Figure 1](#fig-a)')
    cap = nb.cells[1].outputs[-1]["data"]["text/html"]
    assert 'id="fig-a"' in cap and "<strong>Figure 1.</strong> Caption with $x^2$" in cap
    assert "#ref-zeiler2014" in cap
    assert 'id="tbl-t"' in nb.cells[2].outputs[0]["data"]["text/html"]          # tables: caption above
    assert [o.get("name") for o in nb.cells[3].outputs] == [None]                  # stderr dropped
    assert nb.cells[3].outputs[0]["data"]["text/markdown"] == "as in [Table 1](#tbl-t) ([huybery, 2018](#ref-solo))"
    assert ch.nb.cells[1].outputs[-1]["data"].keys() == {"image/png"}             # input untouched
    md = cv.prepare(ch, ctx([ch]), "md")
    assert md.cells[0].source.startswith("# 1. Title {#chapter-01}")
    assert md.cells[1].metadata["zfcore"]["caption_md"].startswith("**Figure 1.** Caption")


def test_widget_views_dropped_static_frame_and_controls_kept():
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    controls = [{"description": "image", "value": 0, "min": 0, "max": 9},
                {"description": "rule", "value": "guided", "options": ["deconvnet", "guided"]}]
    explorer = new_output("display_data", data={cv.WIDGET: view, "image/png": png(), "text/plain": "VBox()"},
                          metadata={"zfcore": {"controls": controls}})
    bare = new_output("display_data", data={cv.WIDGET: view, "text/plain": "IntSlider()"})
    nb = new_notebook(cells=[new_code_cell("explorer()", outputs=[explorer, bare])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    ch = cv.Chapter("05-x", nb)
    html = cv.prepare(ch, ctx([ch]), "html")
    assert "widgets" not in html.metadata
    (out,) = html.cells[0].outputs
    page = out["data"]["text/html"]
    assert '<img class="zf-frame"' in page and "data:image/png;base64," in page
    assert '<input type="range" disabled min="0" max="9" value="0">' in page
    assert "<option selected>guided</option>" in page
    (out,) = cv.prepare(ch, ctx([ch]), "md").cells[0].outputs
    assert set(out["data"]) == {"image/png", "text/markdown"}
    assert "**image**: 0 (0–9)" in out["data"]["text/markdown"]


# ---- assembling and the PDF pre-pass -------------------------------------------------------------

def test_references_chapter_created_and_lists_only_cited_entries_sorted():
    nb = new_notebook(cells=[new_markdown_cell("# 1. A\n[@zeiler2014] and [@many]")])
    chapters, _, _ = build.assemble([(Path("01-a.ipynb"), nb)], ENTRIES)
    assert [c.stem for c in chapters] == ["01-a", "91-references"]
    (cell,) = chapters[1].extra["html"]
    lines = cell.source.splitlines()
    assert [line.split('"')[1] for line in lines] == ["ref-many", "ref-zeiler2014"]   # Adebayo < Zeiler
    assert chapters[1].extra["md"][0].source.startswith("- [Adebayo, J.")


def test_assemble_fails_on_an_unknown_key_naming_the_chapter():
    nb = new_notebook(cells=[new_markdown_cell("# B\n\nsee [@nokey]")])
    with pytest.raises(cv.ReportError, match="02-b, cell 0: unknown citation key"):
        build.assemble([(Path("02-b.ipynb"), nb)], ENTRIES)


def test_pdf_markdown_writes_images_and_captions(tmp_path):
    fig = figure_cell("fig-a", "Cap.")
    shown = new_code_cell("x = 1", outputs=[new_output("stream", name="stdout", text="1\n")])
    hidden = new_code_cell("secret()", outputs=[new_output("execute_result", data={"text/plain": "42"},
                                                           execution_count=1)])
    hidden.metadata["tags"] = ["hide-input"]
    (tmp_path / "img").mkdir()
    ch = chapter("01-a", new_markdown_cell("# A"), fig, shown, hidden)
    nb = cv.prepare(ch, ctx([ch]), "md")
    text = render_pdf.to_markdown([(ch, nb)], "T", tmp_path / "img")
    assert "![**Figure 1.** Cap.](img/01-a-1-0.png){#fig-a width=30.8%}" in text   # 180 px at 90 px/in
    assert (tmp_path / "img" / "01-a-1-0.png").exists()
    assert "```python\nx = 1\n```\n\n```\n1\n```" in text
    assert "secret" not in text and "```\n42\n```" in text


def test_pdf_long_runs_in_code_broken_and_links_to_absent_chapters_unlinked():
    md = "prose " + "y" * 200 + "\n\n```\n" + "-" * 200 + "\nok\n```\n"
    out = render_pdf.break_long_runs(md)
    assert "y" * 200 in out                                   # prose is left to the typesetter
    block = out.split("```\n")[1]
    assert block.splitlines() == ["-" * 105, "-" * 95, "ok"]
    typ = "= Title\n<chapter-01>\nsee #link(<chapter-01>)[here] and #link(<chapter-07>)[there]\n"
    assert render_pdf.unlink_missing(typ).endswith("#link(<chapter-01>)[here] and #[there]\n")


# ---- where the report goes: nothing of the user's deleted, the report's own files replaced ----------
def test_out_that_is_a_file_or_holds_other_files_is_refused_before_any_work(tmp_path):
    f = tmp_path / "somefile.txt"
    f.write_text("x")
    with pytest.raises(build.OutError, match="is a file, not a folder"):
        build.check_out(f, force=False)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(build.OutError, match=r"did not write \(notes.txt\).*--force"):
        build.check_out(keep, force=False)
    build.check_out(keep, force=True)                       # allowed, and ...
    new = tmp_path / "new"
    new.mkdir()
    (new / "index.html").write_text("new")
    (new / "notebooks").mkdir()
    build.place(new, keep)                                   # ... the user's file stays
    assert (keep / "notes.txt").read_text() == "mine" and (keep / "index.html").read_text() == "new"
    assert build.main(["--out", str(f), "--only", "00"]) == 2 and f.read_text() == "x"
    assert build.main(["--out", str(keep / "notes.txt"), "--only", "00"]) == 2


def test_an_earlier_report_is_replaced_whole(tmp_path):
    out = tmp_path / "rep"
    (out / "notebooks").mkdir(parents=True)
    for name in ("index.html", "05-old-chapter.html", "report.pdf"):
        (out / name).write_text("old")
    build.check_out(out, force=False)                        # only the builder's files: no --force needed
    new = tmp_path / "tmp"
    new.mkdir()
    (new / "index.html").write_text("new")
    build.place(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["index.html"] and not new.exists()


def test_an_out_that_cannot_be_written_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(build.OutError, match="cannot be written"):
            build.check_out(ro / "rep", force=False)
    finally:
        ro.chmod(0o755)
