"""saliency_fast: fast, exact gradient saliency for transformer models.

Public names load lazily, so ``import saliency_fast`` stays cheap (no transformers import
until ``Explainer`` is touched, no extension load until an op or ``info()`` needs it).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "info": "saliency_fast._info",
    "set_backend": "saliency_fast.ops",
    "Saliency": "saliency_fast.methods.gradient",
    "InputXGradient": "saliency_fast.methods.gradient",
    "IntegratedGradients": "saliency_fast.methods.integrated_gradients",
    "NoiseTunnel": "saliency_fast.methods.noise_tunnel",
    "Occlusion": "saliency_fast.methods.perturbation",
    "FeatureAblation": "saliency_fast.methods.perturbation",
    "DiscretizedIntegratedGradients": "saliency_fast.methods.dig",
    "SequentialIntegratedGradients": "saliency_fast.methods.sequential_ig",
    "LayerIntegratedGradients": "saliency_fast.methods.layer",
    "LayerGradientXActivation": "saliency_fast.methods.layer",
    "LayerSaliency": "saliency_fast.methods.layer",
    "AttnLRP": "saliency_fast.methods.lrp",
    "lrp_rules": "saliency_fast.methods.lrp",
    "LimeBase": "saliency_fast.methods.surrogate",
    "Lime": "saliency_fast.methods.surrogate",
    "KernelShap": "saliency_fast.methods.surrogate",
    "GradientShap": "saliency_fast.methods.gradient_shap",
    "DeepLift": "saliency_fast.methods.deep_lift",
    "DeepLiftShap": "saliency_fast.methods.deep_lift",
    "LayerGradCam": "saliency_fast.methods.grad_cam",
    "aggregate": "saliency_fast.methods.aggregation",
    "normalize": "saliency_fast.methods.aggregation",
    "Explainer": "saliency_fast.hf.explainer",
    "AttributionResult": "saliency_fast.result",
    "load": "saliency_fast.result",
    "TracInCP": "saliency_fast.influence.tracin",
    "TracInCPFast": "saliency_fast.influence.tracin",
    "TracInCPFastRandProj": "saliency_fast.influence.tracin",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saliency_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
