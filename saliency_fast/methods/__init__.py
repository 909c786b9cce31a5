"""Captum-compatible attribution methods over any forward function.

- :mod:`.gradient`: ``Saliency``, ``InputXGradient`` (and the ``GradientAttribution`` base)
- :mod:`.integrated_gradients`: ``IntegratedGradients`` and the reusable chunked path integrators
- :mod:`.quadrature`: quadrature rules as ``(alphas, weights)`` functions, nested levels for ``n_steps="auto"``
- :mod:`.layer`: ``LayerIntegratedGradients``, ``LayerGradientXActivation``, ``LayerSaliency`` over any module
- :mod:`.noise_tunnel`: ``NoiseTunnel`` (SmoothGrad, SmoothGrad-squared, VarGrad)
- :mod:`.perturbation`: ``FeatureAblation``, ``Occlusion``
- :mod:`.aggregation`: ``aggregate`` over the embedding dim, ``normalize`` of scores
- :mod:`._common`: input / baseline / target / additional-args handling shared by all of them

The public names are exported lazily by the top-level ``saliency_fast`` package.
"""
