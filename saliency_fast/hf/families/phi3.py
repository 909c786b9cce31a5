"""Phi-3: the Llama layout with queries, keys and values in one projection, gate and up in one."""

from __future__ import annotations

from saliency_fast.hf.decoder_blocks import MLP, Attention, Block, Decoder, Projection
from saliency_fast.hf.families.llama import rms_norm
from saliency_fast.methods import lean_backward


def describe(model) -> Decoder | None:
    if getattr(model.config, "model_type", None) != "phi3":
        return None
    body, config = model.model, model.config
    blocks = []
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fused = lean_backward.activation_pair(mlp.activation_fn)
        if fused is None:
            return None
        blocks.append(Block(
            norm1=rms_norm(layer.input_layernorm),
            attention=Attention(Projection.linear(attn.qkv_proj), Projection.linear(attn.o_proj),
                                config.num_attention_heads, config.num_key_value_heads, attn.head_dim, attn.scaling,
                                window=getattr(config, "sliding_window", None)),
            norm2=rms_norm(layer.post_attention_layernorm),
            mlp=MLP(Projection.linear(mlp.gate_up_proj), Projection.linear(mlp.down_proj), fused, gated=True),
        ))
    return Decoder("phi3", blocks, rms_norm(body.norm), rotary=body.rotary_emb)
