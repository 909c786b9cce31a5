"""Rich console view. Token text is untrusted: it only ever enters ``rich.text.Text`` objects (never
markup strings), so a token like ``[bold]`` or ``[/]`` prints as itself."""

from __future__ import annotations

import torch
from rich.color import Color
from rich.console import Console, Group
from rich.style import Style
from rich.table import Table
from rich.text import Text

from saliency_fast.viz.scale import (
    MISSING, display_token, diverging_rgb, format_score, result_color_limit, summary_fields, text_rgb,
)

CELL_WIDTH = 7
GENERATION_TOP = 3
MAX_TARGETS = 32
MAX_SOURCES = 64
HEADER_KEYS = ("task", "model", "method", "target", "aggregate", "normalization", "word_aggregation")


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def render(result, console: Console | None = None, top: int = 5) -> None:
    console = console or Console()
    scores, keep = result.token_scores(), result.meaningful()
    limit = result_color_limit(result)
    parts = [_header(result), _legend(limit)]
    # the terminal gets the first rows; the HTML and JSON have more
    n_rows = min(len(result.targets), MAX_TARGETS)
    scores, keep = scores[:n_rows], keep[:n_rows]
    if result.has_source:
        source_scores, source_keep = result.source_token_scores()[:n_rows], result.source_meaningful()[:n_rows]
        sides = (("source", result.source_tokens, source_scores, source_keep, len(result.source_tokens)),
                 ("target prefix", result.tokens, scores, keep, len(result.tokens)))
        for side, tokens, side_scores, side_keep, n_given in sides:
            parts.append(Text(f"{side} tokens x generated tokens", style="bold"))
            parts += _generation_tables(tokens, result.targets, side_scores, side_keep, limit, console.width, n_given)
        for side in ("source", "target"):
            parts += _top_lines(result, min(top, GENERATION_TOP), n_rows, side)
    elif result.is_generation:
        n_prompt = result.metadata.get("n_prompt_tokens", len(result.tokens))
        parts += _generation_tables(result.tokens, result.targets, scores, keep, limit, console.width, n_prompt)
        parts += _top_lines(result, min(top, GENERATION_TOP), n_rows)
    else:
        for label, row, row_keep, best in zip(result.targets, scores, keep, result.top_k(top)):
            parts.append(Text.assemble(("target ", "dim"), (display_token(label), "bold")))
            parts.append(_token_line(result.tokens, row, row_keep, limit))
            parts.append(_top_text(best))
    if n_rows < len(result.targets):
        parts.append(Text(f"showing the first {n_rows} of {len(result.targets)} targets", style="dim"))
    console.print(Group(*parts))


def _style(value: float, kept: bool, limit: float) -> Style:
    background = diverging_rgb(value, limit) if kept else MISSING
    return Style(bgcolor=Color.from_rgb(*background), color=Color.from_rgb(*text_rgb(background)))


def _header(result) -> Text:
    fields = [f"{key}={value}" for key, value in summary_fields(result.metadata, HEADER_KEYS)]
    return Text("saliency_fast attribution" + (": " + ", ".join(fields) if fields else ""), style="bold")


def _legend(limit: float) -> Text:
    legend = Text("scale ")
    for value in (-limit, -limit / 2, 0.0, limit / 2, limit):
        legend.append(f" {format_score(value)} ", style=_style(value, True, limit))
    return legend


def _token_line(tokens, row, row_keep, limit: float) -> Text:
    line = Text()
    for token, value, kept in zip(tokens, row.tolist(), row_keep.tolist()):
        line.append(display_token(token), style=_style(value, kept, limit))
        line.append(" ")
    return line


def _top_text(best: list[tuple[str, float]], prefix: str = "top ") -> Text:
    text = Text(prefix, style="dim")
    for i, (token, value) in enumerate(best):
        text.append(("" if i == 0 else ", ") + display_token(token))
        text.append(f" ({format_score(value)})", style="dim")
    return text


def _top_lines(result, top: int, n_rows: int, side: str = "target") -> list[Text]:
    what = "source" if side == "source" or not result.has_source else "target prefix"
    lines = [Text(f"top {what} tokens per generated token", style="bold")]
    for label, best in zip(result.targets[:n_rows], result.top_k(top, side=side)):
        lines.append(Text.assemble((display_token(label), "bold"), ": ") + _top_text(best, prefix=""))
    return lines


def _generation_tables(tokens, targets, scores, keep, limit: float, width: int, n_prompt: int) -> list:
    """Rows: attributed tokens (the first ``n_prompt`` given, the others generated: italic);
    columns: generated tokens, split into tables that fit the width."""
    sources = _shown_sources(scores, keep)
    token_width = min(24, max(len("token"), *(len(display_token(tokens[i])) for i in sources)) + 2)
    per_table = max(1, (width - token_width - 4) // (CELL_WIDTH + 3))
    values, kept = scores[:, sources].T.tolist(), keep[:, sources].T.tolist()  # [source][target]
    parts = []
    for first in range(0, len(scores), per_table):
        columns = range(first, min(first + per_table, len(scores)))
        table = Table(show_header=True, header_style="bold", pad_edge=False)
        table.add_column(Text("token"), no_wrap=True, max_width=token_width)
        for j in columns:
            table.add_column(Text(display_token(targets[j])), justify="right", width=CELL_WIDTH, no_wrap=True)
        for i, row_values, row_kept in zip(sources, values, kept):
            label = Text(display_token(tokens[i]), style="" if i < n_prompt else "italic")
            cells = [
                Text(format_score(row_values[j]), style=_style(row_values[j], True, limit)) if row_kept[j] else Text("")
                for j in columns
            ]
            table.add_row(label, *cells)
        parts.append(table)
    n_used = int(keep.any(dim=0).sum())
    if len(sources) < n_used:
        parts.append(Text(f"showing the {len(sources)} of {n_used} source tokens with the largest scores", style="dim"))
    return parts


def _shown_sources(scores, keep) -> list[int]:
    """Token positions that get a table row: those with a score for some shown target; past
    MAX_SOURCES of them, the ones with the largest |score|, in sequence order."""
    magnitude = torch.where(keep, scores.abs(), torch.full_like(scores, -1.0)).amax(dim=0)
    used = keep.any(dim=0)
    if int(used.sum()) <= MAX_SOURCES:
        return used.nonzero().flatten().tolist() or [0]
    return sorted(magnitude.topk(MAX_SOURCES).indices.tolist())
