"""Every generation target's gradient from kept forwards and one backward written over shared blocks.

The generic single pass (:mod:`saliency_fast.hf.causal_pass`) runs one forward per chunk of targets
(and batch of points) and batches the chunk's backward through autograd under vmap: every target of
a chunk runs over the chunk's longest prefix, the forward is recomputed per chunk, and vmap glues the
shared forward to the batched gradients with copies. Where a family describes its model with the
blocks of :mod:`saliency_fast.hf.decoder_blocks` (``saliency_fast/hf/families/``), this pass does
instead:

- one forward per batch of points (the input, path points, noisy copies) over the whole sequence
  keeps what the backward reads; by causality every prefix's activations are the first rows of the
  sequence's, so it serves every target;
- the backward, written once over the blocks, runs for a batch of targets over those shared
  activations: each weight's input gradient is one matmul over every target's rows;
- targets go in small chunks of neighbouring positions, each on its own prefix;
- the last block runs at each target's own row only (its query, attention output, MLP and the final
  norm are read there and nowhere else); its keys and values reach every earlier row.

A probe on a tiny input checks, once per model and set of forward hooks, that the described forward
gives the model's hidden states and its backward autograd's gradients; a model whose family has a
description but fails the probe warns once and takes the generic pass. :func:`select` says which
pass runs and why (``metadata["engine"]`` of a generation result).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from saliency_fast.hf import families, lm_head
from saliency_fast.hf.probe_cache import probed
from saliency_fast.hf.decoder_blocks import (AttentionState, Block, Decoder, MLPState, NormState, TargetRows, at_rows,
                                             crop)

# Saved activations of the shared forward: the pass is taken only below this (attention
# probabilities grow with the square of the length; longer sequences take the generic pass, whose
# memory stays bounded).
MAX_STATE_BYTES = 1 << 30

# Targets per backward: small, so padding each to the chunk's longest prefix stays small (a chunk
# of k neighbouring targets pads (k - 1) / 2 rows per target on average), yet each matmul still
# has a few hundred rows (k x prefix length) to run at full speed.
TARGETS_PER_CHUNK = 8


@dataclasses.dataclass
class _BlockState:
    block: Block
    norm1: NormState
    attention: AttentionState
    norm2: NormState
    mlp: MLPState


@dataclasses.dataclass
class ForwardState:
    """The shared forward over ``S`` points of ``L`` tokens: final hidden states ``[S, L, D]`` and
    what the backward reads."""

    hidden: torch.Tensor
    blocks: list[_BlockState]
    final_norm: NormState


class DecoderPass:
    """Forward and target-batched backward of a described decoder body."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder

    @property
    def family(self) -> str:
        return self.decoder.family

    def state_bytes(self, n_points: int, length: int) -> int:
        """Bytes :meth:`forward` keeps (float32) for ``n_points`` points of ``length`` tokens."""
        total = 0
        for block in self.decoder.blocks:
            att, width = block.attention, block.norm1.weight.shape[0]
            inner = block.mlp.down.weight.shape[0] * (2 if block.mlp.gated else 1)
            per_token = 2 * width + (att.n_heads + 2 * att.n_kv_heads) * att.head_dim + inner + 4
            total += length * (per_token + att.n_heads * length)
        return n_points * total * 4

    def weights(self, dtype: torch.dtype | None = None) -> list[Block]:
        """Every block with its matmuls in ``dtype`` (None: the model's own weights, no copy;
        ``torch.bfloat16``: one cast per call, as autocast's)."""
        return [block.cast(dtype) for block in self.decoder.blocks]

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, blocks: list[Block] | None = None) -> ForwardState:
        """The body's forward on word embeddings ``[S, L, D]``, keeping what :meth:`backward` reads."""
        blocks = self.weights() if blocks is None else blocks
        decoder, length = self.decoder, embeds.shape[1]
        h = embeds if decoder.positions is None else embeds + decoder.positions[:length]
        cos = sin = None
        if decoder.rotary is not None:
            cos, sin = decoder.rotary(h, torch.arange(length, device=h.device).unsqueeze(0))
            cos, sin = cos[0].to(h.dtype).unsqueeze(1), sin[0].to(h.dtype).unsqueeze(1)  # [L, 1, dh]
        states = []
        for block in blocks:
            a, norm1 = block.norm1.forward(h)
            out, attention = block.attention.forward(a, cos, sin)
            h = h + out
            m, norm2 = block.norm2.forward(h)
            out, mlp = block.mlp.forward(m)
            h = h + out
            states.append(_BlockState(block, norm1, attention, norm2, mlp))
        hidden, final = decoder.final_norm.forward(h)
        return ForwardState(hidden, states, final)

    @torch.no_grad()
    def backward(self, state: ForwardState, positions: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """``d score_i / d embeds`` ``[T, S, Lc, D]`` for targets read at ``positions`` (``[T]``) whose
        gradients at the final hidden states (there only) are ``seeds`` (``[S, T, D]``); ``Lc`` is
        ``max(positions) + 1`` (every target's rows after its own position are zero)."""
        rows = TargetRows(positions, seeds.shape[0], int(positions.max()) + 1)
        top = self.decoder.final_norm.backward(seeds.transpose(0, 1), at_rows(state.final_norm, positions))
        grad = self._last_block(state.blocks[-1], positions, top, rows)
        for saved in state.blocks[-2::-1]:
            grad = self._block(saved, grad, rows)
        return grad  # learned positions are added: the same gradient

    @staticmethod
    def _last_block(saved: _BlockState, positions: torch.Tensor, top: torch.Tensor, rows: TargetRows) -> torch.Tensor:
        """The last block's backward from its output gradient ``top`` at each target's row
        (``[T, S, D]``): MLP, norms and query at that row only, keys and values at every row."""
        block = saved.block
        inner = block.mlp.backward(top, at_rows(saved.mlp, positions))
        top = top + block.norm2.backward(inner, at_rows(saved.norm2, positions))
        d_a = block.attention.backward_at_rows(top, saved.attention, positions, rows)
        grad = block.norm1.backward(d_a, crop(saved.norm1, rows.shape[2]))
        grad[torch.arange(len(positions), device=top.device), :, positions] += top
        return grad

    @staticmethod
    def _block(saved: _BlockState, grad: torch.Tensor, rows: TargetRows) -> torch.Tensor:
        """One block's backward for gradients ``[T, S, Lc, D]`` of its output."""
        block, length = saved.block, rows.shape[2]
        inner = block.mlp.backward(grad, crop(saved.mlp, length), rows)
        grad = grad + block.norm2.backward(inner, crop(saved.norm2, length))
        d_a = block.attention.backward(grad, saved.attention, rows)
        return grad + block.norm1.backward(d_a, crop(saved.norm1, length))


# -------------------------------------------------------------------------------- selection


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which gradient pass runs (``engine``: the described pass, or None for autograd) and why."""

    engine: DecoderPass | None
    reason: str

    def metadata(self) -> dict:
        """``metadata["engine"]`` of a generation result."""
        name = "layered" if self.engine is not None else "autograd"
        family = self.engine.family if self.engine is not None else None
        return {"name": name, "family": family, "reason": self.reason}


def select(model: nn.Module, n_points: int, length: int, dtype: torch.dtype | None) -> Selection:
    """The described pass for ``n_points`` points of ``length`` tokens when it computes what the
    model computes: a family describes the model (``saliency_fast/hf/families/``), eval mode
    (dropout off), a float32 or float64 model, ``dtype`` None or ``torch.bfloat16`` (its matmuls
    then run in bf16, the rest as under autocast), saved activations within
    :data:`MAX_STATE_BYTES`, and the probe passed (once per model and set of forward hooks: a hook
    that changes an output turns the pass off; hooks that only observe do not run in it)."""
    if model.training:
        return Selection(None, "the model is in training mode (dropout on)")
    weights = model.get_input_embeddings().weight.dtype
    if weights not in (torch.float32, torch.float64):
        return Selection(None, f"the model's weights are {str(weights).replace('torch.', '')}: the described pass "
                               "keeps float32 (or float64) norms and residuals")
    if dtype not in (None, torch.bfloat16):
        return Selection(None, f"dtype {str(dtype).replace('torch.', '')}: the described pass runs float32 or bf16")
    engine, reason = probed(model, _probe, key=_hooks_key(getattr(model, "base_model", model)))
    if engine is None:
        return Selection(None, reason)
    size = engine.state_bytes(n_points, length)
    if size > MAX_STATE_BYTES:
        return Selection(None, f"kept activations {size / 2**30:.2f} GiB > {MAX_STATE_BYTES / 2**30:.0f} GiB "
                               f"({n_points} point(s) x {length} tokens)")
    return Selection(engine, f"{engine.family} description, probe passed")


def _hooks_key(body: nn.Module) -> tuple:
    """The forward (pre-)hooks that run in ``body``: global ones and each module's, by handle id."""
    from torch.nn.modules import module as torch_module

    return (
        tuple(torch_module._global_forward_hooks), tuple(torch_module._global_forward_pre_hooks),
        tuple((id(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
              for m in body.modules() if m._forward_hooks or m._forward_pre_hooks),
    )


def _probe(model: nn.Module) -> tuple[DecoderPass | None, str]:
    """The described pass of ``model`` when its forward gives the model's hidden states and its
    backward autograd's gradients on a tiny input; else None and why. A described model that fails
    warns (once per model and set of hooks)."""
    try:
        decoder = families.describe(model)
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        return None, f"no description: {type(error).__name__}: {error}"
    if decoder is None:
        return None, f"no family describes {type(model).__name__}"
    engine = DecoderPass(decoder)
    embeds = lm_head.probe_embeds(model, 5).detach()
    positions = torch.tensor([1, embeds.shape[1] - 1], device=embeds.device)
    dtype = embeds.dtype
    try:
        state = engine.forward(embeds)
        seeds = torch.randn(state.hidden[:, positions].shape, generator=torch.Generator().manual_seed(0)).to(embeds)
        grads = engine.backward(state, positions, seeds)
        with torch.enable_grad():
            x = embeds.clone().requires_grad_(True)
            hidden = lm_head.body_hidden(model, x)
            expected = torch.stack([
                torch.autograd.grad((hidden[:, p] * seeds[:, i]).sum(), x, retain_graph=True)[0]
                for i, p in enumerate(positions.tolist())
            ])
        same = lm_head.agrees(state.hidden, hidden.detach(), dtype) and lm_head.agrees(grads, expected, dtype)
        why = "its forward or backward differs from the model's"
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        same, why = False, f"{type(error).__name__}: {error}"
    if same:
        return engine, "probe passed"
    reason = f"the {decoder.family} description failed its probe ({why})"
    warnings.warn(f"{type(model).__name__}: {reason}; generation takes the generic autograd pass "
                  "(slower, same numbers)", RuntimeWarning, stacklevel=3)
    return None, reason
