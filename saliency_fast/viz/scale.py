"""The diverging colour scale shared by every view: blue (negative), white (0), red (positive),
symmetric around 0, so the same score has the same colour in the console, the HTML and the PNG."""

from __future__ import annotations

import torch

NEGATIVE = (33, 102, 172)
ZERO = (255, 255, 255)
POSITIVE = (178, 24, 43)
MISSING = (224, 224, 224)


def color_limit(values: torch.Tensor, keep: torch.Tensor) -> float:
    """The largest |score| among the meaningful ones: the scale's ends are -limit and +limit."""
    kept = values[keep]
    limit = float(kept.abs().max()) if kept.numel() else 0.0
    return limit if limit > 0 else 1.0


def result_color_limit(result) -> float:
    """:func:`color_limit` of a result's meaningful scores, over both sides of an encoder-decoder
    result (source and target prefix share one scale, so they compare)."""
    scores, keep = result.token_scores(), result.meaningful()
    if result.has_source:
        scores = torch.cat([result.source_token_scores(), scores], 1)
        keep = torch.cat([result.source_meaningful(), keep], 1)
    return color_limit(scores, keep)


def diverging_rgb(value: float, limit: float) -> tuple[int, int, int]:
    t = max(-1.0, min(1.0, value / limit))
    end = POSITIVE if t >= 0 else NEGATIVE
    t = abs(t)
    return tuple(round(z + t * (e - z)) for z, e in zip(ZERO, end))


def text_rgb(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def display_token(token: str) -> str:
    """Token text with whitespace made visible (raw text: each view escapes it for its medium)."""
    if not token:
        return "∅"
    return token.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def display_model(name: str) -> str:
    """A model directory's last two path parts (the full path stays in the metadata)."""
    parts = str(name).replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-2:])


def summary_fields(metadata: dict, keys: tuple[str, ...]) -> list[tuple[str, str]]:
    """(key, text) of the metadata entries worth a header: present and not None."""
    fields = []
    for key in keys:
        value = metadata.get(key)
        if value is not None:
            fields.append((key, display_model(value) if key == "model" else str(value)))
    return fields


def format_score(value: float) -> str:
    return f"{value:.3g}"
