"""Layer attribution for Hugging Face models: which blocks' token representations carried a score.

``Explainer.attribute(..., layer=K)`` / ``attribute_generation(..., layer=K)`` with ``K`` a block
index (negative counts from the end) or a module name (``"bert.encoder.layer.3"``), or
``layers="all"`` (every block) / a list of indices or names. The scores are per token at each
layer's output, reduced over the hidden dim by ``aggregate`` (``dot``: attribution . activation).
Methods: ``saliency`` (the signed gradient w.r.t. the block's output), ``input_x_gradient``
(gradient x activation) and ``integrated_gradients``, whose path is ``layer_path``:

- ``"inputs"`` (default): the word embeddings move from the baseline to the input and the gradient
  is read at every block's output on the way, times the block's output change (see
  :mod:`saliency_fast.methods.layer`): one forward per batch of path points for all blocks, and a
  block's row is exactly what ``layer=K`` gives for it alone.
- ``"layer"``: captum's ``LayerIntegratedGradients`` (the block's output moves on a straight line),
  completeness exact per layer, one integration per layer.

A result's ``layer_scores`` is ``[n_targets, n_layers, n_tokens]`` with ``layer_names``, and its
``scores`` are those of the last requested layer; ``metadata["layers"]`` names the layers and
``completeness_error`` is, per target, the largest over the layers.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
from torch import nn

import saliency_fast
from saliency_fast.methods import layer as layer_methods

LAYER_PATHS = ("inputs", "layer")
# the method options of integrated gradients, as the Explainer names them -> LayerIntegratedGradients'
_IG_OPTIONS = {"n_steps": "n_steps", "quadrature": "method", "internal_batch_size": "internal_batch_size",
               "rtol": "rtol", "atol": "atol", "min_steps": "min_steps", "max_steps": "max_steps"}


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's transformer blocks, in order: the first ``nn.ModuleList``
    with one entry per hidden layer (``config.num_hidden_layers``), or without a config the longest.
    An encoder-decoder model's are its encoder's blocks, then its decoder's."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        names = {id(m): name for name, m in model.named_modules()}
        found = []
        for part in (model.get_encoder(), model.get_decoder()):
            # the outermost list of modules (T5's blocks hold lists of sub-layers of their own)
            lists = [(name.count("."), m) for name, m in part.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
            if lists:
                blocks = min(lists, key=lambda item: (item[0], -len(item[1])))[1]
                found += [(f"{names[id(blocks)]}.{i}", block) for i, block in enumerate(blocks)]
        if found:
            return found
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if isinstance(n_layers, int):
        lists = [(name, m) for name, m in lists if len(m) == n_layers]
    elif lists:
        longest = max(len(m) for _, m in lists)
        lists = [(name, m) for name, m in lists if len(m) == longest]
    if not lists:
        raise ValueError(
            f"found no list of transformer blocks in {type(model).__name__}; pass layer= a module name "
            "(see model.named_modules())"
        )
    name, blocks = lists[0]
    return [(f"{name}.{i}", block) for i, block in enumerate(blocks)]


def resolve_layers(model: nn.Module, layer=None, layers=None) -> tuple[list[str], list[nn.Module]]:
    """``(labels, modules)`` for ``layer=`` (one) or ``layers=`` (``"all"`` or a list): a block index
    is labelled ``layer K``, a module by its name."""
    if (layer is None) == (layers is None):
        raise ValueError("give exactly one of layer= (a block index or module name) and layers= ('all' or a list)")
    if layer is not None:
        items = [layer]
    elif isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all' or a list of block indices / module names, got {layers!r}")
        items = list(range(len(transformer_blocks(model))))
    elif isinstance(layers, (list, tuple)) and layers:
        items = list(layers)
    else:
        raise ValueError(f"layers must be 'all' or a non-empty list of block indices / module names, got {layers!r}")
    resolved = [_resolve_one(model, item, "layer" if layer is not None else f"layers[{i}]")
                for i, item in enumerate(items)]
    labels = [label for label, _ in resolved]
    if len(set(labels)) != len(labels):
        raise ValueError(f"layers names a layer twice: {labels}")
    return labels, [module for _, module in resolved]


def _resolve_one(model: nn.Module, item, what: str) -> tuple[str, nn.Module]:
    if isinstance(item, numbers.Integral) and not isinstance(item, bool):
        blocks = transformer_blocks(model)
        k = int(item)
        if not -len(blocks) <= k < len(blocks):
            raise ValueError(f"{what}={k} is out of range: the model has {len(blocks)} blocks (0 .. {len(blocks) - 1})")
        seq2seq = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        return blocks[k][0] if seq2seq else f"layer {k % len(blocks)}", blocks[k][1]
    if isinstance(item, str):
        try:
            module = model.get_submodule(item)
        except AttributeError:
            example = transformer_blocks(model)[0][0] if _has_blocks(model) else "a name from model.named_modules()"
            raise ValueError(f"{what}={item!r} is not a module of {type(model).__name__} (e.g. {example!r})") from None
        return item, module
    raise TypeError(f"{what} must be a block index (int) or a module name (str), got {type(item).__name__}")


def single_activations(per_layer: list, labels: list[str], tokens_shape: tuple[int, int]) -> list[torch.Tensor]:
    """Each layer's one activation tensor, checked to be per token: ``[batch, tokens, hidden]``."""
    out = []
    for label, values in zip(labels, per_layer):
        values = values if isinstance(values, tuple) else (values,)
        if len(values) != 1:
            raise ValueError(f"{label} outputs {len(values)} tensors; per-token layer scores need a module with one "
                             "output tensor (a block, or one of its submodules)")
        (value,) = values
        if value.dim() != 3 or tuple(value.shape[:2]) != tuple(tokens_shape):
            raise ValueError(f"{label} has activations of shape {tuple(value.shape)}; per-token layer scores need "
                             f"[batch, tokens, hidden] with [batch, tokens] = {list(tokens_shape)}")
        out.append(value)
    return out


def _has_blocks(model: nn.Module) -> bool:
    try:
        transformer_blocks(model)
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class LayerRequest:
    """The layers asked for in a call, and the path of integrated gradients."""

    labels: list[str]
    modules: list[nn.Module]
    method: str
    path: str

    @classmethod
    def pop(cls, model: nn.Module, spec, method_kwargs: dict, aggregate: str) -> LayerRequest | None:
        """Take ``layer``, ``layers`` and ``layer_path`` out of ``method_kwargs`` (in place) and check
        them with ``aggregate``; None when no layer is asked for. The method registry says which
        methods take them (``spec.layers``: saliency, input_x_gradient, integrated_gradients); the
        ``layers`` option of another method (``attention``) stays its own."""
        if not spec.layers:
            return None
        layer, layers = method_kwargs.pop("layer", None), method_kwargs.pop("layers", None)
        path = method_kwargs.pop("layer_path", None)
        if layer is None and layers is None:
            if path is not None:
                raise ValueError("layer_path applies to layer attribution: give layer= or layers= too")
            return None
        if path is None:
            path = "inputs"
        elif spec.name != "integrated_gradients":
            raise ValueError(f"layer_path applies to integrated_gradients only, not {spec.name!r}")
        if path not in LAYER_PATHS:
            raise ValueError(f"layer_path must be one of {LAYER_PATHS}, got {path!r}")
        if aggregate == "none":
            raise ValueError("aggregate='none' is not available with layer attribution (one score per token and "
                             "layer); choose sum, l2, abs_sum or dot")
        labels, modules = resolve_layers(model, layer, layers)
        return cls(labels, modules, spec.name, path)

    @property
    def is_path_method(self) -> bool:
        return self.method == "integrated_gradients"

    def metadata(self) -> dict:
        return {"layers": list(self.labels), **({"layer_path": self.path} if self.is_path_method else {})}

    def layer_set(self) -> layer_methods.LayerSet:
        return layer_methods.LayerSet(self.modules, labels=self.labels, first_only=True)

    def attribute(self, forward, embeds: torch.Tensor, baselines: torch.Tensor | None, args: tuple,
                  method_kwargs: dict, aggregate: str, internal_batch_size: int | None):
        """Scores ``[B, n_layers, S]`` of ``forward(embeds, *args) -> [B]`` at the requested layers,
        with the per-row completeness error (largest over the layers) and steps for IG, else None."""
        options = dict(method_kwargs)
        dtype = options.pop("dtype", None)
        error = n_steps = None
        if self.method == "integrated_gradients":
            attributions, error, n_steps = self._integrated_gradients(
                forward, embeds, baselines, args, options, dtype, internal_batch_size)
        elif self.method == "input_x_gradient":
            attributions = saliency_fast.LayerGradientXActivation(forward, self.modules, dtype=dtype).attribute(
                embeds, additional_forward_args=args)
        else:
            attributions = saliency_fast.LayerSaliency(forward, self.modules, dtype=dtype).attribute(
                embeds, abs=False, additional_forward_args=args)
        attributions = single_activations(attributions, self.labels, embeds.shape[:2])
        activations = None
        if aggregate == "dot":
            activations = single_activations(self.layer_set().activations(forward, (embeds,), args), self.labels,
                                             embeds.shape[:2])
        scores = torch.stack([
            saliency_fast.aggregate(attr.float(), aggregate, inputs=None if activations is None else act.float())
            for attr, act in zip(attributions, activations or [None] * len(attributions))
        ], dim=1)
        return scores, error, n_steps

    def _integrated_gradients(self, forward, embeds, baselines, args, options, dtype, internal_batch_size):
        kwargs = {_IG_OPTIONS[name]: value for name, value in options.items()}
        kwargs.setdefault("internal_batch_size", internal_batch_size)
        groups = [self.modules] if self.path == "inputs" else [[m] for m in self.modules]
        attributions, deltas, n_steps = [], [], None
        for modules in groups:
            lig = saliency_fast.LayerIntegratedGradients(forward, modules, dtype=dtype)
            found, _ = lig.attribute(embeds, baselines, additional_forward_args=args, path=self.path,
                                     return_convergence_delta=True, **kwargs)
            attributions += found
            deltas.append(lig.last_layer_deltas.detach().abs())
            n_steps = lig.last_n_steps if n_steps is None else torch.maximum(n_steps, lig.last_n_steps)
        return attributions, torch.cat(deltas).amax(0), n_steps
