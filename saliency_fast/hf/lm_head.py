"""Scores of chosen tokens at chosen positions of a causal LM, computing as little of the head as possible.

A causal LM's vocabulary projection costs ``V x D`` per position (~30 % of GPT-2-small's compute),
yet attribution needs one score per generated token, read at the position before it. So the scorer
splits the model into its body (``base_model``: embeddings in, final hidden states out) and its
head, applied at the target positions only:

- target ``logit``: only the target rows of the head, ``hidden[pos] . W[token] (+ b[token])``;
- ``prob`` / ``logprob`` / ``loss``: the full head at the target positions (the softmax needs the
  log-sum-exp over the whole vocabulary there, and nowhere else).

The split also lets the backward start from the hidden states (see
:meth:`saliency_fast.hf.causal_pass.CausalPass.gradients`), and lets the body skip work no score
reads: the last block's MLP is row-wise and followed only by row-wise ops (residual, final norm),
so it runs at the target positions only (:func:`mlp_at_rows`; GPT-2-small: ~5 % of the backward's
matmul work in generation saliency, where each target's backward otherwise carries it over its whole
prefix). It skips the model's own head code
(final logit scaling, soft-capping), so it is used only after a probe shows ``head(body(x))``
gives the model's logits (one tiny forward per model, cached); otherwise, and with
``head="full"``, the model's own forward runs, with ``logits_to_keep`` at the target positions.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from saliency_fast.hf import targets as target_fns
from saliency_fast.hf.probe_cache import probed
from saliency_fast.hf.layers import transformer_blocks

HEAD_CHOICES = ("auto", "full")
# rel. tolerance of the probe that compares head(body(x)) with the model's own logits: the same
# matmul either way, so only summation order differs; tight enough to catch a final soft-cap even
# on the small logits of a randomly initialised model
_PROBE_RTOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
_PROBE_RTOL_DEFAULT = 1e-5


class CausalLMScorer:
    """``scores(embeds, positions, token_ids, target)``: the target score of ``token_ids[i]`` read at
    ``positions[i]`` for every row of ``embeds`` (``[B, L, D]`` word embeddings) -> ``[B, T]`` float32.

    ``head="auto"`` splits body and head when the model allows it (:attr:`splits`); ``"full"``
    always runs the model's own forward (its head at the target positions only).
    """

    def __init__(self, model: nn.Module, head: str = "auto"):
        if head not in HEAD_CHOICES:
            raise ValueError(f"lm_head must be one of {HEAD_CHOICES}, got {head!r}")
        self.model = model
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._splits = head == "auto" and probed(model, _probe_split)

    @property
    def splits(self) -> bool:
        """True when scores come from :meth:`hidden` then :meth:`head_scores` (``logit`` targets
        then read only the target rows of the head)."""
        return self._splits

    def scores(self, embeds: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor, target: str) -> torch.Tensor:
        target_fns.check_target_fn(target)
        if self._splits:
            return self.head_scores(self.hidden(embeds)[:, positions], token_ids, target)
        logits = self.logits_at(embeds, positions)
        index = token_ids.to(logits.device).expand(*logits.shape[:-1], *token_ids.shape[1:])  # [T, 2]: contrastive
        return target_fns.score_from_logits(logits, index, target).float()

    def hidden(self, embeds: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The body's final hidden states ``[B, L, D]`` (only when :attr:`splits`); with ``rows``
        (positions ``[T]``) they are exact at those rows only: the rest of the last block's MLP is
        skipped when the model allows it (see :func:`mlp_at_rows`)."""
        mlp = probed(self.model, _probe_last_mlp) if rows is not None else None
        with contextlib.nullcontext() if mlp is None else mlp_at_rows(mlp, rows):
            return body_hidden(self.model, embeds)

    def head_scores(self, hidden: torch.Tensor, token_ids: torch.Tensor, target: str) -> torch.Tensor:
        """Scores ``[B, T]`` (float32) of ``token_ids[i]`` from ``hidden[:, i]`` (``[B, T, D]``, the
        hidden states at the target positions; only when :attr:`splits`)."""
        head = self.model.get_output_embeddings()
        if target == "logit":
            return _row_logits(head, hidden, token_ids)
        logits = head(hidden)
        index = token_ids.to(logits.device).expand(*logits.shape[:-1], *token_ids.shape[1:])
        return target_fns.score_from_logits(logits, index, target).float()

    def logits_at(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model's full-vocabulary logits at ``positions`` only: ``[B, T, V]``."""
        if self._takes_logits_to_keep:
            return self.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=positions).logits
        return self.model(inputs_embeds=embeds, use_cache=False).logits[:, positions]


    def row_span(self, module: nn.Module, n_tokens: int) -> tuple[int, int]:
        """The rows of the sequence a block's output covers: all of them."""
        return 0, n_tokens

    def attention_rows(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Attention paid by each of ``positions`` to every token (heads averaged), ``[T, layers, L]``."""
        out = self.model(inputs_embeds=embeds[:1], output_attentions=True, use_cache=False)
        attentions = getattr(out, "attentions", None)
        if not attentions:
            raise ValueError(f"method 'attention': {type(self.model).__name__} returns no attention weights")
        return torch.stack([a[0].float().mean(0)[positions] for a in attentions], dim=1)


def body_hidden(model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """Final hidden states ``[B, L, D]`` of the model without its LM head."""
    out = model.base_model(inputs_embeds=embeds, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _row_logits(head: nn.Linear, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``hidden[:, i] . W[token_ids[i]] + b[token_ids[i]]`` in float32: ``[B, T]``."""
    rows = head.weight.index_select(0, token_ids.to(head.weight.device)).float()
    out = (hidden.float() * rows).sum(-1)
    if head.bias is not None:
        out = out + head.bias.index_select(0, token_ids.to(head.bias.device)).float()
    return out


def probe_embeds(model: nn.Module, n_tokens: int) -> torch.Tensor:
    """Word embeddings ``[1, n]`` of the first ``n_tokens`` ids: the probes' tiny input."""
    embedding = model.get_input_embeddings()
    ids = torch.arange(min(n_tokens, embedding.num_embeddings), device=embedding.weight.device)
    return embedding(ids.unsqueeze(0))


def agrees(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    """Max |got - expected| within the probe tolerance of ``dtype``, relative to max |expected|."""
    scale = expected.abs().max().clamp_min(1e-6)
    return bool(((got - expected).abs().max() / scale) <= _PROBE_RTOL.get(dtype, _PROBE_RTOL_DEFAULT))


def _probe_split(model: nn.Module) -> bool:
    """Whether ``body(x) @ W.T + b`` reproduces ``model(x).logits``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or base is None or base is model:
        return False
    with torch.no_grad():
        embeds = probe_embeds(model, 4)
        try:
            expected = model(inputs_embeds=embeds, use_cache=False).logits.float()
            hidden = body_hidden(model, embeds)
        except (TypeError, ValueError, AttributeError):
            return False
        got = head(hidden).float()
    return got.shape == expected.shape and agrees(got, expected, head.weight.dtype)


# names of a block's feed-forward module across Hugging Face decoders
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


@contextlib.contextmanager
def mlp_at_rows(mlp: nn.Module, rows: torch.Tensor):
    """Within the block, ``mlp`` (row-wise: each token's output depends on that token only) runs at
    ``rows`` of its ``[B, L, D]`` input only; its output is zero elsewhere."""
    original = mlp.forward

    def forward(x, *args, **kwargs):
        if args or kwargs or not isinstance(x, torch.Tensor) or x.dim() != 3:
            return original(x, *args, **kwargs)
        out = original(x[:, rows])
        full = out.new_zeros((*x.shape[:2], out.shape[-1]))
        full[:, rows] = out
        return full

    mlp.forward = forward
    try:
        yield
    finally:
        del mlp.forward


def _probe_last_mlp(model: nn.Module) -> nn.Module | None:
    """The last block's MLP when running it at chosen rows keeps the hidden states there; else None."""
    try:
        blocks = [block for _, block in transformer_blocks(model)]
    except ValueError:
        return None
    mlp = next((getattr(blocks[-1], n) for n in _MLP_NAMES if isinstance(getattr(blocks[-1], n, None), nn.Module)), None)
    # a module shared with another block would be cut there too
    if mlp is None or any(m is mlp for block in blocks[:-1] for m in block.modules()):
        return None
    with torch.no_grad():
        embeds = probe_embeds(model, 5)
        rows = torch.tensor([1, embeds.shape[1] - 1], device=embeds.device)
        try:
            expected = body_hidden(model, embeds)[:, rows].float()
            with mlp_at_rows(mlp, rows):
                got = body_hidden(model, embeds)[:, rows].float()
        except (TypeError, ValueError, AttributeError, IndexError, RuntimeError):
            return None
    dtype = next((p.dtype for p in mlp.parameters()), torch.float32)
    return mlp if agrees(got, expected, dtype) else None
