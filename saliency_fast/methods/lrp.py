"""AttnLRP and CP-LRP: layer-wise relevance propagation for transformers as input x modified gradient.

AttnLRP (Achtibat et al., ICML 2024) in its efficient form, as its reference library lxt 2.1
computes it: relevance = input x gradient, with the gradient flow changed so that each operation
passes relevance by its LRP rule:

- normalisations (LayerNorm, RMSNorm): identity rule, the standard deviation / RMS is a constant
  (its gradient is stopped);
- element-wise activations: identity rule, the gradient is ``act(x) / x`` (lxt divides by
  ``x + 1e-10``);
- products, uniform rule: a gated MLP's ``act(gate) * up`` halves the gradient of the product, and
  attention divides the gradient reaching the query and the key by 4 and the value by 2 (the
  matmuls ``q k^T`` and ``probs v`` each halve it, and the softmax passes its gradient unchanged).

CP-LRP (Ali et al., ICML 2022) stops the gradient at the query and key (the softmax passes
none) and at the gate of a gated MLP; normalisations and activations as above.

:func:`lrp_rules` applies either rule set to a model for the duration of a ``with`` block and puts
everything back on exit, also on error. It works on the modules a family is built from rather than
on one model class: activation modules (transformers' ``ACT2FN`` and torch's), normalisation modules
(``nn.LayerNorm``, any ``*RMSNorm`` / ``*LayerNorm`` computing its scale with ``rsqrt``/``sqrt``),
gated MLPs (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``; T5's ``wi_0``, ``wi_1``, ``wo``,
``act``; Phi-3's fused ``gate_up_proj`` with ``down_proj``, ``activation_fn``) and attention through
transformers' ``AttentionInterface`` (every family that registers its attention there: GPT-2, BERT,
Llama, Mistral, Qwen2/3, Gemma, ...). A normalisation whose scale cannot be found, or a forward in
which no attention went through the interface, is an error, never plain gradients in disguise.

:class:`AttnLRP` is the captum-style class (``AttnLRP(model).attribute(inputs, target=...)``).
"""

from __future__ import annotations

import sys
import threading

import torch
import transformers.activations as hf_activations
from torch import nn
from torch.overrides import TorchFunctionMode

from saliency_fast.methods import _common, lean_backward

RULES = ("attnlrp", "cp_lrp")
# lxt's stabiliser of the identity rule's act(x) / x
IDENTITY_EPSILON = 1e-10


def check_rule(rule) -> str:
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return rule


# ------------------------------------------------------------------------------------------ rules


class _IdentityRule(torch.autograd.Function):
    """``y = fn(x)`` whose backward multiplies by ``fn(x) / x`` (identity rule, in gradient x input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn) -> torch.Tensor:
        out = fn(x)
        ctx.save_for_backward(out / (x + IDENTITY_EPSILON))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class _DivideGradient(torch.autograd.Function):
    """The identity forward, the gradient divided by ``factor`` (uniform rule on a product)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad / ctx.factor, None


def divide_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _DivideGradient.apply(x, factor) if x.requires_grad else x


# --------------------------------------------------------------------------------- module wrappers


class _IdentityRuleActivation(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _IdentityRule.apply(x, self.inner)
        return self.inner(x)


# (gate, up, down, activation) attribute names of gated MLPs: Llama-style (Llama, Mistral, Qwen2/3,
# Gemma, OLMo 2, ...), T5's gated-GELU feed-forward (flan-T5), and Phi-3's fused projection
# (gate_up_proj: the gate's half first, then the up half; no separate up projection)
GATED_MLP_NAMES = (("gate_proj", "up_proj", "down_proj", "act_fn"), ("wi_0", "wi_1", "wo", "act"),
                   ("gate_up_proj", None, "down_proj", "activation_fn"))


class _GatedMLPRule(nn.Module):
    """``down(act(gate(x)) * up(x))``: AttnLRP halves the product's gradient (its activation already
    carries the identity rule); CP-LRP passes none through the gate. With a fused projection (no up
    name) gate and up are the two halves of one projection. The module's dropout is not run
    (attribution runs in eval mode, where it is the identity)."""

    def __init__(self, inner: nn.Module, rule: str, names: tuple[str, str | None, str, str]):
        super().__init__()
        self.inner, self.rule = inner, rule
        self.gate, self.up, self.down, self.act = (None if n is None else getattr(inner, n) for n in names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up is None:
            gate, up = self.gate(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate(x), self.up(x)
        if self.rule == "cp_lrp":
            return self.down(self.act(gate.detach()) * up)
        return self.down(divide_gradient(self.act(gate) * up, 2.0))


class _ConstantScale(TorchFunctionMode):
    """Within a normalisation's forward: the scale (``rsqrt`` / ``sqrt`` of the variance) is detached,
    and ``F.layer_norm`` / ``F.rms_norm`` are written out with a detached scale."""

    _SCALES = (torch.rsqrt, torch.Tensor.rsqrt, torch.sqrt, torch.Tensor.sqrt)

    def __init__(self):
        super().__init__()
        self.detached = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SCALES:
            self.detached += 1
            return func(*args, **kwargs).detach()
        if func is torch.nn.functional.layer_norm:
            self.detached += 1
            return layer_norm_constant_std(*args, **kwargs)
        if func is torch.nn.functional.rms_norm:
            self.detached += 1
            return _rms_norm_constant_scale(*args, **kwargs)
        return func(*args, **kwargs)


def layer_norm_constant_std(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm with the standard deviation held constant (lxt's ``layer_norm_forward``)."""
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / (var + eps).sqrt().detach()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _rms_norm_constant_scale(x, normalized_shape, weight=None, eps=None):
    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps).detach()
    return y if weight is None else y * weight


class _SoftCapRule(TorchFunctionMode):
    """Within the block, ``torch.tanh`` passes its gradient by the identity rule: soft-capping
    ``cap * tanh(x / cap)`` (Gemma 2's attention logits and final logits) is an element-wise
    activation, so its gradient becomes ``cap * tanh(x / cap) / x``. Used only around the calls
    that soft-cap (the attention call given ``softcap``; the forward of a model whose config sets
    ``final_logit_softcapping``)."""

    _TANH = (torch.tanh, torch.Tensor.tanh)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._TANH and not kwargs and torch.is_grad_enabled() and args[0].requires_grad:
            return _IdentityRule.apply(args[0], func)
        return func(*args, **kwargs)


class _NormRule(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.inner(x, *args, **kwargs)
        if type(self.inner) is nn.LayerNorm:
            norm = self.inner
            return layer_norm_constant_std(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        with _ConstantScale() as mode:
            out = self.inner(x, *args, **kwargs)
        if not mode.detached:
            raise NotImplementedError(
                f"LRP rules: the normalisation {type(self.inner).__name__} computes its scale without rsqrt, "
                "sqrt, layer_norm or rms_norm; its identity rule cannot be applied"
            )
        return out


class _NoDropout(nn.Module):
    """A dropout module's place under the rules: the identity (its ``p`` stays readable: models pass
    it to their attention call, where the wrapper sets it to 0)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.p = inner, inner.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ------------------------------------------------------------------------------- module discovery


def _activation_classes() -> tuple[type, ...]:
    found = {nn.GELU, nn.SiLU, nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Mish, nn.LeakyReLU, nn.ELU, nn.Softplus}
    for value in hf_activations.ACT2CLS.values():
        cls = value[0] if isinstance(value, tuple) else value
        if cls is not hf_activations.LinearActivation:
            found.add(cls)
    return tuple(found)


_ACTIVATIONS = _activation_classes()


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, lean_backward._FusedActivationModule) or type(module) in _ACTIVATIONS


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) or name.endswith(
        ("RMSNorm", "LayerNorm")
    )


def _gated_mlp_names(module: nn.Module) -> tuple[str, str | None, str, str] | None:
    return next((names for names in GATED_MLP_NAMES
                 if all(isinstance(getattr(module, n, None), nn.Module) for n in names if n is not None)), None)


def _swap(model: nn.Module, matches, wrap) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, wrap(child))
                swapped.append((parent, name, child))
    return swapped


# -------------------------------------------------------------------------------------- attention

# attention modules under rules -> (rule, the context counting its calls); shared by threads, so
# the wrapper installed in the interface is transparent to every other module
_ACTIVE: dict[int, tuple[str, LRPRules]] = {}
_LOCK = threading.Lock()
# (interface id, implementation name) -> [refcount, displaced local entry or None, interface]
_INSTALLED: dict[tuple[int, str], list] = {}
_MISSING = object()


def _attention_with_rules(original):
    """An attention function that applies the active rule to the query, key and value of the modules
    under :func:`lrp_rules` (``original`` None: the module's family's eager attention)."""

    def attention(module, query, key, value, *args, **kwargs):
        inner = original if original is not None else _family_eager(module)
        found = _ACTIVE.get(id(module))
        if found is None:
            return inner(module, query, key, value, *args, **kwargs)
        rule, context = found
        context.attention_calls += 1
        if rule == "cp_lrp":
            query, key = query.detach(), key.detach()
        else:
            query, key, value = divide_gradient(query, 4.0), divide_gradient(key, 4.0), divide_gradient(value, 2.0)
        if "dropout" in kwargs:
            kwargs["dropout"] = 0.0
        if kwargs.get("softcap") is not None:  # Gemma 2's soft-capped attention logits
            with _SoftCapRule():
                return inner(module, query, key, value, *args, **kwargs)
        return inner(module, query, key, value, *args, **kwargs)

    attention.saliency_fast_lrp = True
    return attention


def _family_eager(module):
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(f"LRP rules: {type(module).__name__}'s module has no eager_attention_forward")
    return eager


def _attention_interfaces(model: nn.Module) -> list[tuple[object, str]]:
    """(interface, implementation name) of every module of ``model`` that reads an AttentionInterface."""
    from transformers.modeling_utils import AttentionInterface

    found = {}
    for module in model.modules():
        interface = getattr(sys.modules.get(type(module).__module__), "ALL_ATTENTION_FUNCTIONS", None)
        config = getattr(module, "config", None)
        name = getattr(config, "_attn_implementation", None)
        if isinstance(interface, AttentionInterface) and isinstance(name, str):
            found[(id(interface), name)] = interface
    return [(interface, key[1]) for key, interface in found.items()]


def _install(interface, name: str) -> None:
    key = (id(interface), name)
    entry = _INSTALLED.get(key)
    if entry is not None:
        entry[0] += 1
        return
    displaced = interface._local_mapping.get(name, _MISSING)
    original = None if name == "eager" and displaced is _MISSING else interface[name]
    interface._local_mapping[name] = _attention_with_rules(original)
    _INSTALLED[key] = [1, displaced, interface]


def _uninstall(interface, name: str) -> None:
    key = (id(interface), name)
    entry = _INSTALLED[key]
    entry[0] -= 1
    if entry[0]:
        return
    del _INSTALLED[key]
    if entry[1] is _MISSING:
        del interface._local_mapping[name]
    else:
        interface._local_mapping[name] = entry[1]


# ------------------------------------------------------------------------------------ the context


class LRPRules:
    """What :func:`lrp_rules` changed, and how many attention calls it saw."""

    def __init__(self, model: nn.Module, rule: str):
        self.model, self.rule = model, check_rule(rule)
        self.attention_calls = 0
        self._swapped: list = []
        self._hooks: list = []
        self._interfaces: list = []
        self._modules: list[int] = []

    def check_attention_seen(self) -> None:
        """An error when a forward ran under the rules and none of its attention did."""
        if not self.attention_calls:
            raise NotImplementedError(
                f"LRP rules: no attention of {type(self.model).__name__} ran through transformers' "
                "AttentionInterface, so the attention rule was not applied; this model family is not supported"
            )

    def __enter__(self) -> LRPRules:
        try:
            self._swapped += _swap(self.model, _is_activation, _unwrapped_identity_rule)
            self._swapped += _swap(self.model, lambda m: _gated_mlp_names(m) is not None,
                                   lambda m: _GatedMLPRule(m, self.rule, _gated_mlp_names(m)))
            self._swapped += _swap(self.model, _is_norm, _NormRule)
            # as lxt: no dropout under the rules, also for a model left in train mode
            self._swapped += _swap(self.model, lambda m: isinstance(m, nn.modules.dropout._DropoutNd), _NoDropout)
            self._hooks += _soft_capped_logits(self.model)
            with _LOCK:
                for interface, name in _attention_interfaces(self.model):
                    _install(interface, name)
                    self._interfaces.append((interface, name))
                for module in self.model.modules():
                    if id(module) in _ACTIVE:
                        raise RuntimeError("LRP rules are already applied to this model (nested lrp_rules)")
                    _ACTIVE[id(module)] = (self.rule, self)
                    self._modules.append(id(module))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        with _LOCK:
            for key in self._modules:
                if _ACTIVE.get(key, (None, None))[1] is self:
                    del _ACTIVE[key]
            for interface, name in self._interfaces:
                _uninstall(interface, name)
        for hook in self._hooks:
            hook.remove()
        for parent, name, child in reversed(self._swapped):
            setattr(parent, name, child)
        self._swapped, self._hooks, self._interfaces, self._modules = [], [], [], []


def _soft_capped_logits(model: nn.Module) -> list:
    """Hooks that run the forward of every module whose config sets ``final_logit_softcapping``
    (Gemma 2's causal LM, which caps its logits in its own forward) under :class:`_SoftCapRule`."""
    handles = []
    for module in model.modules():
        if getattr(getattr(module, "config", None), "final_logit_softcapping", None) is None:
            continue
        if not hasattr(module, "get_output_embeddings") or module.get_output_embeddings() is None:
            continue  # the body: its config is shared, its forward caps nothing
        modes: list[_SoftCapRule] = []

        def enter(_module, _args, modes=modes):
            modes.append(_SoftCapRule())
            modes[-1].__enter__()

        def leave(_module, _args, _output, modes=modes):
            modes.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    return handles


def _unwrapped_identity_rule(module: nn.Module) -> nn.Module:
    inner = module.inner if isinstance(module, lean_backward._FusedActivationModule) else module
    return _IdentityRuleActivation(inner)


def lrp_rules(model: nn.Module, rule: str = "attnlrp") -> LRPRules:
    """A context in which ``model``'s gradients follow the AttnLRP (``"attnlrp"``) or CP-LRP
    (``"cp_lrp"``) rules, so input x gradient is the relevance; forward values are unchanged. The
    model is restored on exit, also on error.

        with saliency_fast.lrp_rules(model) as rules:
            embeds = model.get_input_embeddings()(ids).requires_grad_()
            logit = model(inputs_embeds=embeds).logits[0, -1, token]
            logit.backward()
            relevance = (embeds * embeds.grad).sum(-1)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return LRPRules(model, rule)


# ---------------------------------------------------------------------------------- captum-style


class AttnLRP(_common.AttributionMethod):
    """AttnLRP (or CP-LRP with ``rule="cp_lrp"``) relevance of ``model``'s output: input x gradient
    under :func:`lrp_rules`, one forward and one backward.

    Args:
        model: the module whose submodules carry the rules (a transformers model).
        forward_func: what is attributed, taking the inputs (default: ``model`` itself); e.g.
            ``lambda e: model(inputs_embeds=e).logits[:, -1]``.
        rule: ``"attnlrp"`` or ``"cp_lrp"``.
        dtype: autocast dtype of the forward (None: full precision).

    ``attribute(inputs, target=None, additional_forward_args=None, return_convergence_delta=False)``
    as captum's ``LRP``: the delta is the sum of relevance per example minus the attributed output
    (how far relevance is from conservation; biases and inputs not attributed absorb the rest).
    """

    def __init__(self, model: nn.Module, forward_func=None, *, rule: str = "attnlrp",
                 dtype: torch.dtype | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        super().__init__(model if forward_func is None else forward_func, dtype=dtype)
        self.model = model
        self.rule = check_rule(rule)

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(self, inputs, target=None, additional_forward_args=None, return_convergence_delta: bool = False):
        inputs, is_tuple = _common.format_inputs(inputs)
        n_examples = inputs[0].shape[0]
        target = _common.Target.parse(target, n_examples)
        args = _common.format_additional_forward_args(additional_forward_args, n_examples)
        with lrp_rules(self.model, self.rule) as rules, _common.frozen_parameters(self.model):
            relevance, scores = relevance_and_scores(self.forward_func, inputs, target, args, self.dtype)
            rules.check_attention_seen()
        out = _common.format_output(is_tuple, relevance)
        if not return_convergence_delta:
            return out
        total = sum(r.reshape(n_examples, -1).sum(1) for r in relevance)
        return out, total - scores


def relevance_and_scores(forward_func, inputs: _common.Tensors, target: _common.Target, args: tuple | None,
                         dtype: torch.dtype | None = None) -> tuple[_common.Tensors, torch.Tensor]:
    """Input x gradient of the targeted output (under rules the caller applies) and that output
    ``(n_examples,)``, from one forward and one backward."""
    rows = inputs[0].shape[0]
    with torch.enable_grad():
        leaves = tuple(x.detach().requires_grad_(True) for x in inputs)
        with _common.autocast(dtype, leaves[0].device):
            output = _common.run_forward(forward_func, leaves, args)
        selected = _common.scalar_per_row(target.select(output, rows), rows)
        grads = torch.autograd.grad(selected.sum(), leaves, allow_unused=True, materialize_grads=True)
    relevance = tuple(x * g.to(x.dtype) for x, g in zip(inputs, grads))
    for i, r in enumerate(relevance):
        _common.check_finite(f"the relevance of {_common.input_label(i, len(relevance))}", r)
    return relevance, selected.detach().float()
