"""The report's page rules (zfcore.viz.page) on figures whose printed sizes are known by construction."""
from __future__ import annotations

import pytest

plt = pytest.importorskip("matplotlib.pyplot")
from zfcore.viz import page  # noqa: E402


@pytest.fixture(autouse=True)
def _style():
    with plt.rc_context(page.STYLE):
        yield
    plt.close("all")


def test_a_figure_within_the_text_block_prints_at_its_size():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_title("title")
    w, h, scale = page.printed(fig)
    assert scale == 1.0 and w <= 4.2 and h <= 3.2
    assert page.problems(fig) == []


def test_too_wide_too_tall_and_small_text_are_named():
    fig, ax = plt.subplots(figsize=(13, 3))                      # printed at half size
    ax.set_title("eight points", fontsize=8)                     # prints at about 4 pt
    found = page.problems(fig)
    assert any("over the text width" in p for p in found)
    assert any("below 7.0 pt" in p for p in found)
    tall, _ = plt.subplots(figsize=(4, 11))
    assert any("tall as printed" in p for p in page.problems(tall))
    small, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks([]), ax.set_yticks([])
    ax.text(0.5, 0.5, "tiny", fontsize=5)
    assert page.problems(small) == ["1 text(s) below 7.0 pt as printed: 'tiny' at 5.0 pt"]


def test_check_prints_one_marked_line_per_problem(capsys):
    plt.subplots(figsize=(3, 2))
    plt.subplots(figsize=(14, 2))
    page.check()
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith(page.MARK + " figure 2:") for line in lines)


def test_plotting_fits_the_page_only_in_a_report_notebook(monkeypatch):
    import numpy as np
    from zfcore.viz import plotting

    imgs = [np.zeros((1, 8, 8))] * 8
    monkeypatch.setattr(page, "_in_use", False)              # the command line: sizes as asked
    assert plotting.grid(imgs, ncols=8, size=2.0).get_size_inches()[0] == pytest.approx(16.0)
    monkeypatch.setattr(page, "_in_use", True)               # after page.use(): within the text width
    assert plotting.grid(imgs, ncols=8, size=2.0).get_size_inches()[0] <= page.TEXT_WIDTH
