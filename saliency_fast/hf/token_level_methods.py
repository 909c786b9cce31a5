"""LIME, KernelSHAP, GradientSHAP, DeepLIFT and Grad-CAM as Explainer methods, at token level.

Each runs the captum-compatible class of :mod:`saliency_fast.methods` on the Explainer's forward
over word embeddings:

- ``lime`` / ``kernel_shap``: every token is one interpretable feature; a removed token takes the
  baseline's embedding (the ``baseline`` argument: the pad token by default, or ``mask``); special
  tokens and padding equal their baseline, so removing them changes nothing and they get no score.
  ``n_samples`` (default 100), ``perturbations_per_eval`` (samples of each text per forward),
  ``seed`` (an int: torch's RNG is seeded for the call and restored after; the samples are then
  captum's for that seed); LIME's surrogate is a weighted Lasso with penalty ``alpha`` (default
  1e-4), KernelSHAP's weighted least squares. One score per token.
- ``gradient_shap``: the expected gradient x (input - baseline) at ``n_samples`` (default 5)
  random points between each text's baseline and its embeddings (Gaussian noise ``stdevs``,
  default 0); ``seed`` seeds torch's and numpy's RNGs for the call.
- ``deeplift``: DeepLIFT's rescale rule on the model's activation modules; which modules get a
  rule and which keep their gradient: :mod:`saliency_fast.methods.deep_lift`.
- ``grad_cam``: Grad-CAM at a transformer block's output (``cam_layer``: a block index, default
  -1, the last, or a module name), channels = hidden units, one ReLU'd score per token.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

import saliency_fast
from saliency_fast.hf.method_output import MethodOutput
from saliency_fast.methods import noise_tunnel
from saliency_fast.methods.gradient_shap import InputBaselineXGradient
from saliency_fast.methods.linear_models import SkLearnLasso

DEFAULT_SURROGATE_SAMPLES = 100
# scores here are logits, probabilities or cosine margins whose changes are often below 0.1: captum's
# default Lasso penalty (0.01) zeroes most tokens there
DEFAULT_LASSO_ALPHA = 1e-4


class _ForwardModule(nn.Module):
    """``forward`` as a module that owns ``model``, so DeepLIFT finds the model's modules."""

    def __init__(self, forward, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, *args):
        return self._forward(*args)


@contextlib.contextmanager
def _seeded(seed, numpy_too: bool = False):
    """torch's (and numpy's) global RNG seeded for the block and restored after; None: untouched."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    state = np.random.get_state() if numpy_too else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if numpy_too:
            np.random.seed(seed)
        try:
            yield
        finally:
            if numpy_too:
                np.random.set_state(state)


def attribute(name: str, forward, inputs: torch.Tensor, baselines: torch.Tensor | None, args: tuple, kwargs: dict,
              dtype, *, model: nn.Module | None, internal_batch_size: int | None):
    """Attributions ``[B, S, D]`` (per-token methods: the token's score on every embedding dim)."""
    if name in ("lime", "kernel_shap"):
        return MethodOutput(_surrogate(name, forward, inputs, baselines, args, kwargs, dtype, internal_batch_size))
    if name == "gradient_shap":
        inner = InputBaselineXGradient(forward, dtype=dtype)
        stdevs = kwargs.get("stdevs", 0.0)
        with _seeded(kwargs.get("seed"), numpy_too=True):
            attr = noise_tunnel.NoiseTunnel(inner).attribute(
                inputs, nt_type="smoothgrad", nt_samples=kwargs.get("n_samples", 5), stdevs=stdevs,
                baselines=baselines, additional_forward_args=args,
            )
        return MethodOutput(attr)
    if model is None:
        raise ValueError(f"method {name!r} needs the model the forward function runs")
    if name == "deeplift":
        attr = saliency_fast.DeepLift(_ForwardModule(forward, model), dtype=dtype).attribute(
            inputs, baselines, additional_forward_args=args)
        return MethodOutput(attr)
    from saliency_fast.hf import layers

    _, modules = layers.resolve_layers(model, layer=kwargs.get("cam_layer", -1))
    cam = saliency_fast.LayerGradCam(forward, modules[0], dtype=dtype).attribute(
        inputs, additional_forward_args=args, relu_attributions=True, channels_last=True)
    cam = cam[0] if isinstance(cam, tuple) else cam
    if cam.dim() != 3 or cam.shape[:2] != inputs.shape[:2]:
        raise ValueError(
            f"grad_cam needs a layer whose output is [batch, tokens, hidden]; cam_layer gives {tuple(cam.shape)}"
        )
    return MethodOutput(cam.expand(-1, -1, inputs.shape[-1]))


def _surrogate(name, forward, inputs, baselines, args, kwargs, dtype, internal_batch_size) -> torch.Tensor:
    n_examples, n_tokens = inputs.shape[:2]
    feature_mask = torch.arange(n_tokens, device=inputs.device).view(1, n_tokens, 1)
    per_eval = kwargs.get("perturbations_per_eval", max(1, (internal_batch_size or 1) // n_examples))
    if name == "lime":
        method = saliency_fast.Lime(forward, SkLearnLasso(alpha=kwargs.get("alpha", DEFAULT_LASSO_ALPHA)), dtype=dtype)
    else:
        method = saliency_fast.KernelShap(forward, dtype=dtype)
    with _seeded(kwargs.get("seed")):
        return method.attribute(
            inputs, baselines=baselines, additional_forward_args=args, feature_mask=feature_mask,
            n_samples=kwargs.get("n_samples", DEFAULT_SURROGATE_SAMPLES), perturbations_per_eval=per_eval,
        )
