"""Rich console view. Token text is untrusted: it only ever enters ``rich.text.Text`` objects (never
markup strings), so a token like ``[bold]`` or ``[/]`` prints as itself."""

from __future__ import annotations

from rich.color import Color
from rich.console import Console, Group
from rich.style import Style
from rich.table import Table
from rich.text import Text

from saliency_fast.viz.scale import (
    MISSING, color_limit, display_token, diverging_rgb, format_score, summary_fields, text_rgb,
)

CELL_WIDTH = 7
GENERATION_TOP = 3
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
    limit = color_limit(scores, keep)
    parts = [_header(result), _legend(limit)]
    if result.is_generation:
        parts += _generation_tables(result, scores, keep, limit, console.width)
        parts += _top_lines(result, min(top, GENERATION_TOP))
    else:
        for label, row, row_keep, best in zip(result.targets, scores, keep, result.top_k(top)):
            parts.append(Text.assemble(("target ", "dim"), (display_token(label), "bold")))
            parts.append(_token_line(result.tokens, row, row_keep, limit))
            parts.append(_top_text(best))
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


def _top_lines(result, top: int) -> list[Text]:
    lines = [Text("top source tokens per generated token", style="bold")]
    for label, best in zip(result.targets, result.top_k(top)):
        lines.append(Text.assemble((display_token(label), "bold"), ": ") + _top_text(best, prefix=""))
    return lines


def _generation_tables(result, scores, keep, limit: float, width: int) -> list[Table]:
    """Rows: every token of the sequence; columns: generated tokens, split into tables that fit."""
    n_prompt = result.metadata.get("n_prompt_tokens", len(result.tokens))
    token_width = min(24, max(len("token"), *(len(display_token(t)) for t in result.tokens)) + 2)
    per_table = max(1, (width - token_width - 4) // (CELL_WIDTH + 3))
    n_rows_used = min(len(result.tokens), _last_source(keep) + 1)
    tables = []
    for first in range(0, len(result.targets), per_table):
        columns = range(first, min(first + per_table, len(result.targets)))
        table = Table(show_header=True, header_style="bold", pad_edge=False)
        table.add_column(Text("token"), no_wrap=True, max_width=token_width)
        for j in columns:
            table.add_column(Text(display_token(result.targets[j])), justify="right", width=CELL_WIDTH, no_wrap=True)
        for i in range(n_rows_used):
            label = Text(display_token(result.tokens[i]), style="" if i < n_prompt else "italic")
            cells = [
                Text(format_score(float(scores[j, i])), style=_style(float(scores[j, i]), True, limit))
                if bool(keep[j, i]) else Text("")
                for j in columns
            ]
            table.add_row(label, *cells)
        tables.append(table)
    return tables


def _last_source(keep) -> int:
    """Index of the last token that is a meaningful source for some row (later ones are empty rows)."""
    used = keep.any(dim=0).nonzero()
    return int(used.max()) if used.numel() else keep.shape[1] - 1
