"""Grad-CAM (Selvaraju et al., 2017) at any layer: :class:`LayerGradCam`, with captum's arguments."""

from __future__ import annotations

import torch

from saliency_fast.methods.layer import _check_bool, _LayerMethod


class LayerGradCam(_LayerMethod):
    """The layer's activations weighted by the mean of their gradient over every dim after the
    channel dim (dim 1), summed over channels: ``sum_c mean_hw(dF/dA_c) * A_c``, shaped like the
    activations with one channel. Layers with activations of at most 2 dims use the gradient itself
    as the weight. ``attr_dim_summation=False`` keeps the channels; ``relu_attributions`` applies a
    ReLU to the result. ``grad_kwargs`` (captum's pass-through to ``torch.autograd.grad``) is
    accepted for compatibility: unused layers already get zero gradients.

    ``LayerGradCam(forward_func, layer, device_ids=None).attribute(inputs, target=None,
    additional_forward_args=None, attribute_to_layer_input=False, relu_attributions=False,
    attr_dim_summation=True, grad_kwargs=None)``.
    """

    def attribute(self, inputs, target=None, additional_forward_args=None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True, grad_kwargs=None, *,
                  channels_last: bool = False):
        """Per layer output tensor, the Grad-CAM map (a tuple for layers with several outputs).

        ``channels_last`` (ours): the channels are the last dim, as in transformers' ``[batch,
        tokens, hidden]``: the weights are the gradient's mean over the dims between batch and
        channels (the tokens), the map is summed over the last dim, ``[batch, tokens, 1]``."""
        _check_bool("relu_attributions", relu_attributions)
        _check_bool("attr_dim_summation", attr_dim_summation)
        _check_bool("channels_last", channels_last)
        if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
            raise TypeError(f"grad_kwargs must be a dict or None, got {type(grad_kwargs).__name__}")
        grads, acts = self._layer_gradients(inputs, target, additional_forward_args, attribute_to_layer_input)
        maps = []
        for layer_grads, layer_acts in zip(grads, acts):
            maps.append(tuple(
                _cam(g, a, relu_attributions, attr_dim_summation, channels_last) for g, a in zip(layer_grads, layer_acts)
            ))
        return self._format_result(maps)


def _cam(grad: torch.Tensor, act: torch.Tensor, relu: bool, summed: bool, channels_last: bool) -> torch.Tensor:
    channel = grad.dim() - 1 if channels_last else 1
    spatial = tuple(d for d in range(1, grad.dim()) if d != channel)
    weights = grad.mean(dim=spatial, keepdim=True) if grad.dim() > 2 else grad
    cam = weights * act
    if summed:
        cam = cam.sum(channel, keepdim=True)
    return torch.relu(cam) if relu else cam
