"""HTML view of influence results: each test text with its proponents and opponents.
Self-contained (inline CSS, no scripts, a Content-Security-Policy); every text is escaped."""

from __future__ import annotations

import html

_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; color: #222; }
.test { border: 1px solid #ccc; border-radius: 4px; padding: 8px; margin: 12px 0; }
.text { font-weight: bold; white-space: pre-wrap; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
td.t { white-space: pre-wrap; }
.pro th { background: #e3f1e3; } .opp th { background: #f6e0e0; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(kind: str, rows: list[dict]) -> str:
    title = "Proponents (raised the prediction)" if kind == "pro" else "Opponents (lowered the prediction)"
    body = "".join(
        f"<tr><td>{_e(r['index'])}</td><td>{_e(r['label'])}</td><td>{float(r['score']):.4g}</td>"
        f"<td class=\"t\">{_e(r['text'])}</td></tr>"
        for r in rows
    )
    return (f'<table class="{kind}"><tr><th colspan="4">{title}</th></tr>'
            f"<tr><th>train #</th><th>label</th><th>score</th><th>text</th></tr>{body}</table>")


def document(results: list[dict], label_names: dict | None = None) -> str:
    """A complete page for the ``to_dict()`` of each test text's result."""
    names = label_names or {}
    sections = []
    for r in results:
        predicted = names.get(r["predicted"], r["predicted"])
        sections.append(
            f'<div class="test"><div class="text">{_e(r["text"])}</div>'
            f'<div class="meta">predicted: {_e(predicted)}</div>'
            f"{_table('pro', r['proponents'])}{_table('opp', r['opponents'])}</div>"
        )
    meta = results[0]["metadata"] if results else {}
    header = ", ".join(f"{_e(k)}: {_e(meta[k])}" for k in ("model", "index", "projection_dim", "train_size") if k in meta)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>saliency_fast influence</title><style>{_CSS}</style></head><body>"
        f'<h2>Training-data influence (TracIn)</h2><div class="meta">{header}</div>{"".join(sections)}</body></html>\n'
    )
