"""lxt 2.1's AttnLRP / CP-LRP rules, written out independently of saliency_fast, for parity tests.

lxt 2.1 (https://github.com/rachtibat/LRP-eXplains-Transformers, PyPI ``lxt==2.1``) predates
transformers 5: ``import lxt.efficient`` fails here (its BERT patch imports
``find_pruneable_heads_and_indices``, gone from ``transformers.pytorch_utils``), and its attention
patch replaces the modeling file's ``ALL_ATTENTION_FUNCTIONS`` with a plain dict, which has no
``get_interface``. So this module applies lxt's rules the way lxt does, by class-level patches, but
written here from lxt's definitions (``lxt/efficient/rules.py``, ``patches.py``, ``models/llama.py``,
``models/qwen2.py``, ``models/gpt2.py``):

- ``identity_rule_implicit``: ``fn(x)`` forward, backward ``grad * fn(x) / (x + 1e-10)``;
- ``divide_gradient``: identity forward, backward ``grad / factor``;
- ``rms_norm_forward``: ``weight * (x * stop_gradient(rsqrt(mean(x^2) + eps)))`` in float32;
- ``layer_norm_forward``: ``(x - mean) / stop_gradient(sqrt(var + eps)) * weight + bias``;
- GPT-2's ``mlp_forward``: ``c_proj(identity_rule(act, c_fc(x)))`` (both rule sets);
- ``gated_mlp_forward`` (AttnLRP): ``down(divide_gradient(identity_rule(act, gate(x)) * up(x), 2))``;
  ``cp_gated_mlp_forward`` (CP-LRP): ``down(act(stop_gradient(gate(x))) * up(x))``;
- attention (AttnLRP): query and key gradients divided by 4, value by 2, around the eager attention;
  (CP-LRP): query and key detached;
- Phi-3 and Gemma 2, which lxt 2.1 does not map: its gated-MLP rules on Phi-3's fused projection
  halves, lxt's Gemma 3 norm for Gemma 2's, and Gemma 2's soft-capping (``cap * tanh(x / cap)`` of the
  attention logits and of the final logits) under the identity rule, as an element-wise activation.

It differs from saliency_fast's mechanism on purpose: class-level patches of the family's classes and
of its module-global ``eager_attention_forward`` (the model runs with eager attention), against our
module swaps and ``AttentionInterface`` wrapper over SDPA. Generation relevance is lxt's loop: one
forward and one backward per generated token, on the token's prefix.
"""

from __future__ import annotations

import contextlib
import importlib

import torch


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        out = fn(x)
        ctx.save_for_backward(out / (x + 1e-10))
        return out

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.saved_tensors[0] * grad


class _Divide(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad / ctx.factor, None


def _rms_norm(self, hidden_states):
    dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon).detach()
    return self.weight * hidden_states.to(dtype)


def _layer_norm(self, x):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / (var + self.eps).sqrt().detach()
    if self.weight is not None:
        y = y * self.weight
    if self.bias is not None:
        y = y + self.bias
    return y


def _gemma_rms_norm(self, x):
    """Gemma's RMSNorm (weight stored as ``w - 1``) with the RMS held constant: lxt's gemma3 norm."""
    out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).detach()
    return (out * (1.0 + self.weight.float())).type_as(x)


def _soft_cap(x, cap):
    """``cap * tanh(x / cap)`` under the identity rule (an element-wise activation, as lxt rules them)."""
    return _Identity.apply(lambda v: torch.tanh(v / cap) * cap, x)


def _gemma2_eager(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """Gemma 2's eager attention written out, its soft-capped logits under the identity rule."""
    from transformers.models.gemma2.modeling_gemma2 import repeat_kv

    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * (module.head_dim**-0.5 if scaling is None else scaling)
    if softcap is not None:
        scores = _soft_cap(scores, softcap)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class _SoftCappedHead(torch.nn.Module):
    """The LM head followed by Gemma 2's final soft-capping under the identity rule (the model's own
    capping is switched off meanwhile)."""

    def __init__(self, head, cap):
        super().__init__()
        self.head, self.cap = head, cap

    def forward(self, hidden):
        return _soft_cap(self.head(hidden), self.cap)


def _gpt2_mlp(self, hidden_states):
    return self.c_proj(_Identity.apply(self.act, self.c_fc(hidden_states)))


def _gated_mlp(self, x):
    gate = _Identity.apply(self.act_fn, self.gate_proj(x))
    return self.down_proj(_Divide.apply(gate * self.up_proj(x), 2))


def _cp_gated_mlp(self, x):
    return self.down_proj(self.act_fn(self.gate_proj(x).detach()) * self.up_proj(x))


# Phi-3's MLP (one gate_up_proj whose first half is the gate): lxt's gated_mlp_forward /
# cp_gated_mlp_forward above applied to the two halves (lxt 2.1 has no Phi-3 module map)
def _fused_gated_mlp(self, x):
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    return self.down_proj(_Divide.apply(_Identity.apply(self.activation_fn, gate) * up, 2))


def _cp_fused_gated_mlp(self, x):
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    return self.down_proj(self.activation_fn(gate.detach()) * up)


def _wrap_attention(eager, rule):
    def attention(module, query, key, value, *args, **kwargs):
        if rule == "cp_lrp":
            query, key = query.detach(), key.detach()
        else:
            query, key, value = _Divide.apply(query, 4), _Divide.apply(key, 4), _Divide.apply(value, 2)
        kwargs["dropout"] = 0.0
        return eager(module, query, key, value, *args, **kwargs)

    return attention


def _patch_map(modeling, family: str, rule: str) -> dict:
    """class -> its forward under ``rule``, as lxt's ``models/<family>.py`` maps them."""
    if family == "gpt2":  # lxt: the same MLP and LayerNorm patches for both rules
        return {modeling.GPT2MLP: _gpt2_mlp, torch.nn.LayerNorm: _layer_norm}
    if family == "gemma2":
        return {modeling.Gemma2MLP: _cp_gated_mlp if rule == "cp_lrp" else _gated_mlp,
                modeling.Gemma2RMSNorm: _gemma_rms_norm}
    if family == "phi3":
        return {modeling.Phi3MLP: _cp_fused_gated_mlp if rule == "cp_lrp" else _fused_gated_mlp,
                modeling.Phi3RMSNorm: _rms_norm}
    prefix = {"llama": "Llama", "qwen2": "Qwen2"}[family]
    return {getattr(modeling, f"{prefix}MLP"): _cp_gated_mlp if rule == "cp_lrp" else _gated_mlp,
            getattr(modeling, f"{prefix}RMSNorm"): _rms_norm}


@contextlib.contextmanager
def lxt_rules(model, family: str, rule: str):
    """lxt's patch map for ``family`` (``llama``, ``qwen2``, ``gpt2``, ``phi3``, ``gemma2``) and ``rule`` on ``model``'s
    classes, with eager attention; everything restored on exit."""
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    patches = _patch_map(modeling, family, rule)
    saved = ({cls: cls.forward for cls in patches}, None, modeling.eager_attention_forward,
             model.config._attn_implementation)
    for cls, forward in patches.items():
        cls.forward = forward
    modeling.eager_attention_forward = _wrap_attention(_gemma2_eager if family == "gemma2" else saved[2], rule)
    model.set_attn_implementation("eager")
    cap = getattr(model.config, "final_logit_softcapping", None) if family == "gemma2" else None
    if cap is not None:
        head = model.lm_head
        model.lm_head, model.config.final_logit_softcapping = _SoftCappedHead(head, cap), None
    try:
        yield
    finally:
        for cls, forward in saved[0].items():
            cls.forward = forward
        modeling.eager_attention_forward = saved[2]
        model.set_attn_implementation(saved[3])
        if cap is not None:
            model.lm_head, model.config.final_logit_softcapping = head, cap


def generation_relevance(model, ids: list[int], n_prompt: int, family: str, rule: str) -> torch.Tensor:
    """lxt's generation loop: for each generated token ``t``, one forward over ``ids[:t]`` and one
    backward of the logit of ``ids[t]`` at the last position; relevance summed over the embedding
    dim. ``[n_generated, n_tokens]``, NaN at and after each target."""
    embedding = model.get_input_embeddings()
    out = torch.full((len(ids) - n_prompt, len(ids)), float("nan"), dtype=torch.float64)
    with lxt_rules(model, family, rule):
        for row, t in enumerate(range(n_prompt, len(ids))):
            embeds = embedding(torch.tensor([ids[:t]], device=embedding.weight.device)).detach().requires_grad_(True)
            logit = model(inputs_embeds=embeds, use_cache=False).logits[0, -1, ids[t]]
            logit.backward()
            out[row, :t] = (embeds * embeds.grad).sum(-1)[0].detach().double().cpu()
    return out
