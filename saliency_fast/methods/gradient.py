"""Plain gradient methods: :class:`Saliency` (|gradient|) and :class:`InputXGradient`.

Both have captum's constructor and ``attribute`` arguments. The base class
:class:`GradientAttribution` holds what every gradient method shares: the forward function, the
optional autocast ``dtype``, the gradient mode during attribution, and checked gradients.
"""

from __future__ import annotations

import torch

from saliency_fast.methods import _common


class GradientAttribution(_common.AttributionMethod):
    """Base of the gradient methods: :class:`~saliency_fast.methods._common.AttributionMethod`
    (the forward function and the optional autocast ``dtype``) with checked input gradients.
    During attribution the forward function's module (when it has one) runs in
    :func:`~saliency_fast.methods._common.gradient_mode`: parameters frozen, so autograd does no
    work for weights, and activations as fused ops. Results do not change."""

    def gradients(self, inputs: _common.Tensors, target: _common.Target, args: tuple | None) -> _common.Tensors:
        """Checked gradients of the targeted output w.r.t. ``inputs`` (parameters already frozen by the
        caller)."""
        grads = _common.input_gradients(self.forward_func, inputs, target, args, self.dtype)
        for i, grad in enumerate(grads):
            label = _common.input_label(i, len(grads))
            _common.check_finite(f"the gradient w.r.t. {label}", grad, " (the forward function is not finite there)")
        return grads

    #: gradient methods differentiate w.r.t. the inputs, so these must be floating point; layer
    #: methods differentiate w.r.t. a layer's activations and take token ids too
    _float_inputs = True

    def _prepare(self, inputs, target, additional_forward_args):
        inputs, is_tuple = _common.format_inputs(inputs, require_float=self._float_inputs)
        n_examples = inputs[0].shape[0]
        target = _common.Target.parse(target, n_examples)
        args = _common.format_additional_forward_args(additional_forward_args, n_examples)
        return inputs, is_tuple, target, args


class Saliency(GradientAttribution):
    """Saliency (Simonyan et al., 2013): the gradient of the target w.r.t. each input feature, by
    default its absolute value. Same arguments as ``captum.attr.Saliency``.

    With ``dtype=torch.bfloat16`` the gradients come from a bf16 forward/backward (bf16 keeps 8
    significant bits): on a random 4-layer BERT (4 x 64 tokens) the largest difference from float32
    was 5e-3 of the largest gradient, and 5e-4 for per-token L2 norms.
    """

    def attribute(self, inputs, target=None, abs: bool = True, additional_forward_args=None):  # noqa: A002 (captum's name)
        """Gradients (``abs=True``: their absolute values), shaped like ``inputs`` (a tensor or a tuple)."""
        if not isinstance(abs, bool):
            raise TypeError(f"abs must be a bool, got {type(abs).__name__}")
        inputs, is_tuple, target, args = self._prepare(inputs, target, additional_forward_args)
        with _common.gradient_mode(self.forward_func):
            grads = self.gradients(inputs, target, args)
        return _common.format_output(is_tuple, tuple(g.abs() if abs else g for g in grads))


class InputXGradient(GradientAttribution):
    """Input x gradient (Shrikumar et al., 2016): each input feature times the gradient of the target
    w.r.t. it. Same arguments as ``captum.attr.InputXGradient``; ``dtype`` as for :class:`Saliency`.
    """

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(self, inputs, target=None, additional_forward_args=None):
        """``inputs * gradient``, shaped like ``inputs`` (a tensor or a tuple)."""
        inputs, is_tuple, target, args = self._prepare(inputs, target, additional_forward_args)
        with _common.gradient_mode(self.forward_func):
            grads = self.gradients(inputs, target, args)
        return _common.format_output(is_tuple, tuple(x * g for x, g in zip(inputs, grads)))
