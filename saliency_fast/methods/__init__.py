"""Captum-compatible attribution methods over any forward function.

- :mod:`.gradient`: ``Saliency``, ``InputXGradient`` (and the ``GradientAttribution`` base)
- :mod:`.integrated_gradients`: ``IntegratedGradients`` and the reusable chunked path integrators
- :mod:`.quadrature`: quadrature rules as ``(alphas, weights)`` functions, nested levels for ``n_steps="auto"``
- :mod:`.layer`: ``LayerIntegratedGradients``, ``LayerGradientXActivation``, ``LayerSaliency`` over any module
- :mod:`.noise_tunnel`: ``NoiseTunnel`` (SmoothGrad, SmoothGrad-squared, VarGrad)
- :mod:`.perturbation`: ``FeatureAblation``, ``Occlusion``
- :mod:`.surrogate`: ``LimeBase``, ``Lime``, ``KernelShap`` (surrogate models in :mod:`.linear_models`)
- :mod:`.gradient_shap`: ``GradientShap``; :mod:`.deep_lift`: ``DeepLift``, ``DeepLiftShap``; :mod:`.grad_cam`: ``LayerGradCam``
- :mod:`.aggregation`: ``aggregate`` over the embedding dim, ``normalize`` of scores
- :mod:`._common`: input / baseline / target / additional-args handling shared by all of them

The public names are exported lazily by the top-level ``saliency_fast`` package; the classes added
with LIME / SHAP / DeepLIFT / Grad-CAM also load lazily from here.
"""

import importlib

# public name -> submodule, loaded on first access (``from saliency_fast.methods import Lime``)
_EXPORTS = {
    "LimeBase": "surrogate",
    "Lime": "surrogate",
    "KernelShap": "surrogate",
    "get_exp_kernel_similarity_function": "surrogate",
    "GradientShap": "gradient_shap",
    "DeepLift": "deep_lift",
    "DeepLiftShap": "deep_lift",
    "LayerGradCam": "grad_cam",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
