"""The report as one PDF: prepared notebooks -> one Markdown document -> typst (pandoc) -> PDF (typst).

Both tools come from pip (``pypandoc-binary`` ships pandoc, ``typst`` ships the compiler and its fonts),
so no TeX and no browser are needed. The pre-pass (:func:`to_markdown`) keeps what the HTML shows:
markdown cells, shown code, text and ``text/markdown`` outputs, images written to files; hidden inputs,
removed cells and widget views are already gone (``conventions.prepare``). Figures get their
"Figure N." caption under the image, tables above the table, and the front matter's title block becomes
the title page, followed by the contents with page numbers.
"""
from __future__ import annotations

import base64
import copy
import re
import struct
from pathlib import Path

PREAMBLE = Path(__file__).resolve().parent / "preamble.typ"
PX_PER_INCH = 90          # for a PNG without a resolution (pHYs chunk)
TEXT_WIDTH_IN = 6.5       # A4 with the preamble's margins (zfcore.viz.page.TEXT_WIDTH)
READER = "markdown-citations-yaml_metadata_block"   # raw HTML in markdown is dropped by the typst writer


class PdfError(RuntimeError):
    """pandoc or typst failed."""


def _text(v) -> str:
    return "".join(v) if isinstance(v, list) else v


def png_width(data: bytes) -> int:
    """Pixel width from a PNG's IHDR chunk."""
    return struct.unpack(">I", data[16:20])[0]


def png_dpi(data: bytes, default: float = PX_PER_INCH) -> float:
    """Horizontal resolution from a PNG's pHYs chunk (pixels per metre), ``default`` without one."""
    i = data.find(b"pHYs")
    if i < 0 or data[i + 12] != 1:                      # unit 1: the metre
        return default
    return struct.unpack(">I", data[i + 4:i + 8])[0] * 0.0254


def typst_escape(s: str) -> str:
    return re.sub(r"([#*_`$@<>\[\]\\~])", r"\\\1", s)


def fence(text: str, lang: str = "") -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def break_long_runs(md: str, width: int = 105) -> str:
    """In every fenced block of ``md``, break runs of more than ``width`` non-blank characters (which
    typst cannot wrap) into lines, so that no line of code or output runs off the page."""
    def block(m):
        body = re.sub(r"\S{%d,}" % (width + 1), lambda r: "\n".join(
            r.group(0)[i:i + width] for i in range(0, len(r.group(0)), width)), m.group(3))
        return m.group(1) + m.group(2) + "\n" + body
    return re.sub(r"^(`{3,}|~{3,})([^\n]*)\n(.*?)(?=^\1\s*$)", block, md, flags=re.M | re.S)


def image(png_b64: str, name: str, imgdir: Path, caption: str = "", label: str = "") -> str:
    """Write one PNG to ``imgdir/name`` and return its Markdown (a captioned figure if ``caption``)."""
    data = base64.b64decode(png_b64)
    (imgdir / name).write_bytes(data)
    pct = min(100, round(100 * png_width(data) / png_dpi(data) / TEXT_WIDTH_IN, 1))
    attrs = (f"#{label} " if label else "") + f"width={pct}%"
    if caption:
        return f"![{caption}]({imgdir.name}/{name}){{{attrs}}}"
    return f"![]({imgdir.name}/{name}){{{attrs}}}\\"  # the backslash: no implicit figure


def output_md(out, name: str, imgdir: Path, caption="", label="") -> str | None:
    """Markdown for one output; None when it has nothing the PDF can show."""
    kind = out.get("output_type")
    if kind == "stream":
        return fence(_text(out["text"]))
    if kind == "error":
        return fence("\n".join(out.get("traceback", [])))
    data = out.get("data", {})
    parts = []
    if "image/png" in data:
        parts.append(image(_text(data["image/png"]), name, imgdir, caption, label))
    if "text/markdown" in data:
        parts.append(_text(data["text/markdown"]))
        if out.get("metadata", {}).get("zfcore", {}).get("controls"):
            parts.reverse()                  # a widget's static frame: its controls above the frame
    if not parts and "text/plain" in data and "text/html" not in data:
        parts.append(fence(_text(data["text/plain"])))
    return "\n\n".join(parts) or None


def cell_md(cell, stem: str, k: int, imgdir: Path) -> list[str]:
    """Markdown blocks of one prepared cell (see conventions.prepare)."""
    if cell.cell_type == "markdown":
        return [cell.source]
    if cell.cell_type != "code":
        return []
    meta = cell.metadata.get("zfcore", {})
    label, caption = meta.get("label", ""), meta.get("caption_md", "")
    blocks = [] if cell.metadata.get("transient", {}).get("remove_source") else [fence(cell.source, "python")]
    if label.startswith("tbl-"):
        blocks.append(f"[{caption}]{{#{label}}}")
    outs = cell.get("outputs", [])
    last_png = max((i for i, o in enumerate(outs) if "image/png" in o.get("data", {})), default=None)
    placed = not label.startswith("fig-")
    for i, out in enumerate(outs):
        here = label.startswith("fig-") and i == last_png
        md = output_md(out, f"{stem}-{k}-{i}.png", imgdir, caption if here else "", label if here else "")
        placed |= here
        if md:
            blocks.append(md)
    if not placed:  # a figure cell without an image: keep the caption and its anchor
        blocks.append(f"[{caption}]{{#{label}}}")
    return blocks


def title_block(nb, title: str):
    """The front matter: its cells up to the first ``##`` heading on the title page, then contents."""
    cells = list(nb.cells)
    cut = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                and c.source.lstrip().startswith("## ")), len(cells))
    head = "```{=typst}\n#v(4cm)\n#align(center, text(size: 22pt, weight: \"bold\", hyphenate: false)[" + \
           typst_escape(title) + "])\n#v(1cm)\n```"
    first = []
    for c in cells[:cut]:
        if c.cell_type == "markdown":
            c = copy.deepcopy(c)
            c.source = re.sub(r"^# .*$", "", c.source, count=1, flags=re.M)
        first.append(c)
    return [head], first, cells[cut:]


def to_markdown(prepared, title: str, imgdir: Path) -> str:
    """One Markdown document from [(Chapter, prepared notebook)] in order; images go to ``imgdir``."""
    blocks = []
    for ch, nb in prepared:
        cells = list(nb.cells)
        if ch.stem.startswith("00"):
            head, first, cells = title_block(nb, title)
            blocks += head
            for k, c in enumerate(first):
                blocks += cell_md(c, ch.stem, k, imgdir)
            blocks.append("```{=typst}\n#pagebreak()\n#outline(title: [Contents], depth: 2, indent: auto)\n"
                          "#pagebreak()\n```")
            offset = len(first)
        else:
            offset = 0
        for k, c in enumerate(cells):
            blocks += cell_md(c, ch.stem, k + offset, imgdir)
    return break_long_runs("\n\n".join(b.strip("\n") for b in blocks if b.strip()) + "\n")


def unlink_missing(typ: str) -> str:
    """Links to labels that are not in the document (chapters left out by ``--only``) become text."""
    defined = set(re.findall(r"<([\w:.-]+)>\s*$", typ, flags=re.M)) | set(re.findall(r"\]<([\w:.-]+)>", typ))
    return re.sub(r"#link\(<([\w:.-]+)>\)\[", lambda m: m.group(0) if m.group(1) in defined else "#[", typ)


def build_pdf(prepared, labels, pdf: Path, title: str) -> Path:
    """Write ``pdf`` (its images and the intermediate .md/.typ go to a ``pdf-src`` folder next to it)."""
    import pypandoc
    import typst

    work = pdf.parent / "pdf-src"
    imgdir = work / "img"
    imgdir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(prepared, title, imgdir)
    (work / "report.md").write_text(md, encoding="utf-8")
    try:
        body = pypandoc.convert_text(md, "typst", format=READER, extra_args=["--wrap=preserve"])
    except RuntimeError as e:
        raise PdfError(f"pandoc could not convert the report to typst: {e}") from e
    doc = PREAMBLE.read_text(encoding="utf-8") + "\n" + unlink_missing(body)
    (work / "report.typ").write_text(doc, encoding="utf-8")
    try:
        typst.compile(str(work / "report.typ"), output=str(pdf), root=str(work))
    except Exception as e:  # typst raises its own TypstError with the source location
        raise PdfError(f"typst could not compile {work / 'report.typ'}: {e}") from e
    return pdf
