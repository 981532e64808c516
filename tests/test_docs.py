"""The documentation says what the code does.

- The README's Python example runs as written, and every ``print(...)  # prints X`` line prints X.
- Every relative link in README.md and docs/*.md resolves to a file (and to a heading, where the link
  names one); every repository path and ``tests/...::test_name`` written in backticks exists.
- Every ``zfcore.`` / ``zf.`` name and every ``rec.`` / ``net.`` attribute the documents use exists.
- docs/bad-input.md lists every case of tests/test_cli_bad_input.py, each with its command and a
  message that the test's pattern accepts.
- The README's picture is small and drawn from the package by docs/make_figure.py.
"""
import ast
import importlib
import importlib.util
import re
import struct
import sys
from pathlib import Path

import pytest

import zfcore
from zfcore.core import Network, Record

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README] + DOCS

FENCED = re.compile(r"^```[^\n]*\n.*?^```[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
PRINTS = re.compile(r"^print\(.*\)\s+# prints (.+?)\s*$")


def python_blocks(path):
    """(line number of the block's first line, code) of each ```python block of a Markdown file."""
    text = path.read_text()
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        yield text.count("\n", 0, m.start(1)) + 1, m.group(1)


def test_readme_example_runs_and_prints_what_it_says():
    blocks = list(python_blocks(README))
    assert blocks, "the README has no python example"
    for first, code in blocks:
        expected = {first + i: m.group(1) for i, line in enumerate(code.splitlines())
                    if (m := PRINTS.match(line))}
        printed = {}

        def fake_print(*args, sep=" ", end="\n", file=None, flush=False):
            line = sys._getframe(1).f_lineno
            assert line not in printed, f"README.md:{line} prints more than once"
            printed[line] = sep.join(map(str, args))

        exec(compile("\n" * (first - 1) + code, str(README), "exec"), {"print": fake_print, "__name__": "readme"})
        assert printed == expected            # each print line prints exactly what its comment says


# --- links and paths --------------------------------------------------------------------------------------
def prose(text: str) -> str:
    """The text without fenced blocks and code spans (links written there are examples, not links)."""
    return CODE_SPAN.sub("", FENCED.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set:
    return {slug(h) for h in HEADING.findall(FENCED.sub("", path.read_text()))}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    targets = LINK.findall(prose(page.read_text()))
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):             # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert dest.suffix == ".md" and anchor in anchors(dest), f"{page.name}: link to {target}: no such heading"


REPO_PATH = re.compile(r"`((?:tests|benchmarks|zfcore|report|notebooks|docs)/[\w./-]+?)(?:::(\w+))?[`\[]")
WRITTEN = re.compile(r"^report/build\b|NN-")      # what a build writes, and file-name patterns


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_paths_and_tests_named_exist(page):
    text = page.read_text()
    for path, test in REPO_PATH.findall(text):
        if WRITTEN.search(path):
            continue
        assert (REPO / path).exists(), f"{page.name}: {path}: no such file"
        if test:
            assert re.search(rf"^def {test}\(", (REPO / path).read_text(), re.M), f"{page.name}: {path}::{test}"


# --- names ------------------------------------------------------------------------------------------------
def resolve(dotted: str):
    """The object ``zfcore.<dotted>``, importing submodules on the way."""
    obj, prefix = zfcore, "zfcore"
    for part in dotted.split("."):
        prefix += "." + part
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            obj = importlib.import_module(prefix)
    return obj


@pytest.fixture(scope="module")
def net_and_record():
    """A network and a record of it (attributes set in ``__init__`` count as well as methods)."""
    import numpy as np
    net = zfcore.models.build_model("fmnist_zf")
    return net, net.forward(np.zeros((1, 1, 28, 28), np.float32))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_names_used_exist(page, net_and_record):
    text = page.read_text()
    names = {m.rstrip(".") for m in re.findall(r"\b(?:zfcore|zf)\.([A-Za-z_][\w.]*)", text)}
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("zfcore"):
                continue                                        # an optional dependency (torch, dask)
            missing.append(name)
        except AttributeError:
            missing.append(name)
    net, rec = net_and_record
    for obj, var in ((rec, "rec"), (net, "net"), (Record, "Record"), (Network, "Network")):
        missing += [f"{var}.{a}" for a in set(re.findall(rf"\b{var}\.([A-Za-z_]\w*)", text)) if not hasattr(obj, a)]
    assert not missing, f"{page.name} names what does not exist: {missing}"


# --- the bad-input table ----------------------------------------------------------------------------------
def cli_cases():
    """{(test function, case id): (argv, message pattern)} of tests/test_cli_bad_input.py, read from
    its source (no import: the command line's extras need not be installed)."""
    tree = ast.parse((REPO / "tests" / "test_cli_bad_input.py").read_text())
    tables = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) in ("ROWS", "TORCH_ROWS")}
    tests = {"ROWS": "test_bad_input_row", "TORCH_ROWS": "test_bad_input_row_torch"}
    return {(tests[t], name): (argv, want) for t, rows in tables.items() for name, argv, want in rows}


def test_bad_input_table_lists_every_cli_case():
    cases = cli_cases()
    assert len(cases) > 30
    rows = {}
    for line in (REPO / "docs" / "bad-input.md").read_text().splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        m = re.fullmatch(r"`(test_bad_input_row(?:_torch)?)\[([\w-]+)\]`", cells[-1]) if len(cells) == 5 else None
        if m:
            assert m.groups() not in rows, f"{m.groups()} twice"
            rows[m.groups()] = cells
    assert set(rows) == set(cases)
    for key, (_, command, exit_status, message, _) in rows.items():
        argv, want = cases[key]
        shown = "zfcore " + argv.replace("{in}/", "").replace(" {in}", " .")
        assert command.startswith(f"`{shown}`"), (key, command)
        assert exit_status == "2" and re.search(want, message), (key, message)


# --- the picture ------------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_readme_picture_is_small_and_drawn_by_the_script(tmp_path):
    figure = REPO / "docs" / "figure.png"
    assert figure.stat().st_size < 150_000
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_figure", REPO / "docs" / "make_figure.py")
    make_figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figure)
    out = make_figure.main(tmp_path / "figure.png")
    assert png_size(out) == png_size(figure)
