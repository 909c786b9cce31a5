"""LIME, KernelSHAP, GradientSHAP, DeepLIFT and Grad-CAM as Explainer methods, at token level.

Each runs the captum-compatible class of :mod:`saliency_fast.methods` on the Explainer's forward
over word embeddings (one runner per method, named by :mod:`saliency_fast.hf.method_registry`):

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
from saliency_fast.hf.method_io import EmbeddingJob, MethodOutput
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


def lime(job: EmbeddingJob) -> MethodOutput:
    alpha = job.kwargs.get("alpha", DEFAULT_LASSO_ALPHA)
    return _surrogate(saliency_fast.Lime(job.forward, SkLearnLasso(alpha=alpha), dtype=job.dtype), job)


def kernel_shap(job: EmbeddingJob) -> MethodOutput:
    return _surrogate(saliency_fast.KernelShap(job.forward, dtype=job.dtype), job)


def gradient_shap(job: EmbeddingJob) -> MethodOutput:
    inner = InputBaselineXGradient(job.forward, dtype=job.dtype)
    with _seeded(job.kwargs.get("seed"), numpy_too=True):
        attr = noise_tunnel.NoiseTunnel(inner).attribute(
            job.inputs, nt_type="smoothgrad", nt_samples=job.kwargs.get("n_samples", 5),
            stdevs=job.kwargs.get("stdevs", 0.0), baselines=job.baselines, additional_forward_args=job.args,
        )
    return MethodOutput(attr)


def deeplift(job: EmbeddingJob) -> MethodOutput:
    attr = saliency_fast.DeepLift(_ForwardModule(job.forward, job.model), dtype=job.dtype).attribute(
        job.inputs, job.baselines, additional_forward_args=job.args)
    return MethodOutput(attr)


def grad_cam(job: EmbeddingJob) -> MethodOutput:
    from saliency_fast.hf import layers

    _, modules = layers.resolve_layers(job.model, layer=job.kwargs.get("cam_layer", -1))
    cam = saliency_fast.LayerGradCam(job.forward, modules[0], dtype=job.dtype).attribute(
        job.inputs, additional_forward_args=job.args, relu_attributions=True, channels_last=True)
    cam = cam[0] if isinstance(cam, tuple) else cam
    if cam.dim() != 3 or cam.shape[:2] != job.inputs.shape[:2]:
        raise ValueError(
            f"grad_cam needs a layer whose output is [batch, tokens, hidden]; cam_layer gives {tuple(cam.shape)}"
        )
    return MethodOutput(cam.expand(-1, -1, job.inputs.shape[-1]))


def _surrogate(method, job: EmbeddingJob) -> MethodOutput:
    """Every token one interpretable feature; one score per token on every embedding dim."""
    n_examples, n_tokens = job.inputs.shape[:2]
    feature_mask = torch.arange(n_tokens, device=job.inputs.device).view(1, n_tokens, 1)
    per_eval = job.kwargs.get("perturbations_per_eval", max(1, (job.internal_batch_size or 1) // n_examples))
    with _seeded(job.kwargs.get("seed")):
        return MethodOutput(method.attribute(
            job.inputs, baselines=job.baselines, additional_forward_args=job.args, feature_mask=feature_mask,
            n_samples=job.kwargs.get("n_samples", DEFAULT_SURROGATE_SAMPLES), perturbations_per_eval=per_eval,
        ))
