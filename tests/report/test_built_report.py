"""Tests of a built report: ``ZFCORE_REPORT_DIR`` names its folder (``make test`` builds one into a
scratch folder and sets it). Skipped when no built report is given.

- every HTML page: no remote script, stylesheet or image; the math is there in TeX for the local MathJax;
- a real browser (Debian's chromium, driven by playwright) opens report.html with every non-file request
  aborted: none is made, the math is typeset (no raw ``$...$`` left), the explorer's frame is an image;
- the PDF: a sane page count, every figure's image and every "Figure N." / "Table N." caption present.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from browser import offline_page

BUILT = os.environ.get("ZFCORE_REPORT_DIR")
pytestmark = pytest.mark.skipif(not BUILT, reason="no built report (set ZFCORE_REPORT_DIR; make test does)")
REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
RAW_MATH = re.compile(r"\$[^$\s][^$]*\$|\\\(|\\\[")


@pytest.fixture(scope="module")
def out() -> Path:
    path = Path(BUILT)
    if not (path / "report.html").exists():
        pytest.fail(f"ZFCORE_REPORT_DIR={path} has no report.html: build the report first")
    return path


@pytest.fixture(scope="module")
def soups(out):
    from bs4 import BeautifulSoup

    return {p.name: BeautifulSoup(p.read_text(encoding="utf-8"), "html.parser") for p in out.glob("*.html")}


@pytest.fixture(scope="module")
def captions(soups):
    """[(id, "Figure N." or "Table N.")] of the whole-report page, in order."""
    found = []
    for div in soups["report.html"].select("div.zf-caption"):
        strong = div.find("strong")
        found.append((div["id"], strong.get_text(strip=True) if strong else ""))
    return found


def test_every_page_is_there(out, soups):
    chapters = sorted(p.name for p in out.glob("[0-9][0-9]-*.html"))
    assert len(chapters) >= 6 and {"index.html", "report.html"} <= set(soups)
    links = {a["href"] for a in soups["index.html"].find_all("a")}
    assert set(chapters) <= links
    assert (out / "report.pdf").exists()


def test_no_remote_script_stylesheet_or_image(soups):
    bad = [(name, tag.name, tag.get(attr)) for name, soup in soups.items()
           for tag, attr in [(t, "src") for t in soup.find_all(["script", "img", "iframe", "source"])]
           + [(t, "href") for t in soup.find_all("link")]
           if tag.get(attr) and REMOTE.match(tag[attr])]
    assert not bad, f"remote resources: {bad[:5]}"


def test_math_is_tex_for_a_local_mathjax(out, soups):
    for name, soup in soups.items():
        if name == "index.html":
            continue
        srcs = [s.get("src") for s in soup.find_all("script") if s.get("src")]
        assert srcs == ["mathjax/MathJax.js"], f"{name}: scripts {srcs}"
    assert (out / "mathjax" / "MathJax.js").exists()
    assert (out / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").exists()
    assert any((out / "mathjax" / "fonts" / "HTML-CSS" / "STIX-Web" / "woff").glob("*.woff"))
    text = soups["report.html"].get_text()
    assert "\\times" in text and "$$" in text       # TeX left for MathJax, inline and display


def test_figures_numbered_in_order_and_no_convention_left_raw(soups, captions):
    figs = [c for _, c in captions if c.startswith("Figure")]
    tbls = [c for _, c in captions if c.startswith("Table")]
    assert figs == [f"Figure {i}." for i in range(1, len(figs) + 1)] and len(figs) >= 8
    assert tbls == [f"Table {i}." for i in range(1, len(tbls) + 1)]
    for name, soup in soups.items():
        for code in soup.find_all(["pre", "code"]):
            code.decompose()
        text = soup.get_text()
        assert not re.search(r"@(fig|tbl)-\w|\[@\w", text), f"{name}: unreplaced reference or citation"
    refs = soups["91-references.html"].select("a[id^=ref-]")
    assert {a["id"] for a in refs} >= {"ref-zeiler2014", "ref-xiao2017"}


def test_report_in_a_browser_without_network(out):
    with offline_page() as (page, blocked, failed):
        page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
        page.wait_for_selector("html[data-mathjax=done]", state="attached", timeout=180_000)
        typeset = page.locator(".MathJax").count()
        text = page.evaluate("""() => { const b = document.body.cloneNode(true);
            b.querySelectorAll('pre, code, script, style')
             .forEach(e => e.remove()); return b.innerText; }""")
        frame = page.evaluate("""() => { const i = document.querySelector('img.zf-frame');
            return i && {w: i.naturalWidth, h: i.naturalHeight, src: i.src.slice(0, 21)}; }""")
        controls = page.locator(".zf-controls input[type=range], .zf-controls select").count()
    assert blocked == [], f"requests that would leave the machine: {blocked[:5]}"
    assert [u for u in failed if not u.startswith(("data:", "about:"))] == []
    assert typeset > 20, "MathJax typeset (almost) nothing"
    raw = RAW_MATH.findall(text)
    assert not raw, f"raw math left in the rendered text: {raw[:5]}"
    assert frame and frame["w"] > 100 and frame["h"] > 50 and frame["src"] == "data:image/png;base64"
    assert controls == 4


def test_pdf_pages_figures_and_captions(out, captions, tmp_path):
    pdfium = pytest.importorskip("pypdfium2")
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument(str(out / "report.pdf"))
    n = len(pdf)
    assert 20 <= n <= 400, f"{n} pages"
    images, text = 0, []
    for page in pdf:
        images += sum(1 for _ in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE], max_depth=3))
        text.append(page.get_textpage().get_text_range())
    text = re.sub(r"\s+", " ", " ".join(text))
    figures = [c for _, c in captions if c.startswith("Figure")]
    assert images >= len(figures), f"{images} images for {len(figures)} figures"
    missing = [c for _, c in captions if c not in text]
    assert not missing, f"captions missing from the PDF: {missing}"
    assert "Contents" in text and "References" in text
    for i in (0, 1, n // 2):                               # title page, contents, a middle page
        img = pdf[i].render(scale=0.5).to_pil().convert("L")
        img.save(tmp_path / f"page{i}.png")
        lo, hi = img.getextrema()
        assert hi - lo > 100, f"page {i + 1} looks blank"



# ---- the PDF as a reader sees it: length, figures whole and with their captions, no builder residue ----
TEXT_W_PT, MAX_H_PT = 16.6 / 2.54 * 72, 8.0 * 72   # the A4 text block (report/preamble.typ); viz.page height
DEV_LOG = re.compile(r"\bissue (?:#|no\.? ?)?\d+|\bsession\b|\bdeadline|\bengineers?\b|\bthrowaway\b|"
                     r"\bwork period|\bsprint\b", re.I)
RAW = re.compile(r"\[@|@fig-|@tbl-|```|\{=typst\}|\{#(?:fig|tbl)-|#figure\(|NBVAL|zfcore-figure-check")


@pytest.fixture(scope="module")
def pdf_pages(out):
    """[(page index, text, [(left, bottom, right, top) of each image], [(caption word, font size, box)])]."""
    pdfium = pytest.importorskip("pypdfium2")
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument(str(out / "report.pdf"))
    pages = []
    for i, page in enumerate(pdf):
        tp = page.get_textpage()
        text = tp.get_text_range()
        boxes = [obj.get_bounds() for obj in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE], max_depth=3)]
        caps = []
        for m in re.finditer(r"(?:Figure|Table) \d+\.", text):
            size = raw.FPDFText_GetFontSize(tp.raw, m.start())
            caps.append((m.group(0), size, tp.get_charbox(m.start())))
        pages.append((i, text, boxes, caps, page.get_size()))
    return pages


def _heading_page(out, pattern) -> int:
    """The index of the first page where ``pattern`` starts a line set in a chapter heading's size (18 pt),
    not in the contents or the outline table."""
    pdfium = pytest.importorskip("pypdfium2")
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument(str(out / "report.pdf"))
    for i, page in enumerate(pdf):
        tp = page.get_textpage()
        for m in re.finditer(pattern, tp.get_text_range(), re.M):
            if raw.FPDFText_GetFontSize(tp.raw, m.start()) >= 16:
                return i
    raise AssertionError(f"no heading matching {pattern!r} in the PDF")


def test_pdf_length_main_text_and_whole_document(out, pdf_pages):
    n = len(pdf_pages)
    start = _heading_page(out, r"^1\. Forward components")
    refs = _heading_page(out, r"^References\s*$")
    # bounds for the report with the paper's experiments, probes of faithfulness and the original's record
    assert n <= 64, f"the PDF has {n} pages (at most 64)"
    assert refs - start <= 56, f"the main text runs {refs - start} pages, pages {start + 1}-{refs} (at most 56)"


def test_pdf_has_no_development_log_and_no_raw_markup(pdf_pages):
    for i, text, *_ in pdf_pages:
        flat = re.sub(r"\s+", " ", text)
        dev = DEV_LOG.findall(flat)
        assert not dev, f"page {i + 1}: development-log wording {dev[:3]}"
        raw = RAW.findall(flat)
        assert not raw, f"page {i + 1}: markup left raw {raw[:3]}"


def test_every_figure_fits_the_page_and_sits_above_its_caption(pdf_pages):
    for i, text, boxes, caps, (pw, ph) in pdf_pages:
        for left, bottom, right, top in boxes:
            assert right - left <= TEXT_W_PT + 2, f"page {i + 1}: an image {right - left:.0f} pt wide"
            assert top - bottom <= MAX_H_PT + 2, f"page {i + 1}: an image {top - bottom:.0f} pt tall"
            assert left >= 0 and right <= pw and bottom >= 0 and top <= ph, f"page {i + 1}: an image off the page"
        for word, size, (_, cb, _, ct) in caps:
            if not word.startswith("Figure") or abs(size - 9) > 0.6:     # captions are 9 pt; references 10 pt
                continue
            above = [b for b in boxes if 0 <= b[1] - ct <= 40]
            assert above, f"page {i + 1}: caption {word!r} has no figure directly above it on its page"


def test_contents_link_the_feature_atlas_of_every_conv_feature(out, soups):
    import json

    assert soups["index.html"].find("a", href="atlas/index.html") is not None
    meta = json.loads((out / "atlas" / "atlas.json").read_text())
    assert meta["source"]["count"] == 10_000 and meta["k"] == 9
    assert {name: v["features"] for name, v in meta["layers"].items()} == \
        {"conv1": 32, "conv2": 64, "conv3": 128, "conv4": 128, "conv5": 128}
    for name, v in meta["layers"].items():
        assert (out / "atlas" / name / f"{v['features'] - 1}.html").is_file()
