"""OPT: learned positions (offset by 2), pre-LayerNorm blocks, separate query/key/value projections
with biases, a plain MLP. The post-norm variant (``do_layer_norm_before=False``, OPT-350m) and the
embedding projections (``word_embed_proj_dim != hidden_size``) are not described."""

from __future__ import annotations

from torch import nn

from saliency_fast.hf.decoder_blocks import MLP, Attention, Block, Decoder, Projection
from saliency_fast.hf.families.gpt2 import layer_norm
from saliency_fast.methods import lean_backward


def describe(model) -> Decoder | None:
    config = model.config
    if getattr(config, "model_type", None) != "opt" or not config.do_layer_norm_before:
        return None
    body = model.model.decoder
    if body.project_in is not None or body.project_out is not None or body.final_layer_norm is None:
        return None
    activation = body.layers[0].activation_fn if len(body.layers) else None
    fused = lean_backward.RELU if type(activation) is nn.ReLU else lean_backward.activation_pair(activation)
    blocks = []
    for layer in body.layers:
        attn = layer.self_attn
        norms = (layer.self_attn_layer_norm, layer.final_layer_norm)
        if fused is None or any(norm.weight is None for norm in norms):
            return None
        blocks.append(Block(
            norm1=layer_norm(norms[0]),
            attention=Attention(Projection.linear(attn.q_proj, attn.k_proj, attn.v_proj),
                                Projection.linear(attn.out_proj), attn.num_heads, attn.num_heads, attn.head_dim,
                                attn.scaling),  # OPT scales the projected queries: the same as scaling q . k
            norm2=layer_norm(norms[1]),
            mlp=MLP(Projection.linear(layer.fc1), Projection.linear(layer.fc2), fused),
        ))
    positions = body.embed_positions.weight.detach()[body.embed_positions.offset:]
    return Decoder("opt", blocks, layer_norm(body.final_layer_norm), positions=positions)
