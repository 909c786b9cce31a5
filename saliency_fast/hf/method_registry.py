"""Every attribution method of the Explainer, declared once: its name (as inseq spells it), the
options it takes, what it reads (a baseline, a token baseline), what it gives (one score per token,
a completeness error), and the runner of each task it supports: ``classify`` over word embeddings
(classification, tagging, multiple choice, similarity, zero-shot) and ``generate`` in the single
causal pass of generation. ``Explainer.attribute``, ``Explainer.attribute_generation`` (decoder-only
and encoder-decoder), ``Explainer.evaluate``, the command line and the server all read this table
and nothing else, so adding a method is one :class:`MethodSpec` here (or :func:`register`) and its
runners in the method's own module.

A runner is a callable or a ``"module:function"`` string imported on first use (this module imports
neither torch nor the methods, so the command line and the server read the table cheaply):
``classify(job: EmbeddingJob) -> MethodOutput`` and ``generate(job: GenerationJob) ->
GenerationOutput`` (:mod:`saliency_fast.hf.method_io`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Union

Runner = Union[Callable, str]

# ``dtype``: opt-in autocast of the forward (bfloat16/float16), accumulation stays float32
_IG_KWARGS = frozenset(
    {"n_steps", "quadrature", "internal_batch_size", "rtol", "atol", "min_steps", "max_steps", "dtype"}
)
# layer attribution (saliency_fast.hf.layers): the Explainer and the generation engine take them out first
LAYER_KWARGS = frozenset({"layer", "layers", "layer_path"})
_NOISE_KWARGS = frozenset({"nt_samples", "nt_samples_batch_size", "stdevs", "stdevs_relative", "seed", "dtype"})
# LIME / KernelSHAP over tokens: ``seed`` seeds torch's RNG for the call (captum's samples for that seed)
_SURROGATE_KWARGS = frozenset({"n_samples", "perturbations_per_eval", "seed", "dtype"})

TASKS = ("classify", "generate")  # the runners a spec may have (every non-generation task is ``classify``)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    kwargs: frozenset[str]  # method keyword arguments it accepts (with ``layers``: the layer ones too)
    classify: Runner | None = None  # (EmbeddingJob) -> MethodOutput
    generate: Runner | None = None  # (GenerationJob) -> GenerationOutput
    uses_baseline: bool = False  # reads the baseline embeddings
    token_baseline: bool = False  # the baseline must be a token (the path ends at a word: DIG)
    per_token: bool = False  # one number per token, not per embedding dim (no aggregation)
    reports_completeness: bool = False  # path methods: sum of attributions vs F(x) - F(baseline)
    layers: bool = False  # takes layer= / layers= / layer_path= (saliency_fast.hf.layers)
    lrp_rules: bool = False  # runs under the LRP rules of its name on the model's modules (autograd only)
    # forwards of perturbed copies only (no gradient): the classify forward runs each row at its own length
    perturbs: bool = False
    check: Runner | None = None  # (method kwargs) -> None: checks that fail fast, before any tokenizing
    # metadata["engine"]["reason"] in generation when the runner selects no gradient engine
    autograd_reason: str = "the method's gradients run through autograd"

    @property
    def accepted_kwargs(self) -> frozenset[str]:
        return self.kwargs | LAYER_KWARGS if self.layers else self.kwargs

    def runner(self, task: str) -> Callable:
        """The callable that runs this method for ``task`` (``classify`` or ``generate``)."""
        found = getattr(self, task)
        if found is None:
            raise ValueError(f"method {self.name!r} is not available for {_TASK_WORDS[task]}; "
                             f"choose one of {method_names(task)}")
        return _load(found)


_TASK_WORDS = {"classify": "this task", "generate": "generation"}


def _load(runner: Runner) -> Callable:
    if callable(runner):
        return runner
    module, _, function = runner.partition(":")
    return getattr(importlib.import_module(module), function)


_EMB, _GEN, _TOK = "saliency_fast.hf.embedding_methods", "saliency_fast.hf.generation_methods", \
    "saliency_fast.hf.token_level_methods"


def _both(name: str, classify_module: str = _EMB) -> dict:
    return {"classify": f"{classify_module}:{name}", "generate": f"{_GEN}:{name}"}


_AUTO_STEPS = "n_steps='auto' (nested rules, per target) runs through autograd"
_FORWARD_ONLY = "forward passes only"
_LRP = "rules put on the model's modules (LRP) need autograd"

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("saliency", frozenset({"dtype"}), **_both("saliency"), layers=True),
        MethodSpec("input_x_gradient", frozenset({"dtype"}), **_both("input_x_gradient"), layers=True),
        MethodSpec("integrated_gradients", _IG_KWARGS, **_both("integrated_gradients"), uses_baseline=True,
                   reports_completeness=True, layers=True, autograd_reason=_AUTO_STEPS),
        MethodSpec("discretized_integrated_gradients",
                   frozenset({"n_steps", "strategy", "n_neighbors", "factor", "internal_batch_size", "knn_backend",
                              "convention", "dtype"}),
                   **_both("discretized_integrated_gradients"), uses_baseline=True, token_baseline=True,
                   reports_completeness=True),
        MethodSpec("sequential_integrated_gradients", frozenset({"n_steps", "quadrature", "internal_batch_size", "dtype"}),
                   classify=f"{_EMB}:sequential_integrated_gradients", uses_baseline=True, reports_completeness=True),
        MethodSpec("smoothgrad", _NOISE_KWARGS, **_both("smoothgrad")),
        MethodSpec("vargrad", _NOISE_KWARGS, **_both("vargrad")),
        MethodSpec("occlusion", frozenset({"perturbations_per_eval", "dtype"}), **_both("occlusion"),
                   uses_baseline=True, per_token=True, perturbs=True, autograd_reason=_FORWARD_ONLY),
        MethodSpec("attention", frozenset({"layers"}), **_both("attention"), per_token=True,
                   check="saliency_fast.hf.checks:check_attention_kwargs", autograd_reason=_FORWARD_ONLY),
        # input x gradient under the AttnLRP / CP-LRP rules (saliency_fast.methods.lrp), which the caller applies
        MethodSpec("attnlrp", frozenset({"dtype"}), **_both("lrp_relevance"), lrp_rules=True, autograd_reason=_LRP),
        MethodSpec("cp_lrp", frozenset({"dtype"}), **_both("lrp_relevance"), lrp_rules=True, autograd_reason=_LRP),
        MethodSpec("lime", _SURROGATE_KWARGS | {"alpha"}, classify=f"{_TOK}:lime", uses_baseline=True,
                   per_token=True, perturbs=True),
        MethodSpec("kernel_shap", _SURROGATE_KWARGS, classify=f"{_TOK}:kernel_shap", uses_baseline=True,
                   per_token=True, perturbs=True),
        MethodSpec("gradient_shap", frozenset({"n_samples", "stdevs", "seed", "dtype"}),
                   classify=f"{_TOK}:gradient_shap", uses_baseline=True),
        MethodSpec("deeplift", frozenset({"dtype"}), classify=f"{_TOK}:deeplift", uses_baseline=True),
        MethodSpec("grad_cam", frozenset({"cam_layer", "dtype"}), classify=f"{_TOK}:grad_cam", per_token=True),
    )
}


def method_names(task: str | None = None) -> tuple[str, ...]:
    """The registered methods (``task``: only those with a runner for it), in registration order."""
    return tuple(name for name, spec in METHODS.items() if task is None or getattr(spec, task) is not None)


def register(spec: MethodSpec) -> None:
    """Add a method (its name must be new); :func:`unregister` removes it."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a MethodSpec, got {type(spec).__name__}")
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.classify is None and spec.generate is None:
        raise ValueError(f"method {spec.name!r} has no runner: give classify=, generate= or both")
    METHODS[spec.name] = spec


def unregister(name: str) -> None:
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not registered")
    del METHODS[name]


def resolve_method(name, task: str | None = None) -> MethodSpec:
    """The spec of ``name`` (``task``: it must have a runner for it), or a ``ValueError`` listing the names."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {method_names()}, got {name!r}")
    spec = METHODS[name]
    if task is not None:
        spec.runner(task)  # raises when the method has none for this task
    return spec


def check_method_kwargs(spec: MethodSpec, kwargs: dict) -> None:
    """Reject options the method does not take, then run the method's own early checks."""
    accepted = spec.accepted_kwargs
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        names = ", ".join(sorted(accepted)) or "none"
        raise TypeError(f"method {spec.name!r} got unexpected keyword arguments {unknown}; it accepts: {names}")
    if spec.check is not None:
        _load(spec.check)(kwargs)
