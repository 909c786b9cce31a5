"""Attribution method names (as inseq spells them), resolved in one place for every HF task.

:func:`resolve_method` turns a name into a :class:`MethodSpec` (or a ``ValueError`` listing the
names); :func:`check_method_kwargs` rejects keyword arguments the method does not take; and
:func:`attribute_embeddings` runs a gradient or perturbation method on a forward function over
word embeddings. The causal-generation engine uses the specs and the keyword checks but runs
its own single-pass engine; ``attention`` is not a gradient method, the caller computes it.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
from torch import nn

from saliency_fast.hf import token_level_methods
from saliency_fast.hf.method_output import MethodOutput

# ``dtype``: opt-in autocast of the forward (bfloat16/float16), accumulation stays float32
_IG_KWARGS = frozenset(
    {"n_steps", "quadrature", "internal_batch_size", "rtol", "atol", "min_steps", "max_steps", "dtype"}
)
# layer attribution (saliency_fast.hf.layers): the Explainer and the generation engine take them out first
_LAYER_KWARGS = frozenset({"layer", "layers", "layer_path"})
_NOISE_KWARGS = frozenset({"nt_samples", "nt_samples_batch_size", "stdevs", "stdevs_relative", "seed", "dtype"})
# LIME / KernelSHAP over tokens: ``seed`` seeds torch's RNG for the call (captum's samples for that seed)
_SURROGATE_KWARGS = frozenset({"n_samples", "perturbations_per_eval", "seed", "dtype"})


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # gradient | path | noise | perturbation | attention | discretized | sequential | lrp
    #              | surrogate | gradient_shap | deeplift | grad_cam
    uses_baseline: bool  # reads the baseline embeddings
    per_token: bool  # one number per token, copied over the embedding dim (perturbations)
    reports_completeness: bool  # path methods: sum of attributions vs F(x) - F(baseline)
    kwargs: frozenset[str]  # method keyword arguments it accepts


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("saliency", "gradient", False, False, False, frozenset({"dtype"}) | _LAYER_KWARGS),
        MethodSpec("input_x_gradient", "gradient", False, False, False, frozenset({"dtype"}) | _LAYER_KWARGS),
        MethodSpec("integrated_gradients", "path", True, False, True, _IG_KWARGS | _LAYER_KWARGS),
        MethodSpec("discretized_integrated_gradients", "discretized", True, False, True,
                   frozenset({"n_steps", "strategy", "n_neighbors", "factor", "internal_batch_size", "knn_backend",
                              "convention", "dtype"})),
        MethodSpec("sequential_integrated_gradients", "sequential", True, False, True,
                   frozenset({"n_steps", "quadrature", "internal_batch_size", "dtype"})),
        MethodSpec("smoothgrad", "noise", False, False, False, _NOISE_KWARGS),
        MethodSpec("vargrad", "noise", False, False, False, _NOISE_KWARGS),
        MethodSpec("occlusion", "perturbation", True, True, False, frozenset({"perturbations_per_eval", "dtype"})),
        MethodSpec("attention", "attention", False, True, False, frozenset({"layers"})),
        # input x gradient under the AttnLRP / CP-LRP rules (saliency_fast.methods.lrp), which the caller applies
        MethodSpec("attnlrp", "lrp", False, False, False, frozenset({"dtype"})),
        MethodSpec("cp_lrp", "lrp", False, False, False, frozenset({"dtype"})),
        MethodSpec("lime", "surrogate", True, True, False, _SURROGATE_KWARGS | {"alpha"}),
        MethodSpec("kernel_shap", "surrogate", True, True, False, _SURROGATE_KWARGS),
        MethodSpec("gradient_shap", "gradient_shap", True, False, False,
                   frozenset({"n_samples", "stdevs", "seed", "dtype"})),
        MethodSpec("deeplift", "deeplift", True, False, False, frozenset({"dtype"})),
        MethodSpec("grad_cam", "grad_cam", False, True, False, frozenset({"cam_layer", "dtype"})),
    )
}
METHOD_CHOICES = tuple(METHODS)


def resolve_method(name) -> MethodSpec:
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {METHOD_CHOICES}, got {name!r}")
    return METHODS[name]


def check_method_kwargs(spec: MethodSpec, kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - spec.kwargs)
    if unknown:
        accepted = ", ".join(sorted(spec.kwargs)) or "none"
        raise TypeError(f"method {spec.name!r} got unexpected keyword arguments {unknown}; it accepts: {accepted}")


def _method_class(name: str):
    module = importlib.import_module("saliency_fast")
    return getattr(module, name)


def attribute_embeddings(
    spec: MethodSpec,
    forward,
    inputs: torch.Tensor,
    baselines: torch.Tensor | None,
    additional_forward_args: tuple,
    method_kwargs: dict,
    *,
    keep: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    embedding_matrix: torch.Tensor | None = None,
    baseline_token_id: int | None = None,
    special_token_ids: list[int] | None = None,
    internal_batch_size: int | None = None,
    model: nn.Module | None = None,
) -> MethodOutput:
    """Attributions ``[B, S, D]`` of ``forward(inputs, *additional_forward_args) -> [B]``.

    ``keep`` (bool ``[B, S]``) marks positions that are not attributed (special tokens, padding):
    they already equal the baseline, and sequential IG makes no copy for them. DIG needs the
    token ids, the embedding matrix (whose rows ``inputs`` are), the baseline token and the ids
    that keep a constant path (``special_token_ids``, padding included). ``n_steps`` in the
    output counts gradient evaluations per row. ``model`` is the module ``forward`` runs: DeepLIFT
    puts its rules on its modules, Grad-CAM reads one of its blocks.
    """
    check_method_kwargs(spec, method_kwargs)
    kwargs = dict(method_kwargs)
    dtype = kwargs.pop("dtype", None)
    if spec.family == "gradient":
        cls = _method_class("Saliency" if spec.name == "saliency" else "InputXGradient")
        extra = {"abs": False} if spec.name == "saliency" else {}
        attr = cls(forward, dtype=dtype).attribute(inputs, additional_forward_args=additional_forward_args, **extra)
        return MethodOutput(attr)
    if spec.family == "lrp":
        # the rules are on the model, applied by the caller (saliency_fast.methods.lrp.lrp_rules)
        from saliency_fast.methods import _common, lrp

        (relevance,), scores = lrp.relevance_and_scores(
            forward, (inputs,), _common.Target.parse(None, len(inputs)), additional_forward_args, dtype
        )
        return MethodOutput(relevance, scores=scores)
    if spec.family == "noise":
        return _noise_tunnel(spec, forward, inputs, additional_forward_args, kwargs, dtype)
    if spec.family == "perturbation":
        occlusion = _method_class("Occlusion")(forward, dtype=dtype)
        attr = occlusion.attribute(
            inputs, sliding_window_shapes=(1, inputs.shape[-1]), strides=(1, inputs.shape[-1]), baselines=baselines,
            additional_forward_args=additional_forward_args,
            perturbations_per_eval=kwargs.get(
                "perturbations_per_eval", max(1, (internal_batch_size or 1) // len(inputs))
            ),
        )
        return MethodOutput(attr)
    if spec.family in ("surrogate", "gradient_shap", "deeplift", "grad_cam"):
        return token_level_methods.attribute(spec.name, forward, inputs, baselines, additional_forward_args, kwargs,
                                              dtype, model=model, internal_batch_size=internal_batch_size)
    kwargs.setdefault("internal_batch_size", internal_batch_size)
    if spec.family == "path":
        return _integrated_gradients(forward, inputs, baselines, additional_forward_args, kwargs, dtype)
    if spec.family == "sequential":
        return _sequential_ig(forward, inputs, baselines, additional_forward_args, kwargs, keep, dtype)
    if spec.family == "discretized":
        if baseline_token_id is None:
            raise ValueError(
                f"baseline must be a token (pad, mask, unk or eos) for method {spec.name!r}: its path ends at a word"
            )
        dig = importlib.import_module("saliency_fast.methods.dig")
        found = dig.dig_attribute_embeddings(
            forward, input_ids, embedding_matrix, baseline_token_id, additional_forward_args=additional_forward_args,
            special_token_ids=special_token_ids, return_convergence_delta=True, dtype=dtype, **kwargs,
        )
        steps = torch.full((len(inputs),), found.n_points - 1, dtype=torch.long)  # no gradient at the input
        return MethodOutput(found.attributions, found.convergence_delta.detach().abs(), steps)
    raise ValueError(f"method {spec.name!r} is not a gradient or perturbation method; the caller computes it")


def _integrated_gradients(forward, inputs, baselines, additional_forward_args, kwargs, dtype) -> MethodOutput:
    ig = _method_class("IntegratedGradients")(forward, dtype=dtype)
    quadrature = kwargs.pop("quadrature", "gausslegendre")
    attr, delta = ig.attribute(
        inputs, baselines=baselines, additional_forward_args=additional_forward_args, method=quadrature,
        return_convergence_delta=True, **kwargs,
    )
    return MethodOutput(attr, delta.detach().abs(), ig.last_n_steps)


def noise_options(kwargs: dict) -> dict:
    """SmoothGrad/VarGrad options with their defaults: 5 samples; noise of 10 % of each example's
    spread when neither ``stdevs`` nor ``stdevs_relative`` is given (captum's default, an absolute
    1.0, is about 20x the spread of typical word embeddings and drowns the signal); ``seed``
    (an int, or None for the global RNG) makes the noise repeatable."""
    options = {"nt_samples": 5, "seed": None, **kwargs}
    if "stdevs" not in kwargs and "stdevs_relative" not in kwargs:
        options.update(stdevs=0.1, stdevs_relative=True)
    return options


def _noise_tunnel(spec, forward, inputs, additional_forward_args, kwargs, dtype) -> MethodOutput:
    kwargs = noise_options(kwargs)
    kwargs["generator"] = kwargs.pop("seed")
    tunnel = _method_class("NoiseTunnel")(_method_class("Saliency")(forward, dtype=dtype))
    attr = tunnel.attribute(
        inputs, nt_type=spec.name, additional_forward_args=additional_forward_args, abs=False, **kwargs
    )
    return MethodOutput(attr)


def _sequential_ig(forward, inputs, baselines, additional_forward_args, kwargs, keep, dtype) -> MethodOutput:
    """Sequential IG (Enguehard, 2023) over the attributed tokens (not ``keep``); a row's
    completeness error is the largest of its tokens' (each path has its own endpoints)."""
    sig = _method_class("SequentialIntegratedGradients")(forward, dtype=dtype)
    n_steps = kwargs.get("n_steps", 50)
    attr, delta = sig.attribute(
        inputs, baselines=baselines, additional_forward_args=additional_forward_args, n_steps=n_steps,
        method=kwargs.get("quadrature", "gausslegendre"), internal_batch_size=kwargs.get("internal_batch_size"),
        return_convergence_delta=True, token_mask=None if keep is None else ~keep,
    )
    steps = torch.full((inputs.shape[0],), n_steps, dtype=torch.long, device=inputs.device)
    return MethodOutput(attr, delta.abs().amax(1).float(), steps)
