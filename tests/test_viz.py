"""Views: rich console, self-contained HTML (also rendered by headless Chromium), matplotlib PNG.

Token text is untrusted: markup, HTML and math-text tokens must come out as plain text everywhere.
"""

from __future__ import annotations

import html.parser
import io
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest
import torch
from rich.console import Console

from saliency_fast.result import AttributionResult
from saliency_fast.viz import html as html_view
from saliency_fast.viz import plot as plot_view
from saliency_fast.viz.scale import MISSING, NEGATIVE, POSITIVE, ZERO, diverging_rgb, hex_color

NAN = float("nan")
EVIL = ["[CLS]", "<script>alert(1)</script>", "[bold]", "[/]", '" onmouseover="x', "$x$", "a&b", "[SEP]"]


def evil_result(rows: int = 1) -> AttributionResult:
    scores = torch.tensor([[NAN, 4.0, -2.0, 1.0, 0.5, -1.0, 0.25, NAN]]).repeat(rows, 1)
    return AttributionResult(
        tokens=EVIL, scores=scores, targets=["[red]label[/red]", "<b>two</b>", "x"][:rows],
        mask=torch.tensor([[False] + [True] * 6 + [False]]).repeat(rows, 1),
        metadata={"task": "classify", "method": "saliency", "model": "/some/dir/<tiny>", "aggregate": "sum"},
    )


def generation_result() -> AttributionResult:
    tokens = ["the", "[b]movie", "was", "<i>good", "fun"]
    scores = torch.tensor([[0.5, -1.0, 2.0, NAN, NAN], [1.0, 0.1, -0.2, 0.3, NAN]])
    return AttributionResult(
        tokens=tokens, scores=scores, targets=tokens[3:], mask=~torch.isnan(scores),
        metadata={"task": "generate", "n_prompt_tokens": 3, "generated_text": "the movie was <i>good fun"},
    )


def console_text(result, styles: bool = False) -> str:
    console = Console(record=True, file=io.StringIO(), width=160, force_terminal=True, color_system="truecolor")
    result.show(console=console)
    return console.export_text(styles=styles)


# ----------------------------------------------------------------------------- colour scale


def test_diverging_scale_is_symmetric_around_zero():
    assert diverging_rgb(0.0, 2.0) == ZERO
    assert diverging_rgb(2.0, 2.0) == POSITIVE and diverging_rgb(-2.0, 2.0) == NEGATIVE
    assert diverging_rgb(50.0, 2.0) == POSITIVE  # clamped
    for value in (0.3, 1.0, 1.7):
        up, down = diverging_rgb(value, 2.0), diverging_rgb(-value, 2.0)
        # the same distance from white, towards each end
        for channel in range(3):
            assert abs((up[channel] - 255) / (POSITIVE[channel] - 255) - (down[channel] - 255) / (NEGATIVE[channel] - 255)) < 0.01


# ----------------------------------------------------------------------------- console


def test_console_prints_untrusted_tokens_as_text():
    text = console_text(evil_result(rows=2))
    for token in EVIL + ["[red]label[/red]", "<b>two</b>"]:
        assert token in text, token
    assert "top <script>alert(1)</script> (4)" in text


def test_console_colours_follow_the_scale():
    ansi = console_text(evil_result(), styles=True)
    assert "48;2;{};{};{}m<script>".format(*POSITIVE) in ansi  # the largest score: the red end
    assert "48;2;{};{};{}m[CLS]".format(*MISSING) in ansi  # masked: grey
    negative = diverging_rgb(-2.0, 4.0)
    assert "48;2;{};{};{}m[bold]".format(*negative) in ansi


def test_console_generation_table():
    text = console_text(generation_result())
    lines = text.splitlines()
    header = next(line for line in lines if "<i>good" in line and "token" in line)
    assert header.index("<i>good") < header.index("fun")
    movie = next(line for line in lines if "[b]movie" in line and "│" in line)
    assert "-1" in movie and "0.1" in movie
    good_row = next(line for line in lines if line.startswith("│<i>good"))
    # source "<i>good" has no score for its own row (masked): only the second column is filled
    assert good_row.split("│")[2].strip() == "" and good_row.split("│")[3].strip() == "0.3"
    assert "fun: was (-0.2)" not in text and "fun: the (1)" in text


def test_console_generation_splits_wide_tables():
    n = 40
    scores = torch.tril(torch.ones(n, n + 1), diagonal=0)
    scores[scores == 0] = NAN
    tokens = [f"t{i}" for i in range(n + 1)]
    result = AttributionResult(tokens=tokens, scores=scores, targets=tokens[1:], mask=~torch.isnan(scores),
                               metadata={"task": "generate", "n_prompt_tokens": 1})
    text = console_text(result)
    assert text.count("┏") > 1  # several tables, each fits the console
    assert max(len(line) for line in text.splitlines()) <= 160


# ----------------------------------------------------------------------------- HTML


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


def test_html_escapes_every_token_and_loads_nothing_external():
    result = evil_result(rows=2)
    page = result.to_html()
    parsed = parse(page)
    tags = {tag for tag, _ in parsed.tags}
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert all("onmouseover" not in attrs for _, attrs in parsed.tags)
    text = "".join(parsed.text)
    for token in EVIL + ["[red]label[/red]", "<b>two</b>", "/some/dir/<tiny>"[-11:]]:
        assert token in text, token
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_html_token_colours_and_legend():
    parsed = parse(evil_result().to_html())
    spans = [attrs for tag, attrs in parsed.tags if tag == "span" and attrs.get("class") == "tok"]
    assert len(spans) == len(EVIL)
    assert f"background:{hex_color(POSITIVE)}" in spans[1]["style"]
    assert f"background:{hex_color(diverging_rgb(-2.0, 4.0))}" in spans[2]["style"]
    assert f"background:{hex_color(MISSING)}" in spans[0]["style"] and spans[0]["title"] == "no score"
    assert spans[1]["title"] == "4"
    assert any(attrs.get("class") == "legend" for _, attrs in parsed.tags)
    text = "".join(parsed.text)
    assert "-4" in text and "top: <script>alert(1)</script> (4)" in text


def test_html_generation_matrix():
    result = generation_result()
    parsed = parse(result.to_html())
    rows = [t for t, _ in parsed.tags if t == "tr"]
    assert len(rows) == 1 + len(result.targets)
    cells = [attrs for tag, attrs in parsed.tags if tag == "td"]
    assert len(cells) == len(result.targets) * (1 + len(result.tokens))
    assert sum(attrs.get("class") == "na" for attrs in cells) == int((~result.mask).sum())
    headers = [attrs.get("class") for tag, attrs in parsed.tags if tag == "th"][1:]
    assert headers == ["prompt"] * 3 + ["gen"] * 2
    assert "the movie was <i>good fun" in "".join(parsed.text)


def test_to_html_writes_the_returned_page(tmp_path):
    result = evil_result()
    page = result.to_html(tmp_path / "sub" / "a.html")
    assert (tmp_path / "sub" / "a.html").read_text(encoding="utf-8") == page
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary file left behind
    assert result._repr_html_() == html_view.fragment(result) and result._repr_html_() in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it as root: apt-get install chromium)")
def test_html_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "attribution.html"
    evil_result(rows=2).to_html(page)
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,400",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    parsed = parse(dom.stdout)
    assert "script" not in {tag for tag, _ in parsed.tags}
    assert len([1 for tag, attrs in parsed.tags if tag == "span" and attrs.get("class") == "tok"]) == 2 * len(EVIL)
    text = "".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "[red]label[/red]" in text
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (400, 900)
    # the rendered page shows the token colours: the red end (the largest score) and [bold]'s half blue (-2 of 4)
    for color in (POSITIVE, diverging_rgb(-2.0, 4.0)):
        target = np.array(color) / 255
        assert (np.abs(pixels - target).max(-1) < 0.02).sum() > 50, color


# ----------------------------------------------------------------------------- PNG


def test_bars_go_up_for_positive_and_down_for_negative(tmp_path):
    result = evil_result()
    fig = result.plot(kind="bars", path=tmp_path / "bars.png")
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [0.0, 4.0, -2.0, 1.0, 0.5, -1.0, 0.25, 0.0]
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == [token if len(token) <= 20 else token[:19] + "…" for token in EVIL]
    assert all(not label.get_parse_math() for label in ax.get_xticklabels())
    assert ax.patches[1].get_facecolor()[:3] == pytest.approx(np.array(POSITIVE) / 255, abs=0.01)
    assert ax.patches[2].get_facecolor()[:3] == pytest.approx(np.array(diverging_rgb(-2.0, 4.0)) / 255, abs=0.01)
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_for_generation_and_many_rows(tmp_path):
    result = generation_result()
    fig = result.plot(path=tmp_path / "gen.png")  # auto: a heatmap for generation
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    assert image.mask.tolist() == (~result.mask).tolist()
    np.testing.assert_allclose(image.filled(0), np.nan_to_num(result.scores.numpy()))
    assert ax.images[0].norm.vmin == -2.0 and ax.images[0].norm.vmax == 2.0
    assert [line.get_xdata()[0] for line in ax.lines] == [2.5]  # the prompt's end
    assert [t.get_text() for t in ax.get_yticklabels()] == result.targets
    assert matplotlib.image.imread(tmp_path / "gen.png").shape[-1] in (3, 4)
    assert len(evil_result(rows=3).plot().axes[0].images) == 1


def test_long_sequences_thin_their_labels():
    n = 600
    result = AttributionResult(tokens=[f"t{i}" for i in range(n)], scores=torch.randn(1, n), targets=["x"])
    labels = result.plot(kind="heatmap").axes[0].get_xticklabels()
    assert len(labels) <= plot_view.MAX_TICK_LABELS and labels[1].get_text() == "t5"


def test_plot_bad_input():
    with pytest.raises(ValueError, match="kind must be one of"):
        evil_result().plot(kind="pie")
    rows = plot_view.MAX_BAR_ROWS + 1
    many = AttributionResult(tokens=["a", "b"], scores=torch.ones(rows, 2), targets=["t"] * rows)
    with pytest.raises(ValueError, match="heatmap"):
        many.plot(kind="bars")


def test_views_of_three_dim_scores_sum_the_embedding_dim():
    scores = torch.tensor([[[1.0, 2.0], [-4.0, 0.5]]])
    result = AttributionResult(tokens=["a", "b"], scores=scores, targets=["t"])
    heights = [patch.get_height() for patch in result.plot(kind="bars").axes[0].patches]
    assert heights == [3.0, -3.5]
    assert 'title="-3.5"' in result.to_html()
    assert "b (-3.5)" in console_text(result)



def test_long_generations_stay_viewable():
    """4,096 tokens: the page and the terminal show the first rows and say so; nothing explodes."""
    n_prompt, n = 4000, 4096
    scores = torch.rand(n - n_prompt, n)
    mask = torch.arange(n)[None, :] < torch.arange(n_prompt, n)[:, None]
    scores[~mask] = NAN
    tokens = [f"t{i}" for i in range(n)]
    result = AttributionResult(tokens=tokens, scores=scores, targets=tokens[n_prompt:], mask=mask,
                               metadata={"task": "generate", "n_prompt_tokens": n_prompt})
    page = result.to_html()
    shown = html_view.MAX_CELLS // n
    assert page.count("<tr>") == 1 + shown and f"showing the first {shown} of {n - n_prompt} targets" in page
    assert len(page) < 100 * html_view.MAX_CELLS
    console = Console(record=True, file=io.StringIO(), width=120)
    result.show(console=console)
    text = console.export_text()
    assert f"showing the first 32 of {n - n_prompt} targets" in text
    assert f"showing the 64 of {n_prompt + 31} source tokens with the largest scores" in text
    # the strongest source of the shown targets has its row
    best = int(result.scores[:32].nan_to_num(0).abs().amax(0).argmax())
    assert any(line.startswith(f"│t{best} ") for line in text.splitlines())


def seq2seq_result() -> AttributionResult:
    source_scores = torch.tensor([[4.0, -1.0, NAN], [0.5, 1.0, NAN]])
    scores = torch.tensor([[NAN, NAN], [-2.0, NAN]])
    return AttributionResult(
        tokens=["<pad>", "<b>the"], scores=scores, targets=["<b>the", "[i]end"], mask=~torch.isnan(scores),
        metadata={"task": "generate", "method": "saliency"}, source_tokens=["<script>le", "[bold]chat", "</s>"],
        source_scores=source_scores, source_mask=~torch.isnan(source_scores),
    )


def test_views_show_the_source_matrix_beside_the_target_matrix(tmp_path):
    result = seq2seq_result()
    page = result.to_html()
    parsed = parse(page)
    assert sum(tag == "table" for tag, _ in parsed.tags) == 2
    text = "".join(parsed.text)
    assert "generated \\ source" in text and "generated \\ target prefix" in text
    assert "<script>le" in text and "&lt;script&gt;le" in page
    # one colour scale for both sides: the largest |score| (4, source side) is the red end
    styles = [attrs.get("style", "") for tag, attrs in parsed.tags if tag == "td"]
    assert any(f"background:{hex_color(POSITIVE)}" in s for s in styles)
    assert any(f"background:{hex_color(diverging_rgb(-2.0, 4.0))}" in s for s in styles)

    console = console_text(result)
    assert "source tokens x generated tokens" in console and "target prefix tokens x generated tokens" in console
    assert "[bold]chat" in console and "top source tokens per generated token" in console

    fig = result.plot(path=tmp_path / "s2s.png")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    np.testing.assert_allclose(images[0].get_array().filled(0), np.nan_to_num(result.source_scores.numpy()))
    np.testing.assert_allclose(images[1].get_array().filled(0), np.nan_to_num(result.scores.numpy()))
    assert all(image.norm.vmax == 4.0 for image in images)
    assert matplotlib.image.imread(tmp_path / "s2s.png").shape[-1] in (3, 4)
