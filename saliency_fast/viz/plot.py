"""Matplotlib view (PNG). Figures are built with ``matplotlib.figure.Figure`` and rendered by Agg,
never through pyplot, so no GUI backend or global figure state is touched. Token labels are
drawn with math text off: a ``$`` in a token is just a dollar sign."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from saliency_fast._files import atomic_path
from saliency_fast.viz.scale import (
    MISSING, NEGATIVE, POSITIVE, ZERO, color_limit, display_token, result_color_limit, summary_fields,
)

KINDS = ("auto", "bars", "heatmap", "layers")
MAX_BAR_ROWS = 16
MAX_TICK_LABELS = 120
MAX_LABEL_CHARS = 20
MAX_INCHES = (30.0, 20.0)  # width, height: a 4,096-token heatmap stays a few megapixels


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in color)


COLORMAP = LinearSegmentedColormap.from_list(
    "saliency_fast", [_rgb(NEGATIVE), _rgb(ZERO), _rgb(POSITIVE)]
).with_extremes(bad=_rgb(MISSING))


def figure(result, kind: str = "auto", path=None) -> Figure:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "heatmap" if result.is_generation or len(result.targets) > 1 else "bars"
    scores, keep = result.token_scores(), result.meaningful()
    values = np.where(keep.numpy(), scores.numpy(), np.nan)
    limit = result_color_limit(result)
    source_values = None
    if result.has_source:
        source_values = np.where(result.source_meaningful().numpy(), result.source_token_scores().numpy(), np.nan)
    if kind == "layers":
        fig = _layers(result, keep)
    elif kind == "bars":
        if len(result.targets) > MAX_BAR_ROWS:
            raise ValueError(
                f"kind='bars' draws at most {MAX_BAR_ROWS} rows, this result has {len(result.targets)}; use kind='heatmap'"
            )
        fig = _bars(result, values, limit)
    else:
        fig = _heatmap(result, values, limit, source_values)
    if path is not None:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            fig.savefig(tmp, format="png", dpi=100)  # constrained layout: labels fit already
    return fig


def _label(token: str) -> str:
    text = display_token(token)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _set_tick_labels(axis, labels: list[str], rotation: float) -> None:
    """Label every position, or every k-th one when there are too many to read."""
    step = max(1, -(-len(labels) // MAX_TICK_LABELS))
    positions = list(range(0, len(labels), step))
    axis.set_ticks(positions)
    texts = axis.set_ticklabels([_label(labels[i]) for i in positions], rotation=rotation)
    for text in texts:
        text.set_parse_math(False)
        if rotation:
            text.set_horizontalalignment("right")
            text.set_rotation_mode("anchor")


def _title(result) -> str:
    return " · ".join(value for _, value in summary_fields(result.metadata, ("model", "method", "target", "aggregate")))


def _bars(result, values: np.ndarray, limit: float) -> Figure:
    n_rows, n_tokens = values.shape
    width = min(MAX_INCHES[0], max(6.0, 0.32 * n_tokens + 1.5))
    fig = Figure(figsize=(width, 2.8 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    positions = np.arange(n_tokens)
    for ax, row, label in zip(axes, values, result.targets):
        heights = np.nan_to_num(row, nan=0.0)
        # up for positive, down for negative; the colour scale is the shared one
        colors = COLORMAP(0.5 + 0.5 * np.clip(heights / limit, -1, 1))
        ax.bar(positions, heights, color=colors, edgecolor="#555555", linewidth=0.4)
        ax.axhline(0.0, color="#333333", linewidth=0.8)
        ax.set_xlim(-0.6, n_tokens - 0.4)
        ax.set_ylim(-1.08 * limit, 1.08 * limit)
        ax.set_ylabel("attribution")
        ax.set_title(f"target: {display_token(label)}", loc="left", fontsize=10).set_parse_math(False)
        _set_tick_labels(ax.xaxis, result.tokens, rotation=60)
    fig.suptitle(_title(result), fontsize=10).set_parse_math(False)
    return fig


def _heatmap(result, values: np.ndarray, limit: float, source_values: np.ndarray | None = None) -> Figure:
    """Targets x tokens; with a source side, the source x generated matrix beside the target
    prefix x generated one, on one colour scale."""
    n_rows, n_tokens = values.shape
    n_source = 0 if source_values is None else source_values.shape[1]
    width = min(MAX_INCHES[0], max(6.0, 0.32 * (n_tokens + n_source) + 3.0 + (1.5 if n_source else 0.0)))
    height = min(MAX_INCHES[1], max(3.0, 0.3 * n_rows + 2.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    if source_values is None:
        n_prompt = result.metadata.get("n_prompt_tokens") if result.is_generation else None
        panels = [(values, result.tokens, n_prompt, "source token")]
    else:
        panels = [(source_values, result.source_tokens, None, "source token"),
                  (values, result.tokens, None, "target prefix token")]
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=[p[0].shape[1] for p in panels])[0]
    for ax, (panel, tokens, n_prompt, xlabel) in zip(axes, panels):
        image = ax.imshow(
            np.ma.masked_invalid(panel), cmap=COLORMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
        )
        if n_prompt:
            ax.axvline(n_prompt - 0.5, color="#333333", linewidth=1.2)
        _set_tick_labels(ax.xaxis, tokens, rotation=60)
        _set_tick_labels(ax.yaxis, result.targets, rotation=0)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("generated token" if result.is_generation else "target")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attribution")
    fig.suptitle(_title(result), fontsize=10).set_parse_math(False)
    return fig


def _layers(result, keep) -> Figure:
    """One layers x tokens heatmap per target (the first ``MAX_BAR_ROWS``, said in the title), each
    on its own colour scale shared by its layers, so the layers compare."""
    if result.layer_scores is None:
        raise ValueError("kind='layers' needs layer scores: attribute with layer= or layers='all' "
                         "(or method='attention')")
    n_targets, n_layers, n_tokens = result.layer_scores.shape
    shown = min(n_targets, MAX_BAR_ROWS)
    names = result.layer_names or [f"layer {i}" for i in range(n_layers)]
    width = min(MAX_INCHES[0], max(6.0, 0.32 * n_tokens + 3.0))
    height = min(MAX_INCHES[1], shown * max(1.6, 0.3 * n_layers + 1.0) + 0.6)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(shown, 1, squeeze=False)[:, 0]
    for t, ax in enumerate(axes):
        layer_keep = keep[t].unsqueeze(0) & torch.isfinite(result.layer_scores[t])
        limit = color_limit(result.layer_scores[t], layer_keep)
        values = np.where(layer_keep.numpy(), result.layer_scores[t].numpy(), np.nan)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=COLORMAP, vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        _set_tick_labels(ax.xaxis, result.tokens, rotation=60)
        _set_tick_labels(ax.yaxis, names, rotation=0)
        ax.set_title(f"target: {display_token(result.targets[t])}", loc="left", fontsize=10).set_parse_math(False)
        fig.colorbar(image, ax=ax, shrink=0.8, label="attribution")
    more = f" · first {shown} of {n_targets} targets" if shown < n_targets else ""
    fig.suptitle(_title(result) + more, fontsize=10).set_parse_math(False)
    return fig
