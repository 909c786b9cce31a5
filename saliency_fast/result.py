"""The result of an attribution: tokens, scores per target, metadata, and its views and files.

``save``/``load`` write a JSON file for everything plus a ``.safetensors`` file beside it for
the tensors (never pickle), and round-trip exactly. ``to_json`` writes one self-contained,
JSON-safe file (NaN as ``null``) that :func:`load` also reads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import torch

from saliency_fast._files import atomic_path, atomic_write_text

FORMAT = "saliency_fast.attribution"
FORMAT_VERSION = 1
WORD_AGGREGATIONS = ("sum", "max_abs", "mean")
# Subword markers: WordPiece continuation, byte-level BPE space, SentencePiece space.
_CONTINUATION_PREFIX = "##"
_SPACE_MARKERS = ("Ġ", "▁")
_TENSOR_FIELDS = ("scores", "mask", "layer_scores", "source_scores", "source_mask", "source_layer_scores")
_LIST_FIELDS = ("tokens", "targets", "token_ids", "word_ids", "target_ids", "layer_names", "source_tokens",
                "source_token_ids", "source_word_ids")


@dataclasses.dataclass(eq=False)  # field-wise == would ask a tensor for its truth value
class AttributionResult:
    """Scores of every input token for each target (class, generated token, tagged token, ...).

    ``scores`` is ``[n_targets, n_tokens]`` (``[n_targets, n_tokens, D]`` for ``aggregate="none"``),
    float32 on CPU. ``mask`` says where a score is meaningful (False for special tokens, padding,
    and for generation at and after each row's target position, where scores are NaN).

    Encoder-decoder generation also has the source side (inseq's source attributions):
    ``source_tokens`` and ``source_scores`` ``[n_targets, n_source]`` (with ``source_mask``,
    ``source_token_ids``, ``source_word_ids``, and ``source_layer_scores`` beside ``layer_scores``);
    ``tokens`` / ``scores`` are then the target side.
    """

    tokens: list[str]
    scores: torch.Tensor
    targets: list[str]
    mask: torch.Tensor | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    token_ids: list[int] | None = None
    word_ids: list[int | None] | None = None
    target_ids: list[int] | None = None
    layer_scores: torch.Tensor | None = None
    layer_names: list[str] | None = None
    source_tokens: list[str] | None = None
    source_scores: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None
    source_token_ids: list[int] | None = None
    source_word_ids: list[int | None] | None = None
    source_layer_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.tokens = _str_list("tokens", self.tokens)
        self.targets = _str_list("targets", self.targets)
        self.scores = _float_tensor("scores", self.scores)
        n_targets, n_tokens = len(self.targets), len(self.tokens)
        if n_tokens == 0 or n_targets == 0:
            raise ValueError(f"tokens and targets must be non-empty, got {n_tokens} tokens and {n_targets} targets")
        if self.scores.dim() not in (2, 3) or tuple(self.scores.shape[:2]) != (n_targets, n_tokens):
            raise ValueError(
                f"scores must have shape [n_targets, n_tokens] = [{n_targets}, {n_tokens}] "
                f"(or [{n_targets}, {n_tokens}, D]), got {tuple(self.scores.shape)}"
            )
        self.mask = _bool_mask("mask", self.mask, (n_targets, n_tokens))
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        self.token_ids = _int_list("token_ids", self.token_ids, n_tokens, "n_tokens")
        self.word_ids = _int_list("word_ids", self.word_ids, n_tokens, "n_tokens", allow_none_items=True)
        self.target_ids = _int_list("target_ids", self.target_ids, n_targets, "n_targets")
        if self.layer_scores is not None:
            self.layer_scores = _float_tensor("layer_scores", self.layer_scores)
            shape = tuple(self.layer_scores.shape)
            if len(shape) != 3 or shape[0] != n_targets or shape[2] != n_tokens:
                raise ValueError(
                    f"layer_scores must have shape [n_targets, n_layers, n_tokens] = [{n_targets}, L, {n_tokens}], "
                    f"got {shape}"
                )
        if self.layer_names is not None:
            self.layer_names = _str_list("layer_names", self.layer_names)
            expected = None if self.layer_scores is None else self.layer_scores.shape[1]
            if len(self.layer_names) != expected:
                raise ValueError(
                    f"layer_names must name each of the {expected} layers of layer_scores, "
                    f"got {len(self.layer_names)} names"
                )
        self._check_source(n_targets)
        n_prompt = self.metadata.get("n_prompt_tokens")
        if n_prompt is not None and (not _is_int(n_prompt) or not 0 <= n_prompt <= n_tokens):
            raise ValueError(f"metadata['n_prompt_tokens'] must be an int in [0, {n_tokens}], got {n_prompt!r}")

    def _check_source(self, n_targets: int) -> None:
        if (self.source_tokens is None) != (self.source_scores is None):
            raise ValueError("source_tokens and source_scores go together: give both or neither")
        if self.source_tokens is None:
            for name in ("source_mask", "source_token_ids", "source_word_ids", "source_layer_scores"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs source_tokens and source_scores")
            return
        self.source_tokens = _str_list("source_tokens", self.source_tokens)
        self.source_scores = _float_tensor("source_scores", self.source_scores)
        n_source = len(self.source_tokens)
        expected = (n_targets, n_source) + tuple(self.scores.shape[2:])
        if n_source == 0 or tuple(self.source_scores.shape) != expected:
            raise ValueError(
                f"source_scores must have shape {list(expected)} ([n_targets, n_source] with the scores' embedding "
                f"dim if any) over a non-empty source, got {list(self.source_scores.shape)}"
            )
        self.source_mask = _bool_mask("source_mask", self.source_mask, (n_targets, n_source))
        self.source_token_ids = _int_list("source_token_ids", self.source_token_ids, n_source, "n_source")
        self.source_word_ids = _int_list("source_word_ids", self.source_word_ids, n_source, "n_source",
                                         allow_none_items=True)
        if self.source_layer_scores is not None:
            self.source_layer_scores = _float_tensor("source_layer_scores", self.source_layer_scores)
            n_layers = None if self.layer_scores is None else self.layer_scores.shape[1]
            if n_layers is None or tuple(self.source_layer_scores.shape) != (n_targets, n_layers, n_source):
                raise ValueError(f"source_layer_scores must have shape [n_targets, n_layers, n_source] = "
                                 f"[{n_targets}, {n_layers}, {n_source}] beside layer_scores, got "
                                 f"{tuple(self.source_layer_scores.shape)}")

    # ----------------------------------------------------------------- accessors

    @property
    def is_generation(self) -> bool:
        return self.metadata.get("task") == "generate"

    def token_scores(self) -> torch.Tensor:
        """One score per (target, token): ``scores``, summed over the embedding dim when 3-D."""
        return self.scores if self.scores.dim() == 2 else self.scores.sum(-1)

    def meaningful(self) -> torch.Tensor:
        """Bool ``[n_targets, n_tokens]``: the mask (if any) and a finite score."""
        return _meaningful(self.token_scores(), self.mask)

    @property
    def has_source(self) -> bool:
        return self.source_scores is not None

    def source_token_scores(self) -> torch.Tensor | None:
        """``source_scores`` as :meth:`token_scores` gives ``scores`` (None without a source side)."""
        if self.source_scores is None:
            return None
        return self.source_scores if self.source_scores.dim() == 2 else self.source_scores.sum(-1)

    def source_meaningful(self) -> torch.Tensor | None:
        """Bool ``[n_targets, n_source]``, as :meth:`meaningful` for the source side."""
        return None if self.source_scores is None else _meaningful(self.source_token_scores(), self.source_mask)

    def top_k(self, k: int = 5, side: str = "target") -> list[list[tuple[str, float]]]:
        """Per row, the (token, score) pairs of the ``k`` largest ``|score|`` among meaningful ones,
        on the ``target`` side (``tokens``) or the ``source`` side (encoder-decoder results)."""
        if not _is_int(k) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if side not in ("target", "source"):
            raise ValueError(f"side must be 'target' or 'source', got {side!r}")
        if side == "source":
            if not self.has_source:
                raise ValueError("side='source' needs a result with a source side (encoder-decoder generation)")
            tokens, scores, meaningful = self.source_tokens, self.source_token_scores(), self.source_meaningful()
        else:
            tokens, scores, meaningful = self.tokens, self.token_scores(), self.meaningful()
        magnitude = torch.where(meaningful, scores.abs(), torch.full_like(scores, -1.0))
        picks = magnitude.topk(min(k, magnitude.shape[1]), dim=1).indices
        values = scores.gather(1, picks).tolist()
        counts = meaningful.sum(1).tolist()
        return [
            [(tokens[i], value) for i, value in zip(row_picks[:count], row_values)]
            for row_picks, row_values, count in zip(picks.tolist(), values, counts)
        ]

    def __repr__(self) -> str:
        shown = ", ".join(repr(t) for t in self.targets[:3]) + (", ..." if len(self.targets) > 3 else "")
        meta = ", ".join(f"{key}={self.metadata[key]!r}" for key in ("task", "method", "model") if key in self.metadata)
        return (
            f"AttributionResult({meta + ', ' if meta else ''}n_targets={len(self.targets)}, "
            f"n_tokens={len(self.tokens)}, scores={tuple(self.scores.shape)}, targets=[{shown}])"
        )

    # ----------------------------------------------------------------- transforms

    def normalize(self, how: str = "max_abs") -> AttributionResult:
        """A new result with each row's scores normalised (``sum_to_one``, ``max_abs``, ``l1``,
        ``l2``) over its meaningful entries (tokens, and the embedding dim when 3-D); masked and
        NaN entries stay as they were. With a source side, source and target scores of a row are
        normalised together (as inseq does), so the two sides stay comparable. ``layer_scores``
        are normalised per (row, layer)."""
        keep = _expand_like(self.meaningful(), self.scores).flatten(1)
        values = self.scores.flatten(1)
        n_source = 0
        if self.has_source:
            source = self.source_scores.flatten(1)
            n_source = source.shape[1]
            values = torch.cat([source, values], dim=1)
            keep = torch.cat([_expand_like(self.source_meaningful(), self.source_scores).flatten(1), keep], dim=1)
        normalized = _normalize_rows(values, keep, how)
        layers = source_layers = None
        if self.layer_scores is not None:
            layer_values, layer_keep = self.layer_scores, self.meaningful().unsqueeze(1) & torch.isfinite(self.layer_scores)
            if self.source_layer_scores is not None:
                source_keep = self.source_meaningful().unsqueeze(1) & torch.isfinite(self.source_layer_scores)
                layer_values = torch.cat([self.source_layer_scores, layer_values], dim=2)
                layer_keep = torch.cat([source_keep, layer_keep], dim=2)
            layers = _normalize_rows(layer_values, layer_keep, how)
            if self.source_layer_scores is not None:
                source_layers, layers = layers[..., :n_source], layers[..., n_source:]
        metadata = {**self.metadata, "normalization": how}
        source_scores = normalized[:, :n_source].view_as(self.source_scores) if self.has_source else None
        return dataclasses.replace(
            self, scores=normalized[:, n_source:].reshape(self.scores.shape), layer_scores=layers, metadata=metadata,
            source_scores=source_scores, source_layer_scores=source_layers,
        )

    def aggregate_words(self, how: str = "sum") -> AttributionResult:
        """A new result with subword tokens merged into words (runs of equal ``word_ids``).

        ``sum``/``mean`` add/average the meaningful scores of a word, ``max_abs`` keeps the one
        of largest magnitude (with its sign); a word with no meaningful score is NaN and masked.
        Special tokens (word id None) stay on their own. Token text is joined without the
        ``##``/``Ġ``/``▁`` markers.
        """
        if how not in WORD_AGGREGATIONS:
            raise ValueError(f"how must be one of {WORD_AGGREGATIONS}, got {how!r}")
        if self.word_ids is None:
            raise ValueError("this result has no word_ids, so its tokens cannot be merged into words")
        if self.has_source and self.source_word_ids is None:
            raise ValueError("this result has no source_word_ids, so its source tokens cannot be merged into words")
        spans = _word_spans(self.word_ids)
        tokens, scores, mask, word_ids = _merge_words(self.tokens, self.scores, self.mask, self.meaningful(),
                                                      self.word_ids, how)
        layers = None
        if self.layer_scores is not None:
            layer_keep = self.meaningful().unsqueeze(1) & torch.isfinite(self.layer_scores)
            layers = _merge_spans(self.layer_scores, layer_keep, spans, dim=2, how=how)
        source = {}
        if self.has_source:
            merged = _merge_words(self.source_tokens, self.source_scores, self.source_mask, self.source_meaningful(),
                                  self.source_word_ids, how)
            source = dict(zip(("source_tokens", "source_scores", "source_mask", "source_word_ids"), merged))
            source["source_token_ids"] = None
            if self.source_layer_scores is not None:
                source_keep = self.source_meaningful().unsqueeze(1) & torch.isfinite(self.source_layer_scores)
                source["source_layer_scores"] = _merge_spans(self.source_layer_scores, source_keep,
                                                             _word_spans(self.source_word_ids), dim=2, how=how)
        metadata = {**self.metadata, "word_aggregation": how}
        if "n_prompt_tokens" in metadata:
            # a word that straddles the prompt's end counts as prompt
            metadata["n_prompt_tokens"] = sum(start < self.metadata["n_prompt_tokens"] for start, _ in spans)
        return dataclasses.replace(
            self, tokens=tokens, scores=scores, mask=mask, metadata=metadata, token_ids=None, word_ids=word_ids,
            layer_scores=layers, **source,
        )

    # ----------------------------------------------------------------- views

    def show(self, console=None, top: int = 5) -> None:
        """Print the coloured tokens (a prompt x generated table for generation) and the top
        tokens; in Jupyter (and no ``console`` given), display the HTML view instead."""
        from saliency_fast.viz import console as console_view

        if console is None and console_view.in_notebook():
            from IPython.display import HTML, display

            display(HTML(self._repr_html_()))
            return
        console_view.render(self, console=console, top=top)

    def to_html(self, path=None) -> str:
        """A self-contained HTML page (inline CSS, no scripts); written atomically to ``path`` if given."""
        from saliency_fast.viz import html as html_view

        page = html_view.document(self)
        if path is not None:
            atomic_write_text(path, page)
        return page

    def _repr_html_(self) -> str:
        from saliency_fast.viz import html as html_view

        return html_view.fragment(self)

    def plot(self, kind: str = "auto", path=None):
        """A matplotlib Figure: ``bars`` (up for positive, down for negative) or ``heatmap``;
        ``auto`` draws bars for one row and a heatmap for generation or several rows; ``layers``
        draws ``layer_scores`` as a layers x tokens heatmap per target. Saved as PNG to ``path``
        if given."""
        from saliency_fast.viz import plot as plot_view

        return plot_view.figure(self, kind=kind, path=path)

    # ----------------------------------------------------------------- files

    def to_dict(self) -> dict:
        """Everything as JSON-safe values: tensors as nested lists, NaN and infinities as None."""
        out = self._header(_json_safe(self.metadata, exact=False))
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            out[name] = None if value is None else _json_safe(value.tolist(), exact=False)
        return out

    def to_json(self, path=None, indent: int | None = None) -> str:
        """The :meth:`to_dict` as a JSON string; written atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def save(self, path) -> pathlib.Path:
        """Write ``path`` (JSON) and the tensors to the ``.safetensors`` file beside it; exact.

        Returns the JSON path. Metadata must hold JSON values (str keys; tensors become lists).
        """
        from safetensors.torch import save_file

        path = pathlib.Path(path)
        tensors_path = path.with_suffix(".safetensors")
        if tensors_path == path:
            raise ValueError(f"path must not end in .safetensors (that name is kept for the tensors), got {path}")
        tensors = {name: getattr(self, name).contiguous() for name in _TENSOR_FIELDS if getattr(self, name) is not None}
        header = self._header(_json_safe(self.metadata, exact=True))
        header["tensors"] = tensors_path.name
        with atomic_path(tensors_path) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(path, json.dumps(header, ensure_ascii=False, allow_nan=False))
        return path

    def _header(self, metadata) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokens": self.tokens,
            "targets": self.targets,
            "metadata": metadata,
            "token_ids": self.token_ids,
            "word_ids": self.word_ids,
            "target_ids": self.target_ids,
            "layer_names": self.layer_names,
            "source_tokens": self.source_tokens,
            "source_token_ids": self.source_token_ids,
            "source_word_ids": self.source_word_ids,
        }


def load(path) -> AttributionResult:
    """Read a result written by :meth:`AttributionResult.save` or :meth:`AttributionResult.to_json`."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"path {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"path {str(path)!r} is not a saliency_fast result JSON file: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"path {str(path)!r} is not a saliency_fast result (no format={FORMAT!r} field)")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path {str(path)!r} has format_version {data.get('format_version')!r}; "
                         f"this version reads {FORMAT_VERSION}")
    fields = {name: data.get(name) for name in _LIST_FIELDS}
    if "tensors" in data:
        tensors = _load_tensors(path, data["tensors"])
        metadata = _from_exact_json(data.get("metadata") or {})
    else:
        tensors = {name: _tensor_from_lists(name, data.get(name)) for name in _TENSOR_FIELDS}
        metadata = data.get("metadata") or {}
    if tensors.get("scores") is None:
        raise ValueError(f"path {str(path)!r} holds no scores")
    return AttributionResult(metadata=metadata, **fields, **{n: tensors.get(n) for n in _TENSOR_FIELDS})


def _load_tensors(json_path: pathlib.Path, name) -> dict:
    from safetensors.torch import load_file

    # the name comes from the file: only a plain file name beside the JSON is accepted
    if not isinstance(name, str) or pathlib.PurePath(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"path {str(json_path)!r} names an invalid tensors file {name!r}")
    tensors_path = json_path.parent / name
    if not tensors_path.is_file():
        raise FileNotFoundError(f"tensors file {str(tensors_path)!r} (named by {str(json_path)!r}) does not exist")
    return load_file(str(tensors_path))


def _tensor_from_lists(name: str, value) -> torch.Tensor | None:
    if value is None:
        return None
    if name.endswith("mask"):
        return torch.tensor(value, dtype=torch.bool)
    nan = float("nan")
    return torch.tensor(_replace_none(value, nan), dtype=torch.float32)


def _replace_none(value, fill):
    if isinstance(value, list):
        return [_replace_none(v, fill) for v in value]
    return fill if value is None else value


# ------------------------------------------------------------------- validation helpers


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(name: str, value) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of str, got {_describe(value)}")
    return list(value)


def _int_list(name: str, value, length: int, length_name: str, allow_none_items: bool = False):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    ok = isinstance(value, (list, tuple)) and all(_is_int(v) or (allow_none_items and v is None) for v in value)
    if not ok:
        what = "ints or None" if allow_none_items else "ints"
        raise TypeError(f"{name} must be a list of {what}, got {_describe(value)}")
    if len(value) != length:
        raise ValueError(f"{name} must have one entry per {length_name[2:]} ({length}), got {len(value)}")
    return list(value)


def _bool_mask(name: str, value, shape: tuple[int, int]) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool torch.Tensor or None, got {_describe(value)}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape [{shape[0]}, {shape[1]}], got {tuple(value.shape)}")
    return value.detach().cpu()


def _float_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {_describe(value)}")
    return value.detach().to(device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------- transforms


def _meaningful(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    finite = torch.isfinite(scores)
    return finite if mask is None else finite & mask


def _merge_words(tokens, scores, mask, keep, word_ids, how: str):
    """(tokens, scores, mask, word_ids) of one side with its subword runs merged into words."""
    spans = _word_spans(word_ids)
    merged = _merge_spans(scores, _expand_like(keep, scores), spans, dim=1, how=how)
    merged_mask = None
    if mask is not None:
        merged_mask = torch.stack([keep[:, start:end].any(dim=1) for start, end in spans], dim=1)
    return ([_join_subwords(tokens[start:end]) for start, end in spans], merged, merged_mask,
            [word_ids[start] for start, _ in spans])


def _expand_like(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return keep if scores.dim() == 2 else keep.unsqueeze(-1).expand_as(scores)


def _normalize_rows(values: torch.Tensor, keep: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise over the last dim using only the ``keep`` entries; the others pass through."""
    from saliency_fast.methods.aggregation import normalize

    filled = torch.where(keep, values, torch.zeros_like(values))
    return torch.where(keep, normalize(filled, how), values)


def _word_spans(word_ids: list[int | None]) -> list[tuple[int, int]]:
    """[start, end) of each run of equal word ids; a token without a word id is its own span."""
    spans = []
    for i, word in enumerate(word_ids):
        if spans and word is not None and word_ids[spans[-1][0]] == word:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def _merge_spans(values: torch.Tensor, keep: torch.Tensor, spans, dim: int, how: str) -> torch.Tensor:
    merged = []
    for start, end in spans:
        part = values.narrow(dim, start, end - start)
        kept = keep.narrow(dim, start, end - start)
        filled = torch.where(kept, part, torch.zeros_like(part))
        count = kept.sum(dim)
        if how == "max_abs":
            pick = torch.where(kept, part.abs(), torch.full_like(part, -1.0)).argmax(dim, keepdim=True)
            value = filled.gather(dim, pick).squeeze(dim)
        else:
            value = filled.sum(dim)
            if how == "mean":
                value = value / count.clamp(min=1)
        merged.append(torch.where(count > 0, value, torch.full_like(value, float("nan"))))
    return torch.stack(merged, dim=dim)


def _join_subwords(pieces: list[str]) -> str:
    if len(pieces) == 1:
        return pieces[0]
    text = []
    for piece in pieces:
        piece = piece.removeprefix(_CONTINUATION_PREFIX)
        for marker in _SPACE_MARKERS:
            piece = piece.removeprefix(marker)
        text.append(piece)
    return "".join(text)


# ------------------------------------------------------------------- JSON values


def _json_safe(value, exact: bool, where: str = "metadata"):
    """JSON values from ``value``. ``exact`` keeps non-finite floats as tagged objects (read back by
    :func:`_from_exact_json`) and refuses what cannot round-trip; otherwise they become None / str."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    elif hasattr(value, "tolist") and type(value).__module__ == "numpy":
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": repr(value)} if exact else None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                if exact:
                    raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; expected str keys")
                key = str(key)
            out[key] = _json_safe(item, exact, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_safe(item, exact, f"{where}[{i}]") for i, item in enumerate(value)]
    if exact:
        raise TypeError(f"{where} is a {type(value).__name__}; save() stores only JSON values (str, int, float, "
                        f"bool, None, list, dict) and tensors")
    return str(value)


def _from_exact_json(value):
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {key: _from_exact_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_exact_json(item) for item in value]
    return value
