"""Llama and the families built like it (Mistral, Qwen2, Qwen3): RMSNorm, rotary embeddings,
grouped-query attention (Qwen3: RMSNorm on each query and key head), a gated MLP."""

from __future__ import annotations

from saliency_fast.hf.decoder_blocks import MLP, Attention, Block, Decoder, Norm, Projection
from saliency_fast.methods import lean_backward

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def describe(model) -> Decoder | None:
    if getattr(model.config, "model_type", None) not in MODEL_TYPES:
        return None
    return describe_layout(model, model.config.model_type)


def describe_layout(model, family: str, norm_offset: float = 0.0) -> Decoder | None:
    """The Llama layout (``model.model`` with ``layers``, ``norm``, ``rotary_emb``; each layer's
    ``input_layernorm``, ``self_attn`` (q/k/v/o projections), ``post_attention_layernorm``, ``mlp``
    (gate/up/down)); ``norm_offset``: RMSNorm scales by ``offset + weight`` (Gemma: 1)."""
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "rotary_emb") or not hasattr(body, "layers"):
        return None
    config = model.config
    blocks = []
    for layer in body.layers:
        attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
        if mlp is None or not hasattr(mlp, "gate_proj") or not hasattr(attn, "q_proj"):
            return None
        fused = lean_backward.activation_pair(mlp.act_fn)
        if fused is None:
            return None
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        window = getattr(attn, "sliding_window", getattr(config, "sliding_window", None))
        blocks.append(Block(
            norm1=rms_norm(layer.input_layernorm, norm_offset),
            attention=Attention(
                Projection.linear(attn.q_proj, attn.k_proj, attn.v_proj), Projection.linear(attn.o_proj),
                config.num_attention_heads, config.num_key_value_heads, attn.head_dim, attn.scaling,
                q_norm=None if q_norm is None else rms_norm(q_norm, norm_offset),
                k_norm=None if k_norm is None else rms_norm(k_norm, norm_offset), window=window),
            norm2=rms_norm(layer.post_attention_layernorm, norm_offset),
            mlp=MLP(Projection.linear(mlp.gate_proj, mlp.up_proj), Projection.linear(mlp.down_proj), fused, gated=True),
        ))
    return Decoder(family, blocks, rms_norm(body.norm, norm_offset), rotary=body.rotary_emb)


def rms_norm(norm, offset: float = 0.0) -> Norm:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return Norm(norm.weight.detach() + offset, None, eps, rms=True)
