"""Encoder-decoder models (T5, BART, Marian, mBART) as one sequence for the single causal pass.

The engine of :mod:`saliency_fast.hf.causal_pass` attributes targets read from one sequence of word
embeddings, each target depending only on the rows up to its scoring position. An encoder-decoder
model has that shape when its source and target embeddings lie end to end, ``[source; target]``:
target token ``j`` (scored at decoder position ``j - 1``) reads every source row and the target rows
before it, all at or before row ``S + j - 1``. A chunk of targets cut to its prefix keeps the whole
source, so every method of the pass runs unchanged, and a path moves source and target embeddings
together, as inseq's does. The source scores are the first ``S`` columns of each row.

Conventions (inseq 0.7.1's, so results compare one to one): the source is tokenized with the
tokenizer's special tokens; ``generated_text`` is the target text alone, tokenized with
``text_target=`` and with the model's decoder start token put first; every target token after the
start token is attributed, EOS included. Greedy generation keeps ``generate()``'s own ids.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from saliency_fast.hf import model_io
from saliency_fast.hf import targets as target_fns
from saliency_fast.hf.lm_head import _row_logits, agrees
from saliency_fast.hf.probe_cache import probed


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


@dataclasses.dataclass(frozen=True)
class Seq2SeqIds:
    """The source ids and the target ids (the decoder start token first)."""

    source: list[int]
    target: list[int]

    @property
    def ids(self) -> list[int]:
        return self.source + self.target


def sequence_ids(model, tokenizer, prompt: str, max_new_tokens: int | None, generated_text: str | None) -> Seq2SeqIds:
    """The source's ids and the target's: ``generated_text`` forced (cut to ``max_new_tokens``
    tokens after the start token), or ``max_new_tokens`` generated greedily."""
    source = [int(i) for i in tokenizer(prompt, add_special_tokens=True)["input_ids"]]
    if not source:
        raise ValueError(f"prompt {prompt!r} has no tokens")
    model_io.check_length(len(source), model, "prompt (the source)")
    start = decoder_start_id(model)
    if generated_text is not None:
        _check_target_text(prompt, generated_text)
        ids = [int(i) for i in tokenizer(text_target=generated_text, add_special_tokens=True)["input_ids"]]
        target = ([start] + ids)[: None if max_new_tokens is None else 1 + int(max_new_tokens)]
    else:
        target = _greedy(model, tokenizer, source, int(max_new_tokens))
    model_io.check_length(len(target), model, "generated_text (the target)")
    return Seq2SeqIds(source, target)


def contrast_target_ids(model, tokenizer, contrast_text: str, n_target: int) -> list[int]:
    """The contrastive target text's ids as a target's (the decoder start token first, then
    ``text_target=`` tokens), cut to ``n_target``: token ``j`` competes with the target's token ``j``
    (inseq's default 1:1 alignment of ``contrast_targets``)."""
    if not contrast_text.strip():
        raise ValueError("contrast_targets is empty; for an encoder-decoder model it is the alternative target text")
    ids = [decoder_start_id(model)] + [int(i) for i in tokenizer(text_target=contrast_text, add_special_tokens=True)["input_ids"]]
    if len(ids) < n_target:
        raise ValueError(f"contrast_targets has {len(ids) - 1} tokens, fewer than the {n_target - 1} of the target: "
                         "it is aligned token by token, so it needs at least as many")
    return ids[:n_target]


def decoder_start_id(model) -> int:
    for config in (getattr(model, "generation_config", None), model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    raise ValueError(f"{type(model).__name__} has no decoder_start_token_id (in its config or generation config): "
                     "the target cannot be started")


def _check_target_text(prompt: str, generated_text: str) -> None:
    if not generated_text.strip():
        raise ValueError("generated_text is empty; for an encoder-decoder model it is the target text to attribute")
    if prompt.strip() and generated_text.startswith(prompt) and len(generated_text) > len(prompt):
        raise ValueError(
            "generated_text starts with the prompt: for an encoder-decoder model generated_text is the target text "
            "alone (inseq's convention), not prompt + continuation as for a decoder-only model"
        )


def _greedy(model, tokenizer, source: list[int], max_new_tokens: int) -> list[int]:
    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([source], device=device)
    pad = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad)
    return [int(i) for i in out[0].tolist()]


class SequenceEmbedding(nn.Module):
    """Word embeddings of ``[source ids; target ids]`` as the model consumes them through
    ``inputs_embeds`` / ``decoder_inputs_embeds``: each side through its own table, times the scale
    that side needs (Marian scales ids inside the encoder, not embeddings; found by a probe)."""

    def __init__(self, model: nn.Module, n_source: int):
        super().__init__()
        self.encoder_table, self.decoder_table = _tables(model)
        self.scales = probed(model, _probe_scales)
        if self.scales is None:
            raise ValueError(f"{type(model).__name__}: feeding word embeddings does not reproduce the model's outputs "
                             "from token ids, so its inputs cannot be attributed")
        self.n_source = n_source

    @property
    def embedding_dim(self) -> int:
        return self.encoder_table.embedding_dim

    @property
    def shared(self) -> bool:
        """One table whose rows are the embeddings, unscaled on either side: the sequence lives in
        the space of :attr:`weight` (a scaled table such as BART's multiplies its rows)."""
        probe = torch.zeros(1, dtype=torch.long, device=self.weight.device)
        unscaled = torch.equal(self.encoder_table(probe), self.weight[probe])
        same = self.encoder_table.weight.data_ptr() == self.decoder_table.weight.data_ptr()
        return same and self.scales == (1.0, 1.0) and unscaled

    @property
    def weight(self) -> torch.Tensor:
        return self.encoder_table.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        source, target = ids[..., : self.n_source], ids[..., self.n_source :]
        return torch.cat([self.encoder_table(source) * self.scales[0], self.decoder_table(target) * self.scales[1]], -2)


def _tables(model: nn.Module) -> tuple[nn.Embedding, nn.Embedding]:
    tables = []
    for part in (model.get_encoder(), model.get_decoder()):
        table = getattr(part, "embed_tokens", None) or model.get_input_embeddings()
        if not isinstance(table, nn.Embedding):
            raise TypeError(f"{type(model).__name__}: expected nn.Embedding input tables, got {type(table).__name__}")
        tables.append(table)
    return tables[0], tables[1]


def _probe_input(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probes' tiny source and target ids and the logits the model gives them."""
    encoder_table = _tables(model)[0]
    n = min(4, encoder_table.num_embeddings)
    source = torch.arange(n, device=encoder_table.weight.device).unsqueeze(0)
    target = torch.tensor([[decoder_start_id(model), *range(min(3, n))]], device=source.device)
    with torch.no_grad():
        expected = model(input_ids=source, decoder_input_ids=target, use_cache=False).logits.float()
    return source, target, expected


def _probe_scales(model: nn.Module) -> tuple[float, float] | None:
    """The (source, target) multipliers under which embeddings reproduce the outputs of token ids."""
    encoder_table, decoder_table = _tables(model)
    candidates = {1.0}
    for part in (model.get_encoder(), model.get_decoder()):
        scale = getattr(part, "embed_scale", None)
        if isinstance(scale, (int, float)):
            candidates.add(float(scale))
    source, target, expected = _probe_input(model)
    with torch.no_grad():
        for a in sorted(candidates):
            for b in sorted(candidates):
                got = model(inputs_embeds=encoder_table(source) * a, decoder_inputs_embeds=decoder_table(target) * b,
                            use_cache=False).logits.float()
                if agrees(got, expected, encoder_table.weight.dtype):
                    return a, b
    return None


@dataclasses.dataclass(frozen=True)
class _Head:
    """How the decoder's final hidden states become logits: ``(scale * h) @ W.T (+ final_logits_bias)``
    (T5 scales by ``d_model ** -0.5`` when its head is tied; BART's family adds a bias buffer)."""

    scale: float
    final_bias: bool


def _decoder_hidden(model: nn.Module, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    encoded = model.get_encoder()(inputs_embeds=source).last_hidden_state
    return model.get_decoder()(inputs_embeds=target, encoder_hidden_states=encoded, use_cache=False).last_hidden_state


def _probe_head(model: nn.Module) -> _Head | None:
    """The head that ``head(body(x))`` reproduces the model's logits with, or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    scales = probed(model, _probe_scales)
    if not isinstance(head, nn.Linear) or scales is None:
        return None
    encoder_table, decoder_table = _tables(model)
    source, target, expected = _probe_input(model)
    d_model = getattr(model.config, "d_model", None) or head.weight.shape[1]
    with torch.no_grad():
        try:
            hidden = _decoder_hidden(model, encoder_table(source) * scales[0], decoder_table(target) * scales[1])
        except (TypeError, ValueError, AttributeError):
            return None
        for candidate in (_Head(scale, bias) for scale in (1.0, d_model**-0.5) for bias in (True, False)):
            if candidate.final_bias and not isinstance(getattr(model, "final_logits_bias", None), torch.Tensor):
                continue
            got = head(hidden * candidate.scale).float() + (model.final_logits_bias.float() if candidate.final_bias else 0)
            if got.shape == expected.shape and agrees(got, expected, head.weight.dtype):
                return candidate
    return None


class Seq2SeqScorer:
    """``scores(embeds, positions, token_ids, target)`` as :class:`~saliency_fast.hf.lm_head.CausalLMScorer`
    gives them, over ``[source; target]`` rows (``positions`` count from the first source row).

    ``head="auto"`` splits the model into its encoder-decoder body and its head where a probe shows
    ``head(body(x))`` gives the model's logits: a ``logit`` target then reads only its row of the head,
    and the batched backward starts at the decoder's hidden states (:attr:`splits`, as for causal LMs).
    """

    def __init__(self, model: nn.Module, n_source: int, head: str = "auto"):
        self.model = model
        self.n_source = n_source
        self._head = probed(model, _probe_head) if head == "auto" else None

    @property
    def splits(self) -> bool:
        return self._head is not None

    def scores(self, embeds: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor, target: str) -> torch.Tensor:
        target_fns.check_target_fn(target)
        if self.splits:
            return self.head_scores(self.hidden(embeds)[:, positions], token_ids, target)
        logits = self.logits_at(embeds, positions)
        index = token_ids.to(logits.device).expand(*logits.shape[:-1], *token_ids.shape[1:])  # [T, 2]: contrastive
        return target_fns.score_from_logits(logits, index, target).float()

    def hidden(self, embeds: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S + L, D]``: zeros at the source rows, the decoder's (scaled) final hidden states at
        the target rows (only when :attr:`splits`; ``rows`` is accepted as the causal scorer's)."""
        s = self.n_source
        decoded = _decoder_hidden(self.model, embeds[:, :s], embeds[:, s:]) * self._head.scale
        return torch.cat([decoded.new_zeros((decoded.shape[0], s, decoded.shape[2])), decoded], dim=1)

    def head_scores(self, hidden: torch.Tensor, token_ids: torch.Tensor, target: str) -> torch.Tensor:
        """Scores ``[B, T]`` of ``token_ids[i]`` from the hidden states ``hidden[:, i]`` at the targets'
        positions (only when :attr:`splits`)."""
        head = self.model.get_output_embeddings()
        bias = self.model.final_logits_bias[0] if self._head.final_bias else None
        if target == "logit":
            out = _row_logits(head, hidden, token_ids)
            return out if bias is None else out + bias.index_select(0, token_ids.to(bias.device)).float()
        logits = head(hidden) if bias is None else head(hidden) + bias
        index = token_ids.to(logits.device).expand(*logits.shape[:-1], *token_ids.shape[1:])
        return target_fns.score_from_logits(logits, index, target).float()

    def _forward(self, embeds: torch.Tensor, **kwargs):
        s = self.n_source
        return self.model(inputs_embeds=embeds[:, :s], decoder_inputs_embeds=embeds[:, s:], use_cache=False, **kwargs)

    def row_span(self, module: nn.Module, n_tokens: int) -> tuple[int, int]:
        """The rows a module's output covers: the source for the encoder's, the target for the decoder's."""
        if any(module is m for m in self.model.get_encoder().modules()):
            return 0, self.n_source
        if any(module is m for m in self.model.get_decoder().modules()):
            return self.n_source, n_tokens
        raise ValueError(f"layer attribution of an encoder-decoder model needs modules of its encoder or decoder, "
                         f"got a {type(module).__name__}")

    def logits_at(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self._forward(embeds).logits[:, positions - self.n_source]

    def attention_rows(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Attention of each scoring position (heads averaged): cross-attention to the source beside
        the decoder's self-attention to the target prefix, ``[T, layers, S + L_target]``."""
        out = self._forward(embeds[:1], output_attentions=True)
        cross, own = getattr(out, "cross_attentions", None), getattr(out, "decoder_attentions", None)
        if not cross or not own:
            raise ValueError(f"method 'attention': {type(self.model).__name__} returns no attention weights")
        rows = positions - self.n_source
        layers = [torch.cat([c[0].float().mean(0), d[0].float().mean(0)], -1)[rows] for c, d in zip(cross, own)]
        return torch.stack(layers, dim=1)
