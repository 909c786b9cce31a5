"""Self-contained HTML view: inline CSS, no scripts, no external resources (a Content-Security-Policy
forbids them too). Every piece of text from the result goes through ``html.escape``."""

from __future__ import annotations

import html

from saliency_fast.viz.scale import (
    MISSING, NEGATIVE, POSITIVE, ZERO, display_token, diverging_rgb, format_score, hex_color, result_color_limit,
    summary_fields, text_rgb,
)

_CSS = f"""
.sf-attr {{ font-family: system-ui, sans-serif; font-size: 14px; color: #222; }}
.sf-attr h2 {{ font-size: 16px; margin: 4px 0; }}
.sf-attr .meta {{ color: #555; margin-bottom: 8px; }}
.sf-attr .legend {{ display: flex; align-items: center; gap: 6px; margin: 8px 0; }}
.sf-attr .legend .bar {{ width: 240px; height: 12px; border: 1px solid #999;
  background: linear-gradient(to right, {hex_color(NEGATIVE)}, {hex_color(ZERO)}, {hex_color(POSITIVE)}); }}
.sf-attr .row {{ margin: 10px 0; line-height: 2; }}
.sf-attr .label {{ font-weight: bold; margin-right: 8px; }}
.sf-attr .tok {{ padding: 2px 3px; margin: 0 1px; border-radius: 3px; white-space: pre; }}
.sf-attr .top {{ color: #555; }}
.sf-attr table {{ border-collapse: collapse; font-size: 12px; }}
.sf-attr th, .sf-attr td {{ border: 1px solid #ddd; padding: 2px 4px; white-space: pre; }}
.sf-attr th.gen, .sf-attr td.gen-label {{ font-style: italic; }}
.sf-attr td.na {{ background: {hex_color(MISSING)}; }}
.sf-attr .sides {{ display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }}
"""
HEADER_KEYS = (
    "task", "model", "method", "target", "aggregate", "baseline", "n_steps", "normalization", "word_aggregation",
)
MAX_CELLS = 200_000  # coloured cells per page
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def document(result) -> str:
    """A complete HTML page."""
    title = _e(f"saliency_fast attribution: {result.metadata.get('model', '')}".rstrip(": "))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{title}</title></head><body>\n{fragment(result)}\n</body></html>\n"
    )


def fragment(result) -> str:
    """The view as one ``<div>`` with its own ``<style>`` (for Jupyter and embedding)."""
    scores, keep = result.token_scores(), result.meaningful()
    limit = result_color_limit(result)
    n_columns = len(result.tokens) + (len(result.source_tokens) if result.has_source else 0)
    # a page stays loadable: long generations show their first rows (the JSON has them all)
    n_rows = max(1, min(len(result.targets), MAX_CELLS // n_columns))
    scores, keep = scores[:n_rows], keep[:n_rows]
    if result.has_source:
        source_scores, source_keep = result.source_token_scores()[:n_rows], result.source_meaningful()[:n_rows]
        source = _matrix(result.targets, result.source_tokens, source_scores, source_keep, limit,
                         len(result.source_tokens), "generated \\ source")
        target = _matrix(result.targets, result.tokens, scores, keep, limit, len(result.tokens),
                         "generated \\ target prefix")
        body = f'<div class="sides"><div>{source}</div><div>{target}</div></div>'
    elif result.is_generation:
        n_prompt = result.metadata.get("n_prompt_tokens", len(result.tokens))
        body = _matrix(result.targets, result.tokens, scores, keep, limit, n_prompt, "generated \\ source")
    else:
        body = _rows(result, scores, keep, limit)
    if n_rows < len(result.targets):
        body += f'<div class="meta">showing the first {n_rows} of {len(result.targets)} targets</div>'
    return f'<div class="sf-attr"><style>{_CSS}</style>{_header(result)}{_legend(limit)}{body}</div>'


def _header(result) -> str:
    meta = result.metadata
    fields = [f"{_e(key)}: <b>{_e(value)}</b>" for key, value in summary_fields(meta, HEADER_KEYS)]
    text = ""
    if result.is_generation and "generated_text" in meta:
        text = f'<div class="meta">generated text: <b>{_e(str(meta["generated_text"]))}</b></div>'
    return f'<h2>Attribution</h2><div class="meta">{" &middot; ".join(fields)}</div>{text}'


def _legend(limit: float) -> str:
    return (
        f'<div class="legend"><span>{_e(format_score(-limit))}</span><span class="bar"></span>'
        f"<span>{_e(format_score(limit))}</span><span class=\"meta\">(blue negative, red positive)</span></div>"
    )


def _cell_style(value: float, limit: float) -> str:
    background = diverging_rgb(value, limit)
    return f"background:{hex_color(background)};color:{hex_color(text_rgb(background))}"


def _token_span(token: str, value: float, kept: bool, limit: float) -> str:
    if not kept:
        return f'<span class="tok" style="background:{hex_color(MISSING)}" title="no score">{_e(display_token(token))}</span>'
    return (
        f'<span class="tok" style="{_cell_style(value, limit)}" title="{_e(format_score(value))}">'
        f"{_e(display_token(token))}</span>"
    )


def _rows(result, scores, keep, limit: float) -> str:
    """One text heatmap per target row, with its top tokens."""
    out = []
    for label, row, row_keep, best in zip(result.targets, scores.tolist(), keep.tolist(), result.top_k(5)):
        spans = "".join(_token_span(t, v, k, limit) for t, v, k in zip(result.tokens, row, row_keep))
        top = ", ".join(f"{_e(display_token(t))} ({_e(format_score(v))})" for t, v in best)
        out.append(
            f'<div class="row"><span class="label">{_e(display_token(label))}</span>{spans}'
            f'<div class="top">top: {top}</div></div>'
        )
    return "".join(out)


def _matrix(targets, tokens, scores, keep, limit: float, n_prompt: int, corner: str) -> str:
    """Generation: rows are generated tokens, columns the attributed tokens (the first ``n_prompt``
    of them given, the others generated)."""
    head = "".join(
        f'<th class="{"prompt" if i < n_prompt else "gen"}">{_e(display_token(t))}</th>'
        for i, t in enumerate(tokens)
    )
    rows = []
    for label, row, row_keep in zip(targets, scores.tolist(), keep.tolist()):
        cells = "".join(
            f'<td style="{_cell_style(v, limit)}" title="{_e(format_score(v))}">{_e(format_score(v))}</td>'
            if k else '<td class="na"></td>'
            for v, k in zip(row, row_keep)
        )
        rows.append(f'<tr><td class="gen-label">{_e(display_token(label))}</td>{cells}</tr>')
    return f'<table><thead><tr><th>{_e(corner)}</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
