"""GPT-2: learned positions, LayerNorm, one Conv1D for queries, keys and values, a plain MLP."""

from __future__ import annotations

from torch import nn

from saliency_fast.hf.decoder_blocks import MLP, Attention, Block, Decoder, Norm, Projection
from saliency_fast.methods import lean_backward


def describe(model) -> Decoder | None:
    body = getattr(model, "transformer", None)
    if type(body).__name__ != "GPT2Model":
        return None
    blocks = []
    for block in body.h:
        attn, mlp = block.attn, block.mlp
        fused = lean_backward.activation_pair(mlp.act)
        if fused is None or hasattr(block, "crossattention"):
            return None
        blocks.append(Block(
            norm1=layer_norm(block.ln_1),
            attention=Attention(_conv(attn.c_attn), _conv(attn.c_proj), attn.num_heads, attn.num_heads,
                                attn.head_dim, attn.scaling),
            norm2=layer_norm(block.ln_2),
            mlp=MLP(_conv(mlp.c_fc), _conv(mlp.c_proj), fused),
        ))
    return Decoder("gpt2", blocks, layer_norm(body.ln_f), positions=body.wpe.weight.detach())


def layer_norm(norm: nn.LayerNorm) -> Norm:
    return Norm(norm.weight.detach(), None if norm.bias is None else norm.bias.detach(), norm.eps)


def _conv(conv) -> Projection:
    """transformers' ``Conv1D`` keeps its weight ``[in, out]`` already."""
    return Projection(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())
